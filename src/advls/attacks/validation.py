"""Checks of an attack's inputs and parameters: one rule each, with a message that teaches."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_batch",
    "check_eps",
    "check_fraction",
    "check_int",
    "check_logits",
    "check_number",
    "check_seed",
    "check_target_classes",
    "make_generator",
]


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


def check_fraction(value: float, name: str, *, one: bool = False) -> float:
    """A finite number in (0, 1), or in (0, 1] when ``one`` is allowed; bools are refused."""
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not (0.0 < value < 1.0 or (one and value == 1.0)):  # NaN fails both
        raise ValueError(
            f"{name} must be a finite number in (0, 1{']' if one else ')'}, got {value!r}"
        )
    return float(value)


def check_int(value: int, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_eps(eps: float, norm: str = "linf", name: str = "eps") -> float:
    """A finite, non-negative budget; for L-inf at most 1 (the whole [0, 1] box)."""
    eps = check_number(eps, name)
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{name} must be at most 1 for an L-inf attack on [0, 1] inputs, got {eps}"
        )
    return eps


def check_seed(seed: int | torch.Generator | None) -> int | torch.Generator | None:
    """``None`` (the global RNG), an integer, or a ``torch.Generator`` to draw from."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, a torch.Generator or None, got {seed!r}")
    return seed


def make_generator(
    seed: int | torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """A private generator on ``device`` for an integer seed, so the result is reproducible and
    the global RNG is left alone; a given generator is used (and advanced) as it is."""
    if isinstance(seed, int):
        return torch.Generator(device=device).manual_seed(seed)
    return seed


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
    """The model's output must be (N, K) logits, K >= 2, and the labels must lie in [0, K)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model must return logits of shape (N, K) = ({y.shape[0]}, K), got {shape}"
        )
    if logits.shape[1] < 2:
        raise ValueError(
            "the model must return logits of at least 2 classes (K >= 2), "
            f"got K = {logits.shape[1]}"
        )
    if y.numel():
        low, high = torch.aminmax(y)
        if int(low) < 0 or int(high) >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")


def check_target_classes(target_classes: int, num_classes: int) -> int:
    """Targets among the ``K - 1`` runner-up classes: ``1 <= target_classes < K``."""
    check_int(target_classes, "target_classes")
    if target_classes >= num_classes:
        raise ValueError(
            f"target_classes must be below the number of classes K = {num_classes} (at most "
            f"{num_classes - 1} runner-up classes can be targeted), got {target_classes}"
        )
    return target_classes
