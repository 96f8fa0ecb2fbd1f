"""Square L2 against torchattacks' Square(norm='L2') on a trained lenet-mnist: rate and time.

Same model, same real MNIST test images (500 by default), L2 eps 2.0, at 1000 and 5000
search iterations: torchattacks' ``n_queries`` counts iterations, ours counts the clean pass
and the start too, so ours runs with ``queries = iterations + 2`` (both then make the same
forward passes, bar torchattacks' final scoring pass). Both use ``p_init = 0.8``, the margin
loss, one restart and seed 0; ``--no-rescale`` runs AutoAttack's ``resc_schedule=False``.
Samples are interleaved (the order rotates and reverses between rounds); reported are the
success rates and the median seconds over rounds.

``--before FILE`` also times the L-inf path (eps 0.3, 1000 queries) of a previous
``square.py`` against the current one, interleaved, and checks the results are identical.
The model is lenet-mnist trained for one epoch on 20000 images (about 98% clean), unless
``--checkpoint`` names a run directory.

    .venv/bin/python benchmarks/bench_square.py [--threads N] [--rounds R] [--points N]
        [--iterations [1000 5000 ...]] [--no-rescale] [--before OLD_SQUARE_PY] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from _timing import add_common_args, apply_threads, emit, interleaved, log, machine_info, median
from advls import data as datasets
from advls.attacks import ATTACKS, square

EPS_L2 = 2.0
EPS_LINF = 0.3
LINF_QUERIES = 1000
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_model(checkpoint: str | None, data_dir: str | Path) -> torch.nn.Module:
    """The checkpoint's model, or lenet-mnist trained for one epoch on 20000 images."""
    if checkpoint is not None:
        from advls.checkpoint import load_model as load_checkpoint

        model, _ = load_checkpoint(checkpoint)
    else:
        from advls.train import TrainConfig, train

        config = TrainConfig(
            dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=20000
        )
        with tempfile.TemporaryDirectory() as run:
            trained = train(
                config, Path(run) / "run", data_dir=data_dir, device="cpu", progress=False
            )
            model = trained.model
    return model.eval().requires_grad_(False)


def load_previous(path: str) -> Callable[..., object]:
    """The ``square`` attack of an older ``square.py``; the registry keeps the current one."""
    current = ATTACKS["square"]
    spec = importlib.util.spec_from_file_location("square_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ATTACKS["square"] = current
    return module.square


def success_rate(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(dim=1) != y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=3, warmup=0)
    parser.add_argument("--points", type=int, default=500, help="test images (500)")
    parser.add_argument("--iterations", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--no-rescale", action="store_true", help="resc_schedule=False")
    parser.add_argument("--before", default=None, help="an older square.py to time (L-inf)")
    parser.add_argument("--checkpoint", default=None, help="a run directory")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    import torchattacks

    data_dir = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    model = load_model(args.checkpoint, data_dir)
    test = datasets.load("mnist", "test", data_dir, download=False, progress=False)
    x = test.images[: args.points].float() / 255.0
    y = test.labels[: args.points]
    rescale = not args.no_rescale
    clean = 1.0 - success_rate(model, x, y)
    log(f"bench_square: {args.points} MNIST test images, clean accuracy {clean:.3f}")
    results: dict[str, dict[str, float]] = {}

    for iterations in args.iterations:
        rates: dict[str, float] = {}

        def ours(iterations: int = iterations, rates: dict[str, float] = rates) -> None:
            found = square(
                model, x, y, eps=EPS_L2, norm="l2", queries=iterations + 2,
                rescale_schedule=rescale, seed=0,
            )  # fmt: skip
            rates["ours"] = found.success_rate

        def theirs(iterations: int = iterations, rates: dict[str, float] = rates) -> None:
            attack = torchattacks.Square(
                model, norm="L2", eps=EPS_L2, n_queries=iterations, n_restarts=1, p_init=0.8,
                loss="margin", resc_schedule=rescale, seed=0,
            )  # fmt: skip
            with torch.random.fork_rng():  # it seeds the global RNG
                rates["torchattacks"] = success_rate(model, attack(x, y), y)

        times = interleaved(
            {"ours": ours, "torchattacks": theirs}, rounds=args.rounds, warmup=args.warmup
        )
        entry = {
            "ours_success": rates["ours"],
            "torchattacks_success": rates["torchattacks"],
            "ours_s": median(times["ours"]),
            "torchattacks_s": median(times["torchattacks"]),
        }
        results[f"l2_eps{EPS_L2}_{iterations}"] = entry
        log(
            f"  L2 {iterations} iterations: ours {entry['ours_success']:.3f} in "
            f"{entry['ours_s']:.1f} s, torchattacks {entry['torchattacks_success']:.3f} in "
            f"{entry['torchattacks_s']:.1f} s"
        )

    if args.before is not None:
        previous = load_previous(args.before)
        found: dict[str, torch.Tensor] = {}

        def run(attack: Callable[..., object], name: str) -> Callable[[], None]:
            def go() -> None:
                result = attack(model, x, y, eps=EPS_LINF, queries=LINF_QUERIES, seed=0)
                found[name] = result.x_adv  # type: ignore[attr-defined]

            return go

        times = interleaved(
            {"before": run(previous, "before"), "after": run(square, "after")},
            rounds=args.rounds,
            warmup=args.warmup,
        )
        entry = {
            "before_s": median(times["before"]),
            "after_s": median(times["after"]),
            "identical": float(torch.equal(found["before"], found["after"])),
            "success": success_rate(model, found["after"], y),
        }
        results[f"linf_eps{EPS_LINF}_{LINF_QUERIES}"] = entry
        log(
            f"  L-inf {LINF_QUERIES} queries: before {entry['before_s']:.2f} s, after "
            f"{entry['after_s']:.2f} s, identical {bool(entry['identical'])}"
        )

    given = {name: getattr(args, name) for name in ("rounds", "warmup", "points", "iterations")}
    model_name = args.checkpoint or "lenet-mnist, 1 epoch on 20000 images"
    settings = {**given, "eps_l2": EPS_L2, "rescale_schedule": rescale, "model": model_name}
    document = {"benchmark": "square", "description": __doc__.split("\n")[0]}
    emit({**document, "machine": machine_info(), "settings": settings, "results": results})


if __name__ == "__main__":
    main()
