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
from advls.attacks.objectives import TARGETED_LOSSES, LossFn, attack_loss, targeted_loss
from advls.attacks.restarts import over_targets, restart
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
    model: nn.Module, x: Tensor, y: Tensor, objective: LossFn, *, gradient: bool, eot_iter: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-example loss, its input gradient (if asked; a fresh contiguous tensor) and whether
    the model misclassifies ``x``: one forward (and backward) pass, or ``eot_iter`` of them.

    With ``eot_iter > 1`` loss and gradient are means over the passes (expectation over
    transformation); "misclassified" is read off the last pass, as AutoAttack does.
    """
    with torch.enable_grad() if gradient else torch.no_grad():
        leaf = x.detach().requires_grad_(gradient)
        total: Tensor | None = None
        grad: Tensor | None = None
        for _ in range(eot_iter if gradient else 1):
            logits = model(leaf)
            loss = objective(logits, y)
            if gradient:
                # An expanded gradient (an input the loss ignores) cannot be updated in place.
                found = torch.autograd.grad(loss.sum(), leaf)[0].contiguous()
                grad = found if grad is None else grad.add_(found)
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        if eot_iter > 1 and gradient:
            assert grad is not None
            grad.div_(eot_iter)
            total = total / eot_iter
    return total.detach(), grad, logits.detach().argmax(dim=1) != y


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
    eot_iter: int = 1,
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
    loss, grad, fooled = _evaluate(model, current, y, objective, gradient=True, eot_iter=eot_iter)
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
        loss, grad, fooled_now = _evaluate(
            model, current, y, objective, gradient=not last, eot_iter=eot_iter
        )
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
    loss: str | LossFn | None = None,
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    targeted: bool = False,
    target_classes: int = 9,
    eot_iter: int = 1,
    smoothing: dict | None = None,
    seed: int | torch.Generator | None = None,
) -> Tensor:
    """APGD (Croce & Hein 2020): PGD with momentum and a step size it adapts by itself.

    See the module docstring for the algorithm. Each run starts at a uniform random point of
    the eps-ball (as PGD), clipped to [0, 1]. With ``targeted``, APGD-T: for each of the
    ``target_classes`` highest runner-up classes at the clean input in turn, the points no
    earlier target fooled are attacked with the targeted loss toward that class (``restarts``
    runs per target); a point counts as fooled when misclassified as anything but ``y``.

    Args:
        eps: budget in [0, 1] pixel units (at most 1 for L-inf).
        loss: untargeted: ``ce`` (the default), ``dlr`` (APGD-DLR: invariant to shifting
            and scaling the logits), ``margin``, ``smoothed`` or a callable (see
            ``attack_loss``). Targeted: ``dlr`` (the default: APGD-T's targeted DLR, which
            needs K >= 4) or ``ce`` (minus the cross-entropy to the target).
        norm: ``linf`` (sign steps) or ``l2`` (unit-gradient steps).
        steps: iterations per run (the paper uses 100).
        restarts: number of runs (>= 1); later runs attack only the examples not yet fooled.
        rho: the fraction of loss-raising steps below which the step size is halved, in
            (0, 1); the paper's 0.75.
        targeted: APGD-T (see above); AutoAttack's ``standard`` version targets 9 classes.

    ``model_calls`` (with ``E = eot_iter``): ``E * steps + 2`` for one run,
    ``R * (E * steps + 1) + 1`` for ``R`` runs, fewer when all examples were fooled early.
    Targeted: one clean forward pass, then that per target over the points still robust.
    """
    rho = check_fraction(rho, "rho")
    ball = geometry(norm)
    generator = make_generator(seed, x.device)
    options = {"ball": ball, "eps": eps, "steps": steps, "rho": rho, "eot_iter": eot_iter}

    if not targeted:
        objective = attack_loss("ce" if loss is None else loss, **(smoothing or {}))

        def run(xs: Tensor, ys: Tensor, last: bool) -> tuple[Tensor, Tensor, Tensor]:
            start = ball.random_start(xs, eps, generator)
            return _run(model, xs, ys, start, objective=objective, **options)

        return restart(run, x, y, restarts)[0]

    name = "dlr" if loss is None else loss
    if name not in TARGETED_LOSSES:
        raise ValueError(
            f"a targeted apgd's loss must be one of {', '.join(TARGETED_LOSSES)}, got {loss!r}"
        )

    def toward(xs: Tensor, ys: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # The target rides beside the label, so the restart driver's row selection keeps the
        # two together.
        def run(xs: Tensor, pairs: Tensor, last: bool) -> tuple[Tensor, Tensor, Tensor]:
            start = ball.random_start(xs, eps, generator)
            objective = targeted_loss(name, pairs[:, 1])
            return _run(model, xs, pairs[:, 0], start, objective=objective, **options)

        found, fooled = restart(run, xs, torch.stack((ys, target), dim=1), restarts)
        assert fooled is not None  # every APGD run says which points it fooled
        return found, fooled

    return over_targets(model, toward, x, y, target_classes)
