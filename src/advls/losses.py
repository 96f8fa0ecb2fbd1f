"""Label-smoothing losses of Goibert & Dohmatob, as drop-in PyTorch losses.

Every method smooths the one-hot label ``e_y`` into ``q = (1 - alpha) e_y + alpha r``,
where ``r`` is a distribution over classes chosen by the method:

============== =======================================================================
``standard``    ``r`` uniform over the K - 1 wrong classes (SLS)
``adversarial`` ``r`` one-hot of the smallest logit over *all* classes, ties split (ALS)
``boltzmann``   ``r_k ∝ exp(-z_k / T)`` over the wrong classes (BLS)
``second_best`` ``r`` one-hot of the largest wrong logit, ties split (SBLS)
callable        any ``r(logits, labels) -> (N, K)`` distribution the user supplies
============== =======================================================================

Targets are constants: no gradient flows through ``q`` (a label is data; for ALS this is
Danskin's theorem). Theorem 1 of the paper gives the equivalent penalty form

    SmoothCE(z, q) = CE(z, y) + alpha * sum_k r_k (z_y - z_k),

exposed as :func:`logit_penalty`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ALIASES",
    "METHODS",
    "NonFiniteLogitsError",
    "NonFiniteLossError",
    "SmoothedCrossEntropy",
    "SmoothingDistribution",
    "alpha_from_torch_label_smoothing",
    "canonical_method",
    "logit_penalty",
    "smooth_labels",
    "smoothed_cross_entropy",
    "smoothing_distribution",
    "torch_label_smoothing_eps",
]

#: A user-supplied smoothing distribution: ``r(logits, labels) -> (N, K)`` rows on the simplex.
SmoothingDistribution = Callable[[Tensor, Tensor], Tensor]
Method = str | SmoothingDistribution
Reduction = Literal["mean", "sum", "none"]

#: The smoothing methods, by canonical name.
METHODS: tuple[str, ...] = ("standard", "adversarial", "boltzmann", "second_best")
#: Other accepted spellings of :data:`METHODS` (names are matched case-insensitively): the
#: paper's acronyms and the hyphenated second-best.
ALIASES: dict[str, str] = {
    "sls": "standard",
    "als": "adversarial",
    "bls": "boltzmann",
    "sbls": "second_best",
    "second-best": "second_best",
}
_REDUCTIONS = ("mean", "sum", "none")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept.

    Defined beside the loss so that :class:`NonFiniteLogitsError` can extend it; training
    (``advls.train``) raises and re-exports it.
    """


class NonFiniteLogitsError(NonFiniteLossError, ValueError):
    """The logits hold NaN or infinite values, so no smoothed target or loss exists.

    A :class:`NonFiniteLossError` (training stops on it, keeping the last checkpoint) and a
    ``ValueError`` (the loss refuses its input).
    """


# --------------------------------------------------------------------------- validation
def canonical_method(name: str) -> str:
    """The canonical name in :data:`METHODS` of a method given by name or alias, in any case.

    Raises:
        ValueError: ``name`` names no smoothing method.
    """
    canonical = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else None
    if canonical not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return canonical


def _check_method(method: Method) -> Method:
    if callable(method):
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be one of {METHODS} or a callable, got {method!r}")
    try:
        return canonical_method(method)
    except ValueError:
        raise ValueError(
            f"method must be one of {', '.join(METHODS)} (or a callable r(logits, labels)), "
            f"got {method!r}"
        ) from None


def _as_real(value: object) -> float | None:
    """A plain float from a Python, NumPy or 0-d tensor real number; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Tensor):
        return None
    if isinstance(value, Tensor) and (value.numel() != 1 or value.is_complex()):
        return None
    return float(value)


def _check_alpha(alpha: float) -> float:
    value = _as_real(alpha)
    if value is None or not (0.0 <= value <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return value


def _check_temperature(temperature: float) -> float:
    value = _as_real(temperature)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_inputs(logits: Tensor, labels: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor (N, K), got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    n, k = logits.shape
    if k < 2:
        raise ValueError(f"logits must have at least 2 classes, got K={k}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor of length N={n}, got {shape}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if n:
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= k:
            raise ValueError(
                f"labels must lie in [0, {k - 1}] for K={k} classes, got values in "
                f"[{int(low)}, {int(high)}]"
            )


def _raise_if_not_finite(logits: Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogitsError("logits contain NaN or infinite values")


# --------------------------------------------------------------------------- the targets
# Each method builds ``on * e_y + off * r`` in one fresh (N, K) tensor: the loss folds its
# sign and the mean's 1/N into ``on`` and ``off``, so no pass over q is spent on them, and
# r alone is the case on = 0, off = 1. ``true_class`` is the (N, 1) int64 column of labels.
# Where r_y = 0 (every method but ALS and custom ones), q_y = on is written, not added.
def _split_ties(ties: Tensor, off: float) -> Tensor:
    # ``ties`` holds 1.0 at each row's extreme values, 0.0 elsewhere; split ``off`` evenly.
    # (off = 0 divides by infinity: the row is zero, as it should be.)
    return ties.div_(ties.sum(dim=1, keepdim=True).div_(off))


def _q_standard(z: Tensor, true_class: Tensor, temperature: float, off: float, on: float) -> Tensor:
    # r is 1/(K-1) off the true class and 0 on it: q is one constant but at y.
    return torch.full_like(z, off / (z.shape[1] - 1)).scatter_(1, true_class, on)


def _q_adversarial(
    z: Tensor, true_class: Tensor, temperature: float, off: float, on: float
) -> Tensor:
    # The comparison writes 1.0/0.0 straight into a float tensor: a bool mask converted
    # afterwards costs two more passes on CPU. Ties compare equal exactly, so they are split.
    ties = torch.eq(z, z.amin(dim=1, keepdim=True), out=torch.empty_like(z))
    # The smallest logit may be the true one (then q = e_y): add, do not overwrite.
    weighted = _split_ties(ties, off)
    return weighted.scatter_add_(1, true_class, weighted.new_full(true_class.shape, on))


def _q_boltzmann(
    z: Tensor, true_class: Tensor, temperature: float, off: float, on: float
) -> Tensor:
    energies = (z * (-1.0 / temperature)).scatter_(1, true_class, -math.inf)
    return energies.softmax(dim=1).mul_(off).scatter_(1, true_class, on)


def _q_second_best(
    z: Tensor, true_class: Tensor, temperature: float, off: float, on: float
) -> Tensor:
    # The true class, at -inf, is never the largest: K >= 2 leaves a finite wrong logit.
    wrong = z.scatter(1, true_class, -math.inf)
    ties = wrong.eq_(wrong.amax(dim=1, keepdim=True))
    return _split_ties(ties, off).scatter_(1, true_class, on)


_TARGETS = {
    "standard": _q_standard,
    "adversarial": _q_adversarial,
    "boltzmann": _q_boltzmann,
    "second_best": _q_second_best,
}


def _checked_custom(fn: SmoothingDistribution, logits: Tensor, labels: Tensor) -> Tensor:
    r = fn(logits, labels)
    if not isinstance(r, Tensor) or r.shape != logits.shape:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(
            f"a custom smoothing distribution must return an (N, K) = {tuple(logits.shape)} "
            f"tensor, got {shape}"
        )
    # A copy: q is built from r in place, and the user's tensor must not change.
    r = r.detach().to(logits.dtype, copy=True)
    tolerance = 1e-3 if logits.dtype in (torch.float16, torch.bfloat16) else 1e-5
    if (
        not bool(torch.isfinite(r).all())
        or bool((r < 0).any())
        or not torch.allclose(r.sum(dim=1), torch.ones_like(r[:, 0]), atol=tolerance)
    ):
        # Non-finite logits make most distributions non-finite: name the real cause.
        _raise_if_not_finite(logits)
        raise ValueError(
            "a custom smoothing distribution must return finite, non-negative rows summing to 1"
        )
    return r


def _targets(
    z: Tensor, true_class: Tensor, method: Method, temperature: float, off: float, on: float
) -> Tensor:
    """``on * e_y + off * r`` for detached logits ``z``; ``true_class`` is (N, 1) int64."""
    if callable(method):
        weighted = _checked_custom(method, z, true_class.squeeze(1)).mul_(off)
        return weighted.scatter_add_(1, true_class, weighted.new_full(true_class.shape, on))
    return _TARGETS[method](z, true_class, temperature, off, on)


def _checked_targets(
    logits: Tensor, labels: Tensor, method: Method, temperature: float, off: float, on: float
) -> Tensor:
    method = _check_method(method)
    temperature = _check_temperature(temperature)
    _check_inputs(logits, labels)
    _raise_if_not_finite(logits)  # else ALS and BLS rows would silently be NaN
    return _targets(logits.detach(), labels.long()[:, None], method, temperature, off, on)


def smoothing_distribution(
    logits: Tensor,
    labels: Tensor,
    method: Method = "adversarial",
    temperature: float = 1.0,
) -> Tensor:
    """The method's distribution ``r`` over classes, (N, K), detached.

    ``q = (1 - alpha) e_y + alpha r`` is the smoothed label. For ALS, ``r`` is one-hot of the
    smallest logit over all classes, so it equals ``e_y`` when ``y`` is the smallest logit.
    """
    return _checked_targets(logits, labels, method, temperature, off=1.0, on=0.0)


def smooth_labels(
    logits: Tensor,
    labels: Tensor,
    method: Method = "adversarial",
    alpha: float = 0.1,
    temperature: float = 1.0,
) -> Tensor:
    """Smoothed targets ``q = (1 - alpha) e_y + alpha r``, (N, K), detached, rows sum to 1.

    Every ``q`` lies in the total-variation ball ``{q : q_y >= 1 - alpha}`` around ``e_y``.
    """
    alpha = _check_alpha(alpha)
    return _checked_targets(logits, labels, method, temperature, off=alpha, on=1.0 - alpha)


# --------------------------------------------------------------------------- the loss
def _compute_dtype(logits: Tensor) -> torch.dtype:
    # Half-precision log-softmax loses the small smoothing masses; compute in float32 then,
    # as autocast does for cross_entropy.
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def _soft_target_cross_entropy(z: Tensor, weights: Tensor, per_example: bool) -> Tensor:
    """``sum_k weights_k log softmax(z)_k``, per example or summed over the batch.

    Plain autograd: its backward is PyTorch's fused log-softmax backward applied to
    ``weights`` (times the upstream gradient), which for ``weights = -c q`` with rows of q
    summing to 1 is the closed form ``c (softmax(z) - q)``; it differentiates twice too
    (input-gradient penalties, Hessian-vector products).
    """
    log_p = z.log_softmax(dim=1)
    if per_example:
        return torch.mul(weights, log_p).sum(dim=1)
    return torch.dot(weights.reshape(-1), log_p.reshape(-1))


def _smoothed_ce_unchecked(
    logits: Tensor,
    labels: Tensor,
    method: Method,
    alpha: float,
    temperature: float,
    reduction: str,
) -> Tensor:
    _check_inputs(logits, labels)
    z = logits.to(_compute_dtype(logits))
    n = z.shape[0]
    # -sum_k q_k log p_k: the minus sign and the mean's 1/N are folded into the targets.
    c = -1.0 / n if (reduction == "mean" and n) else -1.0
    # Targets come from detached logits, so no graph is built for them (no_grad not needed).
    true_class = labels.long()[:, None]
    weights = _targets(z.detach(), true_class, method, temperature, c * alpha, c * (1 - alpha))
    per_example = reduction == "none"
    if torch.is_autocast_enabled(z.device.type):
        with torch.autocast(device_type=z.device.type, enabled=False):
            loss = _soft_target_cross_entropy(z, weights, per_example)
    else:  # entering the autocast context costs more than a small loss itself
        loss = _soft_target_cross_entropy(z, weights, per_example)
    # The loss is finite whenever the logits are; only look closer when it is not. (One
    # scalar read: torch.isfinite is a composite of several kernels.)
    value = loss.detach()
    if not math.isfinite(float(value if value.dim() == 0 else value.sum())):
        _raise_if_not_finite(logits)
        # Finite logits so large that log-softmax overflows (a diverging run, typically).
        raise NonFiniteLossError("the smoothed cross-entropy is not finite although the logits are")
    return loss


def smoothed_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    method: Method = "adversarial",
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy against the method's smoothed labels, ``-sum_k q_k log softmax(z)_k``.

    Args:
        logits: (N, K) floating-point logits.
        labels: (N,) integer class indices.
        method: ``standard``, ``adversarial``, ``boltzmann``, ``second_best`` (or the paper's
            acronyms ``sls``, ``als``, ``bls``, ``sbls``), or a callable ``r(logits, labels)``
            returning (N, K) distributions.
        alpha: smoothing strength in [0, 1]; ``alpha = 0`` is plain cross-entropy.
        temperature: BLS temperature ``T > 0``.
        reduction: ``mean``, ``sum`` or ``none``.

    Half-precision logits are computed and returned in float32 (as autocast does for
    ``cross_entropy``). The gradient with respect to the logits is exactly ``softmax(z) - q``
    per example, scaled by the reduction.
    """
    return _smoothed_ce_unchecked(
        logits,
        labels,
        _check_method(method),
        _check_alpha(alpha),
        _check_temperature(temperature),
        _check_reduction(reduction),
    )


def logit_penalty(
    logits: Tensor,
    labels: Tensor,
    method: Method = "adversarial",
    alpha: float = 0.1,
    temperature: float = 1.0,
) -> Tensor:
    """Theorem 1's logit-squeezing penalty per example, ``alpha * sum_k r_k (z_y - z_k)``, (N,).

    ``smoothed_cross_entropy(z, y, reduction="none") == cross_entropy(z, y) + logit_penalty``.
    The gradient flows through the logits but not through ``r`` (a constant, as in training).
    """
    alpha = _check_alpha(alpha)
    r = smoothing_distribution(logits, labels, method, temperature)
    _raise_if_not_finite(logits)
    true_logit = logits.gather(1, labels.long()[:, None])
    # Summing r_k (z_y - z_k), not z_y - sum_k r_k z_k: each ALS term is then exactly >= 0, and
    # nothing cancels between two large numbers.
    return alpha * (r.to(logits.dtype) * (true_logit - logits)).sum(dim=1)


class SmoothedCrossEntropy(nn.Module):
    """``nn.Module`` form of :func:`smoothed_cross_entropy`, a drop-in for ``CrossEntropyLoss``.

    >>> criterion = SmoothedCrossEntropy("adversarial", alpha=0.1)
    >>> loss = criterion(model(x), y)  # doctest: +SKIP
    """

    def __init__(
        self,
        method: Method = "adversarial",
        alpha: float = 0.1,
        temperature: float = 1.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.method = _check_method(method)
        self.alpha = _check_alpha(alpha)
        self.temperature = _check_temperature(temperature)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The smoothed cross-entropy of ``logits`` (N, K) against integer ``labels`` (N,)."""
        # Hyperparameters were validated once, in __init__.
        return _smoothed_ce_unchecked(
            logits, labels, self.method, self.alpha, self.temperature, self.reduction
        )

    def extra_repr(self) -> str:
        """The method and its hyperparameters, as ``print(module)`` shows them."""
        name = (
            self.method
            if isinstance(self.method, str)
            else getattr(self.method, "__name__", "custom")
        )
        extra = f", temperature={self.temperature}" if name == "boltzmann" else ""
        return f"method={name!r}, alpha={self.alpha}{extra}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------- conventions
def torch_label_smoothing_eps(alpha: float, num_classes: int) -> float:
    """PyTorch/timm's ``label_smoothing`` equal to the paper's SLS strength ``alpha``.

    PyTorch spreads ``eps`` over all K classes, the true one included; SLS spreads ``alpha``
    over the K - 1 others. They match when ``eps = alpha K / (K - 1)``, so PyTorch cannot
    express ``alpha > (K - 1) / K``.
    """
    alpha = _check_alpha(alpha)
    k = _check_num_classes(num_classes)
    eps = alpha * k / (k - 1)
    if eps > 1.0 + 1e-12:
        raise ValueError(
            f"alpha must be at most (K-1)/K = {(k - 1) / k:.6g} to be expressible as PyTorch's "
            f"label_smoothing for K={k}, got {alpha}"
        )
    return min(eps, 1.0)


def alpha_from_torch_label_smoothing(eps: float, num_classes: int) -> float:
    """The paper's SLS ``alpha`` equal to PyTorch/timm's ``label_smoothing=eps``."""
    if not isinstance(eps, int | float) or not (0.0 <= eps <= 1.0):
        raise ValueError(f"eps (PyTorch label_smoothing) must be in [0, 1], got {eps!r}")
    k = _check_num_classes(num_classes)
    return float(eps) * (k - 1) / k


def _check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes
