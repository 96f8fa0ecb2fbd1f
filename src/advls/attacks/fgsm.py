"""FGSM (Goodfellow et al. 2015): one step of size eps along the sign of the loss gradient."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls.attacks.base import (
    AttackResult,
    CountingModel,
    LossFn,
    attack_loss,
    check_batch,
    check_eps,
    eval_mode,
    make_result,
)


def loss_gradient(model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
    """Gradient of the summed per-example ``loss`` with respect to the inputs."""
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(model(x), y).sum(), x)
    return grad


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
) -> AttackResult:
    """``clip(x + eps * sign(grad_x loss(model(x), y)), 0, 1)``.

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        loss: ``ce``, ``margin``, ``dlr``, ``smoothed`` or a callable (see ``attack_loss``).
        smoothing: for ``loss="smoothed"``: ``{"method": ..., "alpha": ..., "temperature": ...}``.
    """
    eps = check_eps(eps)
    objective = attack_loss(loss, **(smoothing or {}))
    with eval_mode(model):
        check_batch(x, y)
        counted = CountingModel(model, labels=y)
        grad = loss_gradient(counted, x, y, objective)
        x_adv = torch.sign(grad).mul_(eps).add_(x).clamp_(0.0, 1.0)
        return make_result(counted, x, x_adv, y)
