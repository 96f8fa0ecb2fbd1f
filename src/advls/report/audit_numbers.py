"""The numbers an audit page is built on: its headline robust accuracy, who broke which
points, and how budgets and accuracies are written.

Pure arithmetic over an :class:`~advls.evaluate.Evaluation`; the page
(:mod:`advls.report.audit`) and its figures (:mod:`advls.report.audit_figures`) both read
these, so a number cannot differ between a table, a figure and the model card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from advls.evaluate import AttackOutcome, Evaluation, Flag

__all__ = [
    "HEADLINE_PROTOCOLS",
    "Headline",
    "PointBreakdown",
    "bounded_outcomes",
    "broken_points",
    "eps_text",
    "flag_verdict",
    "headline",
    "percent",
    "threat_model",
]

#: The protocols a headline prefers, best first; otherwise the first evaluated one.
HEADLINE_PROTOCOLS: tuple[str, ...] = ("autoattack", "strong")


def percent(share: float) -> str:
    """A share as a percentage to two decimals, without the sign ("12.50"): RobustBench's
    way, and the one rounding every headline number of the audit goes through."""
    return f"{100 * share:.2f}"


def eps_text(eps: float) -> str:
    """A budget as people write it: "0.3", or "8/255" where it is a whole number of grey
    levels that four significant digits do not spell out exactly."""
    short = f"{eps:.4g}"
    if float(short) == eps:
        return f"{eps:g}"
    levels = round(eps * 255)
    if levels and math.isclose(eps, levels / 255, rel_tol=1e-9):
        return f"{levels}/255"
    return short


def flag_verdict(flag: Flag) -> str:
    """``raised``, ``passed`` or ``unchecked``: a check that lacked what it needs did not pass."""
    return "raised" if flag.raised else ("passed" if flag.checked else "unchecked")


def threat_model(norm: str) -> str:
    """RobustBench's name of a protocol's norm: ``Linf`` or ``L2``."""
    return {"linf": "Linf", "l2": "L2"}[norm]


@dataclass(frozen=True)
class Headline:
    """The one robust accuracy an audit leads with (see :func:`headline`)."""

    protocol: str
    norm: str
    eps: float
    robust_accuracy: float
    robust_points: int
    points: int


def headline(evaluation: Evaluation) -> Headline:
    """The headline: the worst case of ``autoattack`` if it was evaluated, else of
    ``strong``, else of the first protocol, at that protocol's largest budget.

    Deterministic, so the page, the verdict and the model card name the same number.
    """
    names = evaluation.protocol_names
    protocol = next((name for name in HEADLINE_PROTOCOLS if name in names), names[0])
    eps = max(evaluation.budgets(protocol))
    robust = evaluation.worst_case_robust(protocol, eps)
    norm = next(p.norm for p in evaluation.protocols if p.name == protocol)
    return Headline(
        protocol=protocol,
        norm=norm,
        eps=eps,
        robust_accuracy=evaluation.worst_case(protocol, eps),
        robust_points=int(robust.sum()),
        points=evaluation.points,
    )


def bounded_outcomes(evaluation: Evaluation, protocol: str, eps: float) -> list[AttackOutcome]:
    """The bounded attacks of ``protocol`` at ``eps``, in the protocol's order."""
    return [
        outcome
        for outcome in evaluation.outcomes
        if outcome.protocol == protocol and outcome.spec.bounded and outcome.eps == eps
    ]


@dataclass(frozen=True)
class PointBreakdown:
    """Who broke which points, for one protocol at one budget.

    ``alone`` counts, per attack, the points it broke and no other attack of the protocol
    did; in a cascade, where each attack only meets the points the earlier ones left, the
    points it newly broke. ``several`` are points broken by more than one attack (never in
    a cascade), ``unbroken`` correct points no attack broke and ``clean_errors`` points
    misclassified before any attack, so that ``sum(alone) + several + unbroken +
    clean_errors == points``. ``black_box_only`` (not part of that sum) are the points
    broken only by black-box or transfer attacks: no gradient attack broke them.
    """

    protocol: str
    eps: float
    cascade: bool
    alone: dict[str, int]
    several: int
    unbroken: int
    clean_errors: int
    black_box_only: int
    points: int


def _broken_by(outcome: AttackOutcome, correct: Tensor, cascade: bool) -> Tensor:
    """The correct points ``outcome``'s attack broke; in a cascade only those it met."""
    # A cascade's outcome is cumulative (broken by it or an earlier attack): what it broke
    # itself is what it was given (``attacked``) and left fooled.
    return outcome.fooled & (outcome.attacked if cascade else correct)


def broken_points(evaluation: Evaluation, protocol: str, eps: float) -> PointBreakdown:
    """Per attack of ``protocol`` at ``eps``, the points it alone broke (see
    :class:`PointBreakdown`); clean errors count as broken by no attack."""
    correct = evaluation.correct
    cascade = next(p.cascade for p in evaluation.protocols if p.name == protocol)
    outcomes = bounded_outcomes(evaluation, protocol, eps)
    if outcomes:
        broken = torch.stack([_broken_by(o, correct, cascade) for o in outcomes])
    else:
        broken = torch.zeros((0, evaluation.points), dtype=torch.bool)
    count = broken.sum(dim=0)
    alone = [int((row & (count == 1)).sum()) for row in broken]
    gradient = torch.tensor([o.spec.white_box for o in outcomes], dtype=torch.bool)
    by_gradient = broken[gradient].any(dim=0)
    by_black_box = broken[~gradient].any(dim=0)
    return PointBreakdown(
        protocol=protocol,
        eps=eps,
        cascade=cascade,
        alone={o.spec.label: n for o, n in zip(outcomes, alone, strict=True)},
        several=int((count > 1).sum()),
        unbroken=int((correct & (count == 0)).sum()),
        clean_errors=int((~correct).sum()),
        black_box_only=int((by_black_box & ~by_gradient).sum()),
        points=evaluation.points,
    )
