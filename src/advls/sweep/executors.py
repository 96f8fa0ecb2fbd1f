"""Where runs execute: in this process, in a pool of local processes, or as Ray tasks.

Every executor takes :class:`~advls.sweep.job.Task` objects and hands back
:class:`~advls.sweep.job.Outcome` objects; none of them touches the store. ``capacity`` is
how many runs it executes at once, and the driver never submits more.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Protocol

from advls.sweep.job import Outcome, Task, execute_run

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "ProcessExecutor", "RayExecutor", "create"]

EXECUTORS: tuple[str, ...] = ("local", "ray")


class Executor(Protocol):
    capacity: int

    def submit(self, task: Task) -> None: ...

    def wait(self, timeout: float) -> list[Outcome]: ...

    def shutdown(self) -> None: ...


def default_threads(jobs: int) -> int:
    """Torch threads per run so that ``jobs`` runs share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


class InlineExecutor:
    """Runs one task at a time in this process (the default: easy to debug and profile)."""

    capacity = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._queue: list[Task] = []

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._queue:
            return []
        task = self._queue.pop(0)
        if self.threads is not None:
            task = _with_threads(task, self.threads)
        return [execute_run(task)]

    def shutdown(self) -> None:
        self._queue.clear()


def _with_threads(task: Task, threads: int) -> Task:
    return Task(**{**task.__dict__, "threads": threads})


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive a killed driver: it would keep training and hold locks.

    ``parent`` is the driver's pid, passed in: if the driver died while this worker was still
    starting, ``os.getppid()`` already names another process.
    """
    with contextlib.suppress(AttributeError, OSError):  # Linux: the kernel signals us
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a backstop): notice re-parenting
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


class ProcessExecutor:
    """``jobs`` local worker processes, each with ``threads`` torch threads."""

    def __init__(self, jobs: int, threads: int | None = None) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.capacity = jobs
        self.threads = threads or default_threads(jobs)
        self._pool = self._new_pool()
        self._running: dict[futures.Future[Outcome], Task] = {}

    def _new_pool(self) -> futures.ProcessPoolExecutor:
        # spawn, not fork: forking a process that has started torch threads can deadlock.
        return futures.ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, task: Task) -> None:
        task = _with_threads(task, self.threads)
        self._running[self._pool.submit(execute_run, task)] = task

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._running:
            return []
        done, _ = futures.wait(self._running, timeout=timeout, return_when="FIRST_COMPLETED")
        outcomes = []
        broken = False
        for future in done:
            task = self._running.pop(future)
            try:
                outcomes.append(future.result())
            except futures.process.BrokenProcessPool:
                broken = True
                outcomes.append(Outcome(task.key, error="the worker process died (killed or OOM)"))
        if broken:  # every other task of a broken pool is lost too; start a fresh pool
            for future, task in self._running.items():
                future.cancel()
                outcomes.append(Outcome(task.key, error="the worker process pool broke"))
            self._running.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return outcomes

    def shutdown(self) -> None:
        """Stop the workers; runs still in flight are abandoned (the driver releases them)."""
        abandoned = bool(self._running)
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=not abandoned, cancel_futures=True)
        if abandoned:
            for process in processes:
                process.terminate()
        self._running.clear()


class RayExecutor:
    """Each run is one Ray task declaring ``cpus`` and ``gpus``; starts or joins a cluster.

    With ``address=None`` a local Ray instance with ``jobs * cpus`` CPUs is started (and
    stopped at shutdown); ``"auto"`` or ``"ray://host:port"`` joins a running cluster, whose
    workers must see the same data and artifact paths (shared storage).
    """

    def __init__(
        self,
        jobs: int | None = None,
        *,
        address: str | None = None,
        cpus: float = 1.0,
        gpus: float = 0.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the ray executor needs Ray: pip install 'advls[ray]'") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address is None and jobs is not None:  # else Ray counts the machine's own
                options["num_cpus"] = max(1, round(jobs * cpus))
                if gpus:
                    options["num_gpus"] = max(1, round(jobs * gpus))
            if address is None:
                # A local instance shares the machine with the runs it executes: on a busy
                # laptop its raylet can miss Ray's default 5 health checks (about 15 s) and
                # the instance declares its own node dead. Give it 30 checks of 20 s.
                options["_system_config"] = {
                    "health_check_failure_threshold": 30,
                    "health_check_timeout_ms": 20_000,
                }
            # "local" starts a new instance even when another cluster runs on this machine.
            ray.init(address=address or "local", **options)
        if jobs is None:
            available = ray.cluster_resources()
            slots = available.get("CPU", 1) / cpus if cpus else float("inf")
            if gpus:
                slots = min(slots, available.get("GPU", 0) / gpus)
            jobs = max(1, int(slots))
        self.capacity = jobs
        self.threads = max(1, int(cpus))
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute_run)
        self._running: dict[Any, Task] = {}

    def submit(self, task: Task) -> None:
        task = _with_threads(task, self.threads)
        self._running[self._remote.remote(task)] = task

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            task = self._running.pop(ref)
            try:
                outcomes.append(self._ray.get(ref))
            except Exception as error:  # the task or its worker died
                outcomes.append(Outcome(task.key, error=f"ray: {type(error).__name__}: {error}"))
        return outcomes

    def shutdown(self) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started:
            self._ray.shutdown()


def create(
    name: str,
    *,
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    gpus: float = 0.0,
) -> Executor:
    """An executor by name: ``local`` (inline for one job, processes for more) or ``ray``."""
    if name == "local":
        if address is not None:
            raise ValueError("--address applies to the ray executor only")
        jobs = 1 if jobs is None else jobs
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        return InlineExecutor(threads) if jobs == 1 else ProcessExecutor(jobs, threads)
    if name == "ray":
        if jobs is not None and jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        cpus = float(threads) if threads else 1.0
        return RayExecutor(jobs, address=address, cpus=cpus, gpus=gpus)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
