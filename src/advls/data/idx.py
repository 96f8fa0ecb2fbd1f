"""The idx format of the MNIST family (MNIST, Fashion-MNIST, KMNIST): parsing, and loading
a split from its gzip-compressed image and label files."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from advls.data.arrays import to_dataset
from advls.data.dataset import ImageDataset
from advls.data.errors import DataError
from advls.data.fetch import require
from advls.data.paths import PathLike
from advls.data.specs import DatasetSpec

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
    try:
        shaped = array.reshape(shape)
    except ValueError as exc:  # e.g. (0, 2**32 - 1, 2**32 - 1): no data, yet too big a shape
        raise DataError(f"{source}: idx header declares the impossible shape {shape}") from exc
    return shaped.astype(dtype.newbyteorder("="), copy=False)


#: The most data an idx file may declare (the MNIST family's largest file holds 47 MB): a
#: bound on what a damaged or hostile header, or a gzip bomb, can make the reader take in.
MAX_IDX_BYTES = 1 << 31
_CHUNK = 1 << 20


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file, gzip-compressed or not.

    The header is read first, and then exactly the data it declares (up to
    :data:`MAX_IDX_BYTES`), so the file's declared size, not the decompressed stream,
    bounds what is read.
    """
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            raw = bytearray(handle.read(4))
            if len(raw) == 4 and raw[2] in _IDX_DTYPES:
                raw += handle.read(4 * raw[3])
            declared = _declared_bytes(raw)
            if declared is not None:
                if declared > MAX_IDX_BYTES:
                    raise DataError(
                        f"{path}: idx header declares {declared} bytes of data, more than the "
                        f"{MAX_IDX_BYTES} an idx file of advls may hold"
                    )
                limit = _header_size(raw) + declared
                while chunk := handle.read(min(_CHUNK, limit + 1 - len(raw))):
                    raw += chunk
                    if len(raw) > limit:
                        raise DataError(
                            f"{path}: idx header declares {declared} bytes of data but the file "
                            "holds more"
                        )
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot decompress {path}: {exc}; it may be truncated") from exc
    return parse_idx(raw, os.fspath(path))


def _header_size(raw: bytes | bytearray) -> int:
    return 4 + 4 * raw[3]


def _declared_bytes(raw: bytes | bytearray) -> int | None:
    """The data size a complete idx header declares; None when it is not one (parse_idx says
    what is wrong)."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        return None
    if len(raw) < _header_size(raw):
        return None
    shape = struct.unpack(f">{raw[3]}I", raw[4 : _header_size(raw)])
    return math.prod(shape) * _IDX_DTYPES[raw[2]].itemsize


def load_idx(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    """A split of an idx dataset from ``root``, downloading its files when allowed."""
    image_path, label_path = require(spec, split, root, download, progress)
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
    return to_dataset(spec, split, nchw, labels.astype(np.int64), os.fspath(label_path))
