"""Interval bound propagation (Gowal et al. 2018), rounded outward so the bounds stay sound.

Each operation maps a box ``[lower, upper]`` of its inputs to a box holding all its outputs:

* an affine layer ``L x + b`` in centre/radius form, ``c' = L c + b`` and ``r' = |L| r``;
* the monotone ones (ReLU, max pooling) map the box's two ends; reshapes move them.

**Rounding.** The arithmetic runs in the working dtype (float32 for a float32 model: a
float64 convolution on a CPU costs 3.5x a float32 one) and is made sound for it, not only for
exact arithmetic. The standard floating-point model (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.1) bounds each rounding: one operation is off by at most ``u`` times
its result, and a sum of ``n`` products computed in any order by at most
``γ_n = n u / (1 - n u)`` times the sum of the products' magnitudes. For an affine layer with
fan-in ``n``, let ``M = |L| (|c| + r) + |b|`` (every magnitude that enters it). Then

1. the incoming box, once rounded to a centre ``c`` and radius ``r``, reaches at most
   ``2 u (|c| + r)`` beyond ``[c - r, c + r]``, which ``|L|`` maps to at most ``2 u M``;
2. the computed ``L c + b`` and ``|L| r`` are each off by at most ``γ_{n+1} M``;
3. the new ends ``c' ± r'``, the correction and the sum computing it add a few roundings,
   each below ``u`` times ``2 M``;

so the radius grows by ``(2 γ_{n+1} (1 + 2 γ_{n+1}) + 8 u) M``, which covers all three.
``M`` is bounded cheaply where computing it exactly would cost a pass of its own
(:meth:`~advls.certify.graph.LinearOp.magnitude`). ReLU, max pooling and reshapes are exact.
On CUDA, float32 convolutions and matrix products may run in TensorFloat-32 (10-bit
mantissa); :func:`unit_roundoff` reads PyTorch's switches and uses ``u = 2^-11`` for them
then. The widening costs about 1e-5 of a layer's magnitudes in float32 and nothing
measurable in float64. Everything stays differentiable (certified training backpropagates
through it).

:func:`spec_interval` bounds a *specification* ``C f(x)`` (the margins ``z_y - z_k``): ``C``
is folded into the trailing affine layers, in float64, before the box closes the bound,
which is exact for them and tighter than subtracting intervals of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from advls.certify.graph import LinearOp, MaxPool, Op, ReLU, Reshape

__all__ = [
    "CHUNK_ELEMENTS",
    "FLOAT64_MARGIN",
    "concretize",
    "gamma",
    "input_box",
    "interval",
    "linear_backward",
    "margin_spec",
    "propagate",
    "spec_interval",
    "unit_roundoff",
]

#: How many values the widest layer may hold per chunk of examples. IBP keeps both ends of a
#: box alive, twice a forward pass's working set; chunks of 2^20 values (4 MiB in float32)
#: stay in memory the allocator reuses, and on lenet-mnist bound 1000 images 2x faster than
#: one piece does.
CHUNK_ELEMENTS = 2**20

#: Relative outward margin on every bound closed in float64 (:func:`concretize`). The
#: float64 roundings along a backward pass of these depths and widths are below 1e-12 of the
#: magnitudes involved; 2^-30 (about 1e-9) leaves three orders of magnitude to spare and is
#: still far below anything that decides a certificate.
FLOAT64_MARGIN = 2.0**-30


def unit_roundoff(dtype: torch.dtype, device: torch.device, kernel: str | None = None) -> float:
    """The unit roundoff ``u`` of one operation in ``dtype`` on ``device``.

    Args:
        dtype: the tensors' dtype.
        device: where the operation runs.
        kernel: ``"conv"`` or ``"matmul"`` for the kernels PyTorch may run at reduced float32
            precision (TensorFloat-32 on CUDA, or bfloat16 at matmul precision ``medium``);
            None for elementwise arithmetic, which always runs in ``dtype``.

    Returns:
        ``u``: half the distance from 1 to the next number the operation can represent.
    """
    unit = torch.finfo(dtype).eps / 2
    if dtype != torch.float32 or kernel is None:
        return unit
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0**-8
    on_cuda = device.type == "cuda"
    if kernel == "conv" and on_cuda and torch.backends.cudnn.allow_tf32:
        return 2.0**-11
    if kernel == "matmul" and (precision == "high" or (on_cuda and _matmul_tf32())):
        return 2.0**-11
    return unit


def _matmul_tf32() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32)


def gamma(n: int, unit: float) -> float:
    """Higham's ``γ_n = n u / (1 - n u)``: the relative error bound of an ``n``-term sum."""
    nu = n * unit
    if nu >= 0.5:
        raise ValueError(f"a sum of {n} terms at unit roundoff {unit} has no useful error bound")
    return nu / (1.0 - nu)


def input_box(x: Tensor, eps: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The box ``[max(x - eps, 0), min(x + eps, 1)]`` in ``dtype``, rounded outward.

    Each end moves ``2^-21 (|x| + eps)`` outward. That covers the few roundings computing it
    here (each at most ``2^-24`` times ``|x| + eps`` in float32) and those of an attack that
    projects onto the ball in float32 (``x - eps`` rounded to nearest, ``eps`` itself too),
    whose points must lie inside the box.

    Args:
        x: inputs in [0, 1], any floating dtype.
        eps: the L-inf radius.
        dtype: the dtype of the returned ends (float32 or float64).

    Returns:
        ``(lower, upper)`` in ``dtype``, inside [0, 1].
    """
    x = x.detach().to(dtype)
    reach = x.abs().mul_(2.0**-21).add_(eps * (1 + 2.0**-21))
    return (x - reach).clamp_(0.0, 1.0), (x + reach).clamp_(0.0, 1.0)


def interval(op: Op, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """The box of ``op``'s outputs over the box ``[lower, upper]`` of its inputs.

    Args:
        op: one operation of a chain.
        lower: ``(N, *op.in_shape)`` lower ends.
        upper: the upper ends, same shape and dtype.

    Returns:
        ``(lower, upper)`` of shape ``(N, *op.out_shape)``: every output of ``op`` at an input
        in the box lies between them.
    """
    if isinstance(op, ReLU):
        return torch.relu(lower), torch.relu(upper)
    if isinstance(op, MaxPool):
        return op.forward(lower), op.forward(upper)
    if isinstance(op, Reshape):
        return op.forward(lower), op.forward(upper)
    if not isinstance(op, LinearOp):
        raise TypeError(f"no interval rule for {type(op).__name__}")
    dtype, device = lower.dtype, lower.device
    unit = unit_roundoff(dtype, device)
    sums = gamma(op.fan_in + 1, unit_roundoff(dtype, device, op.tf32))
    centre = (upper + lower).mul_(0.5)
    radius = (upper - lower).mul_(0.5)
    out_centre = op.forward(centre)
    spread = centre.abs().add_(radius)
    slack = (2 * sums * (1 + 2 * sums) + 8 * unit) * op.magnitude(spread, dtype)
    out_radius = op.apply_abs(radius).add_(slack)
    # The ends in place, without new buffers (fresh pages cost more than the arithmetic):
    # upper = c + r, then lower = upper - 2 r; its one extra rounding is within the 8 u.
    upper = out_centre.add_(out_radius)
    return out_radius.mul_(-2).add_(upper), upper


def propagate(ops: Sequence[Op], lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """The box of a chain's outputs over the box ``[lower, upper]`` of its inputs."""
    for op in ops:
        lower, upper = interval(op, lower, upper)
    return lower, upper


def linear_backward(op: LinearOp, a: Tensor) -> tuple[Tensor, Tensor]:
    """Move linear functionals back through an affine op: ``a·(L x + b) = (L^T a)·x + a·b``.

    Args:
        op: the affine operation.
        a: ``(B, S, *op.out_shape)``: ``S`` functionals per example (``B`` is 1 while they
            are the same for every example).

    Returns:
        ``(L^T a, a·b)``: the functionals on the input, ``(B, S, *op.in_shape)``, and the
        constant they pick up, ``(B, S)``.
    """
    batch, specs = a.shape[:2]
    moved = op.transpose(a.reshape(batch * specs, *op.out_shape))
    moved = moved.reshape(batch, specs, *op.in_shape)
    bias = op.bias(a.dtype)
    if bias is None:
        return moved, a.new_zeros(batch, specs)
    return moved, (a * bias).flatten(2).sum(-1)


def concretize(
    a: Tensor, bias: Tensor, bias_magnitude: Tensor, lower: Tensor, upper: Tensor
) -> Tensor:
    """The minimum of ``a·h + bias`` over the box ``lower <= h <= upper``, in float64.

    Each coordinate takes the box end that minimises its term: ``lower`` where ``a > 0``,
    ``upper`` where ``a < 0``. The result is lowered by :data:`FLOAT64_MARGIN` times the
    magnitudes that entered it (``|a|·max(|lower|, |upper|)`` and ``bias_magnitude``, the sum
    of the constant terms' sizes).

    Args:
        a: ``(B, S, *shape)`` functionals (``B`` is 1 or ``N``), float64.
        bias: ``(B, S)`` constants, float64.
        bias_magnitude: ``(B, S)``, the sum of the absolute constant terms.
        lower: ``(N, *shape)`` lower ends of the box.
        upper: ``(N, *shape)`` upper ends.

    Returns:
        ``(N, S)`` lower bounds.
    """
    low = lower.to(torch.float64).unsqueeze(1)
    high = upper.to(torch.float64).unsqueeze(1)
    value = (a.clamp(min=0) * low + a.clamp(max=0) * high).flatten(2).sum(-1) + bias
    size = torch.maximum(low.abs(), high.abs())
    magnitude = (a.abs() * size).flatten(2).sum(-1) + bias_magnitude
    return value - FLOAT64_MARGIN * magnitude


def margin_spec(
    y: Tensor, num_classes: int, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """The margins' specification: rows ``e_y - e_k`` for the ``K - 1`` classes ``k != y``.

    Args:
        y: ``(N,)`` int64 labels.
        num_classes: ``K``.
        dtype: the rows' dtype.

    Returns:
        ``(C, others)``: ``C`` of shape ``(N, K - 1, K)`` and ``others`` ``(N, K - 1)``, the
        class ``k`` of each row (every class but ``y``, in order).
    """
    steps = torch.arange(num_classes - 1, device=y.device)
    others = steps.unsqueeze(0) + (steps.unsqueeze(0) >= y.unsqueeze(1)).long()
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[others], others


def spec_interval(ops: Sequence[Op], lower: Tensor, upper: Tensor, spec: Tensor) -> Tensor:
    """Lower bounds of ``spec · f(x)`` over the input box, by IBP with the spec folded in.

    The specification is moved back (in float64) through the chain's trailing affine
    operations, where it is exact, and the box IBP computes for the last non-affine
    operation's output closes the bound.

    Args:
        ops: the chain's operations.
        lower: ``(N, *input_shape)`` lower ends of the input box (working dtype).
        upper: the upper ends.
        spec: ``(B, S, K)`` functionals of the output (``B`` is 1 or ``N``).

    Returns:
        ``(N, S)`` float64 lower bounds of ``spec · f(x)``.
    """
    a = spec.to(torch.float64)
    bias = a.new_zeros(a.shape[:2])
    magnitude = bias.clone()
    end = len(ops)
    while end and isinstance(ops[end - 1], LinearOp):
        a, term = linear_backward(ops[end - 1], a)
        bias, magnitude = bias + term, magnitude + term.abs()
        end -= 1
    head = ops[:end]
    widest = max((math.prod(op.out_shape) for op in head), default=1)
    step = max(1, CHUNK_ELEMENTS // widest)
    parts = []
    for first in range(0, lower.shape[0], step):
        examples = slice(first, first + step)
        low, high = propagate(head, lower[examples], upper[examples])
        rows = (
            (a, bias, magnitude)
            if a.shape[0] == 1
            else (a[examples], bias[examples], magnitude[examples])
        )
        parts.append(concretize(*rows, low, high))
    return torch.cat(parts)
