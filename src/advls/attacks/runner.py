"""Run one configured attack over a dataset in batches and summarise what it did."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from advls.attacks.base import AttackResult

__all__ = ["AttackSummary", "attack_dataset"]

ConfiguredAttack = Callable[[nn.Module, Tensor, Tensor], AttackResult]


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
        x = images[start : start + batch_size].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        y = labels[start : start + batch_size].to(device)
        with torch.no_grad():
            was_training = model.training
            model.eval()
            clean.append((model(x).argmax(dim=1) == y).cpu())
            model.train(was_training)
        result = attack(model, x, y)
        parts.append(
            AttackResult(
                result.x_adv.cpu(), result.success.cpu(), result.l2.cpu(), result.linf.cpu(),
                result.model_calls,
            )
        )  # fmt: skip
        if on_batch is not None:
            on_batch(len(y))
    merged = AttackResult(
        torch.cat([p.x_adv for p in parts]),
        torch.cat([p.success for p in parts]),
        torch.cat([p.l2 for p in parts]),
        torch.cat([p.linf for p in parts]),
        sum(p.model_calls for p in parts),
    )
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
