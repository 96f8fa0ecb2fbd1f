"""Square attack (Andriushchenko et al. 2020): score-based L-inf and L2 random search.

The model is only queried for its logits, under ``torch.no_grad()``: no backward pass ever
runs, so the attack is immune to gradient masking. It minimises the margin
``z_y - max_{k != y} z_k`` (an example is fooled once its prediction is not ``y``). Each
iteration proposes one candidate per example still correctly classified; the candidate
replaces the current point only if it lowers the margin.

L-inf (the paper's Algorithm 2):

1. Start at vertical stripes: every column of every channel moves by ``+eps`` or ``-eps``
   (independent fair signs), clipped to [0, 1]. The start is taken whatever its loss.
2. Each iteration draws, per example, a square window of side
   ``h = max(round(sqrt(p * H * W)), 1)`` (at most ``min(H, W)``) at a uniform position,
   and sets the window to ``x + eps * s_c`` clipped to [0, 1], one fair sign ``s_c`` per
   channel. A sign vector that would leave the window as it is gets redrawn (as in the
   paper; vectorised: 32 draws at once, the first that changes the window is taken).

L2 (the paper's Algorithm 3 with its L2 update, as AutoAttack's ``square.py`` runs it):

1. The meta-pseudo-Gaussian window ``eta(s)`` of side ``s``: ``M(r, c)`` is the ``r x c``
   matrix with entry ``sum_{k=d}^{n} 1/(k+1)^2``, where ``d`` is the Chebyshev distance of
   the entry to the centre ``(r // 2, c // 2)`` and ``n = max(r, c) // 2``. ``eta(s)`` stacks
   ``M(s // 2, s)`` over ``-M(s - s // 2, s)``, each half scaled to unit L2 norm, and the
   whole to unit L2 norm; it is transposed with probability 1/2 (a left/right split).
2. Start at a grid of such windows: tiles of side ``t = max(min(H, W) // 5, 1)``,
   ``H // t`` by ``W // t`` of them, centred (for 28 x 28 MNIST: 5 x 5 tiles of side 5 from
   pixel 1), each ``eta(t)`` times a fair sign per channel; the whole perturbation is scaled
   to L2 norm ``eps`` and the point clipped to [0, 1]. It is taken whatever its loss.
3. Each iteration draws, per example, two windows of odd side
   ``s = max(round(sqrt(p * H * W)), 3)`` (made odd by adding one, at most ``min(H, W)``) at
   uniform positions. With ``delta`` the current perturbation, per channel ``c``: the first
   window becomes ``eta(s) * s_c + delta_c[w1] / ||delta_c[w1]||`` (a fair sign ``s_c``),
   rescaled to norm ``sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_c[w1 u w2]||^2)``: the
   mass both windows held plus an equal share of whatever the clipping left of the budget;
   the second window is zeroed (the mass moves from it to the first). Then the whole
   perturbation is re-normalised to L2 norm ``eps`` and the point clipped to [0, 1]. (When
   both windows lie where the perturbation is zero and clipping left no budget spare, the
   candidate is the current point: as in the reference, that query changes nothing.)

``p`` follows the paper's schedule: ``p_init`` halved after iterations 10, 50, 200, 500,
1000, 2000, 4000, 6000 and 8000 of a 10000-query budget. With ``rescale_schedule`` (the
default) the boundaries are rescaled to ``queries``, so the squares shrink to the same
smallest size whatever the budget; without it the iteration count is read against the
10000-query boundaries as it is (AutoAttack's ``resc_schedule=False``: at 5000 queries ``p``
stops at ``p_init / 128``).

``queries`` is the budget of forward evaluations per example, the clean one included: one
forward over the batch at ``x`` (inputs misclassified there are successes and come back
unchanged), one at the start for the rest, then one per iteration over the examples not
yet fooled, until all are fooled or ``queries`` forwards have run. ``model_calls`` counts
these forward passes (each over the subset still attacked), so ``model_calls <= queries``
and no example is queried more than ``model_calls`` times. The result's success is read off
the logits of the accepted points, so there is no extra scoring pass. (AutoAttack's
``n_queries`` counts iterations only: its ``n_queries=5000`` is ``queries=5002`` here.)

Differences from AutoAttack's code, both following the paper: every example draws its own
window positions and its own ``eta`` orientation (AutoAttack draws one for the batch per
iteration), and positions range over all ``H - s + 1`` rows (AutoAttack never picks the
last).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from advls.attacks.core import CountingModel, register
from advls.attacks.geometry import Norm
from advls.attacks.objectives import margin
from advls.attacks.validation import check_fraction, make_generator

__all__ = ["square"]

#: Iterations (of a 10000-query budget) after which ``p`` halves, from the paper's schedule.
_HALVINGS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: The budget the schedule is written for; the iteration is read against it when not rescaled.
_SCHEDULE_BUDGET = 10000
#: Sign vectors drawn at once per example; the first that changes the window is used.
_DRAWS = 32
#: Added to L2 norms before dividing by them, as the reference does, so zero stays zero.
_TINY = 1e-12
#: The contract's relative slack for an L2 norm beyond ``eps`` (``geometry._ROUNDING``).
_ROUNDING = 1e-6
#: The L2 start's tiles: about this many along the shorter side.
_TILES = 5
#: The L2 windows are at least this wide (an odd side: the meta-pseudo-Gaussian has a centre).
_MIN_L2_SIDE = 3

#: One iteration's proposal: ``(x, current, p) -> candidate`` for the examples still attacked.
Proposal = Callable[[Tensor, Tensor, float], Tensor]


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


def _fair_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Independent fair signs +-1 of ``shape``, in ``like``'s dtype and device."""
    draws = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return draws.to(like.dtype).mul_(2.0).sub_(1.0)


# --------------------------------------------------------------------------- L-inf
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


def _stripes(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """The L-inf start: one sign per column and channel, ``x + eps * sign`` clipped."""
    channels, width = x.shape[1], x.shape[3]
    stripes = _fair_signs((x.shape[0], channels, 1, width), generator, x)
    return (x + stripes.mul_(eps)).clamp_(0.0, 1.0)


def _linf_proposal(eps: float, generator: torch.Generator | None) -> Proposal:
    """The L-inf step: one square per example set to ``x + eps * s_c``, signs that change it."""

    def propose(xs: Tensor, current: Tensor, p: float) -> Tensor:
        m, _, height, width = xs.shape
        side = max(round(math.sqrt(p * height * width)), 1)
        side = min(side, height, width)
        options = {"generator": generator, "device": xs.device}
        top = torch.randint(0, height - side + 1, (m,), **options)
        left = torch.randint(0, width - side + 1, (m,), **options)
        mask = _window(top, left, side, height, width)
        signs = _signs(xs, current, mask, eps, generator)
        values = (xs + eps * signs[:, :, None, None]).clamp_(0.0, 1.0)
        return torch.where(mask, values, current)

    return propose


# --------------------------------------------------------------------------- L2
def _rectangle(rows: int, cols: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``M(rows, cols)`` scaled to unit L2 norm (empty when ``rows == 0``).

    Entry ``(i, j)`` is ``sum_{k=d}^{n} 1/(k+1)^2`` with ``d = max(|i - rows // 2|,
    |j - cols // 2|)`` and ``n = max(rows, cols) // 2``: nested rectangles around the centre,
    the ``k``-th adding ``1/(k+1)^2``, so the mass falls off like a Gaussian's.
    """
    terms = max(rows, cols) // 2 + 1
    weights = torch.arange(1, terms + 1, dtype=torch.float64, device=device).pow_(-2.0)
    tails = weights.flip(0).cumsum(0).flip(0)  # tails[d] = sum_{k >= d} 1/(k+1)^2
    i = (torch.arange(rows, device=device) - rows // 2).abs()
    j = (torch.arange(cols, device=device) - cols // 2).abs()
    values = tails[torch.maximum(i[:, None], j[None, :])]
    return values.div_(values.norm().clamp_min_(_TINY)).to(dtype)


def _eta(
    side: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """The L2 Square attack's ``side`` x ``side`` window ``eta`` (unit L2 norm, not transposed).

    The top ``side // 2`` rows are ``M(side // 2, side)`` and the other rows
    ``-M(side - side // 2, side)``, each half at unit norm before the whole is scaled to unit
    norm (see :func:`_rectangle` and the module docstring): positive above, negative below.
    """
    device = torch.device(device)
    top = _rectangle(side // 2, side, dtype=torch.float64, device=device)
    bottom = _rectangle(side - side // 2, side, dtype=torch.float64, device=device)
    window = torch.cat([top, bottom.neg_()])
    return window.div_(window.norm().clamp_min_(_TINY)).to(dtype)


def _orientations(side: int, like: Tensor) -> Tensor:
    """``eta(side)`` and its transpose, (2, side, side), in ``like``'s dtype and device."""
    window = _eta(side, dtype=like.dtype, device=like.device)
    return torch.stack([window, window.t()])


def _oriented(both: Tensor, count: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """``count`` copies (count..., side, side) of ``both[0]``, each transposed with prob. 1/2."""
    flips = torch.randint(0, 2, count, generator=generator, device=both.device)
    return both[flips]


def _l2_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """The L2 start: a centred grid of ``eta`` tiles with per-channel signs, at norm ``eps``."""
    m, channels, height, width = x.shape
    side = max(min(height, width) // _TILES, 1)
    rows, cols = height // side, width // side
    tiles = _oriented(_orientations(side, x), (m, 1, rows, cols), generator)  # one a tile
    tiles = tiles * _fair_signs((m, channels, rows, cols, 1, 1), generator, x)
    grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(m, channels, rows * side, cols * side)
    delta = torch.zeros_like(x)
    top, left = (height - rows * side) // 2, (width - cols * side) // 2
    delta[:, :, top : top + rows * side, left : left + cols * side] = grid
    return _at_budget(x, delta, eps)


def _at_budget(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    """``x + eps * delta / ||delta||_2`` clipped to [0, 1]: the budget re-normalisation.

    Rounding ``x + delta`` to floats can put a point a hair outside the ball (about 1e-8 in
    norm, which is more than the contract's relative 1e-6 for small ``eps``); such rows are
    pulled back radially to ``eps (1 - slack)``, the slack doubling until they are inside
    (at slack 1 the row is ``x`` itself), so the contract never has to project and re-score.
    """
    norm = delta.flatten(1).norm(dim=1).add_(_TINY)
    point = (x + delta * (eps / norm)[:, None, None, None]).clamp_(0.0, 1.0)
    limit, slack = eps * (1.0 + _ROUNDING), _ROUNDING
    while True:
        size = (point - x).flatten(1).norm(dim=1)
        beyond = size > limit
        if not bool(beyond.any()):
            return point
        scale = (eps * max(1.0 - slack, 0.0) / size[beyond])[:, None, None, None]
        point[beyond] = (x[beyond] + (point[beyond] - x[beyond]) * scale).clamp_(0.0, 1.0)
        slack *= 2.0


def _l2_side(p: float, height: int, width: int) -> int:
    """The L2 window's side: ``round(sqrt(p H W))``, at least 3, odd, at most ``min(H, W)``."""
    side = max(round(math.sqrt(p * height * width)), _MIN_L2_SIDE)
    side += 1 - side % 2
    return min(side, height, width)


def _l2_proposal(eps: float, generator: torch.Generator | None) -> Proposal:
    """The L2 step: move a window's mass into another, add ``eta``, re-normalise to ``eps``."""

    windows: dict[int, Tensor] = {}  # eta and its transpose by side: a side lasts many steps

    def propose(xs: Tensor, current: Tensor, p: float) -> Tensor:
        m, channels, height, width = xs.shape
        side = _l2_side(p, height, width)
        if side not in windows:
            windows[side] = _orientations(side, xs)
        options = {"generator": generator, "device": xs.device}
        top, top2 = torch.randint(0, height - side + 1, (2, m), **options)
        left, left2 = torch.randint(0, width - side + 1, (2, m), **options)
        delta = current - xs
        image_norm = delta.flatten(1).norm(dim=1)  # (m,)
        first = _window(top, left, side, height, width)
        second = _window(top2, left2, side, height, width)
        held = delta.where(first | second, 0.0).flatten(2).norm(dim=2)  # (m, C)

        # The first window's pixels as (m, C, side * side), by flat index into H * W.
        span = torch.arange(side, device=xs.device)
        flat = ((top[:, None] + span) * width)[:, :, None] + (left[:, None] + span)[:, None]
        index = flat.flatten(1)[:, None].expand(m, channels, side * side)
        old = delta.flatten(2).gather(2, index)
        new = _oriented(windows[side], (m, 1), generator).flatten(2)
        new = new * _fair_signs((m, channels, 1), generator, xs)
        new += old / old.norm(dim=2, keepdim=True).add_(_TINY)
        left_over = (eps**2 - image_norm**2).clamp_(min=0.0) / channels
        target = (left_over[:, None] + held**2).sqrt_()
        new *= (target / new.norm(dim=2).add_(_TINY))[:, :, None]

        moved = delta.masked_fill_(second, 0.0).flatten(2).scatter_(2, index, new)
        return _at_budget(xs, moved.view_as(xs), eps)

    return propose


# --------------------------------------------------------------------------- the attack
@register("square", norms=("linf", "l2"))
def square(
    model: CountingModel,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    queries: int = 1000,
    p_init: float = 0.8,
    rescale_schedule: bool = True,
    seed: int | torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Square attack, L-inf or L2, untargeted, margin loss (see the module docstring).

    Args:
        eps: the budget in [0, 1] pixel units: L-inf (at most 1) or L2.
        norm: ``linf`` (squares of +-eps) or ``l2`` (meta-pseudo-Gaussian windows).
        queries: forward evaluations per example, the clean one included (>= 1). With
            ``queries=1`` (or ``eps=0``) only the clean predictions are taken and
            ``x_adv == x``.
        p_init: share of the image the first squares cover, in (0, 1]; halved on the
            schedule above.
        rescale_schedule: rescale the schedule's boundaries to ``queries`` (the default, so
            any budget ends on the smallest squares); ``False`` keeps the 10000-query
            boundaries, as AutoAttack's standard version does.

    Inputs must be images ``(N, C, H, W)``. ``model_calls``: forward passes, each over the
    examples still attacked; at most ``queries``.
    """
    p_init = check_fraction(p_init, "p_init", one=True)
    if not isinstance(rescale_schedule, bool):
        raise ValueError(f"rescale_schedule must be True or False, got {rescale_schedule!r}")
    if x.dim() != 4:
        raise ValueError(f"square needs image inputs x of shape (N, C, H, W), got {tuple(x.shape)}")
    with torch.no_grad():
        logits = model(x).detach().clone()  # the best logits per example so far
        x_best = x.clone()
        active = (logits.argmax(dim=1) == y).nonzero().squeeze(1)
        if eps == 0.0 or queries == 1 or active.numel() == 0:
            return x_best, logits

        generator = make_generator(seed, x.device)
        budget = queries if rescale_schedule else _SCHEDULE_BUDGET
        if norm == "linf":
            start, propose = _stripes, _linf_proposal(eps, generator)
        else:
            start, propose = _l2_start, _l2_proposal(eps, generator)

        # The start is taken whatever its loss.
        begin = start(x[active], eps, generator)
        found = model(begin)
        x_best[active] = begin
        logits[active] = found
        loss = torch.full((x.shape[0],), math.inf, dtype=found.dtype, device=x.device)
        loss[active] = _loss(found, y[active])
        active = active[found.argmax(dim=1) == y[active]]

        iteration = 0
        while model.calls < queries and active.numel():
            p = _fraction(p_init, iteration, budget)
            candidate = propose(x[active], x_best[active], p)

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
