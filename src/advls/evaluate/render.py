"""An evaluation as readable Markdown tables: robust accuracy, minimal attacks, flags."""

from __future__ import annotations

import math

from advls.evaluate.results import Evaluation

__all__ = ["format_markdown"]


def _cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _evidence(evidence: list[dict], most: int = 3) -> str:
    """The first few evidence records as ``key=value`` lists, numbers to three places."""

    def show(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if value < 0.001 else f"{value:.3f}".rstrip("0").rstrip(".")
        if isinstance(value, list):
            return "→".join(show(item) for item in value)
        return str(value)

    shown = [
        ", ".join(f"{key} {show(value)}" for key, value in record.items() if key != "attack")
        if not isinstance(record.get("attack"), str)
        else f"{record['attack']}: "
        + ", ".join(f"{key} {show(value)}" for key, value in record.items() if key != "attack")
        for record in evidence[:most]
    ]
    more = f" (+{len(evidence) - most} more)" if len(evidence) > most else ""
    return "; ".join(shown) + more


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def format_markdown(evaluation: Evaluation, title: str | None = None) -> str:
    """Robust accuracy per attack and eps, the worst case per protocol, minimal attacks'
    distances and accuracy at L2 budgets, and every masking check with its verdict."""
    lines: list[str] = [f"## {title}", ""] if title else []
    lines += [
        f"{evaluation.points} points, {evaluation.num_classes} classes, clean accuracy "
        f"{evaluation.clean_accuracy:.3f}; robust accuracy counts every point (clean errors "
        f"are failures).",
        "",
    ]
    header = ["protocol", "attack", *(f"eps {eps:.4g}" for eps in evaluation.eps)]
    rows = []
    for protocol in evaluation.protocols:
        labels = [spec.label for spec in protocol.attacks if spec.bounded]
        for label in labels:
            try:
                cells = [
                    _cell(evaluation.outcome(protocol.name, label, eps).robust_accuracy)
                    for eps in evaluation.eps
                ]
            except KeyError:
                continue  # skipped (e.g. transfer without a surrogate)
            rows.append([protocol.name, label, *cells])
        worst = [_cell(evaluation.worst_case(protocol.name, eps)) for eps in evaluation.eps]
        rows.append([protocol.name, "**worst case**", *(f"**{cell}**" for cell in worst)])
    lines += _table(header, rows)

    minimal = [o for o in evaluation.outcomes if not o.spec.bounded]
    if minimal:
        header = [
            "protocol", "attack", "success rate", "median L2", "mean L2",
            *(f"acc @ L2 {b:g}" for b in evaluation.l2_budgets),
        ]  # fmt: skip
        rows = [
            [
                o.protocol,
                o.spec.label,
                _cell(o.success_rate),
                _cell(o.median_l2),
                _cell(o.mean_l2),
                *(_cell(o.accuracy_at_l2(b)) for b in evaluation.l2_budgets),
            ]
            for o in minimal
        ]
        lines += ["", *_table(header, rows)]

    if evaluation.skipped:
        skipped = ", ".join(
            f"{s['protocol']}/{s['attack']} ({s['reason']})" for s in evaluation.skipped
        )
        lines += ["", f"Skipped: {skipped}."]
    if evaluation.flags:
        rows = [
            [
                f.name,
                "**RAISED**" if f.raised else ("clear" if f.checked else "not checked"),
                f.message + (": " + _evidence(f.evidence) if f.raised else ""),
            ]
            for f in evaluation.flags
        ]
        lines += ["", *_table(["gradient-masking check", "verdict", "evidence"], rows)]
    return "\n".join(lines) + "\n"
