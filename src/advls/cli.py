"""The ``advls`` command line: a thin layer over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

app = typer.Typer(
    help="Label-smoothing defences against adversarial examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.callback()
def main() -> None:
    """advls: smoothed losses, attacks and the Goibert & Dohmatob reproduction."""


@app.command()
def train(
    out: Annotated[
        Path,
        typer.Option(
            help="Run directory for checkpoints and metadata; "
            "an existing run of the same configuration resumes."
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(
            help="mnist, fashion-mnist, kmnist, cifar10, svhn, or a path to a .npz with x and y."
        ),
    ] = "mnist",
    model: Annotated[
        str, typer.Option(help="linear, mlp, lenet-mnist, lenet or resnet18.")
    ] = "lenet-mnist",
    loss: Annotated[
        str,
        typer.Option(
            help="ce, or a smoothing method: standard (sls), adversarial (als), "
            "boltzmann (bls), second_best (sbls)."
        ),
    ] = "adversarial",
    alpha: Annotated[
        float, typer.Option(help="Smoothing strength in [0, 1] (ignored for ce).")
    ] = 0.1,
    temperature: Annotated[float, typer.Option(help="Boltzmann temperature T > 0.")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Number of epochs.")] = 10,
    preset: Annotated[
        str,
        typer.Option(
            help="default (SGD+Nesterov, lr 0.05, cosine) or paper (the authors' plain SGD, "
            "lr 1e-4, batch 100, plateau). Explicit options override it."
        ),
    ] = "default",
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    schedule: Annotated[str | None, typer.Option(help="none, cosine, step or plateau.")] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="auto, none or crop-flip (auto: crop-flip for colour images except SVHN)."
        ),
    ] = None,
    train_subset: Annotated[
        int | None, typer.Option(help="Train on the first N training images only.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed gives identical weights on CPU.")
    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 autocast (CUDA only).")] = True,
    channels_last: Annotated[
        bool, typer.Option(help="channels_last memory format (CUDA only).")
    ] = True,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data directory (default: $ADVLS_DATA, then ~/.cache/advls)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a classifier with a smoothed loss (Algorithm 1) and print its clean test accuracy.

    Example:

        advls train --model lenet-mnist --loss adversarial --alpha 0.1 --epochs 2 --out runs/als
    """
    from advls.checkpoint import CheckpointError
    from advls.data import DataError
    from advls.train import NonFiniteLossError, TrainConfig
    from advls.train import train as run_training

    chosen = {
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "augment": augment,
        "train_subset": train_subset,
    }
    try:
        config = TrainConfig(
            dataset=dataset,
            model=model,
            loss=loss,
            alpha=alpha,
            temperature=temperature,
            epochs=epochs,
            preset=preset,
            seed=seed,
            **{k: v for k, v in chosen.items() if v is not None},
        )
    except ValidationError as error:
        _fail(_describe(error))
    try:
        result = run_training(
            config,
            out,
            data_dir=data_dir,
            device=device,
            amp=amp,
            channels_last=channels_last,
            progress=progress,
            log=console.print,
        )
    except (NonFiniteLossError, DataError, CheckpointError, ValueError) as error:
        _fail(str(error))
    summary = {"run_dir": str(out), **result.history[-1]}
    print(json.dumps(summary))
    console.print(
        f"[bold green]test accuracy {result.test_accuracy:.4f}[/] "
        f"({config.model}, {config.loss}, alpha={config.alpha}) -> {out}"
    )


def _describe(error: ValidationError) -> str:
    lines = [
        f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']} "
        f"(got {e.get('input')!r})"
        for e in error.errors()
    ]
    return "invalid options:\n  " + "\n  ".join(lines)
