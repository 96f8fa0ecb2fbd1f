"""Loss forward + backward: advls's smoothed cross-entropy versus PyTorch's label smoothing.

The reference is PyTorch's own smoothed loss, ``F.cross_entropy(z, y, label_smoothing=eps)``
with ``eps`` equal to the paper's SLS ``alpha`` (not plain cross-entropy, which builds no
target). Each contender times ``loss(z, y).backward()`` on its own leaf logits ``z`` (float32,
requires_grad; the gradient is reset before each sample). Reported per shape and method: the
median and quartiles over rounds of the per-round time ratio to the reference, with the
thresholds of the issue (1.0 for standard, which computes the same loss, 1.15 for the methods
whose target depends on the logits). Plain cross-entropy is timed as a floor, without a
threshold.

    .venv/bin/python benchmarks/bench_losses.py [--threads N] [--rounds R] [--inner I]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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
from advls.losses import smoothed_cross_entropy, torch_label_smoothing_eps

SHAPES: tuple[tuple[int, int], ...] = ((128, 10), (512, 100))
METHODS: tuple[str, ...] = ("standard", "adversarial", "boltzmann", "second_best")
THRESHOLDS = {"standard": 1.0, "adversarial": 1.15, "boltzmann": 1.15, "second_best": 1.15}
REFERENCE = "torch_label_smoothing"
ALPHA = 0.1
TEMPERATURE = 1.0

Loss = Callable[[Tensor, Tensor], Tensor]


def losses(num_classes: int) -> dict[str, Loss]:
    eps = torch_label_smoothing_eps(ALPHA, num_classes)
    table: dict[str, Loss] = {
        "cross_entropy": lambda z, y: F.cross_entropy(z, y),
        "torch_label_smoothing": lambda z, y: F.cross_entropy(z, y, label_smoothing=eps),
    }
    for method in METHODS:
        table[method] = lambda z, y, m=method: smoothed_cross_entropy(
            z, y, m, alpha=ALPHA, temperature=TEMPERATURE
        )
    return table


def bench_shape(n: int, k: int, rounds: int, inner: int, warmup: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(n * 1000 + k)
    base = torch.randn(n, k, generator=generator) * 3.0
    labels = torch.randint(0, k, (n,), generator=generator)
    table = losses(k)
    leaves = {name: base.clone().requires_grad_(True) for name in table}

    def step(loss: Loss, z: Tensor) -> Callable[[], None]:
        return lambda: loss(z, labels).backward()

    def reset(z: Tensor) -> Callable[[], None]:
        def clear() -> None:
            z.grad = None

        return clear

    contenders = {name: step(loss, leaves[name]) for name, loss in table.items()}
    setup = {name: reset(z) for name, z in leaves.items()}
    times = interleaved(contenders, rounds=rounds, inner=inner, warmup=warmup, setup=setup)
    reference = times[REFERENCE]
    rows = []
    for name in table:
        ratio = ratio_stats(times[name], reference)
        threshold = THRESHOLDS.get(name)
        rows.append(
            {
                "shape": [n, k],
                "loss": name,
                "median_us": median(times[name]) * 1e6,
                "ratio_vs_torch_label_smoothing": ratio["median"],
                "ratio_q1": ratio["q1"],
                "ratio_q3": ratio["q3"],
                "threshold": threshold,
                "pass": None if threshold is None else ratio["median"] <= threshold,
            }
        )
        log(
            f"  ({n}, {k}) {name:22s} {rows[-1]['median_us']:8.1f} us  "
            f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=21, warmup=3)
    parser.add_argument(
        "--inner", type=int, default=100, help="calls per timing sample (default 100)"
    )
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    log(f"bench_losses: {args.rounds} rounds x {args.inner} calls, {torch.get_num_threads()} thr")
    rows = []
    for n, k in SHAPES:
        rows += bench_shape(n, k, args.rounds, args.inner, args.warmup)
    checked = [row["pass"] for row in rows if row["pass"] is not None]
    emit(
        {
            "benchmark": "losses",
            "description": (
                "forward+backward of the loss on leaf logits; ratio to "
                "F.cross_entropy(label_smoothing=eps), eps equal to the SLS alpha"
            ),
            "machine": machine_info(),
            "settings": {
                "rounds": args.rounds,
                "inner": args.inner,
                "warmup": args.warmup,
                "alpha": ALPHA,
                "temperature": TEMPERATURE,
                "dtype": "float32",
            },
            "results": rows,
            "all_pass": all(checked),
        }
    )


if __name__ == "__main__":
    main()
