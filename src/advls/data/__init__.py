"""Image datasets as uint8 NCHW tensors: the MNIST family, CIFAR-10, SVHN and user ``.npz`` files.

``load(name, split)`` returns an :class:`ImageDataset` whose images are ``uint8`` tensors of
shape ``(N, C, H, W)`` and whose labels are ``int64``. Pixel scaling and normalisation are
left to the model (``mean``/``std`` travel with the dataset for that purpose), so attacks can
work on ``[0, 1]`` inputs.

Where the files come from: ``data_dir`` argument, then ``$ADVLS_DATA``, then
``~/.cache/advls``; each dataset lives in ``<data_dir>/<name>/`` under its official file
names. Every known file is checked against the checksum in :data:`REGISTRY` before it is
parsed, downloads are verified before they are renamed into place, and archives and pickles
are opened with allow-lists only, because dataset files are untrusted input.

What lives where (each module imports only those above it):

- ``paths``: the data directory (``ENV_VAR``, ``resolve_data_dir``).
- ``errors``: ``DataError`` and its subclasses.
- ``specs``: ``FileSpec`` and ``DatasetSpec``.
- ``registry``: the known datasets with their checksums and mirrors (``REGISTRY``).
- ``integrity``: ``file_digest`` and ``verify_file``, with the cache of verified files.
- ``fetch``: ``download`` and the verified, atomic fetching of missing files.
- ``extract``: ``safe_extract`` for tar archives.
- ``unpickle``: ``RestrictedUnpickler`` and ``safe_unpickle``.
- ``labels``: the one rule for class labels (``check_labels``, ``infer_classes``).
- ``dataset``: ``ImageDataset``.
- ``arrays``: conversion of decoded arrays to uint8 NCHW images and int64 labels.
- ``idx``, ``svhn``, ``npz``, ``cifar10``: one module per file format and its loader.
- ``loaders``: ``load``, which picks the loader of a dataset's format.
"""

from __future__ import annotations

from advls.data.dataset import ImageDataset
from advls.data.errors import (
    ChecksumError,
    DataError,
    DownloadError,
    MissingDataError,
    UnsafeArchiveError,
    UnsafePickleError,
)
from advls.data.extract import safe_extract
from advls.data.fetch import download
from advls.data.idx import parse_idx, read_idx
from advls.data.integrity import file_digest, verify_file
from advls.data.loaders import load
from advls.data.paths import ENV_VAR, resolve_data_dir
from advls.data.registry import REGISTRY
from advls.data.specs import DatasetSpec, FileSpec
from advls.data.unpickle import RestrictedUnpickler, safe_unpickle

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "ChecksumError",
    "DataError",
    "DatasetSpec",
    "DownloadError",
    "FileSpec",
    "ImageDataset",
    "MissingDataError",
    "RestrictedUnpickler",
    "UnsafeArchiveError",
    "UnsafePickleError",
    "download",
    "file_digest",
    "load",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
    "safe_extract",
    "safe_unpickle",
    "verify_file",
]
