"""Experiment grids: a YAML spec expands into keyed runs, executed locally or on Ray.

- ``spec``: ``load_spec``/``parse_spec`` validate a spec and expand it into ``RunSpec`` runs
  (trained by advls) or ``AuditRunSpec`` runs (models from outside, a ``model:`` spec).
- ``job``: ``execute_run`` trains (or resumes) and evaluates one run, or loads and evaluates
  an audited model, returning its metrics.
- ``executors``: in-process, local process pool, or Ray tasks.
- ``driver``: ``run_sweep`` claims runs from the store, feeds an executor, records outcomes.
- ``export``: the store's results as one flat table (CSV or Parquet).

The store itself is :mod:`advls.store`.
"""

from __future__ import annotations

from advls.sweep.driver import SweepSummary, register, run_sweep
from advls.sweep.executors import EXECUTORS, create
from advls.sweep.job import Outcome, Task, execute_run
from advls.sweep.spec import (
    AnyRunSpec,
    AuditedModel,
    AuditRunSpec,
    EvaluateSpec,
    ModelSpec,
    RunSpec,
    SpecError,
    SweepSpec,
    check_data_available,
    load_spec,
    parse_spec,
)

__all__ = [
    "EXECUTORS",
    "AnyRunSpec",
    "AuditRunSpec",
    "AuditedModel",
    "EvaluateSpec",
    "ModelSpec",
    "Outcome",
    "RunSpec",
    "SpecError",
    "SweepSpec",
    "SweepSummary",
    "Task",
    "check_data_available",
    "create",
    "execute_run",
    "load_spec",
    "parse_spec",
    "register",
    "run_sweep",
]
