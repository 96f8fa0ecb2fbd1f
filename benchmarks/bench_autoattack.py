"""advls's ``autoattack`` protocol, APGD-T and FAB-T against torchattacks' ports of AutoAttack.

On trained MNIST LeNets (run directories of ``scripts/masking_study.py``: CE, ALS alpha 0.1,
SLS alpha 0.5 by default) and the first N test points:

* ``aa-ours``, ``aa-theirs`` and ``aa-reference``: robust accuracy of
  ``evaluate(protocols=["autoattack"])``, of ``torchattacks.AutoAttack(version="standard")``
  (whose APGD, APGD-T and FAB run 10 iterations, not AutoAttack's 100) and of AutoAttack's
  standard version built from torchattacks' ports with the reference's settings
  (:func:`reference_autoattack`), per eps; where ours and another are cached, the pair with
  the per-point agreement (points robust for one and broken by the other);
* ``apgdt``: ``apgd(targeted=True)`` (9 targets, 100 steps) against ``torchattacks.APGDT``;
* ``fab``: ``fab(targeted=True, eps=...)`` against ``torchattacks.FAB(multi_targeted=True)``:
  success rate and the median L-inf distance of the fooled points;
* ``timing``: both AutoAttacks on the same points in one process, alternating, the ratio of
  the medians (threshold <= 0.7).

Each part's result per (model, eps) is cached as JSON under ``--cache`` (a killed run loses
nothing finished; delete a file to measure again). Prints one JSON document.

    .venv/bin/python benchmarks/bench_autoattack.py --part aa-ours --part aa-theirs \
        --part apgdt --part fab \
        [--models ce,adversarial-0.1,standard-0.5] [--points 1000] [--eps 0.1,0.3] \
        [--runs runs/masking] [--cache runs/parity] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from _timing import apply_threads, emit, interleaved, log, machine_info, median
from advls import data as datasets
from advls.attacks import apgd, fab
from advls.checkpoint import load_model
from advls.evaluate import evaluate

FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMING_THRESHOLD = 0.7


def _torchattacks():
    import torchattacks  # a test oracle only: installed with --no-deps by the Makefile

    return torchattacks


def _cached(path: Path, compute, *args: Any) -> dict[str, Any]:
    """``compute(*args)``, or what an earlier run of it left in ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def _fooled(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


def autoattack_ours(model, x, y, eps: float) -> dict[str, Any]:
    """advls's ``autoattack`` protocol: per-point robustness, seconds, accuracy after each."""
    started = time.perf_counter()
    ours = evaluate(model, x, y, protocols=["autoattack"], eps=[eps], checks=False, seed=0)
    robust = ours.worst_case_robust("autoattack", eps)
    return {
        "robust": robust.tolist(),
        "robust_accuracy": float(robust.float().mean()),
        "seconds": time.perf_counter() - started,
        "after_each": {o.spec.label: o.robust_accuracy for o in ours.outcomes},
    }


def autoattack_theirs(model, x, y, eps: float) -> dict[str, Any]:
    """``torchattacks.AutoAttack(version="standard")``: per-point robustness and seconds."""
    started = time.perf_counter()
    attack = _torchattacks().AutoAttack(model, norm="Linf", eps=eps, n_classes=10, seed=0)
    robust = ~_fooled(model, attack(x, y), y)
    return {
        "robust": robust.tolist(),
        "robust_accuracy": float(robust.float().mean()),
        "seconds": time.perf_counter() - started,
    }


def reference_autoattack(model: torch.nn.Module, eps: float):
    """AutoAttack's ``standard`` version built from torchattacks' ports, as the reference
    ``autoattack.py`` configures it: 100 iterations for APGD-CE, APGD-T and FAB-T, Square
    with 5000 queries and ``resc_schedule=False``, one restart each, as a cascade.

    ``torchattacks.AutoAttack(version="standard")`` leaves APGD, APGD-T and FAB at their
    class default of 10 iterations, so it is a weaker suite than AutoAttack's own.
    """
    ta = _torchattacks()
    common = {"eps": eps, "norm": "Linf", "seed": 0}
    return ta.MultiAttack(
        [
            ta.APGD(model, loss="ce", steps=100, n_restarts=1, **common),
            ta.APGDT(model, steps=100, n_restarts=1, n_classes=10, **common),
            ta.FAB(model, steps=100, n_restarts=1, multi_targeted=True, n_classes=10, **common),
            ta.Square(model, n_queries=5000, n_restarts=1, resc_schedule=False, **common),
        ]
    )


def autoattack_reference(model, x, y, eps: float) -> dict[str, Any]:
    """:func:`reference_autoattack`: per-point robustness and seconds."""
    started = time.perf_counter()
    robust = ~_fooled(model, reference_autoattack(model, eps)(x, y), y)
    return {
        "robust": robust.tolist(),
        "robust_accuracy": float(robust.float().mean()),
        "seconds": time.perf_counter() - started,
    }


def _pair(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Both AutoAttacks' robust accuracy over all points, and where they disagree."""
    mine, other = torch.tensor(ours["robust"]), torch.tensor(theirs["robust"])
    return {
        "ours": ours["robust_accuracy"],
        "theirs": theirs["robust_accuracy"],
        "difference": ours["robust_accuracy"] - theirs["robust_accuracy"],
        "only_ours_robust": int((mine & ~other).sum()),
        "only_theirs_robust": int((other & ~mine).sum()),
        "ours_s": ours["seconds"],
        "theirs_s": theirs["seconds"],
        "after_each": ours["after_each"],
    }


def _correct(model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The points the model classifies correctly (what a single attack is compared on)."""
    keep = ~_fooled(model, x, y)
    return x[keep], y[keep]


def apgdt_pair(model, x, y, eps: float) -> dict[str, Any]:
    """APGD-T (9 targets, 100 steps, 1 restart) on the points the model gets right."""
    x, y = _correct(model, x, y)
    started = time.perf_counter()
    ours = apgd(model, x, y, eps=eps, targeted=True, steps=100, seed=0)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    theirs = _torchattacks().APGDT(model, eps=eps, steps=100, n_restarts=1, seed=0, n_classes=10)
    fooled_theirs = _fooled(model, theirs(x, y), y)
    return {
        "points": len(y),
        "ours_success": float(ours.success.float().mean()),
        "theirs_success": float(fooled_theirs.float().mean()),
        "ours_s": ours_seconds,
        "theirs_s": time.perf_counter() - started,
    }


def fab_pair(model, x, y, eps: float) -> dict[str, Any]:
    """FAB-T (9 targets, 100 steps, 1 restart, bounded at eps) on the correct points."""
    x, y = _correct(model, x, y)
    started = time.perf_counter()
    ours = fab(model, x, y, eps=eps, targeted=True, steps=100, seed=0)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    attack = _torchattacks().FAB(
        model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10,
        seed=0,
    )  # fmt: skip
    x_theirs = attack(x, y)
    theirs_seconds = time.perf_counter() - started
    fooled_theirs = _fooled(model, x_theirs, y)
    distance_theirs = (x_theirs - x).flatten(1).abs().amax(dim=1)

    def median_of(values: torch.Tensor) -> float | None:
        return float(values.median()) if values.numel() else None

    return {
        "points": len(y),
        "ours_success": float(ours.success.float().mean()),
        "theirs_success": float(fooled_theirs.float().mean()),
        "ours_median_linf": median_of(ours.linf[ours.success]),
        "theirs_median_linf": median_of(distance_theirs[fooled_theirs]),
        "ours_s": ours_seconds,
        "theirs_s": theirs_seconds,
    }


class PassLog(torch.nn.Module):
    """``model`` that records each forward pass: whether it records a gradient, and its rows."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.passes: list[tuple[bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append((torch.is_grad_enabled() and x.requires_grad, x.shape[0]))
        return self.model(x)


def bare_passes(model: torch.nn.Module, x: torch.Tensor, passes: list[tuple[bool, int]]) -> float:
    """Seconds to make the same passes bare: the batch sizes a run used, forward (and backward
    where it recorded a gradient) on rows of ``x``, nothing else. The floor of that run."""
    started = time.perf_counter()
    for gradient, rows in passes:
        batch = x[torch.arange(rows) % x.shape[0]]
        if gradient:
            batch.requires_grad_(True)
            torch.autograd.grad(model(batch).sum(), batch)
        else:
            with torch.no_grad():
                model(batch)
    return time.perf_counter() - started


def timing(model, x, y, eps: float, rounds: int) -> dict[str, Any]:
    """Ours and the reference-configured AutoAttack timed in one process, alternating; the
    passes each made (gradient and no-gradient rows) and the time those passes take bare."""
    logged = {"ours": PassLog(model).eval(), "theirs": PassLog(model).eval()}
    attack = reference_autoattack(logged["theirs"], eps)
    contenders = {
        "ours": lambda: evaluate(
            logged["ours"], x, y, protocols=["autoattack"], eps=[eps], checks=False
        ),
        "theirs": lambda: attack(x, y),
    }
    times = interleaved(contenders, rounds=rounds, warmup=0)
    result: dict[str, Any] = {}
    for side, log_ in logged.items():
        one_run = log_.passes[: len(log_.passes) // rounds]
        floor = bare_passes(model, x, one_run)
        result[side] = {
            "seconds": median(times[side]),
            "floor_s": floor,
            "over_floor": median(times[side]) / floor,
            "gradient_rows": sum(rows for gradient, rows in one_run if gradient),
            "forward_only_rows": sum(rows for gradient, rows in one_run if not gradient),
        }
    ratio = result["ours"]["seconds"] / result["theirs"]["seconds"]
    return result | {
        "ratio": ratio,
        # Were ours free of any cost beyond its passes, the ratio would still be this.
        "ratio_at_zero_overhead": result["ours"]["floor_s"] / result["theirs"]["seconds"],
        "rounds": rounds,
        "threshold": TIMING_THRESHOLD,
        "pass": ratio <= TIMING_THRESHOLD,
    }


PARTS = {
    "aa-ours": autoattack_ours,
    "aa-theirs": autoattack_theirs,
    "aa-reference": autoattack_reference,
    "apgdt": apgdt_pair,
    "fab": fab_pair,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", action="append", choices=[*PARTS, "timing"], required=True)
    parser.add_argument("--models", default="ce,adversarial-0.1,standard-0.5")
    parser.add_argument("--runs", type=Path, default=Path("runs/masking"))
    parser.add_argument("--cache", type=Path, default=Path("runs/parity"))
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--eps", default="0.1,0.3")
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    root = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    test = datasets.load("mnist", "test", root, download=False, progress=False)
    x = test.images[: args.points].float() / 255.0
    y = test.labels[: args.points].long()
    budgets = [float(value) for value in args.eps.split(",")]
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        model, _ = load_model(args.runs / name)
        for part in args.part:
            for eps in budgets:
                key = f"{part}-{name}-{args.points}-{eps:g}"
                log(f"bench_autoattack: {key}")
                if part == "timing":
                    results[key] = timing(model, x, y, eps, args.rounds)
                else:
                    path = args.cache / f"{key}.json"
                    results[key] = _cached(path, PARTS[part], model, x, y, eps)
                log(f"  {json.dumps(results[key])[-300:]}")
        for eps in budgets:
            for other in ("theirs", "reference"):
                sides = [
                    args.cache / f"aa-{side}-{name}-{args.points}-{eps:g}.json"
                    for side in ("ours", other)
                ]
                if all(path.exists() for path in sides):
                    ours, theirs = (json.loads(path.read_text()) for path in sides)
                    results[f"aa-vs-{other}-{name}-{args.points}-{eps:g}"] = _pair(ours, theirs)
    emit(
        {
            "benchmark": "autoattack",
            "description": __doc__.split("\n")[0],
            "machine": machine_info(),
            "settings": vars(args) | {"runs": str(args.runs), "cache": str(args.cache)},
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
