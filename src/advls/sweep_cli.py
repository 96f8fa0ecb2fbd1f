"""``advls sweep run | status | export``: experiment grids from the command line.

Kept outside :mod:`advls.sweep` so that `advls --help` does not import torch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

app = typer.Typer(
    help="Run a grid of experiments from a YAML spec into a SQLite store, then inspect or "
    "export it. A killed sweep resumes where it stopped when run again.",
    no_args_is_help=True,
)
console = Console(stderr=True)

StoreOption = Annotated[
    Path, typer.Option("--store", help="SQLite results file (created on first use).")
]

# Execution options, shared by `sweep run` and `reproduce`.
ExecutorOption = Annotated[
    str, typer.Option(help="local (this machine) or ray (a local Ray instance or a cluster).")
]
JobsOption = Annotated[
    int | None,
    typer.Option(
        help="Runs at once. local: 1 runs in this process, N > 1 in N worker processes; "
        "ray: default fills the cluster's CPUs."
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="Torch threads per run (ray: CPUs each task declares). Default: cores / jobs "
        "locally, 1 on Ray."
    ),
]
AddressOption = Annotated[
    str | None, typer.Option(help="ray: join a running cluster (auto, or ray://host:10001).")
]
GpusOption = Annotated[
    float, typer.Option(help="ray: GPUs each task declares (fractions share a GPU).")
]
DeviceOption = Annotated[
    str, typer.Option(help="auto (CUDA when available), cpu or cuda[:N], for every run.")
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Data directory (default: $ADVLS_DATA, ~/.cache/advls).")
]
RetryOption = Annotated[
    bool, typer.Option("--retry-failed", help="Run the failed runs of this spec again.")
]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return f"[green]{'━' * filled}[/][dim]{'━' * (width - filled)}[/] {done}/{total}"


def _status_table(store, sweeps: list[str]) -> Table:
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


def check_execution(
    executor: str,
    jobs: int | None,
    threads: int | None,
    address: str | None,
    gpus_per_run: float,
    device: str,
) -> None:
    """Reject executor options that cannot work, naming the option (shared with reproduce)."""
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor must be local or ray, got {executor!r}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if address is not None and executor != "ray":
        raise ValueError("--address applies to --executor ray only")
    if gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")


@contextlib.contextmanager
def sweep_progress(
    name: str, total: int, completed: int, enabled: bool = True
) -> Iterator[Callable[[str, str, str], None]]:
    """A progress bar over a sweep's runs; yields the driver's ``on_event`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
    )
    with Progress(*columns, console=console, disable=not enabled) as bar:
        task = bar.add_task(name, total=total, completed=completed, last="")

        def on_event(kind: str, run: str, detail: str) -> None:
            if kind == "start":
                bar.update(task, last=f"running {run}")
                return
            bar.advance(task)
            bar.update(task, last=f"{run}: {kind}")
            if kind == "failed":
                console.print(f"[red]failed[/] {run}: {detail}")

        yield on_event


def _open_store(path: Path):
    from advls.store import Store, StoreError

    try:
        return Store(path)
    except StoreError as error:
        _fail(str(error))


@app.command()
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
    executor: ExecutorOption = "local",
    jobs: JobsOption = None,
    threads: ThreadsOption = None,
    address: AddressOption = None,
    gpus_per_run: GpusOption = 0.0,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    retry_failed: RetryOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs and their status; run nothing.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run every run of SPEC that the store has not finished.

    The spec is validated and every dataset it needs is checked before
    anything trains. Results are written as each run finishes; stop at any
    time (Ctrl-C or kill) and run the same command again to continue.
    Several `sweep run` processes may share one store.

    Example: advls sweep run configs/mnist-quick.yaml --store results.db --jobs 2
    """
    from advls.data import DataError
    from advls.sweep import SpecError, check_data_available, create, load_spec, register, run_sweep

    try:
        check_execution(executor, jobs, threads, address, gpus_per_run, device)
        sweep, runs = load_spec(spec)
        check_data_available(runs, data_dir)
    except (SpecError, DataError, ValueError) as error:
        _fail(str(error))

    results = _open_store(store)
    keys = register(results, sweep, runs)
    if dry_run:
        table = Table(title=f"{sweep.name}: {len(runs)} runs")
        for column in ("key", "run", "status"):
            table.add_column(column)
        status = {run["key"]: run["status"] for run in results.runs(keys)}
        for run_spec in runs:
            table.add_row(run_spec.key, run_spec.name, status[run_spec.key])
        Console().print(table)
        return
    try:
        pool = create(executor, jobs=jobs, threads=threads, address=address, gpus=gpus_per_run)
    except (RuntimeError, ValueError) as error:
        _fail(str(error))

    counts = results.counts(keys)
    with sweep_progress(sweep.name, len(keys), counts["done"] + counts["failed"], progress) as (
        on_event
    ):
        try:
            summary = run_sweep(
                results,
                keys,
                pool,
                artifact_dir=artifacts or store.with_name(store.stem + "-artifacts"),
                data_dir=data_dir,
                device=device,
                retry_failed=retry_failed,
                on_event=on_event,
            )
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted[/]: finished runs are stored and runs in flight were given "
                "back; run the same command again to continue"
            )
            raise typer.Exit(code=130) from None
    Console().print(_status_table(results, [sweep.name]))
    counts = summary.counts
    if counts["failed"]:
        console.print(
            f"[red]{counts['failed']} run(s) failed[/]; see `advls sweep status --store {store} "
            "--failed`, fix the cause and rerun with --retry-failed"
        )
        raise typer.Exit(code=1)
    if counts["running"] or counts["pending"]:
        console.print(
            f"{counts['running']} run(s) are held by another driver and "
            f"{counts['pending']} are pending"
        )


@app.command()
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
        _fail(f"no store at {store}")
    results = _open_store(store)
    sweeps = results.sweeps()
    if sweep is not None:
        if sweep not in sweeps:
            _fail(f"the store has no sweep named {sweep!r} (known: {', '.join(sweeps) or 'none'})")
        sweeps = [sweep]
    out = Console()
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


@app.command()
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
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not store.exists():
        _fail(f"no store at {store}")
    target = out or store.with_suffix(f".{format}")
    try:
        rows = write_table(_open_store(store), target, format, sweep)  # type: ignore[arg-type]
    except (ValueError, RuntimeError, OSError) as error:
        _fail(str(error))
    console.print(f"{rows} rows written to {target}")
