"""``advls report`` and ``advls reproduce``: from a store, or from a suite's name, to a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from advls.cli.console import console, fail, interrupted, reported_errors
from advls.cli.execution import (
    EXECUTION_OPTIONS,
    Execution,
    RetryOption,
    runs_failed,
    sweep_progress,
)
from advls.cli.fields import with_options
from advls.cli.options import ProgressOption
from advls.cli.sweep import MaxRunsOption, opened_store
from advls.limits import DEFAULT_MAX_RUNS

__all__ = ["report", "reproduce"]


def _describe(files: Any, seconds: float) -> None:
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
    comes from the store, which is only read.

    Example: advls report --store runs/reproduce/mnist-quick/results.db --out report
    """
    from advls.outputs import check_output_dir
    from advls.report.build import build_report

    if not store.exists():
        fail(f"no store at {store}; run a sweep first (advls sweep run or advls reproduce)")
    with reported_errors():
        check_output_dir(out)
    if not 0 <= threshold <= 1:
        fail(f"--threshold must be in [0, 1], got {threshold}")
    if not theory:
        theory = sorted(p for p in (store.parent / "theory").glob("*") if p.is_dir())
    for folder in theory:
        if not folder.is_dir():
            fail(f"--theory {folder}: not a directory")
    if paper_tables is not None and not paper_tables.is_file():
        fail(f"--paper-tables {paper_tables}: no such file")
    started = time.perf_counter()
    with opened_store(store) as results, reported_errors():
        files = build_report(
            results,
            out,
            sweeps=sweep or None,
            paper_tables=paper_tables,
            theory_dirs=theory,
            threshold=threshold,
        )
    _describe(files, time.perf_counter() - started)


@with_options(EXECUTION_OPTIONS, after="out")
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
    *,
    retry_failed: RetryOption = False,
    theory: Annotated[
        bool, typer.Option(help="Also compute the triangular toy and logit squeezing.")
    ] = True,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the report goes (default: OUT/report).")
    ] = None,
    max_runs: MaxRunsOption = DEFAULT_MAX_RUNS,
    progress: ProgressOption = True,
    **execution: Any,
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
    paper-cifar-lenet under the strong protocol too (paper-mnist-audit also
    under autoattack, at no extra cost): run them with --out pointing at that
    suite's folder to reuse its checkpoints. certified-study
    brackets smoothed, PGD- and IBP-trained MNIST models between certified and
    attacked accuracy (several hours on 2 cores).

    Example: advls reproduce mnist-quick --jobs 2
    """
    from advls.reproduce import reproduce as run_suite
    from advls.suites import suite_path

    with reported_errors():
        settings = Execution(**execution).check()
        spec = suite_path(suite)
    target = out or Path("runs") / "reproduce" / spec.stem

    def bar(name: str, total: int, done: int) -> Any:
        return sweep_progress(name, total, done, progress)

    started = time.perf_counter()
    with reported_errors(RuntimeError):
        try:
            result = run_suite(
                suite,
                target,
                **settings.model_dump(),
                retry_failed=retry_failed,
                theory=theory,
                report_dir=report_dir,
                max_runs=max_runs,
                progress=bar,
                on_stage=lambda message: console.print(f"[bold]{spec.stem}[/]: {message}"),
            )
        except KeyboardInterrupt:
            interrupted("finished runs are stored; run the same command again to continue")
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
        runs_failed(counts["failed"], target / "results.db")
