"""Tests for advls.data: formats, checksums, safety of archives and pickles, downloads."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advls import data
from advls.data import (
    REGISTRY,
    ChecksumError,
    DataError,
    DownloadError,
    ImageDataset,
    MissingDataError,
    UnsafeArchiveError,
    UnsafePickleError,
    integrity,
)
from data_fixtures import (
    CIFAR_CLASSES,
    CIFAR_TRAIN_BATCHES,
    IDX_TEST,
    IDX_TRAIN,
    idx_bytes,
    sha256,
    sums,
    tar_member,
    tar_with,
    write_cifar_batches,
    write_cifar_tarball,
    write_idx,
    write_idx_dataset,
)

IDX_FILES = [*IDX_TRAIN, *IDX_TEST]
CIFAR_MEMBERS = [*CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta"]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def registry_accepting(name: str, checksums: dict[str, str]) -> dict[str, data.DatasetSpec]:
    """The default registry, except that ``name`` accepts these (generated) files."""
    return {**REGISTRY, name: REGISTRY[name].with_checksums(checksums)}


# --------------------------------------------------------------------------------------------
# MNIST family (idx)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
def test_idx_datasets_round_trip_exactly(tmp_path, rng, name):
    arrays = write_idx_dataset(tmp_path / name, rng, {"train": 9, "test": 4}, shape=(28, 27))
    registry = registry_accepting(name, sums(tmp_path / name, IDX_FILES))

    for split, (images, labels) in arrays.items():
        loaded = data.load(name, split, tmp_path, download=False, registry=registry)
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert loaded.images.shape == (len(images), 1, 28, 27)
        assert loaded.images.is_contiguous()
        assert loaded.images[:, 0].numpy().tobytes() == images.tobytes()
        assert loaded.labels.tolist() == labels.tolist()
        assert (loaded.name, loaded.split, len(loaded)) == (name, split, len(images))
        assert loaded.input_shape == (1, 28, 27) and loaded.num_classes == 10
        assert loaded.mean == REGISTRY[name].mean and loaded.std == REGISTRY[name].std


def test_dataset_statistics_are_the_published_ones():
    assert REGISTRY["mnist"].mean == (0.1307,) and REGISTRY["mnist"].std == (0.3081,)
    assert REGISTRY["fashion-mnist"].mean == (0.2860,)
    assert REGISTRY["kmnist"].std == (0.3483,)
    assert REGISTRY["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert REGISTRY["cifar10"].std == (0.2470, 0.2435, 0.2616)
    assert REGISTRY["svhn"].mean == (0.4377, 0.4438, 0.4728)


def test_registry_checksums_match_shared_sha256sums():
    """The MNIST and CIFAR npz sums in the registry are the ones shipped with the data."""
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    for dataset, directory in [("mnist", "mnist"), ("cifar10", "cifar10")]:
        listing = shared / directory / "SHA256SUMS"
        if not listing.exists():
            pytest.skip(f"{listing} is not available")
        for line in listing.read_text().splitlines():
            digest, filename = line.split()
            assert REGISTRY[dataset].file(filename).sha256 == digest


def test_generated_files_fail_against_the_real_checksums(tmp_path, rng):
    write_idx_dataset(tmp_path / "mnist", rng, {"train": 3})
    with pytest.raises(ChecksumError) as info:
        data.load("mnist", "train", tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert REGISTRY["mnist"].file("train-images-idx3-ubyte.gz").sha256 in message


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_damaged_file_is_reported_with_expected_checksum(tmp_path, rng, damage):
    write_idx_dataset(tmp_path / "mnist", rng, {"train": 5})
    registry = registry_accepting("mnist", sums(tmp_path / "mnist", IDX_TRAIN))
    target = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    expected = sha256(target)
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))

    with pytest.raises(ChecksumError) as info:
        data.load("mnist", "train", tmp_path, download=False, registry=registry)
    assert info.value.path == target
    assert info.value.expected == expected and info.value.actual == sha256(target)
    assert str(target) in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02", r"declares shape \(3,\)"),
        (b"\x01\x02\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x02", "bad magic"),
        (b"\x00\x00\x07\x01" + (2).to_bytes(4, "big") + b"\x01\x02", "bad magic"),
        (b"\x00\x00\x08\x03\x00", "header is truncated"),
    ],
)
def test_malformed_idx_is_reported_with_the_file_name(tmp_path, rng, payload, complaint):
    write_idx_dataset(tmp_path / "mnist", rng, {"train": 2})
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(payload))
    registry = registry_accepting("mnist", sums(tmp_path / "mnist", IDX_TRAIN))

    with pytest.raises(DataError, match=complaint) as info:
        data.load("mnist", "train", tmp_path, download=False, registry=registry)
    assert str(labels) in str(info.value)


def test_idx_labels_outside_the_classes_are_rejected(tmp_path, rng):
    write_idx_dataset(tmp_path / "mnist", rng, {"test": 3})
    write_idx(tmp_path / "mnist" / IDX_TEST[1], np.array([1, 10, 2], dtype=np.uint8))
    registry = registry_accepting("mnist", sums(tmp_path / "mnist", IDX_TEST))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        data.load("mnist", "test", tmp_path, download=False, registry=registry)


def test_idx_image_and_label_counts_must_agree(tmp_path, rng):
    write_idx_dataset(tmp_path / "mnist", rng, {"test": 3})
    write_idx(tmp_path / "mnist" / IDX_TEST[1], np.array([1, 2], dtype=np.uint8))
    registry = registry_accepting("mnist", sums(tmp_path / "mnist", IDX_TEST))
    with pytest.raises(DataError, match=r"3 images but .* 2 labels"):
        data.load("mnist", "test", tmp_path, download=False, registry=registry)


IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(IDX_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_round_trips_any_type_and_shape(dtype, shape, seed):
    values = np.random.default_rng(seed).normal(size=shape) * 100
    array = np.clip(values, -128, 127).astype(dtype)  # in range for every dtype
    decoded = data.parse_idx(idx_bytes(array))
    assert decoded.dtype == np.dtype(dtype)  # native byte order, whatever the file's
    assert decoded.shape == tuple(shape)
    np.testing.assert_array_equal(decoded, array)


def test_read_idx_reads_plain_and_gzipped_files(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    plain = write_idx(tmp_path / "a.idx", array, compress=False)
    packed = write_idx(tmp_path / "a.idx.gz", array)
    np.testing.assert_array_equal(data.read_idx(plain), array)
    np.testing.assert_array_equal(data.read_idx(packed), array)
    packed.write_bytes(packed.read_bytes()[:-6])
    with pytest.raises(DataError, match=r"a\.idx\.gz"):
        data.read_idx(packed)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def expected_cifar(contents, members):
    images = np.concatenate([contents[m][0] for m in members]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([contents[m][1] for m in members])
    return images, labels


def test_cifar_tarball_is_verified_extracted_and_read_exactly(tmp_path, rng):
    root = tmp_path / "cifar10"
    root.mkdir()
    contents = write_cifar_tarball(root / "cifar-10-python.tar.gz", rng, per_batch=3)
    scratch = tmp_path / "scratch"  # the batches' sums, computed from a separate extraction
    with tarfile.open(root / "cifar-10-python.tar.gz") as tar:
        tar.extractall(scratch, filter="data")
    checksums = sums(scratch / "cifar-10-batches-py", CIFAR_MEMBERS)
    checksums["cifar-10-python.tar.gz"] = sha256(root / "cifar-10-python.tar.gz")
    registry = registry_accepting("cifar10", checksums)

    train = data.load("cifar10", "train", tmp_path, download=False, registry=registry)
    test = data.load("cifar10", "test", tmp_path, download=False, registry=registry)

    for dataset, members in [(train, CIFAR_TRAIN_BATCHES), (test, ["test_batch"])]:
        images, labels = expected_cifar(contents, members)
        assert dataset.images.shape == (len(images), 3, 32, 32)
        assert dataset.images.numpy().tobytes() == images.tobytes()
        assert dataset.labels.tolist() == labels.tolist()
        assert dataset.classes == CIFAR_CLASSES
    assert len(train) == 15 and len(test) == 3
    # Extracted once, beside the tarball, with no scratch directory left behind.
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    # The extracted batches are enough on their own.
    (root / "cifar-10-python.tar.gz").unlink()
    again = data.load("cifar10", "test", tmp_path, download=False, registry=registry)
    assert torch.equal(again.images, test.images)


def test_corrupt_cifar_tarball_is_refused_before_extraction(tmp_path, rng):
    root = tmp_path / "cifar10"
    root.mkdir()
    write_cifar_tarball(root / "cifar-10-python.tar.gz", rng, per_batch=2)
    with pytest.raises(ChecksumError) as info:
        data.load("cifar10", "train", tmp_path, download=False)
    assert info.value.expected == REGISTRY["cifar10"].file("cifar-10-python.tar.gz").sha256
    assert "cifar-10-python.tar.gz" in str(info.value)
    assert not (root / "cifar-10-batches-py").exists()


def test_extracted_batches_are_checked_against_the_official_md5(tmp_path, rng):
    write_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py", rng, per_batch=2)
    with pytest.raises(ChecksumError) as info:
        data.load("cifar10", "test", tmp_path, download=False)
    assert info.value.algorithm == "md5"
    assert info.value.expected == "40351d587109b95175f43aff81a1287e"  # official test_batch
    assert "test_batch" in str(info.value)


def test_cifar_batch_with_wrong_layout_is_rejected(tmp_path, rng):
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_batches(batch_dir, rng, per_batch=2)
    with open(batch_dir / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle, 2)
    registry = registry_accepting("cifar10", sums(batch_dir, CIFAR_MEMBERS))
    with pytest.raises(DataError, match=r"test_batch: b'data' must be a uint8 \(N, 3072\)"):
        data.load("cifar10", "test", tmp_path, download=False, registry=registry)


def write_cifar_npz(path: Path, rng: np.random.Generator, count: int) -> np.ndarray:
    x = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=count, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return x, y


def test_cifar_npz_layout_is_read_and_transposed(tmp_path, rng):
    path = tmp_path / "cifar10" / "cifar10_test_first1000_uint8_hwc.npz"
    x, y = write_cifar_npz(path, rng, 5)
    registry = registry_accepting("cifar10", {path.name: sha256(path)})
    loaded = data.load("cifar10", "test", tmp_path, download=False, registry=registry)
    assert loaded.images.numpy().tobytes() == x.transpose(0, 3, 1, 2).tobytes()
    assert loaded.labels.tolist() == y.tolist()
    assert loaded.classes == CIFAR_CLASSES


def test_registered_cifar_npz_is_checksummed(tmp_path, rng):
    path = tmp_path / "cifar10" / "cifar10_train_50000_uint8_hwc.npz"
    write_cifar_npz(path, rng, 4)
    with pytest.raises(ChecksumError, match="614e29ee876052c4debd1cc2d171e076e0cb7afcee0b2a9f"):
        data.load("cifar10", "train", tmp_path, download=False)


def test_unregistered_cifar_npz_is_taken_as_the_users_own(tmp_path, rng):
    path = tmp_path / "cifar10" / "cifar10_test_all_uint8_hwc.npz"
    x, _ = write_cifar_npz(path, rng, 3)
    loaded = data.load("cifar10", "test", tmp_path, download=False)
    assert loaded.images.numpy().tobytes() == x.transpose(0, 3, 1, 2).tobytes()
    write_cifar_npz(tmp_path / "cifar10" / "cifar10_test_other.npz", rng, 3)
    with pytest.raises(DataError, match="several npz files"):
        data.load("cifar10", "test", tmp_path, download=False)


def test_missing_cifar_names_every_accepted_layout(tmp_path):
    with pytest.raises(MissingDataError) as info:
        data.load("cifar10", "test", tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in message
    assert "cifar-10-batches-py" in message and "cifar10_test_*.npz" in message
    assert "download" in message
    assert isinstance(info.value, FileNotFoundError)


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def test_restricted_unpickler_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker)}, protocol=2)
    assert b"system" in payload  # the stream really names os.system

    with pytest.raises(UnsafePickleError, match=r"system.*only numpy array reconstruction"):
        data.safe_unpickle(payload, "evil.pkl")
    assert not marker.exists()


def test_load_refuses_a_tampered_cifar_batch(tmp_path, rng):
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_batches(batch_dir, rng, per_batch=2)
    marker = tmp_path / "pwned"
    (batch_dir / "test_batch").write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    registry = registry_accepting("cifar10", sums(batch_dir, CIFAR_MEMBERS))

    with pytest.raises(UnsafePickleError) as info:
        data.load("cifar10", "test", tmp_path, download=False, registry=registry)
    assert str(batch_dir / "test_batch") in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.",
        # _codecs.encode is allowed for latin-1 only: other codecs are refused.
        b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00hiX\x06\x00\x00\x00base64\x86R.",
    ],
)
def test_restricted_unpickler_refuses_other_callables(payload):
    with pytest.raises(UnsafePickleError):
        data.safe_unpickle(payload)


def test_restricted_unpickler_rebuilds_numpy_arrays():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    restored = data.safe_unpickle(pickle.dumps({b"data": array, b"labels": [1, 2]}, protocol=2))
    np.testing.assert_array_equal(restored[b"data"], array)
    assert restored[b"labels"] == [1, 2]


def test_truncated_pickle_is_a_data_error():
    payload = pickle.dumps({b"data": np.zeros(5, np.uint8)}, protocol=2)
    with pytest.raises(DataError, match="cannot unpickle batch"):
        data.safe_unpickle(payload[: len(payload) // 2], "batch")


# --------------------------------------------------------------------------------------------
# Safe archive extraction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([tar_member("ok.txt"), tar_member("../evil")], "'..'"),
        ([tar_member("ok.txt"), tar_member("sub/../../evil")], "'..'"),
        ([tar_member("/tmp/advls-absolute-evil")], "absolute path"),
        ([tar_member("link", tarfile.SYMTYPE, "../outside")], "points outside"),
        ([tar_member("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute path"),
        ([tar_member("hard", tarfile.LNKTYPE, "../outside")], "points outside"),
        (
            [tar_member("link", tarfile.SYMTYPE, "."), tar_member("link/evil")],
            "through a link",
        ),
        ([tar_member("dev", tarfile.CHRTYPE)], "device"),
        ([tar_member("fifo", tarfile.FIFOTYPE)], "device or FIFO"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, members, reason):
    archive = tar_with(tmp_path / "evil.tar", members)
    destination = tmp_path / "sandbox" / "dest"
    with pytest.raises(UnsafeArchiveError, match=reason):
        data.safe_extract(archive, destination)
    assert not destination.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]
    assert not Path("/tmp/advls-absolute-evil").exists()


def test_symlink_chain_escape_is_refused(tmp_path):
    # "b" looks harmless lexically ("a/.." is "."), but "a" itself escapes.
    members = [
        tar_member("a", tarfile.SYMTYPE, "../outside"),
        tar_member("b", tarfile.SYMTYPE, "a/.."),
    ]
    archive = tar_with(tmp_path / "evil.tar", members)
    with pytest.raises(UnsafeArchiveError) as info:
        data.safe_extract(archive, tmp_path / "dest")
    assert "'a'" in str(info.value) and "'b'" in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_safe_archive_extracts_files_and_inner_links(tmp_path):
    members = [
        tar_member("dir", tarfile.DIRTYPE),
        tar_member("dir/file.txt"),
        tar_member("dir/alias", tarfile.SYMTYPE, "file.txt"),
    ]
    archive = tar_with(tmp_path / "ok.tar", members, payload=b"hello")
    written = data.safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "dir" / "file.txt").read_bytes() == b"hello"
    assert (tmp_path / "dest" / "dir" / "alias").read_bytes() == b"hello"
    assert tmp_path / "dest" / "dir" / "file.txt" in written


def test_truncated_archive_is_a_data_error(tmp_path, rng):
    archive = tmp_path / "a.tar.gz"
    write_cifar_tarball(archive, rng, per_batch=2)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match=r"a\.tar\.gz"):
        data.safe_extract(archive, tmp_path / "dest")


# --------------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_mat_is_read_with_ten_mapped_to_zero(tmp_path, rng, split):
    count = 6
    x = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [5], [3]], dtype=np.uint8)
    path = tmp_path / "svhn" / f"{split}_32x32.mat"
    path.parent.mkdir()
    scipy.io.savemat(path, {"X": x, "y": y})
    registry = registry_accepting("svhn", {path.name: sha256(path)})

    loaded = data.load("svhn", split, tmp_path, download=False, registry=registry)
    assert loaded.images.shape == (count, 3, 32, 32)
    assert loaded.images.numpy().tobytes() == x.transpose(3, 2, 0, 1).tobytes()
    assert loaded.labels.tolist() == [0, 1, 9, 0, 5, 3]
    assert loaded.mean == REGISTRY["svhn"].mean


def test_corrupt_svhn_mat_is_a_data_error(tmp_path):
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.parent.mkdir()
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 40)
    registry = registry_accepting("svhn", {path.name: sha256(path)})
    with pytest.raises(DataError, match=r"test_32x32\.mat"):
        data.load("svhn", "test", tmp_path, download=False, registry=registry)


# --------------------------------------------------------------------------------------------
# User npz
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_user_npz_layouts_are_detected(tmp_path, rng, layout):
    channels = 1 if layout == "NHW" else 3
    nchw = rng.integers(0, 256, size=(5, channels, 6, 7), dtype=np.uint8)
    stored = {
        "NHWC": nchw.transpose(0, 2, 3, 1),
        "NCHW": nchw,
        "NHW": nchw[:, 0],
    }[layout]
    labels = np.array([0, 2, 1, 2, 0], dtype=np.int16)
    path = tmp_path / "mine.npz"
    np.savez(path, x=stored, y=labels)

    loaded = data.load(str(path), "test")
    assert loaded.images.shape == (5, channels, 6, 7) and loaded.images.is_contiguous()
    assert loaded.images.numpy().tobytes() == nchw.tobytes()
    assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == labels.tolist()
    assert loaded.classes == ("0", "1", "2") and loaded.split == "test"
    expected_mean = nchw.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    expected_std = nchw.astype(np.float64).std(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(loaded.mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(loaded.std, expected_std, rtol=1e-12)


def test_user_npz_class_names_and_label_range(tmp_path):
    path = tmp_path / "named.npz"
    x = np.zeros((2, 4, 4), np.uint8)
    np.savez(path, x=x, y=np.array([0, 1]), classes=np.array(["cat", "dog", "eel"]))
    assert data.load(str(path), "train").classes == ("cat", "dog", "eel")
    np.savez(path, x=x, y=np.array([0, 3]), classes=np.array(["cat", "dog", "eel"]))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.2"):
        data.load(str(path), "train")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_npz_exact_float_images_become_uint8(tmp_path, rng, dtype):
    pixels = rng.integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    path = tmp_path / "floats.npz"
    np.savez(path, x=pixels.astype(dtype) / dtype(255), y=np.arange(4))
    loaded = data.load(str(path), "train")
    assert loaded.images.numpy().tobytes() == pixels.tobytes()


def test_user_npz_float32_images_stored_as_float64_are_accepted(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(3, 1, 4, 4), dtype=np.uint8)
    path = tmp_path / "floats.npz"
    x = (pixels.astype(np.float32) / np.float32(255)).astype(np.float64)
    np.savez(path, x=x, y=np.arange(3))
    assert data.load(str(path), "train").images.numpy().tobytes() == pixels.tobytes()


@pytest.mark.parametrize(
    ("x", "y", "complaint"),
    [
        (np.full((2, 3, 4, 4), 0.5, np.float32), [0, 1], "not exact multiples of 1/255"),
        (np.full((2, 3, 4, 4), 1.5, np.float32), [0, 1], r"must lie in \[0, 1\]"),
        (np.zeros((2, 3, 4, 3), np.uint8), [0, 1], "cannot tell NCHW from NHWC"),
        (np.zeros((2, 5, 4, 4), np.uint8), [0, 1], "no channel dimension of size 1 or 3"),
        (np.zeros((2, 4, 4), np.int32), [0, 1], "uint8 or float"),
        (np.zeros((2, 4, 4), np.uint8), [0, 1, 1], "2 images but 3 labels"),
        (np.zeros((2, 4, 4), np.uint8), [0.0, 1.0], "1-D integer array"),
        (np.zeros((0, 4, 4), np.uint8), np.zeros(0, int), "holds no images"),
    ],
)
def test_user_npz_problems_are_explained(tmp_path, x, y, complaint):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.asarray(y))
    with pytest.raises(DataError, match=complaint) as info:
        data.load(str(path), "train")
    assert str(path) in str(info.value)


def test_user_npz_missing_arrays_and_corruption(tmp_path, rng):
    path = tmp_path / "u.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"lacks the arrays \['x', 'y'\]"):
        data.load(str(path), "train")

    np.savez(path, x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), y=np.arange(50))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"u\.npz"):
        data.load(str(path), "train")

    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF  # inside x's data: the zip CRC catches it
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"u\.npz"):
        data.load(str(path), "train")

    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"not an \.npz"):
        data.load(str(path), "train")


def test_user_npz_split_and_existence(tmp_path):
    with pytest.raises(ValueError, match="allowed values: train, test"):
        data.load(str(tmp_path / "x.npz"), "extra")
    with pytest.raises(MissingDataError, match=r"x\.npz"):
        data.load(str(tmp_path / "x.npz"), "train")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(["NHWC", "NCHW", "NHW"]),
    count=st.integers(1, 4),
    channels=st.sampled_from([1, 3]),
    height=st.integers(4, 9),
    width=st.integers(4, 9),
    as_float=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_user_npz_layout_detection_property(layout, count, channels, height, width, as_float, seed):
    generator = np.random.default_rng(seed)
    channels = 1 if layout == "NHW" else channels
    nchw = generator.integers(0, 256, size=(count, channels, height, width), dtype=np.uint8)
    stored = {"NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw, "NHW": nchw[:, 0]}[layout]
    if as_float:
        stored = stored.astype(np.float32) / np.float32(255)
    labels = generator.integers(0, 5, size=count)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "p.npz"
        # A few points need not show every class: the file declares its five.
        np.savez(path, x=stored, y=labels, classes=np.array(list("abcde")))
        loaded = data.load(str(path), "train")
    assert loaded.input_shape == (channels, height, width)
    assert loaded.images.numpy().tobytes() == nchw.tobytes()
    assert loaded.labels.tolist() == labels.tolist()


# --------------------------------------------------------------------------------------------
# ImageDataset
# --------------------------------------------------------------------------------------------


def make_dataset(**overrides) -> ImageDataset:
    fields = {
        "name": "toy",
        "split": "train",
        "images": torch.zeros(2, 1, 3, 3, dtype=torch.uint8),
        "labels": torch.tensor([0, 1]),
        "classes": ("a", "b"),
        "mean": (0.5,),
        "std": (0.25,),
    }
    return ImageDataset(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"images": torch.zeros(2, 1, 3, 3)}, "uint8"),
        ({"images": torch.zeros(2, 1, 3, 4, dtype=torch.uint8).transpose(2, 3)}, "contig"),
        ({"labels": torch.tensor([0, 1], dtype=torch.int32)}, "int64"),
        ({"labels": torch.tensor([0, 2])}, r"0\.\.1"),
        ({"mean": (0.5, 0.5)}, "one per channel"),
        ({"std": (0.0,)}, "positive"),
    ],
)
def test_image_dataset_validates_its_fields(overrides, complaint):
    with pytest.raises(DataError, match=complaint):
        make_dataset(**overrides)


def test_image_dataset_is_frozen_and_describes_itself():
    dataset = make_dataset()
    with pytest.raises(AttributeError):
        dataset.name = "other"
    assert repr(dataset) == (
        "ImageDataset(name='toy', split='train', n=2, input_shape=(1, 3, 3), num_classes=2)"
    )


# --------------------------------------------------------------------------------------------
# Downloads through a real HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on loopback; yields it and its base URL."""
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def publish_mnist(served: Path, rng: np.random.Generator, mirror: str = "good"):
    """Generated MNIST files under ``served/<mirror>/``; returns the arrays and their sums."""
    arrays = write_idx_dataset(served / mirror, rng, {"train": 4, "test": 3})
    return arrays, sums(served / mirror, IDX_FILES)


def test_download_fetches_and_verifies(tmp_path, rng, http_root):
    served, base = http_root
    arrays, checksums = publish_mnist(served, rng)
    registry = registry_accepting("mnist", checksums)
    data_dir = tmp_path / "data"

    paths = data.download("mnist", data_dir, mirrors=[f"{base}/good/"], registry=registry)

    assert sorted(p.name for p in paths) == sorted(IDX_FILES)
    for path in paths:
        assert path.read_bytes() == (served / "good" / path.name).read_bytes()
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(IDX_FILES)
    loaded = data.load("mnist", "test", data_dir, download=False, registry=registry)
    assert loaded.labels.tolist() == arrays["test"][1].tolist()


def test_load_downloads_missing_files_from_registered_mirrors(tmp_path, rng, http_root):
    served, base = http_root
    arrays, checksums = publish_mnist(served, rng)
    spec = REGISTRY["mnist"].with_checksums(checksums).with_mirrors([f"{base}/good"])
    registry = {**REGISTRY, "mnist": spec}

    loaded = data.load("mnist", "train", tmp_path / "data", registry=registry)
    assert loaded.images[:, 0].numpy().tobytes() == arrays["train"][0].tobytes()
    assert not (tmp_path / "data" / "mnist" / IDX_TEST[0]).exists()  # only what was asked


def test_load_downloads_extracts_and_reads_the_cifar_tarball(tmp_path, rng, http_root):
    served, base = http_root
    contents = write_cifar_tarball(served / "cifar-10-python.tar.gz", rng, per_batch=2)
    with tarfile.open(served / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "reference", filter="data")
    checksums = sums(tmp_path / "reference" / "cifar-10-batches-py", CIFAR_MEMBERS)
    checksums["cifar-10-python.tar.gz"] = sha256(served / "cifar-10-python.tar.gz")
    spec = REGISTRY["cifar10"].with_checksums(checksums).with_mirrors([base])
    registry = {**REGISTRY, "cifar10": spec}

    test = data.load("cifar10", "test", tmp_path / "data", registry=registry)
    images, labels = expected_cifar(contents, ["test_batch"])
    assert test.images.numpy().tobytes() == images.tobytes()
    assert test.labels.tolist() == labels.tolist()
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_download_checksum_mismatch_leaves_nothing_behind(tmp_path, rng, http_root):
    served, base = http_root
    _, checksums = publish_mnist(served, rng)
    (served / "bad").mkdir()
    for name in IDX_FILES:  # same names, other bytes
        (served / "bad" / name).write_bytes(b"not the file you are looking for")
    registry = registry_accepting("mnist", checksums)
    data_dir = tmp_path / "data"

    with pytest.raises(ChecksumError) as info:
        data.download("mnist", data_dir, mirrors=[f"{base}/bad"], registry=registry)
    error = info.value
    assert error.url == f"{base}/bad/{error.path.name}"
    assert error.expected == checksums[error.path.name]
    assert error.actual == sha256(served / "bad" / error.path.name)
    for text in (error.url, error.expected, error.actual):
        assert text in str(error)
    assert list((data_dir / "mnist").iterdir()) == []  # no file in place, no temp file


def test_download_falls_back_to_the_next_mirror_after_404(tmp_path, rng, http_root):
    served, base = http_root
    _, checksums = publish_mnist(served, rng)
    (served / "empty").mkdir()
    registry = registry_accepting("mnist", checksums)

    paths = data.download(
        "mnist",
        tmp_path / "data",
        mirrors=[f"{base}/empty", f"{base}/good"],
        splits=["test"],
        registry=registry,
    )
    assert [p.name for p in paths] == list(IDX_TEST)
    assert all(p.read_bytes() == (served / "good" / p.name).read_bytes() for p in paths)


def test_download_reports_every_failed_mirror(tmp_path, rng, http_root):
    served, base = http_root
    _, checksums = publish_mnist(served, rng)
    registry = registry_accepting("mnist", checksums)
    mirrors = [f"{base}/nothing-here", f"{base}/neither"]
    with pytest.raises(DownloadError) as info:
        data.download("mnist", tmp_path / "data", mirrors=mirrors, registry=registry)
    assert all(mirror in str(info.value) for mirror in mirrors)
    assert "404" in str(info.value)
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_download_verifies_files_already_present(tmp_path, rng, http_root):
    served, base = http_root
    _, checksums = publish_mnist(served, rng)
    registry = registry_accepting("mnist", checksums)
    present = tmp_path / "data" / "mnist"
    present.mkdir(parents=True)
    (present / IDX_TEST[0]).write_bytes(b"stale")
    with pytest.raises(ChecksumError, match=checksums[IDX_TEST[0]]):
        data.download("mnist", tmp_path / "data", [f"{base}/good"], registry=registry)


def test_download_refuses_files_without_a_published_sha256(tmp_path):
    spec = REGISTRY["svhn"]
    unverifiable = dataclasses.replace(
        spec, files=tuple(dataclasses.replace(f, sha256=None) for f in spec.files)
    )
    registry = {**REGISTRY, "svhn": unverifiable}
    with pytest.raises(DownloadError, match="no published sha256"):
        data.download("svhn", tmp_path, splits=["test"], registry=registry)
    assert not (tmp_path / "svhn" / "test_32x32.mat").exists()


def test_download_rejects_non_http_urls(tmp_path, rng):
    source = tmp_path / "src"
    write_idx_dataset(source, rng, {"test": 2})
    registry = registry_accepting("mnist", sums(source, IDX_TEST))
    with pytest.raises(DownloadError, match="only http"):
        data.download(
            "mnist", tmp_path / "d", [source.as_uri()], splits=["test"], registry=registry
        )


def test_missing_files_without_download_name_paths_and_remedy(tmp_path):
    with pytest.raises(MissingDataError) as info:
        data.load("kmnist", "test", tmp_path, download=False)
    message = str(info.value)
    for name in IDX_TEST:
        assert str(tmp_path / "kmnist" / name) in message
    assert "advls.data.download('kmnist'" in message
    assert "codh.rois.ac.jp" in message


# --------------------------------------------------------------------------------------------
# Names, splits and the data directory
# --------------------------------------------------------------------------------------------


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ADVLS_DATA", raising=False)
    assert data.resolve_data_dir() == home / ".cache" / "advls"

    monkeypatch.setenv("ADVLS_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_load_uses_the_resolved_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLS_DATA", str(tmp_path / "from-env"))
    with pytest.raises(MissingDataError, match=str(tmp_path / "from-env" / "mnist")):
        data.load("mnist", "train", download=False)


@pytest.mark.parametrize("name", ["cifar100", "MNIST-ish", "imagenet"])
def test_unknown_dataset_names_list_the_allowed_ones(name):
    with pytest.raises(ValueError, match="name=") as info:
        data.load(name, "train")
    for allowed in ["mnist", "fashion-mnist", "kmnist", "cifar10", "svhn", ".npz"]:
        assert allowed in str(info.value)
    with pytest.raises(ValueError, match="name="):
        data.download(name)


@pytest.mark.parametrize(("name", "split"), [("mnist", "extra"), ("cifar10", "val")])
def test_unknown_splits_list_the_allowed_ones(name, split):
    with pytest.raises(ValueError, match=f"split='{split}'.*allowed values: train, test"):
        data.load(name, split)


def test_svhn_has_an_extra_split():
    with pytest.raises(ValueError, match="train, test, extra"):
        data.load("svhn", "validation")


def test_registry_overrides_are_copies():
    spec = REGISTRY["mnist"].with_checksums({IDX_TEST[0]: "ab" * 32})
    assert spec.file(IDX_TEST[0]).sha256 == "ab" * 32
    assert REGISTRY["mnist"].file(IDX_TEST[0]).sha256 != "ab" * 32
    with pytest.raises(DataError, match="no files named"):
        REGISTRY["mnist"].with_checksums({"nope.gz": "00" * 32})
    mirrored = REGISTRY["cifar10"].with_mirrors(["http://example.invalid/x/"])
    assert mirrored.file("cifar-10-python.tar.gz").urls == (
        "http://example.invalid/x/cifar-10-python.tar.gz",
    )
    assert mirrored.file("data_batch_1").urls == ()  # never downloaded on its own


def test_every_downloadable_file_has_a_sha256():
    for spec in REGISTRY.values():
        for split_files in spec.splits.values():
            for filename in split_files:
                file_spec = spec.file(filename)
                assert file_spec.urls, filename
                assert file_spec.sha256 and len(file_spec.sha256) == 64, filename
                int(file_spec.sha256, 16)


# --------------------------------------------------------------------------------------------
# Real data (ADVLS_DATA or ../shared/data)
# --------------------------------------------------------------------------------------------


def real_data_dir() -> Path:
    configured = os.environ.get("ADVLS_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _require_real(*relative: str) -> Path:
    root = real_data_dir()
    missing = [name for name in relative if not (root / name).exists()]
    if missing:
        pytest.skip(f"real data not available: {', '.join(str(root / m) for m in missing)}")
    return root


@pytest.fixture(scope="module")
def real_mnist() -> dict[str, ImageDataset]:
    root = _require_real(*(f"mnist/{name}" for name in IDX_FILES))
    return {split: data.load("mnist", split, root, download=False) for split in ("train", "test")}


@pytest.fixture(scope="module")
def real_cifar() -> dict[str, ImageDataset]:
    names = ["cifar10_train_50000_uint8_hwc.npz", "cifar10_test_first1000_uint8_hwc.npz"]
    root = _require_real(*(f"cifar10/{name}" for name in names))
    return {split: data.load("cifar10", split, root, download=False) for split in ("train", "test")}


@pytest.mark.slow
def test_real_mnist(real_mnist):
    train, test = real_mnist["train"], real_mnist["test"]
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert test.images.shape == (10000, 1, 28, 28) and len(test) == 10000
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9


@pytest.mark.slow
def test_real_cifar10_npz(real_cifar):
    train, test = real_cifar["train"], real_cifar["test"]
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (1000, 3, 32, 32)
    for split in (train, test):
        assert split.labels.dtype == torch.int64
        assert set(split.labels.unique().tolist()) == set(range(10))
    with np.load(real_data_dir() / "cifar10" / "cifar10_train_50000_uint8_hwc.npz") as npz:
        first = npz["x"][0]
    assert train.images[0].numpy().tobytes() == first.transpose(2, 0, 1).tobytes()


@pytest.mark.slow
def test_real_files_are_rejected_when_a_byte_changes(tmp_path):
    root = _require_real("mnist/train-labels-idx1-ubyte.gz")
    copy = tmp_path / "mnist"
    copy.mkdir()
    for name in IDX_TRAIN:
        shutil.copy(root / "mnist" / name, copy / name)
    raw = bytearray((copy / IDX_TRAIN[1]).read_bytes())
    raw[100] ^= 0x10
    (copy / IDX_TRAIN[1]).write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8b"):
        data.load("mnist", "train", tmp_path, download=False)


def test_verified_files_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 1000)
    spec = data.FileSpec("blob", sha256(path))
    calls = []
    real_digest = data.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda *a: calls.append(a) or real_digest(*a))

    data.verify_file(path, spec)
    data.verify_file(path, spec)
    assert len(calls) == 1
    path.write_bytes(b"abc" * 999)  # a new size invalidates the cached result
    with pytest.raises(ChecksumError):
        data.verify_file(path, spec)
    assert len(calls) == 2


def test_module_has_no_plain_pickle_load():
    source = "".join(path.read_text() for path in Path(data.__file__).parent.glob("*.py"))
    assert "pickle.load(" not in source and "pickle.loads(" not in source
    assert "shell=True" not in source
