"""CIFAR-10: a split from the official tarball (extracted once), its extracted batches, or
an npz copy (``cifar10_{split}_*.npz``, uint8 HWC ``x`` and ``y``)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advls.data.arrays import images_nchw, labels_int64, to_dataset
from advls.data.dataset import ImageDataset
from advls.data.errors import DataError, MissingDataError
from advls.data.extract import safe_extract
from advls.data.fetch import ensure_file
from advls.data.integrity import verify_file
from advls.data.npz import read_npz
from advls.data.paths import ENV_VAR
from advls.data.registry import (
    CIFAR10_BATCH_DIR,
    CIFAR10_MEMBERS,
    CIFAR10_META,
    CIFAR10_TARBALL,
)
from advls.data.specs import DatasetSpec
from advls.data.unpickle import safe_unpickle


def load_cifar10(
    spec: DatasetSpec, split: str, root: Path, download: bool, progress: bool | None
) -> ImageDataset:
    """A split of CIFAR-10 from ``root``: batches (extracting the tarball if needed), else an
    npz copy, else the tarball downloaded when allowed."""
    batch_dir, tarball = root / CIFAR10_BATCH_DIR, root / CIFAR10_TARBALL
    members = CIFAR10_MEMBERS[split]
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
    ensure_file(spec.file(CIFAR10_TARBALL), tarball, None, progress)
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
            every_member = [m for names in CIFAR10_MEMBERS.values() for m in names]
            if not _all_exist(batch_dir, every_member):  # else another process won the race
                raise DataError(
                    f"cannot extract {tarball}: {batch_dir} exists but is incomplete ({exc}); "
                    "remove it and retry"
                ) from exc


def _read_cifar10_batches(spec: DatasetSpec, split: str, batch_dir: Path) -> ImageDataset:
    images, labels = [], []
    for member in CIFAR10_MEMBERS[split]:
        path = batch_dir / member
        verify_file(path, spec.file(member))
        batch_images, batch_labels = _cifar10_batch(
            safe_unpickle(path.read_bytes(), os.fspath(path)), path
        )
        images.append(batch_images)
        labels.append(batch_labels)
    dataset = to_dataset(
        spec, split, np.concatenate(images), np.concatenate(labels), os.fspath(batch_dir)
    )
    meta = batch_dir / CIFAR10_META
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
    # No dtype: np.asarray(..., dtype=int64) would truncate 1.5 to 1; labels_int64 refuses
    # anything but integers, and overflowing Python ints stay objects, which it refuses too.
    try:
        labels = np.asarray(batch[b"labels"])
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise DataError(f"{path}: b'labels' must be a list of integers") from exc
    labels = labels_int64(labels, len(data), os.fspath(path))
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10_classes(spec: DatasetSpec, meta: Path) -> tuple[str, ...]:
    verify_file(meta, spec.file(CIFAR10_META))
    content = safe_unpickle(meta.read_bytes(), os.fspath(meta))
    names = content.get(b"label_names") if isinstance(content, dict) else None
    if not isinstance(names, list) or len(names) != len(spec.classes):
        raise DataError(f"{meta}: expected {len(spec.classes)} label names under b'label_names'")
    if not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{meta}: b'label_names' must be a list of strings")
    try:
        return tuple(n.decode("ascii") if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta}: b'label_names' must be ASCII strings ({exc})") from exc


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
    x, y, _ = read_npz(path)
    images = images_nchw(x, os.fspath(path))
    if images.shape[1:] != (3, 32, 32):
        raise DataError(f"{path}: expected (N, 32, 32, 3) images, got {x.shape}")
    labels = labels_int64(y, len(images), os.fspath(path))
    return to_dataset(spec, split, images, labels, os.fspath(path))
