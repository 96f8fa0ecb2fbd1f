"""A training epoch through ``advls.train.train_epoch`` versus the bare-loop floor.

Both contenders train lenet-mnist with the same initial weights, the same optimizer (SGD
momentum 0.9, Nesterov, lr 0.05, weight decay 5e-4, built by ``train.py``'s
``_make_optimizer`` from ``TrainConfig``'s defaults) and the same loss (advls's
``SmoothedCrossEntropy("adversarial", 0.1)``), at batch 128; only the framework around them
differs. ``train_epoch`` gets uint8 images in memory (real MNIST when ``advls.data.load``
finds it, else random images of that shape) and does its own shuffling, conversion and
bookkeeping; no schedule, no augmentation (as ``train()`` on CPU for MNIST, minus the
cosine schedule). The floor iterates over pre-built float32 batches in [0, 1] in a fixed
order: ``opt.zero_grad(); loss = crit(model(x), y); loss.backward(); opt.step()``.
Before every sample both models are reset to the initial weights with a fresh optimizer
(untimed), so every sample is the same first epoch. Threshold: median ratio <= 1.10.

    .venv/bin/python benchmarks/bench_epoch.py [--threads N] [--rounds R] [--train-subset N]
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
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
from advls.losses import SmoothedCrossEntropy
from advls.models import create
from advls.train import TrainConfig, _make_optimizer, train_epoch

BATCH = 128
THRESHOLD = 1.10
ALPHA = 0.1
# The Makefile exports ADVLS_DATA=../shared/data (relative to the checkout) when it exists.
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_images(count: int) -> tuple[Tensor, Tensor, tuple[float, ...], tuple[float, ...], str]:
    """The first ``count`` MNIST training images (uint8) and labels, or random stand-ins."""
    data_dir = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    try:
        train_set = datasets.load("mnist", "train", data_dir, download=False, progress=False)
    except (datasets.DataError, OSError) as error:  # not there or unreadable: random images
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        log(f"  MNIST not loaded from {data_dir} ({reason}); using random images")
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (count,), generator=generator)
        return images, labels, (0.1307,), (0.3081,), "random"
    if count > len(train_set):
        raise SystemExit(f"--train-subset must be at most {len(train_set)}")
    images = train_set.images[:count].contiguous()
    labels = train_set.labels[:count].contiguous()
    return images, labels, train_set.mean, train_set.std, f"mnist ({data_dir})"


class Contender:
    """A model, its optimizer and the initial state it is reset to before every sample."""

    def __init__(self, initial: nn.Module) -> None:
        self.model = copy.deepcopy(initial)
        self.initial = copy.deepcopy(initial.state_dict())
        self.optimizer = _make_optimizer(TrainConfig(), self.model)

    def reset(self) -> None:
        self.model.load_state_dict(self.initial)
        self.optimizer = _make_optimizer(TrainConfig(), self.model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=5, warmup=1)
    parser.add_argument(
        "--train-subset",
        type=int,
        default=12800,
        help="images per epoch (default 12800 = 100 steps of 128)",
    )
    args = parser.parse_args(argv)
    if args.train_subset < 1:
        raise SystemExit("--train-subset must be >= 1")
    apply_threads(args.threads)
    images, labels, mean, std, source = load_images(args.train_subset)
    steps = -(-args.train_subset // BATCH)
    log(
        f"bench_epoch: {args.rounds} rounds, {args.train_subset} images ({steps} steps), "
        f"{source}, {torch.get_num_threads()} threads"
    )

    torch.manual_seed(0)
    initial = create("lenet-mnist", num_classes=10, input_shape=(1, 28, 28), mean=mean, std=std)
    criterion = SmoothedCrossEntropy("adversarial", ALPHA)
    ours, floor = Contender(initial), Contender(initial)
    shuffle = torch.Generator()
    batches = [
        (images[i : i + BATCH].float().div_(255.0), labels[i : i + BATCH])
        for i in range(0, len(images), BATCH)
    ]

    def run_ours() -> None:
        train_epoch(
            ours.model,
            ours.optimizer,
            criterion,
            images,
            labels,
            batch_size=BATCH,
            generator=shuffle,
        )

    def run_floor() -> None:
        model, opt = floor.model, floor.optimizer
        model.train()
        for x, y in batches:
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()

    def reset_ours() -> None:
        ours.reset()
        shuffle.manual_seed(0)

    contenders: dict[str, Callable[[], None]] = {"train_epoch": run_ours, "bare_loop": run_floor}
    setup = {"train_epoch": reset_ours, "bare_loop": floor.reset}
    times = interleaved(contenders, rounds=args.rounds, warmup=args.warmup, setup=setup)
    ratio = ratio_stats(times["train_epoch"], times["bare_loop"])
    seconds = {name: median(t) for name, t in times.items()}
    log(
        f"  train_epoch {seconds['train_epoch']:.3f} s  bare loop {seconds['bare_loop']:.3f} s  "
        f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
    )
    emit(
        {
            "benchmark": "epoch",
            "description": "advls.train.train_epoch vs a bare training loop, lenet-mnist, ALS",
            "machine": machine_info(),
            "settings": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "train_subset": args.train_subset,
                "steps_per_epoch": steps,
                "batch_size": BATCH,
                "model": "lenet-mnist",
                "loss": f"SmoothedCrossEntropy('adversarial', {ALPHA})",
                "optimizer": "SGD lr 0.05 momentum 0.9 nesterov weight_decay 5e-4",
                "data": source,
            },
            "results": {
                "train_epoch_s": seconds["train_epoch"],
                "bare_loop_s": seconds["bare_loop"],
                "train_epoch_images_per_s": args.train_subset / seconds["train_epoch"],
                "bare_loop_images_per_s": args.train_subset / seconds["bare_loop"],
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
