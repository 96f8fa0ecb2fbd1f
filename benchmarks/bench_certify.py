"""Certified accuracy of a LeNet-MNIST and what each bound method costs, on real MNIST.

The model is ``advls.models.create("lenet-mnist", 10)`` trained for ``--train-epochs`` on
MNIST (1 by default, about 20 s on 2 cores: enough for the certificates to mean something;
0 keeps the random initialisation, which is as fast to bound). Reported:

* ``ibp_over_forward``: IBP margin bounds of the ``--points`` test images (one batch)
  against a forward pass of the same batch, both in eval mode without gradients; median and
  quartiles over rounds of the per-round ratio (threshold: at most 3);
* ``crown_ibp_over_forward``: the same for CROWN-IBP (recorded);
* full CROWN on the first ``--crown-points`` images: seconds per point and the peak resident
  memory (recorded; its intermediate bounds on the conv layers dominate);
* certified accuracy by each method at each ``--eps`` (CROWN on its subset, beside
  CROWN-IBP and IBP on the same subset), and PGD's robust accuracy for the bracket
  ``[certified, attacked]``;
* the mean width of the logit bounds by each method on the CROWN subset, and the ratios of
  CROWN's and CROWN-IBP's widths to IBP's.

    .venv/bin/python benchmarks/bench_certify.py [--points 1000] [--eps 0.01 0.02]
        [--crown-points 100] [--train-epochs 1] [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from _timing import (
    add_common_args,
    apply_threads,
    emit,
    interleaved,
    log,
    machine_info,
    ratio_stats,
)
from advls import attacks, certify
from advls import data as datasets
from advls.models import create
from advls.train import TrainConfig, train

THRESHOLD_IBP_OVER_FORWARD = 3.0
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _model(epochs: int) -> torch.nn.Module:
    if epochs == 0:
        torch.manual_seed(0)
        return create("lenet-mnist", 10).eval()
    config = TrainConfig(dataset="mnist", model="lenet-mnist", loss="ce", epochs=epochs)
    return train(config, device="cpu", progress=False).model.eval()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, rounds=5, warmup=1)
    parser.add_argument("--points", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.02], help="L-inf radii")
    parser.add_argument("--crown-points", type=int, default=100, help="images for full CROWN")
    parser.add_argument("--train-epochs", type=int, default=1, help="0: untrained weights")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    if "ADVLS_DATA" not in os.environ and FALLBACK_DATA.is_dir():
        os.environ["ADVLS_DATA"] = str(FALLBACK_DATA)

    log(f"bench_certify: lenet-mnist, {args.train_epochs} training epoch(s) ...")
    start = time.perf_counter()
    model = _model(args.train_epochs)
    train_seconds = time.perf_counter() - start
    test = datasets.load("mnist", "test")
    x, y = test.images[: args.points].float() / 255.0, test.labels[: args.points]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    eps = args.eps[0]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def bound(method: str) -> None:
        certify.margin_bounds(model, x, y, eps, method, batch_size=len(x))

    log(f"bench_certify: timing IBP and CROWN-IBP against forward passes of {len(x)} points")
    times = interleaved(
        {
            "forward": forward,
            "ibp": lambda: bound("ibp"),
            "crown-ibp": lambda: bound("crown-ibp"),
        },
        rounds=args.rounds,
        warmup=args.warmup,
    )
    ibp_ratio = ratio_stats(times["ibp"], times["forward"])
    crown_ibp_ratio = ratio_stats(times["crown-ibp"], times["forward"])

    subset = slice(0, args.crown_points)
    log(f"bench_certify: full CROWN on {args.crown_points} points ...")
    before = _peak_mib()
    start = time.perf_counter()
    crown_certified = {eps: certify.certified(model, x[subset], y[subset], eps, "crown")}
    crown_seconds = time.perf_counter() - start
    crown_peak = _peak_mib()

    accuracy: dict[str, dict[str, Any]] = {}
    for radius in args.eps:
        log(f"bench_certify: certified accuracy at eps {radius} ...")
        if radius not in crown_certified:
            crown_certified[radius] = certify.certified(
                model, x[subset], y[subset], radius, "crown"
            )
        row: dict[str, Any] = {}
        for method in ("ibp", "crown-ibp"):
            certain = certify.certified(model, x, y, radius, method)
            row[method] = float(certain.float().mean())
            row[f"{method}_on_crown_subset"] = float(certain[subset].float().mean())
        row["crown_on_crown_subset"] = float(crown_certified[radius].float().mean())
        widths = {}
        for method in certify.METHODS:
            low, high = certify.logit_bounds(model, x[subset], radius, method)
            widths[method] = float((high - low).mean())
        row["mean_logit_width_on_crown_subset"] = widths
        row["crown_over_ibp_width"] = widths["crown"] / widths["ibp"]
        row["crown_ibp_over_ibp_width"] = widths["crown-ibp"] / widths["ibp"]
        result = attacks.pgd(model, x, y, eps=radius, steps=20, restarts=1, seed=0)
        row["pgd20_robust_accuracy"] = result.robust_accuracy
        accuracy[str(radius)] = row

    emit(
        {
            "benchmark": "certify",
            "machine": machine_info(),
            "settings": {
                "model": "lenet-mnist",
                "train_epochs": args.train_epochs,
                "train_seconds": round(train_seconds, 1),
                "points": len(x),
                "eps_timed": eps,
                "eps": args.eps,
                "crown_points": args.crown_points,
                "rounds": args.rounds,
            },
            "results": {
                "clean_accuracy": clean,
                "forward_ms": 1e3 * min(times["forward"]),
                "ibp_ms": 1e3 * min(times["ibp"]),
                "crown_ibp_ms": 1e3 * min(times["crown-ibp"]),
                "ibp_over_forward": ibp_ratio,
                "crown_ibp_over_forward": crown_ibp_ratio,
                "crown_seconds": round(crown_seconds, 2),
                "crown_seconds_per_point": round(crown_seconds / args.crown_points, 3),
                "crown_peak_rss_mib": round(crown_peak, 1),
                "peak_rss_before_crown_mib": round(before, 1),
                "certified_accuracy": accuracy,
            },
            "threshold_ibp_over_forward": THRESHOLD_IBP_OVER_FORWARD,
            "pass": ibp_ratio["median"] <= THRESHOLD_IBP_OVER_FORWARD,
        }
    )


if __name__ == "__main__":
    main()
