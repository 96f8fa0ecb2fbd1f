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

``--targeted`` times APGD-T-100 (9 targets, targeted DLR) instead. Its floor is the passes it
makes: one APGD-T run is recorded (the batch size of every forward pass: per target, the
points still robust), and the floor replays exactly those forward+backward passes, each with
a sign step and a clamp (threshold <= 1.10).

    .venv/bin/python benchmarks/bench_apgd.py [--threads N] [--rounds R] [--points N]
        [--checkpoint RUN_DIR] [--targeted]
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
TARGETED_THRESHOLD = 1.10
TARGETS = 9
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
    parser.add_argument(
        "--targeted", action="store_true", help="APGD-T with 9 targets against its replayed floor"
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

    options = {"targeted": True, "target_classes": TARGETS} if args.targeted else {}
    threshold = TARGETED_THRESHOLD if args.targeted else THRESHOLD

    def run_apgd() -> torch.Tensor:
        return attacks.apgd(model, x, y, eps=EPS, steps=STEPS, seed=0, **options).x_adv

    # The batch size of every forward pass one run makes (all of them with a backward pass
    # but the last of each target's run, the clean pass and the scoring).
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, inputs: sizes.append(len(inputs[0])))
    result = attacks.apgd(model, x, y, eps=EPS, steps=STEPS, seed=0, **options)
    handle.remove()
    passes = [n for n in sizes if n] if args.targeted else [len(x)] * STEPS

    def floor() -> torch.Tensor:
        # The same forward+backward passes w.r.t. the input, a sign step and a clamp: no more.
        x_adv = x.clone()
        for n in passes:
            z = x_adv[:n].requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(z), y[:n], reduction="sum"), z)
            x_adv[:n] = torch.clamp(z.detach().add_(grad.sign_(), alpha=step), low[:n], high[:n])
        return x_adv

    times = interleaved({"apgd": run_apgd, "floor": floor}, rounds=args.rounds, warmup=args.warmup)
    ratio = ratio_stats(times["apgd"], times["floor"])
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
        "threshold": threshold,
        "targeted": args.targeted,
        "apgd_model_calls": result.model_calls,
        "floor_model_calls": len(passes),
        "clean_accuracy": clean,
        "apgd_robust_accuracy": result.robust_accuracy,
        "floor_robust_accuracy": by_floor,
        "pass": ratio["median"] <= threshold,
    }
    log(
        f"  apgd {entry['apgd_s']:.3f} s  floor {entry['floor_s']:.3f} s  "
        f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
    )
    emit(
        {
            "benchmark": "apgd-t" if args.targeted else "apgd",
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
