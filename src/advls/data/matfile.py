"""MATLAB 5 files: the named numeric arrays of a ``.mat`` file, read without scipy's parser.

scipy's ``loadmat`` parses in compiled code that trusts the file: a damaged or hostile file
can crash the interpreter (a segmentation fault, not an exception) or make it allocate what
a header declares. This reader walks the format itself (a 128-byte header, then one data
element per variable, each plain or zlib-compressed) and checks every declared size against
the bytes that hold it, and against :data:`MAX_MAT_BYTES`, before reading or allocating.
It reads what a dataset needs: real numeric and logical arrays. Cell arrays, structs,
strings, sparse and complex arrays are refused by name, as are MATLAB 4 and 7.3 (HDF5)
files.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

import numpy as np

from advls.data.errors import DataError

__all__ = ["MAX_MAT_BYTES", "read_mat_arrays"]

#: The most bytes one array of a MATLAB file may decode to (SVHN's extra split: 1.6 GB).
MAX_MAT_BYTES = 1 << 32
_CHUNK = 1 << 20
_HEADER = 128
_MI_MATRIX, _MI_COMPRESSED = 14, 15
#: Storage types of a data element (``mi*``) that hold numbers.
_STORED = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8"}
_STORED[13] = "u8"
#: Array classes (``mx*``) that are numeric, and the dtype MATLAB gives them.
_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4"}
_CLASSES |= {14: "i8", 15: "u8"}
_OTHER_CLASSES = {1: "a cell array", 2: "a struct", 3: "an object", 4: "a string", 5: "sparse"}
_COMPLEX_FLAG = 0x800
#: Bounds on a variable's header: MATLAB names hold at most 63 characters, arrays at most a
#: few dozen dimensions; a header declaring more is damaged.
_MOST_NAME, _MOST_DIMS = 256, 64


def read_mat_arrays(path: Path, names: Collection[str]) -> dict[str, np.ndarray]:
    """The arrays called ``names`` in the MATLAB 5 file at ``path`` (those it holds).

    Arrays come back as MATLAB stores them: in their class's dtype, with every dimension
    (``(N, 1)`` stays two-dimensional). Raises :class:`DataError` for a file that is not
    MATLAB 5, is damaged or truncated, or holds a wanted variable that is not a real
    numeric array.
    """
    try:
        with open(path, "rb") as handle:
            return _read(handle, os.fstat(handle.fileno()).st_size, set(names), str(path))
    except zlib.error as exc:
        raise DataError(f"cannot decompress a variable of {path}: {exc}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _read(handle: BinaryIO, size: int, wanted: set[str], source: str) -> dict[str, np.ndarray]:
    header = handle.read(_HEADER)
    if len(header) < _HEADER or header[126:128] not in (b"IM", b"MI"):
        raise DataError(
            f"{source} is not a MATLAB 5 file (advls reads MATLAB 5 .mat files, not "
            "MATLAB 4 or 7.3/HDF5 ones)"
        )
    order = "<" if header[126:128] == b"IM" else ">"
    if struct.unpack(f"{order}H", header[124:126])[0] != 0x0100:
        raise DataError(f"{source} is a MATLAB file of a version other than 5")
    found: dict[str, np.ndarray] = {}
    offset = _HEADER
    while len(found) < len(wanted) and offset + 8 <= size:
        handle.seek(offset)
        kind, nbytes = struct.unpack(f"{order}II", handle.read(8))
        if kind not in (_MI_MATRIX, _MI_COMPRESSED):
            raise DataError(f"{source}: a top-level data element of type {kind} is not a variable")
        if nbytes > size - offset - 8:
            raise DataError(
                f"{source}: a variable declares {nbytes} bytes but the file holds "
                f"{size - offset - 8} after it; it is truncated"
            )
        compressed = kind == _MI_COMPRESSED
        element = _Element(handle, nbytes, compressed, order, source)
        if compressed:
            inner_kind, inner_bytes = struct.unpack(f"{order}II", element.read(8))
            if inner_kind != _MI_MATRIX:
                raise DataError(
                    f"{source}: a compressed element of type {inner_kind} is not a variable"
                )
            element.limit(inner_bytes)
        named = _read_matrix(element, wanted - found.keys())
        if named is not None:
            found[named[0]] = named[1]
        offset += 8 + (nbytes if compressed else _padded(nbytes))
    return found


def _read_matrix(element: _Element, wanted: set[str]) -> tuple[str, np.ndarray] | None:
    """The name and array of a matrix element when its name is wanted; None otherwise."""
    flags = element.subelement(6, most=8)
    if len(flags) != 8:
        raise DataError(f"{element.source}: a variable's array flags are malformed")
    word = struct.unpack(f"{element.order}I", flags[:4])[0]
    dims_raw = element.subelement(5, most=_MOST_DIMS * 4)
    if len(dims_raw) % 4 or len(dims_raw) < 8:
        raise DataError(f"{element.source}: a variable's dimensions are malformed")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, f"{element.order}i4"))
    name = bytes(element.subelement(1, most=_MOST_NAME)).decode("ascii", "replace")
    if name not in wanted:
        return None
    where = f"{element.source}: variable {name}"
    mx_class = word & 0xFF
    if mx_class in _OTHER_CLASSES:
        raise DataError(f"{where} is {_OTHER_CLASSES[mx_class]}, not a numeric array")
    if mx_class not in _CLASSES:
        raise DataError(f"{where} has the unknown array class {mx_class}")
    if word & _COMPLEX_FLAG:
        raise DataError(f"{where} is complex, not a real array")
    if min(dims) < 0:
        raise DataError(f"{where} declares negative dimensions {dims}")
    count = math.prod(dims)
    if count * np.dtype(_CLASSES[mx_class]).itemsize > MAX_MAT_BYTES:
        raise DataError(f"{where} declares {dims}, more than {MAX_MAT_BYTES} bytes")
    kind, nbytes, small = element.tagged()
    if kind not in _STORED or nbytes != count * np.dtype(_STORED[kind]).itemsize:
        raise DataError(
            f"{where}: its data ({nbytes} bytes of type {kind}) does not match its "
            f"dimensions {dims}"
        )
    data = small if small is not None else element.read(nbytes)
    stored = np.frombuffer(data, f"{element.order}{_STORED[kind]}", count)
    return name, stored.reshape(dims, order="F").astype(_CLASSES[mx_class])


class _Element:
    """Exact reads from one data element, plain or zlib-compressed, never past its end."""

    def __init__(self, handle: BinaryIO, nbytes: int, compressed: bool, order: str, source: str):
        self.order, self.source = order, source
        self._handle, self._unread = handle, nbytes
        self._inflate = zlib.decompressobj() if compressed else None
        self._pending = b""
        self._budget = nbytes  # the most bytes the element may yield, once its size is known

    def limit(self, nbytes: int) -> None:
        """Bound what the element yields by the size its decompressed matrix declares."""
        self._budget = nbytes

    def read(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, or a :class:`DataError` saying the element is truncated."""
        if n > self._budget:
            raise DataError(f"{self.source}: a variable holds fewer bytes than it declares")
        self._budget -= n
        if self._inflate is None:
            data = bytearray(self._handle.read(n))
            if len(data) < n:
                raise DataError(f"{self.source} is truncated")
            return data
        out = bytearray()
        while len(out) < n:
            if not self._pending:
                if self._inflate.eof or not self._unread:
                    raise DataError(f"{self.source}: a compressed variable is truncated")
                self._pending = self._handle.read(min(_CHUNK, self._unread))
                if not self._pending:
                    raise DataError(f"{self.source} is truncated")
                self._unread -= len(self._pending)
            out += self._inflate.decompress(self._pending, n - len(out))
            self._pending = self._inflate.unconsumed_tail
        return out

    def tagged(self) -> tuple[int, int, bytearray | None]:
        """The type and size of the next subelement and, in the format's small form (data of
        up to 4 bytes inside the tag), its data; read the data of the full form with ``read``.
        """
        first = self.read(8)
        kind, nbytes = struct.unpack(f"{self.order}II", first)
        if kind >> 16:  # the small form: the size in the upper half, the data in ``nbytes``
            if kind >> 16 > 4:
                raise DataError(f"{self.source}: a variable's header is malformed")
            return kind & 0xFFFF, kind >> 16, first[4 : 4 + (kind >> 16)]
        return kind, nbytes, None

    def subelement(self, expected: int, most: int) -> bytearray:
        """The data of the next subelement: of type ``expected``, at most ``most`` bytes."""
        kind, nbytes, small = self.tagged()
        if kind != expected or nbytes > most:
            raise DataError(f"{self.source}: a variable's header is malformed")
        return small if small is not None else self.read(_padded(nbytes))[:nbytes]


def _padded(nbytes: int) -> int:
    """``nbytes`` rounded up to the format's 8-byte alignment."""
    return -(-nbytes // 8) * 8
