"""The ``advls`` command line: a thin layer over the library."""

from __future__ import annotations

import json
import math
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
    defence: Annotated[
        str,
        typer.Option(help="Adversarial training: none, fgsm-at (Goodfellow) or pgd-at (Madry)."),
    ] = "none",
    defence_eps: Annotated[float, typer.Option(help="Adversarial-training L-inf budget.")] = 0.1,
    defence_beta: Annotated[
        float, typer.Option(help="fgsm-at: weight of the clean loss (1 - beta on FGSM inputs).")
    ] = 0.5,
    defence_steps: Annotated[int, typer.Option(help="pgd-at: PGD steps per batch.")] = 7,
    defence_step_size: Annotated[
        float | None, typer.Option(help="pgd-at: PGD step size (default 2.5 eps / steps).")
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
        "defence_step_size": defence_step_size,
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
            defence=defence,
            defence_eps=defence_eps,
            defence_beta=defence_beta,
            defence_steps=defence_steps,
            **{k: v for k, v in chosen.items() if v is not None},
        )
    except ValidationError as error:
        _fail(_describe(error))
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a directory")
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
    except (NonFiniteLossError, DataError, CheckpointError, ValueError, OSError) as error:
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


def _parse_params(pairs: list[str]) -> dict[str, object]:
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


def _use_training_loss(config: dict[str, object], trained: dict[str, object]) -> None:
    """``loss=smoothed``: the model's own training loss; for a CE-trained model that is CE."""
    from advls.evaluate import training_smoothing

    smoothing = training_smoothing(trained)
    if smoothing is None:
        config["loss"] = "ce"
    else:
        config["smoothing"] = smoothing


def _save_examples(path: Path, result, labels, config: dict[str, object]) -> None:
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


@app.command()
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
        float | None, typer.Option(help="Budget in [0, 1] pixel units (bounded attacks).")
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
        int, typer.Option("--n", help="Attack the first N points of the split.")
    ] = 1000,
    batch_size: Annotated[int, typer.Option(help="Points per attack batch.")] = 500,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Write the adversarial examples and per-point results (.safetensors)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Attack a trained model and print clean and robust accuracy (and distortions).

    Example:

        advls attack --checkpoint runs/als --attack bim --eps 0.1 --steps 10 --n 1000
    """
    from rich.progress import Progress

    from advls import data as datasets
    from advls.attacks import from_config
    from advls.attacks.runner import attack_dataset
    from advls.checkpoint import CheckpointError, load_model
    from advls.train import resolve_device

    config: dict[str, object] = {"name": name, "eps": eps, "steps": steps, "step_size": step_size}
    config = {k: v for k, v in config.items() if v is not None}
    if loss is not None:
        config["loss"] = loss
    if save is not None and (save.is_dir() or save.suffix != ".safetensors"):
        _fail(f"--save must name a .safetensors file, got {save}")
    try:
        config.update(_parse_params(param or []))
        target = resolve_device(device)
        model, meta = load_model(checkpoint, target)
        if config.get("loss") == "smoothed" and "smoothing" not in config:
            _use_training_loss(config, meta["config"])
        configured = from_config(config)
        if points < 1:
            raise ValueError(f"--n must be >= 1, got {points}")
        dataset = datasets.load(meta["config"]["dataset"], split, data_dir)
        count = min(points, len(dataset))
        images, labels = dataset.images[:count], dataset.labels[:count]
        with Progress(transient=True, disable=not progress, console=console) as bar:
            task = bar.add_task(f"{name}", total=count)
            summary, result = attack_dataset(
                configured, model, images, labels, batch_size=batch_size, device=target,
                on_batch=lambda n: bar.advance(task, n),
            )  # fmt: skip
        if save is not None:
            _save_examples(save, result, labels, config)
    except (CheckpointError, datasets.DataError, ValueError, OSError) as error:
        _fail(str(error))
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


def _parse_numbers(values: list[str], option: str) -> list[float]:
    """Repeatable options that also take comma-separated lists: ``--eps 0.1,0.2 --eps 0.3``."""
    numbers = []
    for value in values:
        for item in value.split(","):
            try:
                numbers.append(float(item))
            except ValueError:
                raise ValueError(f"{option} takes numbers, got {item.strip()!r}") from None
    return numbers


def _progress_factory(bar):
    def start(label: str, total: int):
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    return start


@app.command()
def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run directory of the trained model to evaluate.")
    ] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(
            help="paper, standard or strong (repeatable; default strong). Give paper and "
            "strong together to see the gap between them."
        ),
    ] = None,
    eps: Annotated[
        list[str] | None,
        typer.Option(
            help="L-inf budgets in (0, 1] pixel units, repeatable or comma-separated "
            "(default 0.1,0.2,0.3 for MNIST, 2/255,4/255,8/255 for colour images)."
        ),
    ] = None,
    surrogate: Annotated[
        Path | None,
        typer.Option(
            help="Run directory of a plainly trained twin: the strong protocol's transfer "
            "attack crafts on it (skipped without one)."
        ),
    ] = None,
    l2_budget: Annotated[
        list[str] | None,
        typer.Option(help="L2 budgets at which DeepFool/CW distances are read as accuracy."),
    ] = None,
    points: Annotated[
        int, typer.Option("--n", help="Evaluate the first N points of the split.")
    ] = 1000,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Points per attack batch.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the randomised attacks.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write evaluation.json and evaluation.md into this directory."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON result instead of the tables.")
    ] = False,
    show_protocols: Annotated[
        bool, typer.Option("--show-protocols", help="Print the protocols' attacks and exit.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per attack.")] = True,
) -> None:
    """Evaluate a checkpoint under the paper, standard and strong protocols, with the
    gradient-masking audit.

    Prints robust accuracy per attack and eps over all points (clean errors count as
    failures), the per-example worst case of each protocol, DeepFool/CW distances, and
    every masking check with its verdict and evidence. Exits 0 whatever the flags say.

    Examples:

        advls evaluate --checkpoint runs/als --protocol paper --protocol strong --surrogate runs/ce

        advls evaluate --checkpoint runs/als --eps 0.1,0.3 --n 500 --out results/als
    """
    from rich.progress import Progress

    from advls import data as datasets
    from advls.atomic import write_text_atomically
    from advls.checkpoint import CheckpointError, load_model
    from advls.evaluate import (
        PROTOCOLS,
        check_eps_list,
        format_markdown,
        get_protocol,
        training_smoothing,
    )
    from advls.evaluate import evaluate as run_evaluation
    from advls.train import resolve_device

    if show_protocols:
        print(json.dumps([p.describe() for p in PROTOCOLS.values()], indent=2))
        return
    try:
        if checkpoint is None:
            raise ValueError("--checkpoint is required (a run directory written by advls train)")
        chosen = [get_protocol(name) for name in (protocol or ["strong"])]
        budgets = check_eps_list(_parse_numbers(eps, "--eps")) if eps else None
        l2 = _parse_numbers(l2_budget, "--l2-budget") if l2_budget else None
        if points < 1:
            raise ValueError(f"--n must be >= 1, got {points}")
        if out is not None and out.exists() and not out.is_dir():
            raise ValueError(f"--out must be a directory, got the file {out}")
        target = resolve_device(device)
        model, meta = load_model(checkpoint, target)
        twin = None
        if surrogate is not None:
            twin, twin_meta = load_model(surrogate, target)
            ours, theirs = meta["model"]["num_classes"], twin_meta["model"]["num_classes"]
            if ours != theirs:
                raise ValueError(
                    f"the surrogate {surrogate} has {theirs} classes but {checkpoint} has "
                    f"{ours}: a transfer attack needs a model of the same task"
                )
        dataset = datasets.load(meta["config"]["dataset"], split, data_dir)
        count = min(points, len(dataset))
        with Progress(transient=True, disable=not progress, console=console) as bar:
            result = run_evaluation(
                model, dataset.images[:count], dataset.labels[:count], protocols=chosen,
                eps=budgets, l2_budgets=l2, smoothing=training_smoothing(meta["config"]),
                surrogate=twin, batch_size=batch_size, device=target, seed=seed,
                progress=_progress_factory(bar),
            )  # fmt: skip
        payload = result.to_json(checkpoint=str(checkpoint), surrogate=surrogate, split=split)
        title = f"{checkpoint} ({meta['config']['model']}, {meta['config']['loss']})"
        tables = format_markdown(result, title=title)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomically(out / "evaluation.json", payload + "\n")
            write_text_atomically(out / "evaluation.md", tables)
    except (CheckpointError, datasets.DataError, ValueError, OSError) as error:
        _fail(str(error))
    print(payload if as_json else tables)
    raised = ", ".join(flag.name for flag in result.raised) or "none"
    console.print(
        f"[bold]{count} points, {result.seconds:.0f} s[/]; gradient-masking flags raised: "
        f"[{'bold red' if result.raised else 'green'}]{raised}[/]"
        + (f"; written to {out}" if out is not None else "")
    )


@app.command()
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

    chosen = {
        "gammas": gamma, "alphas": alpha, "eps": eps, "methods": method,
    }  # fmt: skip
    try:
        run(
            **{k: v for k, v in chosen.items() if v},
            out_dir=out,
            figure_alpha=figure_alpha,
            figure_eps=figure_eps,
            mc_samples=mc_samples,
        )
    except (ValueError, OSError) as error:
        _fail(str(error))
    console.print(
        f"[bold green]triangular experiment written to {out}[/] (triangular.md, figures/)"
    )


@app.command()
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Logit squeezing and the gradient gap (paper §3.2) for trained checkpoints.

    Writes squeezing.json / squeezing.csv (margins, top probabilities, gradient gaps,
    first-order criterion vs FGSM per method and alpha) and Figures 2 a/b under --out.

    Example:

        advls analyze --checkpoint runs/ce --checkpoint runs/als-0.1 --checkpoint runs/als-0.3
    """
    from advls.checkpoint import CheckpointError
    from advls.data import DataError
    from advls.theory.squeezing import analyze as run_analysis
    from advls.train import resolve_device

    try:
        if points < 1:
            raise ValueError(f"--n must be >= 1, got {points}")
        result = run_analysis(
            checkpoint, out, data_dir=data_dir, points=points, split=split, eps=eps,
            device=resolve_device(device),
        )  # fmt: skip
    except (CheckpointError, DataError, ValueError, OSError) as error:
        _fail(str(error))
    console.print(
        f"[bold green]analysis written to {out}[/] ({', '.join(map(str, result['figures']))})"
    )


# After the other commands, for --help order.
from advls.report_cli import report, reproduce  # noqa: E402
from advls.sweep_cli import app as sweep_app  # noqa: E402

app.command()(reproduce)
app.command()(report)
app.add_typer(sweep_app, name="sweep")
