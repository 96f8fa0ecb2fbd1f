"""Run every benchmark, each in its own process, and collect their JSON into one document.

The document is printed to stdout and written to ``benchmarks/results/latest.json``. Missed
thresholds are reported in it (``all_pass``), not turned into an exit status; the exit status
is 1 only when a benchmark script itself failed.

    .venv/bin/python benchmarks/run_all.py [--quick] [--threads N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _timing import emit, log, machine_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"

#: name -> (script, extra arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "losses": ("bench_losses.py", ["--rounds", "5", "--inner", "20", "--warmup", "1"]),
    "models": ("bench_models.py", ["--rounds", "3", "--inner", "5", "--warmup", "1"]),
    "train_step": ("bench_train_step.py", ["--rounds", "5", "--inner", "5", "--warmup", "1"]),
    "epoch": ("bench_epoch.py", ["--rounds", "2", "--warmup", "1", "--train-subset", "1280"]),
    "attacks": ("bench_attacks.py", ["--rounds", "1", "--warmup", "0", "--points", "200"]),
    "apgd": ("bench_apgd.py", ["--rounds", "1", "--warmup", "0", "--points", "200"]),
    "sweep": ("bench_sweep.py", ["--rounds", "1", "--epochs", "4"]),
    "certify": (
        "bench_certify.py",
        [
            *("--train-epochs", "0", "--points", "200", "--crown-points", "5"),
            *("--rounds", "2", "--warmup", "1"),
        ],
    ),
    "sharded": (
        "bench_sharded.py",
        ["--part", "speed", "--speed-points", "100", "--speed-shard-size", "25", "--rounds", "1"],
    ),
}


def run_one(name: str, quick: bool, threads: int | None) -> dict[str, Any]:
    script, quick_args = BENCHMARKS[name]
    command = [sys.executable, str(HERE / script)]
    if quick:
        command += quick_args
    if threads is not None:
        command += ["--threads", str(threads)]
    log(f"run_all: {name}")
    # stderr (progress) goes straight to ours; stdout is the JSON document.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}", "command": command}
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as error:
        return {"error": f"output is not JSON: {error}", "command": command}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke pass")
    parser.add_argument("--threads", type=int, default=None, help="passed to every benchmark")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=None, help="run only these"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"where to write (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    results = {name: run_one(name, args.quick, args.threads) for name in args.only or BENCHMARKS}
    failed = [name for name, doc in results.items() if "error" in doc]
    document = {
        "benchmark": "all",
        "quick": args.quick,
        "machine": machine_info(),
        "benchmarks": results,
        "failed": failed,
        "all_pass": not failed and all(doc.get("all_pass") for doc in results.values()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    emit(document)
    log(f"run_all: wrote {args.output}; all_pass={document['all_pass']}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
