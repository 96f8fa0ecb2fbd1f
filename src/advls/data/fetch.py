"""Getting files in place: downloads from mirrors, verified before they are renamed into
place, and the files of a split, fetched when missing and allowed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.client import HTTPException
from pathlib import Path

from advls.data.errors import ChecksumError, DownloadError, MissingDataError
from advls.data.integrity import CHUNK, verify_file
from advls.data.paths import ENV_VAR, PathLike, resolve_data_dir
from advls.data.registry import Registry, check_split, dataset_spec
from advls.data.specs import DatasetSpec, FileSpec, mirror_urls

_TIMEOUT_S = 60.0
_USER_AGENT = "advls/0.1 (dataset download)"


def download(
    name: str,
    data_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    splits: Sequence[str] | None = None,
    registry: Registry | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Fetch the files of ``name`` that are missing from ``<data_dir>/<name>/``.

    ``mirrors`` replaces the registered base URLs (each file is fetched from
    ``base + filename``, trying the next base on network errors). ``splits`` defaults to
    train and test; SVHN's 1.3 GB ``extra`` split is fetched only when asked for. Files
    already present are verified, not fetched again. ``progress`` shows a progress bar
    (default: only when stderr is a terminal). Returns the paths of the verified files.
    """
    spec = dataset_spec(name, registry)
    wanted = ("train", "test") if splits is None else tuple(splits)
    for split in wanted:
        check_split(split, tuple(spec.splits), spec.name)
    filenames = dict.fromkeys(f for split in wanted for f in spec.splits[split])
    root = resolve_data_dir(data_dir) / spec.name
    return [ensure_file(spec.file(f), root / f, mirrors, progress) for f in filenames]


def require(
    spec: DatasetSpec,
    split: str,
    root: Path,
    download: bool,
    progress: bool | None,
) -> list[Path]:
    """The verified files of a split, downloading the missing ones when allowed."""
    paths = [root / filename for filename in spec.splits[split]]
    missing = [path for path in paths if not path.exists()]
    if missing and not download:
        raise MissingDataError(_missing_message(spec, split, missing))
    return [ensure_file(spec.file(path.name), path, None, progress) for path in paths]


def _missing_message(spec: DatasetSpec, split: str, missing: Sequence[Path]) -> str:
    urls = [url for path in missing for url in spec.file(path.name).urls[:1]]
    listing = "\n  ".join(str(path) for path in missing)
    sources = f" (official source: {', '.join(urls)})" if urls else ""
    return (
        f"{spec.name} {split}: missing\n  {listing}\n"
        f"Download them with advls.data.download({spec.name!r}, data_dir=...) or "
        f"load(..., download=True), or copy the official files there{sources}; "
        f"set the data directory with data_dir=, ${ENV_VAR} or ~/.cache/advls."
    )


def ensure_file(
    spec: FileSpec, path: Path, mirrors: Sequence[str] | None, progress: bool | None
) -> Path:
    """``path`` verified against ``spec``, downloaded first if it does not exist."""
    if path.exists():
        verify_file(path, spec)
        return path
    urls = mirror_urls(mirrors, spec.filename) if mirrors is not None else spec.urls
    return _fetch(spec, path, urls, sys.stderr.isatty() if progress is None else progress)


def _fetch(spec: FileSpec, path: Path, urls: Sequence[str], progress: bool) -> Path:
    if not spec.sha256:
        raise DownloadError(
            f"refusing to download {spec.filename}: no published sha256 is registered for it, "
            f"so the download could not be verified; place the official file at {path}"
        )
    if not urls:
        raise DownloadError(f"no download URL is known for {spec.filename}; place it at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        _check_url(url)
        try:
            temp, actual = _stream_to_temp(url, path, progress)
        except (OSError, HTTPException) as exc:  # URLError, HTTPError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
            continue
        if actual != spec.sha256.lower():
            temp.unlink(missing_ok=True)
            raise ChecksumError(path, "sha256", spec.sha256.lower(), actual, url=url)
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide shared data from other users
        os.replace(temp, path)  # atomic: readers never see a partial or unverified file
        return path
    raise DownloadError(
        f"could not download {spec.filename} to {path}; tried:\n  " + "\n  ".join(failures)
    )


def _check_url(url: str) -> None:
    # urlopen also speaks file:// and ftp://; a registry or mirror list has no business there.
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download from {url!r}: only http(s) URLs are allowed")


def _stream_to_temp(url: str, path: Path, progress: bool) -> tuple[Path, str]:
    """Download ``url`` into a temp file beside ``path``; return it and its sha256."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    temp = Path(name)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0)
            received = 0
            with _progress_bar(path.name, total, progress) as advance:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if total and received != total:
                raise HTTPException(f"connection closed after {received} of {total} bytes")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest()


@contextlib.contextmanager
def _progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _size: None
        return
    from rich.console import Console  # imported lazily: only interactive downloads need it
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    console = Console(stderr=True)  # stdout may carry a command's real output
    with Progress(*columns, TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda size: bar.advance(task, size)
