"""One evaluation sharded across workers: identical results whatever the workers, and the
speed-up of two workers over one.

On real MNIST, an MLP trained briefly (cached under ``--cache``) and the first N test points:

* ``identity``: ``strong`` and ``autoattack`` evaluated unsharded and sharded (one shard
  size) with 1, 2 and 4 workers, local processes and a real local Ray instance. Reports
  whether every per-example ``fooled`` mask and robust accuracy is equal across the sharded
  runs, the largest distance difference, and each sharded robust accuracy against the
  unsharded one (the shards draw other random numbers, so these differ a little).
* ``speed``: the same sharded evaluation with one worker at one thread and with two workers
  at one thread each, interleaved over rounds: the median ratio (threshold >= 1.7 on two
  cores), and the overhead per shard (the inline sharded run against ``evaluate`` called on
  each shard's points directly).

    .venv/bin/python benchmarks/bench_sharded.py --part identity --part speed \
        [--points 1000] [--shard-size 250] [--rounds 3] [--cache runs/bench-sharded]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _timing import emit, interleaved, log, machine_info, median
from advls import data as datasets
from advls.evaluate import evaluate, evaluate_sharded
from advls.evaluate.shards import plan_shards, shard_seed
from advls.models import create

FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEEDUP_THRESHOLD = 1.7
#: The MNIST budgets of the paper (its defaults); the MLP keeps a few points at 0.1.
EPS = (0.1, 0.3)


def trained_mlp(root: Path, cache: Path) -> torch.nn.Module:
    """An MLP after 400 Adam steps on MNIST's train split (about 93% clean), cached."""
    from safetensors.torch import load_file, save_file

    net = create("mlp", num_classes=10, input_shape=(1, 28, 28))
    path = cache / "mlp.safetensors"
    if path.exists():
        net.load_state_dict(load_file(path))
        return net.eval()
    torch.manual_seed(0)
    train = datasets.load("mnist", "train", root)
    x, y = train.images.float() / 255, train.labels.long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    cache.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), path)
    return net.eval()


def _masks(evaluation) -> dict[tuple, Any]:
    return {(o.protocol, o.spec.label, o.eps): o for o in evaluation.outcomes}


def identity(model, images, labels, *, shard_size: int, protocols: list[str]) -> dict[str, Any]:
    """Unsharded, then local and Ray with 1, 2 and 4 workers; everything compared."""
    options = {"protocols": protocols, "eps": list(EPS), "batch_size": shard_size}
    started = time.perf_counter()
    whole = evaluate(model, images, labels, **options)
    seconds = {"unsharded": time.perf_counter() - started}
    runs = {}
    for executor in ("local", "ray"):
        for jobs in (1, 2, 4):
            name = f"{executor}-{jobs}"
            log(f"identity: {name}")
            started = time.perf_counter()
            runs[name] = evaluate_sharded(
                model, images, labels, shard_size=shard_size, executor=executor, jobs=jobs,
                threads=1, **options,
            )  # fmt: skip
            seconds[name] = time.perf_counter() - started
    first = runs["local-1"]
    reference = _masks(first)
    masks_equal, accuracies_equal, largest = True, True, 0.0
    for run in runs.values():
        outcomes = _masks(run)
        masks_equal &= outcomes.keys() == reference.keys() and torch.equal(
            run.correct, first.correct
        )
        for key, outcome in outcomes.items():
            masks_equal &= torch.equal(outcome.fooled, reference[key].fooled)
            accuracies_equal &= outcome.robust_accuracy == reference[key].robust_accuracy
            largest = max(largest, float((outcome.l2 - reference[key].l2).abs().max()))
        masks_equal &= run.checks.as_dict() == first.checks.as_dict()
    against = []
    for protocol in protocols:
        for eps in EPS:
            sharded, unsharded = first.worst_case(protocol, eps), whole.worst_case(protocol, eps)
            against.append(
                {"protocol": protocol, "eps": eps, "sharded": sharded, "unsharded": unsharded,
                 "difference": sharded - unsharded}
            )  # fmt: skip
    return {
        "points": len(labels),
        "shard_size": shard_size,
        "protocols": protocols,
        "runs": list(runs),
        "fooled_masks_and_checks_identical": bool(masks_equal),
        "robust_accuracies_identical": bool(accuracies_equal),
        "largest_l2_difference": largest,
        "worst_case_against_unsharded": against,
        "largest_difference_against_unsharded": max(abs(row["difference"]) for row in against),
        "flags": {name: [flag.name for flag in run.raised] for name, run in runs.items()},
        "seconds": seconds,
    }


def speed(model, images, labels, *, shard_size: int, rounds: int) -> dict[str, Any]:
    """Two workers at one thread each against one worker at one thread, same shards."""
    options = {"protocols": ["strong"], "eps": list(EPS), "batch_size": shard_size}

    def sharded(jobs: int):
        return lambda: evaluate_sharded(
            model, images, labels, shard_size=shard_size, jobs=jobs, threads=1, **options
        )

    def direct():  # the floor: evaluate on each shard's points, one after another
        torch.set_num_threads(1)
        plan = plan_shards(len(labels), shard_size=shard_size)
        for index, (start, stop) in enumerate(plan.ranges()):
            evaluate(model, images[start:stop], labels[start:stop], seed=shard_seed(0, index),
                     **options)  # fmt: skip

    times = interleaved(
        {"one_worker": sharded(1), "two_workers": sharded(2), "direct": direct},
        rounds=rounds, warmup=0,
    )  # fmt: skip
    ratios = [one / two for one, two in zip(times["one_worker"], times["two_workers"], strict=True)]
    shards = plan_shards(len(labels), shard_size=shard_size).count
    overhead = [
        (one - floor) / shards
        for one, floor in zip(times["one_worker"], times["direct"], strict=True)
    ]
    return {
        "points": len(labels),
        "shard_size": shard_size,
        "shards": shards,
        "seconds": {name: median(values) for name, values in times.items()},
        "speedup_two_workers": median(ratios),
        "speedup_samples": ratios,
        "threshold": SPEEDUP_THRESHOLD,
        "passes": median(ratios) >= SPEEDUP_THRESHOLD,
        "overhead_per_shard_seconds_inline": median(overhead),
        "overhead_per_shard_seconds_two_workers": median(
            [
                (two * 2 - floor) / shards
                for two, floor in zip(times["two_workers"], times["direct"], strict=True)
            ]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=("identity", "speed"))
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--speed-points", type=int, default=400)
    parser.add_argument("--speed-shard-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-sharded"))
    parser.add_argument(
        "--threads", type=int, default=None, help="ignored: every shard runs on one thread"
    )
    args = parser.parse_args()
    root = Path(os.environ.get("ADVLS_DATA", FALLBACK_DATA))
    torch.set_num_threads(1)
    model = trained_mlp(root, args.cache)
    test = datasets.load("mnist", "test", root)
    document: dict[str, Any] = {"benchmark": "sharded-evaluation", "machine": machine_info()}
    for part in args.part or ["identity", "speed"]:
        if part == "identity":
            images, labels = test.images[: args.points], test.labels[: args.points].long()
            document["identity"] = identity(
                model, images, labels, shard_size=args.shard_size,
                protocols=["strong", "autoattack"],
            )  # fmt: skip
        else:
            count = args.speed_points
            images, labels = test.images[:count], test.labels[:count].long()
            document["speed"] = speed(
                model, images, labels, shard_size=args.speed_shard_size, rounds=args.rounds
            )
    emit(document)


if __name__ == "__main__":
    main()
