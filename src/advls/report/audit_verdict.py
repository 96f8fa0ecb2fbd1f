"""An audit's verdict: one sentence that names every raised flag with its decisive number,
every check that could not run, and the headline robust accuracy.

Each flag's number is read from its evidence as :mod:`advls.evaluate.masking` writes it
(the largest gap, the most points, ...); a flag whose evidence lacks what is expected, or a
check this module does not know, is named with its own message instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from advls.evaluate import Evaluation, Flag
from advls.report.audit_numbers import Headline, eps_text, headline, percent

__all__ = ["audit_verdict", "flag_finding"]


def _share(value: float) -> str:
    return f"{percent(value)}%"


def _protocol_gap(evidence: list[dict[str, Any]]) -> str:
    case = max(evidence, key=lambda e: e["accuracy"] - e["strong_accuracy"])
    return (
        f"{case['protocol']} {_share(case['accuracy'])} vs strong "
        f"{_share(case['strong_accuracy'])} at ε {eps_text(case['eps'])}"
    )


def _single_step(evidence: list[dict[str, Any]]) -> str:
    case = max(evidence, key=lambda e: e["iterative_accuracy"] - e["single_step_accuracy"])
    return (
        f"{case['protocol']}/{case['single_step']} {_share(case['single_step_accuracy'])} vs "
        f"{case['iterative']} {_share(case['iterative_accuracy'])} at ε {eps_text(case['eps'])}"
    )


def _not_monotone(evidence: list[dict[str, Any]]) -> str:
    case = max(evidence, key=lambda e: e["accuracy"][1] - e["accuracy"][0])
    (low, high), (before, after) = case["eps"], case["accuracy"]
    return (
        f"{case['protocol']}/{case['attack']} {_share(before)} at ε {eps_text(low)} but "
        f"{_share(after)} at ε {eps_text(high)}"
    )


def _black_box(evidence: list[dict[str, Any]]) -> str:
    case = max(evidence, key=lambda e: e["points_only_it_broke"])
    return (
        f"{case['protocol']}/{case['attack']} broke {case['points_only_it_broke']} point(s) no "
        f"white-box attack broke at ε {eps_text(case['eps'])}"
    )


def _unbounded(evidence: list[dict[str, Any]]) -> str:
    case = evidence[0]
    return f"unbounded {case['attack']['name']} fooled only {_share(case['success_rate'])}"


def _large_eps(evidence: list[dict[str, Any]]) -> str:
    case = evidence[0]
    return (
        f"{_share(case['accuracy'])} at ε {eps_text(case['eps'])}, chance {_share(case['chance'])}"
    )


def _zero_gradients(evidence: list[dict[str, Any]]) -> str:
    case = evidence[0]
    return (
        f"{case['zero_gradient_count']} point(s), {_share(case['zero_gradient_fraction'])}, with "
        "an exactly zero gradient"
    )


def _probabilities(evidence: list[dict[str, Any]]) -> str:
    return f"every output row sums to 1 within {evidence[0]['max_row_sum_error']:.1e}"


def _randomized(evidence: list[dict[str, Any]]) -> str:
    case = evidence[0]
    return (
        f"outputs moved by up to {case['max_difference']:.3g} over {case['passes']} passes, "
        f"{case['changed_predictions']} prediction(s) changed"
    )


def _train_mode(evidence: list[dict[str, Any]]) -> str:
    parts = []
    handed = [e for e in evidence if e["found"] == "handed over in train mode"]
    if handed:
        parts.append(f"{handed[0]['modules']} module(s) handed over in train mode")
    active = [e for e in evidence if e["found"] == "training after eval()"]
    if active:
        parts.append(f"{len(active)} module(s) still training after eval()")
    if not parts:
        raise KeyError("found")
    return ", ".join(parts)


#: Per check, the decisive number of its raised flag, from the flag's evidence.
_FINDINGS: Mapping[str, Callable[[list[dict[str, Any]]], str]] = {
    "protocol_gap": _protocol_gap,
    "single_step_stronger": _single_step,
    "not_monotone": _not_monotone,
    "black_box_stronger": _black_box,
    "unbounded_incomplete": _unbounded,
    "large_eps_above_chance": _large_eps,
    "zero_gradients": _zero_gradients,
    "probability_outputs": _probabilities,
    "randomized": _randomized,
    "train_mode": _train_mode,
}


def _clause(text: str) -> str:
    """A message as part of a sentence: no sentence end of its own."""
    return text.strip().rstrip(".").replace(". ", "; ")


def flag_finding(flag: Flag) -> str:
    """A raised flag's decisive numbers in a few words (its message where they cannot be
    read from the evidence)."""
    finding = _FINDINGS.get(flag.name)
    if finding is not None and flag.evidence:
        try:
            return finding(flag.evidence)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # evidence of another shape than this module knows: say what the check said
    return _clause(flag.message)


def _headline_text(head: Headline) -> str:
    return (
        f"{head.protocol} robust accuracy {_share(head.robust_accuracy)} at ε {eps_text(head.eps)}"
    )


def audit_verdict(evaluation: Evaluation) -> str:
    """The audit in one sentence with its reasons.

    Raised flags come first, each as ``name raised (its decisive numbers)``; a raised
    ``protocol_gap`` leads with the protocol that overstates robustness. Checks that could
    not run are named ``unchecked`` with what they lacked, never counted as passed. The
    headline robust accuracy (:func:`~advls.report.audit_numbers.headline`) closes it.
    """
    head = _headline_text(headline(evaluation))
    raised = evaluation.raised
    unchecked = [flag for flag in evaluation.flags if not flag.checked]
    passed = [flag for flag in evaluation.flags if flag.checked and not flag.raised]
    unchecked_text = ", ".join(f"{f.name} unchecked ({_clause(f.message)})" for f in unchecked)
    if not evaluation.flags:
        sentence = f"no gradient-masking check ran: {head} rests on the attacks alone"
    elif raised:
        gap = next((flag for flag in raised if flag.name == "protocol_gap"), None)
        try:
            worst = max(gap.evidence, key=lambda e: e["accuracy"] - e["strong_accuracy"])
            lead = f"the {worst['protocol']} protocol overstates robustness"
        except (AttributeError, KeyError, TypeError, ValueError):  # no gap, or no evidence
            lead = "the evaluation shows signs of gradient masking"
        # The lead's own flag first, then the others in the registry's order.
        ordered = sorted(raised, key=lambda flag: flag is not gap)
        findings = "; ".join(f"{flag.name} raised ({flag_finding(flag)})" for flag in ordered)
        sentence = f"{lead}: {findings}"
        if unchecked_text:
            sentence += f"; {unchecked_text}"
        sentence += f"; so {head} is an upper bound at best"
    elif passed and not unchecked:
        sentence = f"no sign of gradient masking: {head}, every check passed"
    elif passed:
        sentence = (
            f"no sign of gradient masking where it could be checked: {head}, "
            f"{len(passed)} check(s) passed, {unchecked_text}"
        )
    else:
        sentence = f"no check could run: {head}, {unchecked_text}"
    return sentence[0].upper() + sentence[1:] + "."
