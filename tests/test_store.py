"""The SQLite store: schema, atomic completion, claiming, stale owners, concurrency."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advls.store import SCHEMA_VERSION, Result, Store, StoreError, owner_id


def runs(n: int) -> list[dict]:
    return [
        {"key": f"k{i:03d}", "name": f"run-{i}", "train_key": f"t{i}", "config": {"i": i}}
        for i in range(n)
    ]


def rows_for(key: str) -> list[Result]:
    return [
        Result("clean", "clean", None, "accuracy", 0.5),
        Result("paper", "fgsm", 0.1, "robust_accuracy", 0.25),
        Result("paper", "deepfool", None, "median_l2", math.nan),
    ]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "results.db") as opened:
        yield opened


def test_schema_wal_and_version(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "results", "artifacts", "sweep_runs", "sweeps"} <= tables


def test_other_schema_version_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "old.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99; this advls reads version 1"):
        Store(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite store"):
        Store(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="schema version 0"):
        Store(other)
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "dir.db")


_COUNT_DONE = (
    "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
    "print(db.execute(\"SELECT count(*) FROM runs WHERE status='done'\").fetchone()[0]); "
    "db.close()"
)


def _done_seen_by_another_process(path) -> int:
    """Runs done as a reader in another process sees them; it opens and closes the store."""
    reader = [sys.executable, "-c", _COUNT_DONE, str(path)]
    return int(subprocess.run(reader, capture_output=True, text=True, check=True).stdout)


def test_a_reader_elsewhere_loses_no_commit_of_a_process_with_two_stores_open(tmp_path):
    """A sweep driver holds two stores of one file (its heartbeat has its own). A reader in
    another process (`advls sweep status`, sqlite3) closing the file must not take itself for
    its last user and checkpoint and delete the WAL under the driver: that happened when
    opening the second store read the file's header with open(), whose close dropped every
    POSIX lock of the process, and every later commit of the driver was lost."""
    path = tmp_path / "results.db"
    with Store(path) as driver, Store(path, create=False) as heartbeat:
        driver.add_runs("s", runs(3))
        assert _done_seen_by_another_process(path) == 0
        for expected in (1, 2):
            (claim,) = driver.claim(1)
            driver.complete(claim.key, rows_for(claim.key))
            heartbeat.heartbeat()
            assert _done_seen_by_another_process(path) == expected
        assert path.with_name(path.name + "-wal").exists()  # still the driver's
    with Store(path, create=False) as reopened:
        assert reopened.counts()["done"] == 2


def test_add_runs_is_idempotent_and_keeps_status(store):
    assert store.add_runs("a", runs(3)) == 3
    (claim,) = store.claim(1)
    store.complete(claim.key, rows_for(claim.key))
    assert store.add_runs("a", runs(4)) == 1
    assert store.add_runs("b", runs(2)) == 0  # shared runs are one run in two sweeps
    assert store.counts() == {"pending": 3, "running": 0, "done": 1, "failed": 0}
    assert store.sweep_keys("b") == ["k000", "k001"]
    assert store.sweeps() == ["a", "b"]
    store.record_sweep("c", {"paper": {"alpha": [0.1]}})
    store.record_sweep("c", {"paper": {"alpha": [0.5]}})  # the latest registration wins
    assert store.sweep_spec("c") == {"paper": {"alpha": [0.5]}}
    assert store.sweep_spec("nope") is None
    assert store.sweeps() == ["a", "b", "c"]


def test_complete_is_atomic_replaces_and_stores_nan_as_null(store):
    store.add_runs("a", runs(1))
    (claim,) = store.claim(5)
    assert claim.attempts == 1 and claim.config == {"i": 0} and claim.train_key == "t0"
    assert store.complete("k000", rows_for("k000"), artifacts={"checkpoint": "/x"})
    assert not store.complete("k000", rows_for("k000"))  # a second finisher changes nothing
    results = store.results()
    assert len(results) == 3
    assert results[2]["value"] is None and results[0]["eps"] is None
    assert store.artifacts("k000") == {"checkpoint": "/x"}
    with pytest.raises(StoreError, match="no run with key"):
        store.complete("nope", [])


def test_duplicate_result_cells_are_refused_even_with_null_eps(store):
    store.add_runs("a", runs(1))
    store.claim(1)
    twice = [Result("paper", "deepfool", None, "median_l2", 1.0)] * 2
    with pytest.raises(sqlite3.IntegrityError):
        store.complete("k000", twice)
    assert store.results() == []  # the failed transaction left nothing behind
    assert store.counts()["running"] == 1


def test_claims_follow_registration_order_and_scope(store):
    store.add_runs("a", runs(5))
    assert [c.key for c in store.claim(2)] == ["k000", "k001"]
    assert [c.key for c in store.claim(2, keys=["k004", "k000"])] == ["k004"]
    assert store.claim(0) == []
    assert store.counts()["running"] == 3


def test_fail_retry_release(store):
    store.add_runs("a", runs(3))
    first, second, _ = store.claim(3)
    store.fail(first.key, "NonFiniteLossError: boom")
    store.release([second.key])
    record = {r["key"]: r for r in store.runs()}
    assert record["k000"]["status"] == "failed" and "boom" in record["k000"]["error"]
    assert record["k001"]["status"] == "pending"
    assert store.retry_failed(["k000"]) == 1
    again = store.claim(3)
    assert {c.key for c in again} == {"k000", "k001"}
    assert {c.key: c.attempts for c in again}["k000"] == 2
    assert store.runs(["k000"])[0]["error"] is None


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid no longer names a process
    return process.pid


def test_runs_of_a_dead_local_owner_are_taken_back(store):
    store.add_runs("a", runs(2))
    store.owner = owner_id(_dead_pid())
    store.claim(2)
    store.owner = owner_id()
    assert sorted(c.key for c in store.claim(5)) == ["k000", "k001"]


def test_runs_of_a_live_owner_are_left_alone(store):
    store.add_runs("a", runs(2))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store.owner = owner_id(sleeper.pid)
        store.claim(2)
        store.owner = owner_id()
        assert store.claim(5) == []
        assert store.reclaim_stale() == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert len(store.claim(5)) == 2


def test_remote_owner_is_trusted_until_its_lease_expires(tmp_path):
    with Store(tmp_path / "r.db", lease=3600) as store:
        store.add_runs("a", runs(1))
        store.owner = "elsewhere:123:456"
        store.claim(1)
        store.owner = owner_id()
        assert store.claim(1) == []
    with Store(tmp_path / "r.db", lease=0.0) as impatient:
        assert [c.key for c in impatient.claim(1)] == ["k000"]


@settings(max_examples=30, deadline=None)
@given(schedule=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=40))
def test_interleaved_drivers_run_every_run_exactly_once(tmp_path_factory, schedule):
    path = tmp_path_factory.mktemp("interleave") / "s.db"
    drivers = [Store(path) for _ in range(3)]
    for index, driver in enumerate(drivers):
        driver.owner = f"host{index}:1:1"  # distinct owners on other hosts, within their lease
    drivers[0].add_runs("a", runs(12))
    held: list[list[str]] = [[], [], []]
    finished = []
    steps = iter(schedule * 20)
    while len(finished) < 12:
        who, amount = next(steps, (len(finished) % 3, 3))
        claims = drivers[who].claim(amount)
        held[who] += [c.key for c in claims]
        if held[who]:
            key = held[who].pop(0)
            if drivers[who].complete(key, rows_for(key)):
                finished.append(key)
    assert sorted(finished) == sorted(r["key"] for r in runs(12))
    db = sqlite3.connect(path)
    total, distinct = db.execute(
        "SELECT count(*), "
        "count(DISTINCT run_key || protocol || attack || IFNULL(eps, -1) || metric) FROM results"
    ).fetchone()
    assert total == distinct == 36
    assert db.execute("SELECT max(attempts) FROM runs").fetchone()[0] == 1
    for driver in drivers:
        driver.close()


def _claim_all(path: str, queue) -> None:
    store = Store(path)
    taken = []
    while batch := store.claim(1):
        for claim in batch:
            store.complete(claim.key, rows_for(claim.key))
            taken.append(claim.key)
    queue.put(taken)


def test_two_processes_claim_disjoint_runs(tmp_path):
    path = tmp_path / "p.db"
    with Store(path) as store:
        store.add_runs("a", runs(60))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_claim_all, args=(str(path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    taken = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(r["key"] for r in runs(60))
    with Store(path) as store:
        assert store.counts()["done"] == 60
        assert len(store.results()) == 180


def test_scopes_larger_than_sqlite_parameter_limits(store):
    many = runs(40_000)  # more keys than SQLite allows bound parameters in one statement
    store.add_runs("big", many)
    keys = [run["key"] for run in many]
    assert store.counts(keys)["pending"] == 40_000
    assert [c.key for c in store.claim(3, keys[::-1])] == ["k000", "k001", "k002"]
