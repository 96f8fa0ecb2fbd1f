"""The store's results as one flat table: a row per metric, with its run's settings as columns."""

from __future__ import annotations

import os
from typing import Literal

import pandas as pd

from advls.atomic import atomic_target
from advls.outputs import check_output_file
from advls.store import Store

__all__ = ["FORMATS", "export", "results_table"]

FORMATS: tuple[str, ...] = ("csv", "parquet")

#: Run settings copied into every row (the rest stays in the run's stored config).
RUN_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "loss",
    "alpha",
    "temperature",
    "defence",
    "epochs",
    "seed",
)


def results_table(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Finished runs' results (all sweeps, or one) joined with their runs' settings."""
    keys = store.sweep_keys(sweep) if sweep is not None else None
    if keys is not None and not keys:
        known = ", ".join(store.sweeps()) or "none"
        raise ValueError(f"the store has no sweep named {sweep!r} (known: {known})")
    runs = {run["key"]: run for run in store.runs(keys)}
    rows = []
    for result in store.results(keys):
        run = runs[result["run_key"]]
        if run["status"] != "done":
            continue
        train = run["config"]["train"]
        rows.append(
            {
                "run": run["key"],
                "name": run["name"],
                **{column: train[column] for column in RUN_COLUMNS},
                "protocol": result["protocol"],
                "attack": result["attack"],
                "eps": result["eps"],
                "metric": result["metric"],
                "value": result["value"],
            }
        )
    columns = ["run", "name", *RUN_COLUMNS, "protocol", "attack", "eps", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def export(
    store: Store,
    path: str | os.PathLike[str],
    format: Literal["csv", "parquet"] = "csv",
    sweep: str | None = None,
    *,
    force: bool = False,
) -> int:
    """Write the results table to ``path``; returns the number of rows.

    ``path`` follows :func:`advls.outputs.check_output_file` (never the store or a file
    advls owns; an existing file only with ``force``), checked before the table is built;
    the file is written atomically and a failed write leaves no temporary file.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    target = check_output_file(path, force=force, protected=[store.path])
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "parquet export needs pyarrow: pip install 'advls[parquet]'"
            ) from None
    table = results_table(store, sweep)
    with atomic_target(target) as temporary:  # a reader never sees half a file
        if format == "parquet":
            table.to_parquet(temporary, index=False)
        else:
            table.to_csv(temporary, index=False)
    return len(table)
