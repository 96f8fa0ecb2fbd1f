"""What a dataset is made of: :class:`FileSpec` (one file and its digest) and
:class:`DatasetSpec` (files, splits, classes and statistics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from advls.data.errors import DataError


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: where to find it and the digest it must have.

    ``sha256`` is what downloads are verified with; a file without one is never downloaded.
    ``md5`` exists only for the files inside the CIFAR-10 tarball, whose publishers give no
    sha256 (they are extracted from a sha256-verified tarball, or placed there by the user).
    """

    filename: str
    sha256: str | None
    urls: tuple[str, ...] = ()
    md5: str | None = None

    @property
    def checksum(self) -> tuple[str, str] | None:
        """The strongest registered ``(algorithm, hexdigest)``, or None."""
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None


DatasetFormat = Literal["idx", "cifar10", "svhn"]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files, which files each split downloads, classes and statistics.

    ``mean``/``std`` are per-channel statistics of the training images scaled to ``[0, 1]``.
    """

    name: str
    format: DatasetFormat
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: Mapping[str, tuple[str, ...]]
    files: tuple[FileSpec, ...]

    def file(self, filename: str) -> FileSpec:
        """The spec of ``filename``; :class:`DataError` if the dataset has no such file."""
        for spec in self.files:
            if spec.filename == filename:
                return spec
        raise DataError(f"dataset {self.name!r} has no registered file {filename!r}")

    def has_file(self, filename: str) -> bool:
        """Whether ``filename`` is one of the dataset's files."""
        return any(spec.filename == filename for spec in self.files)

    def with_checksums(self, sha256: Mapping[str, str]) -> DatasetSpec:
        """A copy whose named files must have the given sha256 (their md5 is dropped).

        Lets tests, or users with a private mirror of re-packed files, accept other bytes
        without turning verification off.
        """
        unknown = set(sha256) - {spec.filename for spec in self.files}
        if unknown:
            raise DataError(f"dataset {self.name!r} has no files named {sorted(unknown)}")
        files = tuple(
            dataclasses.replace(spec, sha256=sha256[spec.filename].lower(), md5=None)
            if spec.filename in sha256
            else spec
            for spec in self.files
        )
        return dataclasses.replace(self, files=files)

    def with_mirrors(self, base_urls: Sequence[str]) -> DatasetSpec:
        """A copy whose downloadable files are fetched from ``base_url + filename`` instead."""
        files = tuple(
            dataclasses.replace(spec, urls=mirror_urls(base_urls, spec.filename))
            if spec.urls
            else spec
            for spec in self.files
        )
        return dataclasses.replace(self, files=files)


def mirror_urls(base_urls: Sequence[str], filename: str) -> tuple[str, ...]:
    """``base + "/" + filename`` for each base URL."""
    if isinstance(base_urls, str):  # a lone string would be iterated character by character
        base_urls = [base_urls]
    return tuple(base.rstrip("/") + "/" + filename for base in base_urls)
