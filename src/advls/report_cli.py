"""``advls report`` and ``advls reproduce``: from a store, or from a suite's name, to a report.

Kept outside :mod:`advls.report` so that `advls --help` does not import torch or matplotlib.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from advls.sweep_cli import (
    AddressOption,
    DataDirOption,
    DeviceOption,
    ExecutorOption,
    GpusOption,
    JobsOption,
    RetryOption,
    ThreadsOption,
    _fail,
    check_execution,
    console,
    sweep_progress,
)

__all__ = ["report", "reproduce"]


def _describe(files, seconds: float) -> None:
    console.print(
        f"[bold green]report written[/] in {seconds:.0f} s: [bold]{files.html}[/] "
        f"(also {files.markdown.name}, {len(files.tables)} tables, {len(files.figures)} figures)"
    )
    claims = files.claims
    if not claims.empty:
        verdicts = claims["verdict"].value_counts()
        console.print(
            "verdict on the paper's claims, per set-up and attack: "
            + ", ".join(f"{verdicts.get(v, 0)} {v}" for v in ("holds", "partly", "fails", "tied"))
        )


def report(
    store: Annotated[Path, typer.Option("--store", help="The SQLite results file.")] = Path(
        "results.db"
    ),
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("report"),
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="Only this sweep (its spec's name; repeatable). Default: all."),
    ] = None,
    paper_tables: Annotated[
        Path | None,
        typer.Option(help="The paper's tables (CSV); default: the copy shipped with advls."),
    ] = None,
    theory: Annotated[
        list[Path] | None,
        typer.Option(
            help="Output folder of `advls triangular` or `advls analyze` whose figures to "
            "include (repeatable). Default: the theory/ folders `advls reproduce` left beside "
            "the store."
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Highlight cells that differ from the paper by more.")
    ] = 0.05,
) -> None:
    """Tables, figures, the paper comparison, the audit and a verdict, from a store.

    Writes under --out: report.html (one self-contained page that opens
    offline), report.md, tables/ (Markdown, CSV with exact values, LaTeX) and
    figures/ (PNG and PDF). Nothing is trained or attacked: every number
    comes from the store.

    Example: advls report --store runs/reproduce/mnist-quick/results.db --out report
    """
    from advls.report.build import build_report
    from advls.store import Store, StoreError

    if not store.exists():
        _fail(f"no store at {store}; run a sweep first (advls sweep run or advls reproduce)")
    if not 0 <= threshold <= 1:
        _fail(f"--threshold must be in [0, 1], got {threshold}")
    if not theory:
        theory = sorted(p for p in (store.parent / "theory").glob("*") if p.is_dir())
    for folder in theory:
        if not folder.is_dir():
            _fail(f"--theory {folder}: not a directory")
    if paper_tables is not None and not paper_tables.is_file():
        _fail(f"--paper-tables {paper_tables}: no such file")
    started = time.perf_counter()
    try:
        with Store(store) as results:
            files = build_report(
                results,
                out,
                sweeps=sweep or None,
                paper_tables=paper_tables,
                theory_dirs=theory,
                threshold=threshold,
            )
    except (StoreError, ValueError, OSError) as error:
        _fail(str(error))
    _describe(files, time.perf_counter() - started)


def reproduce(
    suite: Annotated[
        str,
        typer.Argument(
            help="A shipped suite (mnist-quick, paper-mnist, paper-mnist-audit, "
            "paper-cifar-lenet, paper-cifar-lenet-audit, paper-cifar-resnet, paper-svhn) or "
            "a spec file (.yaml)."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: runs/reproduce/SUITE).")
    ] = None,
    executor: ExecutorOption = "local",
    jobs: JobsOption = None,
    threads: ThreadsOption = None,
    address: AddressOption = None,
    gpus_per_run: GpusOption = 0.0,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    retry_failed: RetryOption = False,
    theory: Annotated[
        bool, typer.Option(help="Also compute the triangular toy and logit squeezing.")
    ] = True,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the report goes (default: OUT/report).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Reproduce the paper's experiments: train, attack, and write the report.

    Runs every run of SUITE that OUT/results.db has not finished (a killed
    run resumes; a finished suite trains nothing and only re-renders), then
    writes OUT/report/report.html: the paper's tables and figures, the
    side-by-side with the paper's numbers, the audit and a verdict on the
    paper's claims.

    Suites: mnist-quick (minutes on a laptop CPU), paper-mnist (about half
    an hour on 2 cores), paper-cifar-lenet, paper-cifar-resnet (sized for a
    GPU), paper-svhn (needs SVHN's train_32x32.mat and test_32x32.mat in the
    data directory). The -audit suites evaluate the models of paper-mnist and
    paper-cifar-lenet under the strong protocol too: run them with --out
    pointing at that suite's folder to reuse its checkpoints.

    Example: advls reproduce mnist-quick --jobs 2
    """
    from advls.data import DataError
    from advls.reproduce import reproduce as run_suite
    from advls.store import StoreError
    from advls.suites import suite_path

    try:
        check_execution(executor, jobs, threads, address, gpus_per_run, device)
        spec = suite_path(suite)
    except ValueError as error:
        _fail(str(error))
    target = out or Path("runs") / "reproduce" / spec.stem

    def bar(name: str, total: int, done: int):
        return sweep_progress(name, total, done, progress)

    started = time.perf_counter()
    try:
        result = run_suite(
            suite,
            target,
            executor=executor,
            jobs=jobs,
            threads=threads,
            address=address,
            gpus_per_run=gpus_per_run,
            device=device,
            data_dir=data_dir,
            retry_failed=retry_failed,
            theory=theory,
            report_dir=report_dir,
            progress=bar,
            on_stage=lambda message: console.print(f"[bold]{spec.stem}[/]: {message}"),
        )
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: finished runs are stored; run the same command again "
            "to continue"
        )
        raise typer.Exit(code=130) from None
    except (DataError, StoreError, ValueError, RuntimeError, OSError) as error:
        _fail(str(error))
    seconds = time.perf_counter() - started
    counts = result.counts
    console.print(
        f"[bold]{result.suite}[/]: {counts['done']} of {sum(counts.values())} runs done "
        f"({len(result.executed)} run now, {counts['failed']} failed) in {seconds:.0f} s"
    )
    if result.report is not None:
        _describe(result.report, seconds)
        print(result.report.html)
    if counts["failed"]:
        console.print(
            f"[red]{counts['failed']} run(s) failed[/]; see `advls sweep status --store "
            f"{target / 'results.db'} --failed`, then rerun with --retry-failed"
        )
        raise typer.Exit(code=1)
