"""The paper's appendix tables from a results store, as Markdown, CSV and LaTeX.

One table per attack (FGSM, BIM, DeepFool, CW) and one of clean accuracies, laid out as in
the paper: a row per method and set-up (ALS, SLS, BLS, SBLS, then the ``normal`` and
``adv_training`` baselines), a column per eps and alpha for FGSM and BIM and per alpha for
the others. The baselines have no alpha: their values sit in a column labelled ``-``.
Column labels are the paper's values (eps in its units; the caption says how they convert
to [0, 1] pixels), so set-ups attacked at different pixel budgets share a column, as they
do in the paper. CSV cells are the stored numbers to the last bit; Markdown and LaTeX round
for reading. The audit table (paper vs strong protocol) lives here too, since it is written
the same way.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from advls.report.cells import (
    BOUNDED_ATTACKS,
    PAPER_ATTACKS,
    TABLE_ORDER,
    check_results_frame,
    paper_cells,
)
from advls.report.mapping import METHOD_ORDER, PaperMapping, method_name, setup_sort_key

__all__ = [
    "NO_ALPHA",
    "audit_table",
    "certified_column",
    "paper_tables",
    "slug",
    "table_csv",
    "table_latex",
    "table_markdown",
    "tables_from_cells",
    "write_tables",
]

#: The alpha label of the baselines, which have no smoothing.
NO_ALPHA = "-"

_TITLES: Mapping[str, str] = {
    "FGSM": "Adversarial accuracy under FGSM",
    "BIM": "Adversarial accuracy under BIM",
    "DeepFool": "Share of test points DeepFool does not fool",
    "CW": "Share of test points CW-L2 does not fool",
    "clean": "Standard (clean) accuracy",
}
_MARKDOWN_NAMES: Mapping[str, str] = {"eps": "ε", "alpha": "α"}
_LATEX_NAMES: Mapping[str, str] = {"eps": r"\varepsilon", "alpha": r"\alpha"}


# --------------------------------------------------------------------------- building
def _label(values: pd.Series, index: int) -> str:
    """A column label: the value behind an index, or the index when set-ups disagree."""
    distinct = sorted(set(values.dropna()))
    return f"{distinct[0]:g}" if len(distinct) == 1 else f"#{index}"


def _at(column: pd.Series, index: int) -> pd.Series:
    """Rows at a paper index (a nullable column: the baselines have none)."""
    return (column == index).fillna(False).astype(bool)


def _pivot(cells: pd.DataFrame, bounded: bool) -> pd.DataFrame:
    alpha_labels = {
        int(i): _label(cells.loc[_at(cells["alpha_index"], i), "alpha"], int(i))
        for i in sorted(cells["alpha_index"].dropna().unique())
    }
    alphas = list(alpha_labels.values())
    if cells["alpha_index"].isna().any():
        alphas.append(NO_ALPHA)
    if bounded:
        eps_labels = {
            int(i): _label(cells.loc[_at(cells["eps_index"], i), "paper_eps"], int(i))
            for i in sorted(cells["eps_index"].dropna().unique())
        }
        columns: pd.Index = pd.MultiIndex.from_tuples(
            [(eps, alpha) for eps in eps_labels.values() for alpha in alphas],
            names=["eps", "alpha"],
        )
    else:
        columns = pd.Index(alphas, name="alpha")
    methods = [m for m in METHOD_ORDER if m in set(cells["method"])]
    setups = sorted(set(cells["setup"]), key=setup_sort_key)
    present = set(zip(cells["method"], cells["setup"], strict=True))
    rows = pd.MultiIndex.from_tuples(
        [(m, s) for m in methods for s in setups if (m, s) in present], names=["method", "setup"]
    )
    table = pd.DataFrame(math.nan, index=rows, columns=columns, dtype=float)
    for cell in cells.itertuples(index=False):
        alpha = NO_ALPHA if pd.isna(cell.alpha_index) else alpha_labels[int(cell.alpha_index)]
        column = (eps_labels[int(cell.eps_index)], alpha) if bounded else alpha
        table.iat[rows.get_loc((cell.method, cell.setup)), columns.get_loc(column)] = cell.value
    return table


def _caption(attack: str, cells: pd.DataFrame, source: str | None) -> str:
    parts = [f"{_TITLES.get(attack, attack)}{f' ({source})' if source else ''}."]
    parts.append("Rows: method and set-up; columns: ")
    parts[-1] += "eps (the paper's units) and alpha" if attack in BOUNDED_ATTACKS else "alpha"
    parts[-1] += f"; {NO_ALPHA} = no smoothing."
    if attack in BOUNDED_ATTACKS:
        scales = (cells["eps"] / cells["paper_eps"]).groupby(cells["setup"]).first()
        scaled = [f"{setup} x{scale:g}" for setup, scale in scales.items() if scale != 1]
        if scaled:
            parts.append(f"Budgets on [0, 1] pixels are eps times: {', '.join(scaled)}.")
    if (cells["seeds"] > 1).any():
        parts.append(f"Means over up to {int(cells['seeds'].max())} seeds.")
    return " ".join(parts)


def tables_from_cells(
    cells: pd.DataFrame, *, sources: Mapping[str, str] | None = None
) -> dict[str, pd.DataFrame]:
    """The paper's tables from :func:`~advls.report.cells.paper_cells` (attack -> table).

    Each table has a ``(method, setup)`` row index, ``(eps, alpha)`` columns for FGSM and
    BIM and ``alpha`` columns otherwise, NaN where the store has no value, and its caption
    in ``attrs["caption"]``. Attacks without a single cell get no table.
    """
    attacks = [a for a in TABLE_ORDER if a in set(cells["attack"])]
    attacks += sorted(set(cells["attack"]) - set(TABLE_ORDER))
    tables = {}
    for attack in attacks:
        chosen = cells[cells["attack"] == attack]
        table = _pivot(chosen, bounded=attack in BOUNDED_ATTACKS)
        table.attrs["caption"] = _caption(attack, chosen, (sources or {}).get(attack))
        tables[attack] = table
    return tables


def paper_tables(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    *,
    protocol: str = "paper",
    attacks: Mapping[str, str] = PAPER_ATTACKS,
) -> dict[str, pd.DataFrame]:
    """The paper's tables (``FGSM``, ``BIM``, ``DeepFool``, ``CW``, ``clean``) of a results table.

    ``frame`` is :func:`advls.sweep.export.results_table`; ``mapping`` says which runs and
    budgets stand for the paper's set-ups and indices; ``attacks`` maps the paper's attack
    names to the store's labels under ``protocol``. See :mod:`advls.report.cells` for which
    metric fills each table.
    """
    cells = paper_cells(frame, mapping, protocol=protocol, attacks=attacks)
    sources = {name: f"protocol {protocol}, attack {label}" for name, label in attacks.items()}
    sources["clean"] = "accuracy on the evaluated test points"
    return tables_from_cells(cells, sources=sources)


# --------------------------------------------------------------------------- the audit
#: L-inf protocols whose worst case the audit table shows beside the audited one, when run.
BESIDE_AUDITED: tuple[str, ...] = ("autoattack", "autoattack-rand")


def audit_table(
    frame: pd.DataFrame,
    *,
    reference: str = "paper",
    audited: str = "strong",
    beside: tuple[str, ...] = BESIDE_AUDITED,
) -> pd.DataFrame:
    """Per run and budget: the worst case over the ``reference`` and ``audited`` protocols.

    A defence that looks robust only under the authors' attacks shows a large ``gap``
    (reference minus audited, in accuracy). Columns: ``run, name, dataset, model, method,
    alpha, seed, eps``, one column per protocol (named after it; the ``beside`` protocols
    follow the audited one where any run has them, e.g. the AutoAttack number), ``gap`` and
    ``flags`` (the gradient-masking checks the run raised). Empty when no run has
    ``audited`` results.
    """
    check_results_frame(frame)
    worst = frame[(frame["attack"] == "worst_case") & (frame["metric"] == "robust_accuracy")]
    present = set(worst["protocol"])
    protocols = [reference, audited, *(p for p in beside if p in present and p != audited)]
    identity = ["run", "name", "dataset", "model", "method", "alpha", "seed", "eps"]
    columns = [*identity, *protocols, "gap", "flags"]
    worst = worst[worst["protocol"].isin(protocols)]
    if not (worst["protocol"] == audited).any():
        return pd.DataFrame(columns=columns)
    wide = worst.set_index(["run", "eps", "protocol"])["value"].unstack("protocol")
    wide = wide.reindex(columns=protocols)
    wide = wide[wide[audited].notna()].reset_index()
    wide["gap"] = wide[reference] - wide[audited]

    raised = frame[
        (frame["protocol"] == "audit")
        & frame["attack"].str.startswith("flag:")
        & (frame["metric"] == "raised")
        & (frame["value"] == 1)
    ]
    flags = raised.groupby("run")["attack"].agg(
        lambda names: ", ".join(sorted(n.removeprefix("flag:") for n in names))
    )
    runs = frame.drop_duplicates("run").set_index("run")
    info = runs.loc[wide["run"]]
    wide["name"] = info["name"].to_numpy()
    wide["dataset"] = info["dataset"].to_numpy()
    wide["model"] = info["model"].to_numpy()
    wide["method"] = [
        method_name(loss, defence)
        for loss, defence in zip(info["loss"], info["defence"], strict=True)
    ]
    wide["alpha"] = info["alpha"].to_numpy()
    wide["seed"] = info["seed"].to_numpy()
    wide["flags"] = wide["run"].map(flags).fillna("")
    proven = certified_column(frame, wide)
    if proven is not None:  # the bracket's lower end, beside the protocols' upper ones
        wide["certified"] = proven
        columns.insert(columns.index("gap"), "certified")
    table = wide[columns].sort_values(["name", "eps"], kind="stable").reset_index(drop=True)
    table.columns.name = None
    table.attrs["caption"] = (
        f"Worst-case robust accuracy per run and budget ([0, 1] pixels) under the {reference} "
        f"and the {audited} protocol"
        + "".join(f", and {p}" for p in protocols[2:])
        + (
            "; certified = the share proven robust by any bound method, so the truth lies in "
            f"[certified, {audited}]"
            if proven is not None
            else ""
        )
        + f"; gap = {reference} - {audited}; flags = gradient-masking checks raised."
    )
    return table


def certified_column(frame: pd.DataFrame, wide: pd.DataFrame) -> list[Any] | None:
    """For each ``(run, eps)`` row of ``wide``, the certified accuracy by any bound method
    that ``frame`` (a results table) holds, None where that run was not certified; None
    when no run was."""
    rows = frame[
        (frame["protocol"] == "certify")
        & (frame["attack"] == "any")
        & (frame["metric"] == "certified_accuracy")
    ]
    if rows.empty:
        return None
    proven = rows.set_index(["run", "eps"])["value"]
    return [proven.get(key) for key in zip(wide["run"], wide["eps"], strict=True)]


# --------------------------------------------------------------------------- rendering
def _format(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""  # no value, or none that applies (a baseline has no alpha)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row_keys(table: pd.DataFrame) -> tuple[list[str], list[tuple[Hashable, ...]]]:
    """Index level names and keys, or nothing for a plain running index."""
    if isinstance(table.index, pd.RangeIndex):
        return [], [() for _ in range(len(table))]
    names = [str(name) if name is not None else "" for name in table.index.names]
    keys = [key if isinstance(key, tuple) else (key,) for key in table.index]
    return names, keys


def _shown_keys(keys: list[tuple[Hashable, ...]]) -> list[list[str]]:
    """Row keys with a repeated leading level blanked, as the paper prints its method once."""
    shown, previous = [], None
    for key in keys:
        texts = [str(part) for part in key]
        if previous is not None and len(key) > 1 and key[0] == previous[0]:
            texts[0] = ""
        shown.append(texts)
        previous = key
    return shown


def _column_text(table: pd.DataFrame, column: Hashable, names: Mapping[str, str]) -> str:
    levels = column if isinstance(column, tuple) else (column,)
    level_names = list(table.columns.names)
    if all(name is None for name in level_names):
        return " ".join(str(level) for level in levels)
    return ", ".join(
        f"{names.get(str(n), n)}={level}" if n is not None else str(level)
        for n, level in zip(level_names, levels, strict=True)
    )


def table_markdown(table: pd.DataFrame, *, digits: int = 3) -> str:
    """A table as GitHub Markdown, caption first, values to ``digits`` decimals."""
    names, keys = _row_keys(table)
    headers = [*names, *(_column_text(table, c, _MARKDOWN_NAMES) for c in table.columns)]
    lines = []
    if table.attrs.get("caption"):
        lines += [table.attrs["caption"], ""]
    lines.append("| " + " | ".join(headers) + " |")
    aligns = ["---:" if pd.api.types.is_numeric_dtype(dtype) else "---" for dtype in table.dtypes]
    lines.append("|" + "|".join(["---"] * len(names) + aligns) + "|")
    for shown, values in zip(_shown_keys(keys), table.itertuples(index=False), strict=True):
        cells = [*shown, *(_format(value, digits) for value in values)]
        # One line per row: "|" would end a cell and a newline the row (error messages).
        shown_cells = (" ".join(cell.split()).replace("|", r"\|") for cell in cells)
        lines.append("| " + " | ".join(shown_cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = re.compile(r"([\\&%$#_{}~^])")


def _latex_escape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        return {
            "\\": r"\textbackslash{}",
            "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}",
        }.get(char, "\\" + char)

    return _LATEX_SPECIAL.sub(replace, text)


def _latex_level(name: Hashable, value: Hashable) -> str:
    if value == NO_ALPHA:
        return "--"
    text = _latex_escape(str(value))
    if name is None:
        return text
    symbol = _LATEX_NAMES.get(str(name))
    return f"${symbol} = {text}$" if symbol else f"{_latex_escape(str(name))}={text}"


def table_latex(table: pd.DataFrame, *, digits: int = 3, label: str | None = None) -> str:
    """A table as a LaTeX ``table`` float (booktabs), values to ``digits`` decimals.

    Written by hand rather than with ``DataFrame.to_latex``, which needs jinja2 and cannot
    group the eps columns the way the paper does.
    """
    names, keys = _row_keys(table)
    spec = "l" * len(names) + "r" * table.shape[1]
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[htbp]",
        r"\centering",
    ]
    if table.attrs.get("caption"):
        lines.append(rf"\caption{{{_latex_escape(table.attrs['caption'])}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    level_names = list(table.columns.names)
    if isinstance(table.columns, pd.MultiIndex) and table.columns.nlevels == 2:
        groups: list[tuple[Hashable, int]] = []
        for top, _ in table.columns:
            if groups and groups[-1][0] == top:
                groups[-1] = (top, groups[-1][1] + 1)
            else:
                groups.append((top, 1))
        heads, rules, start = [""] * len(names), [], len(names) + 1
        for top, width in groups:
            heads.append(rf"\multicolumn{{{width}}}{{c}}{{{_latex_level(level_names[0], top)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join(heads) + r" \\")
        lines.append(" ".join(rules))
        bottom = [_latex_level(level_names[1], second) for _, second in table.columns]
    else:
        bottom = [_latex_level(level_names[0], column) for column in table.columns]
    lines.append(" & ".join([*(_latex_escape(n) for n in names), *bottom]) + r" \\")
    lines.append(r"\midrule")
    previous: tuple[Hashable, ...] | None = None
    for key, shown, values in zip(
        keys, _shown_keys(keys), table.itertuples(index=False), strict=True
    ):
        if previous is not None and len(key) > 1 and key[0] != previous[0]:
            lines.append(r"\midrule")
        cells = [*shown, *(_format(value, digits) for value in values)]
        lines.append(" & ".join(_latex_escape(cell) for cell in cells) + r" \\")
        previous = key
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def table_csv(table: pd.DataFrame) -> str:
    """A table as CSV with one header row (``eps=0.05 alpha=0.1``) and exact values."""
    flat = table.copy()
    level_names = list(table.columns.names)
    if any(name is not None for name in level_names):
        flat.columns = [
            " ".join(
                f"{n}={level}"
                for n, level in zip(level_names, c if isinstance(c, tuple) else (c,), strict=True)
            )
            for c in table.columns
        ]
    if not isinstance(flat.index, pd.RangeIndex):
        flat = flat.reset_index()
    return flat.to_csv(index=False, lineterminator="\n")


def slug(name: str) -> str:
    """A file-name stem: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "table"


def write_tables(
    tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str], *, digits: int = 3
) -> list[Path]:
    """Write each table as ``table-<name>.md``, ``.csv`` and ``.tex``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        stem = out / f"table-{slug(name)}"
        for suffix, text in (
            (".md", table_markdown(table, digits=digits)),
            (".csv", table_csv(table)),
            (".tex", table_latex(table, digits=digits, label=f"tab:{slug(name)}")),
        ):
            path = stem.with_suffix(suffix)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
