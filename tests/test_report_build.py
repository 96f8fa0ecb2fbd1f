"""The assembled report (report.md, report.html, tables, figures) and the claims it checks.

Runs on the synthetic store of ``test_report`` (a distinct value in every row), so a number
that lands in the wrong place, a missing table or a broken image link fails here.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from advls.cli import app
from advls.report.build import build_report, default_paper_tables
from advls.report.claims import check_claims, verdict
from advls.report.page import frame_html
from test_report import PAPER_CSV, grid, write_store

TABLES = ("FGSM", "BIM", "DeepFool", "CW", "clean")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("build") / "results.db"
    sweeps = {"paper-mnist": grid("mnist", "mlp") + grid("mnist", "lenet-mnist")}
    with write_store(path, sweeps, strong={"lenet-mnist"}) as store:
        store.record_sweep(
            "paper-mnist",
            {
                "description": "synthetic",
                "paper": {
                    "setups": {"mlp": "MNIST Linear", "lenet-mnist": "MNIST LeNet"},
                    "alpha": [0.1, 0.5, 0.9],
                    "eps": [0.05, 0.15, 0.25],
                },
            },
        )
    return path


@pytest.fixture(scope="module")
def theory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `advls triangular` output folder (its figures drawn small here)."""
    from matplotlib.figure import Figure

    folder = tmp_path_factory.mktemp("theory")
    (folder / "figures").mkdir()
    (folder / "triangular.json").write_text("{}")
    for name in ("triangular_fig1a_gamma0.6.png", "triangular_fig1b_gamma0.6.png"):
        figure = Figure(figsize=(4, 3))
        figure.subplots().plot([0, 1], [1, 0])
        figure.savefig(folder / "figures" / name)
    return folder


@pytest.fixture(scope="module")
def built(store_path: Path, theory: Path, tmp_path_factory: pytest.TempPathFactory):
    from advls.store import Store

    out = tmp_path_factory.mktemp("report")
    with Store(store_path) as store:
        return build_report(store, out, theory_dirs=[theory])


def test_shipped_paper_tables_are_the_transcription_verbatim():
    if not PAPER_CSV.is_file():
        pytest.skip("the shared paper folder is not beside this checkout")
    assert default_paper_tables().read_bytes() == PAPER_CSV.read_bytes()


def test_html_is_self_contained_with_every_table_and_figure(built):
    page = built.html.read_text()
    for table in TABLES:
        assert f'data-table="Table: {table}"' in page
    for name in ("Claims per set-up and attack", "Every compared cell", "Audit table"):
        assert f'data-table="{name}"' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len([f for f in built.figures if f.suffix == ".png"])
    for source in sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in page and "<link" not in page  # nothing to fetch, nothing to run
    # Two set-ups: Figure 3 for each, 3 (d), FGSM and BIM vs eps for each, the audit, theory.
    assert len(sources) == 2 + 1 + 4 + 1 + 2


def test_markdown_links_resolve(built):
    markdown = built.markdown.read_text()
    links = re.findall(r"\]\(([^)#][^)]*)\)", markdown)
    assert links
    for link in links:
        assert (built.out_dir / link).is_file(), link


def test_csv_tables_hold_the_store_values(built, store_path):
    from advls.report.cells import paper_cells
    from advls.report.mapping import PaperMapping
    from advls.store import Store
    from advls.sweep.export import results_table

    with Store(store_path) as store:
        frame = results_table(store)
    mapping = PaperMapping.from_dict(
        {
            "setups": {"mlp": "MNIST Linear", "lenet-mnist": "MNIST LeNet"},
            "alpha": [0.1, 0.5, 0.9],
            "eps": [0.05, 0.15, 0.25],
        }
    )
    cells = paper_cells(frame, mapping)
    table = pd.read_csv(built.tables["clean"])
    for row in table.itertuples(index=False):
        expected = cells[
            (cells["attack"] == "clean")
            & (cells["method"] == row.method)
            & (cells["setup"] == row.setup)
        ]
        assert sorted(v for v in row[2:] if v == v) == sorted(expected["value"])
    comparison = pd.read_csv(built.tables["paper-comparison"])
    assert (comparison["ours"] - comparison["paper"] - comparison["diff"]).abs().max() < 1e-12


def test_rendering_twice_gives_the_same_files(built, store_path, theory, tmp_path):
    from advls.store import Store

    with Store(store_path) as store:
        again = build_report(store, tmp_path, theory_dirs=[theory])
    first = {p.relative_to(built.out_dir): p.read_bytes() for p in built.out_dir.rglob("*.*")}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.*")}
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert again.claims.equals(built.claims)


def test_unknown_sweep_and_empty_store_are_named(store_path, tmp_path):
    from advls.store import Store

    with Store(store_path) as store, pytest.raises(ValueError, match="known: paper-mnist"):
        build_report(store, tmp_path, sweeps=["paper-cifar"])
    with Store(tmp_path / "empty.db") as empty, pytest.raises(ValueError, match="no sweep"):
        build_report(empty, tmp_path / "out")


def test_report_cli_errors_and_success(store_path, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["report", "--store", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "no store at" in missing.output
    bad = runner.invoke(app, ["report", "--store", str(store_path), "--threshold", "2"])
    assert bad.exit_code == 2 and "--threshold must be in [0, 1]" in bad.output
    done = runner.invoke(app, ["report", "--store", str(store_path), "--out", str(tmp_path / "r")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "r" / "report.html").is_file()
    unknown = runner.invoke(app, ["reproduce", "paper-imagenet"])
    assert unknown.exit_code == 2
    assert "unknown suite 'paper-imagenet'" in unknown.output and "mnist-quick" in unknown.output


def test_reproduce_names_missing_svhn_before_creating_anything(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["reproduce", "paper-svhn", "--out", str(out), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "train_32x32.mat" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- claims
def cells_of(values: dict[tuple[str, str, float | None], float], attack: str = "FGSM"):
    """Cells of one set-up: (method, alpha or None) -> value, at one budget."""
    rows = []
    for (method, alpha), value in values.items():
        rows.append(
            {
                "attack": attack,
                "setup": "S",
                "method": method,
                "eps_index": 1,
                "alpha_index": None if alpha is None else int(alpha * 10),
                "eps": 0.1,
                "paper_eps": 0.1,
                "alpha": alpha,
                "value": value,
                "seeds": 1,
            }
        )
    cells = pd.DataFrame(rows)
    for column in ("eps_index", "alpha_index"):
        cells[column] = cells[column].astype("Int64")
    return cells


def test_claims_count_each_comparison():
    cells = cells_of(
        {
            ("normal", None): 0.50,
            ("adv_training", None): 0.55,
            ("ALS", 0.1): 0.60,
            ("ALS", 0.5): 0.70,
            ("BLS", 0.1): 0.58,
            ("BLS", 0.5): 0.52,
            ("SLS", 0.1): 0.40,
            ("SLS", 0.5): 0.55,
            ("SBLS", 0.1): 0.45,
            ("SBLS", 0.5): 0.50,
        }
    )
    claims = check_claims(cells).set_index("claim")
    beats = claims.loc["ls-beats-normal"]
    # Above normal: both ALS, both BLS, SLS 0.5; below: SLS 0.1, SBLS 0.1; SBLS 0.5 ties.
    assert (beats["compared"], beats["agree"], beats["ties"]) == (8, 5, 1)
    assert beats["share"] == pytest.approx(5 / 7) and beats["verdict"] == "partly"
    pairwise = claims.loc["als-bls-beat-sls-sbls"]
    assert (pairwise["compared"], pairwise["agree"]) == (2, 2)
    assert pairwise["mean_diff"] == pytest.approx(((0.59 - 0.425) + (0.61 - 0.525)) / 2)
    # Against FGSM adversarial training the paper makes no claim under FGSM itself.
    assert "ls-beats-fgsm-at" not in claims.index


def test_clean_accuracy_claim_allows_one_point():
    cells = cells_of(
        {("normal", None): 0.990, ("ALS", 0.1): 0.985, ("SLS", 0.1): 0.970}, attack="clean"
    )
    row = check_claims(cells).set_index("claim").loc["clean-kept"]
    assert (row["compared"], row["agree"]) == (2, 1)
    assert row["verdict"] == "partly"


@pytest.mark.parametrize(
    ("share", "expected"),
    [(1.0, "holds"), (0.75, "holds"), (0.5, "partly"), (0.25, "partly"), (0.2, "fails")],
)
def test_verdict_thresholds(share, expected):
    assert verdict(share) == expected
    assert verdict(float("nan")) == "tied"


# --------------------------------------------------------------------------- HTML tables
def test_frame_html_merges_column_groups_and_escapes():
    columns = pd.MultiIndex.from_tuples(
        [("0.05", "0.1"), ("0.05", "0.5"), ("0.15", "0.1")], names=["eps", "alpha"]
    )
    index = pd.MultiIndex.from_tuples([("ALS", "<b>x</b>"), ("ALS", "y")], names=["m", "s"])
    frame = pd.DataFrame([[0.1234, float("nan"), 1.0], [0.5, 0.25, 0.0]], index, columns)
    html = frame_html(frame, digits=2)
    assert '<th colspan="2">ε = 0.05</th>' in html and "<th>ε = 0.15</th>" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x" not in html
    assert '<td class="num">0.12</td>' in html and '<td class="empty">–</td>' in html
    assert html.count("<th>ALS</th>") == 1  # a repeated leading label is printed once


def test_pairwise_claim_needs_all_four_methods_in_a_cell():
    cells = cells_of({("ALS", 0.1): 0.6, ("BLS", 0.1): 0.6, ("SLS", 0.1): 0.5, ("SBLS", 0.1): 0.5})
    extra = cells_of({("ALS", 0.5): 0.9, ("SLS", 0.5): 0.1, ("SBLS", 0.5): 0.1})  # no BLS
    claims = check_claims(pd.concat([cells, extra], ignore_index=True)).set_index("claim")
    assert claims.loc["als-bls-beat-sls-sbls", "compared"] == 1


def test_strong_gain_averages_seeds_per_budget():
    audit = pd.DataFrame(
        {
            "dataset": "mnist",
            "model": "mlp",
            "method": ["normal", "normal", "ALS", "ALS"],
            "eps": [0.1, 0.1, 0.1, 0.1],
            "paper": [0.2, 0.4, 0.6, 0.5],
            "strong": [0.1, 0.3, 0.1, 0.35],
            "gap": [0.1, 0.1, 0.5, 0.2],
        }
    )
    row = check_claims(cells_of({("normal", None): 0.5}), audit).set_index("claim")
    strong = row.loc["strong-keeps-gain"]
    # Normal averages 0.3 (paper) and 0.2 (strong). ALS gains 0.3 and 0.2 under the paper's
    # protocol; the strong one keeps -0.1 and +0.15: only the second keeps half its gain.
    assert (strong["compared"], strong["agree"]) == (2, 1)
    assert strong["mean_diff"] == pytest.approx(((-0.1 - 0.15) + (0.15 - 0.1)) / 2)


def test_markdown_contents_links_are_github_anchors(built):
    markdown = built.markdown.read_text()
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    links = re.findall(r"\]\(#([^)]+)\)", markdown)
    assert links and set(links) <= anchors
    assert "verdict-the-papers-claims-on-our-runs" in links


def test_markdown_table_cells_stay_on_one_line():
    from advls.report.tables import table_markdown

    text = table_markdown(pd.DataFrame({"error": ["out of\nmemory | retry"]}))
    assert text.splitlines()[-1] == r"| out of memory \| retry |"


def test_inline_marks_escape_first_and_leave_code_alone():
    from advls.report.page import _inline

    assert _inline("a *holds* **b** `x*y` 2 * 3 <i>") == (
        "a <em>holds</em> <strong>b</strong> <code>x*y</code> 2 * 3 &lt;i&gt;"
    )
