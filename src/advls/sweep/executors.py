"""Where a sweep's runs execute: an :mod:`advls.workers` pool running :func:`execute_run`.

Every executor takes :class:`~advls.sweep.job.Task` objects and hands back
:class:`~advls.sweep.job.Outcome` objects; none of them touches the store. ``capacity`` is
how many runs it executes at once, and the driver never submits more. A run is never retried
by the pool: the driver owns retries (``--retry-failed``), through the store's claims.
"""

from __future__ import annotations

from typing import Protocol

from advls.sweep.job import Outcome, Task, execute_run
from advls.workers import POOLS, Pool, create_pool

__all__ = ["EXECUTORS", "Executor", "PoolExecutor", "create"]

#: The executors by name, as ``--executor`` takes them.
EXECUTORS: tuple[str, ...] = POOLS


class Executor(Protocol):
    """What the driver needs of an executor."""

    capacity: int

    def submit(self, task: Task) -> None:
        """Start ``task``."""
        ...

    def wait(self, timeout: float) -> list[Outcome]:
        """The runs that finished within ``timeout`` seconds."""
        ...

    def shutdown(self) -> None:
        """Stop; runs in flight are abandoned (the driver releases their claims)."""
        ...


class PoolExecutor:
    """Runs tasks on ``pool``, each with the pool's torch threads."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.capacity = pool.capacity
        self.threads: int | None = getattr(pool, "threads", None)

    def submit(self, task: Task) -> None:
        """Start ``task`` (its ``threads`` set to the pool's)."""
        task = Task(**{**task.__dict__, "threads": self.threads})
        self._pool.submit(task.key, execute_run, task)

    def wait(self, timeout: float) -> list[Outcome]:
        """Finished runs; a lost worker or a crash outside the run is its error."""
        outcomes = []
        for done in self._pool.wait(timeout):
            if done.ok:
                outcomes.append(done.value)
            else:
                error = done.error
                outcomes.append(Outcome(str(done.key), error=f"{type(error).__name__}: {error}"))
        return outcomes

    def shutdown(self) -> None:
        """Stop the pool."""
        self._pool.shutdown()


def create(
    name: str,
    *,
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    gpus: float = 0.0,
) -> Executor:
    """An executor by name: ``local`` (inline for one job, processes for more) or ``ray``."""
    return PoolExecutor(create_pool(name, jobs=jobs, threads=threads, address=address, gpus=gpus))
