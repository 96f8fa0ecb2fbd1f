"""``advls evaluate``: a checkpoint under the evaluation protocols, with the masking audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from advls.cli.console import console, reported_errors
from advls.cli.options import (
    POINTS_HELP,
    BatchSizeOption,
    DataDirOption,
    DeviceOption,
    check_points,
    load_points,
)

__all__ = ["evaluate"]


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


def _progress_factory(bar: Any) -> Callable[[str, int], Callable[[int], None]]:
    def start(label: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    return start


def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run directory of the trained model to evaluate.")
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
    """Evaluate a checkpoint under the paper, standard, strong and AutoAttack protocols, with
    the gradient-masking audit.

    Prints robust accuracy per attack and eps over all points (clean errors count as
    failures), the per-example worst case of each protocol, DeepFool/CW distances, and
    every masking check with its verdict and evidence. Exits 0 whatever the flags say.

    Examples:

        advls evaluate --checkpoint runs/als --protocol paper --protocol strong --surrogate runs/ce

        advls evaluate --checkpoint runs/als --eps 0.1,0.3 --n 500 --out results/als

        advls evaluate --checkpoint runs/als --protocol autoattack --eps 0.3
    """
    from rich.progress import Progress

    from advls.atomic import write_text_atomically
    from advls.checkpoint import load_model
    from advls.evaluate import (
        PROTOCOLS,
        check_eps_list,
        format_markdown,
        get_protocol,
        training_smoothing,
    )
    from advls.evaluate import evaluate as run_evaluation
    from advls.evaluate.inputs import check_l2_budgets
    from advls.train import resolve_device

    if show_protocols:
        print(json.dumps([p.describe() for p in PROTOCOLS.values()], indent=2))
        return
    with reported_errors():
        if checkpoint is None:
            raise ValueError("--checkpoint is required (a run directory written by advls train)")
        chosen = [get_protocol(name) for name in (protocol or ["strong"])]
        budgets = check_eps_list(_parse_numbers(eps, "--eps")) if eps else None
        l2 = check_l2_budgets(_parse_numbers(l2_budget, "--l2-budget")) if l2_budget else None
        check_points(points)
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
        images, labels = load_points(meta, split, points, data_dir)
        count = len(labels)
        with Progress(transient=True, disable=not progress, console=console) as bar:
            result = run_evaluation(
                model, images, labels, protocols=chosen,
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
    print(payload if as_json else tables)
    raised = ", ".join(flag.name for flag in result.raised) or "none"
    console.print(
        f"[bold]{count} points, {result.seconds:.0f} s[/]; gradient-masking flags raised: "
        f"[{'bold red' if result.raised else 'green'}]{raised}[/]"
        + (f"; written to {out}" if out is not None else "")
    )
