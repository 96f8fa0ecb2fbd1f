"""The SQLite results store: runs, their metrics and their artifacts, in one file.

One row per run, keyed by the hash of its resolved config; metrics in a child table with
one row per (protocol, attack, eps, metric); artifact paths in another. The file is in WAL
mode, every change is one short ``BEGIN IMMEDIATE`` transaction, and only sweep drivers
write (workers return their metrics to the driver), so a driver killed at any moment leaves
the store consistent: a run is either finished with all its rows or not finished at all.

Several drivers may share a store. A driver *claims* pending runs in a transaction and owns
them while they run; the claim records the driver as ``host:pid:start-time``. A claim whose
owner died (same host: the process is gone, or its pid now names another process; otherwise
no heartbeat for ``lease`` seconds) is *stale*: status shows it as such, and the next claim
takes it back, so a killed sweep resumes and two sweeps never run the same run twice at once.

Nothing is trusted on opening: an empty file is refused (a truncated store must not pass
for a fresh one), and every store is verified (``PRAGMA quick_check``) before use; a
damaged one is named with the command that salvages what can be read (:func:`salvage`).
Readers open the file read-only (``mode=ro``), so they never create, initialise or change
it; SQLite may add its ``-wal`` and ``-shm`` index files beside a store, as any reader of a
WAL database does.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import shlex
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "Claim",
    "Result",
    "Salvage",
    "Store",
    "StoreError",
    "owner_id",
    "salvage",
    "salvage_command",
]

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")
#: What status shows for a run still marked running whose driver is gone.
STALE = "stale"
#: The first 16 bytes of every SQLite database file.
_MAGIC = b"SQLite format 3\x00"
_TABLES = ("runs", "sweeps", "sweep_runs", "results", "artifacts")

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
    """The store cannot be opened or used (wrong schema, not a store, damaged, bad request)."""


def salvage_command(path: str | os.PathLike[str]) -> str:
    """The command that copies what can be read of a damaged store into a new one."""
    path = Path(path)
    target = path.with_name(f"{path.stem}-salvaged{path.suffix or '.db'}")
    return f"advls sweep salvage --store {shlex.quote(str(path))} --out {shlex.quote(str(target))}"


def _damaged(path: Path, detail: str) -> StoreError:
    return StoreError(
        f"{path} is damaged ({detail}); copy what can be read into a new store with: "
        f"{salvage_command(path)}"
    )


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SQLite's errors on a damaged file into a :class:`StoreError` naming the store.

    Constraint violations (``IntegrityError``) are bugs of the caller and stay as they are.
    """

    @functools.wraps(method)
    def guarded(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as error:
            text = str(error)
            if "malformed" in text or "not a database" in text or "disk I/O" in text:
                raise _damaged(self.path, text) from None
            raise StoreError(f"{self.path}: {text}") from None

    return guarded


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


def _is_stale(owner: str | None, heartbeat: float | None, now: float, lease: float) -> bool:
    """Whether a running claim's driver is gone: dead here, or silent past its lease."""
    alive = _owner_alive(owner or "")
    return alive is False or (alive is None and now - (heartbeat or 0) > lease)


def _clean(value: float | None) -> float | None:
    # SQLite has no NaN; a metric that is undefined (no points attacked) is stored as NULL.
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class Store:
    """A results store file; open it with ``Store(path)``, close it (or use ``with``).

    ``readonly`` opens an existing store for reading only (``mode=ro``): nothing is created,
    initialised or written. Otherwise a missing file is created as a new store when
    ``create`` is true (only ``sweep run`` and ``reproduce`` create stores).

    Raises:
        StoreError: no store at ``path`` (and none may be created), an empty file, a file
            that is not an advls store or has another schema version, or a damaged store
            (the message names the command that salvages it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease: float = 3600.0,
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.lease = lease
        self.readonly = readonly
        self.owner = owner_id()
        exists = self._check_file(create=create and not readonly)
        try:
            self._db = sqlite3.connect(
                self._uri(exists), timeout=60.0, isolation_level=None, uri=True
            )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open {self.path}: {error}") from None
        try:
            self._db.row_factory = sqlite3.Row
            if exists:
                self._verify()
            if readonly:
                self._check_schema()
            else:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a killed process (only power loss drops commits).
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._init_schema()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable SQLite store: {error}") from None
        except BaseException:
            self._db.close()
            raise

    def _check_file(self, *, create: bool) -> bool:
        """Whether the store file exists; refuse what must not be opened or created."""
        path = self.path
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a store file")
        if not path.exists():
            if not create:
                raise StoreError(f"no store at {path}; run a sweep first (advls sweep run)")
            if not path.parent.is_dir():
                raise StoreError(f"cannot create {path}: {path.parent} does not exist")
            return False
        if not path.is_file():
            raise StoreError(f"{path} is not a regular file, so it is not a store")
        size = path.stat().st_size
        if size == 0:
            raise StoreError(
                f"{path} is empty (0 bytes): a truncated store, not a new one; restore it "
                "from a copy, or remove it to start a new store"
            )
        if not os.access(path, os.R_OK):
            raise StoreError(f"cannot read {path}: permission denied")
        # Not read here with open(): closing any descriptor of a file drops every POSIX lock
        # this process holds on it, the SQLite connections' included (a driver's heartbeat
        # opens a second store). Another process would then take itself for the last user,
        # checkpoint and delete the WAL under this one, and every later commit of this
        # process would go to the deleted file, lost. SQLite itself refuses a file that is
        # no database; only then is the header read, to say which it is (_verify).
        return True

    def _foreign_file(self) -> bool:
        """Whether the file lacks SQLite's header. Read only once SQLite has refused the file:
        no connection of this process can hold a lock on a file it could not open."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read(len(_MAGIC)) != _MAGIC
        except OSError:
            return False

    def _uri(self, exists: bool) -> str:
        """The file as an SQLite URI: read-only, read-write, or created (never implicitly)."""
        location = urllib.parse.quote(str(self.path.resolve()))
        if not self.readonly:
            return f"file:{location}?mode={'rw' if exists else 'rwc'}"
        shm = self.path.with_name(self.path.name + "-shm")
        if not os.access(self.path.parent, os.W_OK) and not shm.exists():
            # No writer can be using it (it would need the -shm file); a read-only folder
            # would otherwise refuse a reader of a WAL database.
            return f"file:{location}?mode=ro&immutable=1"
        return f"file:{location}?mode=ro"

    def _verify(self) -> None:
        """``PRAGMA quick_check``: every page of every table and index is readable."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as error:
            if self._foreign_file():
                raise StoreError(
                    f"{self.path} is not a usable SQLite store: not an SQLite database file"
                ) from None
            raise _damaged(self.path, str(error)) from None
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
            raise _damaged(self.path, f"{problems[0]}{more}")

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise StoreError(f"{self.path} is not an advls store (schema version 0)")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this advls reads version "
                f"{SCHEMA_VERSION}. Use a new store file or the advls that wrote it."
            )

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken at once so concurrent drivers queue, not deadlock."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only; this command does not write it")
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
    @_translated
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

    @_translated
    def record_sweep(self, name: str, spec: Mapping[str, Any]) -> None:
        """Keep a sweep's spec (the latest registration wins), so reports need only the store."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO sweeps (name, spec, updated) VALUES (?, ?, ?)",
                (name, json.dumps(spec, sort_keys=True), time.time()),
            )

    @_translated
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

    @_translated
    def reclaim_stale(self, keys: Sequence[str] | None = None) -> list[str]:
        """Put runs whose owner is dead back to pending; returns their keys."""
        where, params = self._scope(keys)
        now = time.time()
        with self._write() as db:
            rows = db.execute(
                f"SELECT key, owner, heartbeat FROM runs WHERE status='running'{where}", params
            ).fetchall()
            stale = [
                row["key"]
                for row in rows
                if _is_stale(row["owner"], row["heartbeat"], now, self.lease)
            ]
            db.executemany(
                "UPDATE runs SET status='pending', owner=NULL, heartbeat=NULL WHERE key=?",
                [(key,) for key in stale],
            )
        return stale

    @_translated
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

    @_translated
    def heartbeat(self) -> None:
        """Mark this driver's runs as still alive (for owners on other hosts)."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'",
                (time.time(), self.owner),
            )

    @_translated
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

    @_translated
    def fail(self, key: str, error: str, *, timings: Mapping[str, Any] | None = None) -> None:
        """Record that a run failed, with its error; the sweep goes on."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status='failed', finished=?, error=?, timings=?, owner=NULL "
                "WHERE key=? AND status!='done'",
                (time.time(), error, json.dumps(timings or {}, sort_keys=True), key),
            )

    @_translated
    def release(self, keys: Sequence[str] | None = None) -> None:
        """Give this driver's unfinished runs back (pending), e.g. on Ctrl-C."""
        where, params = self._scope(keys)
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status='pending', owner=NULL, heartbeat=NULL "
                f"WHERE owner=? AND status='running'{where}",
                [self.owner, *params],
            )

    @_translated
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
    @_translated
    def sweep_keys(self, sweep: str) -> list[str]:
        """The keys of a sweep's runs, in its spec's order."""
        rows = self._db.execute(
            "SELECT run_key FROM sweep_runs WHERE sweep=? ORDER BY position", (sweep,)
        ).fetchall()
        return [row[0] for row in rows]

    @_translated
    def sweeps(self) -> list[str]:
        """The names of the sweeps in the store."""
        rows = self._db.execute(
            "SELECT name FROM sweeps UNION SELECT DISTINCT sweep FROM sweep_runs ORDER BY 1"
        )
        return [row[0] for row in rows.fetchall()]

    @_translated
    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """How many runs are in each status."""
        where, params = self._scope(keys)
        rows = self._db.execute(
            f"SELECT status, count(*) FROM runs WHERE 1=1{where} GROUP BY status", params
        ).fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    @_translated
    def stale(self, keys: Sequence[str] | None = None) -> list[str]:
        """Keys of runs marked running whose driver is gone (changes nothing; see
        :meth:`reclaim_stale`)."""
        where, params = self._scope(keys)
        rows = self._db.execute(
            f"SELECT key, owner, heartbeat FROM runs WHERE status='running'{where}", params
        ).fetchall()
        now = time.time()
        return [
            row["key"] for row in rows if _is_stale(row["owner"], row["heartbeat"], now, self.lease)
        ]

    @_translated
    def live_counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """:meth:`counts`, with runs whose driver is gone counted as ``stale``, not running."""
        counts = self.counts(keys)
        stale = len(self.stale(keys))
        counts["running"] -= stale
        counts[STALE] = stale
        return counts

    @_translated
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

    @_translated
    def results(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every result row, ordered by run then insertion."""
        where, params = self._scope(keys, "run_key")
        rows = self._db.execute(
            f"SELECT run_key, protocol, attack, eps, metric, value FROM results WHERE 1=1{where} "
            "ORDER BY run_key, rowid",
            params,
        ).fetchall()
        return [dict(row) for row in rows]

    @_translated
    def artifacts(self, key: str) -> dict[str, str]:
        """A run's artifact paths by kind (``checkpoint``, ``evaluation``)."""
        rows = self._db.execute("SELECT kind, path FROM artifacts WHERE run_key=?", (key,))
        return {row[0]: row[1] for row in rows.fetchall()}


# ---------------------------------------------------------------------- salvage
@dataclass
class Salvage:
    """What :func:`salvage` copied: rows per table, rows it could not read, and the runs it
    set back to pending because some of their results may be lost."""

    copied: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)


def _readable_rows(db: sqlite3.Connection, table: str) -> tuple[list[tuple], int]:
    """Every row of ``table`` that can be read, by rowid, stepping over damaged pages.

    Returns the rows (rowid first) and how many gaps were stepped over. After a read fails
    the next readable rowid is searched by doubling steps, then narrowed by bisection.
    """
    rows: list[tuple] = []
    gaps = 0
    last = -(2**63)
    query = f"SELECT rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid"
    while True:
        try:
            for row in db.execute(query, (last,)):
                rows.append(tuple(row))
                last = row[0]
            return rows, gaps
        except sqlite3.DatabaseError:
            gaps += 1
        failed, step, found = last, 1, None
        while found is None and step < 2**62:
            probe = max(last, 0) + step
            try:
                db.execute(f"{query} LIMIT 1", (probe,)).fetchall()
                found = probe
            except sqlite3.DatabaseError:
                failed, step = probe, step * 2
        if found is None:
            return rows, gaps
        while found - failed > 1:  # the smallest start past the damage that reads
            middle = (failed + found) // 2
            try:
                db.execute(f"{query} LIMIT 1", (middle,)).fetchall()
                found = middle
            except sqlite3.DatabaseError:
                failed = middle
        last = found


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Salvage:
    """Copy what can be read of a (damaged) store ``source`` into a new store ``target``.

    ``source`` is only read. Rows on damaged pages are lost; everything else is copied. The
    copy keeps the store's promise that a finished run has all its results: a run that was
    running, or whose results border on lost rows (a run's results are written together, so
    lost rows belong to the runs beside them), or that has no results left, is set back to
    pending, and the next ``sweep run`` runs it again.

    Raises:
        StoreError: ``target`` exists, or nothing of ``source`` can be read.
    """
    source, target = Path(source), Path(target)
    if target.exists():
        raise StoreError(f"{target} exists; salvage writes a new store, choose another path")
    location = urllib.parse.quote(str(source.resolve()))
    try:
        db = sqlite3.connect(f"file:{location}?mode=ro", uri=True)
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise StoreError(f"nothing of {source} can be read ({error})") from None
    if version != SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"{source} has schema version {version}; salvage reads version {SCHEMA_VERSION}"
        )
    report = Salvage()
    tables: dict[str, list[tuple]] = {}
    try:
        for table in _TABLES:
            if table in names:
                tables[table], report.unreadable[table] = _readable_rows(db, table)
            else:
                tables[table], report.unreadable[table] = [], 1
    finally:
        db.close()

    results = tables["results"]
    suspect: set[str] = set()
    if report.unreadable["results"]:
        # Lost rows leave a gap in the rowids: the runs on either side of any gap (and the
        # first and last) may have lost some of theirs. A gap may also be an old retry's
        # deleted rows; re-running such a run costs time, never a result.
        for before, after in itertools.pairwise(results):
            if after[0] - before[0] > 1:
                suspect.update((before[1], after[1]))
        if results:
            suspect.update((results[0][1], results[-1][1]))
    with_results = {row[1] for row in results}
    runs = []
    for row in tables["runs"]:
        record = list(row[1:])
        key, status = record[0], record[4]
        if status == "running" or (
            status == "done" and (key in suspect or key not in with_results)
        ):
            record[4:7] = ["pending", None, None]  # status, owner, heartbeat
            if status == "done":
                report.reset.append(key)
        runs.append(record)
    known = {record[0] for record in runs}
    with Store(target) as store, store._write() as out:
        for table, rows in tables.items():
            values = runs if table == "runs" else [list(row[1:]) for row in rows]
            if table in ("sweep_runs",):
                values = [v for v in values if v[1] in known]
            elif table in ("results", "artifacts"):
                values = [v for v in values if v[0] in known]
            if values:
                marks = ", ".join("?" * len(values[0]))
                out.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", values)
            report.copied[table] = len(values)
        out.execute(
            "DELETE FROM results WHERE run_key IN (SELECT key FROM runs WHERE status!='done')"
        )
    return report
