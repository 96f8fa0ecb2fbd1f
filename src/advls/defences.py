"""Adversarial-training baselines: Goodfellow's FGSM training and Madry's PGD training.

Both craft the adversarial example with the model in eval mode (dropout off, batch-norm
statistics frozen) and treat it as a constant for the parameter update. They
compose with any training loss, smoothed or not:

* ``fgsm-at``: ``beta * loss(x, y) + (1 - beta) * loss(x + eps sign grad_x CE(x, y), y)``
* ``pgd-at``:  ``loss(x_pgd, y)``, ``x_pgd`` from ``steps`` projected sign steps of size
  ``step_size`` after a uniform random start in the eps-ball.

The examples are crafted against hard-label cross-entropy, the field's default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from advls.attacks import attack_loss, eval_mode
from advls.attacks.geometry import LINF
from advls.attacks.gradient import ascend

__all__ = ["DEFENCES", "AdversarialTraining", "craft_fgsm", "craft_pgd"]

DEFENCES: tuple[str, ...] = ("none", "fgsm-at", "pgd-at")
Criterion = Callable[[Tensor, Tensor], Tensor]
_CE = attack_loss("ce")


def craft_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``clip(x + eps sign grad_x CE, 0, 1)`` with the model in eval mode; a constant.

    FGSM's own step (:func:`advls.attacks.gradient.ascend`), without the attack's scoring
    pass: training needs the point, not whether it fools the model.
    """
    return craft_pgd(model, x, y, eps, steps=1, step_size=eps, random_start=False)


def craft_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    *,
    random_start: bool = True,
) -> Tensor:
    """L-inf PGD from a uniform random start (drawn from ``generator``), projected onto the
    eps-ball and [0, 1], with the model in eval mode; a constant.

    PGD's own loop and random start (:mod:`advls.attacks`), without its scoring pass.
    """
    x = x.detach()
    with eval_mode(model):
        start = LINF.random_start(x, eps, generator) if random_start else x.clone()
        found = ascend(
            model, x, y, start, geometry=LINF, eps=eps, steps=steps, step_size=step_size,
            objective=_CE,
        )  # fmt: skip
    return found.detach()


@dataclass(frozen=True)
class AdversarialTraining:
    """A defence's settings; ``loss(model, x, y, criterion)`` gives the training loss."""

    kind: Literal["fgsm-at", "pgd-at"]
    eps: float
    beta: float = 0.5
    steps: int = 7
    step_size: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEFENCES[1:]:
            raise ValueError(f"defence must be one of {', '.join(DEFENCES)}, got {self.kind!r}")
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"the defence's eps must be in (0, 1], got {self.eps}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, criterion: Criterion
    ) -> tuple[Tensor, Tensor]:
        """The training loss and the logits of the clean batch (for accuracy bookkeeping)."""
        if self.kind == "fgsm-at":
            x_adv = craft_fgsm(model, x, y, self.eps)
            # One forward over clean and adversarial halves keeps batch-norm statistics joint.
            logits = model(torch.cat([x, x_adv]))
            clean, adversarial = logits[: len(x)], logits[len(x) :]
            loss = self.beta * criterion(clean, y) + (1.0 - self.beta) * criterion(adversarial, y)
            return loss, clean
        step_size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        x_adv = craft_pgd(model, x, y, self.eps, self.steps, step_size, self.generator)
        logits = model(x_adv)
        return criterion(logits, y), logits
