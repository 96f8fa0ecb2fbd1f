"""Defences: Goodfellow's FGSM training, Madry's PGD training, and certified (IBP) training.

The first two craft the adversarial example with the model in eval mode (dropout off,
batch-norm statistics frozen) and treat it as a constant for the parameter update. All three
compose with any training loss, smoothed or not:

* ``fgsm-at``: ``beta * loss(x, y) + (1 - beta) * loss(x + eps sign grad_x CE(x, y), y)``
* ``pgd-at``:  ``loss(x_pgd, y)``, ``x_pgd`` from ``steps`` projected sign steps of size
  ``step_size`` after a uniform random start in the eps-ball.
* ``ibp`` (Gowal et al. 2018): ``kappa_t loss(z(x), y) + (1 - kappa_t) loss(-m(x, eps_t), y)``
  where ``m(x, eps)`` are IBP's lower bounds of the margins ``z_y - z_k`` over the eps-box
  (:mod:`advls.certify`; ``-m`` is the worst case the box allows, 0 at ``y``), and the
  gradient flows through the bounds. ``eps_t`` stays 0 (and ``kappa_t`` 1) for a warm-up,
  then rises linearly to ``eps`` while ``kappa_t`` falls linearly to ``kappa``; both then
  stay. The bounds are those of the network in eval mode (dropout off, batch norm with its
  running statistics), computed in float32 outside any autocast.

The examples of the first two are crafted against hard-label cross-entropy, the field's
default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from advls.attacks import attack_loss, eval_mode
from advls.attacks.geometry import LINF
from advls.attacks.gradient import ascend
from advls.certify import Chain, chain_margin_bounds, extract

__all__ = [
    "DEFENCES",
    "AdversarialTraining",
    "Defence",
    "IBPTraining",
    "craft_fgsm",
    "craft_pgd",
    "worst_case_logits",
]

DEFENCES: tuple[str, ...] = ("none", "fgsm-at", "pgd-at", "ibp")
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
        if self.kind not in ("fgsm-at", "pgd-at"):
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


def worst_case_logits(chain: Chain, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``-m(x, eps)``: minus IBP's margin lower bounds, ``-(z_y - z_k)`` at its worst over
    the eps-box, 0 at ``k = y``; differentiable in the model's parameters.

    Cross-entropy of these logits bounds the cross-entropy at every point of the box from
    above (it grows as every ``z_k - z_y`` grows), which is what IBP training minimises.

    Args:
        chain: the model read by :func:`advls.certify.extract`.
        x: ``(N, ...)`` inputs in [0, 1].
        y: ``(N,)`` labels.
        eps: the L-inf radius (0 gives the clean logits shifted by ``-z_y``).

    Returns:
        ``(N, K)`` float32 logits.
    """
    bounds = chain_margin_bounds(chain, x, y, eps, "ibp")
    at_label = torch.nn.functional.one_hot(y, chain.num_classes).bool()
    return -bounds.masked_fill(at_label, 0.0).float()


@dataclass
class IBPTraining:
    """Gowal et al.'s interval-bound training; ``loss(model, x, y, criterion)`` per step.

    ``step`` counts the steps taken (the schedule's clock): a resumed run sets it to the
    steps of the epochs already done.

    Attributes:
        eps: the target L-inf radius in (0, 1].
        kappa: the clean loss's final weight in [0, 1] (Gowal et al.: 0.5).
        warmup_steps: steps at ``eps_t = 0``, ``kappa_t = 1`` before the ramp.
        ramp_steps: steps over which ``eps_t`` rises to ``eps`` and ``kappa_t`` falls to
            ``kappa`` (at least 1).
        step: steps taken so far.
    """

    eps: float
    kappa: float = 0.5
    warmup_steps: int = 0
    ramp_steps: int = 1
    step: int = 0
    _chain: Chain | None = field(default=None, repr=False, compare=False)
    _model: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"the defence's eps must be in (0, 1], got {self.eps}")
        if not 0.0 <= self.kappa <= 1.0:
            raise ValueError(f"kappa must be in [0, 1], got {self.kappa}")
        if self.warmup_steps < 0 or self.ramp_steps < 1 or self.step < 0:
            raise ValueError(
                "warmup_steps and step must be >= 0 and ramp_steps >= 1, got "
                f"{self.warmup_steps}, {self.ramp_steps}, {self.step}"
            )

    def schedule(self, step: int) -> tuple[float, float]:
        """``(eps_t, kappa_t)`` at ``step``: (0, 1) through the warm-up, linear over the ramp
        (``eps_t = eps`` and ``kappa_t = kappa`` once ``ramp_steps`` have passed), then fixed."""
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / self.ramp_steps))
        return self.eps * progress, 1.0 - (1.0 - self.kappa) * progress

    def chain(self, model: nn.Module, x: Tensor) -> Chain:
        """The model read once as a chain (its operations hold the live parameters)."""
        if self._chain is None or self._model != id(model):
            self._chain, self._model = extract(model, x), id(model)
        return self._chain

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, criterion: Criterion
    ) -> tuple[Tensor, Tensor]:
        """The training loss at this step (and the clean logits); advances the schedule."""
        eps, kappa = self.schedule(self.step)
        self.step += 1
        logits = model(x)
        loss = criterion(logits, y)
        if kappa == 1.0:
            return loss, logits
        chain = self.chain(model, x)
        with torch.autocast(x.device.type, enabled=False):
            worst = worst_case_logits(chain, x.float(), y, eps)
        return kappa * loss + (1.0 - kappa) * criterion(worst, y), logits


#: What ``train`` and ``train_epoch`` accept as a defence.
Defence = AdversarialTraining | IBPTraining
