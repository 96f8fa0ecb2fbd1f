"""Where work runs: in this process, in local worker processes, or as Ray tasks.

One structure under sweeps and sharded evaluations: a pool takes ``submit(key, function,
*args)`` (a picklable function and arguments) and hands back :class:`Done` records from
``wait``, each with the function's value or the exception it raised. ``capacity`` is how
many calls it runs at once; callers never submit more.

Local workers are spawned (never forked: forking a process that has started torch threads
can deadlock) and die with the process that started them, so a killed driver leaves no
worker behind training or attacking. A worker lost mid-call (killed, out of memory) is
retried up to ``retries`` times, by the pool itself for local processes and by Ray's task
retries on Ray; an exception the function raises is never retried, it is the answer.
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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "POOLS",
    "Done",
    "InlinePool",
    "Pool",
    "ProcessPool",
    "RayPool",
    "WorkerLost",
    "create_pool",
    "default_threads",
]

#: The pools by name, as ``--executor`` takes them.
POOLS: tuple[str, ...] = ("local", "ray")


class WorkerLost(RuntimeError):
    """The process running a call died (killed, or out of memory) more often than retried."""


@dataclass
class Done:
    """A finished call: ``value`` where it returned, ``error`` where it raised or was lost."""

    key: Hashable
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the call returned."""
        return self.error is None


class Pool(Protocol):
    """What every pool offers (see the module docstring)."""

    capacity: int

    def submit(self, key: Hashable, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)``; its :class:`Done` carries ``key``."""
        ...

    def wait(self, timeout: float) -> list[Done]:
        """The calls that finished within ``timeout`` seconds (at least one if any runs)."""
        ...

    def shutdown(self) -> None:
        """Stop; calls still running are abandoned."""
        ...


def default_threads(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _check_jobs(jobs: int | None) -> None:
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")


def _call_with_threads(threads: int | None, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with torch limited to ``threads`` threads, restored afterwards."""
    if threads is None:
        return function(*args)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return function(*args)
    finally:
        torch.set_num_threads(before)


class InlinePool:
    """Runs one call at a time in this process, when waited for (easy to debug and profile)."""

    capacity = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._queue: list[tuple[Hashable, Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, key: Hashable, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)``; it runs at the next :meth:`wait`."""
        self._queue.append((key, function, args))

    def wait(self, timeout: float) -> list[Done]:
        """Run the oldest queued call to its end (``timeout`` cannot interrupt it)."""
        if not self._queue:
            return []
        key, function, args = self._queue.pop(0)
        try:
            return [Done(key, _call_with_threads(self.threads, function, *args))]
        except Exception as error:  # the call's answer, as a worker's would be
            return [Done(key, error=error)]

    def shutdown(self) -> None:
        """Forget the queued calls."""
        self._queue.clear()


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive a killed driver: it would keep working and hold locks.

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


class ProcessPool:
    """``jobs`` local worker processes, each with ``threads`` torch threads.

    A call whose worker died is submitted again, up to ``retries`` times; a broken pool (one
    dead worker breaks them all) is replaced and its other calls resubmitted without counting
    against theirs.
    """

    def __init__(self, jobs: int, threads: int | None = None, *, retries: int = 0) -> None:
        _check_jobs(jobs)
        self.capacity = jobs
        self.threads = threads or default_threads(jobs)
        self.retries = retries
        self._pool = self._new_pool()
        self._running: dict[futures.Future[Any], tuple[Hashable, Callable[..., Any], tuple]] = {}
        self._lost: dict[Hashable, int] = {}

    def _new_pool(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, key: Hashable, function: Callable[..., Any], *args: Any) -> None:
        """Start ``function(*args)`` in a worker."""
        self._running[self._pool.submit(function, *args)] = (key, function, args)

    def wait(self, timeout: float) -> list[Done]:
        """The calls that finished; lost ones come back as :class:`WorkerLost` past retries."""
        if not self._running:
            return []
        finished, _ = futures.wait(self._running, timeout=timeout, return_when="FIRST_COMPLETED")
        done: list[Done] = []
        lost: list[tuple[Hashable, Callable[..., Any], tuple]] = []
        for future in finished:
            call = self._running.pop(future)
            try:
                done.append(Done(call[0], future.result()))
            except futures.process.BrokenProcessPool:
                lost.append(call)
            except Exception as error:
                done.append(Done(call[0], error=error))
        if lost:  # every other call of a broken pool is lost too: start a fresh pool
            innocent = list(self._running.values())
            for future in self._running:
                future.cancel()
            self._running.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            for key, function, args in lost:
                self._lost[key] = self._lost.get(key, 0) + 1
                if self._lost[key] > self.retries:
                    error = WorkerLost(
                        f"the worker process died (killed or out of memory) "
                        f"{self._lost[key]} time(s)"
                    )
                    done.append(Done(key, error=error))
                else:
                    self.submit(key, function, *args)
            for key, function, args in innocent:
                if self.retries:
                    self.submit(key, function, *args)
                else:
                    error = WorkerLost("the worker process pool broke (another worker died)")
                    done.append(Done(key, error=error))
        return done

    def shutdown(self) -> None:
        """Stop the workers; calls still in flight are abandoned (their processes ended)."""
        abandoned = bool(self._running)
        # The pool keeps its processes private; terminating them is the only way to stop a
        # call mid-way, so read them before shutdown forgets them.
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=not abandoned, cancel_futures=True)
        if abandoned:
            for process in processes:
                process.terminate()
        self._running.clear()


class RayPool:
    """Each call is one Ray task declaring ``cpus`` and ``gpus``; starts or joins a cluster.

    With ``address=None`` a local Ray instance with ``jobs * cpus`` CPUs is started (and
    stopped at shutdown); ``"auto"`` or ``"ray://host:port"`` joins a running cluster, whose
    workers must see the same data and artifact paths (shared storage). Inside a Ray task
    the running cluster is used as it is. A task whose worker died is retried ``retries``
    times by Ray.
    """

    def __init__(
        self,
        jobs: int | None = None,
        *,
        address: str | None = None,
        cpus: float = 1.0,
        gpus: float = 0.0,
        retries: int = 0,
    ) -> None:
        _check_jobs(jobs)
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
                # A local instance shares the machine with the work it executes: on a busy
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
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=retries)(
            _call_with_threads
        )
        self._running: dict[Any, Hashable] = {}

    def submit(self, key: Hashable, function: Callable[..., Any], *args: Any) -> None:
        """Start ``function(*args)`` as a Ray task."""
        self._running[self._remote.remote(self.threads, function, *args)] = key

    def wait(self, timeout: float) -> list[Done]:
        """The tasks that finished; an exception is the task's own (Ray's wrapper removed)."""
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            key = self._running.pop(ref)
            try:
                done.append(Done(key, self._ray.get(ref)))
            except self._ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, BaseException) else error
                done.append(Done(key, error=cause))
            except Exception as error:  # the worker died past its retries, or Ray itself
                done.append(Done(key, error=WorkerLost(f"ray: {type(error).__name__}: {error}")))
        return done

    def shutdown(self) -> None:
        """Cancel the running tasks; stop the instance this pool started."""
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started:
            self._ray.shutdown()


def create_pool(
    name: str,
    *,
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    gpus: float = 0.0,
    retries: int = 0,
) -> Pool:
    """A pool by name: ``local`` (inline for one job, processes for more) or ``ray``.

    Args:
        jobs: calls at once (local default 1; Ray default: what the cluster's CPUs allow).
        threads: torch threads per call (local default: the cores shared out; Ray: 1).
        address: Ray only: ``auto`` or ``ray://host:port`` joins a running cluster.
        gpus: Ray only: GPUs each task declares.
        retries: how often a call whose worker died is run again.
    """
    _check_jobs(jobs)
    if name == "local":
        if address is not None:
            raise ValueError("--address applies to the ray executor only")
        if gpus:
            raise ValueError("GPUs per task apply to the ray executor only")
        jobs = 1 if jobs is None else jobs
        if jobs == 1:
            return InlinePool(threads)
        return ProcessPool(jobs, threads, retries=retries)
    if name == "ray":
        cpus = float(threads) if threads else 1.0
        return RayPool(jobs, address=address, cpus=cpus, gpus=gpus, retries=retries)
    raise ValueError(f"executor must be one of {', '.join(POOLS)}, got {name!r}")
