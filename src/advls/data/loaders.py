"""``load(name, split)``: the entry point that picks a dataset's loader by its format."""

from __future__ import annotations

from pathlib import Path

from advls.data.cifar10 import load_cifar10
from advls.data.dataset import ImageDataset
from advls.data.idx import load_idx
from advls.data.npz import load_user_npz
from advls.data.paths import PathLike, resolve_data_dir
from advls.data.registry import Registry, check_split, dataset_spec
from advls.data.svhn import load_svhn

_LOADERS = {"idx": load_idx, "cifar10": load_cifar10, "svhn": load_svhn}


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
    (strings), which declares the number of classes; without it the labels must be
    ``0..K-1`` with every class present and at least two (:mod:`advls.data.labels`).
    ``split`` is ``train`` or ``test`` (SVHN also ``extra``); for a user npz it
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
        check_split(split, ("train", "test"), name)
        return load_user_npz(Path(name).expanduser(), split)
    spec = dataset_spec(name, registry)
    check_split(split, tuple(spec.splits), spec.name)
    root = resolve_data_dir(data_dir) / spec.name
    return _LOADERS[spec.format](spec, split, root, download, progress)
