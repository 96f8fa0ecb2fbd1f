"""DeepFool (Moosavi-Dezfooli et al. 2016): the smallest step across the linearised boundary.

At every iteration each still-correct example is linearised around its current point; among
its candidate classes ``k`` the one whose boundary ``f_k = f_y`` is nearest in the chosen
norm is picked and the step that just reaches that (linear) boundary is added to the
example's accumulated perturbation. The point returned is
``clip(x + (1 + overshoot) * r_total, 0, 1)``. The update and its constants follow foolbox 3's
``L2DeepFoolAttack`` / ``LinfDeepFoolAttack``, so the two give the same points.

The whole batch moves at once: one forward pass per iteration over the examples that are
still correctly classified, then one backward pass per candidate slot (not per example)
through that same graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advls.attacks.core import register
from advls.attacks.geometry import Norm, per_example
from advls.attacks.validation import check_int, check_number

DEEPFOOL_LOSSES: tuple[str, ...] = ("logits", "crossentropy")

# foolbox 3's constants: the first keeps the norms away from zero, the second pushes every
# step a little past the linearised boundary (on top of ``overshoot``).
_NORM_FLOOR = 1e-8
_STEP_EXTRA = 1e-4


def _candidate_classes(logits: Tensor, y: Tensor, candidates: int) -> Tensor:
    """``(N, candidates)``: the label first, then the most likely other classes (clean logits)."""
    others = logits.scatter(1, y[:, None], -math.inf)
    top = others.topk(candidates - 1, dim=1).indices
    return torch.cat([y[:, None], top], dim=1)


@register("deepfool", norms=("l2", "linf"))
def deepfool(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm = "l2",
    steps: int = 50,
    candidates: int = 10,
    overshoot: float = 0.02,
    loss: str = "logits",
) -> tuple[Tensor, Tensor]:
    """Minimal untargeted perturbation by iterated linearisation (DeepFool).

    Args:
        norm: ``l2`` or ``linf``: the norm in which the nearest linearised boundary is taken.
        steps: most iterations; an example stops as soon as it is misclassified.
        candidates: classes considered, counting the true class (as in foolbox): the label
            and the ``candidates - 1`` other classes with the largest clean logits.
        overshoot: the returned point is ``x + (1 + overshoot) * r_total`` (clipped to [0, 1]).
        loss: ``logits`` (differences of logits, foolbox's default) or ``crossentropy``
            (differences of log-softmax; mathematically the same differences, so the two
            agree up to rounding).

    Returns:
        An ``AttackResult``. Inputs misclassified to begin with come back unchanged. An
        example not misclassified after ``steps`` iterations comes back at its last point,
        flagged ``success=False``. ``model_calls`` counts one call to score the clean batch,
        one forward pass per iteration (its backward passes included) and one to score the
        result.
    """
    candidates = check_int(candidates, "candidates", minimum=2)  # the label and another
    overshoot = check_number(overshoot, "overshoot")
    if loss not in DEEPFOOL_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(DEEPFOOL_LOSSES)}, got {loss!r}")

    with torch.no_grad():
        clean_logits = model(x)
    num_classes = clean_logits.shape[1]  # >= 2: the counted model checked the first output
    candidates = min(candidates, num_classes)
    classes = _candidate_classes(clean_logits, y, candidates)
    x_adv = x.clone()
    r_total = torch.zeros_like(x)
    correct = clean_logits.argmax(dim=1) == y
    active = correct.nonzero().squeeze(1)
    remaining, forced = steps, False
    while True:
        if active.numel() and remaining:
            remaining -= 1
            with torch.enable_grad():  # the caller may be inside torch.no_grad()
                point = x_adv[active].requires_grad_(True)
                logits = model(point)
                # Rows now misclassified leave the batch and keep their point; rows sent
                # back by the full-batch check below take one step regardless.
                still_correct = logits.argmax(dim=1) == y[active]
                keep = torch.ones_like(still_correct) if forced else still_correct
                keep = keep.nonzero().squeeze(1)
                forced = False
                if keep.numel():
                    scores = logits.log_softmax(dim=1) if loss == "crossentropy" else logits
                    step = _linearised_step(point, scores, classes[active[keep]], keep, norm)
            active = active[keep]
            if active.numel():
                r_total[active] += step
                x_adv[active] = (x[active] + (1.0 + overshoot) * r_total[active]).clamp_(0.0, 1.0)
            continue
        # The loop judged subsets of the batch; CPU kernels round differently at other
        # batch sizes, so a point on the boundary can flip back. Score the whole batch and
        # push such points on while steps remain.
        with torch.no_grad():
            final = model(x_adv)
        active = (correct & (final.argmax(dim=1) == y)).nonzero().squeeze(1)
        if active.numel() == 0 or remaining == 0:
            return x_adv, final
        forced = True


def _linearised_step(
    point: Tensor, scores: Tensor, classes: Tensor, keep: Tensor, norm: str
) -> Tensor:
    """The DeepFool step for rows ``keep`` of ``point``, whose class scores are ``scores``.

    For each candidate slot ``j`` one backward pass gives, for every kept row at once, the
    gradient ``w_k`` of ``f_k - f_y`` (``k = classes[:, j]``); a running minimum keeps the
    slot whose linearised boundary is nearest, ``|f_k - f_y| / ||w_k||_q`` with ``q`` the
    dual norm (2 for L2, 1 for L-inf), so the per-slot gradients are never all held at once.
    """
    scores = scores[keep]
    true = scores.gather(1, classes[:, :1]).squeeze(1)
    slots = classes.shape[1]
    best_dist = best_grad = None
    for j in range(1, slots):
        gap = scores.gather(1, classes[:, j : j + 1]).squeeze(1) - true
        (grad,) = torch.autograd.grad(gap.sum(), point, retain_graph=j < slots - 1)
        grad = grad[keep]
        flat = grad.flatten(1)
        dual = flat.norm(p=2, dim=1) if norm == "l2" else flat.abs().sum(dim=1)
        dist = gap.detach().abs() / (dual + _NORM_FLOOR)
        if best_dist is None or best_grad is None:
            best_dist, best_grad = dist, grad
        else:
            nearer = dist < best_dist  # strict: ties go to the more likely class, like argmin
            best_dist = torch.where(nearer, dist, best_dist)
            best_grad = torch.where(per_example(nearer, grad), grad, best_grad)
    assert best_dist is not None and best_grad is not None
    size = best_dist + _STEP_EXTRA
    if norm == "l2":
        length = best_grad.flatten(1).norm(p=2, dim=1) + _NORM_FLOOR
        return per_example(size / length, best_grad) * best_grad
    return per_example(size, best_grad) * best_grad.sign()
