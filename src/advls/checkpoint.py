"""A run's state on disk: safetensors for every tensor, JSON for everything else, never pickle.

A run directory holds ``checkpoint.json`` (the commit record) and one ``epoch-NNNN/``
directory per kept epoch with ``model.safetensors`` (weights) and ``state.safetensors``
(optimizer tensors and random-number-generator states). ``checkpoint.json`` is written last
and atomically, so a run killed at any moment leaves the previous complete checkpoint in
force; a reader never sees half of a new one.

Training hands its whole state over as one :class:`TrainingState`;
:func:`save_training_state` and :func:`resume_training_state` are the only places that map
it to those files and back, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import advls
from advls.atomic import write_text_atomically

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "Schedule",
    "TrainingState",
    "load_model",
    "read_checkpoint",
    "resume_training_state",
    "save_training_state",
    "write_checkpoint",
]

FORMAT = "advls.checkpoint/1"
_EPOCH_DIR = re.compile(r"epoch-\d{4,}")
RECORD = "checkpoint.json"
_KEEP = 2  # epochs kept on disk: the committed one and the one before it


class CheckpointError(ValueError):
    """A path that is not an advls checkpoint, or one whose files are damaged."""


@dataclass(frozen=True)
class Checkpoint:
    """What a run directory holds: metadata plus the committed epoch's tensors."""

    run_dir: Path
    meta: dict[str, Any]
    model_state: dict[str, Tensor]
    train_state: dict[str, Tensor]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]


#: A learning-rate schedule as training builds it (the union also covers torch releases
#: where ReduceLROnPlateau is not an LRScheduler).
Schedule = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass
class TrainingState:
    """Everything a training run carries from one epoch to the next: what a checkpoint holds.

    ``epoch`` counts the completed epochs and ``history`` has one record per epoch (its last
    one is the checkpoint's ``metrics``). ``shuffle`` (a CPU generator) draws each epoch's
    order; ``augment`` (on ``device``) draws crops, flips and the defence's random starts.
    torch's global generators (CPU, and CUDA on a GPU) are saved and restored with them.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None
    shuffle: torch.Generator
    augment: torch.Generator
    device: torch.device
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def versions() -> dict[str, str]:
    return {"advls": advls.__version__, "torch": torch.__version__}


def write_checkpoint(
    run_dir: str | os.PathLike[str],
    epoch: int,
    model_state: dict[str, Tensor],
    train_state: dict[str, Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write epoch ``epoch``'s tensors, then commit it by replacing ``checkpoint.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}."))
    tag = {"format": FORMAT, "epoch": str(epoch)}
    for filename, state in (("model.safetensors", model_state), ("state.safetensors", train_state)):
        save_file(_contiguous(state), staging / filename, metadata=tag)
        _fsync(staging / filename)  # on disk before the record that points at them
    _fsync(staging)
    final = run_dir / name
    if final.exists():  # left by a run killed after writing it but before committing it
        shutil.rmtree(final)
    os.replace(staging, final)
    record = {"format": FORMAT, "epoch": epoch, "path": name, "versions": versions(), **meta}
    write_text_atomically(run_dir / RECORD, json.dumps(record, indent=2, sort_keys=True))
    _prune(run_dir, keep={f"epoch-{e:04d}" for e in range(epoch - _KEEP + 1, epoch + 1)})
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _prune(run_dir: Path, keep: set[str]) -> None:
    for entry in run_dir.iterdir():
        stale_epoch = entry.name.startswith("epoch-") and entry.name not in keep
        stale_staging = entry.name.startswith(".epoch-")
        if entry.is_dir() and (stale_epoch or stale_staging):
            shutil.rmtree(entry, ignore_errors=True)


def _record_path(path: Path) -> Path:
    if path.is_dir():
        return path / RECORD
    return path


def read_checkpoint(path: str | os.PathLike[str], *, with_train_state: bool = True) -> Checkpoint:
    """Read a run directory (or its ``checkpoint.json``); errors name the file at fault."""
    record_path = _record_path(Path(path))
    if not record_path.is_file():
        raise CheckpointError(
            f"no advls checkpoint at {path}: expected a run directory containing {RECORD}"
        )
    try:
        meta = json.loads(record_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{record_path} is not an advls checkpoint record: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{record_path} is not an advls checkpoint (format {FORMAT!r} expected)"
        )
    _check_record(record_path, meta)
    epoch_dir = record_path.parent / meta["path"]
    model_state = _load_tensors(epoch_dir / "model.safetensors", meta["epoch"])
    train_state = (
        _load_tensors(epoch_dir / "state.safetensors", meta["epoch"]) if with_train_state else {}
    )
    return Checkpoint(record_path.parent, meta, model_state, train_state)


def _check_record(record_path: Path, meta: dict[str, Any]) -> None:
    """The fields readers rely on; ``path`` must name an epoch directory beside the record."""
    problems = []
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] < 1:
        problems.append("'epoch' must be a positive integer")
    if not isinstance(meta.get("path"), str) or not _EPOCH_DIR.fullmatch(meta["path"]):
        problems.append("'path' must be an epoch directory name like epoch-0001")
    if not isinstance(meta.get("config"), dict):
        problems.append("'config' must be an object")
    model = meta.get("model")
    if not isinstance(model, dict) or not {"name", "num_classes", "input_shape"} <= set(model):
        problems.append("'model' must describe the architecture")
    if problems:
        raise CheckpointError(f"{record_path} is damaged: {'; '.join(problems)}")


def _load_tensors(path: Path, epoch: int) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint file {path} is damaged: {error}") from None


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a run directory, in eval mode, and return its metadata."""
    from advls.models import create  # local: models do not depend on checkpoints

    checkpoint = read_checkpoint(path, with_train_state=False)
    spec = checkpoint.meta["model"]
    model = create(
        spec["name"],
        num_classes=spec["num_classes"],
        input_shape=spec["input_shape"],
        mean=spec["mean"],
        std=spec["std"],
    )
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights in {checkpoint.run_dir} do not fit {spec['name']}: {error}"
        ) from None
    return model.to(device).eval(), checkpoint.meta


# --------------------------------------------------------------------------- training state
def save_training_state(
    run_dir: str | os.PathLike[str], state: TrainingState, description: Mapping[str, Any]
) -> Path:
    """Checkpoint ``state`` as epoch ``state.epoch`` of ``run_dir`` and commit it.

    ``description`` says what the run is (its ``config``, the ``model`` to rebuild, ...); it
    is stored beside the state in ``checkpoint.json``. Returns the epoch directory.
    """
    optimizer_tensors, optimizer_skeleton = _optimizer_tensors(state.optimizer)
    tensors = {**optimizer_tensors, **_rng_states(state)}
    meta = {
        **description,
        "optimizer": optimizer_skeleton,
        "schedule": _schedule_state(state.schedule),
        "history": state.history,
        "metrics": state.history[-1],
    }
    return write_checkpoint(run_dir, state.epoch, state.model.state_dict(), tensors, meta)


def resume_training_state(
    run_dir: str | os.PathLike[str], state: TrainingState, config: Mapping[str, Any]
) -> bool:
    """Restore ``state`` in place from ``run_dir``'s checkpoint; False when there is none.

    Raises:
        ValueError: the checkpoint belongs to a run whose ``config`` differs (the message
            names the fields).
        CheckpointError: the checkpoint's files are damaged or do not fit ``state``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).exists():
        return False
    checkpoint = read_checkpoint(run_dir)
    if checkpoint.config != dict(config):
        changed = sorted(
            key
            for key in set(checkpoint.config) | set(config)
            if checkpoint.config.get(key) != config.get(key)
        )
        raise ValueError(
            f"{run_dir} holds a run with a different configuration "
            f"(differs in: {', '.join(changed)}); choose another output directory"
        )
    try:
        state.model.load_state_dict(checkpoint.model_state)
        _load_optimizer(state.optimizer, checkpoint.meta["optimizer"], checkpoint.train_state)
        if state.schedule is not None and checkpoint.meta.get("schedule") is not None:
            merged = {**state.schedule.state_dict(), **checkpoint.meta["schedule"]}
            state.schedule.load_state_dict(merged)
        _set_rng_states(state, checkpoint.train_state)
        state.history = list(checkpoint.meta["history"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot resume from {run_dir}: {error!r}") from None
    state.epoch = checkpoint.epoch
    return True


def _rng_states(state: TrainingState) -> dict[str, Tensor]:
    states = {
        "rng.torch": torch.get_rng_state(),
        "rng.shuffle": state.shuffle.get_state(),
        "rng.augment": state.augment.get_state(),
    }
    if state.device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(state.device)
    return states


def _set_rng_states(state: TrainingState, states: Mapping[str, Tensor]) -> None:
    torch.set_rng_state(states["rng.torch"])
    state.shuffle.set_state(states["rng.shuffle"])
    if state.device.type == "cuda" and "rng.cuda" in states:
        torch.cuda.set_rng_state(states["rng.cuda"], state.device)
    state.augment.set_state(states["rng.augment"])


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state into safetensors-able tensors and a JSON skeleton."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    skeleton: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        skeleton[str(index)] = {}
        for slot, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{slot}"] = value
                skeleton[str(index)][slot] = {"tensor": f"optim.{index}.{slot}"}
            else:
                skeleton[str(index)][slot] = {"value": value}
    return tensors, {"state": skeleton, "param_groups": state_dict["param_groups"]}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, skeleton: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> None:
    state = {
        int(index): {
            slot: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
            for slot, entry in slots.items()
        }
        for index, slots in skeleton["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": skeleton["param_groups"]})


def _schedule_state(schedule: Schedule | None) -> dict[str, Any] | None:
    if schedule is None:
        return None
    # LambdaLR keeps its (unpicklable) lambdas under lr_lambdas; they are rebuilt from the config.
    return {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"}
