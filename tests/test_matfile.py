"""The MATLAB 5 reader against scipy's writer, MATLAB's storage compaction and damage."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advls.data.errors import DataError
from advls.data.matfile import read_mat_arrays

DTYPES = ["u1", "i1", "u2", "i2", "u4", "i4", "f4", "f8", "i8", "u8"]


def _savemat(tmp: Path, variables: dict[str, object], compress: bool) -> Path:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=compress, format="5")
    path = tmp / "file.mat"
    path.write_bytes(buffer.getvalue())
    return path


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(
        st.sampled_from(DTYPES).flatmap(
            lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=4, max_side=5))
        ),
        min_size=1,
        max_size=3,
    ),
    compress=st.booleans(),
)
def test_reads_what_scipy_writes(tmp_path_factory, arrays: list[np.ndarray], compress: bool):
    variables = {f"v{i}": array for i, array in enumerate(arrays)}
    path = _savemat(tmp_path_factory.mktemp("mat"), {**variables, "other": np.eye(2)}, compress)
    read = read_mat_arrays(path, variables)
    assert read.keys() == variables.keys()
    for name, array in variables.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)


def _element(kind: int, data: bytes) -> bytes:
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def _matlab_file(stored_kind: int, stored: bytes, mx_class: int, dims: tuple[int, ...]) -> bytes:
    """A file as MATLAB writes it: a double array stored in a narrower type, a short name in
    the small tag form, the variable compressed."""
    body = (
        _element(6, struct.pack("<II", mx_class, 0))
        + _element(5, struct.pack(f"<{len(dims)}i", *dims))
        + struct.pack("<HH", 1, 1)
        + b"y\0\0\0"  # the small form: type miINT8, one byte, the name 'y'
        + _element(stored_kind, stored)
    )
    matrix = struct.pack("<II", 14, len(body)) + body
    compressed = zlib.compress(matrix)
    header = b"MATLAB 5.0 MAT-file".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    return header + struct.pack("<II", 15, len(compressed)) + compressed


def test_reads_matlab_compaction_and_small_tags(tmp_path: Path):
    path = tmp_path / "matlab.mat"
    path.write_bytes(_matlab_file(2, bytes([1, 10, 3, 7]), 6, (4, 1)))
    (y,) = read_mat_arrays(path, ["y"]).values()
    assert y.dtype == np.float64 and y.shape == (4, 1)
    np.testing.assert_array_equal(y[:, 0], [1.0, 10.0, 3.0, 7.0])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_matlab_file(2, bytes(4), 6, (4, 1))[:-3], "truncated"),
        (_matlab_file(2, bytes(4), 6, (5, 1)), "does not match its dimensions"),
        (_matlab_file(2, bytes(4), 6, (1 << 30, 1 << 30)), "more than"),
        (_matlab_file(2, bytes(4), 6, (-4, -1)), "negative"),
        (_matlab_file(2, bytes(4), 1, (4, 1)), "cell array"),
        (_matlab_file(2, bytes(4), 6 | 0x800, (4, 1)), "complex"),
        (b"MATLAB 7.3 MAT-file".ljust(128, b"\0"), "not a MATLAB 5 file"),
        (b"", "not a MATLAB 5 file"),
    ],
)
def test_refuses_damage_by_name(tmp_path: Path, payload: bytes, message: str):
    path = tmp_path / "bad.mat"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message):
        read_mat_arrays(path, ["y"])


def test_a_zlib_bomb_decompresses_no_further_than_declared(tmp_path: Path):
    """A variable that declares 4 bytes over a stream of a gigabyte of zeros reads 4 bytes."""
    body = _matlab_file(2, bytes(4), 6, (4, 1))
    bomb = zlib.compressobj()
    stream = bomb.compress(zlib.decompress(body[136:])) + b"".join(
        bomb.compress(bytes(1 << 20)) for _ in range(1024)
    )
    stream += bomb.flush()
    path = tmp_path / "bomb.mat"
    path.write_bytes(body[:128] + struct.pack("<II", 15, len(stream)) + stream)
    (y,) = read_mat_arrays(path, ["y"]).values()
    np.testing.assert_array_equal(y, np.zeros((4, 1)))
