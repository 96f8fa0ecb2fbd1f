"""``.npz`` archives: reading ``x``/``y``/``classes`` without pickles, and loading a user's
own file as a dataset.

The archive is read member by member with :mod:`zipfile` and each array's ``.npy`` header is
checked against the bytes the member holds before anything is allocated: ``np.load`` would
allocate whatever shape a header declares (a 10-byte file can ask for terabytes), and its
errors on damaged archives are of many types.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from advls.data.arrays import images_nchw, labels_int64, tensor
from advls.data.dataset import ImageDataset
from advls.data.errors import DataError, MissingDataError
from advls.data.labels import check_labels, infer_classes

#: What a damaged zip archive or ``.npy`` header raises from zipfile, zlib and numpy's header
#: parser (``NotImplementedError``: an unknown compression method; ``RuntimeError``: an
#: encrypted member; ``SyntaxError``/``RecursionError``: a header that is not a literal).
_MALFORMED = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    SyntaxError,
    RecursionError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)
_CHUNK = 1 << 20


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``x``, ``y`` and optional ``classes`` arrays of an npz archive (never pickles)."""
    with open(path, "rb") as handle:
        if handle.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise DataError(f"{path} is not an .npz (zip) archive")
        handle.seek(0)
        try:
            with zipfile.ZipFile(handle) as archive:
                names = {
                    name.removesuffix(".npy")
                    for name in archive.namelist()
                    if name.endswith(".npy")
                }
                missing = {"x", "y"} - names
                if missing:
                    raise DataError(
                        f"{path} lacks the arrays {sorted(missing)}; expected x (images) and "
                        f"y (labels), found {sorted(names)}"
                    )
                x, y = _read_array(archive, "x", path), _read_array(archive, "y", path)
                classes = _read_array(archive, "classes", path) if "classes" in names else None
                return x, y, classes
        except DataError:
            raise
        except _MALFORMED as exc:
            raise DataError(f"cannot read {path}: {exc}; it may be truncated or corrupted") from exc


def _read_array(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    """The array ``name`` of the archive, its header checked against the member's size."""
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(
                f"{path}: {name} is in .npy format {version}, which advls does not read"
            )
        if dtype.hasobject:
            raise DataError(
                f"{path}: {name} holds Python objects ({dtype}), which would need unpickling; "
                "save plain numeric or string arrays"
            )
        if any(size < 0 for size in shape):
            raise DataError(f"{path}: {name} declares the impossible shape {shape}")
        declared = math.prod(shape) * dtype.itemsize
        held = info.file_size - member.tell()
        if declared != held:
            raise DataError(
                f"{path}: {name} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                f"{held} bytes"
            )
        raw = bytearray()
        while len(raw) < declared:  # memory grows with the bytes that are there, never ahead
            chunk = member.read(min(_CHUNK, declared - len(raw)))
            if not chunk:
                raise DataError(f"{path}: {name} ends after {len(raw)} of {declared} bytes")
            raw += chunk
        member.read(1)  # reaching the end makes zipfile check the member's CRC
    if declared == 0:
        return np.zeros(shape, dtype=dtype)
    array = np.frombuffer(raw, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def load_user_npz(path: Path, split: str) -> ImageDataset:
    """A user's npz file as a dataset named by its path; statistics come from its images."""
    if not path.is_file():
        raise MissingDataError(f"no such .npz file: {path}")
    x, y, class_names = read_npz(path)
    images = images_nchw(x, os.fspath(path))
    if len(images) == 0:
        raise DataError(f"{path} holds no images")
    labels = labels_int64(y, len(images), os.fspath(path))
    if class_names is not None:
        classes = _class_names(class_names, path)
        check_labels(labels, len(classes), os.fspath(path))
    else:
        classes = tuple(str(k) for k in range(infer_classes(labels, os.fspath(path))))
    mean, std = _channel_stats(images)
    return ImageDataset(
        name=os.fspath(path),
        split=split,
        images=tensor(images),
        labels=tensor(labels),
        classes=classes,
        mean=mean,
        std=std,
    )


def _class_names(names: np.ndarray, path: Path) -> tuple[str, ...]:
    """The ``classes`` array: the number of classes the file declares, and their names."""
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DataError(f"{path}: classes must be a 1-D array of strings")
    classes = tuple(str(c) for c in names)
    if len(classes) < 2:
        raise DataError(f"{path}: classes names {len(classes)} class(es); a classifier needs 2")
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: classes names some class twice: {list(classes)}")
    return classes


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images on the [0, 1] scale."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64) / 255
    std = images.std(axis=(0, 2, 3), dtype=np.float64) / 255
    # A constant channel has no spread; dividing by 1 keeps normalisation finite.
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
