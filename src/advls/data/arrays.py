"""From decoded arrays to an :class:`ImageDataset`: checked conversion of images to uint8
``(N, C, H, W)`` and of labels to int64, without silent loss."""

from __future__ import annotations

import numpy as np
import torch

from advls.data.dataset import ImageDataset
from advls.data.errors import DataError
from advls.data.labels import check_labels
from advls.data.specs import DatasetSpec


def images_uint8(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 images from uint8, or from floats that are exact multiples of 1/255."""
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


def images_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` from ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``."""
    x = images_uint8(np.asarray(x), source)
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


def labels_int64(y: np.ndarray, count: int, source: str) -> np.ndarray:
    """int64 labels ``(N,)`` from ``count`` integers shaped ``(N,)`` or ``(N, 1)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != count:
        raise DataError(f"{source}: {count} images but {len(y)} labels")
    # uint64 beyond int64 would wrap to negative numbers: no class index is that large anyway.
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{source}: labels must be class indices, found {int(y.max())}")
    return y.astype(np.int64)


def check_label_range(labels: np.ndarray, num_classes: int, source: str) -> None:
    """:class:`DataError` unless every label lies in ``0..num_classes - 1``
    (:func:`advls.data.labels.check_labels`)."""
    check_labels(labels, num_classes, source)


def to_dataset(
    spec: DatasetSpec, split: str, images: np.ndarray, labels: np.ndarray, source: str
) -> ImageDataset:
    """An :class:`ImageDataset` with the classes and statistics of ``spec``."""
    check_label_range(labels, len(spec.classes), source)
    return ImageDataset(
        name=spec.name,
        split=split,
        images=tensor(images),
        labels=tensor(labels),
        classes=spec.classes,
        mean=spec.mean,
        std=spec.std,
    )


def tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor, sharing its memory when that is safe."""
    # torch.from_numpy shares memory and warns on read-only arrays; copy only when needed.
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)
