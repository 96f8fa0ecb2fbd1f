"""Gradient-masking checks (Carlini et al. 2019's checklist, AutoAttack's sanity checks).

Each check is one class holding all of itself: the flag it raises, how it judges an
evaluation and, when the protocols' attacks are not enough, what it measures first (the input
gradients, or an extra attack run through the evaluation's shared runner, so an attack a
protocol already ran is not run again) and how that measurement is stored. A check that lacks
what it needs (e.g. the protocol gap without the ``strong`` protocol) comes back
``checked=False`` rather than silently clean. :data:`CHECKS` is the registry: adding a check
is writing its class and listing it there; flags come in the registry's order.

Differences of accuracy count only beyond ``Thresholds.tolerance`` or two points of the
sample, whichever is larger, so a check does not fire on sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advls.attacks import eval_mode
from advls.evaluate.results import AttackOutcome, Evaluation, Flag, SanityChecks
from advls.evaluate.runner import AttackRunner, to_unit

__all__ = [
    "CHECKS",
    "STAGES",
    "AuditRecord",
    "Check",
    "EvidenceCheck",
    "NotChecked",
    "Thresholds",
    "audit_records",
    "measure_checks",
    "raise_flags",
    "zero_gradient_fraction",
]

#: What a check's measurement needs, which sets when it runs (see :data:`STAGES`).
Stage = Literal["gradients", "bounded attack", "minimal attack"]
#: The order measurements run in, and within a stage the registry's: gradients first, then
#: extra attacks with a budget, then unbounded ones, the order protocols list theirs in.
STAGES: tuple[Stage, ...] = ("gradients", "bounded attack", "minimal attack")


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


class AuditRecord(NamedTuple):
    """One measurement as a result row of the ``audit`` protocol (see ``advls.store.Result``)."""

    attack: str
    eps: float | None
    metric: str
    value: float


class NotChecked(Exception):
    """Raised by a judge that lacks what it needs; the message says what was missing."""


class Check:
    """One gradient-masking check: the flag it raises, how it judges, what it measures.

    A subclass sets ``name`` (its flag's) and writes ``judge``, which raises
    :class:`NotChecked` when the evaluation lacks what it needs. One that needs more than
    the protocols' attacks also sets ``measures`` (its :data:`Stage`) and writes
    ``measure``, whose entries land in ``Evaluation.checks`` for ``judge`` to read, and
    ``records``, those entries as store rows. Calling a check judges.
    """

    name: ClassVar[str]
    measures: ClassVar[Stage | None] = None

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """What this check needs beyond the protocols' attacks, by name (its JSON keys)."""
        return {}

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """This check's measurements in ``measured`` as store rows."""
        return []

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        """The flag, raised or not, with a sentence saying why and the numbers behind it."""
        raise NotImplementedError

    def __call__(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        try:
            return self.judge(evaluation, thresholds)
        except NotChecked as missing:  # not silently clean: checked=False says so
            return Flag(self.name, False, False, str(missing))

    def flag(self, raised: bool, message: str, evidence: list[dict[str, Any]]) -> Flag:
        """This check's flag, checked."""
        return Flag(self.name, raised, True, message, evidence)


class EvidenceCheck(Check):
    """A check on the protocols' outcomes, raised exactly when it finds evidence.

    A subclass writes ``evidence`` and two messages, format strings that may use
    ``{count}`` (how many cases) and ``{thresholds}``.
    """

    raised_message: ClassVar[str]
    clear_message: ClassVar[str]

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
        """The cases that raise the flag; raises :class:`NotChecked` with nothing to compare."""
        raise NotImplementedError

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        """Raised when there is evidence, with ``raised_message``; else ``clear_message``."""
        evidence = self.evidence(evaluation, thresholds)
        message = self.raised_message if evidence else self.clear_message
        message = message.format(count=len(evidence), thresholds=thresholds)
        return self.flag(bool(evidence), message, evidence)


def _noise(evaluation: Evaluation, thresholds: Thresholds) -> float:
    return max(thresholds.tolerance, 2 / max(evaluation.points, 1))


def _bounded(evaluation: Evaluation) -> list[AttackOutcome]:
    return [o for o in evaluation.outcomes if o.spec.bounded]


def _measured(evaluation: Evaluation, name: str, missing: str) -> Any:
    """The measurement ``name``; :class:`NotChecked` (``missing``) where it was not taken or
    came out NaN (no point to measure)."""
    checks = evaluation.checks
    value = checks.get(name) if checks is not None else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise NotChecked(missing)
    return value


# --------------------------------------------------------------------------- on the outcomes
class SingleStepStronger(EvidenceCheck):
    """A one-step attack beating an iterative one at the same budget: the iterative attack
    follows gradients that do not lead where a single large step does."""

    name = "single_step_stronger"
    raised_message = "a single-step attack beat an iterative one in {count} case(s)"
    clear_message = "iterative attacks were at least as strong as single-step ones"

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
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
            raise NotChecked("no single-step/iterative pair ran")
        return evidence


class NotMonotone(EvidenceCheck):
    """Robust accuracy that rises with the budget: a larger ball contains the smaller one."""

    name = "not_monotone"
    raised_message = "accuracy rose with eps for {count} attack(s)"
    clear_message = "accuracy never rose with eps"

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
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
            raise NotChecked("needs at least two eps")
        return evidence


class BlackBoxStronger(EvidenceCheck):
    """Score-based or transfer attacks breaking points that every white-box attack missed:
    the gradients the white-box attacks follow are not the model's real sensitivity."""

    name = "black_box_stronger"
    raised_message = (
        "black-box/transfer attacks broke points no white-box attack broke in {count} case(s)"
    )
    clear_message = "white-box attacks found every point the black-box ones found"

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
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
            if float(only.float().mean()) > noise:
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
            raise NotChecked("no black-box or transfer attack ran")
        return evidence


class ProtocolGap(EvidenceCheck):
    """A weaker protocol's robust accuracy far above the strong protocol's worst case."""

    name = "protocol_gap"
    raised_message = (
        "the strong protocol lowered robust accuracy by more than "
        "{thresholds.protocol_gap:.2f} in {count} case(s)"
    )
    clear_message = (
        "every protocol is within {thresholds.protocol_gap:.2f} of the strong worst case"
    )

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
        if "strong" not in evaluation.protocol_names or len(evaluation.protocol_names) < 2:
            raise NotChecked("needs the strong protocol and another one")
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
        return evidence


# --------------------------------------------------------------------------- with a measurement
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
        x = to_unit(images[start : start + batch_size], device).requires_grad_(True)
        y = labels[start : start + batch_size].to(device)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return zero / len(images)


class ZeroGradients(Check):
    """Many points with an exactly zero input gradient: a saturated softmax or a
    non-differentiable layer, both of which stop gradient attacks dead."""

    name = "zero_gradients"
    measures = "gradients"

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """The zero-gradient share of the correctly classified points."""
        with eval_mode(runner.model):
            zero = zero_gradient_fraction(
                runner.model, runner.images, runner.labels, batch_size=runner.batch_size,
                device=runner.device,
            )  # fmt: skip
        return {"zero_gradient_fraction": zero}

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """The share as ``zero_gradients / fraction``."""
        return [AuditRecord("zero_gradients", None, "fraction", measured.zero_gradient_fraction)]

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        share = _measured(evaluation, "zero_gradient_fraction", "input gradients were not measured")
        raised = share > thresholds.zero_gradients
        evidence = [{"zero_gradient_fraction": share, "loss": "ce"}]
        message = f"{share:.1%} of correctly classified points have an exactly zero CE gradient"
        return self.flag(raised, message, evidence)


class LargeEpsAboveChance(Check):
    """At a budget that can turn any image into any other, accuracy must fall to chance."""

    name = "large_eps_above_chance"
    measures = "bounded attack"
    #: The budget, and PGD-CE as the attack that must bring accuracy down to chance there.
    eps: ClassVar[float] = 0.5
    attack: ClassVar[dict[str, Any]] = {"name": "pgd", "steps": 40, "loss": "ce"}

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """PGD-CE's robust accuracy over all points at eps 0.5."""
        config = {**self.attack, "eps": self.eps, "seed": seed}
        fooled = runner.run(config, f"check: pgd eps={self.eps}").fooled
        accuracy = 1.0 - float(fooled.float().mean())
        return {"large_eps": self.eps, "large_eps_accuracy": accuracy, "large_eps_attack": config}

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """The accuracy as ``pgd_large_eps / robust_accuracy`` at its eps."""
        return [
            AuditRecord(
                "pgd_large_eps", measured.large_eps, "robust_accuracy", measured.large_eps_accuracy
            )
        ]

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        accuracy = _measured(evaluation, "large_eps_accuracy", "the large-eps attack did not run")
        checks = evaluation.checks
        chance = 1 / evaluation.num_classes
        raised = accuracy > chance + thresholds.above_chance
        evidence = [
            {"eps": checks.large_eps, "attack": checks.large_eps_attack, "accuracy": accuracy,
             "chance": chance}
        ]  # fmt: skip
        message = f"accuracy {accuracy:.3f} at eps {checks.large_eps} (chance {chance:.3f})"
        return self.flag(raised, message, evidence)


class UnboundedIncomplete(Check):
    """An unbounded attack must reach (almost) every point; one that cannot is being misled."""

    name = "unbounded_incomplete"
    measures = "minimal attack"
    #: The same configuration as the protocols' DeepFool, so it usually runs only once.
    attack: ClassVar[dict[str, Any]] = {"name": "deepfool", "norm": "l2", "steps": 100}

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """Unbounded DeepFool's success rate on the correctly classified points."""
        config = dict(self.attack)
        attacked = runner.run(config, "check: unbounded deepfool").fooled[runner.index]
        rate = float(attacked.float().mean()) if attacked.numel() else math.nan
        return {"unbounded_success_rate": rate, "unbounded_attack": config}

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """The rate as ``deepfool_unbounded / success_rate``."""
        return [
            AuditRecord("deepfool_unbounded", None, "success_rate", measured.unbounded_success_rate)
        ]

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        rate = _measured(evaluation, "unbounded_success_rate", "the unbounded attack did not run")
        raised = rate < thresholds.unbounded_success
        evidence = [{"attack": evaluation.checks.unbounded_attack, "success_rate": rate}]
        message = f"an unbounded attack fooled {rate:.1%} of the correctly classified points" + (
            f" (< {thresholds.unbounded_success:.0%})" if raised else ""
        )
        return self.flag(raised, message, evidence)


# --------------------------------------------------------------------------- the registry
#: Every check, by the name of the flag it raises, in the order flags are reported.
CHECKS: dict[str, Check] = {
    check.name: check
    for check in (
        SingleStepStronger(),
        NotMonotone(),
        UnboundedIncomplete(),
        BlackBoxStronger(),
        LargeEpsAboveChance(),
        ZeroGradients(),
        ProtocolGap(),
    )
}


def _measuring(checks: Iterable[Check]) -> list[Check]:
    """The checks that measure something, in the order their measurements run."""
    chosen = [check for check in checks if check.measures is not None]
    return sorted(chosen, key=lambda check: STAGES.index(check.measures))


def measure_checks(runner: AttackRunner, *, seed: int) -> SanityChecks:
    """Take every check's measurement, through ``runner`` (attacks) with ``seed``."""
    measured: dict[str, Any] = {}
    for check in _measuring(CHECKS.values()):
        measured.update(check.measure(runner, seed=seed))
    return SanityChecks(**measured)


def audit_records(measured: SanityChecks) -> list[AuditRecord]:
    """Every check's measurements in ``measured`` as store rows, in the order they were taken."""
    return [record for check in _measuring(CHECKS.values()) for record in check.records(measured)]


def raise_flags(
    evaluation: Evaluation, thresholds: Thresholds, names: Sequence[str] | None = None
) -> list[Flag]:
    """Run the checks ``names`` (all by default) on ``evaluation``."""
    return [CHECKS[name](evaluation, thresholds) for name in (names or CHECKS)]
