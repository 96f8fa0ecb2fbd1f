"""Checksums: digests of files, and verification against a :class:`FileSpec`.

A file that passed is remembered for the rest of the process (keyed by its identity and
modification stamp), so loading the same 150 MB file twice hashes it once.
"""

from __future__ import annotations

import hashlib
import os
import threading

from advls.data.errors import ChecksumError, DataError
from advls.data.paths import PathLike
from advls.data.specs import FileSpec

#: Bytes read at a time when hashing or downloading.
CHUNK = 1 << 20

# Files already verified in this process, keyed by identity and modification stamp.
_verified: set[tuple[object, ...]] = set()
_verified_lock = threading.Lock()


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def verify_file(path: PathLike, spec: FileSpec) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the digest ``spec`` registers."""
    checksum = spec.checksum
    if checksum is None:
        raise DataError(f"no checksum is registered for {spec.filename}; refusing to use {path}")
    algorithm, expected = checksum
    stat = os.stat(path)
    key = (
        os.path.realpath(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
        algorithm,
        expected,
    )
    with _verified_lock:
        if key in _verified:
            return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(path, algorithm, expected, actual)
    with _verified_lock:
        _verified.add(key)
