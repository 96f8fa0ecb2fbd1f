"""CROWN (Zhang et al. 2018): linear bounds propagated backward from the specification.

A specification ``a·f(x)`` (rows of ``C``) is moved back through the chain one operation at
a time. An affine operation moves it exactly (:func:`~advls.certify.ibp.linear_backward`);
a non-linear one is replaced by linear functions that bound it below and above on the box
of its inputs, the lower one where the coefficient is positive and the upper one where it is
negative, so the sum stays a lower bound. At the input, the box closes the bound by taking
per coordinate the end that minimises it (:func:`~advls.certify.ibp.concretize`). Upper
bounds are lower bounds of ``-a``.

The non-linear operations need bounds on their inputs (the pre-activation bounds):
``crown-ibp`` takes them from IBP; full ``crown`` computes each with CROWN itself (the
specification is the identity on that layer's neurons), layer after layer, and keeps the
tighter of that and IBP at every neuron (both are sound, so their intersection is). Only the
neurons whose bounds a relaxation reads are bounded by CROWN, and none where IBP is already
exact (:func:`pre_activation_bounds`).

**Relaxations.** ReLU (:class:`ReluRelaxation`): exact where stable; where ``l < 0 < u``,
the upper line ``u (x - l) / (u - l)`` and the lower line ``a x``, ``a = 1`` if ``u >= -l``
else 0 (the adaptive choice). Max pooling: :class:`PoolRelaxation`, with its proof.

Everything runs in float64 (the callers convert), and every bound closed at the input is
lowered by :data:`~advls.certify.ibp.FLOAT64_MARGIN` times the magnitudes that entered it.
Examples and functionals run in chunks of at most :data:`CHUNK_ELEMENTS` coordinates at the
widest layer, which bounds memory whatever the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advls.certify.graph import LinearOp, MaxPool, Op, ReLU, Reshape, Scale
from advls.certify.ibp import concretize, interval, linear_backward

__all__ = [
    "CHUNK_ELEMENTS",
    "PoolRelaxation",
    "Relaxation",
    "ReluRelaxation",
    "backward",
    "pre_activation_bounds",
    "relax",
    "spec_bounds",
]

#: How many coordinates the functionals of one backward pass may hold at the widest layer;
#: more examples or functionals run in chunks. In float64, 2^18 is 2 MiB per tensor, which
#: stays in cache: on lenet-mnist full CROWN runs 1.3x faster than with 2^20 and 2x faster
#: than with 2^22 (and bounds memory whatever the batch).
CHUNK_ELEMENTS = 2**18


# --------------------------------------------------------------------------- relaxations
@dataclass(frozen=True)
class ReluRelaxation:
    """Linear bounds of a ReLU on the box of its inputs (one set per example).

    ``lower_slope * z <= relu(z) <= upper_slope * z + upper_shift`` for every ``z`` in
    ``[l, u]``: both exact where the neuron is stable; where ``l < 0 < u``, the upper line is
    the chord ``u (z - l) / (u - l)`` (a chord lies above a convex function between its ends)
    and the lower one ``a z`` with ``a`` in {0, 1} (``relu(z) >= 0`` and ``relu(z) >= z``),
    ``a = 1`` when ``u >= -l`` (the choice with the smaller area).
    """

    lower_slope: Tensor
    upper_slope: Tensor
    upper_shift: Tensor

    @staticmethod
    def of(lower: Tensor, upper: Tensor) -> ReluRelaxation:
        """The relaxation for input bounds ``(N, *shape)``."""
        lower, upper = lower.unsqueeze(1), upper.unsqueeze(1)  # broadcast over functionals
        unstable = (lower < 0) & (upper > 0)
        active = (lower >= 0).to(lower.dtype)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        upper_slope = torch.where(unstable, upper / width, active)
        upper_shift = torch.where(unstable, -upper_slope * lower, torch.zeros_like(lower))
        lower_slope = torch.where(unstable, (upper >= -lower).to(lower.dtype), active)
        return ReluRelaxation(lower_slope, upper_slope, upper_shift)

    def select(self, examples: slice) -> ReluRelaxation:
        """The relaxation of some examples only."""
        return ReluRelaxation(
            self.lower_slope[examples], self.upper_slope[examples], self.upper_shift[examples]
        )

    def backward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(a', c)`` with ``a·relu(z) >= a'·z + c`` on the box, for ``a`` of shape
        ``(B, S, *shape)``: the lower line where ``a > 0``, the upper one where ``a < 0``."""
        positive, negative = a.clamp(min=0), a.clamp(max=0)
        moved = positive * self.lower_slope + negative * self.upper_slope
        return moved, (negative * self.upper_shift).flatten(2).sum(-1)


def _windows(op: MaxPool, t: Tensor) -> Tensor:
    """Each pooling window's values: ``(N, C, k, L)`` for ``(N, C, H, W)`` inputs.

    Padding counts as minus infinity (as in ``F.max_pool2d``); with ``ceil_mode`` the last
    windows reach past the input and are padded the same way.
    """
    batch, channels = t.shape[:2]
    out_h, out_w = op.out_shape[1:]
    (kh, kw), (sh, sw), (dh, dw) = op.kernel, op.stride, op.dilation
    padded = F.pad(t, op.pads(), value=-math.inf)
    flat = padded.reshape(batch * channels, 1, *padded.shape[2:])
    columns = F.unfold(flat, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    # unfold can see windows past the last one max pooling takes: keep the first out_h x out_w.
    rows = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    columns = columns.view(batch * channels, kh * kw, rows, cols)[:, :, :out_h, :out_w]
    return columns.reshape(batch, channels, kh * kw, out_h * out_w)


def _positions(op: MaxPool, device: torch.device) -> Tensor:
    """For each window slot, the flat index ``h * W + w`` of the input it reads, ``(k, L)``;
    padding reads -1 (its bounds are minus infinity, so no relaxation ever selects it)."""
    height, width = op.in_shape[1:]
    index = torch.arange(height * width, dtype=torch.float64, device=device)
    windows = _windows(op, index.view(1, 1, height, width))[0, 0]
    return torch.where(torch.isfinite(windows), windows, -1.0).long()


@dataclass(frozen=True)
class PoolRelaxation:
    """Linear bounds of max pooling on the box of its inputs (one set per example).

    For one window with inputs ``z_i`` in ``[l_i, u_i]`` and output ``m = max_i z_i``:

    * **Lower:** ``m >= z_j`` with ``j = argmax_i l_i``. Sound because a maximum is at least
      each of its terms.
    * **Upper:** let ``k = argmax_i u_i`` and ``U = max_{i != k} u_i`` (the second largest
      upper bound). Every ``z_i`` with ``i != k`` is at most ``U``, so
      ``m <= max(z_k, U) = U + relu(z_k - U)``, where ``z_k - U`` lies in
      ``[l_k - U, u_k - U]``. If ``l_k >= U``, ``m = z_k`` exactly (``z_k`` dominates the
      window). Otherwise ``l_k - U < 0 <= u_k - U`` and the chord of that ReLU over its
      interval bounds it above (a chord lies above a convex function between its ends):
      ``m <= U + (u_k - U) (z_k - l_k) / (u_k - l_k)``. On the box this line never exceeds
      the constant bound ``max_i u_i = u_k`` and meets it only at ``z_k = u_k``: it is at
      least as tight, and exact when one input dominates.

    ``low_at``/``high_at`` are the flat input positions ``j`` and ``k`` per window
    ``(N, C, L)``; the upper line is ``slope * z_k + shift``.
    """

    op: MaxPool
    low_at: Tensor
    high_at: Tensor
    slope: Tensor
    shift: Tensor

    @staticmethod
    def of(op: MaxPool, lower: Tensor, upper: Tensor) -> PoolRelaxation:
        """The relaxation for input bounds ``(N, C, H, W)``."""
        low, high = _windows(op, lower), _windows(op, upper)  # (N, C, k, L)
        pick_low = low.argmax(dim=2)  # (N, C, L)
        if high.shape[2] > 1:
            top, order = high.topk(2, dim=2)
            top_u, runner_up, pick_high = top[:, :, 0], top[:, :, 1], order[:, :, 0]
        else:
            top_u, pick_high = high[:, :, 0], torch.zeros_like(pick_low)
            runner_up = torch.full_like(top_u, -math.inf)
        low_k = low.gather(2, pick_high.unsqueeze(2)).squeeze(2)
        dominated = low_k >= runner_up
        ones = torch.ones_like(top_u)
        runner_up = torch.where(dominated, low_k, runner_up)  # finite wherever it is used
        slope = torch.where(
            dominated, ones, (top_u - runner_up) / torch.where(dominated, ones, top_u - low_k)
        )
        shift = torch.where(dominated, torch.zeros_like(top_u), runner_up - slope * low_k)
        positions = _positions(op, lower.device)  # (k, L)
        windows = pick_low.shape[-1]
        low_at = positions.gather(0, pick_low.reshape(-1, windows)).view_as(pick_low)
        high_at = positions.gather(0, pick_high.reshape(-1, windows)).view_as(pick_high)
        return PoolRelaxation(op, low_at, high_at, slope, shift)

    def select(self, examples: slice) -> PoolRelaxation:
        """The relaxation of some examples only."""
        return PoolRelaxation(
            self.op, self.low_at[examples], self.high_at[examples], self.slope[examples],
            self.shift[examples],
        )  # fmt: skip

    def backward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(a', c)`` with ``a·maxpool(z) >= a'·z + c`` on the box, for ``a`` of shape
        ``(B, S, C, H', W')``: ``e_j`` where ``a > 0``, the upper line where ``a < 0``."""
        batch, channels, _ = self.low_at.shape
        specs = a.shape[1]
        a = a.reshape(a.shape[0], specs, channels, -1)  # (B, S, C, L)
        positive, negative = a.clamp(min=0), a.clamp(max=0)
        shape = (batch, specs, channels, -1)
        moved = a.new_zeros(batch, specs, channels, math.prod(self.op.in_shape[1:]))
        moved.scatter_add_(3, self.low_at.unsqueeze(1).expand(shape), positive.expand(shape))
        scaled = negative * self.slope.unsqueeze(1)
        moved.scatter_add_(3, self.high_at.unsqueeze(1).expand(shape), scaled)
        constant = (negative * self.shift.unsqueeze(1)).flatten(2).sum(-1)
        return moved.view(batch, specs, *self.op.in_shape), constant


Relaxation = ReluRelaxation | PoolRelaxation


def relax(op: Op, lower: Tensor, upper: Tensor) -> Relaxation:
    """The linear relaxation of the non-linear ``op`` on the box of its inputs."""
    if isinstance(op, ReLU):
        return ReluRelaxation.of(lower, upper)
    if isinstance(op, MaxPool):
        return PoolRelaxation.of(op, lower, upper)
    raise TypeError(f"no linear relaxation for {type(op).__name__}")


# --------------------------------------------------------------------------- backward pass
def backward(
    ops: Sequence[Op],
    a: Tensor,
    relaxations: Sequence[Relaxation | None],
    bias: Tensor | None = None,
    magnitude: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Move functionals of the chain's output back to its input.

    Args:
        ops: the chain (or a prefix of it).
        a: ``(B, S, *out_shape)`` functionals of the last operation's output, float64.
        relaxations: for each operation, its relaxation where it is non-linear.
        bias: ``(B, S)`` constants already picked up (default zero).
        magnitude: ``(B, S)`` their summed sizes (default zero).

    Returns:
        ``(a', c, |c|)``: ``a·f(x) >= a'·x + c`` for every input ``x`` whose intermediate
        values lie within the bounds the relaxations were made for, with the summed sizes
        of the constants (for rounding).
    """
    bias = a.new_zeros(a.shape[:2]) if bias is None else bias
    magnitude = torch.zeros_like(bias) if magnitude is None else magnitude
    for index in range(len(ops) - 1, -1, -1):
        op = ops[index]
        relaxation = relaxations[index]
        if isinstance(op, LinearOp):
            a, term = linear_backward(op, a)
        elif relaxation is not None:
            a, term = relaxation.backward(a)
        else:
            raise ValueError(f"no bounds for the input of {type(op).__name__} at '{op.name}'")
        bias, magnitude = bias + term, magnitude + term.abs()
    return a, bias, magnitude


def _widest(ops: Sequence[Op]) -> int:
    return max(max(math.prod(op.in_shape), math.prod(op.out_shape)) for op in ops)


def _steps(batch: int, specs: int, ops: Sequence[Op]) -> tuple[int, int]:
    """How many examples and functionals one backward pass takes: at most
    :data:`CHUNK_ELEMENTS` coordinates at the widest layer (at least one of each)."""
    widest = _widest(ops)
    per_spec = max(1, min(specs, CHUNK_ELEMENTS // widest))
    return max(1, min(batch, CHUNK_ELEMENTS // (per_spec * widest))), per_spec


def _select(relaxations: Sequence[Relaxation | None], examples: slice) -> list:
    return [None if r is None else r.select(examples) for r in relaxations]


def _linear_tail(ops: Sequence[Op]) -> int:
    """Where the trailing affine operations of ``ops`` start."""
    start = len(ops)
    while start and isinstance(ops[start - 1], LinearOp):
        start -= 1
    return start


def _tighten(
    ops: Sequence[Op],
    lower: Tensor,
    upper: Tensor,
    relaxations: Sequence[Relaxation | None],
    bounds: tuple[Tensor, Tensor],
    selected: Tensor,
) -> tuple[Tensor, Tensor]:
    """CROWN bounds of the ``selected`` outputs of ``ops``, intersected with ``bounds``.

    The functionals are the unit vectors ``±e_j`` of the selected neurons. Their way back
    through the trailing affine operations is the same for every example, so it is taken
    once for all neurons and each example's rows are gathered from it; the rest of the way
    is per example, in chunks of at most :data:`CHUNK_ELEMENTS` coordinates.
    """
    out_low, out_high = bounds
    batch, shape = out_low.shape[0], out_low.shape[1:]
    size = math.prod(shape)
    best_low = out_low.reshape(batch, size).clone()
    best_high = out_high.reshape(batch, size).clone()
    selected = selected.reshape(batch, size)
    counts = selected.sum(1)
    specs = int(counts.max())
    if specs == 0:
        return out_low, out_high
    # Each example's selected neurons first; rows past its count are padding.
    rows = selected.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :specs]
    valid = torch.arange(specs, device=rows.device).unsqueeze(0) < counts.unsqueeze(1)

    tail = _linear_tail(ops)
    eye = torch.eye(size, dtype=torch.float64, device=out_low.device).view(1, size, *shape)
    head, head_bias, _ = backward(ops[tail:], eye, [None] * (len(ops) - tail))
    head, head_bias = head[0], head_bias[0]  # (size, *shape at the tail's start), (size,)
    rest = ops[:tail]
    # Each chunk bounds m neurons both ways (+e_j and -e_j): 2m functionals.
    per_example, per_spec = _steps(batch, 2 * specs, ops)
    per_spec = max(1, per_spec // 2)
    for first in range(0, batch, per_example):
        examples = slice(first, first + per_example)
        relaxed = _select(relaxations, examples)
        for start in range(0, specs, per_spec):
            index = rows[examples, start : start + per_spec]
            a = head[index]  # (n, m, ...)
            constant = head_bias[index]
            a = torch.cat([a, -a], dim=1)
            constant = torch.cat([constant, -constant], dim=1)
            moved, bias, magnitude = backward(rest, a, relaxed, constant, constant.abs())
            bound = concretize(moved, bias, magnitude, lower[examples], upper[examples])
            count = index.shape[1]
            keep = valid[examples, start : start + per_spec]
            found_low = torch.where(keep, bound[:, :count], -math.inf)
            found_high = torch.where(keep, -bound[:, count:], math.inf)
            best_low[examples] = best_low[examples].scatter_reduce(1, index, found_low, "amax")
            best_high[examples] = best_high[examples].scatter_reduce(1, index, found_high, "amin")
    return best_low.view(batch, *shape), best_high.view(batch, *shape)


def _pool_candidates(op: MaxPool, lower: Tensor, upper: Tensor) -> Tensor:
    """The max pool's inputs whose bounds its relaxation can use: those that can be their
    window's maximum (``u_i >= max_j l_j``) in windows no input dominates."""
    batch, channels = lower.shape[:2]
    low, high = _windows(op, lower), _windows(op, upper)  # (N, C, k, L)
    floor = low.amax(dim=2, keepdim=True)
    if high.shape[2] > 1:
        top, order = high.topk(2, dim=2)
        low_k = low.gather(2, order[:, :, :1])
        open_window = low_k < top[:, :, 1:2]
    else:
        open_window = torch.zeros_like(floor, dtype=torch.bool)
    candidate = (high >= floor) & open_window & torch.isfinite(high)
    positions = _positions(op, lower.device)  # (k, L)
    flat = positions.clamp(min=0).reshape(1, 1, -1).expand(batch, channels, -1)
    mask = torch.zeros(batch, channels, math.prod(op.in_shape[1:]), device=lower.device)
    mask.scatter_reduce_(2, flat, candidate.flatten(2).to(mask.dtype), "amax")
    return mask.bool().view(lower.shape)


def _relevant(ops: Sequence[Op], index: int, lower: Tensor, upper: Tensor) -> tuple[Tensor, bool]:
    """Which inputs of the non-linear ``ops[index]`` CROWN should bound, and whether that
    covers every neuron whose bounds any later relaxation reads."""
    op = ops[index]
    if isinstance(op, MaxPool):
        return _pool_candidates(op, lower, upper), False
    following = index + 1
    while following < len(ops) and isinstance(ops[following], Reshape):
        following += 1
    if following < len(ops) and isinstance(ops[following], MaxPool):
        # The pool reads the values of every neuron this ReLU lets through.
        return upper > 0, True
    return (lower < 0) & (upper > 0), False


def pre_activation_bounds(
    ops: Sequence[Op], lower: Tensor, upper: Tensor, *, full: bool
) -> list[tuple[Tensor, Tensor] | None]:
    """Bounds on the input of every non-linear operation, by IBP or by CROWN itself.

    With ``full``, CROWN bounds the neurons whose bounds a relaxation reads (unstable ReLU
    inputs, the possible maxima of open pooling windows, or every live input of a ReLU that
    feeds a pool) and each keeps the tighter of CROWN's and IBP's bounds. CROWN is skipped
    where it cannot help: while the bounds are exact (the input's first coordinate-mixing
    affine layer, then elementwise maps, ReLUs and pools of exact bounds; CROWN through a
    ReLU or a pool with these relaxations gives back the image of its input bounds) and
    right after an operation whose inputs CROWN has already bounded in full.

    Args:
        ops: the chain.
        lower: ``(N, *input_shape)`` float64 lower ends of the input box.
        upper: the upper ends.
        full: CROWN's own bounds (intersected with IBP's) where True, IBP's alone where False.

    Returns:
        For each operation, ``(lower, upper)`` of its input where it is non-linear, else None.
    """
    return _relaxed(ops, lower, upper, full=full)[0]


def _relaxed(
    ops: Sequence[Op], lower: Tensor, upper: Tensor, *, full: bool
) -> tuple[list[tuple[Tensor, Tensor] | None], list[Relaxation | None]]:
    """:func:`pre_activation_bounds` and the relaxations made from them."""
    pre: list[tuple[Tensor, Tensor] | None] = [None] * len(ops)
    relaxations: list[Relaxation | None] = [None] * len(ops)
    low, high = lower, upper
    exact, mixed, covered = True, False, False
    for index, op in enumerate(ops):
        if isinstance(op, LinearOp):
            if not isinstance(op, Scale | Reshape):
                exact, mixed, covered = exact and not mixed, True, False
        else:
            if full and not exact and not covered:
                selected, covered = _relevant(ops, index, low, high)
                low, high = _tighten(ops[:index], lower, upper, relaxations, (low, high), selected)
            else:
                covered = covered and not isinstance(op, MaxPool)
            pre[index] = (low, high)
            relaxations[index] = relax(op, low, high)
        low, high = interval(op, low, high)
    return pre, relaxations


def spec_bounds(
    ops: Sequence[Op], lower: Tensor, upper: Tensor, spec: Tensor, *, full: bool
) -> Tensor:
    """Lower bounds of ``spec · f(x)`` over the input box, by CROWN.

    Args:
        ops: the chain.
        lower: ``(N, *input_shape)`` lower ends of the input box.
        upper: the upper ends.
        spec: ``(B, S, K)`` functionals of the output (``B`` is 1 or ``N``).
        full: full CROWN (pre-activation bounds by CROWN) or CROWN-IBP (by IBP).

    Returns:
        ``(N, S)`` float64 lower bounds.
    """
    lower, upper = lower.to(torch.float64), upper.to(torch.float64)
    _, relaxations = _relaxed(ops, lower, upper, full=full)
    spec = spec.to(torch.float64)
    batch, specs = lower.shape[0], spec.shape[1]
    per_example, per_spec = _steps(batch, specs, ops)
    parts = []
    for first in range(0, batch, per_example):
        examples = slice(first, first + per_example)
        relaxed = _select(relaxations, examples)
        rows = spec if spec.shape[0] == 1 else spec[examples]
        pieces = []
        for start in range(0, specs, per_spec):
            a = rows[:, start : start + per_spec]
            moved, bias, magnitude = backward(ops, a, relaxed)
            pieces.append(concretize(moved, bias, magnitude, lower[examples], upper[examples]))
        parts.append(torch.cat(pieces, dim=1))
    return torch.cat(parts)
