"""An evaluation as readable Markdown tables: robust accuracy, minimal attacks, flags."""

from __future__ import annotations

import math

from advls.evaluate.protocols import Protocol
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
    # A "|" inside a cell (a message, say) would end it: escape it.
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _rows(evaluation: Evaluation, protocols: list[Protocol]) -> list[list[str]]:
    """Per protocol, a row per bounded attack and one for the worst case, at its budgets."""
    rows = []
    for protocol in protocols:
        budgets = evaluation.budgets(protocol.name)
        for index, spec in enumerate(s for s in protocol.attacks if s.bounded):
            try:
                cells = [
                    _cell(evaluation.outcome(protocol.name, spec.label, eps).robust_accuracy)
                    for eps in budgets
                ]
            except KeyError:
                continue  # skipped (e.g. transfer without a surrogate)
            label = f"↳ {spec.label}" if protocol.cascade and index else spec.label
            rows.append([protocol.name, label, *cells])
        worst = [_cell(evaluation.worst_case(protocol.name, eps)) for eps in budgets]
        rows.append([protocol.name, "**worst case**", *(f"**{cell}**" for cell in worst)])
    return rows


def _certified_lines(evaluation: Evaluation) -> list[str]:
    """Certified accuracy per method and eps, and each protocol's bracket
    ``[certified, attacked]`` (the true robust accuracy lies inside)."""
    if not evaluation.certified:
        return []
    budgets = [eps for eps in evaluation.eps if any(o.eps == eps for o in evaluation.certified)]
    header = ["certified by", *(f"eps {eps:.4g}" for eps in budgets)]
    rows = [
        [method, *(_cell(evaluation.certified_accuracy(eps, method)) for eps in budgets)]
        for method in evaluation.certify_methods
    ]
    rows.append(
        ["**any method**", *(f"**{_cell(evaluation.certified_accuracy(e))}**" for e in budgets)]
    )
    for protocol in evaluation.protocols:
        if protocol.norm == "linf":
            cells = []
            for eps in budgets:
                low, high = evaluation.bracket(protocol.name, eps)
                cells.append(f"[{_cell(low)}, {_cell(high)}]")
            rows.append([f"bracket: {protocol.name}", *cells])
    return [
        "",
        *_table(header, rows),
        "",
        "Certified accuracy is proven (no perturbation within eps changes those points); each "
        "bracket is [certified, attacked]: the true robust accuracy lies inside.",
    ]


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
    for norm, name in (("linf", "eps"), ("l2", "L2")):
        protocols = [p for p in evaluation.protocols if p.norm == norm]
        if protocols:
            budgets = evaluation.l2_budgets if norm == "l2" else evaluation.eps
            header = ["protocol", "attack", *(f"{name} {eps:.4g}" for eps in budgets)]
            table = _table(header, _rows(evaluation, protocols))
            lines += ["", *table] if norm == "l2" else table
    if any(p.cascade for p in evaluation.protocols):
        lines += [
            "",
            "In a cascade (↳) each attack ran only on the points the earlier ones left robust; "
            "its row is the robust accuracy after it.",
        ]

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

    lines += _certified_lines(evaluation)

    if evaluation.skipped:
        skipped = ", ".join(
            f"{s['protocol']}/{s['attack']} ({s['reason']})" for s in evaluation.skipped
        )
        lines += ["", f"Skipped: {skipped}."]
    if evaluation.adapted:
        adapted = "; ".join(
            f"{a['protocol']}/{a['attack']}: {a['change']}" for a in evaluation.adapted
        )
        lines += ["", f"Adapted to {evaluation.num_classes} classes: {adapted}."]
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
