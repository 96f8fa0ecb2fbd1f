"""Hostile input to sweeps and stores, through the real command line: nothing is lost.

- outputs: ``sweep export --out`` is never the store, its side files, a run's files or a
  directory, replaces an existing file only with ``--force``, and leaves no temporary file;
- limits: a huge grid, a YAML "billion laughs", ``/dev/zero`` and a pipe as the spec each
  end at once, in little memory (measured in a fresh process), and a dry run writes nothing;
- stores: a damaged store (valid header, overwritten pages) and an empty file are refused
  by every command with one line naming the fix, and their bytes stay as they were;
- specs: every attack configuration is checked before anything trains, numbers are strict;
- a killed driver's runs show as ``stale``, not ``running``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advls.atomic import atomic_target
from advls.cli import app
from advls.store import Result, Store, StoreError, salvage
from advls.sweep import parse_spec, register
from conftest import write_toy_npz

runner = CliRunner()
ADVLS = str(Path(sys.executable).with_name("advls"))

#: A spec of MNIST runs; nothing here trains, so MNIST need not be present.
SPEC = {
    "name": "hostile",
    "train": {"dataset": "mnist", "model": "mlp", "epochs": 1},
    "grid": {"loss": ["standard"], "alpha": [0.1, 0.2]},
    "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 10, "checks": False},
}


def _error(result) -> str:
    """The one error line of a command that failed cleanly (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def make_store(path: Path, runs: int = 40) -> Path:
    """A real store: a registered sweep of ``runs`` runs, each finished with results."""
    payload = dict(
        SPEC, grid={"loss": ["standard"], "alpha": [0.01 * (i + 1) for i in range(runs)]}
    )
    spec, specs = parse_spec(payload)
    with Store(path) as store:
        register(store, spec, specs)
        for claim in store.claim(runs):
            rows = [
                Result("clean", "clean", None, "test_accuracy", 0.9),
                Result("paper", "fgsm", 0.1, "robust_accuracy", 0.5),
                Result("paper", "deepfool", None, "median_l2", 1.25),
            ]
            store.complete(claim.key, rows, artifacts={"checkpoint": f"/runs/{claim.key}"})
    return path


def write_spec(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload))
    return path


# ---------------------------------------------------------------------- case 1: outputs
@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "s.db")


def test_export_never_writes_over_the_store_or_its_side_files(store: Path):
    before = _digest(store)
    for out in (store, store.with_name("s.db-wal"), store.with_name("s.db-shm")):
        for force in ([], ["--force"]):
            args = ["sweep", "export", "--store", str(store), "--out", str(out), *force]
            message = _error(runner.invoke(app, args))
            assert "is the store this command reads" in message
    assert _digest(store) == before
    with Store(store, readonly=True) as opened:
        assert opened.counts()["done"] == 40


def test_export_never_writes_over_another_store_or_a_run(store: Path, tmp_path: Path):
    other = make_store(tmp_path / "other.db", runs=2)
    run = tmp_path / "run"
    (run / "epoch-0001").mkdir(parents=True)
    (run / "checkpoint.json").write_text('{"format": "advls.checkpoint/1"}')
    (run / "epoch-0001" / "model.safetensors").write_bytes(b"weights")
    kept = {p: p.read_bytes() for p in (other, run / "checkpoint.json")}
    cases = {
        other: "is an SQLite database",
        run / "checkpoint.json": "is inside the run directory",
        run / "epoch-0001" / "model.safetensors": "is inside the run directory",
        run / "results.csv": "is inside the run directory",
    }
    for out, expected in cases.items():
        args = ["sweep", "export", "--store", str(store), "--out", str(out), "--force"]
        assert expected in _error(runner.invoke(app, args))
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert (run / "epoch-0001" / "model.safetensors").read_bytes() == b"weights"


def test_export_to_a_directory_is_a_clear_error_and_leaves_no_temporary_file(
    store: Path, tmp_path: Path
):
    folder = tmp_path / "out"
    folder.mkdir()
    before = _files(tmp_path)
    message = _error(
        runner.invoke(app, ["sweep", "export", "--store", str(store), "--out", str(folder)])
    )
    assert "is a directory; give the path of a file" in message and "Errno" not in message
    assert _files(tmp_path) == before and not list(folder.iterdir())


def test_export_replaces_an_existing_file_only_with_force(store: Path, tmp_path: Path):
    out = tmp_path / "results.csv"
    out.write_text("mine\n")
    args = ["sweep", "export", "--store", str(store), "--out", str(out)]
    assert "exists; pass --force" in _error(runner.invoke(app, args))
    assert out.read_text() == "mine\n"
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("run,name,") and len(out.read_text().splitlines()) == 121
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "table.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_target(out) as temporary:
        temporary.write_text("half a tab")
        raise RuntimeError("disk full")
    assert out.read_text() == "old\n" and _files(tmp_path) == {"table.csv"}


def test_the_run_record_name_is_the_checkpoints_own():
    from advls.checkpoint import RECORD
    from advls.outputs import RUN_RECORD

    assert RUN_RECORD == RECORD


def test_report_refuses_an_out_that_is_a_file_or_a_run(store: Path, tmp_path: Path):
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    message = _error(runner.invoke(app, ["report", "--store", str(store), "--out", str(taken)]))
    assert "is a file, not a folder" in message and taken.read_text() == "mine"
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.json").write_text("{}")
    message = _error(runner.invoke(app, ["report", "--store", str(store), "--out", str(run)]))
    assert "inside the run directory" in message and _files(run) == {"checkpoint.json"}


# ---------------------------------------------------------------------- case 2: limits
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
try:
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
    code, err = done.returncode, done.stderr
except subprocess.TimeoutExpired:
    code, err = None, "timed out"
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"code": code, "seconds": seconds, "mib": rss / 1024, "stderr": err}))
"""


def measured(*args: str, cwd: Path) -> dict:
    """``advls ARGS`` in a fresh process: exit code, wall seconds, peak memory (MiB), stderr.

    The measuring process has no other child, so RUSAGE_CHILDREN is the command's own peak.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, ADVLS, *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )  # fmt: skip
    figures = json.loads(done.stdout)
    print(f"advls {' '.join(args)}: {figures['seconds']:.2f} s, {figures['mib']:.0f} MiB")
    return figures


def test_a_million_run_grid_dry_run_ends_at_once_in_little_memory(tmp_path: Path):
    axes = {"alpha": [0.01 * i for i in range(1, 11)], "seed": list(range(10))}
    axes |= {"lr": [0.01 * i for i in range(1, 11)], "batch_size": list(range(16, 26))}
    axes |= {"weight_decay": [0.0001 * i for i in range(10)], "epochs": list(range(1, 11))}
    spec = write_spec(tmp_path / "huge.yaml", dict(SPEC, grid={"loss": ["standard"], **axes}))
    store = tmp_path / "huge.db"
    figures = measured("sweep", "run", str(spec), "--store", str(store), "--dry-run", cwd=tmp_path)
    assert figures["code"] == 2, figures["stderr"]
    assert "expands to 1000000 runs" in figures["stderr"] and "--max-runs" in figures["stderr"]
    assert figures["seconds"] < 10 and figures["mib"] < 500
    assert not store.exists()


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    body = "\n".join(f"  {line}" for line in lines)
    return yaml.safe_dump({k: v for k, v in SPEC.items()}) + "paper:\n" + body + "\n"


def test_a_billion_laughs_ends_at_once_in_little_memory(tmp_path: Path):
    spec = write_spec(tmp_path / "laughs.yaml", _billion_laughs())
    store = tmp_path / "laughs.db"
    figures = measured("sweep", "run", str(spec), "--store", str(store), "--dry-run", cwd=tmp_path)
    assert figures["code"] == 2, figures["stderr"]
    assert "expands to more than 100000 values" in figures["stderr"]
    assert figures["seconds"] < 10 and figures["mib"] < 500
    assert not store.exists()


def test_devices_pipes_and_huge_files_are_refused_without_reading_them(tmp_path: Path):
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ndescription: " + "x" * (2 << 20) + "\n")
    for path, expected in (
        (Path("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path, "a directory"),
        (big, "larger than 1048576 bytes"),
    ):
        started = time.perf_counter()
        message = _error(runner.invoke(app, ["sweep", "run", str(path), "--dry-run"]))
        assert expected in message and time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: deep\ndescription: " + "[" * 200 + "]" * 200 + "\n", "nested more than 32"),
        ("name: loop\npaper: &p {again: *p}\n", "alias refers to a value that contains it"),
        ("name: bad\ngrid: {loss: [ce\n", "not valid YAML"),
        (b"name: \xff\xfe\n", "not UTF-8"),
    ],
    ids=["deep", "recursive-alias", "broken", "binary"],
)
def test_pathological_yaml_is_a_clear_error(tmp_path: Path, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert expected in _error(runner.invoke(app, ["sweep", "run", str(path), "--dry-run"]))


def test_small_aliases_still_work_and_max_runs_raises_the_bound(tmp_path: Path, real_data: Path):
    text = yaml.safe_dump(SPEC) + "paper:\n  alpha: &alphas [0.1, 0.2]\n  again: *alphas\n"
    spec = write_spec(tmp_path / "ok.yaml", text)
    result = runner.invoke(app, ["sweep", "run", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    wide = write_spec(
        tmp_path / "wide.yaml", dict(SPEC, grid={"alpha": [0.1, 0.2], "seed": [0, 1, 2]})
    )
    base = ["sweep", "run", str(wide), "--dry-run"]
    assert "expands to 6 runs, more than the 5 allowed" in _error(
        runner.invoke(app, [*base, "--max-runs", "5"])
    )
    assert runner.invoke(app, [*base, "--max-runs", "6"]).exit_code == 0


def test_a_dry_run_writes_nothing(tmp_path: Path, store: Path, real_data: Path):
    spec = write_spec(tmp_path / "spec.yaml", dict(SPEC, grid={"alpha": [0.5, 0.6]}))
    fresh = tmp_path / "fresh.db"
    result = runner.invoke(app, ["sweep", "run", str(spec), "--store", str(fresh), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "new" in result.stdout and not fresh.exists()
    assert not (tmp_path / "fresh-artifacts").exists()
    before = _digest(store)
    result = runner.invoke(app, ["sweep", "run", str(spec), "--store", str(store), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert _digest(store) == before
    with Store(store, readonly=True) as opened:
        assert len(opened.runs()) == 40  # the spec's two runs were not registered


# ---------------------------------------------------------------------- case 6: damage
def damage(path: Path, seed: int = 7) -> None:
    """Overwrite pages past the header of a real store with noise (the header stays valid)."""
    with Store(path):  # checkpoint the WAL into the file, so the pages are there
        pass
    size = path.stat().st_size
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    pages = size // page
    assert pages >= 8, "the store is too small to damage a later page"
    noise = random.Random(seed).randbytes(page * 2)
    with open(path, "r+b") as handle:
        handle.seek(page * (pages // 2))
        handle.write(noise)


def test_commands_refuse_a_damaged_store_naming_the_salvage_and_never_change_it(
    tmp_path: Path, store: Path, real_data: Path
):
    damage(store)
    try:  # the damage is real: SQLite itself sees it
        intact = sqlite3.connect(store).execute("PRAGMA quick_check").fetchall() == [("ok",)]
    except sqlite3.DatabaseError:
        intact = False
    assert not intact
    before = _digest(store)
    for command in _store_commands(tmp_path, store):
        message = _error(runner.invoke(app, command))
        assert f"{store} is damaged" in message, command
        assert "advls sweep salvage --store" in message, command
        assert _digest(store) == before, f"{command} changed the damaged store"
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "report").exists()


def test_salvage_copies_what_can_be_read_into_a_usable_store(tmp_path: Path, store: Path):
    damage(store)
    before = _digest(store)
    out = tmp_path / "salvaged.db"
    result = runner.invoke(app, ["sweep", "salvage", "--store", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _digest(store) == before
    with Store(out, readonly=True) as copy:
        runs, results = copy.runs(), copy.results()
    assert runs, "nothing was salvaged"
    done = [run for run in runs if run["status"] == "done"]
    for run in done:  # a finished run keeps all its results, or is pending again
        assert sum(1 for r in results if r["run_key"] == run["key"]) == 3
    with pytest.raises(StoreError, match="exists"):
        salvage(store, out)


def _store_commands(tmp_path: Path, store: Path) -> list[list[str]]:
    """Every command that reads a store, each told to write beside it (a spec in tmp_path)."""
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    return [
        ["sweep", "status", "--store", str(store)],
        ["sweep", "export", "--store", str(store), "--out", str(tmp_path / "out.csv")],
        ["report", "--store", str(store), "--out", str(tmp_path / "report")],
        ["sweep", "run", str(spec), "--store", str(store), "--dry-run"],
        ["sweep", "run", str(spec), "--store", str(store)],
    ]


# ---------------------------------------------------------------------- case 7: empty file
def test_an_empty_file_is_never_taken_for_a_new_store(tmp_path: Path, real_data: Path):
    empty = tmp_path / "truncated.db"
    empty.touch()
    for command in _store_commands(tmp_path, empty):
        message = _error(runner.invoke(app, command))
        assert "is empty (0 bytes): a truncated store, not a new one" in message, command
    assert empty.stat().st_size == 0
    assert _files(tmp_path) == {"truncated.db", "spec.yaml"}


def test_only_a_writer_creates_a_store(tmp_path: Path):
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no store at"):
        Store(missing, readonly=True)
    with pytest.raises(StoreError, match="no store at"):
        Store(missing, create=False)
    assert not missing.exists()
    for command in (["sweep", "status"], ["sweep", "export"], ["report"]):
        result = runner.invoke(app, [*command, "--store", str(missing)])
        assert "no store at" in _error(result) and not missing.exists()


# ---------------------------------------------------------------------- case 8: attacks
@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        ({"protocols": [{"name": "paper", "params": {"bim-100": {"bogus": 1}}}]},
         "paper/bim-100 at eps 0.1: attack 'bim' takes no parameter(s) bogus"),
        ({"protocols": [{"name": "paper", "params": {"bim-100": {"steps": -3}}}]},
         "paper/bim-100 at eps 0.1: steps must be an integer >= 1, got -3"),
        ({"protocols": [{"name": "paper", "params": {"cw-l2": {"binary_search_steps": 0}}}]},
         "paper/cw-l2: binary_search_steps must be an integer >= 1"),
        ({"protocols": [{"name": "strong", "params": {"square": {"queries": True}}}]},
         "strong/square at eps 0.1: queries must be an integer >= 1, got True"),
        ({"protocols": ["standard"], "seed": 10**23},
         "cannot seed a random generator"),
        ({"protocols": ["paper"], "seed": "1e23"}, "evaluate.seed"),
    ],
    ids=["unknown-parameter", "negative-steps", "zero-searches", "bool-queries", "huge-seed",
         "seed-string"],
)  # fmt: skip
def test_attack_configurations_are_checked_before_anything_trains(tmp_path, evaluate, expected):
    spec = write_spec(tmp_path / "spec.yaml", dict(SPEC, evaluate={**SPEC["evaluate"], **evaluate}))
    store = tmp_path / "s.db"
    for extra in (["--dry-run"], []):
        args = ["sweep", "run", str(spec), "--store", str(store), *extra]
        assert expected in _error(runner.invoke(app, args))
    assert not store.exists() and not (tmp_path / "s-artifacts").exists()


def test_a_valid_override_still_passes():
    payload = dict(SPEC, evaluate={**SPEC["evaluate"], "protocols": [
        {"name": "strong", "params": {"square": {"queries": 300}, "apgd-t": {"target_classes": 3}}}
    ]})  # fmt: skip
    _, runs = parse_spec(payload)
    assert len(runs) == 2


# ---------------------------------------------------------------------- case 11: types, stale
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": {**SPEC["train"], "epochs": True}}, "train.epochs"),
        ({"grid": {"epochs": [True]}}, "grid.epochs"),
        ({"grid": {"batch_size": [32.0]}}, "grid.batch_size"),
        ({"grid": {"nesterov": [1]}}, "grid.nesterov"),
        ({"evaluate": {**SPEC["evaluate"], "n": True}}, "evaluate.n"),
        ({"evaluate": {**SPEC["evaluate"], "checks": 1}}, "evaluate.checks"),
        ({"evaluate": {**SPEC["evaluate"], "eps": [True]}}, "evaluate.eps"),
    ],
    ids=["epochs-true", "grid-epochs-true", "float-batch", "int-bool", "n-true", "checks-1",
         "eps-true"],
)  # fmt: skip
def test_booleans_and_floats_are_no_integers(tmp_path: Path, change, expected):
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, **change})
    assert expected in _error(runner.invoke(app, ["sweep", "run", str(spec), "--dry-run"]))


def _wait_for(condition, seconds: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the driver ended before it could be killed"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _running(store: Path) -> bool:
    if not store.exists():
        return False
    try:
        with Store(store, readonly=True) as opened:
            return opened.counts()["running"] == 1
    except StoreError:  # the driver is still creating it
        return False


def test_a_killed_drivers_runs_show_as_stale(tmp_path: Path):
    data = write_toy_npz(tmp_path / "toy.npz", n=2048)
    payload = {
        "name": "stale",
        "train": {"dataset": str(data), "model": "linear", "epochs": 500, "batch_size": 16},
        "grid": {"loss": ["ce"]},
        "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 16, "checks": False},
    }
    spec = write_spec(tmp_path / "stale.yaml", payload)
    store = tmp_path / "stale.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [ADVLS, "sweep", "run", str(spec), "--store", str(store), "--threads", "1",
         "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _running(store), 120, driver)
        live = runner.invoke(app, ["sweep", "status", "--store", str(store)])
        assert live.exit_code == 0 and _counts_row(live.stdout)[3:5] == ["1", "0"]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    result = runner.invoke(app, ["sweep", "status", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "stale" in result.stdout
    runs, done, running, stale = _counts_row(result.stdout)[1:5]
    assert (runs, done, running, stale) == ("1", "0", "0", "1")
    listed = runner.invoke(app, ["sweep", "run", str(spec), "--store", str(store), "--dry-run"])
    assert listed.exit_code == 0 and "stale" in listed.stdout
    with Store(store) as opened:  # the next driver takes it back
        assert len(opened.claim(1)) == 1


def _counts_row(table: str) -> list[str]:
    """The cells of the status table's row for the sweep named ``stale``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.replace("┃", "│").split("│")]
        cells = [cell for cell in cells if cell]
        if cells and cells[0] == "stale":
            return cells
    raise AssertionError(f"no row for the sweep in:\n{table}")
