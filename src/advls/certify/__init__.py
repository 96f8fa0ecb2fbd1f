"""Certified lower bounds on robustness: what no attack within the budget can do.

For an input ``x`` and budget ``eps`` the input set is the box
``[max(x - eps, 0), min(x + eps, 1)]`` (the L-inf ball intersected with the pixel range). The
bounds hold for every point of it:

* :func:`logit_bounds`: lower and upper bounds of every logit;
* :func:`margin_bounds`: lower bounds of the margins ``z_y - z_k`` (the specification
  ``C = e_y - e_k`` folded into the last affine layers, tighter than differences of logit
  bounds);
* :func:`certified`: a point is certified when it is correctly classified and every margin
  lower bound is positive, so no perturbation in the set changes its class;
  :func:`certified_accuracy`: the fraction of *all* points certified (a clean error is never
  certified), the lower end of the bracket ``[certified, attacked]`` in which the true
  robust accuracy lies.

================ ==========================================================================
method           bounds
================ ==========================================================================
``ibp``          interval bound propagation (Gowal et al. 2018), :mod:`advls.certify.ibp`
``crown-ibp``    CROWN's backward linear bounds on IBP's pre-activation bounds
                 (Zhang et al. 2020), :mod:`advls.certify.crown`
``crown``        full CROWN (Zhang et al. 2018): pre-activation bounds by CROWN itself
================ ==========================================================================

Supported models are chains of Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten,
Dropout (the identity in eval mode), BatchNorm1d/2d (affine, running statistics) and
:class:`advls.models.Normalize`, written as modules or functionally
(:mod:`advls.certify.graph`); anything else is refused by name. Models are read in eval mode,
which is restored afterwards with the parameters' ``requires_grad``; inputs are not mutated.
IBP is computed in the model's float32 with outward rounding, CROWN in float64; all results
are float64 (so no rounding is needed to return them). ``docs/certify.md`` has the details
and the measured figures.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advls.attacks import eval_mode
from advls.certify.crown import spec_bounds
from advls.certify.graph import Chain, extract
from advls.certify.ibp import input_box, margin_spec, spec_interval

__all__ = [
    "METHODS",
    "Chain",
    "certified",
    "certified_accuracy",
    "chain_margin_bounds",
    "extract",
    "logit_bounds",
    "margin_bounds",
]

#: The bound methods, loosest and cheapest first.
METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "crown")
_DEFAULT_BATCH = 256


# --------------------------------------------------------------------------- validation
def _check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def _check_eps(eps: object) -> float:
    bad = isinstance(eps, bool) or not isinstance(eps, int | float)
    if bad or not (0.0 < eps <= 1.0):  # NaN fails the comparison
        raise ValueError(
            f"eps must be a number in (0, 1] (an L-inf radius in [0, 1] pixel units), got {eps!r}"
        )
    return float(eps)


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_x(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor of inputs in [0, 1], got {type(x).__name__}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            "x must be a non-empty floating-point (or uint8) tensor (N, ...) of inputs in [0, 1]"
        )
    low, high = torch.aminmax(x.detach())
    if not (float(low) >= 0.0 and float(high) <= 1.0):  # NaN fails too
        raise ValueError("x must lie in [0, 1] (normalisation belongs inside the model)")
    return x.detach()


def _check_y(y: object, x: Tensor) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError("y must be a 1-D integer tensor of class indices")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} inputs")
    return y.long().to(x.device)


def _check_labels(y: Tensor, num_classes: int) -> None:
    low, high = torch.aminmax(y)
    if int(low) < 0 or int(high) >= num_classes:
        raise ValueError(
            f"y must hold labels in [0, {num_classes - 1}] (the model has K = {num_classes})"
        )


def _working_dtype(model: nn.Module) -> torch.dtype:
    """float64 for a float64 model, else float32 (IBP's arithmetic; CROWN always float64)."""
    tensors = [*model.parameters(), *model.buffers()]
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------------------- on a chain
def chain_margin_bounds(
    chain: Chain,
    x: Tensor,
    y: Tensor,
    eps: float,
    method: str = "ibp",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Margin lower bounds on an extracted chain, without validation or mode changes.

    What :func:`margin_bounds` computes for one batch; with ``method="ibp"`` it is
    differentiable with respect to the model's parameters (certified training).

    Args:
        chain: the model, from :func:`extract`.
        x: ``(N, *input_shape)`` inputs in [0, 1].
        y: ``(N,)`` int64 labels.
        eps: the L-inf radius.
        method: one of :data:`METHODS`.
        dtype: IBP's working dtype (the model's: float32 or float64); CROWN runs in float64.

    Returns:
        ``(N, K)`` float64 lower bounds of ``z_y - z_k``, ``+inf`` at ``k = y``.
    """
    dtype = torch.float64 if method != "ibp" else dtype
    lower, upper = input_box(x, eps, dtype)
    spec, others = margin_spec(y, chain.num_classes)
    if method == "ibp":
        bounds = spec_interval(chain.ops, lower, upper, spec)
    else:
        bounds = spec_bounds(chain.ops, lower, upper, spec, full=method == "crown")
    full = bounds.new_full((len(y), chain.num_classes), math.inf)
    return full.scatter(1, others, bounds)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


# --------------------------------------------------------------------------- public API
def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    method: str = "ibp",
    batch_size: int = _DEFAULT_BATCH,
) -> Tensor:
    """Lower bounds of the margins ``z_y - z_k`` over the eps-box around each input.

    Args:
        model: a classifier mapping inputs in [0, 1] to ``(N, K)`` logits, built of the
            supported layers (module docstring).
        x: ``(N, ...)`` inputs in [0, 1] (floats, or uint8 read as ``x / 255``).
        y: ``(N,)`` integer labels in ``[0, K)``.
        eps: L-inf radius in (0, 1].
        method: ``ibp``, ``crown-ibp`` or ``crown``.
        batch_size: inputs bounded at a time (full CROWN further splits its intermediate
            layers' work to bound memory).

    Returns:
        ``(N, K)`` float64: entry ``k`` is at most ``z_y(x') - z_k(x')`` for every ``x'`` in
        the box; ``+inf`` at ``k = y`` (so a point is certified exactly when every entry is
        positive).

    Raises:
        ValueError: a bad argument (named), or a model the bounds do not support.
    """
    model = _check_model(model)
    method, eps = _check_method(method), _check_eps(eps)
    batch_size = _check_batch_size(batch_size)
    x = _check_x(x)
    y = _check_y(y, x)
    with eval_mode(model), torch.no_grad():
        chain = extract(model, x)
        _check_labels(y, chain.num_classes)
        dtype = _working_dtype(model)
        parts = [
            chain_margin_bounds(chain, x[part], y[part], eps, method, dtype)
            for part in _chunks(len(x), batch_size)
        ]
    return torch.cat(parts)


def logit_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    method: str = "ibp",
    batch_size: int = _DEFAULT_BATCH,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of every logit over the eps-box around each input.

    Args:
        model: a classifier mapping inputs in [0, 1] to ``(N, K)`` logits.
        x: ``(N, ...)`` inputs in [0, 1] (floats, or uint8 read as ``x / 255``).
        eps: L-inf radius in (0, 1].
        method: ``ibp``, ``crown-ibp`` or ``crown``.
        batch_size: inputs bounded at a time.

    Returns:
        ``(lower, upper)``, each ``(N, K)`` float64: ``lower <= z(x') <= upper`` for every
        ``x'`` in the box.

    Raises:
        ValueError: a bad argument (named), or a model the bounds do not support.
    """
    model = _check_model(model)
    method, eps = _check_method(method), _check_eps(eps)
    batch_size = _check_batch_size(batch_size)
    x = _check_x(x)
    lowers, uppers = [], []
    with eval_mode(model), torch.no_grad():
        chain = extract(model, x)
        dtype = _working_dtype(model)
        eye = torch.eye(chain.num_classes, dtype=torch.float64, device=x.device)
        spec = torch.cat([eye, -eye]).unsqueeze(0)  # upper bounds are lower bounds of -z
        for part in _chunks(len(x), batch_size):
            if method == "ibp":
                lower, upper = input_box(x[part], eps, dtype)
                bound = spec_interval(chain.ops, lower, upper, spec)
            else:
                lower, upper = input_box(x[part], eps, torch.float64)
                bound = spec_bounds(chain.ops, lower, upper, spec, full=method == "crown")
            lowers.append(bound[:, : chain.num_classes])
            uppers.append(-bound[:, chain.num_classes :])
    return torch.cat(lowers), torch.cat(uppers)


def certified(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    method: str = "ibp",
    batch_size: int = _DEFAULT_BATCH,
) -> Tensor:
    """Which points no perturbation within ``eps`` can misclassify, by ``method``'s bounds.

    Args:
        model: a classifier mapping inputs in [0, 1] to ``(N, K)`` logits.
        x: ``(N, ...)`` inputs in [0, 1] (floats, or uint8 read as ``x / 255``).
        y: ``(N,)`` integer labels.
        eps: L-inf radius in (0, 1].
        method: ``ibp``, ``crown-ibp`` or ``crown``.
        batch_size: inputs bounded at a time.

    Returns:
        ``(N,)`` bool: correctly classified at ``x`` and every margin lower bound ``> 0``.

    Raises:
        ValueError: a bad argument (named), or a model the bounds do not support.
    """
    bounds = margin_bounds(model, x, y, eps, method, batch_size)
    x, y = _check_x(x), _check_y(y, x)
    with eval_mode(model), torch.no_grad():
        predicted = torch.cat([model(x[part]).argmax(1) for part in _chunks(len(x), batch_size)])
    return (bounds > 0).all(dim=1) & (predicted == y)


def certified_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    method: str = "ibp",
    batch_size: int = _DEFAULT_BATCH,
) -> float:
    """The fraction of all points certified at ``eps`` (clean errors count as not certified).

    Args:
        model: a classifier mapping inputs in [0, 1] to ``(N, K)`` logits.
        x: ``(N, ...)`` inputs in [0, 1] (floats, or uint8 read as ``x / 255``).
        y: ``(N,)`` integer labels.
        eps: L-inf radius in (0, 1].
        method: ``ibp``, ``crown-ibp`` or ``crown``.
        batch_size: inputs bounded at a time.

    Returns:
        The certified accuracy in [0, 1]: a lower bound on the accuracy under any attack
        within ``eps``.

    Raises:
        ValueError: a bad argument (named), or a model the bounds do not support.
    """
    return float(certified(model, x, y, eps, method, batch_size).float().mean())
