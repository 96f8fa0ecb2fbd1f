"""APGD-100 (CE, L-inf, eps 0.1) on lenet-mnist against its floor: 100 bare gradient steps.

Same model, same batch of real MNIST test images (500 by default). The floor is the least
work any 100-step gradient attack must do: exactly 100 forward+backward passes with respect
to the input, each followed by a sign step and a clamp onto the eps-ball and [0, 1]; it keeps
no books. APGD does those 100 passes too (its last iterate needs only a forward pass, and the
result is scored with one more), plus its momentum, per-example step sizes and best-point
tracking. APGD runs all its steps even where every example is fooled early, so the
comparison is fair for any model: by default a randomly initialised lenet-mnist (seed 0);
``--checkpoint`` takes a trained run directory instead. Samples are interleaved; the ratio is
the median over rounds of APGD / floor (threshold <= 1.06).

    .venv/bin/python benchmarks/bench_apgd.py [--threads N] [--rounds R] [--points N]
        [--checkpoint RUN_DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from _timing import (
    add_common_args,
    apply_threads,
    emit,
    interleaved,
    log,
    machine_info,
    median,
    ratio_stats,
)
from advls import attacks
from advls import data as datasets
from advls.models import create

EPS = 0.1
STEPS = 100
THRESHOLD = 1.06
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_model(checkpoint: str | None) -> torch.nn.Module:
    if checkpoint is not None:
        from advls.checkpoint import load_model as load_checkpoint

        model, _ = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(0)
        model = create("lenet-mnist", 10, (1, 28, 28))
    # Frozen as the attack freezes it (eval_mode): backward computes input gradients only.
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=5, warmup=1)
    parser.add_argument("--points", type=int, default=500, help="test images (500)")
    parser.add_argument(
        "--checkpoint", default=None, help="a run directory (default: random lenet-mnist)"
    )
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    data_dir = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    model = load_model(args.checkpoint)
    test = datasets.load("mnist", "test", data_dir, download=False, progress=False)
    x = test.images[: args.points].float() / 255.0
    y = test.labels[: args.points]
    low, high = (x - EPS).clamp(min=0.0), (x + EPS).clamp(max=1.0)
    step = 2.5 * EPS / STEPS
    log(
        f"bench_apgd: {args.points} MNIST test images, "
        f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random lenet-mnist'}"
    )

    def run_apgd() -> torch.Tensor:
        return attacks.apgd(model, x, y, eps=EPS, steps=STEPS, seed=0).x_adv

    def floor() -> torch.Tensor:
        # 100 forward+backward passes w.r.t. the input, a sign step and a clamp: no more.
        x_adv = x.clone()
        for _ in range(STEPS):
            z = x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)
            x_adv = torch.clamp(z.detach().add_(grad.sign_(), alpha=step), low, high)
        return x_adv

    times = interleaved({"apgd": run_apgd, "floor": floor}, rounds=args.rounds, warmup=args.warmup)
    ratio = ratio_stats(times["apgd"], times["floor"])
    result = attacks.apgd(model, x, y, eps=EPS, steps=STEPS, seed=0)
    floor_adv = floor()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        by_floor = float((model(floor_adv).argmax(1) == y).float().mean())
    entry = {
        "apgd_s": median(times["apgd"]),
        "floor_s": median(times["floor"]),
        "ratio": ratio["median"],
        "ratio_q1": ratio["q1"],
        "ratio_q3": ratio["q3"],
        "rounds": args.rounds,
        "threshold": THRESHOLD,
        "apgd_model_calls": result.model_calls,
        "floor_model_calls": STEPS,
        "clean_accuracy": clean,
        "apgd_robust_accuracy": result.robust_accuracy,
        "floor_robust_accuracy": by_floor,
        "pass": ratio["median"] <= THRESHOLD,
    }
    log(
        f"  apgd {entry['apgd_s']:.3f} s  floor {entry['floor_s']:.3f} s  "
        f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
    )
    emit(
        {
            "benchmark": "apgd",
            "description": __doc__.split("\n")[0],
            "machine": machine_info(),
            "settings": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "points": args.points,
                "eps": EPS,
                "steps": STEPS,
                "model": args.checkpoint or "random lenet-mnist (seed 0)",
            },
            "results": {"apgd_vs_floor": entry},
            "all_pass": entry["pass"],
        }
    )


if __name__ == "__main__":
    main()
