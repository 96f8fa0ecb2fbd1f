"""Tables and figures of the reproduction, read from a results store.

The input is always the flat results table of :func:`advls.sweep.export.results_table` and,
for anything the paper indexes, a :class:`PaperMapping` built from a spec's ``paper:``
section; nothing here opens the store, reads YAML or trains.

- ``mapping``: which runs and budgets stand for the paper's set-ups, methods and indices.
- ``cells``: the store's rows in the paper's vocabulary, and the cells of its tables.
- ``tables``: the paper's tables and the audit table, as Markdown, CSV and LaTeX.
- ``paper``: our cells next to the paper's transcribed numbers.
- ``figures``: the paper's Figure 3, accuracy-vs-eps curves and the audit plot.
"""

from __future__ import annotations

from advls.report.cells import PAPER_ATTACKS, TABLE_ORDER, labelled_results, paper_cells
from advls.report.figures import (
    plot_accuracy_vs_alpha,
    plot_accuracy_vs_eps,
    plot_audit,
    plot_setups_vs_alpha,
    save_figure,
)
from advls.report.mapping import PAPER_SETUPS, PaperMapping, method_name
from advls.report.paper import (
    read_paper_tables,
    side_by_side,
    side_by_side_markdown,
    write_side_by_side,
)
from advls.report.tables import (
    audit_table,
    paper_tables,
    table_csv,
    table_latex,
    table_markdown,
    tables_from_cells,
    write_tables,
)

__all__ = [
    "PAPER_ATTACKS",
    "PAPER_SETUPS",
    "TABLE_ORDER",
    "PaperMapping",
    "audit_table",
    "labelled_results",
    "method_name",
    "paper_cells",
    "paper_tables",
    "plot_accuracy_vs_alpha",
    "plot_accuracy_vs_eps",
    "plot_audit",
    "plot_setups_vs_alpha",
    "read_paper_tables",
    "save_figure",
    "side_by_side",
    "side_by_side_markdown",
    "table_csv",
    "table_latex",
    "table_markdown",
    "tables_from_cells",
    "write_side_by_side",
    "write_tables",
]
