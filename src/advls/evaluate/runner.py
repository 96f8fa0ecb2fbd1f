"""Running attacks over data: one attack over a dataset in batches, and the evaluation's
one way to run many, on the correctly classified points, once per configuration.

:func:`attack_dataset` attacks a dataset batch by batch and summarises what the attack did
(what ``advls attack`` prints). The protocols' attacks and the masking checks' extra attacks
all go through one :class:`AttackRunner`, so an attack that two protocols (or a protocol and
a check) configure identically runs once and every caller reads the same result.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from advls.attacks import AttackResult, eval_mode, from_config

__all__ = [
    "AttackRun",
    "AttackRunner",
    "AttackSummary",
    "ProgressFactory",
    "attack_dataset",
    "to_unit",
]

ConfiguredAttack = Callable[[nn.Module, Tensor, Tensor], AttackResult]

#: ``progress(label, total)`` returns a function that is called with each batch's size.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def to_unit(batch: Tensor, device: torch.device) -> Tensor:
    """``batch`` on ``device`` as floats in [0, 1] (uint8 pixels are divided by 255)."""
    batch = batch.to(device)
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


@dataclass(frozen=True)
class AttackSummary:
    """Accuracies over *all* evaluated points (clean errors count as failures)."""

    points: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float  # among points the model got right before the attack
    median_l2: float  # of successful perturbations of correctly classified points
    mean_l2: float
    median_linf: float
    model_calls: int
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def attack_dataset(
    attack: ConfiguredAttack,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> tuple[AttackSummary, AttackResult]:
    """Attack ``images`` (uint8 or floats in [0, 1]) batch by batch.

    Returns the summary and the concatenated per-example result (on the CPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    started = time.perf_counter()
    parts: list[AttackResult] = []
    clean: list[Tensor] = []
    for start in range(0, len(images), batch_size):
        x = to_unit(images[start : start + batch_size], device)
        y = labels[start : start + batch_size].to(device)
        with torch.no_grad(), eval_mode(model):
            clean.append((model(x).argmax(dim=1) == y).cpu())
        parts.append(attack(model, x, y).cpu())
        if on_batch is not None:
            on_batch(len(y))
    merged = AttackResult.concat(parts)
    correct = torch.cat(clean)
    fooled = merged.success & correct
    return _summarise(merged, correct, fooled, time.perf_counter() - started), merged


def _median(values: Tensor) -> float:
    return float(values.median()) if values.numel() else math.nan


def _summarise(
    result: AttackResult, correct: Tensor, fooled: Tensor, seconds: float
) -> AttackSummary:
    points = len(correct)
    robust = correct & ~result.success
    return AttackSummary(
        points=points,
        clean_accuracy=float(correct.float().mean()) if points else math.nan,
        robust_accuracy=float(robust.float().mean()) if points else math.nan,
        # Undefined when no point was classified correctly to begin with.
        success_rate=float(fooled.sum()) / int(correct.sum()) if correct.any() else math.nan,
        median_l2=_median(result.l2[fooled]),
        mean_l2=float(result.l2[fooled].mean()) if fooled.any() else math.nan,
        median_linf=_median(result.linf[fooled]),
        model_calls=result.model_calls,
        seconds=seconds,
    )


class AttackRun(NamedTuple):
    """One configured attack over all evaluated points (clean errors count as fooled)."""

    fooled: Tensor
    l2: Tensor
    seconds: float
    model_calls: int


class AttackRunner:
    """Runs attack configurations on the correctly classified points, once each.

    ``images`` and ``labels`` are the attacked (correctly classified) points, ``index``
    their positions among all ``points``.
    """

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
        self._cache: dict[str, AttackRun] = {}

    def run(self, config: dict[str, Any], label: str) -> AttackRun:
        """The attack ``config`` (``advls.attacks.from_config``) over all points.

        ``label`` names it in the progress display; a configuration already run (the
        surrogate model aside) is not run again.
        """
        key = json.dumps({k: v for k, v in config.items() if k != "surrogate"}, sort_keys=True)
        if key in self._cache:
            return self._cache[key]
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
        self._cache[key] = AttackRun(fooled, distances, seconds, calls)
        return self._cache[key]
