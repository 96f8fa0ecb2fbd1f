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

import math

import torch
from torch import Tensor, nn

from advls.attacks.base import (
    AttackResult,
    CountingModel,
    LossFn,
    Norm,
    attack_loss,
    check_batch,
    check_eps,
    check_int,
    check_norm,
    check_steps,
    eval_mode,
    make_result,
)
from advls.attacks.iterative import _per_example, _random_start

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
    steps = check_steps(steps)
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


def _check_rho(rho: float) -> float:
    bad = (
        isinstance(rho, bool)
        or not isinstance(rho, int | float)
        or not math.isfinite(rho)
        or not 0.0 < rho < 1.0
    )
    if bad:
        raise ValueError(f"rho must be a finite number in (0, 1), got {rho!r}")
    return float(rho)


def _evaluate(
    model: nn.Module, x: Tensor, y: Tensor, objective: LossFn, *, gradient: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-example loss, its input gradient (if asked; a fresh contiguous tensor) and whether
    the model misclassifies ``x``: one forward (and backward) pass."""
    if gradient:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
            loss = objective(logits, y)
            _check_loss(loss, x)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        # An expanded gradient (an input the loss ignores) cannot be updated in place.
        grad = grad if grad.is_contiguous() else grad.contiguous()
    else:
        with torch.no_grad():
            logits = model(x)
            loss = objective(logits, y)
            _check_loss(loss, x)
        grad = None
    logits = logits.detach()
    return loss.detach(), grad, logits.argmax(dim=1) != y


def _check_loss(loss: object, x: Tensor) -> None:
    if not isinstance(loss, Tensor) or loss.shape != (x.shape[0],):
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"the loss must be per example, of shape ({x.shape[0]},), got {shape}")


def _project_l2_(point: Tensor, x: Tensor, eps: float) -> Tensor:
    """In place: radially onto the L2 ball around ``x``, then into [0, 1] (see project_l2)."""
    delta = point.sub_(x)
    size = delta.flatten(1).norm(p=2, dim=1).clamp_min_(1e-12)
    factor = (eps / size).clamp_(max=1.0)
    return delta.mul_(_per_example(factor, delta)).add_(x).clamp_(0.0, 1.0)


def _run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    *,
    eps: float,
    norm: Norm,
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
    if norm == "linf":
        low = (x - eps).clamp_(min=0.0)
        high = (x + eps).clamp_(max=1.0)

    def project_(point: Tensor) -> Tensor:
        if norm == "linf":
            return point.clamp_(low, high)
        return _project_l2_(point, x, eps)

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
            restart = _per_example(halve, current)
            current = torch.where(restart, chosen, current)
            previous = torch.where(restart, chosen, previous)  # restarts carry no momentum
            grad = torch.where(restart, chosen_grad, grad)
            previous_loss = torch.where(halve, best, previous_loss)
            halved_at_check = halve
            best_at_check = best.clone()
            increases.zero_()
            last_check = k
        # z = P(x + eta * s(grad)), built in the gradient's buffer.
        if norm == "linf":
            z = grad.sign_().mul_(_per_example(eta, grad)).add_(current)
        else:
            size = grad.flatten(1).norm(p=2, dim=1).clamp_min_(1e-12)
            z = grad.mul_(_per_example(eta / size, grad)).add_(current)
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
        take = _per_example(~fooled & (improved | fooled_now), current)
        torch.where(take, current, chosen, out=chosen)
        if grad is not None:
            torch.where(take, grad, chosen_grad, out=chosen_grad)
        fooled |= fooled_now
    return chosen, fooled, best


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
    """APGD (Croce & Hein 2020): PGD with momentum and a step size it adapts by itself.

    See the module docstring for the algorithm. Each run starts at a uniform random point of
    the eps-ball (as PGD), clipped to [0, 1].

    Args:
        eps: budget in [0, 1] pixel units (at most 1 for L-inf).
        norm: ``linf`` (sign steps) or ``l2`` (unit-gradient steps).
        steps: iterations per run (the paper uses 100).
        loss: ``ce``, ``dlr`` (APGD-DLR: invariant to shifting and scaling the logits),
            ``margin``, ``smoothed`` or a callable (see ``attack_loss``).
        restarts: number of runs (>= 1); later runs attack only the examples not yet fooled.
        rho: the fraction of loss-raising steps below which the step size is halved, in
            (0, 1); the paper's 0.75.
        smoothing: for ``loss="smoothed"``: ``{"method": ..., "alpha": ..., "temperature": ...}``.
        seed: seeds a private generator on the input's device, so the result is reproducible
            and the global RNG is left alone; ``None`` draws from the global RNG.

    ``model_calls``: ``steps + 2`` for one run, ``R * (steps + 1) + 1`` for ``R`` runs, or
    ``r * (steps + 1) + 1`` when all examples were fooled after ``r < restarts`` runs.
    """
    norm = check_norm(norm)
    eps = check_eps(eps, norm)
    steps = check_steps(steps)
    restarts = check_int(restarts, "restarts")
    rho = _check_rho(rho)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    objective = attack_loss(loss, **(smoothing or {}))
    with eval_mode(model):
        check_batch(x, y)
        counted = CountingModel(model, labels=y)
        x0 = x.detach()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=x0.device).manual_seed(seed)
        x_adv = x0  # replaced by the first run's output
        fooled = best = None
        todo: Tensor | None = None  # indices still to attack; None means the whole batch
        for run in range(restarts):
            xs, ys = (x0, y) if todo is None else (x0[todo], y[todo])
            start = _random_start(xs, eps, norm, generator)
            found, fooled_run, best_run = _run(
                counted,
                xs,
                ys,
                start,
                eps=eps,
                norm=norm,
                steps=steps,
                rho=rho,
                objective=objective,
            )
            if todo is None:
                x_adv, fooled, best = found, fooled_run, best_run
            else:
                assert fooled is not None and best is not None
                # None of these was fooled before: keep the new point if it fools the model
                # or raises the loss.
                better = fooled_run | (best_run > best[todo])
                x_adv[todo] = torch.where(_per_example(better, found), found, x_adv[todo])
                best[todo] = torch.where(better, best_run, best[todo])
                fooled[todo] = fooled_run
            if run == restarts - 1:
                break
            todo = (~fooled).nonzero().squeeze(1)  # between runs: a host sync is fine
            if todo.numel() == 0:
                break
        return make_result(counted, x0, x_adv, y)
