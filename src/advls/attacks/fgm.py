"""FGM (Miyato et al. 2017; Goodfellow et al.'s L2 variant): one step of L2 length eps.

The fast gradient *method* moves every input by ``eps`` along its normalised loss gradient,
``x + eps * grad / ||grad||_2``, then into [0, 1] (which can only shorten the step). It is
FGSM with the L2 geometry, and equals foolbox 3's ``L2FastGradientAttack``; with
``random_start`` the step is taken from a uniform point of the ball and projected back, as
foolbox's does with its ``random_start``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import L2
from advls.attacks.gradient import ascend
from advls.attacks.objectives import LossFn, attack_loss
from advls.attacks.validation import make_generator

__all__ = ["fgm"]


@register("fgm", norms=("l2",))
def fgm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    random_start: bool = False,
    seed: int | torch.Generator | None = None,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
    eot_iter: int = 1,
) -> Tensor:
    """``clip(x + eps * grad / ||grad||_2, 0, 1)`` with ``grad = grad_x loss(model(x), y)``.

    Args:
        eps: L2 budget in [0, 1] pixel units (any size: an L2 ball may exceed the box).
        random_start: step from a uniform random point of the eps-ball instead of ``x``,
            then project back onto the ball.

    An input whose gradient is zero does not move. ``model_calls == 2``.
    """
    objective = attack_loss(loss, **(smoothing or {}))
    start = L2.random_start(x, eps, make_generator(seed, x.device)) if random_start else x.clone()
    one_step = {"geometry": L2, "eps": eps, "steps": 1, "step_size": eps}
    return ascend(model, x, y, start, objective=objective, eot_iter=eot_iter, **one_step)
