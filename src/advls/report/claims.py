"""The paper's claims, checked cell by cell on our tables: the report's verdict.

Each claim is a comparison the paper states in words; here it becomes a count over the
cells of :func:`~advls.report.cells.paper_cells` (or, for the audit, over the rows of
:func:`~advls.report.tables.audit_table`), per set-up and attack, so a reader sees how
often it holds rather than a single yes or no:

- ``ls-beats-normal``: a smoothed model (any method, any alpha) is more accurate under
  attack than the plainly trained one at the same budget.
- ``als-bls-beat-sls-sbls``: at equal alpha and budget, the mean of ALS and BLS is above the
  mean of SLS and SBLS.
- ``clean-kept``: a smoothed model's clean accuracy is at most ``CLEAN_TOLERANCE`` below the
  plain model's.
- ``ls-beats-fgsm-at``: a smoothed model beats FGSM adversarial training; the paper claims
  it for every attack but FGSM, which adversarial training was trained against.
- ``strong-keeps-gain``: the gain of smoothing over the plain model, in worst-case accuracy,
  survives the strong protocol: where the paper's protocol shows a gain, the strong one
  keeps at least ``KEPT_SHARE`` of it (only when the store has strong-protocol results).

A claim *holds* for a set-up and attack when at least ``HOLDS`` of its comparisons go the
paper's way, *partly* from ``PARTLY``, and *fails* below. Exact ties (both models at 0 under
DeepFool, say) say nothing either way: they are counted apart, and a row of ties only is
``tied``.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from advls.report.mapping import PAPER_SETUPS, SMOOTHING_METHODS

__all__ = [
    "CLAIMS",
    "CLEAN_TOLERANCE",
    "HOLDS",
    "KEPT_SHARE",
    "PARTLY",
    "check_claims",
    "verdict",
]

HOLDS = 0.75
PARTLY = 0.25
#: Share of the paper-protocol gain the strong protocol must keep for it to "survive".
KEPT_SHARE = 0.5
#: Clean accuracy a smoothed model may lose before "not reduced" stops holding.
CLEAN_TOLERANCE = 0.01

#: Claim id -> how the paper says it.
CLAIMS: dict[str, str] = {
    "ls-beats-normal": "Label smoothing improves adversarial accuracy over the normal model",
    "als-bls-beat-sls-sbls": "ALS and BLS beat SLS and SBLS",
    "clean-kept": "Label smoothing does not reduce clean accuracy",
    "ls-beats-fgsm-at": "Label smoothing beats FGSM adversarial training on all attacks but FGSM",
    "strong-keeps-gain": "The gain over the normal model survives the strong protocol",
}

_SMOOTHING = list(SMOOTHING_METHODS.values())
_SETUP_NAMES = {pair: name for name, pair in PAPER_SETUPS.items()}
_COLUMNS = ["claim", "statement", "setup", "attack", "compared", "agree", "ties", "share"]
_COLUMNS += ["mean_diff"]
_COLUMNS += ["verdict", "detail"]


def verdict(share: float) -> str:
    """``holds``, ``partly`` or ``fails`` for the share of comparisons that agree (NaN: tied)."""
    if share != share:
        return "tied"
    if share >= HOLDS:
        return "holds"
    return "partly" if share >= PARTLY else "fails"


def _row(claim: str, setup: str, attack: str, diffs: pd.Series, detail: str) -> dict:
    diffs = diffs.dropna()
    agree, ties = int((diffs > 0).sum()), int((diffs == 0).sum())
    decided = len(diffs) - ties
    share = agree / decided if decided else float("nan")
    return {
        "claim": claim,
        "statement": CLAIMS[claim],
        "setup": setup,
        "attack": attack,
        "compared": len(diffs),
        "agree": agree,
        "ties": ties,
        "share": share,
        "mean_diff": float(diffs.mean()),
        "verdict": verdict(share),
        "detail": detail,
    }


def _against_baseline(
    cells: pd.DataFrame, claim: str, baseline: str, attacks: list[str], margin: float = 0.0
) -> list[dict]:
    """Every smoothed cell minus the baseline's cell at the same set-up, attack and budget."""
    rows = []
    for (setup, attack), block in cells.groupby(["setup", "attack"], sort=False):
        if attack not in attacks:
            continue
        base = block[block["method"] == baseline].set_index(
            block.loc[block["method"] == baseline, "eps_index"].fillna(0)
        )["value"]
        smoothed = block[block["method"].isin(_SMOOTHING)]
        if base.empty or smoothed.empty:
            continue
        reference = smoothed["eps_index"].fillna(0).map(base)
        diffs = (smoothed["value"] - reference + margin).reset_index(drop=True)
        paired = reference.notna() & smoothed["value"].notna()
        if not paired.any():
            continue
        detail = (
            f"mean over the compared cells: smoothed {smoothed['value'][paired].mean():.3f}, "
            f"{baseline} {reference[paired].mean():.3f}"
        )
        rows.append(_row(claim, setup, attack, diffs, detail))
    return rows


def _methods_pairwise(cells: pd.DataFrame) -> list[dict]:
    rows = []
    smoothed = cells[cells["method"].isin(_SMOOTHING)]
    for (setup, attack), block in smoothed.groupby(["setup", "attack"], sort=False):
        keys = [block["eps_index"].fillna(0), block["alpha_index"]]
        wide = block.pivot_table(index=keys, columns="method", values="value", aggfunc="mean")
        methods = ["ALS", "BLS", "SLS", "SBLS"]
        if not set(methods) <= set(wide.columns):
            continue
        # Only cells where all four exist: a missing run must not turn "ALS and BLS" into ALS.
        wide = wide.dropna(subset=methods)
        if wide.empty:
            continue
        ours = wide[["ALS", "BLS"]].mean(axis=1)
        theirs = wide[["SLS", "SBLS"]].mean(axis=1)
        detail = f"mean ALS/BLS {ours.mean():.3f} vs SLS/SBLS {theirs.mean():.3f}"
        rows.append(_row("als-bls-beat-sls-sbls", setup, attack, ours - theirs, detail))
    return rows


def _strong_gain(audit: pd.DataFrame) -> list[dict]:
    """Per set-up: LS's gain over normal in worst-case accuracy, paper vs strong protocol."""
    rows = []
    if audit.empty or not {"paper", "strong"} <= set(audit.columns):
        return rows
    for (dataset, model), block in audit.groupby(["dataset", "model"], sort=False):
        # Means over seeds (and sweeps): the budget must index one value.
        normal = block[block["method"] == "normal"].groupby("eps")[["paper", "strong"]].mean()
        smoothed = block[block["method"].isin(_SMOOTHING)]
        if normal.empty or smoothed.empty:
            continue
        gain_paper = smoothed["paper"].to_numpy() - smoothed["eps"].map(normal["paper"])
        gain_strong = smoothed["strong"].to_numpy() - smoothed["eps"].map(normal["strong"])
        # Where the paper's protocol shows a gain, it survives if the strong protocol keeps at
        # least half of it (a sign test alone would count +0.01 of +0.5 as a success).
        kept = (gain_strong - KEPT_SHARE * gain_paper).where(gain_paper > 0)
        if kept.dropna().empty:
            continue
        detail = (
            f"mean gain over normal: {gain_paper.mean():+.3f} (paper protocol), "
            f"{gain_strong.mean():+.3f} (strong); largest paper-strong gap "
            f"{block['gap'].max():.3f}"
        )
        setup = _SETUP_NAMES.get((dataset, model), f"{dataset}/{model}")
        rows.append(_row("strong-keeps-gain", setup, "worst case", kept, detail))
    return rows


def check_claims(cells: pd.DataFrame, audit: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim, set-up and attack: comparisons, how many agree, and the verdict.

    ``cells`` is :func:`~advls.report.cells.paper_cells`; ``audit`` (optional) is
    :func:`~advls.report.tables.audit_table`. ``mean_diff`` is the mean of the compared
    differences (positive = the paper's way): for ``clean-kept`` the change in clean
    accuracy plus the tolerance, for ``strong-keeps-gain`` the strong protocol's gain over the
    normal model minus half the paper protocol's, where the latter showed one.
    """
    attacked = ["FGSM", "BIM", "DeepFool", "CW"]
    checks: list[Callable[[], list[dict]]] = [
        lambda: _against_baseline(cells, "ls-beats-normal", "normal", attacked),
        lambda: _methods_pairwise(cells[cells["attack"] != "clean"]),
        lambda: _against_baseline(
            cells, "clean-kept", "normal", ["clean"], margin=CLEAN_TOLERANCE + 1e-12
        ),
        lambda: _against_baseline(cells, "ls-beats-fgsm-at", "adv_training", attacked[1:]),
        lambda: _strong_gain(audit if audit is not None else pd.DataFrame()),
    ]
    rows = [row for check in checks for row in check()]
    return pd.DataFrame(rows, columns=_COLUMNS)
