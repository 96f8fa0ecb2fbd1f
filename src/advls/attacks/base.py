"""What every attack shares: the result type, the call contract, losses and projections.

Contract: an attack takes a model mapping inputs in [0, 1] to logits, inputs
``x`` in [0, 1] and labels ``y``; it never mutates them, returns points inside [0, 1] (and,
when bounded, inside the eps-ball), puts the model in eval mode for the attack and restores
its mode afterwards, and reports per-example success and perturbation sizes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advls.losses import smoothed_cross_entropy

__all__ = [
    "LOSSES",
    "AttackResult",
    "CountingModel",
    "attack_loss",
    "check_attack_inputs",
    "check_batch",
    "check_eps",
    "check_int",
    "check_logits",
    "check_number",
    "check_steps",
    "eval_mode",
    "make_result",
    "norms",
    "project_l2",
    "project_linf",
]

Norm = Literal["linf", "l2"]
LOSSES: tuple[str, ...] = ("ce", "margin", "dlr", "smoothed")
LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-example loss to ascend


@dataclass(frozen=True)
class AttackResult:
    """Adversarial inputs with per-example outcome and perturbation sizes.

    ``success[i]`` is True when the model misclassifies ``x_adv[i]`` (an input that was
    misclassified to begin with counts as a success: robust accuracy is ``1 - success``).
    ``model_calls`` counts forward passes over the batch (a forward+backward counts once).
    """

    x_adv: Tensor
    success: Tensor
    l2: Tensor
    linf: Tensor
    model_calls: int

    @property
    def robust_accuracy(self) -> float:
        return 1.0 - float(self.success.float().mean()) if self.success.numel() else float("nan")

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


class CountingModel(nn.Module):
    """Wraps a model to count its forward passes (the attack's ``model_calls``).

    Given ``labels``, it also checks the first output against them (shape and label range),
    so an attack validates the model without spending a forward pass on it.
    """

    def __init__(self, model: nn.Module, labels: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self._unchecked_labels = labels

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        logits = self.model(x)
        if self._unchecked_labels is not None:
            check_logits(logits, self._unchecked_labels)
            self._unchecked_labels = None
        return logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the attack; the previous state comes back."""
    # Per module: a model in train mode may hold submodules frozen in eval (a fixed BN).
    modes = [(module, module.training) for module in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for parameter, _ in grads:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in grads:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


# --------------------------------------------------------------------------- validation
def check_number(value: float, name: str, *, positive: bool = False) -> float:
    """A finite real number, ``>= 0`` (``> 0`` when ``positive``); bools are refused."""
    bad = (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or (value <= 0 if positive else value < 0)
    )
    if bad:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_int(value: int, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_eps(eps: float, norm: Norm = "linf", name: str = "eps") -> float:
    """A finite, non-negative budget; for L-inf at most 1 (the whole [0, 1] box)."""
    eps = check_number(eps, name)
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{name} must be at most 1 for an L-inf attack on [0, 1] inputs, got {eps}"
        )
    return eps


def check_steps(steps: int, name: str = "steps") -> int:
    return check_int(steps, name)


def check_norm(norm: str) -> Norm:
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return norm  # type: ignore[return-value]


def check_batch(x: Tensor, y: Tensor) -> None:
    """Validate inputs and labels without calling the model."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor (N, ...) of inputs in [0, 1]")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError("y must be a 1-D integer tensor of class indices")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} inputs")
    if x.numel():
        low, high = torch.aminmax(x.detach())
        if float(low) < 0.0 or float(high) > 1.0:
            raise ValueError("x must lie in [0, 1] (normalisation belongs inside the model)")


def check_logits(logits: object, y: Tensor) -> None:
    """The model's output must be (N, K) logits and the labels must lie in [0, K)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model must return logits of shape (N, K) = ({y.shape[0]}, K), got {shape}"
        )
    if y.numel():
        low, high = torch.aminmax(y)
        if int(low) < 0 or int(high) >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")


def check_attack_inputs(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Validate ``x``/``y`` and the model's output shape; return the clean logits.

    For attacks that need the clean logits anyway (one model call). Attacks that do not can
    call :func:`check_batch` and let :class:`CountingModel` check the first output instead.
    """
    check_batch(x, y)
    with torch.no_grad():
        logits = model(x)
    check_logits(logits, y)
    return logits


# --------------------------------------------------------------------------- losses
def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """CW margin: best wrong logit minus the true logit (ascending it misclassifies)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return wrong - true


def _dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Croce & Hein's difference of logits ratio: invariant to shifting and scaling logits."""
    if logits.shape[1] < 3:
        raise ValueError(f"the dlr loss needs at least 3 classes, got {logits.shape[1]}")
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return (wrong - true) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def attack_loss(
    loss: str | LossFn,
    *,
    method: str = "adversarial",
    alpha: float = 0.0,
    temperature: float = 1.0,
) -> LossFn:
    """The per-example loss an attack ascends.

    ``ce`` (hard-label cross-entropy), ``margin`` (CW), ``dlr`` (APGD), or ``smoothed``: the
    model's own training loss (smoothing ``method``, ``alpha``, ``temperature``), as the
    authors' evaluation used. A callable ``(logits, labels) -> (N,)`` is used as is.
    """
    # Labels may be int32 (check_attack_inputs accepts them); gather and cross_entropy need
    # int64, and ``.long()`` is free when they already are.
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y.long(), reduction="none")
    if loss == "margin":
        return lambda logits, y: _margin(logits, y.long())
    if loss == "dlr":
        return lambda logits, y: _dlr(logits, y.long())
    if loss == "smoothed":
        if alpha == 0.0:
            # Without the model's smoothing this would silently be plain cross-entropy.
            raise ValueError(
                "loss='smoothed' needs the model's smoothing: pass "
                "smoothing={'method': ..., 'alpha': ..., 'temperature': ...} (alpha > 0), "
                "or use loss='ce'"
            )
        return lambda logits, y: smoothed_cross_entropy(
            logits, y.long(), method, alpha, temperature, reduction="none"
        )
    raise ValueError(f"loss must be one of {', '.join(LOSSES)} or a callable, got {loss!r}")


# --------------------------------------------------------------------------- geometry
def norms(delta: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example L2 and L-inf norms of a perturbation."""
    flat = delta.flatten(1)
    return flat.norm(p=2, dim=1), flat.abs().amax(dim=1)


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto the L-inf ball of radius ``eps`` around ``x`` intersected with [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto the L2 ball of radius ``eps`` around ``x``, then into [0, 1].

    Clipping after the radial projection can only shrink the perturbation, so the result is
    inside both sets (it is the exact projection onto the intersection only approximately).
    """
    delta = x_adv - x
    size = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    factor = (eps / size).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta * factor).clamp_(0.0, 1.0)


def make_result(
    model: CountingModel, x: Tensor, x_adv: Tensor, y: Tensor, logits: Tensor | None = None
) -> AttackResult:
    """Score ``x_adv`` (or take its full-batch ``logits``) and build the result."""
    if logits is None:
        with torch.no_grad():
            logits = model(x_adv)
    success = logits.argmax(dim=1) != y
    l2, linf = norms(x_adv - x)
    return AttackResult(x_adv.detach(), success, l2, linf, model.calls)
