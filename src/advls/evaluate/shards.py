"""The pieces of a sharded evaluation that run nowhere in particular: how the points are cut,
how each shard is seeded, how shards merge into one :class:`Evaluation`, and how a finished
shard is kept on disk.

The worst case is per example, so shards merge exactly: every outcome's ``fooled``, ``l2``
and ``attacked`` masks are concatenated in the points' order, and the masking checks'
measurements merge by each check's own rule (:meth:`~advls.evaluate.masking.Check.merge`).
What a shard computes depends only on its points, its index and the evaluation's settings,
never on which worker ran it or how many ran, so the merged result does not either.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from advls.atomic import atomic_target
from advls.evaluate.masking import ShardMeasurement, Thresholds, merge_checks, raise_flags
from advls.evaluate.protocols import Protocol
from advls.evaluate.results import AttackOutcome, CertifiedOutcome, Evaluation, SanityChecks

__all__ = [
    "ShardPlan",
    "evaluation_fingerprint",
    "load_shard",
    "merge_evaluations",
    "plan_shards",
    "save_shard",
    "shard_seed",
]

#: The metadata key a shard file keeps its record under.
_RECORD = "advls_shard"
#: Bumped whenever what a shard file holds changes meaning.
_FORMAT = 1


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ShardPlan:
    """The points ``0..points-1`` cut into consecutive shards, by their boundaries."""

    points: int
    bounds: tuple[int, ...]  # 0 = b_0 < b_1 < ... < b_k = points

    @property
    def count(self) -> int:
        """How many shards."""
        return len(self.bounds) - 1

    def ranges(self) -> list[tuple[int, int]]:
        """Each shard's ``(start, stop)``."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def describe(self) -> dict[str, Any]:
        """The plan as JSON: the count, and the size of the largest shard."""
        sizes = [stop - start for start, stop in self.ranges()]
        return {"shards": self.count, "shard_size": max(sizes), "points": self.points}


def plan_shards(
    points: int, *, shard_size: int | None = None, shards: int | None = None, default: int = 500
) -> ShardPlan:
    """Cut ``points`` into shards of ``shard_size`` points (the last may be smaller), or into
    ``shards`` shards whose sizes differ by at most one; ``default`` points each otherwise.

    Raises:
        ValueError: both or a value below 1 given, or more shards than points.
    """
    points = _count(points, "points")
    if shard_size is not None and shards is not None:
        raise ValueError("give shard_size or shards, not both")
    if shards is not None:
        _count(shards, "shards")
        if shards > points:
            raise ValueError(f"shards ({shards}) cannot exceed the evaluated points ({points})")
        base, extra = divmod(points, shards)
        bounds = [0]
        for index in range(shards):
            bounds.append(bounds[-1] + base + (1 if index < extra else 0))
        return ShardPlan(points, tuple(bounds))
    size = _count(shard_size if shard_size is not None else default, "shard_size")
    bounds = [*range(0, points, size), points]
    return ShardPlan(points, tuple(bounds))


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard ``index`` of an evaluation seeded ``seed``: a hash of both, so that
    shards draw unrelated random numbers (starts, Square's proposals, EOT noise), and the
    same ones whichever worker runs them. Below 2**63, as torch generators take."""
    digest = hashlib.sha256(f"advls-shard:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# --------------------------------------------------------------------------- fingerprint
def _tensor_bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _hash_module(digest: Any, module: nn.Module | None) -> None:
    if module is None:
        digest.update(b"none")
        return
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))


def evaluation_fingerprint(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: Mapping[str, Any],
    surrogate: nn.Module | None = None,
) -> str:
    """What a shard's result depends on, hashed: the model's class and every tensor of its
    state, the surrogate's, the points and labels, and ``settings`` (protocols, budgets,
    seed, batch size, the plan: plain JSON-able data). A kept shard is reused only under the
    same fingerprint, so a changed model, dataset or option never reads stale results."""
    digest = hashlib.sha256(f"advls-evaluation:{_FORMAT}".encode())
    _hash_module(digest, model)
    _hash_module(digest, surrogate)
    for tensor in (images, labels):
        digest.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- merging
def _outcome_key(outcome: AttackOutcome) -> tuple[str, str, float | None]:
    return outcome.protocol, outcome.spec.label, outcome.eps


def merge_evaluations(
    parts: Sequence[Evaluation],
    *,
    seed: int,
    checks: bool = True,
    thresholds: Thresholds | None = None,
) -> Evaluation:
    """One evaluation from its shards' (in the points' order): per-example masks and
    distances concatenated, attack seconds and model calls summed, the checks'
    measurements merged and the flags raised on the merged outcomes.

    Raises:
        ValueError: no parts, or parts that did not evaluate the same attacks and budgets.
    """
    if not parts:
        raise ValueError("merge_evaluations needs at least one shard")
    first = parts[0]
    keys = [_outcome_key(outcome) for outcome in first.outcomes]
    proofs = [(outcome.method, outcome.eps) for outcome in first.certified]
    for part in parts[1:]:
        if [(outcome.method, outcome.eps) for outcome in part.certified] != proofs:
            raise ValueError("shards of one evaluation must certify the same methods and budgets")
        if [_outcome_key(outcome) for outcome in part.outcomes] != keys or (
            part.num_classes,
            part.eps,
            part.l2_budgets,
        ) != (first.num_classes, first.eps, first.l2_budgets):
            raise ValueError("shards of one evaluation must run the same attacks and budgets")
    outcomes = []
    for index, template in enumerate(first.outcomes):
        pieces = [part.outcomes[index] for part in parts]
        outcomes.append(
            AttackOutcome(
                template.protocol, template.spec, template.eps,
                torch.cat([piece.fooled for piece in pieces]),
                torch.cat([piece.l2 for piece in pieces]),
                torch.cat([piece.attacked for piece in pieces]),
                sum(piece.seconds for piece in pieces),
                sum(piece.model_calls for piece in pieces),
            )
        )  # fmt: skip
    certified = [
        CertifiedOutcome(
            template.method, template.eps,
            torch.cat([part.certified[index].certified for part in parts]),
            sum(part.certified[index].seconds for part in parts),
        )
        for index, template in enumerate(first.certified)
    ]  # fmt: skip
    merged = Evaluation(
        points=sum(part.points for part in parts),
        num_classes=first.num_classes,
        correct=torch.cat([part.correct for part in parts]),
        eps=first.eps,
        l2_budgets=first.l2_budgets,
        protocols=first.protocols,
        outcomes=outcomes,
        skipped=list(first.skipped),
        adapted=list(first.adapted),
        certified=certified,
    )
    if checks and all(part.checks is not None for part in parts):
        measured = [
            ShardMeasurement(part.checks, int(part.correct.sum()), part.points) for part in parts
        ]
        merged.checks = merge_checks(measured, seed=seed)
        merged.flags = raise_flags(merged, thresholds or Thresholds())
    return merged


# --------------------------------------------------------------------------- shard files
def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}  # JSON has no NaN; read back by _restore
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        return {key: _restore(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore(item) for item in value]
    return value


def save_shard(
    path: str | Path, evaluation: Evaluation, *, fingerprint: str, index: int, start: int
) -> Path:
    """Keep shard ``index`` (points ``start`` onwards) of the evaluation ``fingerprint`` in
    one safetensors file, written whole or not at all; returns its path."""
    # Outcomes share masks (every ``attacked`` is ``correct`` outside a cascade): each is
    # stored as its own copy, as safetensors requires.
    tensors = {"correct": evaluation.correct.clone()}
    records = []
    for number, outcome in enumerate(evaluation.outcomes):
        tensors[f"{number}.fooled"] = outcome.fooled.clone()
        tensors[f"{number}.l2"] = outcome.l2.float().clone()
        tensors[f"{number}.attacked"] = outcome.attacked.clone()
        records.append(
            {"protocol": outcome.protocol, "attack": outcome.spec.label, "eps": outcome.eps,
             "seconds": outcome.seconds, "model_calls": outcome.model_calls}
        )  # fmt: skip
    proofs = []
    for number, outcome in enumerate(evaluation.certified):
        tensors[f"certified.{number}"] = outcome.certified.clone()
        proofs.append({"method": outcome.method, "eps": outcome.eps, "seconds": outcome.seconds})
    record = {
        "format": _FORMAT,
        "fingerprint": fingerprint,
        "index": index,
        "start": start,
        "points": evaluation.points,
        "num_classes": evaluation.num_classes,
        "outcomes": records,
        "certified": proofs,
        "skipped": evaluation.skipped,
        "adapted": evaluation.adapted,
        "checks": evaluation.checks.as_dict() if evaluation.checks is not None else None,
        "seconds": evaluation.seconds,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {_RECORD: json.dumps(_finite(record), allow_nan=False)}
    with atomic_target(path) as staged:
        save_file(tensors, staged, metadata=metadata)
    return path


def load_shard(
    path: str | Path,
    *,
    fingerprint: str,
    index: int,
    start: int,
    points: int,
    protocols: Sequence[Protocol],
    eps: tuple[float, ...],
    l2_budgets: tuple[float, ...],
) -> Evaluation | None:
    """The kept shard at ``path`` if it is whole and of this evaluation, else None (a
    missing, damaged, foreign or stale file is computed again, never trusted)."""
    try:
        with safe_open(str(path), framework="pt") as kept:
            record = _restore(json.loads((kept.metadata() or {})[_RECORD]))
            if (record["format"], record["fingerprint"], record["index"], record["start"],
                    record["points"]) != (_FORMAT, fingerprint, index, start, points):  # fmt: skip
                return None
            tensors = {name: kept.get_tensor(name) for name in kept.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, KeyError, TypeError, ValueError):
        return None
    specs = {(p.name, spec.label): spec for p in protocols for spec in p.attacks}
    try:
        correct = tensors["correct"]
        outcomes = []
        for number, entry in enumerate(record["outcomes"]):
            masks = [tensors[f"{number}.{name}"] for name in ("fooled", "l2", "attacked")]
            if any(mask.shape != (points,) for mask in [correct, *masks]):
                return None
            outcomes.append(
                AttackOutcome(
                    entry["protocol"], specs[(entry["protocol"], entry["attack"])],
                    entry["eps"], masks[0], masks[1], masks[2], float(entry["seconds"]),
                    int(entry["model_calls"]),
                )
            )  # fmt: skip
        certified = []
        for number, entry in enumerate(record.get("certified", [])):
            proven = tensors[f"certified.{number}"]
            if proven.shape != (points,):
                return None
            certified.append(
                CertifiedOutcome(entry["method"], entry["eps"], proven, float(entry["seconds"]))
            )
    except KeyError:  # an attack this evaluation does not run: not this evaluation's shard
        return None
    checks = record["checks"]
    return Evaluation(
        points=points,
        num_classes=int(record["num_classes"]),
        correct=correct,
        eps=tuple(eps),
        l2_budgets=tuple(l2_budgets),
        protocols=tuple(protocols),
        outcomes=outcomes,
        skipped=list(record["skipped"]),
        adapted=list(record["adapted"]),
        checks=SanityChecks(**checks) if checks is not None else None,
        seconds=float(record["seconds"]),
        certified=certified,
    )
