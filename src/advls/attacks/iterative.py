"""Iterative gradient attacks: BIM (Kurakin et al. 2017) and PGD (Madry et al. 2018).

Both repeat ``x <- proj(x + step * direction(grad_x loss))`` with one forward and one backward
pass per step. BIM is L-inf only and starts at ``x``; PGD starts at a random point of the
ball (L-inf or L2) and can restart. The update order follows foolbox 3's
``BaseGradientDescent`` (step, then ``x0 + clip(x - x0)`` onto the ball, then clip to
[0, 1]), so BIM equals foolbox's ``LinfBasicIterativeAttack`` given the same absolute step.

``model_calls``: one forward+backward per step (the first also checks the model's output)
and one final scoring of ``x_adv``, so BIM and single-run PGD cost ``steps + 1``. With
restarts, every run but the last scores its output (one more call) to find the examples
still to attack, so ``R`` runs cost ``R * (steps + 1)``; when every example is fooled before
the last run, the loop stops after ``r`` runs at ``1 + r * (steps + 1)``.
"""

from __future__ import annotations

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
    check_number,
    check_steps,
    eval_mode,
    make_result,
)

__all__ = ["bim", "pgd"]


def _check_step_size(step_size: float | None) -> float | None:
    return None if step_size is None else check_number(step_size, "step_size", positive=True)


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """Reshape an (N,) tensor to broadcast against an (N, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _iterate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    objective: LossFn,
) -> Tensor:
    """Run ``steps`` projected ascent steps from ``x_adv`` (updated in place and returned).

    The hot path: one forward and one backward pass per step, the gradient taken with respect
    to the input only, in-place updates and no host synchronisation.
    """
    for _ in range(steps):
        with torch.enable_grad():
            leaf = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model(leaf), y).sum(), leaf)
        with torch.no_grad():
            if norm == "linf":
                # An expanded gradient (an input the loss ignores) cannot be signed in place.
                grad = grad if grad.is_contiguous() else grad.contiguous()
                x_adv.add_(grad.sign_(), alpha=step_size)
                # foolbox's order: x0 + clip(x - x0, -eps, eps), then the [0, 1] box.
                x_adv.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)
            else:
                size = grad.flatten(1).norm(p=2, dim=1).clamp_min_(1e-12)
                x_adv.addcdiv_(grad, _per_example(size, grad), value=step_size)
                delta = x_adv.sub_(x)
                size = delta.flatten(1).norm(p=2, dim=1).clamp_min_(1e-12)
                factor = (eps / size).clamp_(max=1.0)
                delta.mul_(_per_example(factor, delta)).add_(x).clamp_(0.0, 1.0)
    return x_adv


def _random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the eps-ball around ``x``, clipped to [0, 1] (a fresh tensor)."""
    options = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "linf":
        noise = torch.rand(x.shape, **options).mul_(2 * eps).sub_(eps)
    else:
        # Uniform in the L2 ball: a Gaussian direction with radius eps * U^(1/d).
        noise = torch.randn(x.shape, **options)
        size = noise.flatten(1).norm(p=2, dim=1).clamp_min_(1e-12)
        dim = noise[0].numel() if noise.shape[0] else 1
        radius = torch.rand(x.shape[0], **options).pow_(1.0 / dim).mul_(eps)
        noise.mul_(_per_example(radius / size, noise))
    return noise.add_(x).clamp_(0.0, 1.0)


def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
) -> AttackResult:
    """Basic iterative method (Kurakin et al.): iterated FGSM projected every step.

    ``x_{t+1} = clip_[0,1](x + clip(x_t + step_size * sign(grad) - x, -eps, eps))`` from
    ``x_0 = x``, with no random start.

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        steps: number of signed-gradient steps.
        step_size: absolute step; defaults to ``eps / steps`` (the ball's radius is reached
            exactly after ``steps`` steps in a constant direction). Kurakin et al. use
            ``1 / 255`` with ``min(eps * 255 + 4, 1.25 * eps * 255)`` steps; foolbox's default
            is ``0.2 * eps``: pass ``step_size`` to match them.
        loss: ``ce``, ``margin``, ``dlr``, ``smoothed`` or a callable (see ``attack_loss``).
        smoothing: for ``loss="smoothed"``: ``{"method": ..., "alpha": ..., "temperature": ...}``.

    ``model_calls == steps + 1`` (one per step, then the final scoring).
    """
    eps = check_eps(eps)
    steps = check_steps(steps)
    step = _check_step_size(step_size)
    step = eps / steps if step is None else step
    objective = attack_loss(loss, **(smoothing or {}))
    with eval_mode(model):
        check_batch(x, y)
        counted = CountingModel(model, labels=y)
        x0 = x.detach()
        x_adv = _iterate(
            counted,
            x0,
            y,
            x0.clone(),
            eps=eps,
            norm="linf",
            steps=steps,
            step_size=step,
            objective=objective,
        )
        return make_result(counted, x0, x_adv, y)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str | LossFn = "ce",
    smoothing: dict | None = None,
    seed: int | None = None,
) -> AttackResult:
    """Projected gradient descent (Madry et al.), L-inf (sign step) or L2 (unit-gradient step).

    Each run starts at a uniform random point of the eps-ball (L-inf: uniform per
    coordinate; L2: Gaussian direction, radius ``eps * U^(1/d)``), clipped to [0, 1], and
    takes ``steps`` steps, projecting onto the ball and into [0, 1] after each. With
    ``restarts > 1`` only the examples not yet misclassified are attacked again; each example
    keeps the output of the first run that fooled it, or else that of the last run.

    Args:
        eps: budget in [0, 1] pixel units (at most 1 for L-inf).
        norm: ``linf`` or ``l2``.
        steps: steps per run.
        step_size: absolute step; defaults to ``2.5 * eps / steps`` (Madry et al.).
        restarts: number of random starts (>= 1). Without ``random_start`` every run would
            be the same, so only one runs.
        random_start: start at a random point of the ball (else at ``x``, which is BIM with
            this step size for L-inf).
        loss: ``ce``, ``margin``, ``dlr``, ``smoothed`` or a callable (see ``attack_loss``).
        smoothing: for ``loss="smoothed"``: ``{"method": ..., "alpha": ..., "temperature": ...}``.
        seed: seeds a private generator on the input's device, so the result is reproducible
            and the global RNG is left alone; ``None`` draws from the global RNG.

    ``model_calls``: ``steps + 1`` for one run, ``R * (steps + 1)`` for ``R`` runs, or
    ``1 + r * (steps + 1)`` when all examples were fooled after ``r < restarts`` runs.
    """
    norm = check_norm(norm)
    eps = check_eps(eps, norm)
    steps = check_steps(steps)
    step = _check_step_size(step_size)
    step = 2.5 * eps / steps if step is None else step
    restarts = check_int(restarts, "restarts")
    if not isinstance(random_start, bool):
        raise ValueError(f"random_start must be True or False, got {random_start!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    objective = attack_loss(loss, **(smoothing or {}))
    runs = restarts if random_start else 1
    with eval_mode(model):
        check_batch(x, y)
        counted = CountingModel(model, labels=y)
        x0 = x.detach()
        generator = None
        if random_start and seed is not None:
            generator = torch.Generator(device=x0.device).manual_seed(seed)
        x_adv = x0  # replaced by the first run's output
        todo: Tensor | None = None  # indices still to attack; None means the whole batch
        for run in range(runs):
            xs, ys = (x0, y) if todo is None else (x0[todo], y[todo])
            start = _random_start(xs, eps, norm, generator) if random_start else xs.clone()
            found = _iterate(
                counted,
                xs,
                ys,
                start,
                eps=eps,
                norm=norm,
                steps=steps,
                step_size=step,
                objective=objective,
            )
            if todo is None:
                x_adv = found
            else:
                x_adv[todo] = found
            if run == runs - 1:
                break
            with torch.no_grad():
                missed = (counted(found).argmax(dim=1) == ys).nonzero().squeeze(1)
            todo = missed if todo is None else todo[missed]
            if todo.numel() == 0:
                break
        return make_result(counted, x0, x_adv, y)
