"""Gradient-masking checks (Carlini et al. 2019's checklist, AutoAttack's sanity checks).

Each check is one class holding all of itself: the flag it raises, how it judges an
evaluation and, when the protocols' attacks are not enough, what it measures first (a few
clean forward passes, the input gradients, or an extra attack run through the evaluation's
shared runner, so an attack a protocol already ran is not run again) and how that measurement
is stored. The preflight checks come first: outputs that are probabilities rather than
logits, a randomized model, a model handed over in train mode or with dropout that
``model.eval()`` leaves active. They ask whether the attacks can be trusted at all.

A check that lacks what it needs (e.g. the protocol gap without the ``strong`` protocol)
comes back ``checked=False`` rather than silently clean. :data:`CHECKS` is the registry:
adding a check is writing its class and listing it there; flags come in the registry's order.

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
    "ShardMeasurement",
    "Thresholds",
    "audit_records",
    "measure_checks",
    "merge_checks",
    "raise_flags",
    "zero_gradient_count",
    "zero_gradient_fraction",
]

#: What a check's measurement needs, which sets when it runs (see :data:`STAGES`).
Stage = Literal["preflight", "gradients", "bounded attack", "minimal attack"]
#: The order measurements run in, and within a stage the registry's: clean forward passes
#: and the model's modes first, then gradients, then extra attacks with a budget, then
#: unbounded ones, the order protocols list theirs in.
STAGES: tuple[Stage, ...] = ("preflight", "gradients", "bounded attack", "minimal attack")


@dataclass(frozen=True)
class Thresholds:
    """When a check fires; each number is compared as described in its check."""

    tolerance: float = 0.01  # accuracy differences below this (or 2 points) are noise
    unbounded_success: float = 0.99  # an unbounded attack must fool at least this share
    above_chance: float = 0.02  # accuracy at the large eps may exceed 1/K by this much
    zero_gradients: float = 0.05  # share of points whose input gradient is exactly zero
    # ... or this many points, whatever their share (AutoAttack warns at one). A zero CE
    # gradient needs every wrong logit ~90 behind in float32; plainly trained MNIST models
    # stay under 45 (see ZeroGradients), so one such point is already a finding.
    zero_gradient_points: int = 1
    # Outputs within this of [0, inf) and of summing to 1 per row are probabilities
    # (AutoAttack's 1e-5: a float32 softmax sums to 1 within ~1e-7 for K up to thousands).
    probability_tolerance: float = 1e-5
    # Two passes over the same points differ when the L2 distance of their L2-normalised
    # outputs exceeds this for some point (AutoAttack's 1e-4: far above float32 noise).
    output_change: float = 1e-4
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


class ShardMeasurement(NamedTuple):
    """What one shard of a sharded evaluation measured, and over how many points."""

    checks: SanityChecks
    correct: int  # its correctly classified points (the attacked ones)
    points: int


def _nan_extreme(values: Iterable[Any], pick: Any) -> float:
    """``pick`` (min or max) of measured numbers, NaN when any is NaN or missing (as a
    measurement over all the points at once would be, whatever the shards' order)."""
    numbers = [_number(value) for value in values]
    if not numbers or any(math.isnan(number) for number in numbers):
        return math.nan
    return pick(numbers)


def _pooled_share(parts: Sequence[ShardMeasurement], key: str, weight: str) -> float:
    """A share measured per shard over its ``weight`` ("correct" or "points") points, as one
    share over all of them: counts are recovered from each shard's share and added."""
    total = sum(getattr(part, weight) for part in parts)
    if not total:
        return math.nan
    counted = sum(
        round(_number(part.checks[key]) * getattr(part, weight))
        for part in parts
        if getattr(part, weight)
    )
    return counted / total


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

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """One measurement over all points from the shards' (a measuring check writes it):
        counts add, extremes take the extreme, shares are pooled over their points.

        ``seed`` is the whole evaluation's, for configurations that record one.
        """
        if self.measures is None:
            return {}
        raise NotImplementedError(f"{type(self).__name__} does not say how shards merge")

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        """The flag, raised or not, with a sentence saying why and the numbers behind it."""
        raise NotImplementedError

    def applies(self, evaluation: Evaluation) -> bool:
        """Whether this check belongs to ``evaluation`` at all (reported, even unchecked);
        a check of something the evaluation did not ask for (certification) is left out."""
        return True

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
                (eps, evaluation.worst_case(protocol, eps)) for eps in evaluation.budgets(protocol)
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
        linf = [p.name for p in evaluation.protocols if p.norm == "linf"]
        for protocol in linf:
            # The strong protocol is L-inf: only protocols at the same budgets compare.
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


class CertifiedBroken(EvidenceCheck):
    """A point the bounds prove robust that an attack broke: impossible unless the bounds or
    the attack are wrong (an attack stepping outside the ball, an unsound relaxation), so
    neither number can be trusted until it is explained. Checked wherever certification ran."""

    name = "certified_broken"
    raised_message = (
        "{count} case(s) of points proven robust and yet broken: the bounds or the attacks "
        "are wrong; report it with evaluation.json"
    )
    clear_message = "no point proven robust was broken by any attack"

    def applies(self, evaluation: Evaluation) -> bool:
        """Only where certification ran."""
        return bool(evaluation.certified)

    def evidence(self, evaluation: Evaluation, thresholds: Thresholds) -> list[dict[str, Any]]:
        if not evaluation.certified:
            raise NotChecked("no certification ran (certify=...)")
        budgets = {outcome.eps for outcome in evaluation.certified}
        found = []
        for protocol in evaluation.protocols:
            if protocol.norm != "linf":
                continue
            for eps in sorted(budgets & set(evaluation.eps)):
                broken = evaluation.certified_but_broken(protocol.name, eps)
                if broken.any():
                    points = broken.nonzero().squeeze(1)[:10].tolist()
                    found.append({"protocol": protocol.name, "eps": eps,
                                  "points": int(broken.sum()), "first": points})  # fmt: skip
        return found


# --------------------------------------------------------------------------- preflight
def _outputs(runner: AttackRunner, images: Tensor) -> Tensor:
    """The model's outputs on ``images`` in eval mode, batch by batch, as float64 rows."""
    rows = []
    with torch.no_grad(), eval_mode(runner.model):
        for start in range(0, len(images), runner.batch_size):
            output = runner.model(to_unit(images[start : start + runner.batch_size], runner.device))
            # float64: a row sum of K float32 probabilities must not gain its own rounding.
            rows.append(output.detach().flatten(1).to("cpu", torch.float64))
    return torch.cat(rows)


def _number(value: Any) -> float:
    """A measured number; NaN where it was written as null (non-finite) or is missing."""
    return math.nan if value is None else float(value)


class ProbabilityOutputs(Check):
    """Outputs that are a probability distribution per point rather than logits.

    A softmax on top is invisible to accuracy but not to attacks: cross-entropy of
    probabilities has vanishing gradients, and DLR's differences of probabilities mean
    nothing. Measured on every correctly classified point, one forward pass.
    """

    name = "probability_outputs"
    measures = "preflight"

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """The rows checked, their smallest entry and their largest ``|row sum - 1|``."""
        if not len(runner.images):
            return {"probability_rows": 0}
        rows = _outputs(runner, runner.images)
        return {
            "probability_rows": len(rows),
            "output_min": float(rows.min()),
            "output_row_sum_error": float((rows.sum(dim=1) - 1).abs().max()),
        }

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """``probability_outputs / min`` and ``/ row_sum_error``, where rows were checked."""
        if not measured.get("probability_rows"):
            return []
        return [
            AuditRecord("probability_outputs", None, "min", _number(measured.output_min)),
            AuditRecord(
                "probability_outputs", None, "row_sum_error",
                _number(measured.output_row_sum_error),
            ),
        ]  # fmt: skip

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """Rows add up; the smallest entry and the largest row-sum error over all rows."""
        measured = [part.checks for part in parts if part.checks.get("probability_rows")]
        if not measured:
            return {"probability_rows": 0}
        return {
            "probability_rows": sum(int(checks["probability_rows"]) for checks in measured),
            "output_min": _nan_extreme((c.get("output_min") for c in measured), min),
            "output_row_sum_error": _nan_extreme(
                (c.get("output_row_sum_error") for c in measured), max
            ),
        }

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        rows = _measured(evaluation, "probability_rows", "the clean outputs were not measured")
        if not rows:
            raise NotChecked("no correctly classified point to forward")
        low = _number(evaluation.checks.get("output_min"))
        error = _number(evaluation.checks.get("output_row_sum_error"))
        tolerance = thresholds.probability_tolerance
        raised = low >= -tolerance and error <= tolerance  # False for NaN outputs
        evidence = [{"rows": rows, "min": low, "max_row_sum_error": error}]
        if raised:
            message = (
                f"all {rows} outputs are probabilities (min {low:.3g}, every row sums to 1 "
                f"within {error:.1e}): return logits, since a softmax on top makes "
                "cross-entropy gradients vanish and DLR meaningless"
            )
        else:
            message = f"outputs are logits (min {low:.3g}, largest row-sum error {error:.3g})"
        return self.flag(raised, message, evidence)


class Randomized(Check):
    """Outputs that change between two forward passes of the same points in eval mode.

    Gradients of a randomized model are of one draw; attacks must average them (EOT).
    AutoAttack's test: ``passes`` passes over up to ``points`` points; the model is
    randomized when some point's L2-normalised outputs move by more than
    ``Thresholds.output_change`` between two passes, or its prediction changes.
    """

    name = "randomized"
    measures = "preflight"
    points: ClassVar[int] = 250
    passes: ClassVar[int] = 5

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """The largest change of normalised outputs over pairs of passes, and how many
        points' predictions change, on the first correctly classified points."""
        images, labels = runner.images[: self.points], runner.labels[: self.points]
        if not len(images):
            return {"randomized_points": 0}
        outputs = torch.stack([_outputs(runner, images) for _ in range(self.passes)])
        # NaN would make every distance NaN: a point NaN in every pass has not changed.
        finite = outputs.nan_to_num(nan=0.0, posinf=1e30, neginf=-1e30)
        unit = finite / (finite.norm(dim=2, keepdim=True) + 1e-10)
        largest = max(
            float((unit[a] - unit[b]).norm(dim=1).max())
            for a in range(self.passes)
            for b in range(a + 1, self.passes)
        )
        predictions = outputs.argmax(dim=2)
        return {
            "randomized_points": len(images),
            "randomized_passes": self.passes,
            "randomized_max_difference": largest,
            "randomized_changed_predictions": int((predictions != predictions[0]).any(0).sum()),
            "randomized_correct": (predictions == labels.to(predictions.device)).sum(1).tolist(),
        }

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """``randomized / max_difference`` and ``/ changed_predictions``, where measured."""
        if not measured.get("randomized_points"):
            return []
        changed = float(measured.randomized_changed_predictions)
        return [
            AuditRecord(
                "randomized", None, "max_difference", _number(measured.randomized_max_difference)
            ),
            AuditRecord("randomized", None, "changed_predictions", changed),
        ]

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """Each shard forwarded its own first points: points and changed predictions add,
        the largest change is the largest of any shard, correct counts add pass by pass."""
        measured = [part.checks for part in parts if part.checks.get("randomized_points")]
        if not measured:
            return {"randomized_points": 0}
        passes = int(measured[0]["randomized_passes"])
        return {
            "randomized_points": sum(int(c["randomized_points"]) for c in measured),
            "randomized_passes": passes,
            "randomized_max_difference": _nan_extreme(
                (c.get("randomized_max_difference") for c in measured), max
            ),
            "randomized_changed_predictions": sum(
                int(c["randomized_changed_predictions"]) for c in measured
            ),
            "randomized_correct": [
                sum(int(c["randomized_correct"][i]) for c in measured) for i in range(passes)
            ],
        }

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        points = _measured(evaluation, "randomized_points", "repeated passes were not measured")
        if not points:
            raise NotChecked("no correctly classified point to forward")
        checks = evaluation.checks
        largest = _number(checks.get("randomized_max_difference"))
        changed = int(checks.get("randomized_changed_predictions", 0))
        correct = list(checks.get("randomized_correct", []))
        # A change in the count of correct predictions (AutoAttack's other test) implies one.
        raised = largest > thresholds.output_change or changed > 0
        evidence = [
            {"points": points, "passes": checks.get("randomized_passes"),
             "max_difference": largest, "changed_predictions": changed, "correct": correct}
        ]  # fmt: skip
        passes = checks.get("randomized_passes")
        if not raised:
            message = f"{passes} passes over {points} points gave the same outputs"
            return self.flag(False, message, evidence)
        message = (
            f"the model is randomized: over {passes} passes on {points} points, normalised "
            f"outputs moved by up to {largest:.3g} and {changed} prediction(s) changed; "
            "evaluate with the autoattack-rand protocol (APGD with EOT over 20 samples)"
        )
        if "autoattack-rand" in evaluation.protocol_names:
            message += ", as this evaluation did"
        return self.flag(True, message, evidence)


#: Modules whose output depends on the training mode in ways attacks must not meet: dropout
#: draws a new mask at every forward, batch norm normalises by the batch (and updates the
#: running statistics, changing the user's model as attacks forward it).
_MODE_DEPENDENT: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
)  # fmt: skip
#: How many module names a measurement keeps (a ResNet in train mode has dozens).
_NAMES_KEPT = 10


class TrainMode(Check):
    """A model handed over in train mode, or dropout (or batch norm) that ``model.eval()``
    leaves in training, as a ``train()`` override for MC dropout does.

    advls attacks in eval mode and restores each module's mode afterwards, so at measure
    time the modes read are the ones the user handed over; ``model.eval()`` is then called
    (and undone) to see what it leaves active.
    """

    name = "train_mode"
    measures = "preflight"

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """The dropout and batch-norm modules handed over in train mode that ``model.eval()``
        switches off, and those it leaves training."""
        model = runner.model
        handed = [
            (name or "(model)", module, module.training) for name, module in model.named_modules()
        ]
        with eval_mode(model):
            # A module eval() leaves on was not "handed over in train mode": the user called
            # eval() and the model overrode it, which is what ``active`` reports. Only modules
            # whose output depends on the mode count: every nn.Module starts in train mode,
            # and a model of linear layers and ReLUs computes the same in either.
            training = [
                name
                for name, module, mode in handed
                if mode and not module.training and isinstance(module, _MODE_DEPENDENT)
            ]
            active = [
                {"module": name, "type": type(module).__name__}
                for name, module, _ in handed
                if isinstance(module, _MODE_DEPENDENT) and module.training
            ]
        return {
            "train_mode_model": bool(model.training),
            "train_mode_modules": len(training),
            "train_mode_names": training[:_NAMES_KEPT],
            "active_after_eval": active,
        }

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """``train_mode / modules_in_train_mode`` and ``/ active_after_eval`` (counts)."""
        if "train_mode_modules" not in measured:
            return []
        return [
            AuditRecord(
                "train_mode", None, "modules_in_train_mode", float(measured.train_mode_modules)
            ),
            AuditRecord(
                "train_mode", None, "active_after_eval", float(len(measured.active_after_eval))
            ),
        ]

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """The model's modes, read by the first shard: every shard is handed the same model."""
        keys = ("train_mode_model", "train_mode_modules", "train_mode_names", "active_after_eval")
        return {key: parts[0].checks[key] for key in keys if key in parts[0].checks}

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        count = _measured(evaluation, "train_mode_modules", "the model's modes were not read")
        checks = evaluation.checks
        active = list(checks.get("active_after_eval", []))
        evidence: list[dict[str, Any]] = []
        found = []
        if count:
            names = list(checks.get("train_mode_names", []))
            evidence.append(
                {"found": "handed over in train mode", "model": checks.get("train_mode_model"),
                 "modules": count, "names": names}
            )  # fmt: skip
            found.append(
                f"{count} module(s) were handed over in train mode ({', '.join(names[:3])}"
                f"{', ...' if count > 3 else ''}); advls evaluates in eval mode and restores "
                "the mode afterwards"
            )
        if active:
            evidence.extend({"found": "training after eval()", **module} for module in active)
            found.append(
                f"{len(active)} dropout/batch-norm module(s) stay in training after "
                f"model.eval() ({', '.join(m['module'] for m in active[:3])}): every attack "
                "meets them active"
            )
        if not found:
            return self.flag(False, "the model and its modules were in eval mode", [])
        return self.flag(True, "; ".join(found), evidence)


# --------------------------------------------------------------------------- with a measurement
def zero_gradient_count(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, device: torch.device
) -> int:
    """How many points have a cross-entropy gradient w.r.t. the input that is exactly zero.

    Exactly zero, not small: a confident, healthy model has tiny gradients, but only a
    saturated softmax (every wrong class more than ~100 logits behind in float32) or a
    non-differentiable layer gives none at all.
    """
    zero = 0
    for start in range(0, len(images), batch_size):
        x = to_unit(images[start : start + batch_size], device).requires_grad_(True)
        y = labels[start : start + batch_size].to(device)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
        zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return zero


def zero_gradient_fraction(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, device: torch.device
) -> float:
    """Share of points whose cross-entropy input gradient is exactly zero (NaN for none);
    see :func:`zero_gradient_count`."""
    if len(images) == 0:
        return math.nan
    count = zero_gradient_count(model, images, labels, batch_size=batch_size, device=device)
    return count / len(images)


class ZeroGradients(Check):
    """Many points with an exactly zero input gradient: a saturated softmax or a
    non-differentiable layer, both of which stop gradient attacks dead.

    Raised at ``Thresholds.zero_gradient_points`` such points (one, as AutoAttack warns) or a
    share above ``Thresholds.zero_gradients``. One point is enough because a healthy model
    has none: the softmax saturates to an exactly zero float32 gradient only when every
    wrong logit trails by roughly 90 or more (exp underflows), and on all 10,000 MNIST test
    points LeNets (1 and 6 SGD epochs, 5 Adam epochs), a linear model and MLPs (2 SGD
    epochs; 10 Adam epochs without weight decay) have none, their largest margins 17-42.
    """

    name = "zero_gradients"
    measures = "gradients"

    def measure(self, runner: AttackRunner, *, seed: int) -> dict[str, Any]:
        """How many correctly classified points have a zero gradient, and their share."""
        with eval_mode(runner.model):
            zero = zero_gradient_count(
                runner.model, runner.images, runner.labels, batch_size=runner.batch_size,
                device=runner.device,
            )  # fmt: skip
        share = zero / len(runner.images) if len(runner.images) else math.nan
        return {"zero_gradient_fraction": share, "zero_gradient_count": zero}

    def records(self, measured: SanityChecks) -> list[AuditRecord]:
        """The share as ``zero_gradients / fraction``, the count as ``/ count``."""
        records = [AuditRecord("zero_gradients", None, "fraction", measured.zero_gradient_fraction)]
        if "zero_gradient_count" in measured:
            count = float(measured.zero_gradient_count)
            records.append(AuditRecord("zero_gradients", None, "count", count))
        return records

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """Counts add; the share is of all correctly classified points."""
        zero = sum(int(part.checks.get("zero_gradient_count", 0)) for part in parts)
        attacked = sum(part.correct for part in parts)
        share = zero / attacked if attacked else math.nan
        return {"zero_gradient_fraction": share, "zero_gradient_count": zero}

    def judge(self, evaluation: Evaluation, thresholds: Thresholds) -> Flag:
        share = _measured(evaluation, "zero_gradient_fraction", "input gradients were not measured")
        count = evaluation.checks.get("zero_gradient_count")
        if count is None:  # measured before the count was kept: the share of the attacked points
            count = round(share * int(evaluation.correct.sum()))
        raised = count >= thresholds.zero_gradient_points or share > thresholds.zero_gradients
        evidence = [{"zero_gradient_fraction": share, "zero_gradient_count": count, "loss": "ce"}]
        message = (
            f"{count} correctly classified point(s) ({share:.1%}) have an exactly zero CE gradient"
        )
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

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """Accuracy over all points (each shard's attack ran with the shard's own seed)."""
        config = {**self.attack, "eps": self.eps, "seed": seed}
        accuracy = _pooled_share(parts, "large_eps_accuracy", "points")
        return {"large_eps": self.eps, "large_eps_accuracy": accuracy, "large_eps_attack": config}

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

    def merge(self, parts: Sequence[ShardMeasurement], *, seed: int) -> dict[str, Any]:
        """The success rate over all correctly classified points."""
        rate = _pooled_share(parts, "unbounded_success_rate", "correct")
        return {"unbounded_success_rate": rate, "unbounded_attack": dict(self.attack)}

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
        ProbabilityOutputs(),
        Randomized(),
        TrainMode(),
        SingleStepStronger(),
        NotMonotone(),
        UnboundedIncomplete(),
        BlackBoxStronger(),
        LargeEpsAboveChance(),
        ZeroGradients(),
        ProtocolGap(),
        CertifiedBroken(),
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


def merge_checks(parts: Sequence[ShardMeasurement], *, seed: int) -> SanityChecks:
    """The measurements of a sharded evaluation, from each shard's, check by check."""
    if not parts:
        raise ValueError("merge_checks needs at least one shard's measurements")
    merged: dict[str, Any] = {}
    for check in _measuring(CHECKS.values()):
        merged.update(check.merge(parts, seed=seed))
    return SanityChecks(**merged)


def audit_records(measured: SanityChecks) -> list[AuditRecord]:
    """Every check's measurements in ``measured`` as store rows, in the order they were taken."""
    return [record for check in _measuring(CHECKS.values()) for record in check.records(measured)]


def raise_flags(
    evaluation: Evaluation, thresholds: Thresholds, names: Sequence[str] | None = None
) -> list[Flag]:
    """Run the checks ``names`` (by default every check that applies) on ``evaluation``."""
    chosen = names or [name for name, check in CHECKS.items() if check.applies(evaluation)]
    return [CHECKS[name](evaluation, thresholds) for name in chosen]
