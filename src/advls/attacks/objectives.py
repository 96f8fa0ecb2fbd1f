"""The per-example losses an attack ascends: hard-label CE, CW margin, DLR, the model's own."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from advls.losses import smoothed_cross_entropy

__all__ = [
    "LOSSES",
    "TARGETED_LOSSES",
    "LossFn",
    "attack_loss",
    "dlr",
    "margin",
    "targeted_dlr",
    "targeted_loss",
]

LOSSES: tuple[str, ...] = ("ce", "margin", "dlr", "smoothed")
#: The losses of a targeted attack (APGD-T): each rises as the target class gains on ``y``.
TARGETED_LOSSES: tuple[str, ...] = ("dlr", "ce")
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


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Croce & Hein's targeted DLR: ``(z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.

    ``pi`` orders the logits from the highest; scaling and shifting the logits leave it
    unchanged. It needs the fourth-highest logit, so at least 4 classes.
    """
    if logits.shape[1] < 4:
        raise ValueError(
            f"the targeted dlr loss needs at least 4 classes, got {logits.shape[1]} "
            "(use loss='ce' for a targeted attack on fewer classes)"
        )
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    spread = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
    return (aimed - true) / spread


def targeted_loss(loss: str, target: Tensor) -> LossFn:
    """The per-example loss a targeted attack toward ``target`` ascends.

    ``dlr`` (APGD-T's targeted DLR, K >= 4) or ``ce`` (minus the cross-entropy to the
    target, which AutoAttack uses where DLR is undefined).
    """
    if loss == "dlr":
        return lambda logits, y: targeted_dlr(logits, y.long(), target)
    if loss == "ce":
        return lambda logits, y: -F.cross_entropy(logits, target, reduction="none")
    raise ValueError(
        f"a targeted attack's loss must be one of {', '.join(TARGETED_LOSSES)}, got {loss!r}"
    )


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
