"""Square attack (Andriushchenko et al. 2020): score-based L-inf random search, no gradients."""

from __future__ import annotations

from torch import Tensor, nn

from advls.attacks.base import AttackResult

__all__ = ["square"]


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    queries: int = 1000,
    p_init: float = 0.8,
    seed: int | None = None,
) -> AttackResult:
    raise NotImplementedError
