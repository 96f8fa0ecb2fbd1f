"""A whole report from a results store: tables, the paper comparison, figures, the audit, the
verdict, and ``report.md`` / ``report.html`` tying them together.

Everything is re-derived from the store (and the paper's transcribed tables), so rendering
twice gives the same files, and a report can be rebuilt anywhere the store is copied to.

Audits of models advls did not train (runs of a ``model:`` spec) have no loss or alpha, so
the paper's tables, comparison, figures and claims are built from the trained runs alone;
the audited models get a table of their own (:func:`audited_models_table`), and a store of
audits only gets that table and says why the paper's are missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from advls.atomic import write_text_atomically
from advls.report.cells import BOUNDED_ATTACKS, PAPER_ATTACKS, paper_cells
from advls.report.claims import CLAIMS, check_claims
from advls.report.figures import (
    plot_accuracy_vs_alpha,
    plot_accuracy_vs_eps,
    plot_audit,
    plot_brackets,
    plot_setups_vs_alpha,
    save_figure,
)
from advls.report.mapping import PAPER_SETUPS, SMOOTHING_METHODS, PaperMapping, setup_sort_key
from advls.report.page import (
    Document,
    FigureBlock,
    Section,
    TableBlock,
    TextBlock,
    render_html,
    render_markdown,
)
from advls.report.paper import read_paper_tables, side_by_side, write_side_by_side
from advls.report.tables import (
    audit_table,
    certified_column,
    slug,
    tables_from_cells,
    write_tables,
)
from advls.store import Store
from advls.sweep.export import results_table

__all__ = [
    "ReportFiles",
    "audited_models_table",
    "build_report",
    "default_paper_tables",
    "mappings_from_store",
]

#: |ours - paper| above this is highlighted in the comparison.
FAR = 0.05
#: A paper-minus-strong gap above this is highlighted in the audit.
AUDIT_GAP = 0.05


def default_paper_tables() -> Path:
    """The paper's appendix tables as shipped with advls (a verbatim copy of the transcription)."""
    return Path(str(resources.files("advls.report") / "paper_tables.csv"))


@dataclass
class ReportFiles:
    """What :func:`build_report` wrote, relative paths under ``out_dir``."""

    out_dir: Path
    html: Path
    markdown: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    runs: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs
def _inferred_mapping(frame: pd.DataFrame) -> PaperMapping | None:
    """A mapping for sweeps without a ``paper:`` section: their own alphas and budgets."""
    known = {value: name for name, value in PAPER_SETUPS.items()}
    pairs = frame[["dataset", "model"]].drop_duplicates().itertuples(index=False)
    setups = {f"{d}/{m}": known.get((d, m), f"{d} {m}") for d, m in pairs}
    smoothed = frame[frame["loss"].isin(list(SMOOTHING_METHODS))]
    alphas = sorted(set(smoothed["alpha"].astype(float)))
    budgets = frame[(frame["protocol"] == "paper") & (frame["attack"] == "fgsm")]["eps"]
    eps = sorted(set(budgets.dropna().astype(float)))
    if not setups or not alphas or not eps:
        return None
    return PaperMapping(setups=setups, alpha=tuple(alphas), eps=tuple(eps))


def mappings_from_store(
    store: Store, sweeps: Sequence[str], frame: pd.DataFrame
) -> tuple[list[PaperMapping], list[str]]:
    """Each sweep's ``paper:`` section, or one inferred from its own results.

    Returns the mappings and the names of the sweeps whose mapping was inferred (their
    indices are only the sorted alphas and budgets they ran, not a choice about the paper).

    Raises:
        ValueError: a bad ``paper:`` section, or two sweeps mapping one set-up differently
            (report them one at a time).
    """
    mappings: list[PaperMapping] = []
    inferred: list[str] = []
    owners: dict[str, tuple[str, PaperMapping]] = {}
    for name in sweeps:
        section = (store.sweep_spec(name) or {}).get("paper")
        try:
            mapping = PaperMapping.from_dict(section) if section else None
        except ValueError as error:
            raise ValueError(f"sweep {name!r}: {error}") from None
        if mapping is None:
            mapping = _inferred_mapping(frame[frame["sweep"] == name])
            if mapping is None:
                continue
            inferred.append(name)
        for setup in set(mapping.setups.values()):
            other = owners.get(setup)
            if other is not None and (other[1].alpha, other[1].eps, other[1].eps_scale) != (
                mapping.alpha,
                mapping.eps,
                mapping.eps_scale,
            ):
                raise ValueError(
                    f"sweeps {other[0]!r} and {name!r} map the set-up {setup!r} to different "
                    "alphas or budgets; report one of them at a time (--sweep)"
                )
            owners.setdefault(setup, (name, mapping))
        mappings.append(mapping)
    return mappings, inferred


# --------------------------------------------------------------------------- highlighting
def _far_cells(
    frame: pd.DataFrame, threshold: float
) -> Callable[[Hashable, Hashable, object], str]:
    far = frame["diff"].abs() > threshold

    def cell_class(key: Hashable, column: Hashable, value: object) -> str:
        if column == "diff" and isinstance(value, float) and value == value:
            return "far" if far.loc[key] else ("up" if value > 0 else "down")
        return "far" if column == "ours" and far.loc[key] else ""

    return cell_class


def _audit_cells(key: Hashable, column: Hashable, value: object) -> str:
    if column == "gap" and isinstance(value, float) and value > AUDIT_GAP:
        return "far"
    return "flag" if column == "flags" and value else ""


def _verdict_cells(key: Hashable, column: Hashable, value: object) -> str:
    return str(value) if column == "verdict" else ""


# --------------------------------------------------------------------------- sections
class _Writer:
    """Writes figures and tables under ``out`` and remembers their relative paths."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.figures: list[Path] = []
        self.tables: dict[str, Path] = {}

    def figure(self, figure: Figure, stem: str, title: str, caption: str) -> FigureBlock:
        paths = save_figure(figure, self.out / "figures" / stem)
        relative = [str(p.relative_to(self.out)) for p in paths]
        self.figures += [Path(p) for p in relative]
        return FigureBlock(title=title, png=relative[0], caption=caption, files=relative[1:])

    def tables_of(self, tables: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
        written = write_tables(tables, self.out / "tables")
        files: dict[str, list[str]] = {}
        for name in tables:
            stem = f"table-{slug(name)}"
            files[name] = [str(p.relative_to(self.out)) for p in written if p.stem == stem]
            self.tables[name] = self.out / "tables" / f"{stem}.csv"
        return files


def _verdict_section(claims: pd.DataFrame, writer: _Writer) -> Section:
    section = Section("Verdict: the paper's claims on our runs")
    if claims.empty:
        section.blocks.append(
            TextBlock(["No claim could be checked: the store lacks the baselines or methods."])
        )
        return section
    bullets = []
    for claim, statement in CLAIMS.items():
        rows = claims[claims["claim"] == claim]
        if rows.empty:
            continue
        counts = rows["verdict"].value_counts()
        agree, ties = int(rows["agree"].sum()), int(rows["ties"].sum())
        decided = int(rows["compared"].sum()) - ties
        verdicts = ("holds", "partly", "fails", "tied")
        parts = ", ".join(f"{counts[v]} {v}" for v in verdicts if counts.get(v, 0))
        tied = f" ({ties} ties left out)" if ties else ""
        bullets.append(
            f"**{statement}**: {agree} of {decided} comparisons agree{tied}; per set-up and "
            f"attack: {parts}."
        )
    section.blocks.append(
        TextBlock(
            [
                "Each claim is counted over the cells of the tables below: a claim *holds* for "
                "a set-up and attack when at least 75% of its comparisons go the paper's way, "
                "*partly* from 25%, and *fails* below. Clean accuracy counts as kept within "
                "0.01 of the normal model."
            ],
            bullets,
        )
    )
    shown = claims.drop(columns=["statement"]).copy()
    files = writer.tables_of({"claims": shown})["claims"]
    section.blocks.append(
        TableBlock(
            "Claims per set-up and attack",
            shown,
            caption="compared: cells compared; agree: cells that go the paper's way; ties: "
            "exact ties, left out of share = agree / (compared - ties); mean_diff: mean "
            "difference (positive = the paper's way).",
            files=files,
            cell_class=_verdict_cells,
        )
    )
    return section


def _tables_section(tables: dict[str, pd.DataFrame], writer: _Writer) -> Section:
    section = Section("The paper's tables")
    files = writer.tables_of(tables)
    for name, table in tables.items():
        caption = table.attrs.get("caption", "")
        section.blocks.append(TableBlock(f"Table: {name}", table, caption, files[name]))
    return section


def _comparison_section(
    cells: pd.DataFrame,
    paper_path: Path,
    writer: _Writer,
    threshold: float,
    inferred: Sequence[str] = (),
) -> Section:
    section = Section("Side by side with the paper")
    comparison = side_by_side(cells, read_paper_tables(paper_path))
    if comparison.empty:
        section.blocks.append(
            TextBlock(
                ["None of our set-ups is one of the paper's, so there is nothing to compare."]
            )
        )
        return section
    written = write_side_by_side(comparison, writer.out / "tables", threshold=threshold)
    writer.tables["paper-comparison"] = written[1]
    files = [str(p.relative_to(writer.out)) for p in written]
    compared = comparison[comparison["diff"].notna()].copy()
    compared["abs_diff"] = compared["diff"].abs()
    summary = (
        compared.groupby(["attack", "setup"], sort=False)
        .agg(
            cells=("diff", "size"),
            ours=("ours", "mean"),
            paper=("paper", "mean"),
            mean_diff=("diff", "mean"),
            mean_abs_diff=("abs_diff", "mean"),
            far=("abs_diff", lambda d: int((d > threshold).sum())),
        )
        .reset_index()
    )
    blank = int(comparison["paper"].isna().sum())
    missing = int(comparison["ours"].isna().sum())
    text = (
        f"{len(compared)} of our cells have a number in the paper ({blank} more where the "
        "paper prints “/”"
        + (f", {missing} where our value is missing" if missing else "")
        + f"). Means per attack and set-up below; cells more than {threshold:g} apart are "
        "highlighted in the full comparison. The paper's alpha and eps values were lost with "
        "its formulas: our indices stand for the values the spec's `paper:` section names, so "
        "differences are findings to read, not failures."
    )
    if inferred:
        text += (
            f" Sweep(s) {', '.join(inferred)} have no `paper:` section: their indices are "
            "just their own alphas and budgets in increasing order, so the comparison is loose."
        )
    section.blocks.append(TextBlock([text]))
    section.blocks.append(
        TableBlock(
            "Comparison by attack and set-up",
            summary,
            caption="ours / paper: mean accuracy over the compared cells; far: cells with "
            f"|ours - paper| > {threshold:g}.",
            files=files,
        )
    )
    full = comparison.drop(columns=["eps_index", "alpha_index"])
    section.blocks.append(
        TableBlock(
            "Every compared cell",
            full,
            caption="eps in the paper's units (paper_eps) and on [0, 1] pixels (eps).",
            files=files,
            cell_class=_far_cells(full, threshold),
            collapsed=True,
        )
    )
    return section


def _figure_section(
    frame: pd.DataFrame, mappings: Sequence[PaperMapping], cells: pd.DataFrame, writer: _Writer
) -> Section:
    section = Section("Figures")
    setups = sorted(set(cells["setup"]), key=setup_sort_key)
    eps_indices = sorted(int(i) for i in cells["eps_index"].dropna().unique())
    middle = eps_indices[len(eps_indices) // 2] if eps_indices else 1

    def add(draw: Callable[[], Figure], stem: str, title: str, caption: str) -> None:
        try:  # a plot raises ValueError when the store has nothing for it: leave it out
            figure = draw()
        except ValueError:
            return
        section.blocks.append(writer.figure(figure, stem, title, caption))

    for setup in setups:
        add(
            lambda setup=setup: plot_accuracy_vs_alpha(frame, mappings, setup, eps_index=middle),
            f"figure-3-{slug(setup)}",
            f"Accuracy against α, {setup}",
            "The paper's Figure 3 (a-c): adversarial accuracy against the smoothing strength "
            f"for each attack, FGSM and BIM at the paper's eps index {middle}; horizontal "
            "lines are the normal model and FGSM adversarial training.",
        )
    add(
        lambda: plot_setups_vs_alpha(frame, mappings, eps_index=middle),
        "figure-3d-setups",
        "FGSM across set-ups",
        f"The paper's Figure 3 (d): ALS under FGSM (eps index {middle}) against α for every "
        "set-up; dotted lines are each set-up's normal model.",
    )
    for setup in setups:
        for attack in BOUNDED_ATTACKS:
            add(
                lambda setup=setup, attack=attack: plot_accuracy_vs_eps(
                    frame, mappings, setup, attack=attack
                ),
                f"accuracy-vs-eps-{slug(attack)}-{slug(setup)}",
                f"{attack} accuracy against ε, {setup}",
                "One panel per smoothing method, a line per α, starting from clean accuracy "
                "at ε = 0; the baselines are repeated in every panel.",
            )
    if not section.blocks:
        section.blocks.append(TextBlock(["The store has no results the paper's figures use."]))
    return section


def _bracket_figure(section: Section, frame: pd.DataFrame, writer: _Writer, stem: str) -> None:
    """The bracket figure of the certified runs in ``frame``, where any was certified."""
    try:
        figure = plot_brackets(frame)
    except ValueError:
        return
    section.blocks.append(
        writer.figure(
            figure,
            stem,
            "Certified and attacked",
            "Per certified run: each bound method's certified accuracy against ε (green) and "
            "the attacked worst case (black); the truth lies in the shaded bracket.",
        )
    )


def _audit_section(audit: pd.DataFrame, frame: pd.DataFrame, writer: _Writer) -> Section:
    section = Section("Audit: the paper's protocol against the strong one")
    _bracket_figure(section, frame, writer, "brackets")
    if audit.empty:
        section.blocks.append(
            TextBlock(
                [
                    "No run was evaluated with the strong protocol, so these numbers rest on "
                    "the paper's attacks alone. Add `strong` to the spec's "
                    "`evaluate.protocols` to audit them (PGD with restarts, APGD-CE/DLR, "
                    "Square and a transfer attack, with the gradient-masking checks)."
                ]
            )
        )
        return section
    flagged = audit[audit["flags"] != ""]
    overstated = audit[audit["gap"] > AUDIT_GAP]
    section.blocks.append(
        TextBlock(
            [
                f"{audit['run'].nunique()} runs at {audit['eps'].nunique()} budgets. The "
                f"strong protocol lowers the worst case by {audit['gap'].mean():.3f} on average "
                f"(largest {audit['gap'].max():.3f}); {len(overstated)} run-budget pairs lose "
                f"more than {AUDIT_GAP:g}, and {flagged['run'].nunique()} runs raised a "
                "gradient-masking flag."
            ]
        )
    )
    section.blocks.append(
        writer.figure(
            plot_audit(audit),
            "audit",
            "Audit",
            "Worst-case accuracy per run and budget under the paper's attacks (x) and the "
            "strong protocol (y); points below the diagonal are overstated by the paper's "
            "protocol.",
        )
    )
    shown = audit.drop(columns=["run"])
    files = writer.tables_of({"audit": shown})["audit"]
    section.blocks.append(
        TableBlock(
            "Audit table",
            shown,
            caption=audit.attrs.get("caption", ""),
            files=files,
            cell_class=_audit_cells,
        )
    )
    return section


def audited_models_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per audited model and budget: clean accuracy, each protocol's worst case, the flags.

    ``frame`` is a results table (:func:`advls.sweep.export.results_table`); only its audits
    (rows with a ``factory``) are read. Columns: ``name, dataset, weights_sha256`` (its first
    12 digits), ``eps``, ``clean``, one column per protocol (the per-example worst case over
    its attacks at that budget; an L2 protocol's rows are at its L2 budgets) and ``flags``
    (the gradient-masking checks the run raised). Empty when the store holds no audit.
    """
    rows = frame[frame["factory"].notna()]
    worst = rows[(rows["attack"] == "worst_case") & (rows["metric"] == "robust_accuracy")]
    protocols = list(dict.fromkeys(worst["protocol"]))
    columns = ["name", "dataset", "weights_sha256", "eps", "clean", *protocols, "flags"]
    if worst.empty:
        return pd.DataFrame(columns=columns)
    wide = worst.set_index(["run", "eps", "protocol"])["value"].unstack("protocol")
    wide = wide.reindex(columns=protocols).reset_index()
    runs = rows.drop_duplicates("run").set_index("run").loc[wide["run"]]
    clean = rows[(rows["protocol"] == "clean") & (rows["metric"] == "accuracy")]
    raised = rows[
        (rows["protocol"] == "audit")
        & rows["attack"].str.startswith("flag:")
        & (rows["metric"] == "raised")
        & (rows["value"] == 1)
    ]
    flags = raised.groupby("run")["attack"].agg(
        lambda names: ", ".join(sorted(n.removeprefix("flag:") for n in names))
    )
    wide["name"] = runs["name"].to_numpy()
    wide["dataset"] = runs["dataset"].to_numpy()
    wide["weights_sha256"] = [
        str(d)[:12] if isinstance(d, str) else "" for d in runs["weights_sha256"]
    ]
    wide["clean"] = wide["run"].map(clean.set_index("run")["value"])
    wide["flags"] = [flags.get(run, "") for run in wide["run"]]
    proven = certified_column(rows, wide)
    if proven is not None:  # the bracket's lower end
        wide["certified"] = proven
        columns.insert(columns.index("flags"), "certified")
    table = wide[columns].sort_values(["name", "eps"], kind="stable").reset_index(drop=True)
    table.columns.name = None
    return table


def _audited_section(frame: pd.DataFrame, writer: _Writer, *, trained: bool) -> Section:
    table = audited_models_table(frame)
    section = Section("Audited models")
    count = frame[frame["factory"].notna()]["run"].nunique()
    scope = (
        "they cover the trained runs only"
        if trained
        else "this report has none of them: the store holds audits only"
    )
    section.blocks.append(
        TextBlock(
            [
                f"{count} models audited from outside advls (runs of a `model:` spec: a "
                "factory and its weights, nothing trained). The paper's tables, the side by "
                "side, its figures and the verdict on its claims are built from runs advls "
                f"trained, whose losses and alphas they compare; {scope}."
            ]
        )
    )
    files = writer.tables_of({"audited-models": table})["audited-models"]
    section.blocks.append(
        TableBlock(
            "Audited models",
            table,
            caption="clean: accuracy on the evaluated points; one column per protocol: the "
            "worst case over its attacks at each budget ([0, 1] pixels); weights_sha256: the "
            "first 12 digits of the weights' sha256; certified (where bounds ran): the share "
            "proven robust by any bound method, the lower end of the bracket; flags: "
            "gradient-masking checks raised.",
            files=files,
            cell_class=_audit_cells,
            collapsed=len(table) > 40,
        )
    )
    _bracket_figure(section, frame, writer, "brackets-audited")
    return section


#: Figures of the theory experiments: (result file, figure glob, title, caption).
_THEORY = (
    (
        "triangular.json",
        "triangular_fig1a_*.png",
        "Triangular experiment: densities and decision boundaries",
        "The paper's Figure 1 (a): the two classes' weighted densities, the Bayes, CE and ALS "
        "thresholds, and the points an attack flips (advls triangular, computed exactly).",
    ),
    (
        "triangular.json",
        "triangular_fig1b_*.png",
        "Triangular experiment: accuracy under attack",
        "The paper's Figure 1 (b): adversarial accuracy against the attack size for the Bayes "
        "classifier, CE and ALS at several α (advls triangular, computed exactly).",
    ),
    (
        "squeezing.json",
        "figure-2a-*.png",
        "Logit squeezing",
        "The paper's Figure 2 (a): logit margins and top probabilities per method and α "
        "(advls analyze on this report's checkpoints).",
    ),
    (
        "squeezing.json",
        "figure-2b-*.png",
        "Gradient gap",
        "The paper's Figure 2 (b): densities of the input-gradient gap between the true and "
        "the best other class, per method and α (advls analyze on this report's checkpoints).",
    ),
)


def _theory_section(theory_dirs: Sequence[Path], writer: _Writer) -> Section | None:
    blocks: list[FigureBlock] = []
    for number, directory in enumerate(theory_dirs):
        for result, pattern, title, caption in _THEORY:
            if not (directory / result).is_file():
                continue
            for png in sorted((directory / "figures").glob(pattern)):
                target = writer.out / "figures" / "theory" / f"{number}-{png.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, target)
                relative = target.relative_to(writer.out)
                writer.figures.append(relative)
                blocks.append(FigureBlock(title=title, png=str(relative), caption=caption))
    if not blocks:
        return None
    return Section("Theory: the triangular toy and logit squeezing", list(blocks))


def _runs_section(store: Store, keys: list[str]) -> Section:
    records = store.runs(keys)
    rows = []
    for record in records:
        timings = record.get("timings") or {}
        rows.append(
            {
                "run": record["name"],
                "status": record["status"],
                "attempts": record["attempts"],
                "train_s": timings.get("train_seconds", float("nan")),
                "eval_s": timings.get("eval_seconds", float("nan")),
                "error": (record.get("error") or "")[:160],
            }
        )
    frame = pd.DataFrame(rows, columns=["run", "status", "attempts", "train_s", "eval_s", "error"])
    failed = frame[frame["status"] == "failed"]
    text = [
        f"{len(frame)} runs: {int((frame['status'] == 'done').sum())} done, {len(failed)} "
        f"failed, {int(frame['status'].isin(['pending', 'running']).sum())} not finished. "
        "Only finished runs enter the tables."
    ]
    return Section(
        "Runs",
        [
            TextBlock(text),
            TableBlock(
                "Runs and their cost",
                frame,
                caption="train_s / eval_s: seconds of training and evaluation.",
                digits=1,
                collapsed=len(frame) > 12,
            ),
        ],
    )


# --------------------------------------------------------------------------- the report
def build_report(
    store: Store,
    out_dir: str | os.PathLike[str],
    *,
    sweeps: Sequence[str] | None = None,
    paper_tables: str | os.PathLike[str] | None = None,
    theory_dirs: Sequence[str | os.PathLike[str]] = (),
    threshold: float = FAR,
    title: str | None = None,
) -> ReportFiles:
    """Render the report of ``sweeps`` (default: every sweep of the store) into ``out_dir``.

    Writes ``report.md`` and ``report.html`` (one self-contained page), ``tables/`` (each
    table as Markdown, CSV with exact values and LaTeX; the paper comparison; the audit;
    the claims) and ``figures/`` (PNG and PDF). ``theory_dirs`` are output folders of
    ``advls triangular`` or ``advls analyze`` whose figures the report should show.

    Raises:
        ValueError: an unknown sweep, no finished run, or a bad ``paper:`` section.
    """
    names = list(store.sweeps()) if sweeps is None else list(sweeps)
    unknown = [name for name in names if name not in store.sweeps()]
    if unknown or not names:
        known = ", ".join(store.sweeps()) or "none"
        raise ValueError(
            f"the store has no sweep named {unknown[0] if unknown else '(any)'!r} (known: {known})"
        )
    keys = [key for name in names for key in store.sweep_keys(name)]
    frames = [results_table(store, name).assign(sweep=name) for name in names]
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(
        ["run", "protocol", "attack", "eps", "metric"]
    )
    if frame.empty:
        raise ValueError(
            f"no finished run in sweep(s) {', '.join(names)}; run them first (advls sweep run)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out)
    audits = frame["factory"].notna()
    trained, audited = frame[~audits], frame[audits]

    sections: list[Section] = []
    claims = pd.DataFrame()
    if not trained.empty:
        mappings, inferred = mappings_from_store(store, names, trained)
        cells = paper_cells(trained, mappings) if mappings else pd.DataFrame()
        audit = audit_table(trained)
        claims = check_claims(cells, audit) if not cells.empty else pd.DataFrame()
        sections.append(_verdict_section(claims, writer))
        if not cells.empty:
            sections.append(_tables_section(tables_from_cells(cells, sources=_SOURCES), writer))
            sections.append(
                _comparison_section(
                    cells, Path(paper_tables or default_paper_tables()), writer, threshold, inferred
                )
            )
            sections.append(_figure_section(trained, mappings, cells, writer))
        sections.append(_audit_section(audit, trained, writer))
    if not audited.empty:
        sections.append(_audited_section(audited, writer, trained=not trained.empty))
    theory = _theory_section([Path(d) for d in theory_dirs], writer)
    if theory is not None:
        sections.append(theory)
    sections.append(_runs_section(store, keys))

    counts = store.counts(keys)
    specs = [store.sweep_spec(name) or {} for name in names]
    descriptions = [
        f"`{n}`: {s.get('description') or 'no description'}"
        for n, s in zip(names, specs, strict=True)
    ]
    summary = TextBlock(
        [
            f"{counts['done']} of {sum(counts.values())} runs finished "
            f"({counts['failed']} failed). Accuracies are on the evaluated test points; "
            "budgets are L∞ on [0, 1] pixels unless a table says the paper's units.",
            "Regenerate with `advls report --store STORE --out DIR`; every number comes from "
            "the store, the paper's from its transcribed appendix tables.",
        ],
        descriptions,
    )
    document = Document(title or f"advls report: {', '.join(names)}", summary, sections)
    markdown = out / "report.md"
    write_text_atomically(markdown, render_markdown(document))
    page = out / "report.html"
    write_text_atomically(page, render_html(document, out))
    return ReportFiles(
        out_dir=out,
        html=page,
        markdown=markdown,
        tables=writer.tables,
        figures=writer.figures,
        claims=claims,
        runs=counts,
    )


_SOURCES = {
    **{table: f"protocol paper, attack {label}" for table, label in PAPER_ATTACKS.items()},
    "clean": "accuracy on the evaluated test points",
}
