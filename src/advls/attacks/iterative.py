"""Iterative gradient attacks: BIM (Kurakin et al. 2017) and PGD (Madry et al. 2018).

Both repeat ``x <- proj(x + step * direction(grad_x loss))`` (:func:`ascend`). BIM is L-inf
only and starts at ``x``; PGD starts at a random point of the ball (L-inf or L2) and can
restart (:func:`restart`).

``model_calls``: one forward+backward per step (the first also checks the model's output)
and one final scoring of ``x_adv``, so BIM and single-run PGD cost ``steps + 1``. With
restarts, every run but the last scores its output (one more call) to find the examples
still to attack, so ``R`` runs cost ``R * (steps + 1)``; when every example is fooled before
the last run, the loop stops after ``r`` runs at ``1 + r * (steps + 1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import LINF, Norm, geometry
from advls.attacks.gradient import ascend
from advls.attacks.objectives import LossFn, attack_loss
from advls.attacks.restarts import restart
from advls.attacks.validation import make_generator

__all__ = ["bim", "pgd"]


@register("bim")
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
    eot_iter: int = 1,
) -> Tensor:
    """Basic iterative method (Kurakin et al.): iterated FGSM projected every step.

    ``x_{t+1} = clip_[0,1](x + clip(x_t + step_size * sign(grad) - x, -eps, eps))`` from
    ``x_0 = x``, with no random start.

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        steps: number of signed-gradient steps.
        step_size: absolute step; defaults to ``eps / steps`` (the ball's radius is reached
            exactly after ``steps`` steps in a constant direction). Kurakin et al. use
            ``1 / 255`` with ``min(eps * 255 + 4, 1.25 * eps * 255)`` steps; foolbox's default
            is ``0.2 * eps``: pass ``step_size`` to match them.

    ``model_calls == steps + 1`` (one per step, then the final scoring).
    """
    objective = attack_loss(loss, **(smoothing or {}))
    step = eps / steps if step_size is None else step_size
    return ascend(
        model, x, y, x.clone(), geometry=LINF, eps=eps, steps=steps, step_size=step,
        objective=objective, eot_iter=eot_iter,
    )  # fmt: skip


@register("pgd", norms=("linf", "l2"))
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
    eot_iter: int = 1,
    seed: int | torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent (Madry et al.), L-inf (sign step) or L2 (unit-gradient step).

    Each run starts at a uniform random point of the eps-ball (L-inf: uniform per
    coordinate; L2: Gaussian direction, radius ``eps * U^(1/d)``), clipped to [0, 1], and
    takes ``steps`` steps, projecting onto the ball and into [0, 1] after each. With
    ``restarts > 1`` only the examples not yet misclassified are attacked again; each example
    keeps the output of the first run that fooled it, or else that of the last run.

    Args:
        eps: budget in [0, 1] pixel units (at most 1 for L-inf).
        norm: ``linf`` or ``l2``.
        steps: steps per run.
        step_size: absolute step; defaults to ``2.5 * eps / steps`` (Madry et al.).
        restarts: number of random starts (>= 1). Without ``random_start`` every run would
            be the same, so only one runs.
        random_start: start at a random point of the ball (else at ``x``, which is BIM with
            this step size for L-inf).

    ``model_calls``: ``steps + 1`` for one run, ``R * (steps + 1)`` for ``R`` runs, or
    ``1 + r * (steps + 1)`` when all examples were fooled after ``r < restarts`` runs.
    """
    objective = attack_loss(loss, **(smoothing or {}))
    ball = geometry(norm)
    step = 2.5 * eps / steps if step_size is None else step_size
    generator = make_generator(seed, x.device) if random_start else None

    def run(xs: Tensor, ys: Tensor, last: bool) -> tuple[Tensor, Tensor | None, None]:
        start = ball.random_start(xs, eps, generator) if random_start else xs.clone()
        found = ascend(
            model, xs, ys, start, geometry=ball, eps=eps, steps=steps, step_size=step,
            objective=objective, eot_iter=eot_iter,
        )  # fmt: skip
        if last:
            return found, None, None
        with torch.no_grad():
            return found, model(found).argmax(dim=1) != ys, None

    return restart(run, x, y, restarts if random_start else 1)[0]
