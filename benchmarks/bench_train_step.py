"""One training step of lenet-mnist at batch 128: ALS versus plain ``F.cross_entropy``.

A step is ``zero_grad, forward, loss, backward, optimizer step`` with SGD (momentum 0.9,
Nesterov, lr 0.05, weight decay 5e-4: ``TrainConfig``'s defaults, built by ``train.py``'s
``_make_optimizer``). Two copies of the model with the same initial weights, each with its
own optimizer, train on the same fixed random batch (inputs in [0, 1], random labels).
Threshold from the issue: median per-round time ratio ALS / CE <= 1.03.

    .venv/bin/python benchmarks/bench_train_step.py [--threads N] [--rounds R] [--inner I]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
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
from advls.losses import SmoothedCrossEntropy
from advls.models import create
from advls.train import TrainConfig, _make_optimizer

BATCH = 128
THRESHOLD = 1.03
ALPHA = 0.1


def make_step(
    model: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> Callable[[], None]:
    optimizer = _make_optimizer(TrainConfig(), model)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=21, warmup=2)
    parser.add_argument("--inner", type=int, default=20, help="steps per timing sample (20)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    log(
        f"bench_train_step: {args.rounds} rounds x {args.inner} steps, "
        f"{torch.get_num_threads()} threads"
    )

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    torch.manual_seed(0)
    model_ce = create("lenet-mnist")
    model_als = copy.deepcopy(model_ce)
    contenders = {
        "cross_entropy": make_step(model_ce, F.cross_entropy, x, y),
        "adversarial": make_step(model_als, SmoothedCrossEntropy("adversarial", ALPHA), x, y),
    }
    times = interleaved(contenders, rounds=args.rounds, inner=args.inner, warmup=args.warmup)
    ratio = ratio_stats(times["adversarial"], times["cross_entropy"])
    ms = {name: median(t) * 1e3 for name, t in times.items()}
    log(
        f"  CE {ms['cross_entropy']:.2f} ms/step  ALS {ms['adversarial']:.2f} ms/step  "
        f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
    )
    emit(
        {
            "benchmark": "train_step",
            "description": "lenet-mnist training step at batch 128, ALS (alpha 0.1) vs CE",
            "machine": machine_info(),
            "settings": {
                "rounds": args.rounds,
                "inner": args.inner,
                "warmup": args.warmup,
                "batch_size": BATCH,
                "model": "lenet-mnist",
                "alpha": ALPHA,
                "optimizer": "SGD lr 0.05 momentum 0.9 nesterov weight_decay 5e-4",
            },
            "results": {
                "cross_entropy_ms_per_step": ms["cross_entropy"],
                "adversarial_ms_per_step": ms["adversarial"],
                "ratio": ratio["median"],
                "ratio_q1": ratio["q1"],
                "ratio_q3": ratio["q3"],
                "threshold": THRESHOLD,
                "pass": ratio["median"] <= THRESHOLD,
            },
            "all_pass": ratio["median"] <= THRESHOLD,
        }
    )


if __name__ == "__main__":
    main()
