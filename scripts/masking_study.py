"""The gradient-masking study of docs/results/masking.md, from scratch.

Trains lenet-mnist on real MNIST with cross-entropy, with each smoothing method at alpha 0.1
and 0.5, a plainly trained twin (another seed; the transfer attacks' surrogate) and a
PGD-trained reference, then evaluates every model under the paper protocol (FGSM and BIM on
the model's own loss; CW is left out: it gives no L-inf accuracy), the strong protocol and
``autoattack``, and writes the tables and the raised flags. Finished trainings and
evaluations are reused, so an interrupted study resumes; ``--models`` limits the study to
some of its models. The test points are evaluated in chunks (``--chunk``), each cached on
its own, so that two processes can share a model's chunks and a killed study loses at most
one; every accuracy is a mean over points, so the whole's is the chunks' weighted by size.

    ADVLS_DATA=../shared/data python scripts/masking_study.py --runs runs/masking --n 1000 \
        [--chunk 500] [--models ce,adversarial-0.1,standard-0.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from advls import data as datasets
from advls.checkpoint import load_model
from advls.evaluate import PROTOCOLS, evaluate, format_markdown, training_smoothing
from advls.train import TrainConfig, train

EPS = (0.1, 0.2, 0.3)
BASE = {"dataset": "mnist", "model": "lenet-mnist", "epochs": 6}
MODELS: dict[str, dict] = {
    "ce": {"loss": "ce"},
    **{
        f"{method}-{alpha}": {"loss": method, "alpha": alpha}
        for alpha in (0.1, 0.5)
        for method in ("adversarial", "standard", "boltzmann", "second_best")
    },
    "pgd-at": {"loss": "ce", "defence": "pgd-at", "defence_eps": 0.1, "epochs": 5},
}
TWIN = {"loss": "ce", "seed": 1}
PROTOCOL_NAMES = ("paper", "strong", "autoattack")
#: The evaluations' cache names carry the protocol set, so a change of set evaluates afresh.
CACHE_TAG = "-".join(PROTOCOL_NAMES)
STRONG_ATTACKS = tuple(spec.label for spec in PROTOCOLS["strong"].attacks)
#: The masking checks' measurements the tables show: shares, which average over chunks.
SHARES = ("zero_gradient_fraction", "large_eps_accuracy", "unbounded_success_rate")
SHORT = {"adversarial": "ALS", "standard": "SLS", "boltzmann": "BLS", "second_best": "SBLS"}


def _name(config: dict) -> str:
    if config.get("defence", "none") != "none":
        return f"PGD-AT (eps {config['defence_eps']})"
    return "CE" if config["loss"] == "ce" else f"{SHORT[config['loss']]} α={config['alpha']}"


def _train(run: Path, overrides: dict) -> None:
    config = TrainConfig(**{**BASE, **overrides})
    train(config, run, device="cpu", progress=False)


def _evaluate(run: Path, twin: Path, points: int, offset: int = 0) -> dict:
    start = f"{offset}+" if offset else ""
    cached = run / f"evaluation-{start}{points}-{CACHE_TAG}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    model, meta = load_model(run)
    surrogate, _ = load_model(twin)
    test = datasets.load("mnist", "test")
    result = evaluate(
        model,
        test.images[offset : offset + points],
        test.labels[offset : offset + points],
        protocols=[PROTOCOLS["paper"].without("cw-l2"), "strong", "autoattack"],
        eps=EPS,
        smoothing=training_smoothing(meta["config"]),
        surrogate=surrogate,
    )
    payload = json.loads(result.to_json(checkpoint=str(run)))
    payload["markdown"] = format_markdown(result, title=str(run))
    cached.write_text(json.dumps(payload, indent=2))
    return payload


def _weighted(values: list, sizes: list[int]) -> float | None:
    if any(value is None for value in values):
        return None
    return sum(value * size for value, size in zip(values, sizes, strict=True)) / sum(sizes)


def _combine(parts: list[dict], sizes: list[int]) -> dict:
    """One payload from the evaluations of consecutive chunks of the test points.

    Accuracies and the checks' shares are the chunks' weighted by their sizes (exact for the
    accuracies: each is a mean over points). A flag counts as raised where any chunk raised
    it, with that chunk's message and evidence.
    """
    first = parts[0]

    def keys(part: dict, name: str) -> list[tuple]:
        return [(r["protocol"], r.get("attack", ""), r["eps"]) for r in part[name]]

    for part in parts[1:]:
        if any(keys(part, name) != keys(first, name) for name in ("worst_case", "results")):
            raise ValueError("the chunks of one model must evaluate the same attacks and budgets")

    def rows(name: str) -> list[dict]:
        return [
            {
                **row,
                "robust_accuracy": _weighted([p[name][i]["robust_accuracy"] for p in parts], sizes),
            }
            for i, row in enumerate(first[name])
        ]

    flags: dict[str, dict] = {}  # the first chunk that raised each, else the first's
    for part in parts:
        for flag in part["flags"]:
            kept = flags.get(flag["name"])
            if kept is None or (flag["raised"] and not kept["raised"]):
                flags[flag["name"]] = flag
    return {
        "clean_accuracy": _weighted([p["clean_accuracy"] for p in parts], sizes),
        "worst_case": rows("worst_case"),
        "results": rows("results"),
        # The shares the tables show; the counts of one chunk do not average.
        "checks": {key: _weighted([p["checks"][key] for p in parts], sizes) for key in SHARES},
        "flags": list(flags.values()),
        "seconds": sum(p.get("seconds", 0.0) for p in parts),
    }


def _worst(payload: dict, protocol: str, eps: float) -> float:
    return next(
        row["robust_accuracy"]
        for row in payload["worst_case"]
        if row["protocol"] == protocol and row["eps"] == eps
    )


def _accuracy(payload: dict, attack: str, eps: float) -> float | None:
    for row in payload["results"]:
        if row["protocol"] == "strong" and row["attack"] == attack and row["eps"] == eps:
            return row["robust_accuracy"]
    return None


def _tables(results: dict[str, dict], points: int, seconds: dict[str, float]) -> str:
    lines = [
        f"Real MNIST, lenet-mnist, first {points} test images. `paper`: "
        "FGSM and BIM-100 on the model's own training loss; `strong`: per-example worst case over "
        + ", ".join(f"`{label}`" for label in STRONG_ATTACKS)
        + " (every attack on every point); `autoattack`: AutoAttack's standard version "
        "(APGD-CE, APGD-T, FAB-T, Square 5000, each on the points the earlier left robust).",
        "",
        "| model | clean | "
        + " | ".join(f"paper ε={e} | strong ε={e} | autoattack ε={e}" for e in EPS)
        + " | flags raised |",
        "|---|---|" + "---|---|---|" * len(EPS) + "---|",
    ]
    for name, payload in results.items():
        raised = [f["name"] for f in payload["flags"] if f["raised"]]
        cells = []
        for eps in EPS:
            cells += [
                f"{_worst(payload, 'paper', eps):.3f}",
                f"**{_worst(payload, 'strong', eps):.3f}**",
                f"{_worst(payload, 'autoattack', eps):.3f}",
            ]
        lines.append(
            f"| {name} | {payload['clean_accuracy']:.3f} | {' | '.join(cells)} | "
            f"{', '.join(raised) or '–'} |"
        )
    attacks = list(STRONG_ATTACKS)
    for eps in EPS:
        lines += [
            "",
            f"Strong protocol, each attack alone at ε = {eps} (robust accuracy):",
            "",
            "| model | " + " | ".join(attacks) + " | worst case |",
            "|---|" + "---|" * (len(attacks) + 1),
        ]
        for name, payload in results.items():
            cells = [_accuracy(payload, attack, eps) for attack in attacks]
            lines.append(
                f"| {name} | "
                + " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
                + f" | {_worst(payload, 'strong', eps):.3f} |"
            )
    lines += [
        "",
        "Flags with their evidence (a flag raised on any chunk of the test points, with the "
        "evidence of the first chunk that raised it; the shares and seconds are the whole's):",
        "",
    ]
    for name, payload in results.items():
        checks = payload["checks"]
        lines.append(
            f"- **{name}** (zero-gradient share {checks['zero_gradient_fraction']:.3f}, "
            f"PGD at ε=0.5 {checks['large_eps_accuracy']:.3f}, unbounded DeepFool success "
            f"{checks['unbounded_success_rate']:.3f}; {seconds[name]:.0f} s):"
        )
        for flag in payload["flags"]:
            if flag["raised"]:
                lines.append(
                    f"  - `{flag['name']}`: {flag['message']}; {json.dumps(flag['evidence'])}"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/masking"))
    parser.add_argument("--n", type=int, default=1000, help="test points (the first n)")
    parser.add_argument("--chunk", type=int, default=500, help="test points per cached chunk")
    parser.add_argument("--out", type=Path, default=Path("docs/results/masking_tables.md"))
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated run names (default: all)"
    )
    args = parser.parse_args()
    chosen = args.models.split(",")
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    twin = args.runs / "ce-twin"
    _train(twin, TWIN)
    results, seconds = {}, {}
    for run_name, overrides in ((name, MODELS[name]) for name in chosen):
        run = args.runs / run_name
        _train(run, overrides)
        chunks = [
            (start, min(args.chunk, args.n - start)) for start in range(0, args.n, args.chunk)
        ]
        parts = [_evaluate(run, twin, size, start) for start, size in chunks]
        payload = _combine(parts, [size for _, size in chunks])
        name = _name({**BASE, **overrides})
        results[name], seconds[name] = payload, payload["seconds"]
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    args.out.write_text(_tables(results, args.n, seconds))
    summary = {
        name: {k: p[k] for k in ("clean_accuracy", "worst_case", "flags")}
        for name, p in results.items()
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
