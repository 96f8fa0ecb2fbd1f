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

__all__ = ["Run", "restart"]

#: ``run(x, y, last) -> (points, fooled or None, score or None)``.
Run = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None, Tensor | None]]


def restart(run: Run, x: Tensor, y: Tensor, runs: int) -> Tensor:
    """Up to ``runs`` runs, each on the examples still unfooled; the points each keeps."""
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
        if fooled_now is not None:
            fooled[todo] = fooled_now
    return x_adv
