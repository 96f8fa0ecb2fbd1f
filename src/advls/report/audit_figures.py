"""The audit page's figures: accuracy against the budget per attack, and who broke which
points.

Built without pyplot, as :mod:`advls.report.figures` builds its own; every number comes
from :mod:`advls.report.audit_numbers`, the same as the page's tables. An attack keeps its
colour in every panel and both figures.
"""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from advls.evaluate import Evaluation
from advls.report.audit_numbers import broken_points, eps_text

__all__ = ["plot_accuracy_against_eps", "plot_broken_points"]

#: Panels per row before a figure wraps to the next.
_COLUMNS = 3
_ACCURACY = "robust accuracy"
#: Legends beside their panel: inside, they would cover the curves that fall to 0.
_LEGEND = {"fontsize": "x-small", "loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
_BUDGET_LABELS = {"linf": "ε (L∞ budget, [0, 1] pixels)", "l2": "ε (L2 budget, [0, 1] pixels)"}
#: The broken-points bars' fixed parts, and their colours (attacks take C0, C1, ...).
_SEVERAL, _UNBROKEN, _CLEAN = "several attacks", "no attack (robust)", "clean errors"
_FIXED_COLOURS = {_SEVERAL: "dimgray", _UNBROKEN: "#b7dfb0", _CLEAN: "#e5e7eb"}


def _grid(panels: int) -> tuple[Figure, list[Axes]]:
    columns = min(panels, _COLUMNS)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(5.4 * columns, 3.8 * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flatten())
    for spare in axes[panels:]:
        figure.delaxes(spare)
    return figure, axes[:panels]


def _colours(evaluation: Evaluation) -> dict[str, tuple[float, ...]]:
    """One colour per attack label, in the order attacks first appear: tab20's dark shades,
    then its light ones, without its greys (the bars' fixed parts and the worst case)."""
    palette = colormaps["tab20"].colors
    shades = [palette[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
    labels = list(dict.fromkeys(o.spec.label for o in evaluation.outcomes))
    return {label: shades[number % len(shades)] for number, label in enumerate(labels)}


def _bounded_protocols(evaluation: Evaluation) -> list[str]:
    return [
        name
        for name in evaluation.protocol_names
        if any(o.protocol == name and o.spec.bounded for o in evaluation.outcomes)
    ]


#: Line styles of the bound methods' certified accuracy, loosest first.
_METHOD_STYLES = {"ibp": ":", "crown-ibp": "-.", "crown": "--"}


def _draw_bracket(ax: Axes, evaluation: Evaluation, budgets: list[float], worst: list[float]):
    """Each bound method's certified accuracy (dashed, from the clean accuracy at ε = 0) and
    the bracket between the best proof and the worst case, shaded: the truth lies inside."""
    certified = [eps for eps in budgets if any(o.eps == eps for o in evaluation.certified)]
    if not certified:
        return
    clean = evaluation.clean_accuracy
    for method in evaluation.certify_methods:
        accuracy = [evaluation.certified_accuracy(eps, method) for eps in certified]
        ax.plot(
            [0.0, *certified], [clean, *accuracy], linestyle=_METHOD_STYLES.get(method, "--"),
            color="tab:green", linewidth=1.4, label=f"certified: {method}", zorder=3,
        )  # fmt: skip
    proven = [evaluation.certified_accuracy(eps) for eps in certified]
    attacked = [worst[budgets.index(eps)] for eps in certified]
    ax.fill_between(
        [0.0, *certified], [clean, *proven], [clean, *attacked], color="tab:green", alpha=0.15,
        label="bracket [certified, attacked]", zorder=1,
    )  # fmt: skip


def plot_accuracy_against_eps(evaluation: Evaluation) -> Figure | None:
    """Robust accuracy against the budget: a panel per protocol, a line per attack and the
    protocol's per-example worst case in bold black, each from the clean accuracy at
    ε = 0; with certification, each bound method's certified accuracy (dashed) and the
    bracket [certified, attacked] shaded; minimal attacks get a panel of their accuracy at
    the L2 budgets.

    None when no attack ran.
    """
    protocols = _bounded_protocols(evaluation)
    minimal = [o for o in evaluation.outcomes if not o.spec.bounded]
    if not protocols and not minimal:
        return None
    colours = _colours(evaluation)
    clean = evaluation.clean_accuracy
    figure, axes = _grid(len(protocols) + bool(minimal))
    for ax, name in zip(axes, protocols, strict=False):
        protocol = next(p for p in evaluation.protocols if p.name == name)
        budgets = list(evaluation.budgets(name))
        labels = dict.fromkeys(
            o.spec.label for o in evaluation.outcomes if o.protocol == name and o.spec.bounded
        )
        for label in labels:
            accuracy = [evaluation.outcome(name, label, eps).robust_accuracy for eps in budgets]
            ax.plot(
                [0.0, *budgets], [clean, *accuracy], marker="o", markersize=3, linewidth=1,
                color=colours[label], label=label, zorder=3,
            )  # fmt: skip
        worst = [evaluation.worst_case(name, eps) for eps in budgets]
        # Bold but beneath, half transparent: the attack that sets the worst case shows on it.
        ax.plot(
            [0.0, *budgets], [clean, *worst], color="black", linewidth=4, alpha=0.45,
            label="worst case", zorder=2,
        )  # fmt: skip
        if protocol.norm == "linf":
            _draw_bracket(ax, evaluation, budgets, worst)
        cumulative = " (cumulative: a cascade)" if protocol.cascade else ""
        ax.set_title(f"{name}{cumulative}", fontsize="medium")
        ax.set_xlabel(_BUDGET_LABELS[protocol.norm])
    if minimal:
        ax = axes[-1]
        budgets = list(evaluation.l2_budgets)
        for outcome in minimal:
            accuracy = [outcome.accuracy_at_l2(budget) for budget in budgets]
            ax.plot(
                [0.0, *budgets], [clean, *accuracy], marker="s", markersize=3, linewidth=1,
                color=colours[outcome.spec.label],
                label=f"{outcome.protocol}/{outcome.spec.label}",
            )  # fmt: skip
        ax.set_title("minimal attacks, read at L2 budgets", fontsize="medium")
        ax.set_xlabel(_BUDGET_LABELS["l2"])
    for ax in axes:
        ax.set_ylabel(_ACCURACY)
        ax.set_ylim(-0.02, 1.02)  # accuracies: one scale for every panel
        ax.grid(alpha=0.3)
        ax.legend(**_LEGEND)
    return figure


def plot_broken_points(evaluation: Evaluation) -> Figure | None:
    """Stacked bars, a panel per protocol and a bar per budget: the points each attack alone
    broke (newly broke, in a cascade), those several attacks broke, the unbroken ones and
    the clean errors, adding up to every evaluated point. Above each bar, the points only
    black-box or transfer attacks broke.

    None when no bounded attack ran.
    """
    protocols = _bounded_protocols(evaluation)
    if not protocols:
        return None
    colours = {**_colours(evaluation), **_FIXED_COLOURS}
    figure, axes = _grid(len(protocols))
    for ax, name in zip(axes, protocols, strict=True):
        budgets = evaluation.budgets(name)
        cascade = next(p.cascade for p in evaluation.protocols if p.name == name)
        positions = range(len(budgets))
        parts: dict[str, list[int]] = {}
        black_box_only = []
        for eps in budgets:
            breakdown = broken_points(evaluation, name, eps)
            values = {**breakdown.alone, _SEVERAL: breakdown.several}
            values |= {_UNBROKEN: breakdown.unbroken, _CLEAN: breakdown.clean_errors}
            for part, value in values.items():
                parts.setdefault(part, []).append(value)
            black_box_only.append(breakdown.black_box_only)
        bottom = [0] * len(budgets)
        for part, heights in parts.items():
            if part == _SEVERAL and cascade:
                continue  # a cascade breaks each point once: keep the legend to what can occur
            ax.bar(positions, heights, bottom=bottom, color=colours[part], label=part, width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for position, top, count in zip(positions, bottom, black_box_only, strict=True):
            ax.annotate(
                f"black-box only: {count}", (position, top), xytext=(0, 3),
                textcoords="offset points", ha="center", fontsize="x-small",
            )  # fmt: skip
        ax.set_xticks(list(positions), [f"ε {eps_text(eps)}" for eps in budgets])
        ax.set_ylim(0, evaluation.points * 1.12)  # room for the counts above the bars
        ax.set_ylabel("points")
        ax.set_title(name, fontsize="medium")
        ax.legend(**_LEGEND)
    return figure
