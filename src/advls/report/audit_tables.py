"""The audit page's tables, each as ``{name: DataFrame}`` (the name is the table's title on
the page and its ``data-table`` in the HTML); an empty dict where there is nothing to show.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from advls.evaluate import Evaluation
from advls.report.audit_numbers import broken_points, eps_text, flag_verdict, percent
from advls.report.audit_subject import AuditSubject

__all__ = [
    "broken_points_table",
    "certified_table",
    "checks_table",
    "cost_table",
    "evidence_text",
    "minimal_table",
    "robust_table",
    "subject_table",
]

_NORM_TITLES = {"linf": "Robust accuracy (L∞)", "l2": "Robust accuracy (L2)"}


def _columns(budgets: tuple[float, ...]) -> list[str]:
    return [f"ε {eps_text(eps)}" for eps in budgets]


def subject_table(evaluation: Evaluation, subject: AuditSubject) -> dict[str, pd.DataFrame]:
    """What was evaluated, on what, and its clean accuracy, as text."""
    rows = {
        "model": subject.name,
        "loaded with": subject.source,
        "dataset": subject.dataset,
        "split": subject.split,
        "points": str(evaluation.points),
        "classes": str(evaluation.num_classes),
        "clean accuracy": f"{percent(evaluation.clean_accuracy)}%",
        "parameters": f"{subject.parameters:,}",
        "weights": subject.weights or "–",
        "weights sha256": subject.weights_sha256 or "–",
        "advls": subject.advls_version,
    }
    frame = pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name=""))
    return {"Audited model": frame}


def robust_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Per norm: robust accuracy per protocol and bounded attack at each budget, and each
    protocol's per-point worst case."""
    tables = {}
    for norm, title in _NORM_TITLES.items():
        protocols = [p for p in evaluation.protocols if p.norm == norm]
        if not protocols:
            continue
        budgets = evaluation.l2_budgets if norm == "l2" else evaluation.eps
        rows: dict[tuple[str, str], list[float]] = {}
        for protocol in protocols:
            labels = dict.fromkeys(
                o.spec.label
                for o in evaluation.outcomes
                if o.protocol == protocol.name and o.spec.bounded
            )
            for number, label in enumerate(labels):
                shown = f"↳ {label}" if protocol.cascade and number else label
                rows[(protocol.name, shown)] = [
                    evaluation.outcome(protocol.name, label, eps).robust_accuracy for eps in budgets
                ]
            rows[(protocol.name, "worst case")] = [
                evaluation.worst_case(protocol.name, eps) for eps in budgets
            ]
        index = pd.MultiIndex.from_tuples(list(rows), names=["protocol", "attack"])
        tables[title] = pd.DataFrame(list(rows.values()), index=index, columns=_columns(budgets))
    return tables


def certified_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """The bracket at each certified L-inf budget: certified accuracy per bound method and
    by any of them (the proven lower end), then each protocol's worst case (the attacked
    upper end); the true robust accuracy lies between the two."""
    budgets = tuple(e for e in evaluation.eps if any(o.eps == e for o in evaluation.certified))
    if not budgets:
        return {}
    rows: dict[tuple[str, str], list[float]] = {
        ("certified", method): [evaluation.certified_accuracy(eps, method) for eps in budgets]
        for method in evaluation.certify_methods
    }
    rows[("certified", "any method")] = [evaluation.certified_accuracy(eps) for eps in budgets]
    for protocol in evaluation.protocols:
        if protocol.norm == "linf":
            rows[("attacked", f"{protocol.name} worst case")] = [
                evaluation.worst_case(protocol.name, eps) for eps in budgets
            ]
    index = pd.MultiIndex.from_tuples(list(rows), names=["bound", "by"])
    frame = pd.DataFrame(list(rows.values()), index=index, columns=_columns(budgets))
    return {"Certified and attacked (L∞)": frame}


def minimal_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Minimal (unbounded) attacks: success rate, distances, accuracy at the L2 budgets."""
    minimal = [o for o in evaluation.outcomes if not o.spec.bounded]
    if not minimal:
        return {}
    budgets = [f"accuracy at L2 {eps_text(b)}" for b in evaluation.l2_budgets]
    rows = {
        (o.protocol, o.spec.label): [
            o.success_rate, o.median_l2, o.mean_l2,
            *(o.accuracy_at_l2(b) for b in evaluation.l2_budgets),
        ]
        for o in minimal
    }  # fmt: skip
    index = pd.MultiIndex.from_tuples(list(rows), names=["protocol", "attack"])
    columns = ["success rate", "median L2", "mean L2", *budgets]
    return {"Minimal attacks": pd.DataFrame(list(rows.values()), index=index, columns=columns)}


def broken_points_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Per protocol with bounded attacks, points by who broke them, a column per budget."""
    tables = {}
    for protocol in evaluation.protocols:
        budgets = evaluation.budgets(protocol.name)
        breakdowns = [broken_points(evaluation, protocol.name, eps) for eps in budgets]
        if not breakdowns or not breakdowns[0].alone:
            continue
        alone = "newly broken by" if protocol.cascade else "broken only by"
        rows = {
            f"{alone} {label}": [b.alone[label] for b in breakdowns]
            for label in breakdowns[0].alone
        }
        if not protocol.cascade:
            rows["broken by several attacks"] = [b.several for b in breakdowns]
        rows["broken by none (robust)"] = [b.unbroken for b in breakdowns]
        rows["clean errors"] = [b.clean_errors for b in breakdowns]
        rows["all points"] = [b.points for b in breakdowns]
        rows["of these, only black-box/transfer broke"] = [b.black_box_only for b in breakdowns]
        frame = pd.DataFrame(
            list(rows.values()),
            index=pd.Index(list(rows), name="points"),
            columns=_columns(budgets),
        )
        tables[f"Points broken, {protocol.name}"] = frame
    return tables


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        joiner = "→" if all(isinstance(v, int | float) for v in value) else ", "
        return joiner.join(_value_text(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def evidence_text(evidence: list[dict[str, Any]]) -> str:
    """A flag's evidence records in full, as ``key value`` lists separated by ``;``."""
    return "; ".join(
        ", ".join(f"{key} {_value_text(value)}" for key, value in record.items())
        for record in evidence
    )


def checks_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Every masking check: its verdict, message and evidence."""
    if not evaluation.flags:
        return {}
    frame = pd.DataFrame(
        {
            "verdict": [flag_verdict(flag) for flag in evaluation.flags],
            "message": [flag.message for flag in evaluation.flags],
            "evidence": [evidence_text(flag.evidence) or "–" for flag in evaluation.flags],
        },
        index=pd.Index([flag.name for flag in evaluation.flags], name="check"),
    )
    return {"Gradient-masking checks": frame}


def cost_table(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Seconds and model calls per attack and budget; ``ran once with`` names the earlier
    row whose run it shares (the runner runs an identical configuration once)."""
    if not evaluation.outcomes:
        return {}
    rows, first = {}, {}
    for outcome in evaluation.outcomes:
        # A shared run hands every protocol the same tensor: identity marks it.
        earlier = first.setdefault(id(outcome.fooled), outcome)
        shared = "" if earlier is outcome else f"{earlier.protocol}/{earlier.spec.label}"
        eps = "–" if outcome.eps is None else eps_text(outcome.eps)
        rows[(outcome.protocol, outcome.spec.label, eps)] = [
            outcome.seconds,
            outcome.model_calls,
            shared,
        ]
    index = pd.MultiIndex.from_tuples(list(rows), names=["protocol", "attack", "ε"])
    frame = pd.DataFrame(
        list(rows.values()), index=index, columns=["seconds", "model calls", "ran once with"]
    )
    return {"Time and model calls": frame}
