"""Gradient-masking checks (Carlini et al. 2019's checklist, AutoAttack's sanity checks).

Each check is a plain function that reads what an evaluation measured and returns a
:class:`Flag`: whether it was raised, a sentence saying why, and the numbers behind it. A
check that lacks what it needs (e.g. the protocol gap without the ``strong`` protocol) comes
back ``checked=False`` rather than silently clean.

Differences of accuracy count only beyond ``Thresholds.tolerance`` or two points of the
sample, whichever is larger, so a check does not fire on sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from advls.evaluate.run import AttackOutcome, Evaluation

__all__ = ["CHECKS", "Flag", "SanityChecks", "Thresholds", "raise_flags", "zero_gradient_fraction"]


@dataclass(frozen=True)
class Thresholds:
    """When a check fires; each number is compared as described in its check."""

    tolerance: float = 0.01  # accuracy differences below this (or 2 points) are noise
    unbounded_success: float = 0.99  # an unbounded attack must fool at least this share
    above_chance: float = 0.02  # accuracy at the large eps may exceed 1/K by this much
    zero_gradients: float = 0.05  # share of points whose input gradient is exactly zero
    # A weaker protocol's worst case minus the strong one's. BIM with eps/steps steps from the
    # clean point trails the strong suite by up to ~0.2 on a plainly trained LeNet-MNIST (the
    # weaker attack alone), so only a larger gap says the gradients themselves mislead.
    protocol_gap: float = 0.30


@dataclass(frozen=True)
class SanityChecks:
    """Extra measurements the checks need, beyond the protocols' attacks."""

    zero_gradient_fraction: float  # of correctly classified points
    large_eps: float
    large_eps_accuracy: float  # PGD-CE at ``large_eps``, over all points
    large_eps_attack: dict[str, Any]
    unbounded_success_rate: float  # of correctly classified points
    unbounded_attack: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Flag:
    name: str
    raised: bool
    checked: bool
    message: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def zero_gradient_fraction(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, device: torch.device
) -> float:
    """Share of points whose cross-entropy gradient w.r.t. the input is exactly zero.

    Exactly zero, not small: a confident, healthy model has tiny gradients, but only a
    saturated softmax (every wrong class more than ~100 logits behind in float32) or a
    non-differentiable layer gives none at all.
    """
    if len(images) == 0:
        return math.nan
    zero = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        x = (x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()).requires_grad_(True)
        y = labels[start : start + batch_size].to(device)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return zero / len(images)


# --------------------------------------------------------------------------- the checks
def _noise(evaluation: Evaluation, thresholds: Thresholds) -> float:
    return max(thresholds.tolerance, 2 / max(evaluation.points, 1))


def _bounded(evaluation: Evaluation) -> list[AttackOutcome]:
    return [o for o in evaluation.outcomes if o.spec.bounded]


def _from_evidence(name: str, evidence: list[dict[str, Any]], raised: str, clear: str) -> Flag:
    """A checked flag that is raised exactly when there is evidence."""
    return Flag(name, bool(evidence), True, raised if evidence else clear, evidence)


def single_step_stronger(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """A one-step attack beating an iterative one at the same budget: the iterative attack
    follows gradients that do not lead where a single large step does."""
    noise = _noise(evaluation, thresholds)
    evidence = []
    pairs = 0
    for single in _bounded(evaluation):
        if single.spec.kind != "single-step":
            continue
        for other in _bounded(evaluation):
            same = other.protocol == single.protocol and other.eps == single.eps
            if not same or other.spec.kind != "iterative":
                continue
            pairs += 1
            if single.robust_accuracy < other.robust_accuracy - noise:
                evidence.append(
                    {
                        "protocol": single.protocol,
                        "eps": single.eps,
                        "single_step": single.spec.label,
                        "single_step_accuracy": single.robust_accuracy,
                        "iterative": other.spec.label,
                        "iterative_accuracy": other.robust_accuracy,
                    }
                )
    if not pairs:
        return Flag("single_step_stronger", False, False, "no single-step/iterative pair ran")
    return _from_evidence(
        "single_step_stronger",
        evidence,
        f"a single-step attack beat an iterative one in {len(evidence)} case(s)",
        "iterative attacks were at least as strong as single-step ones",
    )


def not_monotone(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """Robust accuracy that rises with the budget: a larger ball contains the smaller one."""
    noise = _noise(evaluation, thresholds)
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for outcome in _bounded(evaluation):
        key = (outcome.protocol, outcome.spec.label)
        series.setdefault(key, []).append((outcome.eps, outcome.robust_accuracy))
    for protocol in evaluation.protocol_names:
        series[(protocol, "worst case")] = [
            (eps, evaluation.worst_case(protocol, eps)) for eps in evaluation.eps
        ]
    evidence = []
    checked = False
    for (protocol, label), points in series.items():
        points.sort()
        if len(points) < 2:
            continue
        checked = True
        lowest = points[0]
        for eps, accuracy in points[1:]:
            if accuracy > lowest[1] + noise:
                evidence.append(
                    {
                        "protocol": protocol,
                        "attack": label,
                        "eps": [lowest[0], eps],
                        "accuracy": [lowest[1], accuracy],
                    }
                )
                break
            lowest = min(lowest, (eps, accuracy), key=lambda item: item[1])
    if not checked:
        return Flag("not_monotone", False, False, "needs at least two eps")
    return _from_evidence(
        "not_monotone",
        evidence,
        f"accuracy rose with eps for {len(evidence)} attack(s)",
        "accuracy never rose with eps",
    )


def unbounded_incomplete(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """An unbounded attack must reach (almost) every point; one that cannot is being misled."""
    checks = evaluation.checks
    if checks is None or math.isnan(checks.unbounded_success_rate):
        return Flag("unbounded_incomplete", False, False, "the unbounded attack did not run")
    rate = checks.unbounded_success_rate
    raised = rate < thresholds.unbounded_success
    evidence = [{"attack": checks.unbounded_attack, "success_rate": rate}]
    message = f"an unbounded attack fooled {rate:.1%} of the correctly classified points" + (
        f" (< {thresholds.unbounded_success:.0%})" if raised else ""
    )
    return Flag("unbounded_incomplete", raised, True, message, evidence)


def black_box_stronger(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """Score-based or transfer attacks breaking points that every white-box attack missed:
    the gradients the white-box attacks follow are not the model's real sensitivity."""
    noise = _noise(evaluation, thresholds)
    evidence = []
    checked = False
    for outcome in _bounded(evaluation):
        if outcome.spec.kind not in ("black-box", "transfer"):
            continue
        white = [
            o
            for o in _bounded(evaluation)
            if o.protocol == outcome.protocol and o.eps == outcome.eps and o.spec.white_box
        ]
        if not white:
            continue
        checked = True
        fooled_by_white = torch.stack([o.fooled for o in white]).any(dim=0)
        only = outcome.fooled & ~fooled_by_white
        share = float(only.float().mean())
        if share > noise:
            best = min(white, key=lambda o: o.robust_accuracy)
            evidence.append(
                {
                    "protocol": outcome.protocol,
                    "eps": outcome.eps,
                    "attack": outcome.spec.label,
                    "accuracy": outcome.robust_accuracy,
                    "best_white_box": best.spec.label,
                    "best_white_box_accuracy": best.robust_accuracy,
                    "points_only_it_broke": int(only.sum()),
                }
            )
    if not checked:
        return Flag("black_box_stronger", False, False, "no black-box or transfer attack ran")
    return _from_evidence(
        "black_box_stronger",
        evidence,
        f"black-box/transfer attacks broke points no white-box attack broke in "
        f"{len(evidence)} case(s)",
        "white-box attacks found every point the black-box ones found",
    )


def large_eps_above_chance(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """At a budget that can turn any image into any other, accuracy must fall to chance."""
    checks = evaluation.checks
    if checks is None or math.isnan(checks.large_eps_accuracy):
        return Flag("large_eps_above_chance", False, False, "the large-eps attack did not run")
    chance = 1 / evaluation.num_classes
    accuracy = checks.large_eps_accuracy
    raised = accuracy > chance + thresholds.above_chance
    evidence = [
        {"eps": checks.large_eps, "attack": checks.large_eps_attack, "accuracy": accuracy,
         "chance": chance}
    ]  # fmt: skip
    message = f"accuracy {accuracy:.3f} at eps {checks.large_eps} (chance {chance:.3f})"
    return Flag("large_eps_above_chance", raised, True, message, evidence)


def zero_gradients(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """Many points with an exactly zero input gradient: a saturated softmax or a
    non-differentiable layer, both of which stop gradient attacks dead."""
    checks = evaluation.checks
    if checks is None or math.isnan(checks.zero_gradient_fraction):
        return Flag("zero_gradients", False, False, "input gradients were not measured")
    share = checks.zero_gradient_fraction
    raised = share > thresholds.zero_gradients
    evidence = [{"zero_gradient_fraction": share, "loss": "ce"}]
    message = f"{share:.1%} of correctly classified points have an exactly zero CE gradient"
    return Flag("zero_gradients", raised, True, message, evidence)


def protocol_gap(evaluation: Evaluation, thresholds: Thresholds) -> Flag:
    """A weaker protocol's robust accuracy far above the strong protocol's worst case."""
    if "strong" not in evaluation.protocol_names or len(evaluation.protocol_names) < 2:
        return Flag("protocol_gap", False, False, "needs the strong protocol and another one")
    evidence = []
    for protocol in evaluation.protocol_names:
        if protocol == "strong":
            continue
        for eps in evaluation.eps:
            weaker, strong = (
                evaluation.worst_case(protocol, eps),
                evaluation.worst_case("strong", eps),
            )
            if weaker - strong > thresholds.protocol_gap:
                evidence.append(
                    {
                        "protocol": protocol,
                        "eps": eps,
                        "accuracy": weaker,
                        "strong_accuracy": strong,
                    }
                )
    gap = thresholds.protocol_gap
    return _from_evidence(
        "protocol_gap",
        evidence,
        f"the strong protocol lowered robust accuracy by more than {gap:.2f} in "
        f"{len(evidence)} case(s)",
        f"every protocol is within {gap:.2f} of the strong worst case",
    )


Check = Callable[["Evaluation", Thresholds], Flag]

#: Every check, by the name of the flag it raises.
CHECKS: dict[str, Check] = {
    "single_step_stronger": single_step_stronger,
    "not_monotone": not_monotone,
    "unbounded_incomplete": unbounded_incomplete,
    "black_box_stronger": black_box_stronger,
    "large_eps_above_chance": large_eps_above_chance,
    "zero_gradients": zero_gradients,
    "protocol_gap": protocol_gap,
}


def raise_flags(
    evaluation: Evaluation, thresholds: Thresholds, names: Sequence[str] | None = None
) -> list[Flag]:
    """Run the checks ``names`` (all by default) on ``evaluation``."""
    return [CHECKS[name](evaluation, thresholds) for name in (names or CHECKS)]
