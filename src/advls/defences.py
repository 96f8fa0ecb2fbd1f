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
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEFENCES", "AdversarialTraining", "craft_fgsm", "craft_pgd"]

DEFENCES: tuple[str, ...] = ("none", "fgsm-at", "pgd-at")
Criterion = Callable[[Tensor, Tensor], Tensor]


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    # Only the input's gradient is requested, so autograd skips the weight gradients.
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def craft_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``clip(x + eps sign grad_x CE, 0, 1)`` with the model in eval mode; a constant."""
    was_training = model.training
    model.eval()
    try:
        return (x + eps * _input_gradient(model, x, y).sign()).clamp_(0.0, 1.0).detach()
    finally:
        model.train(was_training)


def craft_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-inf PGD from a uniform random start, projected onto the eps-ball and [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + eps * (2.0 * noise - 1.0)).clamp_(0.0, 1.0)
        low, high = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        for _ in range(steps):
            step = _input_gradient(model, x_adv, y).sign_().mul_(step_size)
            x_adv = torch.minimum(torch.maximum(x_adv.add_(step), low), high)
        return x_adv.detach()
    finally:
        model.train(was_training)


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
