"""One evaluation across many workers: the points cut into shards, each shard evaluated by
:func:`~advls.evaluate.evaluate` in a worker of its own (this process, local processes, or
Ray tasks), the per-example outcomes merged into one :class:`Evaluation`.

Results do not depend on how many workers run: the shards are fixed by the plan
(:func:`~advls.evaluate.shards.plan_shards`), each is seeded from the evaluation's seed and
its index, and merging is exact. With ``out``, every finished shard is kept on disk
(atomically, keyed by a fingerprint of the model, the points and the settings), so a killed
driver, run again, attacks only the shards that had not finished. A worker lost mid-shard is
retried (``retries``).

Example::

    from advls.evaluate import evaluate_sharded
    evaluation = evaluate_sharded(model, images, labels, protocols=["strong"],
                                  executor="local", jobs=2, shard_size=250, out="eval/")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from advls.evaluate.inputs import check_eps_list, check_l2_budgets
from advls.evaluate.masking import Thresholds
from advls.evaluate.protocols import Protocol, default_eps, default_l2_budgets, get_protocol
from advls.evaluate.results import Evaluation
from advls.evaluate.run import ProgressFactory, check_certify_methods, evaluate
from advls.evaluate.shards import (
    evaluation_fingerprint,
    load_shard,
    merge_evaluations,
    plan_shards,
    save_shard,
    shard_seed,
)
from advls.external import ModelSource, load_external_model
from advls.workers import POOLS, create_pool

__all__ = [
    "FromCheckpoint",
    "ModelRecipe",
    "build_model",
    "check_gpus_per_shard",
    "evaluate_sharded",
]

#: How workers get the model: the module itself (pickled to each worker; its class must be
#: importable there), a :class:`~advls.external.ModelSource`, a :class:`FromCheckpoint`, or
#: any picklable callable ``(device) -> nn.Module``.
ModelRecipe = Union[nn.Module, ModelSource, "FromCheckpoint", Callable[[torch.device], nn.Module]]

#: A worker lost mid-shard (killed, out of memory) is run again this often by default.
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class FromCheckpoint:
    """The model of an advls run directory, rebuilt in each worker."""

    run_dir: str

    def __call__(self, device: torch.device) -> nn.Module:
        """The run's model on ``device``, in eval mode."""
        from advls.checkpoint import load_model  # local: the reader is only needed here

        return load_model(self.run_dir, device)[0]


def build_model(recipe: ModelRecipe, device: torch.device) -> nn.Module:
    """The module a recipe describes, on ``device``."""
    if isinstance(recipe, nn.Module):
        return recipe.to(device)
    if isinstance(recipe, ModelSource):
        return load_external_model(recipe, device)
    if callable(recipe):
        built = recipe(device)
        if not isinstance(built, nn.Module):
            raise ValueError(f"the model recipe returned {type(built).__name__}, not an nn.Module")
        return built.to(device)
    raise ValueError(
        f"model must be an nn.Module, a ModelSource or a callable (device) -> nn.Module, "
        f"got {type(recipe).__name__}"
    )


def _as_module(recipe: ModelRecipe) -> nn.Module:
    """A module itself (left where it is), or a recipe's, built on the CPU."""
    return recipe if isinstance(recipe, nn.Module) else build_model(recipe, torch.device("cpu"))


@dataclass(frozen=True)
class _ShardJob:
    """What a worker needs for one shard; plain and picklable."""

    fingerprint: str
    index: int
    model: Any
    surrogate: Any
    images: Tensor
    labels: Tensor
    options: dict[str, Any]
    device: str


#: Per worker process: the last model built, so consecutive shards of one evaluation in the
#: same worker build it once.
_BUILT: dict[str, tuple[nn.Module, nn.Module | None]] = {}


def _evaluate_shard(job: _ShardJob) -> Evaluation:
    """One shard, in whichever worker runs it."""
    from advls.train import resolve_device  # local: the trainer's one rule for devices

    device = resolve_device(job.device)
    key = f"{job.fingerprint}:{device}"
    if key not in _BUILT:
        _BUILT.clear()
        surrogate = build_model(job.surrogate, device) if job.surrogate is not None else None
        _BUILT[key] = (build_model(job.model, device), surrogate)
    model, surrogate = _BUILT[key]
    return evaluate(
        model, job.images, job.labels, surrogate=surrogate, device=device, **job.options
    )


def check_gpus_per_shard(gpus: float, executor: str, address: str | None) -> None:
    """GPUs per shard are a number >= 0, asked of Ray, on a machine (or cluster) with CUDA.

    Raises:
        ValueError: otherwise, saying what to change.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not gpus >= 0:
        raise ValueError(f"gpus_per_shard must be a number >= 0, got {gpus!r}")
    if not gpus:
        return
    if executor != "ray":
        raise ValueError("gpus_per_shard applies to the ray executor (--executor ray)")
    if address is None and not torch.cuda.is_available():
        raise ValueError(
            f"gpus_per_shard={gpus:g} needs CUDA, and this machine has no CUDA device; "
            "drop --gpus-per-shard, or join a cluster with GPUs (--address)"
        )


def evaluate_sharded(
    model: ModelRecipe,
    images: Tensor,
    labels: Tensor,
    *,
    protocols: Sequence[str | Protocol] = ("strong",),
    eps: Sequence[float] | None = None,
    l2_budgets: Sequence[float] | None = None,
    smoothing: dict[str, Any] | None = None,
    surrogate: ModelRecipe | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checks: bool = True,
    thresholds: Thresholds | None = None,
    shard_size: int | None = None,
    shards: int | None = None,
    executor: str = "local",
    jobs: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    gpus_per_shard: float = 0.0,
    retries: int = DEFAULT_RETRIES,
    out: str | os.PathLike[str] | None = None,
    progress: ProgressFactory | None = None,
    certify: Sequence[str] = (),
) -> Evaluation:
    """:func:`~advls.evaluate.evaluate`, its points cut into shards that run in parallel.

    The evaluation's arguments mean what they mean there; ``model`` and ``surrogate`` may
    also be recipes (:data:`ModelRecipe`) that each worker builds its own copy from.

    Args:
        shard_size: points per shard (the last may be smaller); default ``batch_size``.
            Results depend on the plan, never on the workers: keep it to compare runs.
        shards: instead of ``shard_size``, this many shards of (nearly) equal size.
        executor: ``local`` (this process for one job, spawned processes for more) or
            ``ray`` (a local Ray instance, or the cluster at ``address``).
        jobs: shards at once (local default 1; Ray default: what the cluster's CPUs allow).
        threads: torch threads per shard, default 1 whatever the executor: on the CPU the
            thread count changes how matrix products round, so it is part of what fixes
            the results (and of the fingerprint of kept shards).
        address: Ray only: ``auto`` or ``ray://host:port``.
        gpus_per_shard: Ray only: GPUs each shard's task declares (needs CUDA).
        retries: how often a shard whose worker died is run again.
        out: a folder to keep finished shards in (``shards/<fingerprint>/``); run again with
            the same folder, only the shards that had not finished are evaluated.
        progress: ``progress(label, total)`` returns a callback given each shard's points.

    Returns:
        The merged evaluation; ``sharding`` records the plan, the shards computed and
        reused, the executor, and the seconds spent inside shards.

    Raises:
        ValueError: bad budgets, protocols, plan, executor, jobs or GPUs (nothing written).
    """
    started = time.perf_counter()
    chosen = tuple(get_protocol(protocol) for protocol in protocols)
    if images.dim() < 2 or len(images) != len(labels) or len(images) == 0:
        raise ValueError("images (N, ...) and labels (N,) must be non-empty and of equal length")
    if executor not in POOLS:
        raise ValueError(f"executor must be one of {', '.join(POOLS)}, got {executor!r}")
    threads = 1 if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    check_gpus_per_shard(gpus_per_shard, executor, address)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    plan = plan_shards(len(labels), shard_size=shard_size, shards=shards, default=batch_size)
    budgets = check_eps_list(eps if eps is not None else default_eps(images.shape[1:]))
    l2 = check_l2_budgets(
        l2_budgets if l2_budgets is not None else default_l2_budgets(images.shape[1:])
    )
    if out is not None:
        from advls.outputs import check_output_dir

        out = check_output_dir(out, option="--out")
    methods = check_certify_methods(certify)
    labels = labels.long()
    device_name = "cuda" if gpus_per_shard else str(device)

    # The driver builds recipes' models once, on the CPU, to fingerprint them.
    local_model = _as_module(model)
    local_surrogate = _as_module(surrogate) if surrogate is not None else None
    settings = {
        "protocols": [protocol.describe() for protocol in chosen],
        "eps": list(budgets), "l2_budgets": list(l2), "smoothing": smoothing,
        "batch_size": batch_size, "seed": seed, "checks": checks, "bounds": plan.bounds,
        "threads": threads, "certify": list(methods),
    }  # fmt: skip
    fingerprint = evaluation_fingerprint(local_model, images, labels, settings, local_surrogate)
    kept = Path(out) / "shards" / fingerprint[:20] if out is not None else None
    # In this process the module itself serves; elsewhere the recipe travels.
    inline = executor == "local" and (jobs or 1) == 1
    sent_model = local_model if inline or isinstance(model, nn.Module) else model
    sent_surrogate = local_surrogate if inline or isinstance(surrogate, nn.Module) else surrogate

    parts: dict[int, Evaluation] = {}
    ranges = plan.ranges()
    advance = progress(f"{plan.count} shards", plan.points) if progress else None
    if kept is not None:
        for index, (start, stop) in enumerate(ranges):
            found = load_shard(
                kept / f"shard-{index:05d}.safetensors", fingerprint=fingerprint, index=index,
                start=start, points=stop - start, protocols=chosen, eps=budgets, l2_budgets=l2,
            )  # fmt: skip
            if found is not None:
                parts[index] = found
                if advance:
                    advance(stop - start)
    reused = len(parts)
    pending = [index for index in range(plan.count) if index not in parts]
    worker_seconds = 0.0
    capacity = 0
    if pending:
        pool = create_pool(
            executor, jobs=jobs, threads=threads, address=address, gpus=gpus_per_shard,
            retries=retries,
        )  # fmt: skip
        capacity = pool.capacity
        try:
            queue = list(pending)
            running = 0
            while queue or running:
                while queue and running < pool.capacity:
                    index = queue.pop(0)
                    start, stop = ranges[index]
                    job = _ShardJob(
                        fingerprint, index, sent_model, sent_surrogate, images[start:stop],
                        labels[start:stop],
                        {"protocols": chosen, "eps": budgets, "l2_budgets": l2,
                         "smoothing": smoothing, "batch_size": batch_size,
                         "seed": shard_seed(seed, index), "checks": checks,
                         "certify": methods},
                        device_name,
                    )  # fmt: skip
                    pool.submit(index, _evaluate_shard, job)
                    running += 1
                for done in pool.wait(timeout=1.0):
                    running -= 1
                    index = int(done.key)
                    start, stop = ranges[index]
                    if not done.ok:
                        error = done.error
                        error.add_note(f"in shard {index} (points {start} to {stop - 1})")
                        raise error
                    part: Evaluation = done.value
                    worker_seconds += part.seconds
                    if kept is not None:
                        path = kept / f"shard-{index:05d}.safetensors"
                        save_shard(path, part, fingerprint=fingerprint, index=index, start=start)
                    parts[index] = part
                    if advance:
                        advance(stop - start)
        finally:
            pool.shutdown()
            _BUILT.clear()  # an inline pool's models are the caller's: hold none of them

    merged = merge_evaluations(
        [parts[index] for index in range(plan.count)], seed=seed, checks=checks,
        thresholds=thresholds,
    )  # fmt: skip
    merged.seconds = time.perf_counter() - started
    merged.sharding = {
        **plan.describe(),
        "executor": executor,
        "workers": capacity,
        "threads": threads,
        "computed": len(pending),
        "reused": reused,
        "worker_seconds": worker_seconds,
        "fingerprint": fingerprint,
        "seed": seed,
    }
    return merged
