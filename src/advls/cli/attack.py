"""``advls attack``: one attack on a trained model, with its accuracies and distortions."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from advls.cli.console import console, fail, reported_errors
from advls.cli.options import (
    POINTS_HELP,
    BatchSizeOption,
    DataDirOption,
    DeviceOption,
    ProgressOption,
    check_points,
    load_points,
)

__all__ = ["attack"]


def _parse_params(pairs: list[str]) -> dict[str, object]:
    """``--param KEY=VALUE`` pairs as a dict, each value read as YAML (``restarts=5`` -> 5).

    Raises:
        ValueError: a pair without ``=`` or a value that is not valid YAML.
    """
    import yaml

    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key.strip().replace("-", "_")] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"--param {pair!r}: the value is not valid YAML ({error})") from None
    return params


def _check_budget(config: dict[str, object]) -> None:
    """The attack's budget by the evaluation's rule for its norm, before anything loads; a
    parameter the attack needs and was not given is named (not a TypeError mid-run).

    Raises:
        ValueError: a budget outside the rule, or a required parameter missing.
    """
    from advls.attacks import ATTACKS, NORMS
    from advls.attacks.core import keyword_parameters
    from advls.evaluate.inputs import check_eps, check_l2_budget

    name = config["name"]
    if name not in ATTACKS:
        return  # from_config names the attacks there are
    required = [
        p.name
        for p in keyword_parameters(ATTACKS[name])
        if p.default is inspect.Parameter.empty and p.name not in config
    ]
    norms = NORMS.get(name)
    norm = config.get("norm", norms[0] if norms else "linf")
    if "eps" in required:
        kind = (
            "an L2 budget > 0"
            if norm == "l2"
            else "L-inf, in (0, 1] pixel units; with --param norm=l2 an L2 budget > 0"
        )
        fail(
            f"--eps is required: {name} is a bounded attack; give its budget, e.g. "
            f"--eps 0.1 ({kind})"
        )
    if required:
        listed = ", ".join(required)
        raise ValueError(f"attack {name!r} needs {listed}: give each with --param NAME=VALUE")
    if norms is None or config.get("eps") is None:
        return  # no budget, or one the attack passes on (a transfer attack's) and checks
    (check_l2_budget if norm == "l2" else check_eps)(config["eps"])


def _use_training_loss(config: dict[str, object], trained: dict[str, object]) -> None:
    """``loss=smoothed``: the model's own training loss; for a CE-trained model that is CE."""
    from advls.evaluate import training_smoothing

    smoothing = training_smoothing(trained)
    if smoothing is None:
        config["loss"] = "ce"
    else:
        config["smoothing"] = smoothing


def _save_examples(path: Path, result: Any, labels: Any, config: dict[str, object]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "x_adv": result.x_adv.contiguous(),
        "labels": labels.contiguous(),
        "success": result.success.contiguous(),
        "l2": result.l2.contiguous(),
        "linf": result.linf.contiguous(),
    }
    try:
        save_file(tensors, path, metadata={"attack": json.dumps(config, default=str)})
    except SafetensorError as error:
        raise OSError(f"cannot write {path}: {error}") from None


def attack(
    checkpoint: Annotated[Path, typer.Option(help="Run directory of a trained model.")],
    name: Annotated[
        str,
        typer.Option(
            "--attack",
            help="fgsm, bim, pgd, apgd, square, deepfool or cw_l2 "
            "(transfer attacks: advls evaluate --surrogate).",
        ),
    ] = "fgsm",
    eps: Annotated[
        float | None,
        typer.Option(
            help="Budget of a bounded attack (fgsm, bim, pgd, apgd, square; fgm in L2), which "
            "needs one: L-inf in (0, 1] pixel units, or an L2 budget > 0 with --param norm=l2."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Iterations.")] = None,
    step_size: Annotated[float | None, typer.Option(help="Step size (bim, pgd).")] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="Gradient attacks: ce, margin, dlr, or smoothed (the model's own training "
            "loss, as the paper's authors evaluated)."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Any other attack parameter as KEY=VALUE (repeatable), e.g. restarts=5."),
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split to attack.")] = "test",
    points: Annotated[
        int | None, typer.Option("--n", help=f"Attack {POINTS_HELP}", show_default=False)
    ] = None,
    batch_size: BatchSizeOption = 500,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Write the adversarial examples and per-point results (.safetensors)."),
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Attack a trained model and print clean and robust accuracy (and distortions).

    Example:

        advls attack --checkpoint runs/als --attack bim --eps 0.1 --steps 10 --n 1000
    """
    from rich.progress import Progress

    from advls.attacks import from_config
    from advls.checkpoint import load_model
    from advls.evaluate import attack_dataset
    from advls.train import resolve_device

    config: dict[str, object] = {"name": name, "eps": eps, "steps": steps, "step_size": step_size}
    config = {k: v for k, v in config.items() if v is not None}
    if loss is not None:
        config["loss"] = loss
    if save is not None and (save.is_dir() or save.suffix != ".safetensors"):
        fail(f"--save must name a .safetensors file, got {save}")
    with reported_errors():
        config.update(_parse_params(param or []))
        _check_budget(config)
        check_points(points)
        target = resolve_device(device)
        model, meta = load_model(checkpoint, target)
        if config.get("loss") == "smoothed" and "smoothing" not in config:
            _use_training_loss(config, meta["config"])
        configured = from_config(config)
        images, labels = load_points(meta, split, points, data_dir)
        count = len(labels)
        with Progress(transient=True, disable=not progress, console=console) as bar:
            task = bar.add_task(f"{name}", total=count)
            summary, result = attack_dataset(
                configured, model, images, labels, batch_size=batch_size, device=target,
                on_batch=lambda n: bar.advance(task, n),
            )  # fmt: skip
        if save is not None:
            _save_examples(save, result, labels, config)
    # NaN (e.g. no successful perturbation to take a median of) is not JSON: write null.
    metrics = {k: (v if math.isfinite(v) else None) for k, v in summary.as_dict().items()}
    report = {"checkpoint": str(checkpoint), "attack": config, **metrics}
    print(json.dumps(report, default=str, allow_nan=False))
    settings = json.dumps({k: v for k, v in config.items() if k != "name"}, default=str)
    console.print(
        f"[bold]{name}[/] {settings}  clean {summary.clean_accuracy:.4f}  "
        f"robust {summary.robust_accuracy:.4f}  "
        f"success {summary.success_rate:.4f}  median L2 {summary.median_l2:.4f}  "
        f"({summary.points} points, {summary.seconds:.1f} s)"
    )
