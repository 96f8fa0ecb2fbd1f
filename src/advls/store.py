"""The SQLite results store: runs, their metrics and their artifacts, in one file.

One row per run, keyed by the hash of its resolved config; metrics in a child table with
one row per (protocol, attack, eps, metric); artifact paths in another. The file is in WAL
mode, every change is one short ``BEGIN IMMEDIATE`` transaction, and only sweep drivers
write (workers return their metrics to the driver), so a driver killed at any moment leaves
the store consistent: a run is either finished with all its rows or not finished at all.

Several drivers may share a store. A driver *claims* pending runs in a transaction and owns
them while they run; a claim whose owner died (same host: the process is gone; otherwise
no heartbeat for ``lease`` seconds) is taken back on the next claim, so a killed sweep
resumes and two sweeps never run the same run twice at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "Claim",
    "Result",
    "Store",
    "StoreError",
    "owner_id",
]

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE runs (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    train_key TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    owner TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    timings TEXT,
    error TEXT
);
CREATE INDEX runs_status ON runs (status);
CREATE TABLE sweeps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE sweep_runs (
    sweep TEXT NOT NULL,
    run_key TEXT NOT NULL REFERENCES runs (key),
    position INTEGER NOT NULL,
    PRIMARY KEY (sweep, run_key)
);
CREATE TABLE results (
    run_key TEXT NOT NULL REFERENCES runs (key),
    protocol TEXT NOT NULL,
    attack TEXT NOT NULL,
    eps REAL,
    metric TEXT NOT NULL,
    value REAL
);
CREATE UNIQUE INDEX results_cell ON results (run_key, protocol, attack, IFNULL(eps, -1.0), metric);
CREATE TABLE artifacts (
    run_key TEXT NOT NULL REFERENCES runs (key),
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (run_key, kind)
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or used (wrong schema, not a store, bad request)."""


@dataclass(frozen=True)
class Result:
    """One metric of one run: ``eps`` is None where no budget applies."""

    protocol: str
    attack: str
    eps: float | None
    metric: str
    value: float | None


@dataclass(frozen=True)
class Claim:
    """A run this driver now owns."""

    key: str
    name: str
    train_key: str
    config: dict[str, Any]
    attempts: int


def _process_start(pid: int) -> str:
    # The start time tells a live owner from an unrelated process that reused its pid.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return "0"


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start`` of this (or another local) process."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it runs elsewhere (use the lease)."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z" and _process_start(pid) == start


def _clean(value: float | None) -> float | None:
    # SQLite has no NaN; a metric that is undefined (no points attacked) is stored as NULL.
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class Store:
    """A results store file; create it with ``Store(path)``, close it (or use ``with``).

    Raises:
        StoreError: the file is not an advls store or has another schema version.
    """

    def __init__(self, path: str | os.PathLike[str], *, lease: float = 3600.0) -> None:
        self.path = Path(path)
        self.lease = lease
        self.owner = owner_id()
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"cannot create {self.path}: {self.path.parent} does not exist")
        try:
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (only power loss can drop commits).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._init_schema()
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path} is not a usable SQLite store: {error}") from None

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken at once so concurrent drivers queue, not deadlock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
            if version == 0 and tables[0] == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this advls reads version "
                    f"{SCHEMA_VERSION}. Use a new store file or the advls that wrote it."
                )

    # ------------------------------------------------------------------ runs
    def add_runs(self, sweep: str, runs: Sequence[Mapping[str, Any]]) -> int:
        """Register runs (``key``, ``name``, ``train_key``, ``config``) under ``sweep``.

        Known runs keep their status and results; returns how many runs were new.
        """
        now = time.time()
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO runs (key, name, train_key, config, status, created) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                [
                    (
                        run["key"],
                        run["name"],
                        run["train_key"],
                        json.dumps(run["config"], sort_keys=True),
                        now,
                    )
                    for run in runs
                ],
            )
            added = db.total_changes - before
            db.executemany(
                "INSERT OR IGNORE INTO sweep_runs (sweep, run_key, position) VALUES (?, ?, ?)",
                [(sweep, run["key"], position) for position, run in enumerate(runs)],
            )
        return added

    def record_sweep(self, name: str, spec: Mapping[str, Any]) -> None:
        """Keep a sweep's spec (the latest registration wins), so reports need only the store."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO sweeps (name, spec, updated) VALUES (?, ?, ?)",
                (name, json.dumps(spec, sort_keys=True), time.time()),
            )

    def sweep_spec(self, name: str) -> dict[str, Any] | None:
        """The spec a sweep was last registered with, or None."""
        row = self._db.execute("SELECT spec FROM sweeps WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _scope(keys: Sequence[str] | None, column: str = "key") -> tuple[str, list[str]]:
        """A filter on run keys; one JSON parameter, so a grid of any size fits."""
        if keys is None:
            return "", []
        return f" AND {column} IN (SELECT value FROM json_each(?))", [json.dumps(list(keys))]

    def reclaim_stale(self, keys: Sequence[str] | None = None) -> list[str]:
        """Put runs whose owner is dead back to pending; returns their keys."""
        where, params = self._scope(keys)
        now = time.time()
        with self._write() as db:
            rows = db.execute(
                f"SELECT key, owner, heartbeat FROM runs WHERE status='running'{where}", params
            ).fetchall()
            stale = []
            for row in rows:
                alive = _owner_alive(row["owner"] or "")
                if alive is False or (alive is None and now - (row["heartbeat"] or 0) > self.lease):
                    stale.append(row["key"])
            db.executemany(
                "UPDATE runs SET status='pending', owner=NULL, heartbeat=NULL WHERE key=?",
                [(key,) for key in stale],
            )
        return stale

    def claim(self, limit: int, keys: Sequence[str] | None = None) -> list[Claim]:
        """Take up to ``limit`` pending runs (in registration order) for this driver."""
        if limit <= 0:
            return []
        self.reclaim_stale(keys)
        where, params = self._scope(keys)
        now = time.time()
        with self._write() as db:
            rows = db.execute(
                "SELECT key, name, train_key, config, attempts FROM runs "
                f"WHERE status='pending'{where} ORDER BY created, rowid LIMIT ?",
                [*params, limit],
            ).fetchall()
            db.executemany(
                "UPDATE runs SET status='running', owner=?, heartbeat=?, started=?, "
                "attempts=attempts+1, error=NULL WHERE key=? AND status='pending'",
                [(self.owner, now, now, row["key"]) for row in rows],
            )
        return [
            Claim(
                row["key"],
                row["name"],
                row["train_key"],
                json.loads(row["config"]),
                row["attempts"] + 1,
            )
            for row in rows
        ]

    def heartbeat(self) -> None:
        """Mark this driver's runs as still alive (for owners on other hosts)."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'",
                (time.time(), self.owner),
            )

    def complete(
        self,
        key: str,
        results: Iterable[Result],
        *,
        artifacts: Mapping[str, str] | None = None,
        timings: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a finished run with all its results, atomically; False if already done.

        The run's earlier results (of a retried attempt) are replaced, never duplicated.
        """
        rows = [
            (
                key,
                r.protocol,
                r.attack,
                None if r.eps is None else float(r.eps),
                r.metric,
                _clean(r.value),
            )
            for r in results
        ]
        with self._write() as db:
            status = db.execute("SELECT status FROM runs WHERE key=?", (key,)).fetchone()
            if status is None:
                raise StoreError(f"no run with key {key!r} in {self.path}")
            if status["status"] == "done":
                return False  # another driver finished the same deterministic run first
            db.execute("DELETE FROM results WHERE run_key=?", (key,))
            db.execute("DELETE FROM artifacts WHERE run_key=?", (key,))
            db.executemany(
                "INSERT INTO results (run_key, protocol, attack, eps, metric, value) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO artifacts (run_key, kind, path) VALUES (?, ?, ?)",
                [(key, kind, str(path)) for kind, path in (artifacts or {}).items()],
            )
            db.execute(
                "UPDATE runs SET status='done', finished=?, timings=?, error=NULL, owner=NULL "
                "WHERE key=?",
                (time.time(), json.dumps(timings or {}, sort_keys=True), key),
            )
        return True

    def fail(self, key: str, error: str, *, timings: Mapping[str, Any] | None = None) -> None:
        """Record that a run failed, with its error; the sweep goes on."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status='failed', finished=?, error=?, timings=?, owner=NULL "
                "WHERE key=? AND status!='done'",
                (time.time(), error, json.dumps(timings or {}, sort_keys=True), key),
            )

    def release(self, keys: Sequence[str] | None = None) -> None:
        """Give this driver's unfinished runs back (pending), e.g. on Ctrl-C."""
        where, params = self._scope(keys)
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status='pending', owner=NULL, heartbeat=NULL "
                f"WHERE owner=? AND status='running'{where}",
                [self.owner, *params],
            )

    def retry_failed(self, keys: Sequence[str] | None = None) -> int:
        """Make failed runs pending again; returns how many."""
        where, params = self._scope(keys)
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE runs SET status='pending', owner=NULL WHERE status='failed'{where}",
                params,
            )
            return cursor.rowcount

    # ------------------------------------------------------------------ reading
    def sweep_keys(self, sweep: str) -> list[str]:
        rows = self._db.execute(
            "SELECT run_key FROM sweep_runs WHERE sweep=? ORDER BY position", (sweep,)
        ).fetchall()
        return [row[0] for row in rows]

    def sweeps(self) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM sweeps UNION SELECT DISTINCT sweep FROM sweep_runs ORDER BY 1"
        )
        return [row[0] for row in rows.fetchall()]

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """How many runs are in each status."""
        where, params = self._scope(keys)
        rows = self._db.execute(
            f"SELECT status, count(*) FROM runs WHERE 1=1{where} GROUP BY status", params
        ).fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    def runs(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every run as a dict (config and timings decoded), in registration order."""
        where, params = self._scope(keys)
        rows = self._db.execute(
            f"SELECT * FROM runs WHERE 1=1{where} ORDER BY created, rowid", params
        ).fetchall()
        decoded = []
        for row in rows:
            record = dict(row)
            record["config"] = json.loads(record["config"])
            record["timings"] = json.loads(record["timings"]) if record["timings"] else {}
            decoded.append(record)
        return decoded

    def results(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every result row, ordered by run then insertion."""
        where, params = self._scope(keys, "run_key")
        rows = self._db.execute(
            f"SELECT run_key, protocol, attack, eps, metric, value FROM results WHERE 1=1{where} "
            "ORDER BY run_key, rowid",
            params,
        ).fetchall()
        return [dict(row) for row in rows]

    def artifacts(self, key: str) -> dict[str, str]:
        rows = self._db.execute("SELECT kind, path FROM artifacts WHERE run_key=?", (key,))
        return {row[0]: row[1] for row in rows.fetchall()}
