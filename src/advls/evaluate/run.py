"""Run protocols over a test set: per-attack and worst-case robust accuracy, checks, flags.

Robust accuracy is over *all* evaluated points: a point counts as robust at a budget when the
model classifies it correctly and the attack does not change that. Only correctly classified
points are attacked. The worst case of a protocol at a budget is per example: a point is
robust only if every bounded attack of the protocol failed on it (AutoAttack's reading).
An attack that appears in several protocols with the same configuration runs once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks import from_config
from advls.attacks.base import check_eps, eval_mode
from advls.attacks.runner import attack_dataset
from advls.evaluate.masking import (
    Flag,
    SanityChecks,
    Thresholds,
    raise_flags,
    zero_gradient_fraction,
)
from advls.evaluate.protocols import (
    AttackSpec,
    Protocol,
    default_eps,
    default_l2_budgets,
    get_protocol,
)

__all__ = ["AttackOutcome", "Evaluation", "ProgressFactory", "check_eps_list", "evaluate"]

#: ``progress(label, total)`` returns a function that is called with each batch's size.
ProgressFactory = Callable[[str, int], Callable[[int], None]]

LARGE_EPS = 0.5
_LARGE_EPS_ATTACK = {"name": "pgd", "steps": 40, "loss": "ce"}
_UNBOUNDED_ATTACK = {"name": "deepfool", "norm": "l2", "steps": 100}


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
        found = self._distances()
        return float(found.median()) if found.numel() else math.nan

    @property
    def mean_l2(self) -> float:
        found = self._distances()
        return float(found.mean()) if found.numel() else math.nan

    def accuracy_at_l2(self, budget: float) -> float:
        """Robust accuracy against this (minimal) attack restricted to an L2 budget."""
        broken = self.fooled & ~(self.attacked & (self.l2 > budget))
        return _share(~broken)

    def as_dict(self) -> dict[str, Any]:
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
    checks: SanityChecks | None = None
    flags: list[Flag] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean_accuracy(self) -> float:
        return _share(self.correct)

    @property
    def protocol_names(self) -> list[str]:
        return [protocol.name for protocol in self.protocols]

    @property
    def raised(self) -> list[Flag]:
        return [flag for flag in self.flags if flag.raised]

    def outcome(self, protocol: str, label: str, eps: float | None = None) -> AttackOutcome:
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
        return _share(self.worst_case_robust(protocol, eps))

    def as_dict(self) -> dict[str, Any]:
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
            for eps in self.eps
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
                "checks": self.checks.as_dict() if self.checks else None,
                "flags": [flag.as_dict() for flag in self.flags],
                "seconds": self.seconds,
            }
        )

    def to_json(self, **extra: Any) -> str:
        return json.dumps({**extra, **self.as_dict()}, indent=2, allow_nan=False, default=str)


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


def check_eps_list(eps: Sequence[float]) -> tuple[float, ...]:
    """A non-empty list of L-inf budgets in (0, 1], sorted, without duplicates."""
    if isinstance(eps, str) or not isinstance(eps, Sequence) or len(eps) == 0:
        raise ValueError("eps must be a non-empty list of budgets in (0, 1]")
    for value in eps:
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        if bad or not 0.0 < value <= 1.0:  # NaN fails the comparison too
            raise ValueError(
                f"every eps must be an L-inf budget in (0, 1] pixel units, got {value!r} "
                "(eps 0 is the clean accuracy, reported anyway)"
            )
    return tuple(sorted({float(value) for value in eps}))


def _check_l2_budgets(budgets: Sequence[float]) -> tuple[float, ...]:
    if isinstance(budgets, str) or not isinstance(budgets, Sequence):
        raise ValueError("l2_budgets must be a list of numbers > 0")
    return tuple(sorted({check_eps(b, "l2", "every L2 budget") for b in budgets}))


def _to_unit(batch: Tensor, device: torch.device) -> Tensor:
    batch = batch.to(device)
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


def _predict(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Clean logits' argmax for every point (on the CPU)."""
    predictions = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            predictions.append(model(_to_unit(images[start : start + batch_size], device)).cpu())
    return torch.cat(predictions)


def _check_surrogate(surrogate: nn.Module, images: Tensor, num_classes: int, device) -> None:
    with torch.no_grad(), eval_mode(surrogate):
        logits = surrogate(_to_unit(images[:1], device))
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"the surrogate has {logits.shape[-1]} classes but the evaluated model has "
            f"{num_classes}: a transfer attack needs a model of the same task"
        )


class _Runner:
    """Runs attack configurations on the correctly classified points, once each."""

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        correct: Tensor,
        *,
        batch_size: int,
        device: torch.device,
        progress: ProgressFactory | None,
    ) -> None:
        self.model = model
        self.index = correct.nonzero().squeeze(1)
        self.images, self.labels = images[self.index], labels[self.index]
        self.points = len(labels)
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.cache: dict[str, tuple[Tensor, Tensor, float, int]] = {}

    def run(self, config: dict[str, Any], label: str) -> tuple[Tensor, Tensor, float, int]:
        """``(fooled, l2, seconds, model_calls)`` over all points for one configured attack."""
        key = json.dumps({k: v for k, v in config.items() if k != "surrogate"}, sort_keys=True)
        if key in self.cache:
            return self.cache[key]
        attack = from_config(config)
        advance = self.progress(label, len(self.index)) if self.progress else None
        if len(self.index):
            summary, result = attack_dataset(
                attack, self.model, self.images, self.labels, batch_size=self.batch_size,
                device=self.device, on_batch=advance,
            )  # fmt: skip
            success, l2 = result.success, result.l2
            seconds, calls = summary.seconds, summary.model_calls
        else:
            success, l2, seconds, calls = torch.zeros(0, dtype=torch.bool), torch.zeros(0), 0.0, 0
        fooled = torch.ones(self.points, dtype=torch.bool)
        fooled[self.index] = success
        distances = torch.zeros(self.points)
        distances[self.index] = l2.float()
        self.cache[key] = (fooled, distances, seconds, calls)
        return self.cache[key]


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    protocols: Sequence[str | Protocol] = ("strong",),
    eps: Sequence[float] | None = None,
    l2_budgets: Sequence[float] | None = None,
    smoothing: Mapping[str, Any] | None = None,
    surrogate: nn.Module | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checks: bool = True,
    thresholds: Thresholds | None = None,
    progress: ProgressFactory | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``images`` (uint8, or floats in [0, 1]) under ``protocols``.

    Args:
        protocols: names from :data:`advls.evaluate.PROTOCOLS` or ``Protocol`` objects.
        eps: L-inf budgets in (0, 1] pixel units; defaults by input shape (0.1/0.2/0.3 for
            grey-scale digits, 2, 4, 8 / 255 for colour images).
        l2_budgets: where minimal attacks' distances are read as robust accuracy.
        smoothing: the model's training loss ``{"method", "alpha", "temperature"}`` for the
            paper protocol's attacks; None for a model trained with plain cross-entropy.
        surrogate: a plainly trained twin for the transfer attack (skipped without one).
        seed: for the attacks that draw random numbers.
        checks: measure what the masking checks need (zero gradients, PGD at eps 0.5,
            unbounded DeepFool) and raise the flags.
        progress: ``progress(label, total)`` returns a callback given each batch's size.
    """
    started = time.perf_counter()
    chosen = tuple(get_protocol(protocol) for protocol in protocols)
    if not chosen:
        raise ValueError("protocols must name at least one protocol")
    if len({p.name for p in chosen}) != len(chosen):
        raise ValueError("each protocol may be evaluated once")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if images.dim() < 2 or len(images) != len(labels) or len(images) == 0:
        raise ValueError("images (N, ...) and labels (N,) must be non-empty and of equal length")
    budgets = check_eps_list(eps if eps is not None else default_eps(images.shape[1:]))
    l2 = _check_l2_budgets(
        l2_budgets if l2_budgets is not None else default_l2_budgets(images.shape[1:])
    )
    thresholds = thresholds or Thresholds()
    device = torch.device(device)
    labels = labels.long()

    with eval_mode(model):
        logits_shape = model(_to_unit(images[:1], device)).shape
    num_classes = int(logits_shape[-1])
    if surrogate is not None:
        _check_surrogate(surrogate, images, num_classes, device)
    with eval_mode(model):
        correct = _predict(model, images, batch_size, device).argmax(dim=1) == labels

    evaluation = Evaluation(len(labels), num_classes, correct, budgets, l2, chosen)
    runner = _Runner(
        model, images, labels, correct, batch_size=batch_size, device=device, progress=progress
    )
    for protocol in chosen:
        for spec in protocol.attacks:
            if spec.kind == "transfer" and surrogate is None:
                evaluation.skipped.append(
                    {"protocol": protocol.name, "attack": spec.label, "reason": "no surrogate"}
                )
                continue
            for budget in budgets if spec.bounded else (None,):
                config = spec.config(budget, smoothing=smoothing, seed=seed, surrogate=surrogate)
                where = f"{protocol.name}/{spec.label}" + (f" eps={budget:g}" if budget else "")
                fooled, distances, seconds, calls = runner.run(config, where)
                evaluation.outcomes.append(
                    AttackOutcome(
                        protocol.name, spec, budget, fooled, distances, correct, seconds, calls
                    )
                )

    if checks:
        evaluation.checks = _sanity_checks(model, runner, seed=seed)
        evaluation.flags = raise_flags(evaluation, thresholds)
    evaluation.seconds = time.perf_counter() - started
    return evaluation


def _sanity_checks(model: nn.Module, runner: _Runner, *, seed: int) -> SanityChecks:
    with eval_mode(model):
        zero = zero_gradient_fraction(
            model, runner.images, runner.labels, batch_size=runner.batch_size,
            device=runner.device,
        )  # fmt: skip
    large = {**_LARGE_EPS_ATTACK, "eps": LARGE_EPS, "seed": seed}
    fooled, _, _, _ = runner.run(large, f"check: pgd eps={LARGE_EPS}")
    unbounded = dict(_UNBOUNDED_ATTACK)
    unbounded_fooled, _, _, _ = runner.run(unbounded, "check: unbounded deepfool")
    attacked = unbounded_fooled[runner.index]
    return SanityChecks(
        zero_gradient_fraction=zero,
        large_eps=LARGE_EPS,
        large_eps_accuracy=1.0 - float(fooled.float().mean()),
        large_eps_attack=large,
        unbounded_success_rate=float(attacked.float().mean()) if attacked.numel() else math.nan,
        unbounded_attack=unbounded,
    )
