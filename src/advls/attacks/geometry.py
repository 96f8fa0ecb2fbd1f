"""Per-norm geometry: the three hooks every gradient attack needs, for L-inf and L2.

Following foolbox 3's ``gradient_descent_base.py``, an attack is written once for every norm
and asks its :class:`Geometry` for the three things that differ: a uniform random start in
the eps-ball, the steepest-ascent direction of a gradient, and the projection back onto the
ball intersected with the [0, 1] box. The hot loops call these in place, so a step allocates
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["GEOMETRIES", "L2", "LINF", "Geometry", "Norm", "geometry", "norms", "per_example"]

Norm = Literal["linf", "l2"]

#: Norms below this count as zero, so a zero gradient or perturbation divides safely.
_TINY = 1e-12
#: Relative slack for an L2 norm that float rounding put a hair beyond the budget.
_ROUNDING = 1e-6


def per_example(values: Tensor, like: Tensor) -> Tensor:
    """An (N,) tensor viewed to broadcast against the (N, ...) tensor ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def norms(delta: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example L2 and L-inf norms of a perturbation."""
    flat = delta.flatten(1)
    return flat.norm(p=2, dim=1), flat.abs().amax(dim=1)


def _l2(values: Tensor) -> Tensor:
    return values.flatten(1).norm(p=2, dim=1).clamp_min_(_TINY)


@dataclass(frozen=True)
class Geometry:
    """The norm-specific hooks of a gradient attack (use :data:`LINF` or :data:`L2`)."""

    name: Norm

    def random_start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        """A uniform point of the eps-ball around ``x``, clipped to [0, 1] (a fresh tensor).

        L-inf: uniform per coordinate. L2: a Gaussian direction with radius ``eps U^(1/d)``,
        which is uniform in the ball.
        """
        options = {"generator": generator, "device": x.device, "dtype": x.dtype}
        if self.name == "linf":
            noise = torch.rand(x.shape, **options).mul_(2 * eps).sub_(eps)
        else:
            noise = torch.randn(x.shape, **options)
            dim = noise[0].numel() if noise.shape[0] else 1
            radius = torch.rand(x.shape[0], **options).pow_(1.0 / dim).mul_(eps)
            noise.mul_(per_example(radius / _l2(noise), noise))
        return noise.add_(x).clamp_(0.0, 1.0)

    def direction_(self, grad: Tensor) -> Tensor:
        """In place: the unit-norm steepest-ascent direction (sign, or ``grad / ||grad||_2``)."""
        # An expanded gradient (an input the loss ignores) cannot be updated in place.
        grad = grad if grad.is_contiguous() else grad.contiguous()
        if self.name == "linf":
            return grad.sign_()
        return grad.div_(per_example(_l2(grad), grad))

    def projection(self, x: Tensor, eps: float) -> Callable[[Tensor], Tensor]:
        """The in-place projection onto the eps-ball around ``x`` intersected with [0, 1].

        L-inf clamps to ``[max(x - eps, 0), min(x + eps, 1)]``, bounds computed once: the
        exact projection, and bit for bit a no-op on points already inside. L2 scales the
        perturbation radially, then clips to the box, which can only shrink it, so the result
        lies in both sets.
        """
        if self.name == "linf":
            low, high = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
            return lambda point: point.clamp_(low, high)

        def project_(point: Tensor) -> Tensor:
            delta = point.sub_(x)
            delta.mul_(per_example((eps / _l2(delta)).clamp_(max=1.0), delta))
            return delta.add_(x).clamp_(0.0, 1.0)

        return project_

    def enforce(self, x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
        """``x_adv`` inside the ball and the box, bit for bit unchanged where it already is.

        The attack contract's last line of defence, so an algorithm's slip cannot leave the
        ball. L2 moves only the rows beyond ``eps`` by more than float rounding.
        """
        project_ = self.projection(x, eps)
        if self.name == "linf":
            return project_(x_adv.clone())
        beyond = norms(x_adv - x)[0] > eps * (1.0 + _ROUNDING)
        inside = x_adv.clamp(0.0, 1.0)
        return torch.where(per_example(beyond, x_adv), project_(x_adv.clone()), inside)


LINF = Geometry("linf")
L2 = Geometry("l2")
#: Every norm an attack may take, by name.
GEOMETRIES: dict[str, Geometry] = {"linf": LINF, "l2": L2}


def geometry(norm: str) -> Geometry:
    """The geometry of ``norm`` (``linf`` or ``l2``)."""
    if norm not in GEOMETRIES:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return GEOMETRIES[norm]
