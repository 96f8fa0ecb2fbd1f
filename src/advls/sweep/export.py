"""The store's results as one flat table: a row per metric, with its run's settings as columns.

Trained runs and audits of models from outside share one table: a trained run fills the
training columns (:data:`RUN_COLUMNS`), an audit the model columns (:data:`MODEL_COLUMNS`)
and ``dataset``; the columns that do not apply to a run are empty.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import pandas as pd

from advls.atomic import atomic_target
from advls.outputs import check_output_file
from advls.store import Store

__all__ = ["FORMATS", "MODEL_COLUMNS", "RUN_COLUMNS", "export", "results_table"]

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

#: An audited model's settings (a ``model:`` spec's run): empty for a trained run.
MODEL_COLUMNS: tuple[str, ...] = ("factory", "weights", "weights_sha256", "split", "label")


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's columns: its training's, or its audited model's; None where one does not apply."""
    if config.get("kind") == "audit":
        model = config["model"]
        return {
            **dict.fromkeys(RUN_COLUMNS),
            "dataset": model["dataset"],
            **{column: model[column] for column in MODEL_COLUMNS},
        }
    train = config["train"]
    return {**{column: train[column] for column in RUN_COLUMNS}, **dict.fromkeys(MODEL_COLUMNS)}


def results_table(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Finished runs' results (all sweeps, or one) joined with their runs' settings."""
    keys = store.sweep_keys(sweep) if sweep is not None else None
    if keys is not None and not keys:
        known = ", ".join(store.sweeps()) or "none"
        raise ValueError(f"the store has no sweep named {sweep!r} (known: {known})")
    runs = {run["key"]: run for run in store.runs(keys)}
    settings = {key: _settings(run["config"]) for key, run in runs.items()}
    rows = []
    for result in store.results(keys):
        run = runs[result["run_key"]]
        if run["status"] != "done":
            continue
        rows.append(
            {
                "run": run["key"],
                "name": run["name"],
                **settings[run["key"]],
                "protocol": result["protocol"],
                "attack": result["attack"],
                "eps": result["eps"],
                "metric": result["metric"],
                "value": result["value"],
            }
        )
    settings_columns = [*RUN_COLUMNS, *MODEL_COLUMNS]
    columns = ["run", "name", *settings_columns, "protocol", "attack", "eps", "metric", "value"]
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
