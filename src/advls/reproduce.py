"""One call from a suite's name to its report: run what is missing, then render.

``reproduce("mnist-quick", "runs/reproduce/mnist-quick")`` lays out::

    OUT/results.db          the store (runs, results, the spec)
    OUT/artifacts/          checkpoints and per-run evaluation.json
    OUT/theory/triangular/  the triangular toy (computed exactly, seconds)
    OUT/theory/squeezing/   logit squeezing on the suite's own checkpoints
    OUT/report/             report.html, report.md, tables/, figures/

On a finished store nothing trains: the runs are already done, the theory outputs are kept
when their inputs have not changed, and only the report is rendered again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from advls.limits import DEFAULT_MAX_RUNS
from advls.outputs import check_output_dir
from advls.report.build import ReportFiles, build_report
from advls.store import Store
from advls.suites import suite_path
from advls.sweep import check_data_available, create, load_spec, register, run_sweep
from advls.sweep.driver import EventCallback

__all__ = ["ProgressFactory", "Reproduction", "reproduce"]

#: ``progress(sweep_name, total_runs, finished_runs)``: a context yielding the driver's
#: event callback (a progress bar, a log).
ProgressFactory = Callable[[str, int, int], AbstractContextManager[EventCallback]]

#: Losses whose checkpoints the squeezing analysis compares (the paper's Figure 2).
_SQUEEZING_LOSSES = ("ce", "adversarial", "standard")


@dataclass
class Reproduction:
    """What :func:`reproduce` did: runs it executed, the store's counts, the report (None
    when no run finished)."""

    suite: str
    out_dir: Path
    executed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    report: ReportFiles | None = None


@contextmanager
def _no_progress(name: str, total: int, done: int) -> Iterator[EventCallback]:
    yield lambda kind, run, detail: None


def _squeezing_inputs(store: Store, keys: list[str]) -> list[str]:
    """Checkpoints of the first set-up's undefended CE, ALS and SLS runs that finished."""
    chosen: list[str] = []
    first: tuple[str, str] | None = None
    for run in store.runs(keys):
        train = run["config"]["train"]
        setup = (train["dataset"], train["model"])
        first = first or setup
        if (
            run["status"] != "done"
            or setup != first
            or train["loss"] not in _SQUEEZING_LOSSES
            or train.get("defence", "none") != "none"
        ):
            continue
        checkpoint = store.artifacts(run["key"]).get("checkpoint")
        if checkpoint and Path(checkpoint).is_dir() and checkpoint not in chosen:
            chosen.append(checkpoint)
    return chosen


def _theory(
    store: Store, keys: list[str], out: Path, data_dir: str | None, points: int
) -> list[Path]:
    """The triangular toy, and squeezing when there are CE and smoothed checkpoints.

    Both are skipped when their outputs exist for the same inputs, so a re-render is fast.
    """
    from advls.theory import squeezing, triangular

    triangle = out / "theory" / "triangular"
    if not (triangle / "triangular.json").is_file():
        triangular.run(out_dir=triangle)
    dirs = [triangle]

    checkpoints = _squeezing_inputs(store, keys)
    squeeze = out / "theory" / "squeezing"
    if len(checkpoints) >= 2:
        stamp = squeeze / "inputs.json"
        wanted = json.dumps({"checkpoints": checkpoints, "points": points}, indent=1)
        done = (squeeze / "squeezing.json").is_file() and stamp.is_file()
        if not done or stamp.read_text() != wanted:
            squeezing.analyze(checkpoints, squeeze, data_dir=data_dir, points=points)
            stamp.write_text(wanted)
        dirs.append(squeeze)
    return dirs


def reproduce(
    suite: str,
    out_dir: str | os.PathLike[str],
    *,
    executor: str = "local",
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    theory: bool = True,
    report_dir: str | os.PathLike[str] | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
    progress: ProgressFactory | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Reproduction:
    """Run every unfinished run of ``suite`` into ``out_dir``, then write its report.

    ``suite`` is a shipped suite's name (:func:`advls.suites.suite_names`) or a spec file.
    The report goes to ``report_dir`` (default ``out_dir/report``) and covers this suite's
    sweep only, so several suites may share one store and its checkpoints.
    Bad specs (more than ``max_runs`` runs among them), missing data and output folders
    that may not be written fail before anything is created; a failed run is recorded and
    reported, and does not stop the others.

    Raises:
        ValueError: unknown suite, invalid spec, bad executor settings, an output folder
            that is a file or inside a run directory.
        advls.data.DataError: a dataset the suite needs is not in the data directory.
        advls.store.StoreError: ``out_dir/results.db`` is not a usable store (empty,
            damaged, foreign).
    """
    stage = on_stage or (lambda message: None)
    sweep, runs = load_spec(suite_path(suite), max_runs=max_runs)
    check_data_available(runs, data_dir)
    out = check_output_dir(out_dir)
    if report_dir is not None:
        check_output_dir(report_dir, option="--report-dir")
    out.mkdir(parents=True, exist_ok=True)
    result = Reproduction(suite=sweep.name, out_dir=out)
    with Store(out / "results.db") as store:
        keys = register(store, sweep, runs)
        counts = store.counts(keys)
        todo = counts["pending"] + counts["running"] + (counts["failed"] if retry_failed else 0)
        if todo:
            stage(f"{todo} of {len(keys)} runs to do")
            pool = create(executor, jobs=jobs, threads=threads, address=address, gpus=gpus_per_run)
            done = counts["done"] + (0 if retry_failed else counts["failed"])
            bar = (progress or _no_progress)(sweep.name, len(keys), done)
            with bar as on_event:
                summary = run_sweep(
                    store,
                    keys,
                    pool,
                    artifact_dir=out / "artifacts",
                    data_dir=data_dir,
                    device=device,
                    retry_failed=retry_failed,
                    on_event=on_event,
                )
            result.executed, result.failed = summary.completed, summary.failed
        else:
            stage(f"all {len(keys)} runs are finished; rendering the report only")
        result.counts = store.counts(keys)
        if not result.counts["done"]:
            stage("no run finished, so there is nothing to report")
            return result
        theory_dirs: list[Path] = []
        if theory:
            stage("theory: triangular toy and logit squeezing")
            data = None if data_dir is None else str(data_dir)
            theory_dirs = _theory(store, keys, out, data, points=min(sweep.evaluate.n, 1000))
        stage("rendering the report")
        result.report = build_report(
            store,
            Path(report_dir) if report_dir is not None else out / "report",
            sweeps=[sweep.name],
            theory_dirs=theory_dirs,
            title=f"advls reproduction: {sweep.name}",
        )
    return result
