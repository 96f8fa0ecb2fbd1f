"""FAB and FAB-T (Croce & Hein 2020): minimal adversarial examples by adaptive boundary steps.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack" (ICML 2020), Algorithm 1, and its targeted variant FAB-T from "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free attacks" (ICML 2020),
as AutoAttack runs them. Let ``x_orig`` be the clean point, ``f_k`` the logits and ``y`` the
label. One run of ``steps`` iterations from ``x^(0)`` (``x_orig``, or a random start):

1. Linearise the decision boundaries at ``x^(i)``: for each class ``k != y`` (untargeted),
   or for the target ``t`` alone (FAB-T), the hyperplane
   ``pi_k = {z : g_k + <grad g_k, z - x^(i)> = 0}`` of ``g_k = f_k - f_y``. Untargeted FAB
   keeps the ``pi_k`` nearest to ``x^(i)`` in the attacked norm, at distance
   ``|g_k| / ||grad g_k||_*`` (``||.||_*`` the dual norm: L1 for L-inf, L2 for L2).
2. Project ``x^(i)`` and ``x_orig`` onto that hyperplane intersected with the [0, 1] box:
   ``d1``, ``d2`` the smallest steps (in the norm) that reach it. When the box does not
   reach the hyperplane, the step goes as far toward it as the box allows (a corner).
3. ``x^(i+1) = clip((x^(i) + eta d1) (1 - alpha) + (x_orig + eta d2) alpha)`` with the bias
   toward the clean point ``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)`` and the
   extrapolation ``eta >= 1``.
4. If the model misclassifies ``x^(i+1)`` (any class but ``y``, for FAB-T too), it is a
   candidate: the smallest candidate so far is kept, and the iterate is pulled back to
   ``x_orig + beta (x^(i+1) - x_orig)`` (``beta <= 1``) to look for a smaller one.

The projection onto ``{<w, z> = b} ∩ [0, 1]^D`` is exact, for both norms, by one sort per
row: along the steepest direction each coordinate moves until its box face, so the reached
part of the residual is ``sum_i v_i min(lambda, s_i)``, piecewise linear and increasing in
the step ``lambda`` (L-inf: ``v = |w|``, ``s`` = room to the face; L2: ``v = w^2``,
``s`` = room / ``|w|``); the segment holding the residual gives ``lambda`` in closed form.

Untargeted FAB needs the Jacobian of the logits at every step: ``K - 1`` backward passes
through one forward graph, each with the per-example output direction ``e_k - e_y`` (so the
rows are the gradients of the differences already, and no pass is spent on ``k = y``). That
loop is the fastest exact way measured on CPU: batching the ``K - 1`` vector-Jacobian
products with ``is_grads_batched=True`` (vmap) ran 1.26x slower, and one forward+backward
over ``K`` stacked copies of the batch 2.8x slower (lenet-mnist, 500 images, one thread).
FAB-T needs one backward pass of ``f_t - f_y`` per step.

Modes:

* ``eps=None``: minimal-perturbation mode. Every correctly classified point is attacked by
  every run (and, for FAB-T, toward every target) and returns its smallest adversarial
  example, or itself when none was found.
* ``eps`` a number: AutoAttack's bounded use. A point counts as fooled only by an
  adversarial example within ``eps``; one whose smallest candidate lies beyond ``eps``
  returns its clean input. Later runs (and, for FAB-T, later targets) attack only the points
  not yet fooled, as AutoAttack does.

Runs: the first starts at ``x_orig``, each later one at a random point at distance
``r / 2`` from it (L-inf: uniform noise rescaled to L-inf norm ``r / 2``; L2: a Gaussian
direction of L2 norm ``r / 2``), clipped to [0, 1]: ``r = eps`` in the bounded mode, and in
the minimal mode ``r`` = the point's smallest distance so far, at most the reference's
default 0.3 (L-inf) or 1.0 (L2) budget. FAB-T targets the ``target_classes`` top runner-up
classes at the clean input (AutoAttack's standard version: 9 targets, 1 run, 100 steps).

L1 (the paper's third norm) is left out: its projection is a different algorithm
(coordinate-wise, not a water-filling of all coordinates) and advls has no L1 geometry.

``model_calls``: a step is two calls, one forward (with its ``K - 1`` or one backward
passes) at the iterate and one forward to predict the new iterate; a run is ``2 * steps``.
Besides the runs: one forward at the clean input (the number of classes, the points already
misclassified) and one by the core to score the result; FAB-T with a budget adds one more
clean forward, in ``over_targets``. So with ``R`` runs made in all: ``2 + 2 * steps * R``,
and ``3 + 2 * steps * R`` for FAB-T with a budget. In the minimal mode
``R = restarts * T`` (``T = target_classes`` for FAB-T, else 1); with a budget ``R`` is at
most that, fewer when every point is fooled within eps before the runs (or targets) run out.
AutoAttack's standard FAB-T (9 targets, one run each, 100 steps) costs at most ``1803``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import Norm, per_example
from advls.attacks.restarts import over_targets, restart, runner_up
from advls.attacks.validation import (
    check_fraction,
    check_number,
    check_target_classes,
    make_generator,
)

__all__ = ["fab"]

#: AutoAttack's default budgets, the largest random-start radius of the minimal mode.
_MINIMAL_RADIUS = {"linf": 0.3, "l2": 1.0}
#: Guards against dividing by a zero gradient or step (the reference's 1e-12 and 1e-8).
_TINY_GRADIENT = 1e-12
_TINY_STEP = 1e-8


def _size(flat: Tensor, norm: Norm) -> Tensor:
    """Per-row L-inf or L2 norm of ``(n, D)`` rows."""
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def project_onto_hyperplane(points: Tensor, w: Tensor, residual: Tensor, norm: Norm) -> Tensor:
    """The smallest step ``d`` (per row, in ``norm``) with ``<w, p + d> = <w, p> - residual``
    and ``p + d`` in [0, 1]: the projection of ``p`` onto the hyperplane ∩ the box.

    ``points`` and ``w`` are ``(m, D)``, ``residual`` ``(m,)`` is ``<w, p> - b``. Where the
    box does not reach the hyperplane, every coordinate goes to its face toward it.
    """
    # Make the residual non-negative: then every coordinate helps by moving against w.
    sign = torch.where(residual[:, None] < 0, -w.sign(), w.sign())
    target = residual.abs()
    weight = w.abs()
    room = torch.where(sign > 0, points, 1.0 - points)  # how far each coordinate can move
    if norm == "linf":
        scale = torch.ones_like(weight)  # d_i = -sign_i min(lambda, room_i)
        value, breaks = weight, room
    else:
        scale = weight  # d_i = -sign_i min(lambda |w_i|, room_i)
        value = weight.square()
        breaks = room / weight.clamp_min(_TINY_GRADIENT)
    # reached(lambda) = sum_i value_i min(lambda, breaks_i), evaluated at the sorted breaks.
    breaks, order = breaks.sort(dim=1)
    value = value.gather(1, order)
    below = value.cumsum(dim=1)
    reached_below = (value * breaks).cumsum(dim=1)
    total = below[:, -1:]
    reached = reached_below + breaks * (total - below)
    # The segment [breaks_(j-1), breaks_(j)] holding the target: j breaks fall short of it.
    j = (reached < target[:, None]).sum(dim=1, keepdim=True)
    feasible = j < breaks.shape[1]
    before = (j - 1).clamp_min(0)
    first = j == 0
    saturated = torch.where(first, 0.0, reached_below.gather(1, before))
    free = total - torch.where(first, 0.0, below.gather(1, before))
    lam = (target[:, None] - saturated) / free.clamp_min(_TINY_GRADIENT)
    # Out of reach: the last break saturates every coordinate (finite, so 0 * lam stays 0).
    lam = torch.where(feasible, lam, breaks[:, -1:])
    return torch.minimum(lam * scale, room).mul_(-sign)


def _linearise(
    model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``g = f_k - f_y`` and its input gradients at ``x``: ``(n, M)`` and ``(n, M, D)``.

    Untargeted: ``M = K - 1`` (every ``k != y``, by ``K - 1`` backward passes through one
    forward graph). Targeted: ``M = 1``, ``k = target``, one backward pass.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        logits = model(leaf)
        if target is not None:
            gap = logits[rows, target] - logits[rows, y]
            (grad,) = torch.autograd.grad(gap.sum(), leaf)
            return gap.detach()[:, None], grad.flatten(1)[:, None]
        classes = logits.shape[1]
        gaps = torch.empty(n, classes - 1, dtype=x.dtype, device=x.device)
        grads = torch.empty(n, classes - 1, x[0].numel(), dtype=x.dtype, device=x.device)
        direction = torch.zeros_like(logits)
        direction[rows, y] = -1.0  # each pass differentiates f_k - f_y
        for j in range(classes - 1):
            k = j + (j >= y).long()  # the j-th class other than y
            direction[rows, k] = 1.0
            (grad,) = torch.autograd.grad(
                logits, leaf, grad_outputs=direction, retain_graph=j < classes - 2
            )
            direction[rows, k] = 0.0
            grads[:, j] = grad.flatten(1)
            gaps[:, j] = logits.detach()[rows, k] - logits.detach()[rows, y]
    return gaps, grads


def _run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    target: Tensor | None,
    *,
    norm: Norm,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """One FAB run from ``start``: each point's smallest adversarial candidate and its
    distance (``inf`` and the clean point where none was found). Two model calls a step,
    bookkeeping on tensors, no host synchronisation."""
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    origin = x.flatten(1)
    current = start.flatten(1).clone()
    best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    found = origin.clone()
    for _ in range(steps):
        gaps, grads = _linearise(model, current.view_as(x), y, target)
        dual = grads.abs().sum(dim=2) if norm == "linf" else grads.norm(dim=2)
        nearest = (gaps.abs() / (dual + _TINY_GRADIENT)).argmin(dim=1)
        w, gap = grads[rows, nearest], gaps[rows, nearest]
        # The residual of the linearised boundary at x_orig: g + <w, x_orig - x^(i)>.
        gap_origin = gap + ((origin - current) * w).sum(dim=1)
        steps_ = project_onto_hyperplane(
            torch.cat((current, origin)), torch.cat((w, w)), torch.cat((gap, gap_origin)), norm
        )
        d1, d2 = steps_[:n], steps_[n:]
        a1 = _size(d1, norm).clamp_min_(_TINY_STEP)
        a2 = _size(d2, norm).clamp_min_(_TINY_STEP)
        alpha = (a1 / (a1 + a2)).clamp_(0.0, alpha_max)[:, None]
        # (x + eta d1)(1 - alpha) + (x_orig + eta d2) alpha, in the buffers of d1 and d2.
        current = (
            d1.mul_(eta)
            .add_(current)
            .mul_(1.0 - alpha)
            .add_(d2.mul_(eta).add_(origin).mul_(alpha))
            .clamp_(0.0, 1.0)
        )
        with torch.no_grad():
            fooled = model(current.view_as(x)).argmax(dim=1) != y
        distance = _size(current - origin, norm)
        better = fooled & (distance < best)
        torch.where(better[:, None], current, found, out=found)
        torch.where(better, distance, best, out=best)
        # Fooled: step back toward x_orig, to look for a smaller example.
        backed = torch.lerp(origin, current, beta)
        current = torch.where(fooled[:, None], backed, current)
    return found.view_as(x), best


def _random_start(
    x: Tensor, radius: Tensor | float, norm: Norm, generator: torch.Generator | None
) -> Tensor:
    """``x`` plus noise of norm ``radius / 2`` per point, clipped to [0, 1] (the reference's
    restart: uniform noise rescaled in L-inf, a Gaussian direction in L2)."""
    options = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "linf":
        noise = torch.rand(x.shape, **options).mul_(2.0).sub_(1.0)
    else:
        noise = torch.randn(x.shape, **options)
    length = _size(noise.flatten(1), norm).clamp_min_(_TINY_GRADIENT)
    noise.mul_(per_example(0.5 * radius / length, noise))
    return noise.add_(x).clamp_(0.0, 1.0)


@register("fab", norms=("linf", "l2"))
def fab(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    norm: Norm = "linf",
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    seed: int | torch.Generator | None = None,
) -> Tensor:
    """FAB (Croce & Hein 2020): minimal adversarial examples; FAB-T with ``targeted=True``.

    See the module docstring for the algorithm, the two modes and the restarts.

    Args:
        eps: ``None`` for the minimal-perturbation mode (each point's smallest adversarial
            example, unbounded); a budget (at most 1 for L-inf) for AutoAttack's bounded use,
            where only adversarial examples within ``eps`` count and the restarts start at
            distance ``eps / 2``.
        norm: ``linf`` or ``l2``: the norm minimised.
        steps: iterations per run (AutoAttack uses 100).
        restarts: runs per point (and per target); the first starts at the clean input.
        targeted: FAB-T: attack toward each of the ``target_classes`` top runner-up classes
            in turn (one backward pass a step instead of ``K - 1``).
        target_classes: for ``targeted`` only (1 <= target_classes < K).
        alpha_max: the largest bias toward the clean point, in (0, 1].
        eta: the extrapolation of each step onto the hyperplane, a finite number >= 1.
        beta: the pull back toward the clean point after a success, in (0, 1].

    ``model_calls``: ``2 * steps`` per run made, plus 2 (plus 3 for FAB-T with a budget);
    see the module docstring.
    """
    alpha_max = check_fraction(alpha_max, "alpha_max", one=True)
    eta = check_number(eta, "eta")
    if eta < 1.0:
        raise ValueError(f"eta must be a finite number >= 1, got {eta!r}")
    beta = check_fraction(beta, "beta", one=True)
    with torch.no_grad():
        clean = model(x)
    classes = clean.shape[1]  # >= 2: the counted model checked the first output
    if targeted:
        check_target_classes(target_classes, classes)
    generator = make_generator(seed, x.device)
    options = {"norm": norm, "steps": steps, "alpha_max": alpha_max, "eta": eta, "beta": beta}

    if eps is None:
        return _minimal(model, x, y, clean, targeted, target_classes, restarts, generator, options)

    runs = 0

    def run(xs: Tensor, labels: Tensor, last: bool) -> tuple[Tensor, Tensor, None]:
        # ``labels`` is (n,) or, for FAB-T, (n, 2) label and target, so that the restart
        # driver hands each run the targets of exactly the points it runs on.
        nonlocal runs
        ys, target = (labels, None) if labels.dim() == 1 else labels.unbind(1)
        start = xs if runs == 0 else _random_start(xs, eps, norm, generator)
        runs += 1
        found, distance = _run(model, xs, ys, start, target, **options)
        fooled = distance <= eps
        return torch.where(per_example(fooled, xs), found, xs), fooled, None

    if targeted:

        def toward(xs: Tensor, ys: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
            nonlocal runs
            runs = 0  # each target's first run starts at the clean input
            points, fooled = restart(run, xs, torch.stack((ys, target), dim=1), restarts)
            assert fooled is not None  # every run says which points it fooled
            return points, fooled

        return over_targets(model, toward, x, y, target_classes)

    x_adv = x.clone()
    correct = (clean.argmax(dim=1) == y).nonzero().squeeze(1)  # once: a host sync is fine
    if correct.numel():
        x_adv[correct] = restart(run, x[correct], y[correct], restarts)[0]
    return x_adv


def _minimal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    targeted: bool,
    target_classes: int,
    restarts: int,
    generator: torch.Generator | None,
    options: dict[str, Any],
) -> Tensor:
    """The minimal mode: every run (and target) on every correctly classified point, each
    keeping its smallest adversarial example.

    Not ``over_targets``: a point fooled toward one target may have a smaller adversarial
    example toward a later one, so no point drops out.
    """
    x_adv = x.clone()
    correct = (clean.argmax(dim=1) == y).nonzero().squeeze(1)
    if correct.numel() == 0:
        return x_adv
    xs, ys = x[correct], y[correct]
    ranks = range(2, target_classes + 2) if targeted else [None]
    best = torch.full((xs.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    kept = xs.clone()
    cap = _MINIMAL_RADIUS[options["norm"]]
    for rank in ranks:
        target = None if rank is None else runner_up(clean[correct], rank)
        for index in range(restarts):
            if index == 0:
                start = xs
            else:
                start = _random_start(xs, best.clamp(max=cap), options["norm"], generator)
            found, distance = _run(model, xs, ys, start, target, **options)
            better = distance < best
            torch.where(per_example(better, xs), found, kept, out=kept)
            torch.where(better, distance, best, out=best)
    x_adv[correct] = kept
    return x_adv
