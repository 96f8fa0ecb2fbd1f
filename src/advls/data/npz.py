"""``.npz`` archives: reading ``x``/``y``/``classes`` without pickles, and loading a user's
own file as a dataset."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from advls.data.arrays import check_label_range, images_nchw, labels_int64, tensor
from advls.data.dataset import ImageDataset
from advls.data.errors import DataError, MissingDataError


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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
        if class_names.ndim != 1 or class_names.dtype.kind != "U":
            raise DataError(f"{path}: classes must be a 1-D array of strings")
        classes = tuple(str(c) for c in class_names)
    else:
        classes = tuple(str(k) for k in range(int(labels.max()) + 1))
    check_label_range(labels, len(classes), os.fspath(path))
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


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images on the [0, 1] scale."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64) / 255
    std = images.std(axis=(0, 2, 3), dtype=np.float64) / 255
    # A constant channel has no spread; dividing by 1 keeps normalisation finite.
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
