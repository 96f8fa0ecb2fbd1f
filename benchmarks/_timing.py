"""Shared helpers for the benchmarks: interleaved timing, ratios, machine info, JSON output.

Speed is compared as ratios measured in one run: the contenders are timed in turn inside
every round (the order rotates and reverses from round to round), and a comparison is the
median over rounds of the per-round ratio, so slow phases of a shared machine hit both sides.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

Timings = dict[str, list[float]]


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    inner: int = 1,
    warmup: int = 1,
    setup: Mapping[str, Callable[[], object]] | None = None,
) -> Timings:
    """Seconds per call of each contender, one sample per round; samples are interleaved.

    Each sample runs the contender ``inner`` times in a row (after its untimed ``setup``, if
    any) and records the mean time per call. ``warmup`` untimed rounds come first. The garbage
    collector is off while a sample runs.
    """
    names = list(contenders)
    setup = setup or {}
    times: Timings = {name: [] for name in names}

    def sample(name: str) -> float:
        if name in setup:
            setup[name]()
        fn = contenders[name]
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - start) / inner
        finally:
            gc.enable()

    for r in range(warmup + rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order.reverse()
        for name in order:
            seconds = sample(name)
            if r >= warmup:
                times[name].append(seconds)
    return times


def ratio_stats(ours: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median and quartiles over rounds of the per-round ratio ``ours / reference``."""
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    if len(ratios) < 2:
        return {"median": ratios[0], "q1": ratios[0], "q3": ratios[0]}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def ratio_fields(ours: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """:func:`ratio_stats` as a result's ``ratio``, ``ratio_q1`` and ``ratio_q3`` fields."""
    stats = ratio_stats(ours, reference)
    return {"ratio": stats["median"], "ratio_q1": stats["q1"], "ratio_q3": stats["q3"]}


def ratio_text(fields: Mapping[str, float]) -> str:
    """:func:`ratio_fields` for a log line: ``median [q1, q3]``."""
    return f"{fields['ratio']:.3f} [{fields['ratio_q1']:.3f}, {fields['ratio_q3']:.3f}]"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to interpret the numbers; call after the thread count is set."""
    import advls

    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    cpus = os.cpu_count() or 1
    warnings: list[str] = []
    if load and load[0] > cpus + 0.5:
        warnings.append(
            f"1-minute load average {load[0]:.1f} on {cpus} CPUs: other work was running; "
            "timings (multi-threaded ones especially) are unreliable"
        )
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "advls": advls.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": cpus,
        "platform": platform.platform(),
        "load_average": load,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
    }


def add_common_args(parser: argparse.ArgumentParser, *, rounds: int, warmup: int = 2) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"timed rounds (default {rounds})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})"
    )


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(threads)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(document: Mapping[str, Any]) -> None:
    """Print one JSON document to stdout."""
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
