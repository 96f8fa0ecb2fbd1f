"""Fuzzing every reader of untrusted files: malformed input ends in advls's own error.

Each reader gets files made by mutating a valid one (truncated, bytes flipped or overwritten
or inserted, headers, declared lengths, dtypes and shapes changed, sizes declared huge) and
files of random bytes. Every file must either be read (a mutation can leave a valid file)
or be refused with the reader's own error type and a message: never another exception,
never a hang (each file has a time bound), never an allocation of a declared size the file
does not hold (the process's peak memory is bounded), never an unpickle of anything but
numpy arrays.

Readers: idx (MNIST family), CIFAR-10 batches, SVHN ``.mat``, user ``.npz``,
``checkpoint.json``, safetensors headers, YAML sweep specs. Each reader's quota of files is
asserted; together they are :data:`TOTAL` files.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advls import data
from advls.checkpoint import CheckpointError, load_model
from advls.data import REGISTRY, DataError, UnsafePickleError
from advls.sweep.spec import SpecError, load_spec
from advls.train import TrainConfig, train
from conftest import write_toy_npz
from data_fixtures import cifar_batch, idx_bytes, sha256

pytestmark = pytest.mark.slow

#: Files generated per reader; TOTAL is their sum (at least 2000).
QUOTAS = {
    "idx": 500,
    "cifar": 400,
    "svhn": 400,
    "npz": 500,
    "checkpoint_json": 300,
    "safetensors": 300,
    "yaml": 300,
}
TOTAL = sum(QUOTAS.values())
#: Seconds any one file may take to be read or refused.
TIME_BOUND = 10
#: How much the process's peak memory may grow over one reader's fuzzing.
MEMORY_BOUND = 1 << 30

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
counts: dict[str, int] = dict.fromkeys(QUOTAS, 0)
refused: dict[str, int] = dict.fromkeys(QUOTAS, 0)


def quota(reader: str) -> settings:
    """:data:`FUZZ` with the reader's quota of examples."""
    return settings(FUZZ, max_examples=QUOTAS[reader])


class Hang(Exception):
    """A reader ran past :data:`TIME_BOUND` on one file."""


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_memory() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def read_or_refuse(reader: str, read: Callable[[], object], own: tuple[type[Exception], ...]):
    """Read one generated file: it is read, or refused with one of ``own`` and a message."""
    counts[reader] += 1
    try:
        with time_bound():
            return read()
    except own as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        refused[reader] += 1
        return error


@contextlib.contextmanager
def fuzzing(reader: str) -> Iterator[None]:
    """Around one reader's fuzz run: its quota of files was generated, memory stayed bounded."""
    counts[reader] = refused[reader] = 0
    before = peak_memory()
    yield
    grown = peak_memory() - before
    assert grown < MEMORY_BOUND, f"peak memory grew by {grown / 2**20:.0f} MiB"
    assert counts[reader] >= QUOTAS[reader], counts
    print(f"fuzz {reader}: {counts[reader]} files, {refused[reader]} refused")


# --------------------------------------------------------------------------- mutations
@st.composite
def mutated(draw: st.DrawFn, base: bytes, header: int = 64) -> bytes:
    """``base`` damaged one or a few ways, or random bytes; edits favour the first
    ``header`` bytes, where the lengths, dtypes and shapes are declared."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        size = len(raw)
        if size == 0:
            break
        where = draw(st.one_of(st.integers(0, min(header, size) - 1), st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "max"]))
        if kind == "truncate":
            del raw[where:]
        elif kind == "flip":
            raw[where] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=16))
            raw[where : where + len(patch)] = patch
        elif kind == "insert":
            raw[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[where : where + draw(st.integers(1, 16))]
        else:  # a declared length or size at its largest
            raw[where : where + 4] = b"\xff\xff\xff\xff"
    return bytes(raw)


def sizes() -> st.SearchStrategy[int]:
    """Declared dimensions: mostly small, sometimes zero, negative or huge."""
    return st.one_of(
        st.integers(0, 40),
        st.sampled_from([0, 1, 3, 28, 32, 3072, 2**31 - 1, 2**32 - 1, 2**40]),
        st.integers(-3, -1),
    )


# --------------------------------------------------------------------------- idx
IDX_NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IDX_IMAGES = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
IDX_LABELS = np.arange(6, dtype=np.uint8) % 10


@st.composite
def idx_payload(draw: st.DrawFn) -> bytes:
    """An idx stream with a made-up header: any type code, rank and dimensions."""
    code = draw(
        st.one_of(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.integers(0, 255))
    )
    dims = draw(st.lists(sizes().filter(lambda d: d >= 0), min_size=0, max_size=4))
    dims = [d % 2**32 for d in dims]
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    body = draw(st.one_of(st.binary(max_size=512), st.just(bytes(min(math.prod(dims), 4096)))))
    return header + body


@st.composite
def idx_case(draw: st.DrawFn) -> tuple[int, bytes]:
    which = draw(st.integers(0, 1))
    plain = idx_bytes(IDX_IMAGES if which == 0 else IDX_LABELS)
    payload = draw(st.one_of(mutated(plain, header=24), idx_payload()))
    compress = draw(st.booleans())
    if compress:
        payload = gzip.compress(payload, mtime=0)
        if draw(st.booleans()):
            payload = draw(mutated(payload, header=32))
    return which, payload


@quota("idx")
@given(idx_case())
def _fuzz_idx(case: tuple[int, bytes]) -> None:
    which, payload = case
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "mnist"
        root.mkdir()
        (root / IDX_NAMES[0]).write_bytes(gzip.compress(idx_bytes(IDX_IMAGES), mtime=0))
        (root / IDX_NAMES[1]).write_bytes(gzip.compress(idx_bytes(IDX_LABELS), mtime=0))
        (root / IDX_NAMES[which]).write_bytes(payload)
        checksums = {name: sha256(root / name) for name in IDX_NAMES}
        registry = {**REGISTRY, "mnist": REGISTRY["mnist"].with_checksums(checksums)}
        read_or_refuse(
            "idx",
            lambda: data.load("mnist", "test", directory, download=False, registry=registry),
            (DataError,),
        )


def test_fuzz_idx() -> None:
    with fuzzing("idx"):
        _fuzz_idx()


# --------------------------------------------------------------------------- CIFAR batches
class _Exploit:
    """A pickle that would run a shell command if unpickled without an allow-list."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo unpickled > /dev/null",))


def _label_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(st.integers(0, 9), min_size=4, max_size=4),
        st.lists(st.integers(-(2**70), 2**70), min_size=4, max_size=4),
        st.lists(st.floats(allow_nan=True), min_size=4, max_size=4),
        st.lists(st.one_of(st.integers(0, 9), st.text(max_size=3), st.none()), max_size=5),
        st.lists(st.lists(st.integers(0, 9), max_size=3), max_size=4),
        st.binary(max_size=8),
        st.integers(),
        st.none(),
        st.just(np.arange(4, dtype=np.uint64) + 2**63),
    )


def _data_values() -> st.SearchStrategy[Any]:
    rows = st.integers(0, 5)
    return st.one_of(
        rows.map(lambda n: np.zeros((n, 3072), np.uint8)),
        rows.map(lambda n: np.zeros((n, 3072), np.float32)),
        st.tuples(rows, sizes().filter(lambda d: 0 <= d <= 4000)).map(
            lambda s: np.zeros(s, np.uint8)
        ),
        rows.map(lambda n: np.zeros((n, 3, 32, 32), np.uint8)),
        st.just(np.array([object()] * 2, dtype=object)),
        st.binary(max_size=16),
        st.lists(st.integers(0, 255), max_size=8),
        st.none(),
    )


@st.composite
def cifar_pickle(draw: st.DrawFn) -> bytes:
    """A pickled batch whose contents are wrong in type, shape, dtype or value."""
    batch: Any = cifar_batch(np.zeros((4, 3072), np.uint8), np.arange(4), "test_batch")
    choice = draw(st.integers(0, 5))
    if choice == 0:
        batch[b"labels"] = draw(_label_values())
    elif choice == 1:
        batch[b"data"] = draw(_data_values())
    elif choice == 2:
        del batch[draw(st.sampled_from([b"data", b"labels"]))]
    elif choice == 3:
        batch = draw(st.one_of(st.lists(st.integers()), st.integers(), st.text(), st.none()))
    elif choice == 4:
        batch[draw(st.sampled_from([b"data", b"labels", b"filenames"]))] = _Exploit()
    else:
        batch = _Exploit()
    return pickle.dumps(batch, protocol=draw(st.integers(0, 5)))


@st.composite
def cifar_case(draw: st.DrawFn) -> tuple[str, bytes]:
    member = draw(st.sampled_from(["test_batch", "test_batch", "batches.meta"]))
    if member == "batches.meta":
        names = draw(
            st.one_of(
                st.just([name.encode() for name in "abcdefghij"]),
                st.lists(st.one_of(st.binary(max_size=4), st.integers()), min_size=10, max_size=10),
                st.none(),
            )
        )
        base = pickle.dumps({b"label_names": names}, protocol=2)
        return member, draw(st.one_of(st.just(base), mutated(base)))
    valid = pickle.dumps(
        cifar_batch(np.zeros((4, 3072), np.uint8), np.arange(4) % 10, "test_batch"), protocol=2
    )
    return member, draw(st.one_of(mutated(valid), cifar_pickle()))


@quota("cifar")
@given(cifar_case())
def _fuzz_cifar(case: tuple[str, bytes]) -> None:
    member, payload = case
    with tempfile.TemporaryDirectory() as directory:
        batches = Path(directory) / "cifar10" / "cifar-10-batches-py"
        batches.mkdir(parents=True)
        (batches / "test_batch").write_bytes(
            pickle.dumps(cifar_batch(np.zeros((4, 3072), np.uint8), np.arange(4), "t"), 2)
        )
        (batches / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": [n.encode() for n in "abcdefghij"]}, 2)
        )
        (batches / member).write_bytes(payload)
        checksums = {name: sha256(batches / name) for name in ("test_batch", "batches.meta")}
        registry = {**REGISTRY, "cifar10": REGISTRY["cifar10"].with_checksums(checksums)}
        outcome = read_or_refuse(
            "cifar",
            lambda: data.load("cifar10", "test", directory, download=False, registry=registry),
            (DataError,),
        )
        if b"posix\nsystem" in payload or b"\x8c\x05posix" in payload:
            assert isinstance(outcome, UnsafePickleError), outcome


def test_fuzz_cifar_batches() -> None:
    with fuzzing("cifar"):
        _fuzz_cifar()


# --------------------------------------------------------------------------- SVHN .mat
def _mat_bytes(variables: dict[str, Any], **options: Any) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, **options)
    return buffer.getvalue()


SVHN_VALID = _mat_bytes(
    {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1], [2], [10], [3]], np.uint8)}
)


@st.composite
def svhn_variables(draw: st.DrawFn) -> bytes:
    """A MATLAB file whose X and y are of the wrong shape, dtype or kind, or missing."""
    n = draw(st.integers(0, 4))
    x = draw(
        st.one_of(
            st.just(np.zeros((32, 32, 3, n), np.uint8)),
            st.just(np.zeros((32, 32, 3, n), np.float64)),
            st.just(np.zeros((n, 3, 32, 32), np.uint8)),
            st.just(np.zeros((32, 32), np.uint8)),
            st.just(np.array(["text"])),
            st.just({"field": np.zeros(2)}),
            st.just(np.empty((2,), dtype=object)),
        )
    )
    y = draw(
        st.one_of(
            st.lists(st.integers(-5, 20), min_size=n, max_size=n).map(
                lambda v: np.array(v, np.int16).reshape(-1, 1)
            ),
            st.just(np.full((n, 1), 1.5)),
            st.just(np.zeros((n, 2), np.uint8)),
            st.just(np.array(["a"])),
        )
    )
    variables = {"X": x, "y": y}
    for name in draw(st.sets(st.sampled_from(["X", "y"]), max_size=2)):
        del variables[name]
    options = {"do_compression": draw(st.booleans()), "format": draw(st.sampled_from(["5", "4"]))}
    with contextlib.suppress(Exception):  # some contents cannot be written in a format
        return _mat_bytes(variables, **options)
    return _mat_bytes({"X": np.zeros(1)})


@quota("svhn")
@given(st.one_of(mutated(SVHN_VALID, header=256), svhn_variables()))
def _fuzz_svhn(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "svhn"
        root.mkdir()
        (root / "test_32x32.mat").write_bytes(payload)
        checksums = {"test_32x32.mat": sha256(root / "test_32x32.mat")}
        registry = {**REGISTRY, "svhn": REGISTRY["svhn"].with_checksums(checksums)}
        read_or_refuse(
            "svhn",
            lambda: data.load("svhn", "test", directory, download=False, registry=registry),
            (DataError,),
        )


def test_fuzz_svhn_mat() -> None:
    with fuzzing("svhn"):
        _fuzz_svhn()


# --------------------------------------------------------------------------- user .npz
def _npy(shape: Any, descr: Any, fortran: Any, body: bytes, version: int = 1) -> bytes:
    """An .npy member with a hand-made header (what np.save would write, but any values)."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape})
    header = header.encode("latin1", "replace")
    prefix = 10 if version == 1 else 12
    padded = header + b" " * (-(len(header) + 1 + prefix) % 64) + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(padded))
    return b"\x93NUMPY" + bytes([version, 0]) + length + padded + body


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def _npz_valid(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


NPZ_X = np.random.default_rng(1).integers(0, 256, (6, 1, 5, 5), dtype=np.uint8)
NPZ_VALID = _npz_valid(x=NPZ_X, y=np.arange(6) % 3)
DESCRS = ["|u1", "<f4", "<f8", "<i8", ">i2", "|b1", "|O", "<U3", "|S2", "V8", "<c8", "<M8[s]"]


@st.composite
def npz_members(draw: st.DrawFn) -> bytes:
    """An archive of hand-made .npy members: any shape, dtype, order and body length."""
    members = {}
    for name in draw(st.sets(st.sampled_from(["x", "y", "classes", "other"]), min_size=1)):
        shape = draw(
            st.one_of(
                st.lists(sizes(), max_size=4).map(tuple),
                st.sampled_from([(6, 1, 5, 5), (6,), (6, 1), "oops", None, (1.5,)]),
            )
        )
        descr = draw(st.one_of(st.sampled_from(DESCRS), st.text(max_size=6)))
        fortran = draw(st.sampled_from([False, True, "no"]))
        real = (
            math.prod(shape)
            if isinstance(shape, tuple)
            and all(isinstance(d, int) and 0 <= d < 10**4 for d in shape)
            else 0
        )
        body = draw(st.one_of(st.just(bytes(min(real, 10**5))), st.binary(max_size=256)))
        members[f"{name}.npy"] = _npy(shape, descr, fortran, body, draw(st.sampled_from([1, 2, 3])))
    if draw(st.booleans()):  # an array np.save would pickle
        members["y.npy"] = _npy((2,), "|O", False, pickle.dumps([_Exploit(), 1]))
    return _zip(members, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))


@st.composite
def npz_arrays(draw: st.DrawFn) -> bytes:
    """A well-formed archive of arrays that are wrong as a dataset."""
    n = draw(st.integers(0, 6))
    x = draw(
        st.sampled_from(
            [
                np.zeros((n, 1, 5, 5), np.uint8),
                np.zeros((n, 5, 5, 3), np.float32),
                np.full((n, 5, 5), np.nan, np.float64),
                np.zeros((n, 5, 5), np.int64),
                np.zeros((n, 2, 5, 5), np.uint8),
                np.zeros((n,), np.uint8),
                np.zeros((n, 1, 0, 0), np.uint8),
            ]
        )
    )
    y = draw(
        st.one_of(
            st.lists(st.integers(-3, 60), min_size=n, max_size=n).map(np.array),
            st.just(np.zeros(n, np.float32)),
            st.just(np.full(n, 2**64 - 1, np.uint64)),
            st.just(np.zeros((n, 2), np.int64)),
        )
    )
    arrays = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays["classes"] = draw(
            st.sampled_from(
                [np.array(["a", "b", "c"]), np.array(["a"]), np.arange(3), np.array([])]
            )
        )
    return _npz_valid(**arrays)


@quota("npz")
@given(st.one_of(mutated(NPZ_VALID, header=128), npz_members(), npz_arrays()))
def _fuzz_npz(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "user.npz"
        path.write_bytes(payload)
        outcome = read_or_refuse("npz", lambda: data.load(str(path), "train"), (DataError,))
        if isinstance(outcome, data.ImageDataset):  # read: an honest dataset
            assert outcome.num_classes >= 2 and len(outcome) >= 1


def test_fuzz_npz() -> None:
    with fuzzing("npz"):
        _fuzz_npz()


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-run")
    npz = write_toy_npz(root / "toy.npz", n=32, shape=(1, 4, 4))
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=1, batch_size=16)
    train(config, root / "run", device="cpu", progress=False)
    return root / "run"


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.sampled_from(
            ["linear", "lenet-mnist", "epoch-0001", "../epoch-0001", "advls.checkpoint/1"]
        ),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON-like value."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def edited(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three values deleted or replaced at random key paths."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_json_values())
    return document


def _copy_run(run: Path, directory: str) -> Path:
    target = Path(directory) / "run"
    shutil.copytree(run, target)
    return target


CHECKPOINT_ERRORS = (CheckpointError,)


def test_fuzz_checkpoint_json(run_dir: Path) -> None:
    record = json.loads((run_dir / "checkpoint.json").read_text())
    text = json.dumps(record).encode()

    @quota("checkpoint_json")
    @given(st.one_of(edited(record).map(lambda d: json.dumps(d).encode()), mutated(text, 256)))
    def fuzz(payload: bytes) -> None:
        with tempfile.TemporaryDirectory() as directory:
            run = _copy_run(run_dir, directory)
            (run / "checkpoint.json").write_bytes(payload)
            read_or_refuse("checkpoint_json", lambda: load_model(run), CHECKPOINT_ERRORS)

    with fuzzing("checkpoint_json"):
        fuzz()


def _safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _safetensors(header: Any, body: bytes, length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + body


@st.composite
def safetensors_header(draw: st.DrawFn, header: dict[str, Any], body: bytes) -> bytes:
    """A safetensors file whose header declares other dtypes, shapes, offsets or length."""
    header = copy.deepcopy(header)
    names = [name for name in header if name != "__metadata__"]
    name = draw(st.sampled_from(names))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole", "length"]))
    length = None
    if field == "dtype":
        header[name]["dtype"] = draw(
            st.one_of(st.sampled_from(["F64", "I64", "U8", "BOOL", "F8_E4M3", "X"]), st.integers())
        )
    elif field == "shape":
        header[name]["shape"] = draw(st.lists(sizes(), max_size=4))
    elif field == "data_offsets":
        header[name]["data_offsets"] = draw(st.lists(sizes(), min_size=0, max_size=3))
    elif field == "whole":
        header[name] = draw(_json_values())
    else:
        length = draw(st.sampled_from([0, 1, 7, 2**31, 2**63, 2**64 - 1]))
    return _safetensors(header, body, length)


def test_fuzz_safetensors_headers(run_dir: Path) -> None:
    model_file = run_dir / "epoch-0001" / "model.safetensors"
    raw = model_file.read_bytes()
    header, body = _safetensors_parts(model_file)

    @quota("safetensors")
    @given(st.one_of(mutated(raw, header=160), safetensors_header(header, body)))
    def fuzz(payload: bytes) -> None:
        with tempfile.TemporaryDirectory() as directory:
            run = _copy_run(run_dir, directory)
            (run / "epoch-0001" / "model.safetensors").write_bytes(payload)
            read_or_refuse("safetensors", lambda: load_model(run), CHECKPOINT_ERRORS)

    with fuzzing("safetensors"):
        fuzz()


# --------------------------------------------------------------------------- YAML specs
SPEC = {
    "name": "fuzz",
    "train": {"dataset": "mnist", "model": "lenet-mnist", "epochs": 1},
    "grid": [{"loss": ["ce", "standard"], "alpha": [0.1]}],
    "evaluate": {"protocols": ["paper"], "eps": [0.1, 0.2], "n": 100},
}
SPEC_TEXT = yaml.safe_dump(SPEC).encode()


def test_fuzz_yaml_specs() -> None:
    @quota("yaml")
    @given(
        st.one_of(
            edited(SPEC).map(lambda s: yaml.safe_dump(s).encode()),
            mutated(SPEC_TEXT, header=len(SPEC_TEXT)),
        )
    )
    def fuzz(payload: bytes) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "spec.yaml"
            path.write_bytes(payload)
            read_or_refuse("yaml", lambda: load_spec(path), (SpecError,))

    with fuzzing("yaml"):
        fuzz()


# --------------------------------------------------------------------------- minimal cases
def _with_model(run_dir: Path, directory: str, **model: Any) -> Path:
    run = _copy_run(run_dir, directory)
    record = json.loads((run / "checkpoint.json").read_text())
    for key, value in model.items():
        if value is _DROP:
            del record["model"][key]
        else:
            record["model"][key] = value
    (run / "checkpoint.json").write_text(json.dumps(record))
    return run


_DROP = object()


@pytest.mark.parametrize(
    "model",
    [
        {"mean": _DROP},  # KeyError: 'mean'
        {"std": _DROP},  # KeyError: 'std'
        {"input_shape": [[], 4, 4]},  # TypeError: int() argument must be ...
        {"std": [[]]},  # TypeError: '<=' not supported between list and int
        {"name": [{}]},  # TypeError: unhashable type: 'list'
        {"mean": [None]},  # TypeError: must be real number, not NoneType
        {"mean": {}},  # ValueError: mean and std must have one value per input channel
        {"num_classes": "2"},  # ValueError: num_classes must be an integer >= 2
    ],
    ids=[
        "no-mean",
        "no-std",
        "shape-list",
        "std-list",
        "name-list",
        "mean-null",
        "mean-map",
        "k-str",
    ],
)
def test_malformed_model_record_is_a_checkpoint_error(run_dir: Path, model: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        run = _with_model(run_dir, directory, **model)
        with pytest.raises(CheckpointError, match=r"checkpoint\.json"):
            load_model(run)


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\x17\xbe")
    with pytest.raises(SpecError, match=r"spec\.yaml"):
        load_spec(path)


# --------------------------------------------------------------------------- huge sizes
def test_declared_sizes_are_never_allocated(tmp_path: Path) -> None:
    """Headers that declare terabytes are refused from the header, within memory."""
    before = peak_memory()
    root = tmp_path / "mnist"
    root.mkdir()
    huge = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    (root / IDX_NAMES[0]).write_bytes(gzip.compress(huge + bytes(1000)))
    (root / IDX_NAMES[1]).write_bytes(gzip.compress(idx_bytes(IDX_LABELS)))
    registry = {
        **REGISTRY,
        "mnist": REGISTRY["mnist"].with_checksums({n: sha256(root / n) for n in IDX_NAMES}),
    }
    with pytest.raises(DataError, match="idx header declares"):
        data.load("mnist", "test", tmp_path, download=False, registry=registry)

    npz = tmp_path / "huge.npz"
    npz.write_bytes(
        _zip(
            {
                "x.npy": _npy((10**6, 10**6), "|u1", False, b""),
                "y.npy": _npy((10**12,), "<i8", False, bytes(8)),
            },
            zipfile.ZIP_DEFLATED,
        )
    )
    with pytest.raises(DataError, match=r"declares shape \(1000000, 1000000\)"):
        data.load(str(npz), "train")
    assert peak_memory() - before < 100 * 2**20
