"""What an evaluation found: per-attack outcomes, the checks' measurements and flags, and the
whole :class:`Evaluation` with its JSON form.

Plain data with the arithmetic that reads it (robust accuracy, worst cases, distances); no
attack runs here, so every other module of :mod:`advls.evaluate` can use these types.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from advls.evaluate.protocols import AttackSpec, Protocol

__all__ = ["AttackOutcome", "CertifiedOutcome", "Evaluation", "Flag", "SanityChecks"]


def _share(mask: Tensor) -> float:
    """The share of True entries, computed from counts so equal sets give equal numbers."""
    return int(mask.sum()) / mask.numel() if mask.numel() else math.nan


def _finite(value: Any) -> Any:
    """NaN (an undefined median, say) is not JSON: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@dataclass(frozen=True)
class AttackOutcome:
    """One attack of one protocol at one budget (``eps`` is None for minimal attacks).

    ``fooled`` and ``l2`` cover every evaluated point; a clean error counts as fooled at
    distance 0, and ``attacked`` marks the points that were attacked (the correct ones).
    """

    protocol: str
    spec: AttackSpec
    eps: float | None
    fooled: Tensor
    l2: Tensor
    attacked: Tensor
    seconds: float
    model_calls: int

    @property
    def robust_accuracy(self) -> float:
        """Share of all evaluated points that are correct and were not fooled."""
        return _share(~self.fooled)

    @property
    def success_rate(self) -> float:
        """Share of the correctly classified points that the attack fooled."""
        if not self.attacked.any():
            return math.nan
        return float(self.fooled[self.attacked].float().mean())

    def _distances(self) -> Tensor:
        return self.l2[self.attacked & self.fooled]

    @property
    def median_l2(self) -> float:
        """Median L2 distance of the points the attack fooled (NaN when it fooled none)."""
        found = self._distances()
        return float(found.median()) if found.numel() else math.nan

    @property
    def mean_l2(self) -> float:
        """Mean L2 distance of the points the attack fooled (NaN when it fooled none)."""
        found = self._distances()
        return float(found.mean()) if found.numel() else math.nan

    def accuracy_at_l2(self, budget: float) -> float:
        """Robust accuracy against this (minimal) attack restricted to an L2 budget."""
        broken = self.fooled & ~(self.attacked & (self.l2 > budget))
        return _share(~broken)

    def as_dict(self) -> dict[str, Any]:
        """The outcome's JSON record (distances only for minimal attacks)."""
        record = {
            "protocol": self.protocol,
            "attack": self.spec.label,
            "name": self.spec.attack,
            "kind": self.spec.kind,
            "eps": self.eps,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "seconds": self.seconds,
            "model_calls": self.model_calls,
        }
        if not self.spec.bounded:
            record["median_l2"] = self.median_l2
            record["mean_l2"] = self.mean_l2
        return record


@dataclass(frozen=True)
class CertifiedOutcome:
    """One bound method at one L-inf budget: the points it proves robust (over all points;
    a clean error is never certified), see :mod:`advls.certify`."""

    method: str
    eps: float
    certified: Tensor
    seconds: float

    @property
    def certified_accuracy(self) -> float:
        """Share of all evaluated points proven robust."""
        return _share(self.certified)

    def as_dict(self) -> dict[str, Any]:
        """The outcome's JSON record."""
        return {
            "method": self.method,
            "eps": self.eps,
            "certified_accuracy": self.certified_accuracy,
            "seconds": self.seconds,
        }


class SanityChecks(Mapping[str, Any]):
    """What the masking checks measured beyond the protocols' attacks, by name.

    Each check that measures something contributes its own entries (see
    :mod:`advls.evaluate.masking`); the names are the JSON keys and read as attributes too
    (``checks.large_eps_accuracy``).
    """

    def __init__(self, **measured: Any) -> None:
        self._measured = dict(measured)

    def __getitem__(self, name: str) -> Any:
        return self._measured[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._measured)

    def __len__(self) -> int:
        return len(self._measured)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never look up our own storage (copy, pickle) here
            raise AttributeError(name)
        try:
            return self._measured[name]
        except KeyError:
            raise AttributeError(f"nothing measured as {name!r}") from None

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self._measured.items())
        return f"SanityChecks({values})"

    def as_dict(self) -> dict[str, Any]:
        """A copy of the measurements as a plain dict, in the order they were taken."""
        return copy.deepcopy(self._measured)


@dataclass(frozen=True)
class Flag:
    """A check's verdict: raised or not, whether it could check at all, why, and the numbers."""

    name: str
    raised: bool
    checked: bool
    message: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The flag's JSON record."""
        return asdict(self)


@dataclass
class Evaluation:
    """Everything an evaluation measured; ``as_dict`` is its JSON form."""

    points: int
    num_classes: int
    correct: Tensor
    eps: tuple[float, ...]
    l2_budgets: tuple[float, ...]
    protocols: tuple[Protocol, ...]
    outcomes: list[AttackOutcome] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: Attacks changed to fit the number of classes: ``{"protocol", "attack", "change"}``.
    adapted: list[dict[str, str]] = field(default_factory=list)
    checks: SanityChecks | None = None
    flags: list[Flag] = field(default_factory=list)
    seconds: float = 0.0
    #: How a sharded evaluation ran (the plan, shards computed and reused, the executor);
    #: None for an evaluation in one piece.
    sharding: dict[str, Any] | None = None
    #: The certified points per bound method and L-inf budget (empty without ``certify``).
    certified: list[CertifiedOutcome] = field(default_factory=list)

    @property
    def clean_accuracy(self) -> float:
        """Share of the evaluated points classified correctly."""
        return _share(self.correct)

    @property
    def protocol_names(self) -> list[str]:
        """The evaluated protocols' names, in order."""
        return [protocol.name for protocol in self.protocols]

    @property
    def raised(self) -> list[Flag]:
        """The flags that were raised."""
        return [flag for flag in self.flags if flag.raised]

    def budgets(self, protocol: str) -> tuple[float, ...]:
        """The budgets ``protocol``'s bounded attacks ran at: ``eps``, or the L2 budgets."""
        norm = next(p.norm for p in self.protocols if p.name == protocol)
        return self.l2_budgets if norm == "l2" else self.eps

    def outcome(self, protocol: str, label: str, eps: float | None = None) -> AttackOutcome:
        """Attack ``label`` of ``protocol`` at ``eps`` (KeyError where it did not run)."""
        for outcome in self.outcomes:
            if (outcome.protocol, outcome.spec.label, outcome.eps) == (protocol, label, eps):
                return outcome
        raise KeyError(f"no outcome for {protocol}/{label} at eps {eps}")

    def worst_case_robust(self, protocol: str, eps: float) -> Tensor:
        """Per point: correct and unbroken by every bounded attack of ``protocol`` at ``eps``."""
        robust = self.correct.clone()
        for outcome in self.outcomes:
            if outcome.protocol == protocol and outcome.eps == eps:
                robust &= ~outcome.fooled
        return robust

    def worst_case(self, protocol: str, eps: float) -> float:
        """Robust accuracy of ``protocol`` at ``eps``, per example over its bounded attacks."""
        return _share(self.worst_case_robust(protocol, eps))

    @property
    def certify_methods(self) -> list[str]:
        """The bound methods that ran, in order."""
        return list(dict.fromkeys(outcome.method for outcome in self.certified))

    def certified_robust(self, eps: float, method: str | None = None) -> Tensor:
        """Per point: proven robust at ``eps`` by ``method``, or by any method (None).

        Raises:
            KeyError: no certification at ``eps`` (by ``method``).
        """
        masks = [
            outcome.certified
            for outcome in self.certified
            if outcome.eps == eps and method in (None, outcome.method)
        ]
        if not masks:
            raise KeyError(f"no certification at eps {eps}" + (f" by {method}" if method else ""))
        proven = masks[0].clone()
        for mask in masks[1:]:
            proven |= mask
        return proven

    def certified_accuracy(self, eps: float, method: str | None = None) -> float:
        """Share of all points proven robust at ``eps`` (by ``method``, or by any)."""
        return _share(self.certified_robust(eps, method))

    def bracket(self, protocol: str, eps: float) -> tuple[float, float]:
        """``(certified, attacked)``: the true robust accuracy at ``eps`` lies between what
        the bounds prove (any method) and what ``protocol``'s attacks leave unbroken."""
        return self.certified_accuracy(eps), self.worst_case(protocol, eps)

    def certified_but_broken(self, protocol: str, eps: float) -> Tensor:
        """Points proven robust at ``eps`` that ``protocol``'s attacks broke: always none,
        unless the bounds or the attacks are wrong (the ``certified_broken`` check)."""
        return self.certified_robust(eps) & ~self.worst_case_robust(protocol, eps)

    def _certified_records(self) -> dict[str, Any]:
        if not self.certified:
            return {}
        budgets = list(dict.fromkeys(outcome.eps for outcome in self.certified))
        brackets = [
            {"protocol": protocol.name, "eps": eps, "certified": self.certified_accuracy(eps),
             "attacked": self.worst_case(protocol.name, eps),
             "certified_but_broken": int(self.certified_but_broken(protocol.name, eps).sum())}
            for protocol in self.protocols
            if protocol.norm == "linf"
            for eps in budgets
            if eps in self.eps
        ]  # fmt: skip
        union = [
            {"eps": eps, "certified_accuracy": self.certified_accuracy(eps)} for eps in budgets
        ]
        return {
            "certified": [outcome.as_dict() for outcome in self.certified],
            "certified_any": union,
            "brackets": brackets,
        }

    def as_dict(self) -> dict[str, Any]:
        """The evaluation as JSON-ready data (NaN written as None)."""
        minimal = [
            {
                "protocol": o.protocol,
                "attack": o.spec.label,
                "l2_budget": budget,
                "robust_accuracy": o.accuracy_at_l2(budget),
            }
            for o in self.outcomes
            if not o.spec.bounded
            for budget in self.l2_budgets
        ]
        worst = [
            {"protocol": name, "eps": eps, "robust_accuracy": self.worst_case(name, eps)}
            for name in self.protocol_names
            for eps in self.budgets(name)
        ]
        return _finite(
            {
                "points": self.points,
                "num_classes": self.num_classes,
                "clean_accuracy": self.clean_accuracy,
                "eps": list(self.eps),
                "l2_budgets": list(self.l2_budgets),
                "protocols": [protocol.describe() for protocol in self.protocols],
                "results": [outcome.as_dict() for outcome in self.outcomes],
                "worst_case": worst,
                "minimal_at_l2": minimal,
                "skipped": self.skipped,
                "adapted": self.adapted,
                "checks": self.checks.as_dict() if self.checks is not None else None,
                "flags": [flag.as_dict() for flag in self.flags],
                "seconds": self.seconds,
                **self._certified_records(),
                **({"sharding": self.sharding} if self.sharding is not None else {}),
            }
        )

    def to_json(self, **extra: Any) -> str:
        """``as_dict`` as indented JSON, after the ``extra`` entries (e.g. the run's config)."""
        return json.dumps({**extra, **self.as_dict()}, indent=2, allow_nan=False, default=str)
