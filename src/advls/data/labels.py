"""The rule for class labels, one place for every reader, dataset and command.

Labels are class indices ``0..K-1``. ``K`` comes from what the data declares (a registered
dataset's classes, a ``classes`` array in a user's ``.npz``, a trained model's output); a
user's file that declares nothing gets ``K = max + 1`` only when that reading is honest:
at least two classes, and every class in ``0..K-1`` present. Otherwise the labels are not
0-based class indices (a file of all 57s, labels 1..10), and guessing ``K`` would train a
model with classes it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from advls.data.errors import DataError

__all__ = ["check_labels", "describe_indices", "infer_classes"]

#: How a file declares its number of classes, for the messages that ask for it.
DECLARE_CLASSES = "store the class names as a 1-D string array `classes` beside x and y"


def describe_indices(indices: Sequence[int], limit: int = 8) -> str:
    """Sorted indices as short runs: ``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7, 8"``."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    parts = [
        str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs[:limit]
    ]
    more = f" and {len(runs) - limit} more" if len(runs) > limit else ""
    return ", ".join(parts) + more


def check_labels(labels: Any, num_classes: int, source: str) -> None:
    """:class:`DataError` unless every label is a class index in ``0..num_classes - 1``.

    ``labels`` is a 1-D numpy array or torch tensor of integers; ``source`` names where they
    come from (a file, a dataset split) and starts the message.
    """
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        negative = int((labels < 0).sum())
        raise DataError(
            f"{source}: labels must be class indices >= 0, but {negative} of {len(labels)} "
            f"are negative (the smallest is {low})"
        )
    if high >= num_classes:
        beyond = int((labels >= num_classes).sum())
        raise DataError(
            f"{source}: labels must lie in 0..{num_classes - 1} ({num_classes} classes), but "
            f"{beyond} of {len(labels)} are larger (the largest is {high})"
        )


def infer_classes(labels: np.ndarray, source: str) -> int:
    """The number of classes of labels that declare none: ``max + 1``, when that is honest.

    Raises:
        DataError: negative labels, fewer than two distinct labels, or classes of
            ``0..max`` that never occur; the message says how to declare the classes.
    """
    if labels.size == 0:
        raise DataError(f"{source}: there are no labels to count the classes of")
    check_labels(labels, int(labels.max()) + 1, source)  # names negative labels
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(
            f"{source}: every label is {int(present[0])}, but a classifier needs labels of at "
            f"least 2 classes; if this is part of a larger task, {DECLARE_CLASSES}"
        )
    count = int(present[-1]) + 1
    if len(present) < count:
        missing = sorted(set(range(count)) - {int(k) for k in present})
        absent = (
            f"class {missing[0]} never occurs"
            if len(missing) == 1
            else (f"classes {describe_indices(missing)} never occur")
        )
        raise DataError(
            f"{source}: labels run 0..{count - 1}, but {absent} ({len(present)} of {count} "
            f"present), so they do not look like class "
            f"indices 0..K-1; renumber them 0..{len(present) - 1}, or, if the task has "
            f"{count} classes, {DECLARE_CLASSES} ({count} names)"
        )
    return count
