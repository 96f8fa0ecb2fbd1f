"""ResNet-18 on CIFAR-shaped inputs on a GPU: training and attack throughput.

Two comparisons, each timed as interleaved samples in one run (``_timing.interleaved``), every
sample ending with ``torch.cuda.synchronize()`` so that it measures finished device work:

- **Training**, ALS (alpha 0.1) against plain ``F.cross_entropy``: one step is ``zero_grad,
  forward, loss, backward, SGD step`` (``TrainConfig``'s optimizer) under bf16 autocast with
  the model and the batch in channels_last, as ``advls train --device cuda`` runs it. Two copies
  of one randomly initialised resnet18 train on the same fixed batch (``--train-batch``, 128 as
  in the paper's grid). Threshold: median ratio ALS / CE <= 1.02. Images/s of each is reported.
- **Attacks**, ours against torchattacks 3.5.1 on the same model, batch and GPU: PGD-10
  (L-inf eps 8/255, step 2/255, one random start) and APGD-100 (CE, one restart), float32 as
  both libraries attack. The labels are the model's own predictions, so every point is
  attacked by both (each library skips points already misclassified). Threshold: median
  ratio ours / torchattacks <= 1.0. PGD-10 is also compared with its floor: ten bare
  forward+backward passes with a sign step and a clamp (reported, no threshold).

Runs on the CPU too (``--device cpu``, small sizes) so the script itself is tested without a
GPU; only a CUDA run's numbers go into docs/benchmarks.md.

    python benchmarks/bench_gpu.py [--device cuda] [--rounds R] [--train-batch 128]
        [--attack-batch 1000] [--inner 20]
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
    emit,
    interleaved,
    log,
    machine_info,
    median,
    ratio_fields,
    ratio_text,
)
from advls import attacks
from advls.data.registry import REGISTRY
from advls.losses import SmoothedCrossEntropy
from advls.models import create
from advls.train import TrainConfig, _make_optimizer

EPS = 8 / 255
STEP = 2 / 255
ALPHA = 0.1
TRAIN_THRESHOLD = 1.02
ATTACK_THRESHOLD = 1.0


def resnet18(device: torch.device, seed: int = 0) -> nn.Module:
    spec = REGISTRY["cifar10"]
    torch.manual_seed(seed)
    model = create(
        "resnet18", num_classes=10, input_shape=(3, 32, 32), mean=spec.mean, std=spec.std
    )
    return model.to(device)


def synchronised(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a wait for the device, so a host timer measures finished work."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def training_step(
    model: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> Callable[[], None]:
    optimizer = _make_optimizer(TrainConfig(), model)
    model.train()
    on_cuda = x.device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    base = resnet18(device).to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((args.train_batch, 3, 32, 32), generator=generator).to(device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.train_batch,), generator=generator).to(device)
    steps = {
        "ce": training_step(copy.deepcopy(base), F.cross_entropy, x, y),
        "als": training_step(copy.deepcopy(base), SmoothedCrossEntropy("adversarial", ALPHA), x, y),
    }
    contenders = {
        name: synchronised(lambda step=step: [step() for _ in range(args.inner)], device)
        for name, step in steps.items()
    }
    times = interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
    ratio = ratio_fields(times["als"], times["ce"])
    images = args.train_batch * args.inner
    entry = {
        "batch": args.train_batch,
        "steps_per_sample": args.inner,
        "ce_images_per_s": images / median(times["ce"]),
        "als_images_per_s": images / median(times["als"]),
        **ratio,
        "threshold": TRAIN_THRESHOLD,
        "pass": ratio["ratio"] <= TRAIN_THRESHOLD,
    }
    log(
        f"  training  CE {entry['ce_images_per_s']:.0f} img/s  ALS "
        f"{entry['als_images_per_s']:.0f} img/s  ratio {ratio_text(ratio)}"
    )
    return entry


def bench_attacks(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    import torchattacks

    model = resnet18(device, seed=2).eval()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand((args.attack_batch, 3, 32, 32), generator=generator).to(device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every point correct: both libraries attack all of them
    theirs_pgd = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=10, random_start=True)
    theirs_apgd = torchattacks.APGD(
        model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce", seed=0
    )
    pairs = {
        "pgd-10": (
            lambda: attacks.pgd(model, x, y, eps=EPS, steps=10, step_size=STEP, seed=0).x_adv,
            lambda: theirs_pgd(x, y),
        ),
        "apgd-100": (
            lambda: attacks.apgd(model, x, y, eps=EPS, steps=100, loss="ce", seed=0).x_adv,
            lambda: theirs_apgd(x, y),
        ),
    }
    results: dict[str, object] = {}
    for name, (ours, theirs) in pairs.items():
        rounds = args.rounds if name == "pgd-10" else max(3, args.rounds // 2)
        contenders = {
            "ours": synchronised(ours, device),
            "torchattacks": synchronised(theirs, device),
        }
        times = interleaved(contenders, rounds=rounds, warmup=1)
        ratio = ratio_fields(times["ours"], times["torchattacks"])
        ours_adv, their_adv = ours(), theirs()
        with torch.no_grad():
            ours_accuracy = float((model(ours_adv).argmax(1) == y).float().mean())
            their_accuracy = float((model(their_adv).argmax(1) == y).float().mean())
        results[name] = {
            "batch": args.attack_batch,
            "ours_s": median(times["ours"]),
            "torchattacks_s": median(times["torchattacks"]),
            "ours_images_per_s": args.attack_batch / median(times["ours"]),
            "torchattacks_images_per_s": args.attack_batch / median(times["torchattacks"]),
            **ratio,
            "rounds": rounds,
            "ours_robust_accuracy": ours_accuracy,
            "torchattacks_robust_accuracy": their_accuracy,
            "threshold": ATTACK_THRESHOLD,
            "pass": ratio["ratio"] <= ATTACK_THRESHOLD,
        }
        log(
            f"  {name:9s} ours {results[name]['ours_images_per_s']:.0f} img/s  torchattacks "
            f"{results[name]['torchattacks_images_per_s']:.0f} img/s  ratio "
            f"{ratio_text(ratio)}"
        )

    low, high = (x - EPS).clamp(min=0.0), (x + EPS).clamp(max=1.0)

    def floor() -> None:
        x_adv = x.clone()
        for _ in range(10):
            z = x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)
            x_adv = torch.clamp(z.detach().add_(grad.sign_(), alpha=STEP), low, high)

    contenders = {
        "pgd": synchronised(pairs["pgd-10"][0], device),
        "floor": synchronised(floor, device),
    }
    times = interleaved(contenders, rounds=args.rounds, warmup=1)
    ratio = ratio_fields(times["pgd"], times["floor"])
    results["pgd-10_vs_floor"] = {
        "pgd_s": median(times["pgd"]),
        "floor_s": median(times["floor"]),
        **ratio,
        "threshold": None,
        "pass": True,
    }
    log(f"  pgd-10/floor ratio {ratio_text(ratio)}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=7, warmup=2)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--train-batch", type=int, default=128, help="training batch (128)")
    parser.add_argument("--attack-batch", type=int, default=1000, help="attack batch (1000)")
    parser.add_argument("--inner", type=int, default=20, help="training steps per sample (20)")
    parser.add_argument(
        "--only", nargs="*", default=None, choices=["training", "attacks"], help="a subset"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA device")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    log(f"bench_gpu: resnet18 on CIFAR-shaped inputs, {gpu or 'CPU'}")
    results: dict[str, object] = {}
    if not args.only or "training" in args.only:
        results["training"] = bench_training(args, device)
    if not args.only or "attacks" in args.only:
        results.update(bench_attacks(args, device))
    emit(
        {
            "benchmark": "gpu",
            "description": __doc__.split("\n")[0],
            "machine": {**machine_info(), "device": str(device), "gpu": gpu},
            "settings": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "train_batch": args.train_batch,
                "attack_batch": args.attack_batch,
                "inner": args.inner,
            },
            "results": results,
            "all_pass": all(entry["pass"] for entry in results.values()),  # type: ignore[index]
        }
    )


if __name__ == "__main__":
    main()
