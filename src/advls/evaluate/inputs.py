"""The values a user gives an attack or an evaluation: one rule and one message each.

``advls attack``, ``advls evaluate`` and sweep specs check their L-inf budgets (``eps``), L2
budgets and number of points (``n``) here, so a bad value gets the same message wherever it
comes from; only the prefix says where (an option, a spec's field). Labels follow the data
layer's rule, :func:`check_labels` (:mod:`advls.data.labels`), re-exported here.

Numbers are shown as floats (``0`` and ``0.0`` are one value), so a budget read by the
command line and the same budget read from YAML give one message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from advls.data.labels import check_labels

__all__ = [
    "DEFAULT_POINTS",
    "check_eps",
    "check_eps_list",
    "check_l2_budget",
    "check_l2_budgets",
    "check_labels",
    "check_points",
    "points_or_default",
]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _shown(value: Any) -> str:
    """A value as the messages show it: numbers as floats, anything else by its repr."""
    return repr(float(value)) if _is_number(value) else repr(value)


def check_eps(value: Any) -> float:
    """One L-inf budget in (0, 1] pixel units (NaN, infinities and bools refused)."""
    if not _is_number(value) or not 0.0 < value <= 1.0:  # NaN fails the comparison too
        raise ValueError(
            f"every eps must be an L-inf budget in (0, 1] pixel units, got {_shown(value)} "
            "(eps 0 is the clean accuracy, reported anyway)"
        )
    return float(value)


def check_eps_list(eps: Sequence[float]) -> tuple[float, ...]:
    """A non-empty list of L-inf budgets in (0, 1], sorted, without duplicates."""
    if isinstance(eps, str) or not isinstance(eps, Sequence) or len(eps) == 0:
        raise ValueError("eps must be a non-empty list of budgets in (0, 1]")
    return tuple(sorted({check_eps(value) for value in eps}))


def check_l2_budget(value: Any) -> float:
    """One L2 budget: a finite number > 0 (an L2 ball may exceed the [0, 1] box)."""
    if not _is_number(value) or not 0.0 < value < math.inf:
        raise ValueError(f"every L2 budget must be a finite number > 0, got {_shown(value)}")
    return float(value)


def check_l2_budgets(budgets: Sequence[float]) -> tuple[float, ...]:
    """A non-empty list of L2 budgets, sorted, without duplicates."""
    if isinstance(budgets, str) or not isinstance(budgets, Sequence) or len(budgets) == 0:
        raise ValueError("l2 budgets must be a non-empty list of numbers > 0")
    return tuple(sorted({check_l2_budget(value) for value in budgets}))


#: Points an evaluation uses when ``n`` is not given, or all the split has if fewer; an ``n``
#: given explicitly must not exceed the split.
DEFAULT_POINTS = 1000


def points_or_default(n: int | None, available: int, *, dataset: str, split: str) -> int:
    """``n`` checked against the split (:func:`check_points`), or when None the default:
    :data:`DEFAULT_POINTS`, or the whole split if it is smaller."""
    if n is None:
        n = min(DEFAULT_POINTS, available) or 1  # an empty split: the rule names it
    return check_points(n, available, dataset=dataset, split=split)


def check_points(
    n: Any, available: int | None = None, *, dataset: str = "the dataset", split: str = "test"
) -> int:
    """``n``, the number of points to use: an integer >= 1, and at most the ``available``
    points of the ``split`` of ``dataset`` when that is known (never silently fewer)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n, the number of points, must be an integer >= 1, got {n!r}")
    if available is not None and n > available:
        raise ValueError(
            f"n is {n} but {dataset} has {available} {split} images; ask for at most {available}"
        )
    return n
