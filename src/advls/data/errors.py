"""The exceptions of :mod:`advls.data`; every one is a :class:`DataError`."""

from __future__ import annotations

import pickle
from pathlib import Path

from advls.data.paths import PathLike


class DataError(ValueError):
    """A dataset file is missing, corrupt, malformed or unsafe."""


class MissingDataError(DataError, FileNotFoundError):
    """Files a dataset needs are absent and may not (or could not) be downloaded."""


class ChecksumError(DataError):
    """A file's digest differs from the registered one."""

    def __init__(
        self,
        path: PathLike,
        algorithm: str,
        expected: str,
        actual: str,
        url: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        self.url = url
        origin = f" downloaded from {url}" if url else ""
        advice = (
            "the download was discarded"
            if url
            else "the file is truncated, corrupted or not the official one; delete it and "
            "download it again"
        )
        super().__init__(
            f"checksum mismatch for {self.path}{origin}: expected {algorithm} {expected}, "
            f"got {actual}; {advice}"
        )


class DownloadError(DataError):
    """No mirror delivered a file."""


class UnsafeArchiveError(DataError):
    """An archive holds members that could write outside the extraction directory."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asks for a global outside the allow-list."""
