"""The store's results in the paper's vocabulary: set-ups, methods, attacks and indices.

Everything the report draws or tabulates starts from the flat results table of
:func:`advls.sweep.export.results_table` (one row per metric of a finished run).
:func:`labelled_results` names each relevant row the way the paper does;
:func:`paper_cells` reduces them to the cells of the paper's appendix tables.

Which metric stands for the paper's numbers:

- FGSM and BIM: ``robust_accuracy`` at the budget, i.e. the share of *all* evaluated points
  still classified correctly after the attack (clean errors count as failures).
- DeepFool and CW are minimal attacks: they look for the smallest perturbation, without a
  budget, and the paper's "adversarial accuracy" is the share of points they did not fool.
  That is our ``robust_accuracy`` of the minimal attack, which is 0 whenever the attack
  succeeds on every correctly classified point, not a read-off at some L2 budget
  (``accuracy_at_l2``), which the paper does not report.
- clean: the evaluation's ``accuracy`` on the same test points the attacks use (not the
  training history's accuracy on the whole test set), so one table's rows are comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from advls.evaluate import PAPER_TABLE_LABELS
from advls.report.mapping import (
    METHOD_ORDER,
    SMOOTHING_METHODS,
    PaperMapping,
    as_mappings,
    method_name,
)

__all__ = [
    "BOUNDED_ATTACKS",
    "CELL_KEYS",
    "PAPER_ATTACKS",
    "TABLE_ORDER",
    "check_results_frame",
    "labelled_results",
    "paper_cells",
]

#: The paper's attacks and their labels in the store's ``paper`` protocol, as that protocol
#: defines them. Other protocols label theirs differently (``standard`` runs ``pgd-40``
#: where the paper ran BIM).
PAPER_ATTACKS: Mapping[str, str] = PAPER_TABLE_LABELS

#: Attacks with a budget: their tables have one column block per eps.
BOUNDED_ATTACKS: tuple[str, ...] = ("FGSM", "BIM")

#: The tables, in the paper's order, ``clean`` being its table of standard accuracies.
TABLE_ORDER: tuple[str, ...] = ("FGSM", "BIM", "DeepFool", "CW", "clean")

#: What identifies a cell; the same columns as ``paper/paper_tables.csv``.
CELL_KEYS: tuple[str, ...] = ("attack", "setup", "method", "eps_index", "alpha_index")

_COLUMNS = ("run", "dataset", "model", "loss", "alpha", "defence", "seed", "protocol")
_REQUIRED = (*_COLUMNS, "attack", "eps", "metric", "value")


def check_results_frame(frame: pd.DataFrame) -> None:
    """Fail early, naming what is missing, when ``frame`` is not a results table."""
    missing = [column for column in _REQUIRED if column not in frame.columns]
    if missing:
        raise ValueError(
            f"the results table lacks column(s) {', '.join(missing)}; "
            "build it with advls.sweep.export.results_table"
        )


def _select(frame: pd.DataFrame, protocol: str, attacks: Mapping[str, str]) -> pd.DataFrame:
    """The rows behind the paper's tables, with the paper's attack name in ``table``."""
    pieces = [
        frame[
            (frame["protocol"] == "clean")
            & (frame["attack"] == "clean")
            & (frame["metric"] == "accuracy")
        ].assign(table="clean")
    ]
    for name, label in attacks.items():
        chosen = (
            (frame["protocol"] == protocol)
            & (frame["attack"] == label)
            & (frame["metric"] == "robust_accuracy")
        )
        pieces.append(frame[chosen].assign(table=name))
    return pd.concat(pieces, ignore_index=True)


def labelled_results(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    *,
    protocol: str = "paper",
    attacks: Mapping[str, str] = PAPER_ATTACKS,
) -> pd.DataFrame:
    """Every clean-accuracy and attack row of the mapped set-ups, at every alpha and eps.

    Columns: ``run, seed, setup, method, alpha, attack`` (the paper's name), ``eps`` (the
    [0, 1]-pixel budget; NaN for unbounded attacks and clean accuracy), ``paper_eps`` (the
    same in the paper's units), ``eps_index`` and ``alpha_index`` (the paper's 1-based
    indices, ``<NA>`` where the value is not one of the mapping's or does not apply) and
    ``value``. Rows of set-ups no mapping names are left out. Figures use all of it; the
    tables only the indexed cells (:func:`paper_cells`).
    """
    mappings = as_mappings(mapping)
    check_results_frame(frame)
    rows = _select(frame, protocol, attacks)
    owners: dict[tuple[str, str], tuple[str, PaperMapping]] = {}
    for dataset, model in rows[["dataset", "model"]].drop_duplicates().itertuples(index=False):
        for candidate in mappings:
            setup = candidate.setup_name(dataset, model)
            if setup is not None:
                owners[(dataset, model)] = (setup, candidate)
                break

    records = []
    smoothing = set(SMOOTHING_METHODS.values())
    for row in rows.itertuples(index=False):
        owner = owners.get((row.dataset, row.model))
        if owner is None:
            continue
        setup, paper = owner
        method = method_name(row.loss, row.defence)
        bounded = row.table in BOUNDED_ATTACKS and pd.notna(row.eps)
        eps = float(row.eps) if bounded else float("nan")
        records.append(
            {
                "run": row.run,
                "seed": row.seed,
                "setup": setup,
                "method": method,
                "alpha": float(row.alpha),
                "attack": row.table,
                "eps": eps,
                "paper_eps": eps / paper.eps_scale,
                "eps_index": paper.eps_index(eps) if bounded else None,
                "alpha_index": paper.alpha_index(row.alpha) if method in smoothing else None,
                "value": float("nan") if pd.isna(row.value) else float(row.value),
            }
        )
    columns = [
        "run",
        "seed",
        "setup",
        "method",
        "alpha",
        "attack",
        "eps",
        "paper_eps",
        "eps_index",
        "alpha_index",
        "value",
    ]
    labelled = pd.DataFrame.from_records(records, columns=columns)
    for column in ("eps_index", "alpha_index"):
        labelled[column] = labelled[column].astype("Int64")
    for column in ("alpha", "eps", "paper_eps", "value"):
        labelled[column] = labelled[column].astype(float)
    return labelled


def _check_one_run_per_seed(rows: pd.DataFrame) -> None:
    """Seeds are averaged; two runs with one seed in one cell differ in something unseen."""
    clashing = rows.duplicated([*CELL_KEYS, "seed"], keep=False)
    if not clashing.any():
        return
    groups = rows[clashing].groupby([*CELL_KEYS, "seed"], dropna=False, sort=False)
    _, same = next(iter(groups))
    first = same.iloc[0]
    alpha = "" if pd.isna(first["alpha"]) else f", alpha {first['alpha']:g}"
    raise ValueError(
        f"runs {', '.join(sorted(set(same['run'])))} fill the same cell ({first['attack']}, "
        f"{first['setup']}, {first['method']}{alpha}) with the same seed "
        f"{first['seed']}: they differ in a setting the tables do not show (epochs, "
        "temperature, ...). Report one sweep at a time or filter the results first."
    )


def paper_cells(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    *,
    protocol: str = "paper",
    attacks: Mapping[str, str] = PAPER_ATTACKS,
) -> pd.DataFrame:
    """Our value of every cell of the paper's tables that the store can fill.

    One row per ``attack, setup, method, eps_index, alpha_index`` (``<NA>`` where the paper
    has no index: no budget, or no smoothing), with ``eps`` ([0, 1] pixels), ``paper_eps``,
    ``alpha`` (NaN for the baselines), ``value`` and ``seeds``. A cell's value is the mean
    over seeds, so with one seed it is exactly the stored number.

    Raises:
        ValueError: two runs with the same seed would fill one cell.
    """
    rows = labelled_results(frame, mapping, protocol=protocol, attacks=attacks)
    smoothing = rows["method"].isin(list(SMOOTHING_METHODS.values()))
    bounded = rows["attack"].isin(list(BOUNDED_ATTACKS))
    keep = (
        rows["method"].isin(list(METHOD_ORDER))
        & (~smoothing | rows["alpha_index"].notna())
        & (~bounded | rows["eps_index"].notna())
    )
    rows = rows[keep].copy()
    rows.loc[~rows["method"].isin(list(SMOOTHING_METHODS.values())), "alpha"] = float("nan")
    _check_one_run_per_seed(rows)
    columns = [*CELL_KEYS, "eps", "paper_eps", "alpha", "value", "seeds"]
    if rows.empty:
        empty = pd.DataFrame(columns=columns)
        for column in ("eps_index", "alpha_index", "seeds"):
            empty[column] = empty[column].astype("Int64")
        return empty
    cells = (
        rows.groupby(list(CELL_KEYS), dropna=False, sort=False)
        .agg(
            eps=("eps", "first"),
            paper_eps=("paper_eps", "first"),
            alpha=("alpha", "first"),
            value=("value", lambda values: values.mean(skipna=False)),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    cells["seeds"] = cells["seeds"].astype("Int64")
    return cells[columns]
