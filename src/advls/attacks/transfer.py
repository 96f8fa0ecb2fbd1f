"""Transfer attack: craft on a surrogate model, evaluate on the target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from advls.attacks.base import AttackResult

__all__ = ["transfer"]


def transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    surrogate: nn.Module,
    attack: str | Mapping[str, Any] = "pgd",
    eps: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> AttackResult:
    raise NotImplementedError
