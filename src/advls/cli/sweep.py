"""``advls sweep run | status | export | salvage``: experiment grids from the command line.

Only ``sweep run`` creates a store, and only where no file exists; ``status``, ``export``
and ``run --dry-run`` open it read-only and change nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from advls.cli.console import console, fail, interrupted, reported_errors, stdout_console
from advls.cli.execution import (
    EXECUTION_OPTIONS,
    Execution,
    RetryOption,
    runs_failed,
    sweep_progress,
)
from advls.cli.fields import with_options
from advls.cli.options import ProgressOption
from advls.limits import DEFAULT_MAX_RUNS

if TYPE_CHECKING:
    from advls.store import Store
    from advls.sweep import RunSpec

__all__ = [
    "COMMANDS",
    "HELP",
    "ForceOption",
    "MaxRunsOption",
    "export",
    "opened_store",
    "run",
    "salvage",
    "status",
]

#: The help of the ``sweep`` group.
HELP = (
    "Run a grid of experiments from a YAML spec into a SQLite store, then inspect or export "
    "it. A killed sweep resumes where it stopped when run again."
)

StoreOption = Annotated[
    Path, typer.Option("--store", help="SQLite results file (sweep run creates it).")
]
ReadStoreOption = Annotated[Path, typer.Option("--store", help="SQLite results file.")]
MaxRunsOption = Annotated[
    int,
    typer.Option(
        "--max-runs",
        min=1,
        help="The most runs the spec may expand to; counted before any run is made.",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace an existing output file (never a store's).")
]


@contextlib.contextmanager
def opened_store(path: Path, *, readonly: bool = True) -> Iterator[Store]:
    """The store at ``path``, closed on leaving; one that cannot be opened is a clear error.

    Read-only by default: the file must exist, is verified, and is never changed. Only a
    writer (``readonly=False``, for ``sweep run``) may create a store, where no file is.
    """
    from advls.store import Store

    with reported_errors():
        store = Store(path, readonly=readonly, create=not readonly)
    with store, reported_errors():
        yield store


def _bar(done: int, total: int, width: int = 12) -> str:
    filled = round(width * done / total) if total else width
    return f"[green]{'━' * filled}[/][dim]{'━' * (width - filled)}[/] {done}/{total}"


def _status_table(store: Store, sweeps: list[str]) -> Table:
    """Counts per sweep; ``stale``: marked running, but their driver is gone."""
    table = Table(title=f"{store.path}")
    columns = ("sweep", "runs", "done", "running", "stale", "failed", "pending", "progress")
    for column in columns:
        # The sweep's name is what scripts and people look for: it never wraps.
        table.add_column(
            column,
            justify="left" if column in ("sweep", "progress") else "right",
            no_wrap=column == "sweep",
        )
    for sweep in sweeps:
        counts = store.live_counts(store.sweep_keys(sweep))
        total = sum(counts.values())
        table.add_row(
            sweep,
            str(total),
            str(counts["done"]),
            str(counts["running"]),
            f"[yellow]{counts['stale']}[/]" if counts["stale"] else "0",
            f"[red]{counts['failed']}[/]" if counts["failed"] else "0",
            str(counts["pending"]),
            _bar(counts["done"] + counts["failed"], total),
        )
    return table


def _runs_table(name: str, runs: list[RunSpec], store: Store | None) -> Table:
    """A sweep's runs in its spec's order, with their status in the store (``new`` where the
    store does not hold them, or there is no store yet)."""
    from advls.store import STALE

    keys = [r.key for r in runs]
    status = {}
    if store is not None:
        status = {record["key"]: record["status"] for record in store.runs(keys)}
        status.update(dict.fromkeys(store.stale(keys), STALE))
    table = Table(title=f"{name}: {len(runs)} runs")
    for column in ("key", "run", "status"):
        table.add_column(column)
    for run_spec in runs:
        table.add_row(run_spec.key, run_spec.name, status.get(run_spec.key, "new"))
    return table


@with_options(EXECUTION_OPTIONS, after="artifacts")
def run(
    spec: Annotated[Path, typer.Argument(help="The experiment spec (YAML); see configs/.")],
    store: StoreOption = Path("results.db"),
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="Where checkpoints and evaluation reports go (shared storage for a cluster); "
            "default: <store>-artifacts beside the store."
        ),
    ] = None,
    *,
    retry_failed: RetryOption = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the runs and their status; write nothing."),
    ] = False,
    max_runs: MaxRunsOption = DEFAULT_MAX_RUNS,
    progress: ProgressOption = True,
    **execution: Any,
) -> None:
    """Run every run of SPEC that the store has not finished.

    The spec is validated and every dataset it needs is checked before
    anything trains. Results are written as each run finishes; stop at any
    time (Ctrl-C or kill) and run the same command again to continue.
    Several `sweep run` processes may share one store. The store is created
    if no file is at --store; --dry-run writes nothing at all.

    Example: advls sweep run configs/mnist-quick.yaml --store results.db --jobs 2
    """
    from advls.sweep import check_data_available, load_spec, register, run_sweep

    with reported_errors():
        settings = Execution(**execution).check()
        sweep, runs = load_spec(spec, max_runs=max_runs)
        check_data_available(runs, settings.data_dir)

    if dry_run:
        if not store.exists():
            stdout_console().print(_runs_table(sweep.name, runs, None))
            return
        with opened_store(store) as existing:
            stdout_console().print(_runs_table(sweep.name, runs, existing))
        return

    with opened_store(store, readonly=False) as results:
        keys = register(results, sweep, runs)
        with reported_errors(RuntimeError):
            pool = settings.pool()

        counts = results.counts(keys)
        done = counts["done"] + counts["failed"]
        with sweep_progress(sweep.name, len(keys), done, progress) as on_event:
            try:
                summary = run_sweep(
                    results,
                    keys,
                    pool,
                    artifact_dir=artifacts or store.with_name(store.stem + "-artifacts"),
                    data_dir=settings.data_dir,
                    device=settings.device,
                    retry_failed=retry_failed,
                    on_event=on_event,
                )
            except KeyboardInterrupt:
                interrupted(
                    "finished runs are stored and runs in flight were given back; run the "
                    "same command again to continue"
                )
        stdout_console().print(_status_table(results, [sweep.name]))
    counts = summary.counts
    if counts["failed"]:
        runs_failed(counts["failed"], store)
    if counts["running"] or counts["pending"]:
        console.print(
            f"{counts['running']} run(s) are held by another driver and "
            f"{counts['pending']} are pending"
        )


def status(
    store: ReadStoreOption = Path("results.db"),
    sweep: Annotated[str | None, typer.Option(help="Only this sweep (its spec's name).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="List failed runs and errors.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh every second until no run is left.")
    ] = False,
) -> None:
    """How many runs of each sweep are done, running, stale, failed and pending.

    A stale run is marked running but its driver is gone (killed, or silent past its lease
    on another host); the next `sweep run` takes it back. The store is only read.
    """
    if not store.exists():
        fail(f"no store at {store}")
    with opened_store(store) as results:
        sweeps = results.sweeps()
        if sweep is not None:
            if sweep not in sweeps:
                known = ", ".join(sweeps) or "none"
                fail(f"the store has no sweep named {sweep!r} (known: {known})")
            sweeps = [sweep]
        out = stdout_console()
        if watch:
            with Live(_status_table(results, sweeps), console=out, refresh_per_second=2) as live:
                while True:
                    keys = [k for s in sweeps for k in results.sweep_keys(s)]
                    counts = results.live_counts(keys)
                    live.update(_status_table(results, sweeps))
                    if not counts["running"] and not counts["pending"]:
                        break
                    time.sleep(1.0)
        else:
            out.print(_status_table(results, sweeps))
        if failed:
            keys = [key for s in sweeps for key in results.sweep_keys(s)]
            table = Table(title="failed runs")
            for column in ("key", "run", "attempts", "error"):
                table.add_column(column)
            for record in results.runs(keys):
                if record["status"] == "failed":
                    table.add_row(
                        record["key"], record["name"], str(record["attempts"]), record["error"]
                    )
            out.print(table)


def export(
    store: ReadStoreOption = Path("results.db"),
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: the store's name + .csv/.parquet).")
    ] = None,
    format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    sweep: Annotated[str | None, typer.Option(help="Only this sweep (its spec's name).")] = None,
    force: ForceOption = False,
) -> None:
    """Write finished runs' results as one flat table: a row per metric, run settings as columns.

    Columns: run, name, dataset, model, loss, alpha, temperature, defence, epochs, seed
    (trained runs), factory, weights, weights_sha256, split, label (audited models; empty
    for trained runs), protocol, attack, eps, metric, value.

    The store is only read. --out is never the store, a file advls owns (a store, a run's
    checkpoint files) or a directory, and an existing file is replaced only with --force;
    the file is written whole or not at all.
    """
    from advls.outputs import check_output_file
    from advls.sweep.export import FORMATS
    from advls.sweep.export import export as write_table

    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not store.exists():
        fail(f"no store at {store}")
    target = out or store.with_suffix(f".{format}")
    with reported_errors():
        check_output_file(target, force=force, protected=[store])
    with opened_store(store) as results, reported_errors(RuntimeError):
        rows = write_table(results, target, format, sweep, force=force)  # type: ignore[arg-type]
    console.print(f"{rows} rows written to {target}")


def salvage(
    store: ReadStoreOption,
    out: Annotated[Path, typer.Option(help="The new store to write (must not exist).")],
) -> None:
    """Copy what can be read of a damaged store into a new store; the damaged one is only read.

    Rows on damaged pages are lost. A finished run whose results may have lost rows beside
    them, or that was running, is set back to pending, so `sweep run` with the new store runs
    it again. Then run each sweep's spec against the new store to restore what is missing.

    Example: advls sweep salvage --store results.db --out results-salvaged.db
    """
    from advls.outputs import check_output_file
    from advls.store import salvage as copy_readable

    if not store.is_file():
        fail(f"no store at {store}")
    with reported_errors():
        check_output_file(out, protected=[store])
        report = copy_readable(store, out)
    copied = ", ".join(f"{count} {table}" for table, count in report.copied.items())
    console.print(f"salvaged into {out}: {copied}")
    lost = [table for table, gaps in report.unreadable.items() if gaps]
    if lost:
        console.print(f"[yellow]rows lost[/] in: {', '.join(lost)}")
    if report.reset:
        console.print(f"{len(report.reset)} finished run(s) set back to pending, to run again")


#: The group's commands, in ``--help`` order.
COMMANDS = (run, status, export, salvage)
