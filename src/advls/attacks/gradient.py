"""Projected gradient ascent on the input: the loop under FGSM, FGM, BIM, PGD and the defences.

One forward and one backward pass per step, the gradient taken with respect to the input
only, then ``x <- project(x + step_size * direction(grad))`` in place, with the norm's hooks
(:mod:`advls.attacks.geometry`), as foolbox 3's ``BaseGradientDescent`` does: BIM equals its
``LinfBasicIterativeAttack`` given the same absolute step (to float rounding: foolbox
clips ``x + clip(x_t - x, -eps, eps)``, which rounds differently from the exact clamp).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls.attacks.geometry import Geometry
from advls.attacks.objectives import LossFn

__all__ = ["ascend", "input_gradient"]


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, objective: LossFn, eot_iter: int = 1
) -> Tensor:
    """Gradient of the summed per-example ``objective`` with respect to the inputs.

    With ``eot_iter > 1`` the mean of that many passes' gradients (expectation over
    transformation: a randomized model draws afresh at every forward pass).
    """
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(leaf), y).sum(), leaf)
        for _ in range(eot_iter - 1):
            grad.add_(torch.autograd.grad(objective(model(leaf), y).sum(), leaf)[0])
    return grad.div_(eot_iter) if eot_iter > 1 else grad


def ascend(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    *,
    geometry: Geometry,
    eps: float,
    steps: int,
    step_size: float,
    objective: LossFn,
    eot_iter: int = 1,
) -> Tensor:
    """``steps`` projected ascent steps from ``start`` (updated in place and returned).

    Each step's gradient is the mean of ``eot_iter`` passes' (see :func:`input_gradient`).
    No host synchronisation: the loop only queues kernels.
    """
    x_adv, project_ = start, geometry.projection(x, eps)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, objective, eot_iter)
        with torch.no_grad():
            project_(x_adv.add_(geometry.direction_(grad), alpha=step_size))
    return x_adv
