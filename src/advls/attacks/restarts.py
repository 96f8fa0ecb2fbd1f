"""Restarts: run an attack again on the examples no run has fooled yet.

One driver for every attack that restarts (PGD, APGD, and what comes next). A run returns,
for the examples it was given, its points, which of them it fooled (``None`` when the caller
need not know: after the last run) and optionally a per-example score (higher is better,
e.g. APGD's best loss). An example keeps the point of the first run that fooled it; one never
fooled keeps the point of the best score, or of the last run when runs have no score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advls.attacks.geometry import per_example
from advls.attacks.validation import check_target_classes

__all__ = ["Run", "over_targets", "restart", "runner_up"]

#: ``run(x, y, last) -> (points, fooled or None, score or None)``.
Run = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None, Tensor | None]]


def restart(run: Run, x: Tensor, y: Tensor, runs: int) -> tuple[Tensor, Tensor | None]:
    """Up to ``runs`` runs, each on the examples still unfooled.

    Returns the points each example keeps and which were fooled (``None`` when the last run
    did not say). ``y`` may carry more than labels per row (a target beside each label, say):
    the driver only selects its rows.
    """
    x_adv, fooled, score = run(x, y, runs == 1)
    for index in range(1, runs):
        assert fooled is not None  # only the last run may leave it unknown
        todo = (~fooled).nonzero().squeeze(1)  # between runs: a host sync is fine
        if todo.numel() == 0:
            break
        found, fooled_now, score_now = run(x[todo], y[todo], index == runs - 1)
        keep = torch.ones(todo.numel(), dtype=torch.bool, device=x.device)
        if score is not None and score_now is not None and fooled_now is not None:
            keep = fooled_now | (score_now > score[todo])
            score[todo] = torch.where(keep, score_now, score[todo])
        x_adv[todo] = torch.where(per_example(keep, found), found, x_adv[todo])
        if fooled_now is None:
            fooled = None
        else:
            fooled[todo] = fooled_now
    return x_adv, fooled


def runner_up(logits: Tensor, rank: int) -> Tensor:
    """The class of the ``rank``-th highest logit per row (``rank=1`` the top one).

    For a correctly classified point, ``rank`` 2, 3, ... are its runner-up classes, the
    targets of APGD-T and FAB-T (AutoAttack's ``sort()[1][:, -rank]``; ties go to the
    higher class index, as there).
    """
    return logits.sort(dim=1).indices[:, -rank]


#: ``targeted_run(x, y, target) -> (points, fooled)``: one targeted attack of its points.
TargetedRun = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def over_targets(
    model: Callable[[Tensor], Tensor],
    run: TargetedRun,
    x: Tensor,
    y: Tensor,
    target_classes: int,
) -> Tensor:
    """The targeted attack against each of the ``target_classes`` top runner-up classes.

    For the ``t``-th target, the points no earlier target fooled are attacked toward their
    ``(t + 1)``-th highest class at the clean input, as AutoAttack does. The clean logits are
    computed once (one forward pass; AutoAttack recomputes the same logits per target). A
    point keeps the first target's point that fooled it (fooled: misclassified as anything
    but ``y``), else its clean input: an unfooled targeted point says nothing more.
    """
    with torch.no_grad():
        clean = model(x)
    check_target_classes(target_classes, clean.shape[1])
    x_adv = x.clone()
    fooled = clean.argmax(dim=1) != y
    for rank in range(2, target_classes + 2):
        todo = (~fooled).nonzero().squeeze(1)  # between targets: a host sync is fine
        if todo.numel() == 0:
            break
        target = runner_up(clean[todo], rank)
        found, fooled_now = run(x[todo], y[todo], target)
        x_adv[todo] = torch.where(per_example(fooled_now, found), found, x_adv[todo])
        fooled[todo] = fooled_now
    return x_adv
