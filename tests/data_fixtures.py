"""Writers for small files in the official dataset formats, for tests of ``advls.data``.

Each writer produces the same byte layout as the official distribution, filled with the
arrays it is given, so a loader can be checked for exact round trips without the real data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}

IDX_TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
IDX_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_CLASSES = (
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
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sums(directory: Path, names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{name: sha256}`` of files in ``directory``, for ``DatasetSpec.with_checksums``."""
    return {name: sha256(directory / name) for name in names}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding (big-endian header and data) of ``array``."""
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_TYPE_CODES[big_endian]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + np.ascontiguousarray(array, dtype=big_endian).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    payload = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def write_idx_dataset(
    directory: Path, rng: np.random.Generator, sizes: Mapping[str, int], shape=(28, 28)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random MNIST-family files for each split in ``sizes``; returns ``{split: (x, y)}``."""
    arrays = {}
    for split, count in sizes.items():
        image_name, label_name = IDX_TRAIN if split == "train" else IDX_TEST
        images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(directory / image_name, images)
        write_idx(directory / label_name, labels)
        arrays[split] = (images, labels)
    return arrays


def cifar_batch(data: np.ndarray, labels: np.ndarray, name: str) -> dict[bytes, object]:
    """A batch dict laid out like the official ones (bytes keys, labels as a list)."""
    return {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }


def write_cifar_batches(
    directory: Path, rng: np.random.Generator, per_batch: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``cifar-10-batches-py``-style pickled batches; returns ``{member: (data, labels)}``."""
    directory.mkdir(parents=True, exist_ok=True)
    contents = {}
    for member in (*CIFAR_TRAIN_BATCHES, "test_batch"):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        with open(directory / member, "wb") as handle:
            pickle.dump(cifar_batch(data, labels, member), handle, protocol=2)
        contents[member] = (data, labels)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [name.encode() for name in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    with open(directory / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return contents


def write_cifar_tarball(
    path: Path, rng: np.random.Generator, per_batch: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A ``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/`` with random batches."""
    staging = path.parent / ".staging"
    contents = write_cifar_batches(staging / "cifar-10-batches-py", rng, per_batch)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for member in (staging / "cifar-10-batches-py").iterdir():
        member.unlink()
    (staging / "cifar-10-batches-py").rmdir()
    staging.rmdir()
    return contents


def tar_with(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    """A tar archive holding exactly ``members`` (regular files get ``payload``)."""
    with tarfile.open(path, "w") as tar:
        for info in members:
            if info.isfile():
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info
