"""Points of the certified input set, to check bounds against what the model really outputs.

A bound is sound when no point of the box ``[max(x - eps, 0), min(x + eps, 1)]`` takes a
logit or margin outside it. :func:`box_samples` draws the points such a check evaluates:
uniform points of the box, its vertices (where a linear piece of a ReLU network takes its
extremes) and the points PGD finds ascending cross-entropy and the margin loss (where an
unsound bound is most likely to be crossed).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls import attacks

__all__ = ["box_samples"]


def box_samples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    count: int,
    *,
    seed: int = 0,
    vertex_share: float = 0.2,
) -> Tensor:
    """``count`` points of each input's box: uniform ones, vertices and PGD's.

    Args:
        model: the classifier whose bounds are checked (PGD attacks it).
        x: ``(N, ...)`` inputs in [0, 1].
        y: ``(N,)`` labels.
        eps: L-inf radius in (0, 1].
        count: points per input, at least 3; the last two are PGD's (20 steps, 2 restarts)
            on cross-entropy and on the margin loss.
        seed: seeds the uniform draws, the vertices and PGD's restarts.
        vertex_share: the share of the random points that are vertices of the box.

    Returns:
        ``(N, count, ...)`` points, every one inside its input's box.

    Raises:
        ValueError: ``count`` below 3 or ``vertex_share`` outside [0, 1].
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 3:
        raise ValueError(f"count must be an integer of at least 3, got {count!r}")
    if not 0.0 <= vertex_share <= 1.0:
        raise ValueError(f"vertex_share must lie in [0, 1], got {vertex_share!r}")
    # Drawn on the CPU from one seeded generator, then moved: the same seed gives the same
    # points on every device.
    generator = torch.Generator().manual_seed(seed)
    x = x.detach().float()
    lower, upper = (x - eps).clamp(min=0.0).unsqueeze(1), (x + eps).clamp(max=1.0).unsqueeze(1)
    drawn = count - 2  # the last two are PGD's
    vertices = round(drawn * vertex_share)
    shape = (x.shape[0], drawn - vertices, *x.shape[1:])
    uniform = lower + (upper - lower) * torch.rand(shape, generator=generator).to(x.device)
    sides = torch.rand((x.shape[0], vertices, *x.shape[1:]), generator=generator) < 0.5
    sides = sides.to(x.device)
    corners = torch.where(sides, upper, lower)
    found = [
        attacks.pgd(model, x, y, eps=eps, steps=20, restarts=2, loss=loss, seed=seed).x_adv
        for loss in ("ce", "margin")
    ]
    return torch.cat([uniform, corners, torch.stack(found, dim=1)], dim=1)
