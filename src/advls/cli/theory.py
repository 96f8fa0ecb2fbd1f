"""``advls triangular`` and ``advls analyze``: the paper's section 3 experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advls.cli.console import console, reported_errors
from advls.cli.options import DataDirOption, DeviceOption, check_points

__all__ = ["analyze", "triangular"]


def triangular(
    gamma: Annotated[
        list[float] | None, typer.Option(help="P(Y=1) in [1/2, 2/3] (repeatable; default 0.6).")
    ] = None,
    alpha: Annotated[
        list[float] | None,
        typer.Option(help="Smoothing strengths for the table (repeatable; default 0.05-0.5)."),
    ] = None,
    eps: Annotated[
        list[float] | None,
        typer.Option(help="Attack sizes for the table (repeatable; default 0.1, 0.3, 0.5)."),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="Smoothing methods (repeatable; default adversarial, standard). With two "
            "classes standard, boltzmann and second_best coincide."
        ),
    ] = None,
    figure_alpha: Annotated[float, typer.Option(help="alpha drawn in Figure 1 a.")] = 0.1,
    figure_eps: Annotated[float, typer.Option(help="eps drawn in Figure 1 a.")] = 0.3,
    mc_samples: Annotated[
        int, typer.Option(help="Monte-Carlo training sample size (0 skips the check).")
    ] = 100_000,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/triangular"),
) -> None:
    """The paper's triangular experiment (§3.1), computed exactly and checked by simulation.

    Writes triangular.md (thresholds and accuracies of the Bayes, cross-entropy and smoothed
    classifiers), triangular.json and Figures 1 a/b under --out.
    """
    from advls.theory.triangular import run

    chosen = {"gammas": gamma, "alphas": alpha, "eps": eps, "methods": method}
    with reported_errors():
        run(
            **{k: v for k, v in chosen.items() if v},
            out_dir=out,
            figure_alpha=figure_alpha,
            figure_eps=figure_eps,
            mc_samples=mc_samples,
        )
    console.print(
        f"[bold green]triangular experiment written to {out}[/] (triangular.md, figures/)"
    )


def analyze(
    checkpoint: Annotated[
        list[Path],
        typer.Option(help="Run directories to compare (repeatable), e.g. one per alpha."),
    ],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("results/analysis"),
    points: Annotated[int, typer.Option("--n", help="Test points per checkpoint.")] = 1000,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    eps: Annotated[
        float, typer.Option(help="L-inf budget for the gradient-gap criterion and FGSM.")
    ] = 0.1,
    device: DeviceOption = "cpu",
    data_dir: DataDirOption = None,
) -> None:
    """Logit squeezing and the gradient gap (paper §3.2) for trained checkpoints.

    Writes squeezing.json / squeezing.csv (margins, top probabilities, gradient gaps,
    first-order criterion vs FGSM per method and alpha) and Figures 2 a/b under --out.

    Example:

        advls analyze --checkpoint runs/ce --checkpoint runs/als-0.1 --checkpoint runs/als-0.3
    """
    from advls.theory.squeezing import analyze as run_analysis
    from advls.train import resolve_device

    with reported_errors():
        check_points(points)
        result = run_analysis(
            checkpoint, out, data_dir=data_dir, points=points, split=split, eps=eps,
            device=resolve_device(device),
        )  # fmt: skip
    console.print(
        f"[bold green]analysis written to {out}[/] ({', '.join(map(str, result['figures']))})"
    )
