"""APGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpointed step halving."""

from __future__ import annotations

from torch import Tensor, nn

from advls.attacks.base import AttackResult, LossFn, Norm

__all__ = ["apgd"]


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 100,
    loss: str | LossFn = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    smoothing: dict | None = None,
    seed: int | None = None,
) -> AttackResult:
    raise NotImplementedError
