"""``advls evaluate``: a checkpoint under the evaluation protocols, with the masking audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from advls.cli.console import console, reported_errors
from advls.cli.fields import describe_invalid, field_options, with_options
from advls.cli.options import (
    POINTS_HELP,
    BatchSizeOption,
    DataDirOption,
    DeviceOption,
    check_points,
)
from advls.sharding import Sharding

__all__ = ["evaluate"]

#: The options that spread one evaluation over workers (:class:`advls.sharding.Sharding`).
_SHARDING_OPTIONS = field_options(Sharding)


def _parse_numbers(values: list[str], option: str) -> list[float]:
    """Repeatable options that also take comma-separated lists and fractions:
    ``--eps 0.1,0.2 --eps 0.3``, ``--eps 8/255``."""
    numbers = []
    for value in values:
        for item in value.split(","):
            try:  # a fraction such as 8/255 reads as budgets are usually written
                top, _, bottom = item.partition("/")
                numbers.append(float(top) / float(bottom) if bottom else float(item))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"{option} takes numbers, got {item.strip()!r}") from None
    return numbers


def _progress_factory(bar: Any) -> Callable[[str, int], Callable[[int], None]]:
    def start(label: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    return start


def _numbers_tuple(value: str | None, option: str) -> tuple[float, ...] | None:
    return tuple(_parse_numbers([value], option)) if value is not None else None


@with_options(_SHARDING_OPTIONS, after="data_dir")
def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run directory of a model trained by advls train.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A model of your own instead of --checkpoint: PACKAGE.MODULE:FACTORY or "
            "path/to/file.py:FACTORY, a callable returning an nn.Module that takes "
            "(N, C, H, W) images in [0, 1] and returns logits (N, K).",
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--model-arg",
            help="KEY=VALUE keyword argument of the factory, repeatable; VALUE is read as "
            "YAML (18, 0.5, true, [16, 32]).",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Weights for --model: .safetensors, or a state dict saved with torch.save "
            "(read with weights_only=True: no code in it ever runs)."
        ),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option(
            help="Per-channel mean, comma-separated: --model is wrapped in (x - mean) / std, "
            "so budgets stay in pixel units. Omit when the model normalises inside."
        ),
    ] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, with --mean.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="mnist, fashion-mnist, kmnist, cifar10, svhn or a .npz file of x and y; "
            "required with --model (default: the checkpoint's dataset)."
        ),
    ] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(
            help="paper, standard, strong, autoattack (AutoAttack's standard version), "
            "autoattack-l2 (at the L2 budgets) or autoattack-rand (EOT, for randomized "
            "models); repeatable, default strong. Give paper and strong together to see the "
            "gap between them."
        ),
    ] = None,
    eps: Annotated[
        list[str] | None,
        typer.Option(
            help="L-inf budgets in (0, 1] pixel units, repeatable or comma-separated "
            "(default 0.1,0.2,0.3 for MNIST, 2/255,4/255,8/255 for colour images)."
        ),
    ] = None,
    certify: Annotated[
        str | None,
        typer.Option(
            help="Bound methods, comma-separated: ibp, crown-ibp, crown. Certified accuracy "
            "at every --eps beside the attacks, so each number is a bracket [certified, "
            "attacked]; a model of other layers than Linear, Conv2d, ReLU, pooling, "
            "Flatten, Dropout and BatchNorm is refused before any attack."
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
        typer.Option(
            help="L2 budgets: where DeepFool/CW distances are read as accuracy, and where "
            "autoattack-l2 attacks (default 1,1.5,2 for MNIST, 0.25,0.5,1 for colour images)."
        ),
    ] = None,
    points: Annotated[
        int | None, typer.Option("--n", help=f"Evaluate {POINTS_HELP}", show_default=False)
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    batch_size: BatchSizeOption = 500,
    seed: Annotated[int, typer.Option(help="Seed of the randomised attacks.")] = 0,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    *,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write evaluation.json and evaluation.md into this directory; a sharded "
            "evaluation also keeps each finished shard there, so the same command, run "
            "again after a kill, attacks only the shards that had not finished."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write the audit into this folder: audit.html (one self-contained page), "
            "audit.md, model_card.json (RobustBench's model_info shape) and evaluation.json."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON result instead of the tables.")
    ] = False,
    show_protocols: Annotated[
        bool, typer.Option("--show-protocols", help="Print the protocols' attacks and exit.")
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar per attack (per shard when sharded).")
    ] = True,
    **sharding: Any,
) -> None:
    """Evaluate a checkpoint, or any PyTorch model, under the paper, standard, strong and
    AutoAttack protocols, with the gradient-masking audit.

    Prints robust accuracy per attack and eps over all points (clean errors count as
    failures), the per-example worst case of each protocol, DeepFool/CW distances, with
    --certify the certified accuracy that brackets them from below, and every masking
    check with its verdict and evidence. --report writes the page a reviewer
    reads. Exits 0 whatever the flags say; 2 for any input it cannot use, before any work
    and with nothing written.

    --jobs, --shard-size, --shards or --executor ray spread the evaluation over workers:
    the points are cut into shards, each evaluated in its own process or Ray task and
    seeded from --seed and its index, and the per-example results merged, so 1, 2 or 40
    workers give the same numbers (the cut, not the workers, fixes them).

    Examples:

        advls evaluate --checkpoint runs/als --protocol paper --protocol strong --surrogate runs/ce

        advls evaluate --model cnn.py:net --weights cnn.safetensors --dataset mnist --report audit/

        advls evaluate --model nets:wrn --model-arg depth=28 --dataset cifar10 --protocol autoattack

        advls evaluate --checkpoint runs/als --eps 0.1,0.3 --n 500 --out results/als

        advls evaluate --checkpoint runs/als --protocol autoattack --jobs 2 --out results/als

        advls evaluate --model nets:wrn --dataset cifar10 --executor ray --gpus-per-shard 1

        advls evaluate --checkpoint runs/ibp --certify ibp,crown --eps 0.01,0.1
    """
    from rich.progress import Progress

    from advls.atomic import write_text_atomically
    from advls.audit import audit
    from advls.checkpoint import load_model
    from advls.evaluate import (
        PROTOCOLS,
        check_eps_list,
        format_markdown,
        get_protocol,
        training_smoothing,
    )
    from advls.evaluate.inputs import check_l2_budgets
    from advls.evaluate.run import check_certify_methods
    from advls.evaluate.sharded import check_gpus_per_shard
    from advls.external import ModelSource, parse_model_args
    from advls.outputs import check_output_dir
    from advls.train import resolve_device

    if show_protocols:
        print(json.dumps([p.describe() for p in PROTOCOLS.values()], indent=2))
        return
    with reported_errors():
        if (checkpoint is None) == (model is None):
            raise ValueError(
                "give --checkpoint (a run directory of advls train) or --model (a factory "
                "of your own), one of them"
            )
        if model is None and (model_arg or weights or mean or std):
            raise ValueError("--model-arg, --weights, --mean and --std go with --model")
        chosen = [get_protocol(name) for name in (protocol or ["strong"])]
        budgets = check_eps_list(_parse_numbers(eps, "--eps")) if eps else None
        methods = check_certify_methods(
            [item.strip() for item in certify.split(",") if item.strip()] if certify else []
        )
        l2 = check_l2_budgets(_parse_numbers(l2_budget, "--l2-budget")) if l2_budget else None
        check_points(points)
        try:
            spread = Sharding(**sharding)
        except ValidationError as invalid:
            raise ValueError(describe_invalid(invalid)) from None
        sharded = spread.executor == "ray" or any(
            value is not None for value in (spread.jobs, spread.shard_size, spread.shards)
        )
        if sharded and spread.shard_size is None and spread.shards is None:
            spread = spread.model_copy(update={"shard_size": batch_size})  # stated, not implied
        if sharded and spread.gpus_per_shard:
            if device == "cpu":
                raise ValueError("--gpus-per-shard runs shards on CUDA; drop --device cpu")
            check_gpus_per_shard(spread.gpus_per_shard, spread.executor, spread.address)
        for folder, option in ((out, "--out"), (report, "--report")):
            if folder is not None:
                check_output_dir(folder, option=option)
        # Shards on GPUs pick their device where they run; the driver stays on the CPU.
        target = resolve_device("cpu" if sharded and spread.gpus_per_shard else device)
        smoothing = None
        if checkpoint is not None:
            subject, meta = load_model(checkpoint, target)
            smoothing = training_smoothing(meta["config"])
            data = dataset or meta["config"]["dataset"]
            name = f"{checkpoint} ({meta['config']['model']}, {meta['config']['loss']})"
            source_words = ["--checkpoint", str(checkpoint)]
        else:
            if dataset is None:
                raise ValueError("--dataset is required with --model (a name or a .npz file)")
            subject = ModelSource(
                model, parse_model_args(model_arg or []), weights,
                _numbers_tuple(mean, "--mean"), _numbers_tuple(std, "--std"),
            )  # fmt: skip
            data, name, source_words = dataset, model, subject.command_args()
        twin = load_model(surrogate, target)[0] if surrogate is not None else None
        command = _reproducing_command(
            source_words, data, split, points, chosen, budgets, l2, surrogate, seed, report,
            spread if sharded else None, methods,
        )  # fmt: skip
        with Progress(transient=True, disable=not progress, console=console) as bar:
            result = audit(
                subject, data, split=split, n=points, data_dir=data_dir, protocols=chosen,
                eps=budgets, l2_budgets=l2, smoothing=smoothing, surrogate=twin,
                batch_size=batch_size, device=target, seed=seed, report=report, name=name,
                command=command, progress=_progress_factory(bar),
                sharding=spread if sharded else None, out=out if sharded else None,
                certify=methods,
            )  # fmt: skip
        payload = result.to_json(
            checkpoint=str(checkpoint) if checkpoint else None,
            model=subject.describe() if isinstance(subject, ModelSource) else None,
            dataset=data, surrogate=surrogate, split=split,
        )  # fmt: skip
        tables = format_markdown(result, title=name)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomically(out / "evaluation.json", payload + "\n")
            write_text_atomically(out / "evaluation.md", tables)
    print(payload if as_json else tables)
    raised = ", ".join(flag.name for flag in result.raised) or "none"
    written = [str(folder) for folder in (out, report) if folder is not None]
    console.print(
        f"[bold]{result.points} points, {result.seconds:.0f} s[/]; gradient-masking flags "
        f"raised: [{'bold red' if result.raised else 'green'}]{raised}[/]"
        + (f"; written to {' and '.join(written)}" if written else "")
    )


def _reproducing_command(
    source: list[str],
    data: str,
    split: str,
    points: int | None,
    protocols: list[Any],
    eps: tuple[float, ...] | None,
    l2: tuple[float, ...] | None,
    surrogate: Path | None,
    seed: int,
    report: Path | None,
    sharding: Any = None,
    certify: tuple[str, ...] = (),
) -> list[str]:
    """The ``advls evaluate`` command line that repeats this evaluation, every choice explicit
    but the defaults it took (so it reads as the user would type it)."""
    words = ["advls", "evaluate", *source, "--dataset", data, "--split", split]
    if points is not None:
        words += ["--n", str(points)]
    for chosen in protocols:
        words += ["--protocol", chosen.name]
    if eps:
        words += ["--eps", ",".join(f"{value:.10g}" for value in eps)]
    if l2:
        words += ["--l2-budget", ",".join(f"{value:.10g}" for value in l2)]
    if surrogate is not None:
        words += ["--surrogate", str(surrogate)]
    if certify:
        words += ["--certify", ",".join(certify)]
    words += ["--seed", str(seed)]
    if sharding is not None:  # the cut fixes the results; where the shards ran does not
        if sharding.shards is not None:
            words += ["--shards", str(sharding.shards)]
        else:
            words += ["--shard-size", str(sharding.shard_size)]
    if report is not None:
        words += ["--report", str(report)]
    return words
