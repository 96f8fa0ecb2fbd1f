"""One run of a sweep, as a worker executes it: train (or resume), evaluate, return metrics.

A worker never opens the store: :func:`execute_run` takes a plain :class:`Task` and returns
a plain :class:`Outcome` (both picklable, for process pools and Ray), and the driver writes
it. Checkpoints go to ``<artifact_dir>/train/<train_key>/``; runs that differ only in their
evaluation share that checkpoint, and a file lock keeps two workers from training the same
directory at once (e.g. a restarted driver while an orphaned task still runs).

An audit (a run of a ``model:`` spec) trains nothing: it checks that its files still hold
the bytes its key was computed from, loads the model with
:func:`advls.external.load_external_model`, checks it against the data as
:func:`advls.audit.audit` does, and is evaluated by the same step as a trained run.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advls import data as datasets
from advls.atomic import write_text_atomically
from advls.evaluate import (
    Evaluation,
    audit_records,
    evaluate,
    evaluate_sharded,
    training_smoothing,
)
from advls.evaluate.inputs import check_labels
from advls.external import check_model_io, load_external_model
from advls.store import Result
from advls.sweep.spec import AuditedModel, EvaluateSpec, canonical_train, train_key
from advls.train import TrainConfig, TrainResult, resolve_device, train

__all__ = ["Outcome", "Task", "evaluation_results", "execute_run", "twin_config"]


@dataclass(frozen=True)
class Task:
    """What a worker needs: the run's resolved config and where to put its files."""

    key: str
    train_key: str
    config: dict[str, Any]
    artifact_dir: str
    data_dir: str | None = None
    device: str = "auto"
    threads: int | None = None


@dataclass
class Outcome:
    """What a worker returns; ``error`` is set (and ``results`` empty) when the run failed."""

    key: str
    results: list[Result] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run finished without an error."""
        return self.error is None


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes or the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def twin_config(config: TrainConfig) -> TrainConfig:
    """The plainly trained twin of a run (same data and model, next seed) for transfer.

    Canonical, so that every run of a grid, defended or not, names the same twin.
    """
    twin = config.model_dump()
    twin.update(loss="ce", alpha=0.0, defence="none", seed=config.seed + 1)
    return TrainConfig.model_validate(canonical_train(twin))


def _train(config: TrainConfig, run_dir: Path, task: Task) -> TrainResult:
    with _exclusive(run_dir):
        return train(config, run_dir, data_dir=task.data_dir, device=task.device, progress=False)


def evaluation_results(evaluation: Evaluation) -> list[Result]:
    """An evaluation as store rows: per attack and budget, worst cases, L2 reads, the audit."""
    rows = [Result("clean", "clean", None, "accuracy", evaluation.clean_accuracy)]
    for outcome in evaluation.outcomes:
        label, protocol = outcome.spec.label, outcome.protocol
        rows.append(
            Result(protocol, label, outcome.eps, "robust_accuracy", outcome.robust_accuracy)
        )
        rows.append(Result(protocol, label, outcome.eps, "success_rate", outcome.success_rate))
        if not outcome.spec.bounded:
            rows.append(Result(protocol, label, None, "median_l2", outcome.median_l2))
            rows.append(Result(protocol, label, None, "mean_l2", outcome.mean_l2))
            rows.extend(
                Result(protocol, label, budget, "accuracy_at_l2", outcome.accuracy_at_l2(budget))
                for budget in evaluation.l2_budgets
            )
    for protocol in evaluation.protocol_names:
        rows.extend(
            Result(
                protocol, "worst_case", eps, "robust_accuracy", evaluation.worst_case(protocol, eps)
            )
            for eps in evaluation.budgets(protocol)  # an L2 protocol's are its L2 budgets
        )
    for proof in evaluation.certified:
        rows.append(
            Result(
                "certify", proof.method, proof.eps, "certified_accuracy", proof.certified_accuracy
            )
        )
    for eps in dict.fromkeys(proof.eps for proof in evaluation.certified):
        rows.append(
            Result("certify", "any", eps, "certified_accuracy", evaluation.certified_accuracy(eps))
        )
    if evaluation.checks is not None:
        rows.extend(Result("audit", *record) for record in audit_records(evaluation.checks))
    rows.extend(
        Result("audit", f"flag:{flag.name}", None, "raised", float(flag.raised))
        for flag in evaluation.flags
        if flag.checked
    )
    return rows


def _evaluation_spec(plan: dict[str, Any]) -> EvaluateSpec:
    """The stored evaluation as its spec (without what the store added to each protocol)."""
    return EvaluateSpec.model_validate(
        {
            **{k: v for k, v in plan.items() if k != "protocols"},
            "protocols": [
                {k: v for k, v in entry.items() if k != "resolved"} for entry in plan["protocols"]
            ],
        }
    )


def _evaluate(
    task: Task,
    outcome: Outcome,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    smoothing: dict[str, Any] | None,
    surrogate: nn.Module | None,
    device: torch.device,
) -> None:
    """The evaluation step of every run: the protocols on the first ``n`` points, the result
    rows and ``evaluation.json`` added to ``outcome``."""
    plan = task.config["evaluate"]
    spec = _evaluation_spec(plan)
    started = time.perf_counter()
    options = {
        "protocols": [entry.build() for entry in spec.protocols],
        "eps": plan["eps"], "l2_budgets": spec.l2_budgets, "smoothing": smoothing,
        "surrogate": surrogate, "batch_size": spec.batch_size, "device": device,
        "seed": spec.seed, "checks": spec.checks, "certify": tuple(spec.certify),
    }  # fmt: skip
    run_dir = Path(task.artifact_dir) / "runs" / task.key
    points, truth = images[: spec.n], labels[: spec.n]
    if spec.shards is None:
        evaluation = evaluate(model, points, truth, **options)
    else:  # one shard after another in this worker, each kept as it finishes
        evaluation = evaluate_sharded(
            model, points, truth, shard_size=spec.shards.size, shards=spec.shards.count,
            out=run_dir, **options,
        )  # fmt: skip
        outcome.timings["shards"] = evaluation.sharding
    outcome.timings["eval_seconds"] = time.perf_counter() - started
    outcome.results += evaluation_results(evaluation)
    report = run_dir / "evaluation.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(report, evaluation.to_json(run=task.key, config=task.config))
    outcome.artifacts["evaluation"] = str(report)


def _run_trained(task: Task) -> Outcome:
    artifact_dir = Path(task.artifact_dir)
    config = TrainConfig.model_validate(task.config["train"])
    evaluation_spec = _evaluation_spec(task.config["evaluate"])
    outcome = Outcome(task.key)

    started = time.perf_counter()
    run_dir = artifact_dir / "train" / task.train_key
    trained = _train(config, run_dir, task)
    outcome.timings["train_seconds"] = time.perf_counter() - started
    outcome.timings["resumed_from_epoch"] = trained.resumed_from
    outcome.artifacts["checkpoint"] = str(run_dir)
    last = trained.history[-1]
    outcome.results += [
        Result("train", "clean", None, "test_accuracy", last["test_accuracy"]),
        Result("train", "clean", None, "train_accuracy", last["train_accuracy"]),
        Result("train", "clean", None, "train_loss", last["train_loss"]),
    ]

    surrogate = None
    if evaluation_spec.surrogate == "twin":
        twin = twin_config(config)
        # Keyed by the twin's own training, so every run of a grid shares one twin.
        twin_key = "twin-" + train_key(twin)
        surrogate = _train(twin, artifact_dir / "train" / twin_key, task).model
        outcome.artifacts["surrogate"] = str(artifact_dir / "train" / twin_key)

    test = datasets.load(config.dataset, "test", task.data_dir, progress=False)
    _evaluate(
        task,
        outcome,
        trained.model,
        test.images,
        test.labels,
        smoothing=training_smoothing(config.model_dump()),
        surrogate=surrogate,
        device=next(trained.model.parameters()).device,
    )
    return outcome


def _check_unchanged(model: AuditedModel) -> None:
    """Each file must still hold the bytes the run's key was computed from: a changed file
    is another run, and its numbers must not be stored under this one's key."""
    for what, path, expected in model.files():
        if datasets.file_digest(path) != expected:
            raise ValueError(
                f"the {what} file {path} changed since the sweep registered it (its sha256 "
                f"was {expected[:12]}...); run the spec again to audit the new file as a new run"
            )


def _run_audit(task: Task) -> Outcome:
    model_spec = AuditedModel.from_dict(task.config["model"])
    outcome = Outcome(task.key)
    _check_unchanged(model_spec)
    device = resolve_device(task.device)
    started = time.perf_counter()
    model = load_external_model(model_spec.source(), device)
    data = datasets.load(model_spec.dataset, model_spec.split, task.data_dir, progress=False)
    # Checked as advls.audit.audit checks a model, before any attack.
    classes = check_model_io(model, data.images, device)
    n = task.config["evaluate"]["n"]
    where = f"{data.name} ({model_spec.split}), for a model of {classes} classes"
    check_labels(data.labels[:n], classes, where)
    outcome.timings["load_seconds"] = time.perf_counter() - started
    _evaluate(
        task,
        outcome,
        model,
        data.images,
        data.labels,
        smoothing=None,
        surrogate=None,
        device=device,
    )
    return outcome


def _run(task: Task) -> Outcome:
    if task.config.get("kind") == "audit":
        return _run_audit(task)
    return _run_trained(task)


def execute_run(task: Task) -> Outcome:
    """Train (or load) and evaluate one run; any failure comes back as ``Outcome.error``, not
    raised."""
    threads = torch.get_num_threads()
    if task.threads is not None:
        torch.set_num_threads(task.threads)
    started = time.perf_counter()
    try:
        outcome = _run(task)
    except Exception as error:  # a failed run is data for the store, not a crash of the sweep
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {error}"
        outcome = Outcome(
            task.key, error=f"{message} (at {Path(where.filename).name}:{where.lineno})"
        )
    outcome.timings["seconds"] = time.perf_counter() - started
    outcome.timings["threads"] = torch.get_num_threads()
    torch.set_num_threads(threads)  # an in-process run leaves the driver as it found it
    return outcome
