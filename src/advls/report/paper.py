"""Our numbers next to the paper's, cell by cell.

The paper's appendix tables are transcribed in ``paper/paper_tables.csv`` (attack, set-up,
method, eps index, alpha index, accuracy; empty accuracy where the paper prints "/"). A
cell of ours matches one of theirs when all five keys agree, the indices meaning whatever
the spec's ``paper:`` section says they mean (:class:`~advls.report.mapping.PaperMapping`).
The comparison is for reading, not a test: the paper's alpha and eps values are lost, its
models and training budgets differ, so large differences are findings to look at, marked
in bold above a threshold.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from advls.report.cells import CELL_KEYS, TABLE_ORDER
from advls.report.mapping import METHOD_ORDER, PAPER_SETUPS

__all__ = [
    "COMPARISON_COLUMNS",
    "read_paper_tables",
    "side_by_side",
    "side_by_side_markdown",
    "write_side_by_side",
]

COMPARISON_COLUMNS: tuple[str, ...] = (
    *CELL_KEYS,
    "eps",
    "paper_eps",
    "alpha",
    "ours",
    "paper",
    "diff",
)

_PAPER_COLUMNS = (*CELL_KEYS, "accuracy")


def read_paper_tables(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The transcribed tables: one row per cell, ``<NA>`` indices and NaN accuracy for "/"."""
    table = pd.read_csv(
        path,
        dtype={
            "attack": str,
            "setup": str,
            "method": str,
            "eps_index": "Int64",
            "alpha_index": "Int64",
            "accuracy": float,
        },
    )
    missing = [column for column in _PAPER_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path} is not the paper's table file: no column(s) {', '.join(missing)}")
    if table.duplicated(list(CELL_KEYS)).any():
        raise ValueError(f"{path} lists a cell twice")
    return table[list(_PAPER_COLUMNS)]


def _keys_without_na(frame: pd.DataFrame) -> pd.DataFrame:
    # 0 stands for "no index" during the join, so missing indices match each other exactly.
    out = frame.copy()
    for column in ("eps_index", "alpha_index"):
        out[column] = out[column].astype("Int64").fillna(0).astype(int)
    return out


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {
        "attack": {name: i for i, name in enumerate(TABLE_ORDER)},
        "method": {name: i for i, name in enumerate(METHOD_ORDER)},
        "setup": {name: i for i, name in enumerate(PAPER_SETUPS)},
    }
    return frame.sort_values(
        ["attack", "method", "setup", "eps_index", "alpha_index"],
        key=lambda column: column.map(rank[column.name]) if column.name in rank else column,
        kind="stable",
    ).reset_index(drop=True)


def side_by_side(cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ours the paper also has: our value, the paper's and ``ours - paper``.

    ``cells`` is :func:`~advls.report.cells.paper_cells`, ``paper`` is
    :func:`read_paper_tables`. Cells where the paper prints "/" stay, with NaN for the
    paper and the difference; cells the paper lacks (our extra set-ups or baselines) go.
    """
    ours = _keys_without_na(cells).rename(columns={"value": "ours"})
    theirs = _keys_without_na(paper).rename(columns={"accuracy": "paper"})
    merged = ours.merge(
        theirs[[*CELL_KEYS, "paper"]], on=list(CELL_KEYS), how="inner", validate="one_to_one"
    )
    merged["diff"] = merged["ours"] - merged["paper"]
    for column in ("eps_index", "alpha_index"):
        merged[column] = merged[column].astype("Int64").replace(0, pd.NA)
    return _order(merged[list(COMPARISON_COLUMNS)])


def _number(value: float, digits: int, *, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "/"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _index_text(index: object, value: float) -> str:
    if index is pd.NA or index is None:
        return "-"
    return f"{int(index)} ({value:g})" if not math.isnan(value) else str(int(index))


def side_by_side_markdown(
    comparison: pd.DataFrame, *, threshold: float = 0.05, digits: int = 3
) -> str:
    """The comparison as Markdown, one table per attack; ``|diff| > threshold`` in bold."""
    compared = comparison["diff"].notna()
    far = compared & (comparison["diff"].abs() > threshold)
    lines = [
        "# Our results next to the paper's",
        "",
        f"{int(compared.sum())} cells compared ({len(comparison)} matched, the rest are "
        f'"/" in the paper); {int(far.sum())} differ by more than {threshold:g} (in bold).',
    ]
    if compared.any():
        lines[-1] += f" Mean |ours - paper| = {comparison.loc[compared, 'diff'].abs().mean():.3f}."
    lines.append(
        "eps and alpha: the paper's index (our value; eps in the paper's units, see the tables "
        "for the pixel budgets)."
    )
    for attack, block in comparison.groupby("attack", sort=False):
        lines += [
            "",
            f"## {attack}",
            "",
            "| set-up | method | eps | alpha | ours | paper | ours - paper |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for row, is_far in zip(block.itertuples(index=False), far[block.index], strict=True):
            ours = _number(row.ours, digits)
            diff = _number(row.diff, digits, signed=True)
            if is_far:
                ours, diff = f"**{ours}**", f"**{diff}**"
            lines.append(
                f"| {row.setup} | {row.method} | {_index_text(row.eps_index, row.paper_eps)} "
                f"| {_index_text(row.alpha_index, row.alpha)} | {ours} "
                f"| {_number(row.paper, digits)} | {diff} |"
            )
    return "\n".join(lines) + "\n"


def write_side_by_side(
    comparison: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    threshold: float = 0.05,
    digits: int = 3,
) -> list[Path]:
    """Write ``paper-comparison.md`` and ``paper-comparison.csv`` (exact values)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / "paper-comparison.md"
    markdown.write_text(
        side_by_side_markdown(comparison, threshold=threshold, digits=digits), encoding="utf-8"
    )
    csv = out / "paper-comparison.csv"
    comparison.to_csv(csv, index=False, lineterminator="\n")
    return [markdown, csv]
