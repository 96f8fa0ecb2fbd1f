"""SVHN: a split from its official MATLAB file (``X`` as ``(32, 32, 3, N)``, digit 0 as 10)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from advls.data.arrays import labels_int64, to_dataset
from advls.data.dataset import ImageDataset
from advls.data.errors import DataError
from advls.data.fetch import require
from advls.data.matfile import read_mat_arrays
from advls.data.specs import DatasetSpec


def load_svhn(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    """A split of SVHN from ``root``, downloading its file when allowed."""
    (path,) = require(spec, split, root, download, progress)
    x, y = _read_svhn_mat(path)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    labels = labels_int64(y, x.shape[3], os.fspath(path))
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return to_dataset(spec, split, images, labels, os.fspath(path))


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mat = read_mat_arrays(path, ("X", "y"))
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the variables X and y")
    return mat["X"], mat["y"]
