"""Which of our runs stand for which cell of the paper's tables.

The paper's appendix tables (``paper/paper_tables.csv``) name set-ups ("MNIST LeNet"),
methods ("ALS", "normal") and *indices* 1..3 of the smoothing strength and the attack
budget: the values behind the indices were lost with its formulas. A spec's free-form
``paper:`` section records the values we chose, e.g.::

    paper: {setups: {lenet: CIFAR LeNet}, alpha: [0.1, 0.5, 0.9],
            eps: [0.05, 0.15, 0.25], eps_scale: 0.5}

:class:`PaperMapping` is that section, validated once at the edge; the report functions
take it (or several, one per spec) instead of reading YAML themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "BASELINES",
    "METHOD_ORDER",
    "PAPER_SETUPS",
    "SMOOTHING_METHODS",
    "PaperMapping",
    "as_mappings",
    "method_name",
    "setup_sort_key",
]

#: The paper's set-ups and the (dataset, model) that stands for each here. The authors'
#: "Linear" MNIST model is in fact an MLP (784-500-256-10).
PAPER_SETUPS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "MNIST Linear": ("mnist", "mlp"),
        "MNIST LeNet": ("mnist", "lenet-mnist"),
        "CIFAR LeNet": ("cifar10", "lenet"),
        "CIFAR ResNet": ("cifar10", "resnet18"),
        "SVHN LeNet": ("svhn", "lenet"),
    }
)

#: Training losses of :mod:`advls.losses` and the paper's names for them.
SMOOTHING_METHODS: Mapping[str, str] = MappingProxyType(
    {"adversarial": "ALS", "standard": "SLS", "boltzmann": "BLS", "second_best": "SBLS"}
)

#: Plain cross-entropy under each defence. The paper's baselines are ``normal`` and
#: ``adv_training`` (Goodfellow FGSM training); PGD training is this project's stronger one,
#: IBP training (Gowal et al.) its certified one.
BASELINES: Mapping[str, str] = MappingProxyType(
    {"none": "normal", "fgsm-at": "adv_training", "pgd-at": "pgd_training", "ibp": "ibp_training"}
)

#: Row order of the tables: the paper's, then ours.
METHOD_ORDER: tuple[str, ...] = (
    "ALS",
    "SLS",
    "BLS",
    "SBLS",
    "normal",
    "adv_training",
    "pgd_training",
    "ibp_training",
)

_KEYS = ("setups", "alpha", "eps", "eps_scale")


def setup_sort_key(setup: str) -> tuple[int, str]:
    """Sort set-ups as the paper lists them, then any others by name."""
    known = list(PAPER_SETUPS)
    return (known.index(setup), "") if setup in known else (len(known), setup)


def method_name(loss: str, defence: str) -> str:
    """The paper's name for a run's training; combinations it never ran get a plain name.

    Smoothing together with adversarial training is not a method of the paper, so it is
    named ``"ALS+fgsm-at"`` and never lands in a paper table.
    """
    if loss == "ce":
        return BASELINES.get(defence, f"ce+{defence}")
    name = SMOOTHING_METHODS.get(loss, loss)
    return name if defence == "none" else f"{name}+{defence}"


def _floats(value: Any, where: str, *, low: float, high: float | None) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"paper.{where}: give a non-empty list of numbers, got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"paper.{where}: {item!r} is not a finite number")
        if item < low or (high is not None and item > high):
            bounds = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise ValueError(f"paper.{where}: {item!r} is outside {bounds}")
        numbers.append(float(item))
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"paper.{where}: values must be distinct, got {list(value)}")
    return tuple(numbers)


def _close(a: float, b: float) -> bool:
    # Budgets come from YAML on both sides, but a scaled eps (0.15 x 0.5) may differ in the
    # last bit from the one written in the spec's evaluate section.
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@dataclass(frozen=True)
class PaperMapping:
    """The values behind the paper's table indices, for the set-ups one spec ran.

    ``setups`` maps a model name (or ``"dataset/model"``, which wins) to a set-up name of the
    paper; ``alpha[i - 1]`` is the paper's alpha index ``i``; ``eps[i - 1]`` its eps index
    ``i`` in the paper's units, and ``eps[i - 1] * eps_scale`` the [0, 1]-pixel budget our
    runs were attacked with (0.5 for CIFAR-10 and SVHN, which the authors normalised to
    [-1, 1]).
    """

    setups: Mapping[str, str]
    alpha: tuple[float, ...]
    eps: tuple[float, ...]
    eps_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.setups or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.setups.items()
        ):
            raise ValueError(
                f"paper.setups: map model names to set-up names, got {dict(self.setups)!r}"
            )
        object.__setattr__(self, "alpha", _floats(list(self.alpha), "alpha", low=0.0, high=1.0))
        object.__setattr__(self, "eps", _floats(list(self.eps), "eps", low=0.0, high=None))
        scale = self.eps_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"paper.eps_scale: give a positive number, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"paper.eps_scale: give a finite number, got {scale!r}")
        object.__setattr__(self, "eps_scale", float(scale))
        object.__setattr__(self, "setups", MappingProxyType(dict(self.setups)))

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> PaperMapping:
        """Validate a spec's ``paper:`` section; unknown keys are typos, not extensions."""
        if not isinstance(section, Mapping):
            raise ValueError(f"paper: expected a mapping, got {type(section).__name__}")
        unknown = sorted(set(section) - set(_KEYS))
        if unknown:
            raise ValueError(f"paper: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
        missing = [key for key in ("setups", "alpha", "eps") if key not in section]
        if missing:
            raise ValueError(f"paper: missing key {missing[0]!r}")
        setups = section["setups"]
        if not isinstance(setups, Mapping):
            raise ValueError(f"paper.setups: expected a mapping, got {setups!r}")
        return cls(
            setups=dict(setups),
            alpha=tuple(section["alpha"]),
            eps=tuple(section["eps"]),
            eps_scale=section.get("eps_scale", 1.0),
        )

    def setup_name(self, dataset: str, model: str) -> str | None:
        """The paper's set-up a run of ``model`` on ``dataset`` stands for, if any.

        A model name alone is ambiguous across specs (``lenet`` is CIFAR LeNet in one and
        SVHN LeNet in another), so a known paper set-up only matches its own dataset.
        """
        name = self.setups.get(f"{dataset}/{model}", self.setups.get(model))
        if name is None:
            return None
        known = PAPER_SETUPS.get(name)
        if known is not None and known[0] != dataset:
            return None
        return name

    def pixel_eps(self, index: int) -> float:
        """The [0, 1]-pixel budget of the paper's eps index (1-based)."""
        if not 1 <= index <= len(self.eps):
            raise ValueError(f"eps index must be in 1..{len(self.eps)}, got {index}")
        return self.eps[index - 1] * self.eps_scale

    def eps_index(self, pixel_eps: float) -> int | None:
        """The paper's eps index of a [0, 1]-pixel budget, or None if it is not one of them."""
        for index in range(1, len(self.eps) + 1):
            if _close(self.pixel_eps(index), pixel_eps):
                return index
        return None

    def alpha_index(self, alpha: float) -> int | None:
        """The paper's alpha index of a smoothing strength, or None."""
        for index, value in enumerate(self.alpha, start=1):
            if _close(value, alpha):
                return index
        return None


def as_mappings(mapping: PaperMapping | Sequence[PaperMapping]) -> tuple[PaperMapping, ...]:
    """One mapping or several (one per spec of a store), as a tuple; the first match wins."""
    mappings = (mapping,) if isinstance(mapping, PaperMapping) else tuple(mapping)
    if not mappings or not all(isinstance(m, PaperMapping) for m in mappings):
        raise ValueError("give at least one PaperMapping")
    return mappings
