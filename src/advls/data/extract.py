"""Extracting tar archives without letting a member write outside the destination."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from advls.data.errors import DataError, UnsafeArchiveError
from advls.data.paths import PathLike


def safe_extract(archive: PathLike, destination: PathLike) -> list[Path]:
    """Extract a tar archive into ``destination``, or nothing at all if any member is unsafe.

    Refused: absolute names, ``..`` components, symlinks or hard links leading outside or
    through other links, devices and FIFOs. Every member is checked before the first byte
    is written; Python's ``filter="data"`` then guards the extraction itself.
    """
    dest = Path(destination).absolute()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            problems = _unsafe_members(members)
            if problems:
                raise UnsafeArchiveError(
                    f"refusing to extract {archive}: unsafe members (nothing was extracted):\n  "
                    + "\n  ".join(problems)
                )
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.10.12 has no extraction filters
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"cannot extract {archive}: {exc}; it may be truncated or corrupted"
        ) from exc
    return [dest / member.name for member in members]


def _unsafe_members(members: Sequence[tarfile.TarInfo]) -> list[str]:
    links = {_archive_path(m.name) for m in members if m.issym() or m.islnk()}
    problems = []
    for member in members:
        reason = _unsafe_reason(member, links)
        if reason:
            problems.append(f"{member.name!r}: {reason}")
    return problems


def _unsafe_reason(member: tarfile.TarInfo, links: set[PurePosixPath]) -> str | None:
    if _is_absolute(member.name):
        return "absolute path"
    name = _archive_path(member.name)
    if ".." in name.parts:
        return "path contains '..'"
    if _through_link(name, links):
        return "path goes through a link in the archive"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or FIFO"
    if member.issym() or member.islnk():
        if _is_absolute(member.linkname):
            return f"link to absolute path {member.linkname!r}"
        # A symlink is relative to its own directory, a hard link to the archive root.
        base = name.parent if member.issym() else PurePosixPath()
        target, via_link = _follow_lexically(base / _archive_path(member.linkname), links)
        if target is None:
            return f"link to {member.linkname!r} points outside the destination"
        if via_link:
            return f"link to {member.linkname!r} goes through another link"
        return None
    if not (member.isfile() or member.isdir()):
        return "unsupported member type"
    return None


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).anchor)


def _archive_path(name: str) -> PurePosixPath:
    return PurePosixPath(name.replace("\\", "/"))


def _follow_lexically(
    path: PurePosixPath, links: set[PurePosixPath]
) -> tuple[PurePosixPath | None, bool]:
    """Resolve ``..`` without touching the disk: the path (None if it climbs above the
    destination) and whether any step lands on a link, whose real target lexical
    resolution cannot see."""
    parts: list[str] = []
    via_link = False
    for part in path.parts:
        if part == "..":
            if not parts:
                return None, via_link
            parts.pop()
        elif part != ".":
            parts.append(part)
            via_link = via_link or PurePosixPath(*parts) in links
    return PurePosixPath(*parts), via_link


def _through_link(path: PurePosixPath, links: set[PurePosixPath]) -> bool:
    return any(parent in links for parent in path.parents if parent.parts)
