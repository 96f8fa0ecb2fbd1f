"""`advls reproduce` end to end on real MNIST: the report, its numbers, re-runs, and a browser.

One small suite (an MLP, one epoch on 2000 images, shortened attacks on 100 test points)
runs once per module through the real command line; the tests read what it left behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from browser import probe as probe_page

pytestmark = [pytest.mark.slow]

ADVLS = [str(Path(sys.executable).with_name("advls"))]

SPEC = textwrap.dedent(
    """
    name: tiny-mnist
    description: A pocket reproduction for the tests.
    train: {dataset: mnist, model: mlp, epochs: 1, batch_size: 128, train_subset: 2000}
    grid:
      - {loss: [ce], defence: [none, fgsm-at]}
      - {loss: [adversarial, standard], alpha: [0.1, 0.5]}
    evaluate:
      protocols:
        - name: paper
          params: {bim-100: {steps: 10}, cw-l2: {steps: 20, binary_search_steps: 2}}
        - name: strong
          params:
            pgd-40x5: {steps: 10, restarts: 1}
            apgd-ce: {steps: 10}
            transfer: {attack: {name: pgd, steps: 5, loss: ce}}
          without: [apgd-dlr, apgd-t, fab-t, square]
      eps: [0.05, 0.15]
      n: 100
      surrogate: twin
    paper:
      setups: {mlp: MNIST Linear}
      alpha: [0.1, 0.5]
      eps: [0.05, 0.15]
    """
)
TABLES = ("FGSM", "BIM", "DeepFool", "CW", "clean")
PAPER_LABELS = {"FGSM": "fgsm", "BIM": "bim-100", "DeepFool": "deepfool", "CW": "cw-l2"}


def advls(*args: str, data: Path) -> subprocess.CompletedProcess:
    # COLUMNS: rich wraps its messages at the terminal width, 80 without a terminal.
    env = {**os.environ, "ADVLS_DATA": str(data), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [*ADVLS, *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> dict:
    root = tmp_path_factory.mktemp("reproduce")
    spec = root / "tiny.yaml"
    spec.write_text(SPEC)
    out = root / "out"
    first = advls("reproduce", str(spec), "--out", str(out), "--no-progress", data=real_data)
    assert first.returncode == 0, first.stderr
    return {"out": out, "spec": spec, "first": first, "data": real_data}


def stored_values(db: Path) -> dict[tuple, float]:
    """(loss, alpha, defence, protocol, attack, eps, metric) -> value, straight from SQLite."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT r.config, x.protocol, x.attack, x.eps, x.metric, x.value "
            "FROM results x JOIN runs r ON r.key = x.run_key"
        ).fetchall()
    values = {}
    for config, protocol, attack, eps, metric, value in rows:
        train = json.loads(config)["train"]
        key = (train["loss"], train["alpha"], train["defence"], protocol, attack, eps, metric)
        values[key] = value
    return values


def test_report_tables_hold_the_stored_values(suite):
    report = suite["out"] / "report"
    values = stored_values(suite["out"] / "results.db")
    losses = {"ALS": "adversarial", "SLS": "standard"}
    checked = 0
    for table in TABLES:
        with open(report / "tables" / f"table-{table.lower()}.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                assert row["setup"] == "MNIST Linear"
                for column, text in row.items():
                    if column in ("method", "setup") or text == "":
                        continue
                    labels = dict(part.split("=") for part in column.split(" "))
                    method = row["method"]
                    if method in losses:
                        loss, alpha, defence = losses[method], float(labels["alpha"]), "none"
                    else:
                        assert labels["alpha"] == "-"
                        defence = "none" if method == "normal" else "fgsm-at"
                        loss, alpha = "ce", 0.0
                    eps = float(labels["eps"]) if "eps" in labels else None
                    if table == "clean":
                        key = (loss, alpha, defence, "clean", "clean", None, "accuracy")
                    else:
                        label = PAPER_LABELS[table]
                        key = (loss, alpha, defence, "paper", label, eps, "robust_accuracy")
                    assert float(text) == values[key], (table, row["method"], column)
                    checked += 1
    # 6 runs: FGSM and BIM have 2 budgets, the others one cell per run.
    assert checked == 6 * 2 * 2 + 6 * 3


def test_report_has_every_part(suite):
    report = suite["out"] / "report"
    page = (report / "report.html").read_text()
    markdown = (report / "report.md").read_text()
    for table in TABLES:
        assert f'data-table="Table: {table}"' in page
        assert f"**Table: {table}.**" in markdown
    for name in ("Claims per set-up and attack", "Comparison by attack and set-up", "Audit table"):
        assert f'data-table="{name}"' in page
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    names = {Path(f).name for f in figures}
    assert "figure-3-mnist-linear.png" in names
    assert "audit.png" in names
    assert any(n.endswith("triangular_fig1a_gamma0.6.png") for n in names)
    assert any(n.endswith("figure-2a-squeezing.png") for n in names)
    for figure in figures:
        assert (report / figure).is_file(), figure
    # Self-contained: every image inline, nothing fetched from elsewhere.
    assert page.count("<img ") == len(figures)
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r'src="(?!data:)', page)
    verdict = suite["first"].stderr
    assert "verdict on the paper's claims" in verdict


def test_runs_share_one_plainly_trained_twin(suite):
    trained = sorted(p.name for p in (suite["out"] / "artifacts" / "train").iterdir())
    twins = [name for name in trained if name.startswith("twin-")]
    assert len(trained) == 6 + 1 and len(twins) == 1
    with sqlite3.connect(suite["out"] / "results.db") as connection:
        transfer = connection.execute(
            "SELECT COUNT(*) FROM results WHERE protocol='strong' AND attack='transfer'"
        ).fetchone()[0]
    assert transfer >= 6 * 2  # every run, both budgets


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_rerun_on_a_finished_store_trains_nothing(suite):
    out = suite["out"]
    artifacts, theory = snapshot(out / "artifacts"), snapshot(out / "theory")
    with sqlite3.connect(out / "results.db") as connection:
        runs = connection.execute("SELECT key, attempts, finished FROM runs").fetchall()
    values = stored_values(out / "results.db")
    page = out / "report" / "report.html"
    before = page.stat().st_mtime_ns

    again = advls(
        "reproduce", str(suite["spec"]), "--out", str(out), "--no-progress", data=suite["data"]
    )

    assert again.returncode == 0, again.stderr
    assert "all 6 runs are finished; rendering the report only" in again.stderr
    assert "(0 run now, 0 failed)" in again.stderr
    assert snapshot(out / "artifacts") == artifacts  # no checkpoint or evaluation touched
    assert snapshot(out / "theory") == theory  # theory outputs kept: same inputs
    with sqlite3.connect(out / "results.db") as connection:
        assert connection.execute("SELECT key, attempts, finished FROM runs").fetchall() == runs
    assert stored_values(out / "results.db") == values
    assert page.stat().st_mtime_ns > before  # ...but the report was rendered again
    assert Path(again.stdout.strip()) == page


def test_report_command_renders_a_store_elsewhere(suite, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copyfile(suite["out"] / "results.db", copy)
    done = advls("report", "--store", str(copy), "--out", str(tmp_path / "r"), data=suite["data"])
    assert done.returncode == 0, done.stderr
    ours = (tmp_path / "r" / "tables" / "table-fgsm.csv").read_bytes()
    assert ours == (suite["out"] / "report" / "tables" / "table-fgsm.csv").read_bytes()


# --------------------------------------------------------------------------- the browser
def test_report_renders_in_headless_chromium(suite, tmp_path):
    probe = probe_page(suite["out"] / "report" / "report.html", tmp_path)
    markdown = (suite["out"] / "report" / "report.md").read_text()
    assert len(probe["images"]) == len(re.findall(r"!\[[^\]]*\]\([^)]+\.png\)", markdown))
    for image in probe["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    tables = {table["name"]: table["rows"] for table in probe["tables"]}
    for table in TABLES:
        assert tables[f"Table: {table}"] >= 2  # at least normal and adv_training
    assert tables["Audit table"] == 6 * 2  # 6 runs x 2 budgets
    assert tables["Claims per set-up and attack"] >= 1
    assert tables["Every compared cell"] >= 1
