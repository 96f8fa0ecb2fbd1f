"""Checkpoints: safetensors for every tensor, JSON for everything else, never pickle.

A run directory holds ``checkpoint.json`` (the commit record) and one ``epoch-NNNN/``
directory per kept epoch with ``model.safetensors`` (weights) and ``state.safetensors``
(optimizer tensors and random-number-generator states). ``checkpoint.json`` is written last
and atomically, so a run killed at any moment leaves the previous complete checkpoint in
force; a reader never sees half of a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
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
    "load_model",
    "read_checkpoint",
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
