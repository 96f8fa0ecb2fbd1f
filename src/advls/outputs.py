"""Where a command may write: one rule for every output path, checked before any work.

An output is never

- a directory (a file is asked for; the message says so),
- in a folder that does not exist,
- a file advls owns, even with ``--force``: a store (any SQLite database, and the ``-wal``,
  ``-shm`` and ``-journal`` files beside one), the store the command reads, or a file in a
  run directory (one holding ``checkpoint.json``, or an epoch folder inside one),
- anything but a regular file (a device, a pipe),
- an existing file, unless the command was given ``--force``.

Files are then written with :func:`advls.atomic.atomic_target`, so a failed write leaves
the old file (or nothing) and no temporary file behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "RUN_RECORD",
    "SQLITE_MAGIC",
    "SQLITE_SIDE_FILES",
    "OutputError",
    "check_output_dir",
    "check_output_file",
]

#: The file that makes a folder a run directory: ``advls.checkpoint.RECORD`` (named here so
#: that checking a path imports no torch; a test holds the two equal).
RUN_RECORD = "checkpoint.json"
#: The first 16 bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: The files SQLite keeps beside a database while it is in use.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class OutputError(ValueError):
    """An output path a command refuses to write; the message names the path and the fix."""


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _same(path: Path, other: Path) -> bool:
    """Whether two paths name one file (through links too), or would once created."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return path.resolve() == other.resolve()


def _owner(path: Path, protected: Iterable[Path]) -> str | None:
    """Why ``path`` belongs to advls (or to the command's own input), or None."""
    for kept in protected:
        for candidate in (kept, *(kept.with_name(kept.name + s) for s in SQLITE_SIDE_FILES)):
            if _same(path, candidate):
                return f"is the store this command reads ({kept})"
    if path.is_file() and _is_sqlite(path):
        return "is an SQLite database (a results store)"
    for suffix in SQLITE_SIDE_FILES:
        base = path.with_name(path.name.removesuffix(suffix))
        if path.name.endswith(suffix) and base.is_file() and _is_sqlite(base):
            return f"belongs to the SQLite database {base}"
    for folder in (path.parent, path.parent.parent):
        if (folder / RUN_RECORD).is_file():
            return f"is inside the run directory {folder}"
    return None


def check_output_file(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    option: str = "--out",
    protected: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """``path`` if a command may write a file there, else :class:`OutputError`.

    Call it before any work, so a refused output costs nothing. ``protected`` are the
    command's own inputs (the store it reads); ``force`` allows replacing an existing file
    that advls does not own. The message names ``option`` and what to do instead.
    """
    path = Path(path)
    shown = f"{option} {path}"
    if path.is_dir():
        raise OutputError(f"{shown} is a directory; give the path of a file to write")
    if not path.parent.is_dir():
        raise OutputError(f"{shown}: the folder {path.parent} does not exist; create it first")
    reason = _owner(path, [Path(p) for p in protected])
    if reason is not None:
        raise OutputError(f"{shown} {reason}; advls never writes over it, choose another path")
    if path.exists() and not path.is_file():
        raise OutputError(f"{shown} is not a regular file; choose another path")
    if path.exists() and not force:
        raise OutputError(f"{shown} exists; pass --force to replace it, or choose another path")
    return path


def check_output_dir(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """``path`` if a command may write its files into that folder, else :class:`OutputError`.

    The folder may exist (its files of the same names are replaced) or not (it is created);
    it may not be a file, nor a run directory or a folder inside one.
    """
    path = Path(path)
    shown = f"{option} {path}"
    if path.exists() and not path.is_dir():
        raise OutputError(f"{shown} is a file, not a folder; give the folder to write into")
    for folder in (path, path.parent):
        if (folder / RUN_RECORD).is_file():
            raise OutputError(
                f"{shown} is inside the run directory {folder}; advls never writes into one, "
                "choose another folder"
            )
    return path
