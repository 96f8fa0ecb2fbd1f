"""One writer per run directory: an advisory lock that dies with the process holding it.

A run directory is written by one process at a time. :func:`hold_run_directory` takes an
exclusive ``fcntl.flock`` on :data:`LOCK_FILE` inside the directory and writes the holder's
pid into it, so a second writer is refused with a message naming that pid. The kernel drops
the lock when its holder's file descriptor closes, which includes the process dying (even by
``kill -9``): a lock is never stale, and the file left behind is harmless, the next writer
simply takes it. The file is never removed: removing a lock file while another process has
it open would let two writers each lock a different file.

Holding is re-entrant within one thread, so a caller that holds a directory (a sweep worker
waiting its turn) can call training, which holds it again, without refusing itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOCK_FILE", "RunDirectoryBusy", "RunDirectoryError", "hold_run_directory"]

#: The lock file inside a run directory (``.lock`` beside it belongs to the sweep's worker lock).
LOCK_FILE = ".write.lock"


class RunDirectoryError(OSError):
    """A run directory that cannot be created or written."""


class RunDirectoryBusy(RunDirectoryError):
    """A run directory that another process is writing; ``pid`` is that process, if known."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


@dataclass
class _Held:
    fd: int
    thread: int
    depth: int


_held: dict[str, _Held] = {}
_registry = threading.Lock()


@contextlib.contextmanager
def hold_run_directory(run_dir: str | os.PathLike[str], *, wait: bool = False) -> Iterator[Path]:
    """Create ``run_dir`` if need be, check it is writable and hold its lock inside the block.

    ``wait=False`` refuses at once when another process (or thread) holds the directory;
    ``wait=True`` blocks until it is released. Yields the directory.

    Raises:
        RunDirectoryBusy: another holder has the directory (``wait=False``); the message
            names its pid.
        RunDirectoryError: the directory cannot be created, or files cannot be written in it.
    """
    directory = Path(run_dir)
    _check_writable(directory)
    key = os.path.realpath(directory / LOCK_FILE)
    me = threading.get_ident()
    with _registry:
        held = _held.get(key)
        if held is not None and held.thread == me:
            held.depth += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield directory
        finally:
            with _registry:
                _held[key].depth -= 1
        return
    fd = _acquire(directory, key, wait=wait)
    with _registry:
        _held[key] = _Held(fd, me, 1)
    try:
        yield directory
    finally:
        with _registry:
            del _held[key]
        os.close(fd)  # closing the descriptor releases the lock


def _check_writable(directory: Path) -> None:
    """Fail before any work when ``directory`` cannot hold a run: not creatable, not writable.

    Writing a probe file is the one test that answers for every cause (permissions, a
    read-only file system, a parent that is a file), where ``os.access`` misses some.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise RunDirectoryError(
            f"cannot write the run directory {directory}: it exists and is not a directory"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunDirectoryError(
            f"cannot write the run directory {directory}: {reason}; choose a writable directory"
        ) from None


def _acquire(directory: Path, key: str, *, wait: bool) -> int:
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise RunDirectoryError(
            f"cannot write the lock file {path}: {error.strerror or error}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RunDirectoryError(f"cannot lock {path}: {error.strerror or error}") from None
        pid = _holder(path)
        who = f"process {pid}" if pid is not None else "another process"
        raise RunDirectoryBusy(
            f"the run directory {directory} is in use by {who}, which is writing it; "
            "wait for it to finish or choose another directory",
            pid,
        ) from None
    # Only the holder writes the pid, after it has the lock, so the file names the holder.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(path: Path) -> int | None:
    """The pid the holder wrote, or None (it may not have written it yet)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
