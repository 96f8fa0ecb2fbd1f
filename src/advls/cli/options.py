"""Options that several commands share, declared once so that they read alike everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "DATA_DIR_HELP",
    "DEFAULT_POINTS",
    "POINTS_HELP",
    "BatchSizeOption",
    "DataDirOption",
    "DeviceOption",
    "ProgressOption",
    "check_points",
    "load_points",
]

DATA_DIR_HELP = "Data directory (default: $ADVLS_DATA, then ~/.cache/advls)."

#: Points a command uses when ``--n`` is not given (the library's default, restated here so
#: that ``--help`` needs no torch import; a test holds the two equal).
DEFAULT_POINTS = 1000
POINTS_HELP = (
    f"the first N points of the split (default {DEFAULT_POINTS}, or all of a smaller split; "
    "more than the split holds is an error)."
)

DataDirOption = Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
BatchSizeOption = Annotated[int, typer.Option(help="Points per attack batch.")]


def check_points(points: int | None) -> None:
    """``--n``, the number of points to use, is at least one when given (the library's one
    rule for it, :func:`advls.evaluate.inputs.check_points`; whether the split has that many
    is checked once it is loaded).

    Raises:
        ValueError: ``points`` < 1.
    """
    from advls.evaluate.inputs import check_points as rule  # local: it loads torch

    if points is not None:
        rule(points)


def load_points(
    meta: dict[str, Any], split: str, points: int | None, data_dir: Path | None
) -> tuple[Any, Any]:
    """The first ``points`` images and labels of a checkpoint's dataset (``meta`` as
    :func:`advls.checkpoint.load_model` returns it), by the library's rules: the split has
    that many points (never silently fewer), and its labels are classes of the model.
    ``points=None``: :data:`DEFAULT_POINTS`, or the whole split if it is smaller.

    Raises:
        ValueError: the dataset cannot be loaded, is too small, or has labels the model lacks.
    """
    from advls import data as datasets
    from advls.evaluate.inputs import check_labels, points_or_default

    dataset = datasets.load(meta["config"]["dataset"], split, data_dir)
    count = points_or_default(points, len(dataset), dataset=repr(dataset.name), split=split)
    classes = meta["model"]["num_classes"]
    labels = dataset.labels[:count]
    check_labels(labels, classes, f"{dataset.name} ({split}), for a model of {classes} classes")
    return dataset.images[:count], labels
