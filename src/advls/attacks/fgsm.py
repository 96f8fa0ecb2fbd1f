"""FGSM (Goodfellow et al. 2015): one step of size eps along the sign of the loss gradient."""

from __future__ import annotations

from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import LINF
from advls.attacks.gradient import ascend
from advls.attacks.objectives import LossFn, attack_loss

__all__ = ["fgsm"]


@register("fgsm")
def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
    eot_iter: int = 1,
) -> Tensor:
    """``clip(x + eps * sign(grad_x loss(model(x), y)), 0, 1)``.

    Args:
        eps: L-inf budget in [0, 1] pixel units.

    ``model_calls == 2`` (the gradient, then the final scoring).
    """
    objective = attack_loss(loss, **(smoothing or {}))
    one_step = {"geometry": LINF, "eps": eps, "steps": 1, "step_size": eps}
    return ascend(model, x, y, x.clone(), objective=objective, eot_iter=eot_iter, **one_step)
