"""Carlini & Wagner (2017) L2 attack: minimal-L2 adversarials, untargeted.

The attack optimises ``w`` with Adam where ``x_adv = (tanh(w) + 1) / 2`` keeps every pixel in
[0, 1], minimising per example::

    ||x_adv - x||_2^2 + c * max(Z_y - max_{k != y} Z_k + confidence, 0)

over the logits ``Z``, with a per-example binary search over the constant ``c``. The whole
batch moves with one forward and backward pass per iteration; the only host synchronisation
in the inner loop is the abort-early check every tenth of the steps.

Conventions follow foolbox 3's ``L2CarliniWagnerAttack`` (defaults, the ``0.999999`` squeeze
before ``atanh``, distance measured from the reconstructed start, the abort-early test, the
binary-search update and the last-step ``c = upper bound`` rule for ten or more binary steps),
except that examples never made adversarial return the original input (flagged
``success=False``) rather than zeros, and inputs misclassified to begin with come back
unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advls.attacks.core import CountingModel, register
from advls.attacks.geometry import per_example
from advls.attacks.objectives import margin
from advls.attacks.validation import check_number

__all__ = ["cw_l2"]

#: ``atanh`` of ``(2x - 1) * _SQUEEZE``: pixels at exactly 0 or 1 get a finite ``w`` and can move.
_SQUEEZE = 1.0 - 1e-6
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@register("cw_l2", norms=("l2",))
def cw_l2(
    model: CountingModel,
    x: Tensor,
    y: Tensor,
    *,
    binary_search_steps: int = 9,
    steps: int = 1000,
    lr: float = 0.01,
    initial_const: float = 1e-3,
    confidence: float = 0.0,
    abort_early: bool = True,
) -> tuple[Tensor, Tensor]:
    """Carlini-Wagner L2 with a per-example binary search over ``c``.

    Args:
        binary_search_steps: rounds of the search over ``c``; each restarts Adam from ``x``. After a
            round an example that became adversarial (with the ``confidence`` margin) sets
            its upper bound to ``c``, otherwise its lower bound; ``c`` then moves to the
            midpoint, or grows tenfold while no upper bound is known.
        steps: Adam iterations per round.
        lr: Adam step size on ``w``.
        initial_const: the starting ``c`` of every example.
        confidence: the margin kappa: an example counts as adversarial when
            ``max_{k != y} Z_k - Z_y >= confidence``.
        abort_early: end a round once the summed loss has not fallen by 0.01 % over the
            last ``ceil(steps / 10)`` iterations.

    Returns:
        Per example the smallest-L2 adversarial found over all rounds and iterations; the
        original input where none was found (``success`` False) or where ``x`` was already
        misclassified (``success`` True, ``l2`` 0). ``model_calls`` counts the clean
        prediction, one per iteration (forward + backward) and the final scoring.
    """
    lr = check_number(lr, "lr", positive=True)
    initial_const = check_number(initial_const, "initial_const", positive=True)
    confidence = check_number(confidence, "confidence", positive=False)

    with torch.no_grad():
        clean = model(x)
    if clean.shape[1] < 2:
        raise ValueError("the model must return logits for at least 2 classes")
    with torch.enable_grad():
        best, found = _search(
            model,
            x,
            y,
            clean,
            binary_search_steps=binary_search_steps,
            steps=steps,
            lr=lr,
            initial_const=initial_const,
            confidence=confidence,
            abort_early=abort_early,
        )
    x_adv = torch.where(per_example(found, x), best.to(x.dtype), x).clamp_(0.0, 1.0)
    with torch.no_grad():
        logits = model(x_adv)
    # A point judged adversarial in the loop but not by this forward pass (a tie on the
    # decision boundary) goes back to the original input, as every failure does.
    lost = found & (logits.argmax(dim=1) == y)
    if bool(lost.any()):
        return torch.where(per_example(lost, x), x, x_adv)  # the contract scores it again
    return x_adv, logits


def _search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    *,
    binary_search_steps: int,
    steps: int,
    lr: float,
    initial_const: float,
    confidence: float,
    abort_early: bool,
) -> tuple[Tensor, Tensor]:
    """The binary search and Adam loops; returns the best adversarials and where found."""
    n = x.shape[0]
    dtype = torch.promote_types(x.dtype, torch.float32)  # the squeeze needs >= float32
    device = x.device
    xw = x.to(dtype)

    w_start = torch.atanh((2.0 * xw - 1.0) * _SQUEEZE)
    x_start = (torch.tanh(w_start) + 1.0) / 2.0  # distances in the objective start at 0

    already = clean.argmax(dim=1) != y  # misclassified to begin with: keep x, l2 = 0
    best = xw.clone()
    best_l2 = torch.where(
        already,
        torch.zeros((), dtype=dtype, device=device),
        torch.full((), math.inf, dtype=dtype, device=device),
    )
    if n == 0:
        return best, already

    # Adversarial "with confidence": the true logit raised by kappa still loses the argmax.
    lift = torch.zeros_like(clean, dtype=dtype).scatter_(1, y[:, None], confidence)
    consts = torch.full((n,), initial_const, dtype=dtype, device=device)
    lower = torch.zeros(n, dtype=dtype, device=device)
    upper = torch.full((n,), math.inf, dtype=dtype, device=device)
    check_every = math.ceil(steps / 10)

    for round_ in range(binary_search_steps):
        if round_ == binary_search_steps - 1 and binary_search_steps >= 10:
            consts = upper.clamp(max=1e10)  # foolbox/CW: repeat the best bound last
        w = w_start.clone().requires_grad_(True)
        m = torch.zeros_like(w_start)
        v = torch.zeros_like(w_start)
        found = torch.zeros(n, dtype=torch.bool, device=device)
        previous = math.inf

        for step in range(steps):
            x_adv = (torch.tanh(w) + 1.0) / 2.0
            logits = model(x_adv.to(x.dtype))
            hinge = (confidence - margin(logits, y)).clamp_min(0.0)
            distance = (x_adv - x_start).square().flatten(1).sum(dim=1)
            loss = (distance + consts * hinge).sum()
            (grad,) = torch.autograd.grad(loss, w)

            with torch.no_grad():
                success = (logits.detach().to(dtype) + lift).argmax(dim=1) != y
                found |= success
                l2 = (x_adv.detach() - xw).flatten(1).norm(p=2, dim=1)
                better = success & (l2 < best_l2)
                best = torch.where(per_example(better, best), x_adv.detach(), best)
                best_l2 = torch.where(better, l2, best_l2)

                t = step + 1
                m.mul_(_BETA1).add_(grad, alpha=1.0 - _BETA1)
                v.mul_(_BETA2).addcmul_(grad, grad, value=1.0 - _BETA2)
                denom = v.sqrt().div_(math.sqrt(1.0 - _BETA2**t)).add_(_ADAM_EPS)
                w.addcdiv_(m, denom, value=-lr / (1.0 - _BETA1**t))

            if abort_early and step % check_every == 0:
                current = float(loss.detach())
                if not current <= 0.9999 * previous:
                    break  # no progress over the last tenth of the steps
                previous = current

        upper = torch.where(found, consts, upper)
        lower = torch.where(found, lower, consts)
        consts = torch.where(upper.isinf(), consts * 10.0, (lower + upper) / 2.0)

    return best, already | best_l2.isfinite()
