"""Sweep scaling and store overhead: 8 small real runs, sequential vs 2 processes vs Ray.

The same 8-run grid (MNIST mlp on the first 20000 training images, ``--epochs`` epochs, the
paper protocol on 200 test points with shortened BIM and CW) runs from scratch, into a fresh store
and artifact directory, under four executors in turn within each round:

- ``sequential_1thread``: the local executor with one job, in this process, one torch thread
  per run (the same worker as the parallel ones, one at a time);
- ``sequential``: the same with the default threads (all cores: what a plain `sweep run` does);
- ``jobs2``: the local executor with 2 worker processes of one torch thread each;
- ``ray2``: a local Ray instance with 2 one-CPU tasks at a time (start-up included; the time
  after ``ray.init`` is reported too).

Speed-up is the median over rounds of the per-round ratio of wall times. The parallel
speed-up (threshold >= 1.6) compares 2 one-thread workers with one such worker; the speed-up
over ``sequential`` says what running runs side by side gains over intra-op threads. Fixed
costs (worker start-up; for Ray also starting and stopping the local instance) weigh less as
runs get longer, hence ``--epochs``: 8 gives runs of about 10 s on one thread, 16 about 20 s.
Store overhead is the median time of ``Store.complete`` (the write and the commit of one run
with its result rows, in WAL mode) over many runs (threshold < 5 ms).

    .venv/bin/python benchmarks/bench_sweep.py [--rounds R] [--epochs E] [--skip-ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _timing import emit, log, machine_info, median, ratio_stats
from advls.store import Result, Store
from advls.sweep import create, parse_spec, register, run_sweep

SPEED_UP = 1.6
OVERHEAD_MS = 5.0
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SPEC = {
    "name": "bench-sweep",
    "train": {"dataset": "mnist", "model": "mlp", "epochs": 8, "train_subset": 20000},
    "grid": {"loss": ["standard", "adversarial", "boltzmann", "second_best"], "alpha": [0.1, 0.5]},
    "evaluate": {
        "protocols": [
            {"name": "paper", "params": {"bim-100": {"steps": 20}, "cw-l2": {"steps": 20}}}
        ],
        "eps": [0.1],
        "n": 200,
    },
}


def one_sweep(
    spec: dict, executor: str, jobs: int, threads: int | None, scratch: Path
) -> dict[str, float]:
    _, runs = parse_spec(spec)
    directory = Path(tempfile.mkdtemp(dir=scratch))
    try:
        started = time.perf_counter()
        pool = create(executor, jobs=jobs, threads=threads)
        ready = time.perf_counter()
        with Store(directory / "results.db") as store:
            keys = register(store, "bench", runs)
            summary = run_sweep(store, keys, pool, artifact_dir=directory / "artifacts")
        finished = time.perf_counter()
        if summary.counts["done"] != len(runs):
            raise RuntimeError(f"{executor} x{jobs}: {summary.counts}")
        return {"seconds": finished - started, "after_start": finished - ready}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def store_overhead(scratch: Path, runs: int = 300, rows: int = 40) -> list[float]:
    """Seconds per ``complete`` of one run with ``rows`` results (a paper evaluation's size)."""
    results = [Result("paper", f"attack{i}", 0.1, "robust_accuracy", 0.5) for i in range(rows)]
    times = []
    with Store(scratch / "overhead.db") as store:
        store.add_runs(
            "o",
            [
                {"key": f"k{i}", "name": f"r{i}", "train_key": f"t{i}", "config": {"i": i}}
                for i in range(runs)
            ],
        )
        for claim in store.claim(runs):
            start = time.perf_counter()
            store.complete(claim.key, results, artifacts={"checkpoint": "/x"}, timings={"s": 1})
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=16, help="epochs per run")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument(
        "--threads", type=int, help="ignored: each contender fixes its own thread count"
    )
    args = parser.parse_args()
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": args.epochs}}
    if "ADVLS_DATA" not in os.environ and FALLBACK_DATA.is_dir():
        os.environ["ADVLS_DATA"] = str(FALLBACK_DATA)

    contenders = {
        "sequential_1thread": ("local", 1, 1),
        "sequential": ("local", 1, None),
        "jobs2": ("local", 2, 1),
    }
    if not args.skip_ray:
        contenders["ray2"] = ("ray", 2, 1)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(contenders)
            if round_index % 2:
                order.reverse()
            for name in order:
                sample = one_sweep(spec, *contenders[name], Path(scratch))
                samples[name].append(sample)
                log(f"round {round_index + 1}: {name} {sample['seconds']:.1f} s")
        overhead = store_overhead(Path(scratch))

    wall = {name: [s["seconds"] for s in values] for name, values in samples.items()}
    parallel = [name for name in wall if not name.startswith("sequential")]
    speed_ups = {name: ratio_stats(wall["sequential_1thread"], wall[name]) for name in parallel}
    over_threads = {name: ratio_stats(wall["sequential"], wall[name]) for name in parallel}
    overhead_ms = statistics.median(overhead) * 1000
    emit(
        {
            "benchmark": "sweep",
            "runs": 8,
            "epochs": args.epochs,
            "seconds": {name: median(values) for name, values in wall.items()},
            "ray_after_start": (
                median([s["after_start"] for s in samples["ray2"]]) if "ray2" in samples else None
            ),
            "speed_up": speed_ups,
            "speed_up_over_threaded_sequential": over_threads,
            "store_complete_ms": {
                "median": overhead_ms,
                "p95": sorted(overhead)[int(0.95 * len(overhead))] * 1000,
            },
            "thresholds": {"speed_up": SPEED_UP, "store_complete_ms": OVERHEAD_MS},
            "pass": all(s["median"] >= SPEED_UP for s in speed_ups.values())
            and overhead_ms < OVERHEAD_MS,
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
