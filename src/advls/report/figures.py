"""The paper's Figure 3, accuracy-vs-budget curves and the audit plot, from a results table.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot: no global
state, no window, nothing to close, and the caller's backend is left alone (saving renders
PNG with Agg and PDF with matplotlib's PDF backend). Values are means over seeds; where
the paper's figures show a single budget the caller picks it by the paper's eps index, so
that set-ups attacked at different pixel budgets (MNIST vs CIFAR-10) stay comparable.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from advls.atomic import atomic_target
from advls.report.cells import BOUNDED_ATTACKS, PAPER_ATTACKS, labelled_results
from advls.report.mapping import SMOOTHING_METHODS, PaperMapping, setup_sort_key

__all__ = [
    "plot_accuracy_vs_alpha",
    "plot_accuracy_vs_eps",
    "plot_audit",
    "plot_brackets",
    "plot_setups_vs_alpha",
    "save_figure",
]

#: One colour per smoothing method, the same in every figure.
METHOD_COLOURS: Mapping[str, str] = {"ALS": "C0", "SLS": "C1", "BLS": "C2", "SBLS": "C3"}
#: The baselines as the paper draws them: normal in black, adversarial training in purple.
BASELINE_STYLES: Mapping[str, dict[str, str]] = {
    "normal": {"color": "black", "linestyle": "--", "label": "normal"},
    "adv_training": {"color": "tab:purple", "linestyle": ":", "label": "adv. training (FGSM)"},
    "pgd_training": {"color": "tab:gray", "linestyle": "-.", "label": "adv. training (PGD)"},
    "ibp_training": {"color": "tab:green", "linestyle": (0, (1, 3)), "label": "IBP training"},
}
ALPHA_LABEL = "α (smoothing strength)"
ACCURACY_LABEL = "adversarial accuracy"
EPS_LABEL = "ε (L∞ budget, [0, 1] pixels)"

_SMOOTHING = tuple(SMOOTHING_METHODS.values())


def _figure(panels: int, *, width: float = 4.4, height: float = 3.5) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width * panels, height), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _setups(rows: pd.DataFrame) -> list[str]:
    return sorted(set(rows["setup"]), key=setup_sort_key)


def _for_setup(rows: pd.DataFrame, setup: str) -> pd.DataFrame:
    chosen = rows[rows["setup"] == setup]
    if chosen.empty:
        available = ", ".join(_setups(rows)) or "none"
        raise ValueError(f"no results for set-up {setup!r}; the results have: {available}")
    return chosen


def _at_eps_index(rows: pd.DataFrame, attack: str, eps_index: int) -> pd.DataFrame:
    if attack not in BOUNDED_ATTACKS:
        return rows
    return rows[(rows["eps_index"] == eps_index).fillna(False).astype(bool)]


def _mean(rows: pd.DataFrame, by: str) -> pd.Series:
    return rows.groupby(by)["value"].mean().sort_index()


def _budget_text(rows: pd.DataFrame, attack: str) -> str:
    if attack not in BOUNDED_ATTACKS or rows.empty:
        return ""
    paper_eps, eps = float(rows["paper_eps"].iloc[0]), float(rows["eps"].iloc[0])
    pixels = "" if np.isclose(paper_eps, eps) else f" (paper), {eps:g} (pixels)"
    return f", ε = {paper_eps:g}{pixels}"


def _baselines(axes: Axes, rows: pd.DataFrame) -> None:
    for method, style in BASELINE_STYLES.items():
        values = rows.loc[rows["method"] == method, "value"]
        if not values.empty:
            axes.axhline(float(values.mean()), linewidth=1.5, **style)


def plot_accuracy_vs_alpha(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    setup: str,
    *,
    attacks: Sequence[str] = ("FGSM", "BIM", "DeepFool", "CW"),
    eps_index: int = 1,
    protocol: str = "paper",
    attack_labels: Mapping[str, str] = PAPER_ATTACKS,
) -> Figure:
    """Paper Figure 3 (a-c): one set-up, a panel per attack, accuracy against alpha.

    One line per smoothing method over every alpha the store has; the baselines, which have
    no alpha, are horizontal lines. FGSM and BIM are read at the paper's ``eps_index``.
    """
    rows = _for_setup(
        labelled_results(frame, mapping, protocol=protocol, attacks=attack_labels), setup
    )
    panels = [
        (attack, chosen)
        for attack in attacks
        if not (chosen := _at_eps_index(rows[rows["attack"] == attack], attack, eps_index)).empty
    ]
    if not panels:
        raise ValueError(
            f"no {', '.join(attacks)} results for {setup} at eps index {eps_index} "
            f"(protocol {protocol})"
        )
    figure, axes = _figure(len(panels))
    for ax, (attack, chosen) in zip(axes, panels, strict=True):
        for method in _SMOOTHING:
            points = _mean(chosen[chosen["method"] == method], "alpha")
            if not points.empty:
                ax.plot(
                    points.index,
                    points.to_numpy(),
                    marker="o",
                    color=METHOD_COLOURS[method],
                    label=method,
                )
        _baselines(ax, chosen)
        ax.set_xlabel(ALPHA_LABEL)
        ax.set_ylabel(ACCURACY_LABEL)
        ax.set_ylim(-0.02, 1.02)  # accuracies: one scale for every panel and set-up
        ax.set_title(f"{setup}: {attack}{_budget_text(chosen, attack)}", fontsize="medium")
        ax.grid(alpha=0.3)
    _shared_legend(figure, axes)
    return figure


def _shared_legend(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend under the panels: they share their lines, and data stays uncovered."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(len(handles), 6),
        fontsize="small",
    )


def plot_setups_vs_alpha(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    *,
    attack: str = "FGSM",
    methods: Sequence[str] = ("ALS",),
    eps_index: int = 1,
    protocol: str = "paper",
    attack_labels: Mapping[str, str] = PAPER_ATTACKS,
) -> Figure:
    """Paper Figure 3 (d): one attack, accuracy against alpha for every set-up.

    A colour per set-up; each set-up's ``normal`` model is a dotted horizontal line in its
    colour (the paper's black reference lines), so gains are read within a set-up.
    """
    rows = labelled_results(frame, mapping, protocol=protocol, attacks=attack_labels)
    rows = _at_eps_index(rows[rows["attack"] == attack], attack, eps_index)
    if rows.empty:
        raise ValueError(f"no {attack} results at eps index {eps_index} (protocol {protocol})")
    figure, (ax,) = _figure(1, width=6.0, height=4.2)
    for number, setup in enumerate(_setups(rows)):
        colour = f"C{number % 10}"
        chosen = rows[rows["setup"] == setup]
        for method, style in zip(methods, itertools.cycle(("-", "--", "-.")), strict=False):
            points = _mean(chosen[chosen["method"] == method], "alpha")
            if not points.empty:
                label = setup if len(methods) == 1 else f"{setup}, {method}"
                ax.plot(
                    points.index,
                    points.to_numpy(),
                    marker="o",
                    linestyle=style,
                    color=colour,
                    label=label,
                )
        normal = chosen.loc[chosen["method"] == "normal", "value"]
        if not normal.empty:
            ax.axhline(
                float(normal.mean()),
                color=colour,
                linestyle=":",
                linewidth=1,
                label=f"{setup}, normal",
            )
    paper_eps = rows["paper_eps"].dropna().unique()
    budget = f", ε = {paper_eps[0]:g} (paper units)" if len(paper_eps) == 1 else ""
    shown = ", ".join(methods)
    ax.set_title(f"{attack}{budget}: {shown} across set-ups", fontsize="medium")
    ax.set_xlabel(ALPHA_LABEL)
    ax.set_ylabel(ACCURACY_LABEL)
    ax.set_ylim(-0.02, 1.02)  # accuracies: one scale for every panel and set-up
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    return figure


def plot_accuracy_vs_eps(
    frame: pd.DataFrame,
    mapping: PaperMapping | Sequence[PaperMapping],
    setup: str,
    *,
    attack: str = "FGSM",
    methods: Sequence[str] | None = None,
    protocol: str = "paper",
    attack_labels: Mapping[str, str] = PAPER_ATTACKS,
) -> Figure:
    """Accuracy against the budget: a panel per smoothing method, a line per alpha.

    Every eps the store has, in [0, 1] pixels, starting at eps = 0 with the clean accuracy
    (an attack with no budget changes nothing); the baselines appear in every panel.
    """
    if attack not in BOUNDED_ATTACKS:
        raise ValueError(f"accuracy against eps needs a bounded attack, got {attack!r}")
    rows = _for_setup(
        labelled_results(frame, mapping, protocol=protocol, attacks=attack_labels), setup
    )
    attacked = rows[rows["attack"] == attack]
    clean = rows[rows["attack"] == "clean"]
    chosen_methods = [
        m for m in (methods or _SMOOTHING) if (attacked["method"] == m).any() and m in _SMOOTHING
    ]
    if not chosen_methods:
        raise ValueError(f"no smoothed {attack} results for {setup} (protocol {protocol})")

    def curve(method: str, alpha: float | None) -> tuple[np.ndarray, np.ndarray]:
        pick = attacked["method"] == method
        base = clean["method"] == method
        if alpha is not None:
            pick &= np.isclose(attacked["alpha"], alpha)
            base &= np.isclose(clean["alpha"], alpha)
        points = _mean(attacked[pick], "eps")
        if base.any():
            points = pd.concat([pd.Series([clean.loc[base, "value"].mean()], index=[0.0]), points])
        return points.index.to_numpy(dtype=float), points.to_numpy(dtype=float)

    figure, axes = _figure(len(chosen_methods))
    for ax, method in zip(axes, chosen_methods, strict=True):
        alphas = sorted(set(attacked.loc[attacked["method"] == method, "alpha"]))
        shades = np.linspace(0.25, 0.9, len(alphas)) if len(alphas) > 1 else [0.6]
        for number, alpha in enumerate(alphas):
            x, y = curve(method, alpha)
            ax.plot(
                x,
                y,
                marker="o",
                color=_shade(METHOD_COLOURS[method], shades[number]),
                label=f"{method}, α = {alpha:g}",
            )
        for baseline, style in BASELINE_STYLES.items():
            if (attacked["method"] == baseline).any():
                x, y = curve(baseline, None)
                ax.plot(x, y, marker=".", linewidth=1.5, **style)
        ax.set_xlabel(EPS_LABEL)
        ax.set_ylabel(ACCURACY_LABEL)
        ax.set_ylim(-0.02, 1.02)  # accuracies: one scale for every panel and set-up
        ax.set_title(f"{setup}: {attack}, {method}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def _shade(colour: str, strength: float) -> tuple[float, float, float]:
    """``colour`` mixed with white: weak alphas light, strong ones saturated."""
    rgb = np.array(to_rgb(colour))
    mixed = 1 - strength * (1 - rgb)
    return float(mixed[0]), float(mixed[1]), float(mixed[2])


#: Panels of the bracket figure: one per run, at most this many (the first by name).
BRACKET_PANELS = 12
#: Line styles of the bound methods, loosest first.
CERTIFY_STYLES: Mapping[str, str] = {"ibp": ":", "crown-ibp": "-.", "crown": "--", "any": "-"}


def plot_brackets(frame: pd.DataFrame) -> Figure:
    """The bracket against the budget, per certified run: each bound method's certified
    accuracy (green, a style per method) and the tightest attacked worst case of its
    protocols (black), the gap between the best proof and the attacks shaded.

    ``frame`` is a results table (:func:`advls.sweep.export.results_table`).

    Raises:
        ValueError: no run was certified.
    """
    proofs = frame[(frame["protocol"] == "certify") & (frame["metric"] == "certified_accuracy")]
    if proofs.empty:
        raise ValueError("no run was certified (evaluate.certify in the spec)")
    worst = frame[(frame["attack"] == "worst_case") & (frame["metric"] == "robust_accuracy")]
    names = proofs.drop_duplicates("run").set_index("run")["name"].sort_values(kind="stable")
    runs = list(names.index[:BRACKET_PANELS])
    columns = min(len(runs), 4)
    rows = -(-len(runs) // columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flatten())
    for spare in axes[len(runs) :]:
        figure.delaxes(spare)
    for ax, run in zip(axes, runs, strict=False):
        mine = proofs[proofs["run"] == run]
        attacked = worst[(worst["run"] == run) & worst["eps"].isin(set(mine["eps"]))]
        tightest = attacked.groupby("eps")["value"].min().sort_index()
        for method, rows_of in mine.groupby("attack", sort=False):
            if method == "any":
                continue
            curve = rows_of.set_index("eps")["value"].sort_index()
            style = CERTIFY_STYLES.get(str(method), "--")
            ax.plot(curve.index, curve.to_numpy(), color="tab:green", marker=".",
                    linestyle=style, label=f"certified: {method}")  # fmt: skip
        ax.plot(tightest.index, tightest.to_numpy(), color="black", marker="o", markersize=3,
                label="attacked (worst case)")  # fmt: skip
        best = mine[mine["attack"] == "any"].set_index("eps")["value"].sort_index()
        shared = best.index.intersection(tightest.index)
        ax.fill_between(shared, best.loc[shared].to_numpy(), tightest.loc[shared].to_numpy(),
                        color="tab:green", alpha=0.15, label="bracket")  # fmt: skip
        ax.set_title(str(names[run]), fontsize="small")
        ax.set_xlabel(EPS_LABEL, fontsize="small")
        ax.set_ylabel("robust accuracy", fontsize="small")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return figure


def plot_audit(audit: pd.DataFrame, *, reference: str = "paper", audited: str = "strong") -> Figure:
    """Worst-case accuracy under the paper's protocol against the strong one, per run.

    ``audit`` is :func:`advls.report.tables.audit_table`. Points below the diagonal are
    runs whose robustness the paper's attacks overstate; a colour per budget.
    """
    missing = [c for c in (reference, audited, "eps") if c not in audit.columns]
    if missing:
        raise ValueError(f"the audit table lacks column(s) {', '.join(missing)}")
    if audit.empty:
        raise ValueError(f"no run has {audited}-protocol results to audit")
    figure, (ax,) = _figure(1, width=5.0, height=4.6)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="no gap")
    for number, (eps, rows) in enumerate(audit.groupby("eps", sort=True)):
        ax.scatter(
            rows[reference], rows[audited], color=f"C{number % 10}", label=f"ε = {eps:g}", s=24
        )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"worst-case accuracy, {reference} protocol")
    ax.set_ylabel(f"worst-case accuracy, {audited} protocol")
    ax.set_title(f"Audit: {reference} vs {audited} protocol, per run", fontsize="medium")
    # Above the diagonal, under the legend: the one region the points rarely reach (the
    # strong protocol includes the paper's attacks' kind, so it is seldom weaker).
    ax.text(
        0.03,
        0.58,
        f"below the line:\nthe {reference} protocol\noverstates robustness",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize="small",
        color="gray",
    )
    ax.grid(alpha=0.3)
    ax.legend(
        loc="upper left", fontsize="small", title="budget ([0, 1] pixels)", title_fontsize="small"
    )
    return figure


def save_figure(figure: Figure, path_stem: str | os.PathLike[str]) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``; returns their paths.

    Each file is written whole or not at all (a reader sees the old figure or the new one),
    and the PDF carries no creation date, so the same results give the same file.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = Path(f"{stem}.png"), Path(f"{stem}.pdf")
    with atomic_target(png) as staged:
        figure.savefig(staged, dpi=150, format="png")
    with atomic_target(pdf) as staged:
        figure.savefig(staged, metadata={"CreationDate": None}, format="pdf")
    return [png, pdf]
