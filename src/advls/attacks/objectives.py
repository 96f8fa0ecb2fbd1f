"""The per-example losses an attack ascends: hard-label CE, CW margin, DLR, the model's own."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from advls.losses import smoothed_cross_entropy

__all__ = ["LOSSES", "LossFn", "attack_loss", "dlr", "margin"]

LOSSES: tuple[str, ...] = ("ce", "margin", "dlr", "smoothed")
LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-example loss to ascend


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """CW margin: best wrong logit minus the true logit (ascending it misclassifies)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return wrong - true


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Croce & Hein's difference of logits ratio: invariant to shifting and scaling logits."""
    if logits.shape[1] < 3:
        raise ValueError(f"the dlr loss needs at least 3 classes, got {logits.shape[1]}")
    ordered = logits.sort(dim=1, descending=True).values
    return margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def _per_example(loss: LossFn) -> LossFn:
    """A user's loss, checked to give one value per example (a sum would silently work)."""

    def checked(logits: Tensor, y: Tensor) -> Tensor:
        value = loss(logits, y)
        if not isinstance(value, Tensor) or value.shape != (logits.shape[0],):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"the loss must be per example, of shape ({logits.shape[0]},), got {shape}"
            )
        return value

    return checked


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
    # Labels may be int32 (the attacks accept them); gather and cross_entropy need int64,
    # and ``.long()`` is free when they already are.
    if callable(loss):
        return _per_example(loss)
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y.long(), reduction="none")
    if loss == "margin":
        return lambda logits, y: margin(logits, y.long())
    if loss == "dlr":
        return lambda logits, y: dlr(logits, y.long())
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
