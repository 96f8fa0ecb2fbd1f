"""Where dataset files live: the data directory and how it is chosen."""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike[str]

#: Environment variable naming the data directory when no ``data_dir`` is given.
ENV_VAR = "ADVLS_DATA"


def resolve_data_dir(data_dir: PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ADVLS_DATA``, else ``~/.cache/advls``."""
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser().absolute()
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return Path(from_env).expanduser().absolute()
    return Path.home() / ".cache" / "advls"
