"""Wall time of the strong protocol on one lenet-mnist checkpoint and 1000 real MNIST images.

An absolute figure (threshold: 5 minutes on a 2-core machine), so one timed run, not a ratio;
the per-attack seconds show where the time goes. Also reports the per-attack robust accuracy
and the flags, so a slow run can be told apart from a changed one. Needs a trained run
directory (``advls train --model lenet-mnist --loss ce --epochs 6 --out runs/ce``) and, for
the transfer attack, a plainly trained twin (``--surrogate``; skipped without one).

    .venv/bin/python benchmarks/bench_evaluate.py --checkpoint runs/masking/ce \\
        --surrogate runs/masking/ce-twin [--points 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _timing import apply_threads, emit, log, machine_info
from advls import data as datasets
from advls.checkpoint import load_model
from advls.evaluate import evaluate, training_smoothing

THRESHOLD_SECONDS = 300.0
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run directory of a lenet-mnist")
    parser.add_argument("--surrogate", default=None, help="run directory of a plain twin")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--protocol", default="strong")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    if "ADVLS_DATA" not in os.environ and FALLBACK_DATA.is_dir():
        os.environ["ADVLS_DATA"] = str(FALLBACK_DATA)

    model, meta = load_model(args.checkpoint)
    surrogate = load_model(args.surrogate)[0] if args.surrogate else None
    test = datasets.load(meta["config"]["dataset"], "test")
    log(f"{args.protocol} protocol on {args.points} points of {args.checkpoint} ...")
    result = evaluate(
        model,
        test.images[: args.points],
        test.labels[: args.points],
        protocols=[args.protocol],
        smoothing=training_smoothing(meta["config"]),
        surrogate=surrogate,
    )
    attack_seconds: dict[str, float] = {}
    for outcome in result.outcomes:
        key = f"{outcome.spec.label}@{outcome.eps}" if outcome.eps else outcome.spec.label
        attack_seconds[key] = round(outcome.seconds, 2)
    emit(
        {
            "benchmark": "evaluate",
            "machine": machine_info(),
            "settings": {
                "checkpoint": args.checkpoint,
                "surrogate": args.surrogate,
                "points": args.points,
                "protocol": args.protocol,
                "eps": list(result.eps),
            },
            "results": {
                "seconds": round(result.seconds, 1),
                "attack_seconds": attack_seconds,
                "clean_accuracy": result.clean_accuracy,
                "worst_case": {str(e): result.worst_case(args.protocol, e) for e in result.eps},
                "accuracy": {f"{o.spec.label}@{o.eps}": o.robust_accuracy for o in result.outcomes},
                "flags_raised": [flag.name for flag in result.raised],
                "skipped": result.skipped,
            },
            "threshold_seconds": THRESHOLD_SECONDS,
            "pass": result.seconds <= THRESHOLD_SECONDS,
        }
    )


if __name__ == "__main__":
    main()
