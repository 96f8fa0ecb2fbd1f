"""The sweep driver: registers a spec's runs, claims them, feeds an executor, records results.

The driver is the only process that writes the store. It claims at most as many runs as its
executor can execute, writes each outcome in one transaction as it arrives, and stops when
nothing it may claim is left (runs that another driver holds are that driver's). Killed at
any moment, it loses at most the runs in flight, which the next driver takes back and whose
training resumes from the last checkpoint (an audit of a model from outside is run again).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from advls.data import resolve_data_dir
from advls.store import Store
from advls.sweep.executors import Executor
from advls.sweep.job import Outcome, Task
from advls.sweep.spec import AnyRunSpec, SweepSpec

__all__ = ["SweepSummary", "register", "run_sweep"]

#: ``on_event(kind, run_name, detail)``; kind is "start", "done" or "failed".
EventCallback = Callable[[str, str, str], None]


@dataclass
class SweepSummary:
    """What this driver did, and the sweep's status when it stopped."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def register(store: Store, sweep: SweepSpec | str, runs: Sequence[AnyRunSpec]) -> list[str]:
    """Add the runs to the store under ``sweep`` (known runs are kept); returns their keys.

    Given the spec itself, the store also keeps it (reports read its ``paper`` section),
    without the section its kind leaves unused (``model`` of a training spec, or ``train``).
    """
    if isinstance(sweep, SweepSpec):
        unused = {"model"} if sweep.model is None else {"train"}
        store.record_sweep(sweep.name, sweep.model_dump(mode="json", exclude=unused))
        sweep = sweep.name
    store.add_runs(
        sweep,
        [
            {"key": r.key, "name": r.name, "train_key": r.train_key, "config": r.resolved()}
            for r in runs
        ],
    )
    return [run.key for run in runs]


class _Heartbeat:
    """Refreshes this driver's claims from a thread, so long runs are not taken as dead."""

    def __init__(self, path: Path, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(path, every), daemon=True)
        self._thread.start()

    def _beat(self, path: Path, every: float) -> None:
        with Store(path, create=False) as store:
            while not self._stop.wait(every):
                store.heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_sweep(
    store: Store,
    keys: Sequence[str],
    executor: Executor,
    *,
    artifact_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    retry_failed: bool = False,
    heartbeat_every: float = 30.0,
    on_event: EventCallback | None = None,
) -> SweepSummary:
    """Execute the pending runs among ``keys`` until none is left to claim.

    ``retry_failed`` makes failed runs pending again first. Ctrl-C gives the runs in flight
    back to the store (pending) before it propagates.
    """
    artifacts = Path(artifact_dir).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    # Workers may run elsewhere (Ray) and with another environment: give them absolute paths.
    data = str(resolve_data_dir(data_dir).resolve())
    notify = on_event or (lambda kind, name, detail: None)
    if retry_failed:
        store.retry_failed(keys)
    summary = SweepSummary()
    in_flight: dict[str, str] = {}
    heartbeat = _Heartbeat(store.path, heartbeat_every)
    try:
        while True:
            for claim in store.claim(executor.capacity - len(in_flight), keys):
                executor.submit(
                    Task(
                        key=claim.key,
                        train_key=claim.train_key,
                        config=claim.config,
                        artifact_dir=str(artifacts),
                        data_dir=data,
                        device=device,
                    )
                )
                in_flight[claim.key] = claim.name
                notify("start", claim.name, f"attempt {claim.attempts}")
            if not in_flight:
                break
            for outcome in executor.wait(timeout=heartbeat_every):
                name = in_flight.pop(outcome.key)
                _record(store, outcome)
                if outcome.ok:
                    summary.completed.append(outcome.key)
                    notify("done", name, f"{outcome.timings.get('seconds', 0.0):.1f} s")
                else:
                    summary.failed.append(outcome.key)
                    notify("failed", name, outcome.error or "")
    except BaseException:
        executor.shutdown()
        store.release(list(in_flight))
        raise
    finally:
        heartbeat.stop()
    executor.shutdown()
    summary.counts = store.counts(keys)
    return summary


def _record(store: Store, outcome: Outcome) -> None:
    if outcome.ok:
        store.complete(
            outcome.key, outcome.results, artifacts=outcome.artifacts, timings=outcome.timings
        )
    else:
        store.fail(outcome.key, outcome.error or "unknown error", timings=outcome.timings)
