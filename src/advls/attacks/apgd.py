"""APGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpointed step halving.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020), Algorithm 1, written from the paper. One run of
``steps`` iterations from a uniform random point ``x^(0)`` of the eps-ball:

* ``z = P(x^(k) + eta * s(grad f(x^(k))))`` with ``s`` the sign (L-inf) or the gradient over
  its L2 norm (L2), and ``P`` the projection onto the eps-ball intersected with [0, 1];
* ``x^(k+1) = P(x^(k) + a (z - x^(k)) + (1 - a) (x^(k) - x^(k-1)))`` with momentum
  ``a = 0.75``; the first step is the plain projected step ``x^(1) = z``;
* the step size ``eta`` starts at ``2 eps`` and is kept per example. At the checkpoints
  ``w_j = ceil(p_j * steps)`` (``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) an example's step size is halved when
  (1) fewer than ``rho * (w_j - w_{j-1})`` of the steps since the last checkpoint raised its
  loss, or (2) it was not halved at the last checkpoint and the best loss has not changed
  since then. A halved example restarts from the best-loss point found so far (with no
  momentum: ``x^(k-1) = x^(k)``).

The checkpoint test at iteration ``w_j`` looks at ``x^(0) .. x^(w_j)`` (the paper's sums run
over exactly those steps) and takes effect before the step from ``x^(w_j)``, so no computed
step is thrown away.

Each example returns the first iterate the model misclassified, or, if none was, the iterate
of highest loss. With ``restarts > 1`` only the examples no run has fooled yet are attacked
again from new random starts; an example never fooled keeps the highest-loss point of all
its runs.

``model_calls``: a run evaluates the loss at ``x^(0) .. x^(steps)``: ``steps`` forward+backward
passes and one forward pass (at the last iterate no gradient is needed); the result is then
scored with one more forward pass. So one run costs ``steps + 2``, ``R`` runs cost
``R * (steps + 1) + 1``, and when every example is fooled after ``r < restarts`` runs the loop
stops at ``r * (steps + 1) + 1``. (Unlike PGD, no extra scoring between runs is needed: a run
knows which examples it fooled.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import Geometry, Norm, geometry, per_example
from advls.attacks.objectives import LossFn, attack_loss
from advls.attacks.restarts import restart
from advls.attacks.validation import check_fraction, make_generator

__all__ = ["apgd"]

MOMENTUM = 0.75  # the paper's alpha


def _checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations ``w_0 = 0 < w_1 < ...`` (all below ``steps``) where eta may be halved.

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``. The fractions are kept in exact
    hundredths, so no rounding error moves a checkpoint (``0.22 + 0.19`` is 0.41, not
    0.41000000000000003, whose ceiling at 100 steps would be 42). Repeated values (few
    steps) are kept once. For 100 steps: 0, 22, 41, 57, 70, 80, 87, 93, 99.
    """
    fractions = [0, 22]  # hundredths
    while True:
        step = max(fractions[-1] - fractions[-2] - 3, 6)
        if fractions[-1] + step > 100:
            break
        fractions.append(fractions[-1] + step)
    points: list[int] = []
    for p in fractions:
        w = -(-p * steps // 100)  # ceil(p * steps / 100) in integers
        if w < steps and (not points or w > points[-1]):
            points.append(w)
    return tuple(points)


def _evaluate(
    model: nn.Module, x: Tensor, y: Tensor, objective: LossFn, *, gradient: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-example loss, its input gradient (if asked; a fresh contiguous tensor) and whether
    the model misclassifies ``x``: one forward (and backward) pass."""
    with torch.enable_grad() if gradient else torch.no_grad():
        leaf = x.detach().requires_grad_(gradient)
        logits = model(leaf)
        loss = objective(logits, y)
        # An expanded gradient (an input the loss ignores) cannot be updated in place.
        grad = torch.autograd.grad(loss.sum(), leaf)[0].contiguous() if gradient else None
    return loss.detach(), grad, logits.detach().argmax(dim=1) != y


def _run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    *,
    ball: Geometry,
    eps: float,
    steps: int,
    rho: float,
    objective: LossFn,
) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run from ``start`` (consumed as a buffer).

    Returns the chosen points (first misclassified iterate, else the highest-loss one),
    whether each example was fooled, and each example's highest loss. The hot loop: one
    forward+backward per step, in-place updates, per-example bookkeeping with tensor ops and
    no host synchronisation (the checkpoints are known in advance).
    """
    n = x.shape[0]
    checks = set(_checkpoints(steps)[1:])
    eta = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device)
    project_ = ball.projection(x, eps)

    current = start
    loss, grad, fooled = _evaluate(model, current, y, objective, gradient=True)
    assert grad is not None
    best = loss.clone()  # highest loss so far (it drives the checkpoints)
    chosen = current.clone()  # highest-loss iterate, frozen at the first misclassified one
    chosen_grad = grad.clone()
    previous_loss = loss
    previous: Tensor | None = None  # x^(k-1)
    increases = torch.zeros(n, dtype=torch.int64, device=x.device)
    best_at_check = best.clone()
    halved_at_check = torch.zeros(n, dtype=torch.bool, device=x.device)
    last_check = 0

    for k in range(steps):
        if k in checks:
            assert previous is not None
            halve = increases < rho * (k - last_check)
            halve |= ~halved_at_check & (best <= best_at_check)
            eta = torch.where(halve, eta * 0.5, eta)
            restart = per_example(halve, current)
            current = torch.where(restart, chosen, current)
            previous = torch.where(restart, chosen, previous)  # restarts carry no momentum
            grad = torch.where(restart, chosen_grad, grad)
            previous_loss = torch.where(halve, best, previous_loss)
            halved_at_check = halve
            best_at_check = best.clone()
            increases.zero_()
            last_check = k
        # z = P(x + eta * s(grad)), built in the gradient's buffer.
        z = ball.direction_(grad).mul_(per_example(eta, grad)).add_(current)
        z = project_(z)
        if previous is None:
            following = z
        else:
            # x + a (z - x) + (1 - a) (x - x_prev), in the buffer of x_prev.
            following = (
                previous.mul_(MOMENTUM - 1.0)
                .add_(current, alpha=2.0 * (1.0 - MOMENTUM))
                .add_(z, alpha=MOMENTUM)
            )
            following = project_(following)
        previous, current = current, following

        last = k == steps - 1
        loss, grad, fooled_now = _evaluate(model, current, y, objective, gradient=not last)
        increases += loss > previous_loss
        previous_loss = loss
        improved = loss > best
        best = torch.where(improved, loss, best)
        take = per_example(~fooled & (improved | fooled_now), current)
        torch.where(take, current, chosen, out=chosen)
        if grad is not None:
            torch.where(take, grad, chosen_grad, out=chosen_grad)
        fooled |= fooled_now
    return chosen, fooled, best


@register("apgd", norms=("linf", "l2"))
def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    loss: str | LossFn = "ce",
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    smoothing: dict | None = None,
    seed: int | torch.Generator | None = None,
) -> Tensor:
    """APGD (Croce & Hein 2020): PGD with momentum and a step size it adapts by itself.

    See the module docstring for the algorithm. Each run starts at a uniform random point of
    the eps-ball (as PGD), clipped to [0, 1].

    Args:
        eps: budget in [0, 1] pixel units (at most 1 for L-inf).
        loss: ``ce``, ``dlr`` (APGD-DLR: invariant to shifting and scaling the logits),
            ``margin``, ``smoothed`` or a callable (see ``attack_loss``).
        norm: ``linf`` (sign steps) or ``l2`` (unit-gradient steps).
        steps: iterations per run (the paper uses 100).
        restarts: number of runs (>= 1); later runs attack only the examples not yet fooled.
        rho: the fraction of loss-raising steps below which the step size is halved, in
            (0, 1); the paper's 0.75.

    ``model_calls``: ``steps + 2`` for one run, ``R * (steps + 1) + 1`` for ``R`` runs, or
    ``r * (steps + 1) + 1`` when all examples were fooled after ``r < restarts`` runs.
    """
    rho = check_fraction(rho, "rho")
    objective = attack_loss(loss, **(smoothing or {}))
    ball = geometry(norm)
    generator = make_generator(seed, x.device)

    def run(xs: Tensor, ys: Tensor, last: bool) -> tuple[Tensor, Tensor, Tensor]:
        start = ball.random_start(xs, eps, generator)
        return _run(
            model, xs, ys, start, ball=ball, eps=eps, steps=steps, rho=rho, objective=objective
        )

    return restart(run, x, y, restarts)
