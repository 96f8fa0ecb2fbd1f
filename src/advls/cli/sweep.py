"""``advls sweep run | status | export``: experiment grids from the command line."""

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

if TYPE_CHECKING:
    from advls.store import Store
    from advls.sweep import RunSpec

__all__ = ["HELP", "export", "opened_store", "run", "status"]

#: The help of the ``sweep`` group.
HELP = (
    "Run a grid of experiments from a YAML spec into a SQLite store, then inspect or export "
    "it. A killed sweep resumes where it stopped when run again."
)

StoreOption = Annotated[
    Path, typer.Option("--store", help="SQLite results file (created on first use).")
]


@contextlib.contextmanager
def opened_store(path: Path) -> Iterator[Store]:
    """The store at ``path``, closed on leaving; one that cannot be opened is a clear error."""
    from advls.store import Store

    with reported_errors():
        store = Store(path)
    with store:
        yield store


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return f"[green]{'━' * filled}[/][dim]{'━' * (width - filled)}[/] {done}/{total}"


def _status_table(store: Store, sweeps: list[str]) -> Table:
    table = Table(title=f"{store.path}")
    for column in ("sweep", "runs", "done", "running", "failed", "pending", "progress"):
        table.add_column(column, justify="left" if column in ("sweep", "progress") else "right")
    for sweep in sweeps:
        counts = store.counts(store.sweep_keys(sweep))
        total = sum(counts.values())
        table.add_row(
            sweep,
            str(total),
            str(counts["done"]),
            str(counts["running"]),
            f"[red]{counts['failed']}[/]" if counts["failed"] else "0",
            str(counts["pending"]),
            _bar(counts["done"] + counts["failed"], total),
        )
    return table


def _runs_table(name: str, runs: list[RunSpec], store: Store) -> Table:
    """A sweep's runs in its spec's order, with their status in the store."""
    status = {record["key"]: record["status"] for record in store.runs([r.key for r in runs])}
    table = Table(title=f"{name}: {len(runs)} runs")
    for column in ("key", "run", "status"):
        table.add_column(column)
    for run_spec in runs:
        table.add_row(run_spec.key, run_spec.name, status[run_spec.key])
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
        bool, typer.Option("--dry-run", help="List the runs and their status; run nothing.")
    ] = False,
    progress: ProgressOption = True,
    **execution: Any,
) -> None:
    """Run every run of SPEC that the store has not finished.

    The spec is validated and every dataset it needs is checked before
    anything trains. Results are written as each run finishes; stop at any
    time (Ctrl-C or kill) and run the same command again to continue.
    Several `sweep run` processes may share one store.

    Example: advls sweep run configs/mnist-quick.yaml --store results.db --jobs 2
    """
    from advls.sweep import check_data_available, load_spec, register, run_sweep

    with reported_errors():
        settings = Execution(**execution).check()
        sweep, runs = load_spec(spec)
        check_data_available(runs, settings.data_dir)

    with opened_store(store) as results:
        keys = register(results, sweep, runs)
        if dry_run:
            stdout_console().print(_runs_table(sweep.name, runs, results))
            return
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
    store: StoreOption = Path("results.db"),
    sweep: Annotated[str | None, typer.Option(help="Only this sweep (its spec's name).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="List failed runs and errors.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh every second until no run is left.")
    ] = False,
) -> None:
    """How many runs of each sweep are done, running, failed and pending."""
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
                    counts = results.counts([k for s in sweeps for k in results.sweep_keys(s)])
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
    store: StoreOption = Path("results.db"),
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: the store's name + .csv/.parquet).")
    ] = None,
    format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    sweep: Annotated[str | None, typer.Option(help="Only this sweep (its spec's name).")] = None,
) -> None:
    """Write finished runs' results as one flat table: a row per metric, run settings as columns.

    Columns: run, name, dataset, model, loss, alpha, temperature, defence, epochs, seed,
    protocol, attack, eps, metric, value.
    """
    from advls.sweep.export import FORMATS
    from advls.sweep.export import export as write_table

    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not store.exists():
        fail(f"no store at {store}")
    target = out or store.with_suffix(f".{format}")
    with opened_store(store) as results, reported_errors(RuntimeError):
        rows = write_table(results, target, format, sweep)  # type: ignore[arg-type]
    console.print(f"{rows} rows written to {target}")
