"""The tables and figures of docs/results/certified.md, from a certified study's artifacts.

Reads the evaluation report of every finished run under ``--artifacts`` (the artifact folder
of a sweep of docs/results/certified/*.yaml or of ``advls reproduce certified-study``; the
reports are the runs' own record, the store's rows are copied from them) and prints, per
model, a Markdown table: the clean accuracy, the bracket [certified, attacked] at each
budget, the points proven robust yet broken, the sampled points that left the bounds
(``--samples`` per input and budget for the first ``--sample-inputs`` test images: uniform,
vertices, PGD's) and the mean width of CROWN-IBP's and full CROWN's logit bounds over IBP's
(the first ``--width-points`` test images at ``--width-eps``). A second table per model gives
full CROWN's certified accuracy on the first ``--crown-points`` test images (full CROWN is
too dear for the evaluation itself on the LeNet) beside IBP and CROWN-IBP's on the same
points: whether a tighter bound changes what the looser ones say. Full CROWN's results are
kept beside each run's report (``crown-<points>.json``) and reused. The strong protocol's
attacks that the study's evaluation leaves out for CPU time (PGD-40 with 5 restarts, FAB-T,
Square with 5000 queries) attack the first ``--extra-points`` certified points of each run at
each budget: none may break one (kept as ``extra-attacks-<points>.json``; the widths and the
sampled points as ``checks-*.json``). The bracket
figures, one per model, go to ``--figures``.

    ADVLS_DATA=../shared/data python scripts/certified_study.py \
        --artifacts results.db-artifacts --figures docs/results/certified
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from advls import attacks
from advls import data as datasets
from advls.certify import certified, logit_bounds, margin_bounds
from advls.certify.sampling import box_samples
from advls.checkpoint import load_model
from advls.evaluate import PROTOCOLS
from advls.report.figures import plot_brackets
from advls.report.tables import table_markdown
from advls.sweep.spec import train_key
from advls.train import TrainConfig

#: How the table names a run's training, from its store settings.
LOSS_NAMES = {"standard": "SLS", "adversarial": "ALS", "boltzmann": "BLS", "second_best": "SBLS"}
WIDTH_METHODS = ("crown-ibp", "crown")
#: The strong protocol's attacks the study's evaluation leaves out (transfer aside: it needs
#: a plainly trained twin, and a white-box attack on the model itself is stronger).
EXTRA_ATTACKS = ("pgd-40x5", "fab-t", "square")
#: The table's row order within a model.
TRAINING_ORDER = (
    {"defence": "none", "loss": "ce"},
    *({"defence": "none", "loss": loss, "alpha": 0.1} for loss in LOSS_NAMES),
    {"defence": "pgd-at", "defence_eps": 0.1},
    {"defence": "ibp", "defence_eps": 0.2},
)


def training_name(train: dict[str, Any]) -> str:
    """``CE``, ``SLS α 0.1``, ``PGD-AT (ε 0.1)``, ``IBP (ε 0.2)``: a run's training."""
    if train["defence"] == "pgd-at":
        return f"PGD-AT (ε {train['defence_eps']:g})"
    if train["defence"] == "ibp":
        return f"IBP (ε {train['defence_eps']:g})"
    if train["loss"] in LOSS_NAMES:
        return f"{LOSS_NAMES[train['loss']]} α {train['alpha']:g}"
    return "CE"


def read_reports(artifacts: Path) -> list[dict[str, Any]]:
    """Every run's evaluation report, with its checkpoint folder, in the grid's model order."""
    reports = []
    for path in sorted(artifacts.glob("runs/*/evaluation.json")):
        report = json.loads(path.read_text())
        train = report["config"]["train"]
        key = train_key(TrainConfig.model_validate(train))
        report["checkpoint"] = str(artifacts / "train" / key)
        report["training"] = training_name(train)
        reports.append(report)
    order = [training_name(t) for t in TRAINING_ORDER]
    return sorted(
        reports,
        key=lambda r: (r["config"]["train"]["model"], order.index(r["training"])),
    )


def results_frame(reports: list[dict[str, Any]]) -> pd.DataFrame:
    """The reports as a results table (the columns :func:`plot_brackets` reads)."""
    columns = ("run", "name", "protocol", "attack", "eps", "metric", "value")
    rows = []
    for report in reports:
        run = (report["run"], f"{report['config']['train']['model']}, {report['training']}")
        for proof in report["certified"]:
            rows.append((*run, "certify", proof["method"], proof["eps"], "certified_accuracy",
                         proof["certified_accuracy"]))  # fmt: skip
        for proof in report["certified_any"]:
            rows.append((*run, "certify", "any", proof["eps"], "certified_accuracy",
                         proof["certified_accuracy"]))  # fmt: skip
        for worst in report["worst_case"]:
            rows.append((*run, worst["protocol"], "worst_case", worst["eps"], "robust_accuracy",
                         worst["robust_accuracy"]))  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def bracket_row(report: dict[str, Any]) -> dict[str, Any]:
    """Model, training, clean accuracy, the bracket per budget, points proven yet broken."""
    row: dict[str, Any] = {"model": report["config"]["train"]["model"]}
    row["training"] = report["training"]
    row["clean"] = report["clean_accuracy"]
    for bracket in report["brackets"]:
        row[f"ε {bracket['eps']:g}"] = f"[{bracket['certified']:.3f}, {bracket['attacked']:.3f}]"
    row["proven yet broken"] = sum(int(b["certified_but_broken"]) for b in report["brackets"])
    return row


def width_ratios(checkpoint: str, eps: float, points: int) -> dict[str, float]:
    """Mean logit-bound width of each of :data:`WIDTH_METHODS` over IBP's on ``points``."""
    model, _ = load_model(checkpoint)
    images = datasets.load("mnist", "test").images[:points]
    widths = {}
    for method in ("ibp", *WIDTH_METHODS):
        lower, upper = logit_bounds(model, images, eps, method)
        widths[method] = float((upper - lower).mean())
    return {method: widths[method] / widths["ibp"] for method in WIDTH_METHODS}


def points_outside(checkpoint: str, budgets: list[float], inputs: int, count: int) -> int:
    """Sampled points (uniform, vertices, PGD's; ``count`` for each of the first ``inputs``
    test images, at each budget) whose logits or margins leave IBP's or CROWN-IBP's bounds
    by more than float32 rounding of the forward pass can account for."""
    model, _ = load_model(checkpoint)
    test = datasets.load("mnist", "test")
    x, y = test.images[:inputs].float() / 255, test.labels[:inputs]
    outside = 0
    for eps in budgets:
        points = box_samples(model, x, y, eps, count, seed=0)
        with torch.no_grad():
            z = model(points.flatten(0, 1)).view(*points.shape[:2], -1).double()
        margins = z.gather(2, y.view(-1, 1, 1).expand(-1, z.shape[1], 1)) - z
        for method in ("ibp", "crown-ibp"):
            low, high = (end.unsqueeze(1) for end in logit_bounds(model, x, eps, method))
            bound = margin_bounds(model, x, y, eps, method).unsqueeze(1)
            tolerance = 1e-5 * (1.0 + float(z.abs().max()))
            # The label's own margin has no bound (+inf): only the finite ones are checked.
            below = (margins < bound - tolerance) & torch.isfinite(bound)
            escaped = (z < low - tolerance) | (z > high + tolerance) | below
            outside += int(escaped.any(2).sum())
    return outside


def crown_certified(report: dict[str, Any], artifacts: Path, points: int) -> dict[str, Any]:
    """Per budget: the share of the first ``points`` test images that IBP or CROWN-IBP
    proves, that full CROWN proves, and that any of the three proves (cached per run)."""
    cache = artifacts / "runs" / report["run"] / f"crown-{points}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model, _ = load_model(report["checkpoint"])
    test = datasets.load("mnist", "test")
    x, y = test.images[:points], test.labels[:points]
    shares: dict[str, Any] = {}
    for eps in sorted({proof["eps"] for proof in report["certified"]}):
        cheap = certified(model, x, y, eps, "ibp") | certified(model, x, y, eps, "crown-ibp")
        full = certified(model, x, y, eps, "crown")
        shares[f"{eps:g}"] = {
            "ibp or crown-ibp": float(cheap.float().mean()),
            "crown": float(full.float().mean()),
            "any": float((cheap | full).float().mean()),
        }
    cache.write_text(json.dumps(shares, indent=1))
    return shares


def extra_attacks(report: dict[str, Any], artifacts: Path, points: int) -> dict[str, Any]:
    """Per budget: how many of the first ``points`` certified points (IBP or CROWN-IBP) each
    of :data:`EXTRA_ATTACKS` broke (cached per run); any count but 0 is unsound."""
    cache = artifacts / "runs" / report["run"] / f"extra-attacks-{points}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model, _ = load_model(report["checkpoint"])
    test = datasets.load("mnist", "test")
    x, y = test.images[: report["points"]].float() / 255, test.labels[: report["points"]]
    specs = [s for s in PROTOCOLS["strong"].attacks if s.label in EXTRA_ATTACKS]
    counts: dict[str, Any] = {}
    for eps in sorted({proof["eps"] for proof in report["certified"]}):
        proven = certified(model, x, y, eps, "ibp") | certified(model, x, y, eps, "crown-ibp")
        chosen = proven.nonzero().flatten()[:points]
        entry: dict[str, Any] = {"attacked": len(chosen)}
        for spec in specs:
            if len(chosen):
                found = attacks.ATTACKS[spec.attack](
                    model, x[chosen], y[chosen], eps=eps, seed=0, **spec.params
                )
                entry[spec.label] = int(found.success.sum())
            else:
                entry[spec.label] = 0
        counts[f"{eps:g}"] = entry
    cache.write_text(json.dumps(counts, indent=1))
    return counts


def crown_row(report: dict[str, Any], shares: dict[str, Any]) -> dict[str, Any]:
    """One row of the full-CROWN table: ``cheap → any`` per budget."""
    row: dict[str, Any] = {"model": report["config"]["train"]["model"]}
    row["training"] = report["training"]
    for eps, share in shares.items():
        row[f"ε {eps}"] = f"{share['ibp or crown-ibp']:.3f} → {share['any']:.3f}"
    return row


def main() -> None:
    """Print the study's tables; draw its figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--figures", type=Path, default=None, help="a folder")
    parser.add_argument("--width-eps", type=float, default=0.01)
    parser.add_argument("--width-points", type=int, default=200)
    parser.add_argument("--sample-inputs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="points per input and budget")
    parser.add_argument(
        "--extra-points", type=int, default=20, help="certified points the extra attacks try"
    )
    parser.add_argument(
        "--crown-points",
        default="mlp=1000,lenet-mnist=100",
        help="test images full CROWN certifies, per model (MODEL=N, comma-separated)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bounds are bitwise the same at any thread count this way

    reports = read_reports(args.artifacts)
    crown_points = {
        model: int(count)
        for model, count in (item.split("=") for item in args.crown_points.split(","))
    }
    rows, crown_rows = [], []
    for report in reports:
        row = bracket_row(report)
        checks = (
            args.artifacts
            / "runs"
            / report["run"]
            / (
                f"checks-{args.width_eps:g}-{args.width_points}-{args.sample_inputs}-{args.samples}.json"
            )
        )
        if not checks.is_file():  # the widths and samples of a run, computed once
            budgets = sorted({proof["eps"] for proof in report["certified"]})
            found = {
                "widths": width_ratios(report["checkpoint"], args.width_eps, args.width_points),
                "outside": points_outside(
                    report["checkpoint"], budgets, args.sample_inputs, args.samples
                ),
            }
            checks.write_text(json.dumps(found))
        found = json.loads(checks.read_text())
        row.update(found["widths"])
        row["sampled points outside the bounds"] = found["outside"]
        extra = extra_attacks(report, args.artifacts, args.extra_points)
        row["certified points the left-out attacks broke"] = (
            f"{sum(e[a] for e in extra.values() for a in EXTRA_ATTACKS)} of "
            f"{sum(e['attacked'] for e in extra.values())}"
        )
        rows.append(row)
        points = crown_points.get(row["model"])
        if points:
            shares = crown_certified(report, args.artifacts, points)
            crown_rows.append(crown_row(report, shares) | {"points": points})
        print(f"{row['model']}, {row['training']}: done", flush=True)
    table = pd.DataFrame(rows)
    width = f"logit-bound width against IBP's (ε {args.width_eps:g}, {args.width_points} points)"
    table[width] = [
        ", ".join(f"{method} {row[method]:.3f}" for method in WIDTH_METHODS) for row in rows
    ]
    for model, part in table.groupby("model", sort=False):
        print(f"\n### {model}\n")
        print(table_markdown(part.drop(columns=["model", *WIDTH_METHODS])))
        plain = part[~part["training"].str.startswith("IBP")]
        means = ", ".join(f"{m} {part[m].mean():.3f}" for m in WIDTH_METHODS)
        plain_means = ", ".join(f"{m} {plain[m].mean():.3f}" for m in WIDTH_METHODS)
        print(f"\nmean width over IBP's: {means}; without IBP training: {plain_means}")
        full = [r for r in crown_rows if r["model"] == model]
        if full:
            print(
                f"\nCertified on the first {full[0]['points']} test images: "
                "IBP or CROWN-IBP → with full CROWN too\n"
            )
            frame = pd.DataFrame(full).drop(columns=["model", "points"])
            print(table_markdown(frame))
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        for model in dict.fromkeys(r["config"]["train"]["model"] for r in reports):
            mine = [r for r in reports if r["config"]["train"]["model"] == model]
            path = args.figures / f"brackets-{model}.png"
            plot_brackets(results_frame(mine)).savefig(path, dpi=110, bbox_inches="tight")
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
