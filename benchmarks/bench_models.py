"""LeNet forward passes without gradient recording: the strided-maximum pool against max_pool2d.

Square's queries, evaluation and re-prediction run the model under ``torch.no_grad``; there
``advls.models`` pools 2x2 windows as the maximum of four strided views. The reference is
the same network (same parameters) with ``F.max_pool2d(x, 2)`` in the same places; its logits
are checked equal before timing. Reported per model and batch size: the median and quartiles
over rounds of the per-round time ratio, ours over the reference.

    .venv/bin/python benchmarks/bench_models.py [--threads N] [--rounds R] [--inner I]
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

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
    ratio_stats,
)
from advls.models import MODELS, LeNet, LeNetMNIST, create

BATCHES: tuple[int, ...] = (64, 512)


class MNISTReference(LeNetMNIST):
    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.dropout(x))


class CIFARReference(LeNet):
    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


REFERENCES: dict[str, type[nn.Module]] = {"lenet-mnist": MNISTReference, "lenet": CIFARReference}


def reference_of(model: nn.Module, name: str) -> nn.Module:
    """A copy of ``model`` whose LeNet pools with ``F.max_pool2d`` (same parameters)."""
    reference = copy.deepcopy(model)
    reference.net.__class__ = REFERENCES[name]
    return reference.eval()


def bench(name: str, batch: int, rounds: int, inner: int, warmup: int) -> dict[str, Any]:
    model = create(name).eval()
    reference = reference_of(model, name)
    x = torch.rand(batch, *MODELS[name][1])
    with torch.no_grad():
        if not torch.equal(model(x), reference(x)):
            raise SystemExit(f"{name}: the two poolings disagree")

        times = interleaved(
            {"ours": lambda: model(x), "max_pool2d": lambda: reference(x)},
            rounds=rounds,
            inner=inner,
            warmup=warmup,
        )
    return {
        "model": name,
        "batch": batch,
        "ours_ms": 1e3 * min(times["ours"]),
        "max_pool2d_ms": 1e3 * min(times["max_pool2d"]),
        "ratio": ratio_stats(times["ours"], times["max_pool2d"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, rounds=7)
    parser.add_argument("--inner", type=int, default=20, help="calls per sample (default 20)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    results = []
    for name in REFERENCES:
        for batch in BATCHES:
            results.append(bench(name, batch, args.rounds, args.inner, args.warmup))
            log(f"bench_models: {results[-1]}")
    emit({"machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
