"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_target", "write_text_atomically"]


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving, it replaces ``path``.

    The writer (``pandas.to_csv``, ``to_parquet``, a plain ``open``) writes the temporary
    file; when the block ends normally the file is flushed to disk and renamed over ``path``.
    If anything fails, in the block or in the rename, the temporary file is removed and
    ``path`` is left as it was, so an interrupted write leaves nothing behind. The file keeps
    the mode of the one it replaces; a new one gets 0644 (mkstemp's 0600 would hide reports
    and checkpoints from the user's group).
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp
        with open(tmp, "rb+") as handle:  # the writer may not have synced what it wrote
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, rename it over.

    See :func:`atomic_target`: an interrupted write leaves nothing, modes are kept.
    """
    with atomic_target(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
