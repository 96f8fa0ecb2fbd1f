"""Options that several commands share, declared once so that they read alike everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "DATA_DIR_HELP",
    "BatchSizeOption",
    "DataDirOption",
    "DeviceOption",
    "ProgressOption",
    "check_points",
]

DATA_DIR_HELP = "Data directory (default: $ADVLS_DATA, then ~/.cache/advls)."

DataDirOption = Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
BatchSizeOption = Annotated[int, typer.Option(help="Points per attack batch.")]


def check_points(points: int) -> None:
    """``--n``, the number of points to use, is at least one.

    Raises:
        ValueError: ``points`` < 1.
    """
    if points < 1:
        raise ValueError(f"--n must be >= 1, got {points}")
