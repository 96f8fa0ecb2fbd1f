"""``advls train``: one training run, its options generated from :class:`advls.train.TrainConfig`.

The options are the model's fields (see :mod:`advls.cli.fields`), so a field added to the
config is an option at once, its help the field's description. Building them imports torch,
so :func:`command` runs only when ``train`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperCommand

from advls.cli.console import console, fail, help_text, reported_errors
from advls.cli.fields import describe_invalid, field_options, with_options
from advls.cli.options import DataDirOption, DeviceOption, ProgressOption

__all__ = ["command", "train"]


def train(
    out: Annotated[
        Path,
        typer.Option(
            help="Run directory for checkpoints and metadata; "
            "an existing run of the same configuration resumes. One process writes it at a time."
        ),
    ],
    *,
    device: DeviceOption = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 autocast (CUDA only).")] = True,
    channels_last: Annotated[
        bool, typer.Option(help="channels_last memory format (CUDA only).")
    ] = True,
    data_dir: DataDirOption = None,
    progress: ProgressOption = True,
    resume_from_last_good: Annotated[
        bool,
        typer.Option(
            "--resume-from-last-good",
            help="When the run's last checkpoint is damaged, resume from the last intact "
            "epoch (the error names it) and train on from there.",
        ),
    ] = False,
    **fields: Any,
) -> None:
    """Train a classifier with a smoothed loss (Algorithm 1) and print its clean test accuracy.

    Example:

        advls train --model lenet-mnist --loss adversarial --alpha 0.1 --epochs 2 --out runs/als
    """
    from advls.train import TrainConfig
    from advls.train import train as run_training

    try:
        config = TrainConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        fail(describe_invalid(error))
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    with reported_errors():
        result = run_training(
            config,
            out,
            data_dir=data_dir,
            device=device,
            amp=amp,
            channels_last=channels_last,
            progress=progress,
            log=console.print,
            resume_from_last_good=resume_from_last_good,
        )
    summary = {"run_dir": str(out), **result.history[-1]}
    print(json.dumps(summary))
    console.print(
        f"[bold green]test accuracy {result.test_accuracy:.4f}[/] "
        f"({config.model}, {config.loss}, alpha={config.alpha}) -> {out}"
    )


def command() -> TyperCommand:
    """``advls train`` with an option per TrainConfig field (imports torch to read them).

    The fields a preset fills in default to unset, so that the preset, not the option,
    decides them unless the option is given.
    """
    from advls.train import PRESETS, TrainConfig

    preset_fields = {field for preset in PRESETS.values() for field in preset}
    options = field_options(TrainConfig, unset=preset_fields)
    single = typer.Typer(add_completion=False)
    single.command(help=help_text(train.__doc__ or ""))(with_options(options, after="out")(train))
    built = typer.main.get_command(single)
    assert isinstance(built, TyperCommand)  # one command and no callback: not a group
    return built
