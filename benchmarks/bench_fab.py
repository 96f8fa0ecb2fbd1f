"""FAB-T (L-inf, 9 targets, 1 run, 100 steps) against torchattacks' FAB and against its floor.

AutoAttack's standard FAB-T at eps 0.1 and 0.3 on a lenet-mnist trained for one epoch on real
MNIST (``--train-subset`` images, seed 0), over the first ``--points`` test images. For each
eps: success rate on the correctly classified points and median L-inf distance of the points
fooled within eps, for advls' ``fab(targeted=True)`` and torchattacks'
``FAB(multi_targeted=True)``, and seconds per attack (median over rounds; the two attacks
alternate within each round). The floor is the model work advls' run does, replayed alone:
the same sequence of passes over the same batch sizes (a forward+backward of one logit
difference per linearisation, a forward under ``no_grad`` per prediction), with none of the
projections or bookkeeping; ``ratio`` is advls / floor.

    .venv/bin/python benchmarks/bench_fab.py [--threads N] [--rounds R] [--points N]
        [--train-subset N] [--checkpoint RUN_DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import Tensor, nn

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
from advls import data as datasets
from advls.attacks.fab import fab

EPSILONS = (0.3, 0.1)  # the quick one first
STEPS = 100
TARGETS = 9
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Recording(nn.Module):
    """Records the batch size of every call and whether it needed a gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], x.requires_grad))
        return self.model(x)


def load_model(checkpoint: str | None, data_dir: str | Path, subset: int) -> nn.Module:
    if checkpoint is not None:
        from advls.checkpoint import load_model as load_checkpoint

        model, _ = load_checkpoint(checkpoint)
    else:
        from advls.train import TrainConfig, train

        config = TrainConfig(
            dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=subset, seed=0
        )
        model = train(config, data_dir=data_dir, device="cpu", progress=False).model
    return model.eval().requires_grad_(False)


def stats(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, eps: float) -> dict:
    """Success rate (correct points fooled within eps) and the median L-inf of those fooled."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = (model(x_adv).argmax(1) != y) & correct
    linf = (x_adv - x).flatten(1).abs().amax(1)
    fooled &= linf <= eps * (1 + 1e-6)
    return {
        "success_rate": float(fooled.sum()) / max(int(correct.sum()), 1),
        "median_linf": float(linf[fooled].median()) if fooled.any() else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=3, warmup=0)
    parser.add_argument("--points", type=int, default=200, help="test images (200)")
    parser.add_argument("--train-subset", type=int, default=20000, help="training images")
    parser.add_argument("--checkpoint", default=None, help="a run directory (default: train)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    import torchattacks  # the reference: only the benchmark needs it

    data_dir = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    model = load_model(args.checkpoint, data_dir, args.train_subset)
    test = datasets.load("mnist", "test", data_dir, download=False, progress=False)
    x = test.images[: args.points].float() / 255.0
    y = test.labels[: args.points]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    log(f"bench_fab: {args.points} MNIST test images, lenet-mnist clean accuracy {clean:.3f}")

    results = {}
    recording = Recording(model)
    for eps in EPSILONS:
        found: dict[str, Tensor] = {}

        def ours(eps: float = eps, found: dict[str, Tensor] = found) -> None:
            recording.calls = []  # the floor replays the passes of the latest run
            result = fab(
                recording, x, y, eps=eps, steps=STEPS, targeted=True, target_classes=TARGETS
            )
            found["advls"], found["calls"] = result.x_adv, torch.tensor(result.model_calls)

        def theirs(eps: float = eps, found: dict[str, Tensor] = found) -> None:
            attack = torchattacks.FAB(
                model, norm="Linf", eps=eps, steps=STEPS, n_restarts=1, multi_targeted=True,
                n_classes=TARGETS + 1, seed=0,
            )  # fmt: skip
            found["torchattacks"] = attack(x, y)

        def floor() -> None:
            for size, gradient in recording.calls:
                if gradient:
                    leaf = x[:size].clone().requires_grad_(True)
                    logits = model(leaf)
                    torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), leaf)
                else:
                    with torch.no_grad():
                        model(x[:size])

        # Round 0 runs advls first, so the floor always has a run to replay.
        times = interleaved(
            {"advls": ours, "torchattacks": theirs, "floor": floor},
            rounds=args.rounds,
            warmup=args.warmup,
        )
        entry = {
            "advls": {**stats(model, x, y, found["advls"], eps), "seconds": median(times["advls"])},
            "torchattacks": {
                **stats(model, x, y, found["torchattacks"], eps),
                "seconds": median(times["torchattacks"]),
            },
            "floor_seconds": median(times["floor"]),
            "advls_model_calls": int(found["calls"]),
            "advls_vs_torchattacks": ratio_stats(times["advls"], times["torchattacks"]),
            "advls_vs_floor": ratio_stats(times["advls"], times["floor"]),
        }
        results[f"eps_{eps}"] = entry
        log(
            f"  eps {eps}: advls {entry['advls']}  torchattacks {entry['torchattacks']}  "
            f"floor {entry['floor_seconds']:.2f} s"
        )
    emit(
        {
            "benchmark": "fab",
            "description": __doc__.split("\n")[0],
            "machine": machine_info(),
            "settings": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "points": args.points,
                "epsilons": list(EPSILONS),
                "steps": STEPS,
                "target_classes": TARGETS,
                "model": args.checkpoint
                or f"lenet-mnist, 1 epoch on {args.train_subset} MNIST images (seed 0)",
                "clean_accuracy": clean,
            },
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
