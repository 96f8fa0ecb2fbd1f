"""Sweeps end to end on real MNIST: resume after SIGKILL, shared stores, failures, executors.

Every sweep here runs with one torch thread per run, so that results are bit-identical
whichever executor ran them (thread counts change float summation order).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advls.store import Store
from advls.sweep import create, load_spec, register, run_sweep

pytestmark = [pytest.mark.slow]

ADVLS = [str(Path(sys.executable).with_name("advls"))]

SPEC = {
    "name": "resume-check",
    "train": {
        "dataset": "mnist",
        "model": "mlp",
        "epochs": 4,
        "train_subset": 2000,
        "batch_size": 100,
        "lr": 0.05,
    },
    "grid": {"loss": ["standard", "adversarial", "boltzmann", "second_best"], "alpha": [0.1, 0.5]},
    "evaluate": {
        "protocols": [
            {"name": "paper", "params": {"bim-100": {"steps": 10}, "cw-l2": {"steps": 20}}}
        ],
        "eps": [0.1],
        "n": 100,
    },
}


def advls(
    *args: str, data: Path, check: bool = True, env_extra: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVLS_DATA": str(data), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(
        [*ADVLS, *args], env=env, capture_output=True, text=True, timeout=600, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"advls {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def start(*args: str, data: Path) -> subprocess.Popen:
    env = {**os.environ, "ADVLS_DATA": str(data), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*ADVLS, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def write_spec(directory: Path, spec: dict = SPEC) -> Path:
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def snapshot(path: Path) -> dict:
    """Everything that must agree between two stores of the same sweep (not timings)."""
    db = sqlite3.connect(path)
    runs = db.execute("SELECT key, name, train_key, config, status FROM runs ORDER BY key")
    results = db.execute(
        "SELECT run_key, protocol, attack, eps, metric, value FROM results "
        "ORDER BY run_key, protocol, attack, IFNULL(eps, -1), metric"
    )
    return {"runs": runs.fetchall(), "results": results.fetchall()}


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with Store(path) as store:
        return {run["key"] for run in store.runs() if run["status"] == "done"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep")


@pytest.fixture(scope="module")
def reference(workdir: Path, real_data: Path) -> Path:
    """The sweep run once, uninterrupted, in one process."""
    spec = write_spec(workdir)
    store = workdir / "reference.db"
    advls("sweep", "run", str(spec), "--store", str(store), "--threads", "1", data=real_data)
    return store


def test_reference_sweep_is_complete_and_sane(reference: Path):
    state = snapshot(reference)
    assert len(state["runs"]) == 8 and {r[4] for r in state["runs"]} == {"done"}
    with Store(reference) as store:
        clean = [r["value"] for r in store.results() if r["metric"] == "test_accuracy"]
        # 4 epochs on 2000 digits learn something (SBLS at alpha 0.5 learns least).
        assert len(clean) == 8 and min(clean) > 0.3 and float(np.median(clean)) > 0.8
        runs = store.runs()
        checkpoints = [Path(store.artifacts(run["key"])["checkpoint"]) for run in runs]
        spec = store.sweep_spec("resume-check")
    assert spec["grid"] == [SPEC["grid"]] and spec["train"] == SPEC["train"]
    assert all(run["attempts"] == 1 for run in runs)
    assert all((path / "checkpoint.json").exists() for path in checkpoints)
    assert len(set(checkpoints)) == 8


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(workdir, real_data, reference):
    spec = write_spec(workdir)
    store = workdir / "killed.db"
    artifacts = workdir / "killed-artifacts"
    command = ("sweep", "run", str(spec), "--store", str(store), "--threads", "1")
    command += ("--artifacts", str(artifacts))
    rng = random.Random(20261201)
    done_before: set[str] = set()
    kills = 0
    for attempt in range(5):
        process = start(*command, data=real_data)
        if attempt == 0:
            # First kill: just after the first epoch's checkpoint, so a training resumes.
            deadline = time.monotonic() + 120
            while not list(artifacts.glob("train/*/checkpoint.json")):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.02)
        else:
            time.sleep(rng.uniform(1.0, 7.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        done_now = done_keys(store)
        assert done_before <= done_now, "a completed run was lost"
        done_before = done_now
    assert kills >= 4, "the sweep finished before it could be interrupted"
    assert len(done_before) < 8
    advls(*command, data=real_data)

    assert snapshot(store) == snapshot(reference)  # same keys, bit-identical metrics
    with Store(store) as opened:
        runs = opened.runs()
    interrupted = [run for run in runs if run["attempts"] > 1]
    assert interrupted, "no kill landed inside a run"
    assert any(run["timings"].get("resumed_from_epoch", 0) >= 1 for run in interrupted), (
        "training restarted from scratch instead of its last checkpoint"
    )


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(child) for child in text.split()}
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("delay", [0.0, 3.0], ids=["while-starting", "while-training"])
def test_worker_processes_die_with_a_killed_driver(workdir, real_data, delay):
    spec = write_spec(workdir)
    store = workdir / f"orphans-{delay}.db"
    driver = start("sweep", "run", str(spec), "--store", str(store), "--jobs", "2", data=real_data)
    deadline = time.monotonic() + 60
    while len(_children(driver.pid)) < 2:  # the spawn pool's workers (and its tracker)
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    time.sleep(delay)  # 0: the workers are still importing; 3 s: they are training
    workers = _children(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not alive, f"orphaned workers keep running: {alive}"


def test_two_drivers_on_one_store_run_every_run_once(workdir, real_data, reference):
    spec = write_spec(workdir)
    store = workdir / "shared.db"
    command = ("sweep", "run", str(spec), "--store", str(store), "--threads", "1")
    env = {**os.environ, "ADVLS_DATA": str(real_data), "OMP_NUM_THREADS": "1"}
    drivers = [
        subprocess.Popen([*ADVLS, *command], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for driver in drivers:
        _, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err
    assert snapshot(store) == snapshot(reference)
    with Store(store) as opened:
        assert all(run["attempts"] == 1 for run in opened.runs())


def test_local_worker_processes_give_the_same_results(workdir, real_data, reference):
    spec = write_spec(workdir)
    store = workdir / "jobs2.db"
    advls("sweep", "run", str(spec), "--store", str(store), "--jobs", "2", data=real_data)
    assert snapshot(store) == snapshot(reference)  # --jobs 2 gives each worker one thread


def test_ray_executors_give_the_same_results(workdir, real_data, reference):
    """A local Ray instance, then a cluster from `ray start`, each give the reference store.

    One test, in this order: `ray stop --force` ends every Ray process on the machine, so
    it must not run while another test's local instance is alive.
    """
    pytest.importorskip("ray")
    spec = write_spec(workdir)
    local = workdir / "ray-local.db"
    advls(
        "sweep", "run", str(spec), "--store", str(local), "--executor", "ray", "--jobs", "2",
        "--threads", "1", data=real_data,
    )  # fmt: skip
    assert snapshot(local) == snapshot(reference)

    ray_cli = Path(sys.executable).with_name("ray")
    port = str(_free_port())
    # The cluster and the driver authenticate with one token of our own.
    token = workdir / "ray-token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port,
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=180,
    )  # fmt: skip
    try:
        store = workdir / "ray.db"
        result = advls(
            "sweep", "run", str(spec), "--store", str(store), "--executor", "ray",
            "--address", f"127.0.0.1:{port}", "--threads", "1", data=real_data, env_extra=auth,
        )  # fmt: skip
        assert "8/8" in result.stdout
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=120)
    assert snapshot(store) == snapshot(reference)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failing_run_is_recorded_and_the_sweep_goes_on(workdir, real_data):
    spec = dict(SPEC, name="with-failure")
    spec["train"] = dict(SPEC["train"], epochs=1)
    spec["grid"] = [{"loss": ["standard"], "alpha": [0.1]}, {"loss": ["adversarial"], "lr": [1e9]}]
    path = write_spec(workdir, spec)
    store = workdir / "failure.db"
    command = ("sweep", "run", str(path), "--store", str(store), "--threads", "1")
    first = advls(*command, data=real_data, check=False)
    assert first.returncode == 1 and "1 run(s) failed" in first.stderr
    with Store(store) as opened:
        runs = {run["name"]: run for run in opened.runs()}
    assert runs["mnist-mlp-standard-0.1-s0"]["status"] == "done"
    broken = runs["mnist-mlp-adversarial-0.1-s0"]
    assert broken["status"] == "failed" and "NonFiniteLogitsError" in broken["error"]

    status = advls("sweep", "status", "--store", str(store), "--failed", data=real_data)
    assert "NonFiniteLogitsError" in status.stdout and "failed runs" in status.stdout

    advls(*command, data=real_data, check=False)  # without --retry-failed: nothing reruns
    with Store(store) as opened:
        assert opened.runs([broken["key"]])[0]["attempts"] == 1
    again = advls(*command, "--retry-failed", data=real_data, check=False)
    assert again.returncode == 1
    with Store(store) as opened:
        assert opened.runs([broken["key"]])[0]["attempts"] == 2


def test_bad_data_fails_a_run_and_retry_after_the_fix_completes_it(tmp_path):
    from conftest import write_toy_npz

    data = write_toy_npz(tmp_path / "toy.npz")
    good = data.read_bytes()
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "toy",
                "train": {"dataset": str(data), "model": "linear", "epochs": 1},
                "grid": {"loss": ["ce", "adversarial"]},
                "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 32, "checks": False},
            }
        )
    )
    spec, runs = load_spec(path)
    data.write_bytes(good[: len(good) // 2])  # corrupted after the spec was checked
    with Store(tmp_path / "toy.db") as store:
        keys = register(store, spec.name, runs)
        summary = run_sweep(store, keys, create("local"), artifact_dir=tmp_path / "art")
        assert summary.counts["failed"] == 2 and not summary.completed
        assert all("toy.npz" in run["error"] for run in store.runs())
        data.write_bytes(good)
        assert (
            run_sweep(store, keys, create("local"), artifact_dir=tmp_path / "art").counts["failed"]
            == 2
        )  # failed runs wait for --retry-failed
        summary = run_sweep(
            store, keys, create("local"), artifact_dir=tmp_path / "art", retry_failed=True
        )
        assert summary.counts == {"pending": 0, "running": 0, "done": 2, "failed": 0}


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ({"loss": ["ce"], "weight_decay": ["lots"]}, "grid.weight_decay"),
        ({"alpha": [-0.1]}, "greater than or equal to 0"),
        ({"dataset": ["svhn"], "model": ["lenet"]}, "train_32x32.mat"),
    ],
)
def test_bad_specs_fail_before_anything_is_created(workdir, real_data, tmp_path, grid, expected):
    spec = dict(SPEC, name="bad", grid=grid)
    path = write_spec(tmp_path, spec)
    store = tmp_path / "bad.db"
    result = advls("sweep", "run", str(path), "--store", str(store), data=real_data, check=False)
    assert result.returncode == 2 and expected in result.stderr
    assert not store.exists() and not (tmp_path / "bad-artifacts").exists()


def test_export_matches_the_store(workdir, real_data, reference):
    csv = workdir / "results.csv"
    advls("sweep", "export", "--store", str(reference), "--out", str(csv), data=real_data)
    table = pd.read_csv(csv)
    parquet = workdir / "results.parquet"
    advls(
        "sweep", "export", "--store", str(reference), "--format", "parquet", "--out", str(parquet),
        data=real_data,
    )  # fmt: skip
    from_parquet = pd.read_parquet(parquet)
    with Store(reference) as store:
        rows = store.results()
        configs = {run["key"]: run["config"]["train"] for run in store.runs()}
    assert len(table) == len(rows) == len(from_parquet)
    for frame in (table, from_parquet):
        for row, stored in zip(frame.itertuples(), rows, strict=True):
            assert (row.run, row.protocol, row.attack, row.metric) == (
                stored["run_key"], stored["protocol"], stored["attack"], stored["metric"],
            )  # fmt: skip
            assert _same(row.eps, stored["eps"]) and _same(row.value, stored["value"])
            assert row.alpha == configs[row.run]["alpha"] and row.loss == configs[row.run]["loss"]


def _same(read: float, stored: float | None) -> bool:
    return (stored is None and np.isnan(read)) or read == stored


def test_status_shows_counts_and_a_bar(reference, real_data):
    result = advls("sweep", "status", "--store", str(reference), data=real_data)
    assert "resume-check" in result.stdout and "8/8" in result.stdout
    missing = advls("sweep", "status", "--store", "nope.db", data=real_data, check=False)
    assert missing.returncode == 2 and "no store at nope.db" in missing.stderr
