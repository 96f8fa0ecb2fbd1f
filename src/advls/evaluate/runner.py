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
        """The summary as a plain dict (its JSON record)."""
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

    def run(self, config: dict[str, Any], label: str, among: Tensor | None = None) -> AttackRun:
        """The attack ``config`` (``advls.attacks.from_config``) over all points.

        ``label`` names it in the progress display. ``among`` (a mask over all points)
        restricts the attack to those of the correctly classified points it marks, as a
        cascade does (the others count as fooled). A configuration already run over all
        of them (the surrogate model aside) is not run again: a cascade reads its outcome
        on the points it marks, at no cost (0 seconds, 0 model calls). Each point's outcome
        depends on that point alone (the random starts aside), so this is the cascade's
        result, and ``strong`` beside ``autoattack`` costs no more than ``strong`` alone.
        """
        key = json.dumps({k: v for k, v in config.items() if k != "surrogate"}, sort_keys=True)
        if key in self._cache:
            full = self._cache[key]
            if among is None:
                return full
            # Outside ``among`` the cascade counts every point as fooled already.
            return AttackRun(full.fooled | ~among, full.l2 * among, 0.0, 0)
        chosen = torch.arange(len(self.index))
        if among is not None:
            chosen = chosen[among[self.index]]
        attack = from_config(config)
        advance = self.progress(label, len(chosen)) if self.progress else None
        if len(chosen):
            summary, result = attack_dataset(
                attack, self.model, self.images[chosen], self.labels[chosen],
                batch_size=self.batch_size, device=self.device, on_batch=advance,
            )  # fmt: skip
            success = self._repredict(result.x_adv, self.labels[chosen])
            l2, seconds, calls = result.l2, summary.seconds, summary.model_calls + 1
        else:
            success, l2, seconds, calls = torch.zeros(0, dtype=torch.bool), torch.zeros(0), 0.0, 0
        fooled = torch.ones(self.points, dtype=torch.bool)
        fooled[self.index[chosen]] = success
        distances = torch.zeros(self.points)
        distances[self.index[chosen]] = l2.float()
        found = AttackRun(fooled, distances, seconds, calls)  # calls include the re-prediction
        if among is None:
            self._cache[key] = found
        return found

    def _repredict(self, x_adv: Tensor, labels: Tensor) -> Tensor:
        """Whether the model misclassifies each returned point, by one fresh forward pass.

        For a deterministic model this is the attack's own ``success`` (the contract); for a
        randomized one it is what AutoAttack counts: a search that met one lucky draw of the
        model's randomness (Square keeps the logits of its accepted queries) does not break
        the point unless a new pass is fooled too.
        """
        fooled = []
        with torch.no_grad(), eval_mode(self.model):
            for start in range(0, len(x_adv), self.batch_size):
                x = x_adv[start : start + self.batch_size].to(self.device)
                y = labels[start : start + self.batch_size].to(self.device)
                fooled.append((self.model(x).argmax(dim=1) != y).cpu())
        return torch.cat(fooled)
