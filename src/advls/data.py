"""Image datasets as uint8 NCHW tensors: the MNIST family, CIFAR-10, SVHN and user ``.npz`` files.

``load(name, split)`` returns an :class:`ImageDataset` whose images are ``uint8`` tensors of
shape ``(N, C, H, W)`` and whose labels are ``int64``. Pixel scaling and normalisation are
left to the model (``mean``/``std`` travel with the dataset for that purpose), so attacks can
work on ``[0, 1]`` inputs.

Where the files come from: ``data_dir`` argument, then ``$ADVLS_DATA``, then
``~/.cache/advls``; each dataset lives in ``<data_dir>/<name>/`` under its official file
names. Every known file is checked against the checksum in :data:`REGISTRY` before it is
parsed, downloads are verified before they are renamed into place, and archives and pickles
are opened with allow-lists only, because dataset files are untrusted input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import threading
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch

try:  # numpy >= 2 moved the pickle helper; both names appear in existing pickles.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "ChecksumError",
    "DataError",
    "DatasetSpec",
    "DownloadError",
    "FileSpec",
    "ImageDataset",
    "MissingDataError",
    "RestrictedUnpickler",
    "UnsafeArchiveError",
    "UnsafePickleError",
    "download",
    "file_digest",
    "load",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
    "safe_extract",
    "safe_unpickle",
    "verify_file",
]

PathLike = str | os.PathLike[str]
Registry = Mapping[str, "DatasetSpec"]

#: Environment variable naming the data directory when no ``data_dir`` is given.
ENV_VAR = "ADVLS_DATA"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_USER_AGENT = "advls/0.1 (dataset download)"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


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
            dataclasses.replace(spec, urls=_mirror_urls(base_urls, spec.filename))
            if spec.urls
            else spec
            for spec in self.files
        )
        return dataclasses.replace(self, files=files)


def _mirror_urls(base_urls: Sequence[str], filename: str) -> tuple[str, ...]:
    if isinstance(base_urls, str):  # a lone string would be iterated character by character
        base_urls = [base_urls]
    return tuple(base.rstrip("/") + "/" + filename for base in base_urls)


def _sums(text: str) -> dict[str, str]:
    """Parse ``sha256sum`` output (``<digest>  <filename>`` per line)."""
    pairs = (line.split() for line in text.strip().splitlines())
    return {name: digest for digest, name in pairs}


def _files(sha256: Mapping[str, str], mirrors: Sequence[str]) -> tuple[FileSpec, ...]:
    return tuple(
        FileSpec(name, digest, _mirror_urls(mirrors, name)) for name, digest in sha256.items()
    )


# Published sha256 sums, in sha256sum format. MNIST: /work/shared/data/mnist/SHA256SUMS, equal
# to tensorflow/datasets tensorflow_datasets/url_checksums/mnist.txt (every mirror serves the
# same bytes). The others: tensorflow/datasets tensorflow_datasets/url_checksums/
# {fashion_mnist,kmnist,svhn_cropped}.txt.
_MNIST_SHA256 = """
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz
"""
_FASHION_MNIST_SHA256 = """
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  t10k-labels-idx1-ubyte.gz
"""
_KMNIST_SHA256 = """
51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4  train-images-idx3-ubyte.gz
e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17  train-labels-idx1-ubyte.gz
edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5  t10k-images-idx3-ubyte.gz
20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c  t10k-labels-idx1-ubyte.gz
"""
_SVHN_SHA256 = """
435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8  train_32x32.mat
cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b  test_32x32.mat
a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3  extra_32x32.mat
"""

_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_MNIST = DatasetSpec(
    name="mnist",
    format="idx",
    classes=tuple(str(digit) for digit in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
    splits=_IDX_SPLITS,
    files=_files(
        _sums(_MNIST_SHA256),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
)

_FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    format="idx",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mean=(0.2860,),
    std=(0.3530,),
    splits=_IDX_SPLITS,
    files=_files(
        _sums(_FASHION_MNIST_SHA256),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
)

# Classes are the romanised hiragana of KMNIST's classmap.csv.
_KMNIST = DatasetSpec(
    name="kmnist",
    format="idx",
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    mean=(0.1918,),
    std=(0.3483,),
    splits=_IDX_SPLITS,
    files=_files(
        _sums(_KMNIST_SHA256),
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
)

CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_BATCH_DIR = "cifar-10-batches-py"
_CIFAR10_META = "batches.meta"
_CIFAR10_MEMBERS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# Tarball sha256: keras-team/keras keras/src/datasets/cifar10.py. Batch md5s (no sha256 is
# published for them): pytorch/vision torchvision/datasets/cifar.py. npz sums:
# /work/shared/data/cifar10/SHA256SUMS (advls' lossless npz copies; never downloaded).
_CIFAR10 = DatasetSpec(
    name="cifar10",
    format="cifar10",
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    splits={"train": (CIFAR10_TARBALL,), "test": (CIFAR10_TARBALL,)},
    files=(
        FileSpec(
            CIFAR10_TARBALL,
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        ),
        FileSpec("data_batch_1", None, md5="c99cafc152244af753f735de768cd75f"),
        FileSpec("data_batch_2", None, md5="d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("data_batch_3", None, md5="54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("data_batch_4", None, md5="634d18415352ddfa80567beed471001a"),
        FileSpec("data_batch_5", None, md5="482c414d41f54cd18b22e5b47cb7c3cb"),
        FileSpec("test_batch", None, md5="40351d587109b95175f43aff81a1287e"),
        FileSpec(_CIFAR10_META, None, md5="5ff9c542aee3614f3951f8cda6e48888"),
        FileSpec(
            "cifar10_train_50000_uint8_hwc.npz",
            "614e29ee876052c4debd1cc2d171e076e0cb7afcee0b2a9facfb6596ece13608",
        ),
        FileSpec(
            "cifar10_test_first1000_uint8_hwc.npz",
            "82cd9307941022d681081d5e02d954b5e062f339da880c8fa5c30f90d092c64b",
        ),
    ),
)

_SVHN = DatasetSpec(
    name="svhn",
    format="svhn",
    classes=tuple(str(digit) for digit in range(10)),
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    splits={split: (f"{split}_32x32.mat",) for split in ("train", "test", "extra")},
    files=_files(
        _sums(_SVHN_SHA256),
        ("http://ufldl.stanford.edu/housenumbers/",),
    ),
)

#: Every dataset ``load`` knows by name. Pass a modified copy as ``registry=`` to override.
REGISTRY: Mapping[str, DatasetSpec] = {
    spec.name: spec for spec in (_MNIST, _FASHION_MNIST, _KMNIST, _CIFAR10, _SVHN)
}


# --------------------------------------------------------------------------------------------
# The dataset object
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Images (uint8, ``(N, C, H, W)``, contiguous), int64 labels and their metadata.

    ``mean``/``std`` are per-channel statistics of the dataset family on ``[0, 1]`` pixels,
    meant for a normalisation layer inside the model.
    """

    name: str
    split: str
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or not images.is_contiguous():
            raise DataError(
                f"images must be a contiguous uint8 (N, C, H, W) tensor, got {images.dtype} "
                f"of shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images):
            raise DataError(
                f"labels must be an int64 tensor of shape ({len(images)},), got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        if not self.classes:
            raise DataError("a dataset needs at least one class")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"labels must lie in 0..{len(self.classes) - 1}, got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"mean and std need {channels} entries, one per channel")
        if min(self.std) <= 0:
            raise DataError(f"std must be positive, got {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, channels, height, width = self.images.shape
        return channels, height, width

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ADVLS_DATA``, else ``~/.cache/advls``."""
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser().absolute()
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return Path(from_env).expanduser().absolute()
    return Path.home() / ".cache" / "advls"


def _dataset_spec(name: str, registry: Registry | None) -> DatasetSpec:
    specs = REGISTRY if registry is None else registry
    spec = specs.get(name.strip().lower())
    if spec is None:
        allowed = ", ".join(sorted(specs))
        raise ValueError(
            f"unknown dataset name={name!r}; allowed values: {allowed}, or a path to a .npz file"
        )
    return spec


def _check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(
            f"unknown split={split!r} for dataset {dataset!r}; allowed values: "
            + ", ".join(allowed)
        )


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------

# Files already verified in this process, keyed by identity and modification stamp, so that
# loading the same 150 MB file twice hashes it once.
_verified: set[tuple[object, ...]] = set()
_verified_lock = threading.Lock()


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def verify_file(path: PathLike, spec: FileSpec) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the digest ``spec`` registers."""
    checksum = spec.checksum
    if checksum is None:
        raise DataError(f"no checksum is registered for {spec.filename}; refusing to use {path}")
    algorithm, expected = checksum
    stat = os.stat(path)
    key = (
        os.path.realpath(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
        algorithm,
        expected,
    )
    with _verified_lock:
        if key in _verified:
            return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(path, algorithm, expected, actual)
    with _verified_lock:
        _verified.add(key)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download(
    name: str,
    data_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    splits: Sequence[str] | None = None,
    registry: Registry | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Fetch the files of ``name`` that are missing from ``<data_dir>/<name>/``.

    ``mirrors`` replaces the registered base URLs (each file is fetched from
    ``base + filename``, trying the next base on network errors). ``splits`` defaults to
    train and test; SVHN's 1.3 GB ``extra`` split is fetched only when asked for. Files
    already present are verified, not fetched again. ``progress`` shows a progress bar
    (default: only when stderr is a terminal). Returns the paths of the verified files.
    """
    spec = _dataset_spec(name, registry)
    wanted = ("train", "test") if splits is None else tuple(splits)
    for split in wanted:
        _check_split(split, tuple(spec.splits), spec.name)
    filenames = dict.fromkeys(f for split in wanted for f in spec.splits[split])
    root = resolve_data_dir(data_dir) / spec.name
    return [_ensure_file(spec.file(f), root / f, mirrors, progress) for f in filenames]


def _ensure_file(
    spec: FileSpec, path: Path, mirrors: Sequence[str] | None, progress: bool | None
) -> Path:
    if path.exists():
        verify_file(path, spec)
        return path
    urls = _mirror_urls(mirrors, spec.filename) if mirrors is not None else spec.urls
    return _fetch(spec, path, urls, sys.stderr.isatty() if progress is None else progress)


def _fetch(spec: FileSpec, path: Path, urls: Sequence[str], progress: bool) -> Path:
    if not spec.sha256:
        raise DownloadError(
            f"refusing to download {spec.filename}: no published sha256 is registered for it, "
            f"so the download could not be verified; place the official file at {path}"
        )
    if not urls:
        raise DownloadError(f"no download URL is known for {spec.filename}; place it at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        _check_url(url)
        try:
            temp, actual = _stream_to_temp(url, path, progress)
        except (OSError, HTTPException) as exc:  # URLError, HTTPError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
            continue
        if actual != spec.sha256.lower():
            temp.unlink(missing_ok=True)
            raise ChecksumError(path, "sha256", spec.sha256.lower(), actual, url=url)
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide shared data from other users
        os.replace(temp, path)  # atomic: readers never see a partial or unverified file
        return path
    raise DownloadError(
        f"could not download {spec.filename} to {path}; tried:\n  " + "\n  ".join(failures)
    )


def _check_url(url: str) -> None:
    # urlopen also speaks file:// and ftp://; a registry or mirror list has no business there.
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download from {url!r}: only http(s) URLs are allowed")


def _stream_to_temp(url: str, path: Path, progress: bool) -> tuple[Path, str]:
    """Download ``url`` into a temp file beside ``path``; return it and its sha256."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    temp = Path(name)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            received = 0
            with _progress_bar(path.name, total, progress) as advance:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if total and received != total:
                raise HTTPException(f"connection closed after {received} of {total} bytes")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest()


@contextlib.contextmanager
def _progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _size: None
        return
    from rich.console import Console  # imported lazily: only interactive downloads need it
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    console = Console(stderr=True)  # stdout may carry a command's real output
    with Progress(*columns, TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda size: bar.advance(task, size)


# --------------------------------------------------------------------------------------------
# Safe archive extraction
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Restricted unpickling (official CIFAR-10 batches)
# --------------------------------------------------------------------------------------------


def _latin1_encode(text: object, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); other codecs
    # would let a pickle reach arbitrary codec machinery, so only that one is honoured.
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


_PICKLE_ALLOWED: Mapping[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and nothing else.

    The official CIFAR-10 batches are pickles; plain ``pickle.load`` would run whatever
    callable a tampered file names.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {self.source}: it asks for {module}.{name}, but only "
                "numpy array reconstruction is allowed"
            ) from None


def safe_unpickle(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"``)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # any failure of a malformed stream, whatever its type
        raise DataError(f"cannot unpickle {source}: {exc!r}; it may be corrupted") from exc


# --------------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes | bytearray, source: str = "<bytes>") -> np.ndarray:
    """Decode an (uncompressed) idx file into an array of native byte order.

    Passing a ``bytearray`` gives a writable array that shares its memory.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{source} is not an idx file: bad magic number {bytes(raw[:4]).hex() or '(empty)'}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: idx header is truncated ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{source}: idx header declares shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header} bytes after the header"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header, count=math.prod(shape))
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file, gzip-compressed or not."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            raw = bytearray(handle.read())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot decompress {path}: {exc}; it may be truncated") from exc
    return parse_idx(raw, os.fspath(path))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``x``, ``y`` and optional ``classes`` arrays of an npz archive (never pickles)."""
    # We own the handle: np.load leaks its own when a damaged archive fails to open.
    with open(path, "rb") as handle:
        if handle.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise DataError(f"{path} is not an .npz (zip) archive")
        handle.seek(0)
        try:
            with np.load(handle, allow_pickle=False) as archive:
                missing = {"x", "y"} - set(archive.files)
                if missing:
                    raise DataError(
                        f"{path} lacks the arrays {sorted(missing)}; expected x (images) and "
                        f"y (labels), found {sorted(archive.files)}"
                    )
                classes = archive["classes"] if "classes" in archive.files else None
                return archive["x"], archive["y"], classes
        except DataError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"cannot read {path}: {exc}; it may be truncated or corrupted") from exc


def _images_uint8(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise DataError(f"{source}: images must be uint8 or float in [0, 1], got {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"{source}: float images must lie in [0, 1]")
    scaled = np.rint(x.astype(np.float64) * 255)
    # Accept k/255 as computed in float64, float32 (e.g. ``tensor.float() / 255``) or the
    # array's own precision; anything else would be silently quantised.
    exact = np.zeros(x.shape, dtype=bool)
    for precision in dict.fromkeys((np.float64, np.float32, x.dtype.type)):
        exact |= (scaled.astype(precision) / precision(255)).astype(x.dtype) == x
    if not exact.all():
        raise DataError(
            f"{source}: float images are not exact multiples of 1/255, so they cannot be "
            "stored as uint8 without loss; save uint8 images instead"
        )
    return scaled.astype(np.uint8)


def _images_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` from ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``."""
    x = _images_uint8(np.asarray(x), source)
    if x.ndim == 3:
        return np.ascontiguousarray(x[:, None])
    if x.ndim != 4:
        raise DataError(f"{source}: images must have 3 or 4 dimensions, got shape {x.shape}")
    channels_first, channels_last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if channels_first and channels_last:
        raise DataError(
            f"{source}: cannot tell NCHW from NHWC for shape {x.shape}; both the second and "
            "the last dimension could be channels"
        )
    if channels_last:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if channels_first:
        return np.ascontiguousarray(x)
    raise DataError(f"{source}: images of shape {x.shape} have no channel dimension of size 1 or 3")


def _labels_int64(y: np.ndarray, count: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != count:
        raise DataError(f"{source}: {count} images but {len(y)} labels")
    return y.astype(np.int64)


def _check_label_range(labels: np.ndarray, num_classes: int, source: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source}: labels must lie in 0..{num_classes - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )


def _dataset(
    spec: DatasetSpec, split: str, images: np.ndarray, labels: np.ndarray, source: str
) -> ImageDataset:
    _check_label_range(labels, len(spec.classes), source)
    return ImageDataset(
        name=spec.name,
        split=split,
        images=_tensor(images),
        labels=_tensor(labels),
        classes=spec.classes,
        mean=spec.mean,
        std=spec.std,
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    # torch.from_numpy shares memory and warns on read-only arrays; copy only when needed.
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load(
    name: str,
    split: str,
    data_dir: PathLike | None = None,
    download: bool = True,
    *,
    registry: Registry | None = None,
    progress: bool | None = None,
) -> ImageDataset:
    """Load a split of a dataset as uint8 ``(N, C, H, W)`` images and int64 labels.

    ``name`` is ``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10``, ``svhn`` or the path
    of a user ``.npz`` file with arrays ``x`` (uint8 NCHW, NHWC or NHW, or floats that are
    exact multiples of 1/255) and ``y`` (integer labels), plus optionally ``classes``
    (strings). ``split`` is ``train`` or ``test`` (SVHN also ``extra``); for a user npz it
    is only recorded. ``data_dir`` is resolved by :func:`resolve_data_dir`. Missing files are
    downloaded when ``download`` is true. ``registry`` replaces :data:`REGISTRY`, e.g. with
    :meth:`DatasetSpec.with_checksums` to accept re-packed files.

    CIFAR-10 is read from the official ``cifar-10-python.tar.gz`` (extracted once into
    ``cifar-10-batches-py/``) or its extracted batches, else from ``cifar10_{split}_*.npz``
    (uint8 HWC ``x`` and ``y``; registered names are checksummed, other names are taken as
    the user's own files).

    Example::

        train = load("mnist", "train")
        x = train.images[:64].float() / 255  # (64, 1, 28, 28) in [0, 1]
    """
    if name.lower().endswith(".npz"):
        _check_split(split, ("train", "test"), name)
        return _load_user_npz(Path(name).expanduser(), split)
    spec = _dataset_spec(name, registry)
    _check_split(split, tuple(spec.splits), spec.name)
    root = resolve_data_dir(data_dir) / spec.name
    loaders = {"idx": _load_idx, "cifar10": _load_cifar10, "svhn": _load_svhn}
    return loaders[spec.format](spec, split, root, download, progress)


def _require(
    spec: DatasetSpec,
    split: str,
    root: Path,
    download: bool,
    progress: bool | None,
) -> list[Path]:
    """The verified files of a split, downloading the missing ones when allowed."""
    paths = [root / filename for filename in spec.splits[split]]
    missing = [path for path in paths if not path.exists()]
    if missing and not download:
        raise MissingDataError(_missing_message(spec, split, missing))
    return [_ensure_file(spec.file(path.name), path, None, progress) for path in paths]


def _missing_message(spec: DatasetSpec, split: str, missing: Sequence[Path]) -> str:
    urls = [url for path in missing for url in spec.file(path.name).urls[:1]]
    listing = "\n  ".join(str(path) for path in missing)
    sources = f" (official source: {', '.join(urls)})" if urls else ""
    return (
        f"{spec.name} {split}: missing\n  {listing}\n"
        f"Download them with advls.data.download({spec.name!r}, data_dir=...) or "
        f"load(..., download=True), or copy the official files there{sources}; "
        f"set the data directory with data_dir=, ${ENV_VAR} or ~/.cache/advls."
    )


def _load_idx(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    image_path, label_path = _require(spec, split, root, download, progress)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{label_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels"
        )
    nchw = images.reshape(images.shape[0], 1, *images.shape[1:])
    return _dataset(spec, split, nchw, labels.astype(np.int64), os.fspath(label_path))


def _load_svhn(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    (path,) = _require(spec, split, root, download, progress)
    x, y = _read_svhn_mat(path)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    labels = _labels_int64(y, x.shape[3], os.fspath(path))
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return _dataset(spec, split, images, labels, os.fspath(path))


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io  # imported lazily: scipy is heavy and only SVHN needs it

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # scipy's parser fails in many ways on malformed input
        raise DataError(f"cannot read {path} as a MATLAB file: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the variables X and y")
    return mat["X"], mat["y"]


def _load_cifar10(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    batch_dir, tarball = root / CIFAR10_BATCH_DIR, root / CIFAR10_TARBALL
    members = _CIFAR10_MEMBERS[split]
    if not _all_exist(batch_dir, members) and tarball.exists():
        _extract_cifar10(spec, tarball, batch_dir)
    if _all_exist(batch_dir, members):
        return _read_cifar10_batches(spec, split, batch_dir)
    npz = _find_cifar10_npz(spec, root, split)
    if npz is not None:
        return _read_cifar10_npz(spec, split, npz)
    if not download:
        raise MissingDataError(
            f"cifar10 {split}: found none of\n  {tarball}\n  {batch_dir}/"
            f"{{{','.join(members)}}}\n  {root}/cifar10_{split}_*.npz\n"
            f"Download the official archive with advls.data.download('cifar10', data_dir=...) "
            f"or load(..., download=True), or copy {spec.file(CIFAR10_TARBALL).urls[0]} there; "
            f"set the data directory with data_dir=, ${ENV_VAR} or ~/.cache/advls."
        )
    _ensure_file(spec.file(CIFAR10_TARBALL), tarball, None, progress)
    _extract_cifar10(spec, tarball, batch_dir)
    return _read_cifar10_batches(spec, split, batch_dir)


def _all_exist(directory: Path, names: Sequence[str]) -> bool:
    return all((directory / name).is_file() for name in names)


def _extract_cifar10(spec: DatasetSpec, tarball: Path, batch_dir: Path) -> None:
    verify_file(tarball, spec.file(CIFAR10_TARBALL))
    # Extract beside the target and rename, so a crash never leaves a half-filled directory.
    with tempfile.TemporaryDirectory(dir=batch_dir.parent, prefix=".extract-") as scratch:
        safe_extract(tarball, scratch)
        extracted = Path(scratch) / CIFAR10_BATCH_DIR
        if not extracted.is_dir():
            raise DataError(f"{tarball} has no {CIFAR10_BATCH_DIR}/ directory")
        try:
            os.replace(extracted, batch_dir)
        except OSError as exc:
            every_member = [m for names in _CIFAR10_MEMBERS.values() for m in names]
            if not _all_exist(batch_dir, every_member):  # else another process won the race
                raise DataError(
                    f"cannot extract {tarball}: {batch_dir} exists but is incomplete ({exc}); "
                    "remove it and retry"
                ) from exc


def _read_cifar10_batches(spec: DatasetSpec, split: str, batch_dir: Path) -> ImageDataset:
    images, labels = [], []
    for member in _CIFAR10_MEMBERS[split]:
        path = batch_dir / member
        verify_file(path, spec.file(member))
        batch_images, batch_labels = _cifar10_batch(
            safe_unpickle(path.read_bytes(), os.fspath(path)), path
        )
        images.append(batch_images)
        labels.append(batch_labels)
    dataset = _dataset(
        spec, split, np.concatenate(images), np.concatenate(labels), os.fspath(batch_dir)
    )
    meta = batch_dir / _CIFAR10_META
    if meta.is_file():
        classes = _cifar10_classes(spec, meta)
        dataset = dataclasses.replace(dataset, classes=classes)
    return dataset


def _cifar10_batch(batch: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data', b'labels'")
    data = batch[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: b'data' must be a uint8 (N, 3072) array, got {shape}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: b'labels' must be a list of integers") from exc
    labels = _labels_int64(labels, len(data), os.fspath(path))
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10_classes(spec: DatasetSpec, meta: Path) -> tuple[str, ...]:
    verify_file(meta, spec.file(_CIFAR10_META))
    content = safe_unpickle(meta.read_bytes(), os.fspath(meta))
    names = content.get(b"label_names") if isinstance(content, dict) else None
    if not isinstance(names, list) or len(names) != len(spec.classes):
        raise DataError(f"{meta}: expected {len(spec.classes)} label names under b'label_names'")
    return tuple(n.decode("ascii") if isinstance(n, bytes) else str(n) for n in names)


def _find_cifar10_npz(spec: DatasetSpec, root: Path, split: str) -> Path | None:
    candidates = sorted(root.glob(f"cifar10_{split}_*.npz"))
    registered = [path for path in candidates if spec.has_file(path.name)]
    if registered:
        return registered[0]
    if len(candidates) > 1:
        listing = ", ".join(path.name for path in candidates)
        raise DataError(f"cifar10 {split}: several npz files match in {root} ({listing}); keep one")
    return candidates[0] if candidates else None


def _read_cifar10_npz(spec: DatasetSpec, split: str, path: Path) -> ImageDataset:
    if spec.has_file(path.name):
        verify_file(path, spec.file(path.name))
    x, y, _ = _read_npz(path)
    images = _images_nchw(x, os.fspath(path))
    if images.shape[1:] != (3, 32, 32):
        raise DataError(f"{path}: expected (N, 32, 32, 3) images, got {x.shape}")
    labels = _labels_int64(y, len(images), os.fspath(path))
    return _dataset(spec, split, images, labels, os.fspath(path))


def _load_user_npz(path: Path, split: str) -> ImageDataset:
    if not path.is_file():
        raise MissingDataError(f"no such .npz file: {path}")
    x, y, class_names = _read_npz(path)
    images = _images_nchw(x, os.fspath(path))
    if len(images) == 0:
        raise DataError(f"{path} holds no images")
    labels = _labels_int64(y, len(images), os.fspath(path))
    if class_names is not None:
        if class_names.ndim != 1 or class_names.dtype.kind != "U":
            raise DataError(f"{path}: classes must be a 1-D array of strings")
        classes = tuple(str(c) for c in class_names)
    else:
        classes = tuple(str(k) for k in range(int(labels.max()) + 1))
    _check_label_range(labels, len(classes), os.fspath(path))
    mean, std = _channel_stats(images)
    return ImageDataset(
        name=os.fspath(path),
        split=split,
        images=_tensor(images),
        labels=_tensor(labels),
        classes=classes,
        mean=mean,
        std=std,
    )


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images on the [0, 1] scale."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64) / 255
    std = images.std(axis=(0, 2, 3), dtype=np.float64) / 255
    # A constant channel has no spread; dividing by 1 keeps normalisation finite.
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
