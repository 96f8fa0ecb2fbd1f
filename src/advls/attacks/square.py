"""Square attack (Andriushchenko et al. 2020): score-based L-inf random search, no gradients.

The model is only queried for its logits, under ``torch.no_grad()``: no backward pass ever
runs, so the attack is immune to gradient masking. It minimises the margin
``z_y - max_{k != y} z_k`` (an example is fooled once its prediction is not ``y``):

1. Start at vertical stripes: every column of every channel moves by ``+eps`` or ``-eps``
   (independent fair signs), clipped to [0, 1]. The start is taken whatever its loss.
2. Each iteration draws, per example still correctly classified, a square window of side
   ``h = max(round(sqrt(p * H * W)), 1)`` (at most ``min(H, W)``) at a uniform position,
   and sets the window to ``x + eps * s_c`` clipped to [0, 1], one fair sign ``s_c`` per
   channel. A sign vector that would leave the window as it is gets redrawn (as in the
   paper; vectorised: 32 draws at once, the first that changes the window is taken). The
   candidate replaces the current point only if it lowers the margin.
3. ``p`` follows the paper's schedule: ``p_init`` halved after iterations 10, 50, 200, 500,
   1000, 2000, 4000, 6000 and 8000 of a 10000-query budget, rescaled to ``queries``.

``queries`` is the budget of forward evaluations per example, the clean one included: one
forward over the batch at ``x`` (inputs misclassified there are successes and come back
unchanged), one at the stripes for the rest, then one per iteration over the examples not
yet fooled, until all are fooled or ``queries`` forwards have run. ``model_calls`` counts
these forward passes (each over the subset still attacked), so ``model_calls <= queries``
and no example is queried more than ``model_calls`` times. The result's success is read off
the logits of the accepted points, so there is no extra scoring pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advls.attacks.core import CountingModel, register
from advls.attacks.objectives import margin
from advls.attacks.validation import check_fraction, make_generator

__all__ = ["square"]

#: Iterations (of a 10000-query budget) after which ``p`` halves, from the paper's schedule.
_HALVINGS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: Sign vectors drawn at once per example; the first that changes the window is used.
_DRAWS = 32


def _fraction(p_init: float, iteration: int, budget: int) -> float:
    """The share ``p`` of the image the square covers at ``iteration`` of ``budget``."""
    rescaled = iteration * 10000 // budget  # exact: no float rounding at the boundaries
    return p_init / 2 ** sum(rescaled > boundary for boundary in _HALVINGS)


def _loss(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{k != y} z_k``: negative once another class outscores the label."""
    return -margin(logits, y)


def _window(top: Tensor, left: Tensor, side: int, height: int, width: int) -> Tensor:
    """A boolean (m, 1, H, W) mask of the ``side`` x ``side`` square at (top, left) per row."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _signs(
    x: Tensor, current: Tensor, mask: Tensor, eps: float, generator: torch.Generator | None
) -> Tensor:
    """Per-channel signs (m, C) that change the window, drawn uniformly among those that do.

    The window of channel ``c`` stays as it is when its current values already equal
    ``clip(x + s_c * eps)`` everywhere in it; a sign vector leaves the whole window unchanged
    when that holds in every channel. Of ``_DRAWS`` fair draws, the first that changes the
    window is kept (rejection sampling, truncated: for ``eps > 0`` at most one sign vector
    of the ``2^C`` leaves a window unchanged, so all draws fail with probability
    ``<= 2^-32``; then the first draw is used and the query is spent on no change).
    """
    m, channels = x.shape[:2]
    outside = ~mask
    up = ((x + eps).clamp(0.0, 1.0) == current) | outside
    down = ((x - eps).clamp(0.0, 1.0) == current) | outside
    keeps_up = up.flatten(2).all(dim=2)  # (m, C): +eps leaves channel c's window as it is
    keeps_down = down.flatten(2).all(dim=2)
    draws = torch.randint(0, 2, (m, _DRAWS, channels), generator=generator, device=x.device)
    positive = draws.bool()
    keeps = torch.where(positive, keeps_up[:, None], keeps_down[:, None]).all(dim=2)
    first = (~keeps).to(torch.uint8).argmax(dim=1)  # 0 when every draw keeps the window
    chosen = positive[torch.arange(m, device=x.device), first]
    return chosen.to(x.dtype).mul_(2.0).sub_(1.0)


@register("square")
def square(
    model: CountingModel,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    queries: int = 1000,
    p_init: float = 0.8,
    seed: int | torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Square attack, L-inf, untargeted, margin loss (see the module docstring).

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        queries: forward evaluations per example, the clean one included (>= 1). With
            ``queries=1`` (or ``eps=0``) only the clean predictions are taken and
            ``x_adv == x``.
        p_init: share of the image the first squares cover, in (0, 1]; halved on the
            schedule above.

    Inputs must be images ``(N, C, H, W)``. ``model_calls``: forward passes, each over the
    examples still attacked; at most ``queries``.
    """
    p_init = check_fraction(p_init, "p_init", one=True)
    if x.dim() != 4:
        raise ValueError(f"square needs image inputs x of shape (N, C, H, W), got {tuple(x.shape)}")
    with torch.no_grad():
        logits = model(x).detach().clone()  # the best logits per example so far
        x_best = x.clone()
        active = (logits.argmax(dim=1) == y).nonzero().squeeze(1)
        if eps == 0.0 or queries == 1 or active.numel() == 0:
            return x_best, logits

        generator = make_generator(seed, x.device)
        channels, height, width = x.shape[1:]
        options = {"generator": generator, "device": x.device}

        # The stripes start: one sign per column and channel, taken whatever its loss.
        xs = x[active]
        stripes = torch.randint(0, 2, (active.numel(), channels, 1, width), **options)
        start = (xs + stripes.to(x.dtype).mul_(2.0).sub_(1.0).mul_(eps)).clamp_(0.0, 1.0)
        found = model(start)
        x_best[active] = start
        logits[active] = found
        loss = torch.full((x.shape[0],), math.inf, dtype=found.dtype, device=x.device)
        loss[active] = _loss(found, y[active])
        active = active[found.argmax(dim=1) == y[active]]

        iteration = 0
        while model.calls < queries and active.numel():
            p = _fraction(p_init, iteration, queries)
            side = max(round(math.sqrt(p * height * width)), 1)
            side = min(side, height, width)
            m = active.numel()
            xs, current = x[active], x_best[active]
            top = torch.randint(0, height - side + 1, (m,), **options)
            left = torch.randint(0, width - side + 1, (m,), **options)
            mask = _window(top, left, side, height, width)
            signs = _signs(xs, current, mask, eps, generator)
            values = (xs + eps * signs[:, :, None, None]).clamp_(0.0, 1.0)
            candidate = torch.where(mask, values, current)

            found = model(candidate)
            new_loss = _loss(found, y[active])
            better = new_loss < loss[active]
            improved = active[better]
            x_best[improved] = candidate[better]
            logits[improved] = found[better]
            loss[improved] = new_loss[better]
            fooled = better & (found.argmax(dim=1) != y[active])
            active = active[~fooled]
            iteration += 1

        return x_best, logits
