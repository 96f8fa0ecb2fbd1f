"""What ``advls sweep run`` and ``advls reproduce`` share: how the runs execute, a progress
bar over them, and how a sweep with failed runs ends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import BaseModel, ConfigDict, Field

from advls.cli.console import console
from advls.cli.fields import field_options
from advls.cli.options import DATA_DIR_HELP

if TYPE_CHECKING:
    from advls.sweep.executors import Executor

__all__ = ["EXECUTION_OPTIONS", "Execution", "RetryOption", "runs_failed", "sweep_progress"]


class Execution(BaseModel):
    """Where and how a sweep's runs execute; :meth:`check` names a bad option."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    executor: str = Field(
        "local", description="local (this machine) or ray (a local Ray instance or a cluster)."
    )
    jobs: int | None = Field(
        None,
        description="Runs at once. local: 1 runs in this process, N > 1 in N worker processes; "
        "ray: default fills the cluster's CPUs.",
    )
    threads: int | None = Field(
        None,
        description="Torch threads per run (ray: CPUs each task declares). Default: cores / "
        "jobs locally, 1 on Ray.",
    )
    address: str | None = Field(
        None, description="ray: join a running cluster (auto, or ray://host:10001)."
    )
    gpus_per_run: float = Field(
        0.0, description="ray: GPUs each task declares (fractions share a GPU)."
    )
    device: str = Field(
        "auto", description="auto (CUDA when available), cpu or cuda[:N], for every run."
    )
    data_dir: Path | None = Field(None, description=DATA_DIR_HELP)

    def check(self) -> Execution:
        """Refuse settings that cannot work, naming the option; returns itself.

        Raises:
            ValueError: an unknown executor or device, a count below 1, negative GPUs, or
                ``--address`` without Ray.
        """
        if self.executor not in ("local", "ray"):
            raise ValueError(f"--executor must be local or ray, got {self.executor!r}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.address is not None and self.executor != "ray":
            raise ValueError("--address applies to --executor ray only")
        if self.gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    def pool(self) -> Executor:
        """The executor these settings describe, started.

        Raises:
            ValueError, RuntimeError: the executor cannot start (e.g. Ray is missing).
        """
        from advls.sweep import create

        return create(
            self.executor, jobs=self.jobs, threads=self.threads, address=self.address,
            gpus=self.gpus_per_run,
        )  # fmt: skip


#: The options of :class:`Execution`, for :func:`advls.cli.fields.with_options`.
EXECUTION_OPTIONS = field_options(Execution)

RetryOption = Annotated[
    bool, typer.Option("--retry-failed", help="Run the failed runs of this spec again.")
]


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


def runs_failed(count: int, store: Path) -> NoReturn:
    """End a sweep some of whose runs failed (exit code 1), saying how to see and retry them."""
    console.print(
        f"[red]{count} run(s) failed[/]; see `advls sweep status --store {store} --failed`, "
        "fix the cause and rerun with --retry-failed"
    )
    raise typer.Exit(code=1)
