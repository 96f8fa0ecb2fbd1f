"""A run's state on disk: safetensors for every tensor, JSON for everything else, never pickle.

A run directory holds ``checkpoint.json`` (the commit record) and one ``epoch-NNNN/``
directory per kept epoch with ``model.safetensors`` (weights), ``state.safetensors``
(optimizer tensors and random-number-generator states) and ``epoch.json`` (that epoch's own
copy of its record). ``checkpoint.json`` is written last and atomically, so a run killed at
any moment leaves the previous complete checkpoint in force; a reader never sees half of a
new one.

Nothing read is trusted: the record must hold every field a reader uses, each tensor file
must match the sha256 its record stored, weights must be finite and of the model's dtypes.
When the committed epoch fails, the error names the last intact epoch, which
``last_good=True`` (``advls train --resume-from-last-good``) uses instead.

Training hands its whole state over as one :class:`TrainingState`;
:func:`save_training_state` and :func:`resume_training_state` are the only places that map
it to those files and back, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor, nn

import advls
from advls.atomic import write_text_atomically

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "DamagedCheckpointError",
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
EPOCH_RECORD = "epoch.json"  # each epoch's own copy of its record
TENSOR_FILES = ("model.safetensors", "state.safetensors")  # weights; optimizer and generators
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
        """The epoch this checkpoint was saved after."""
        return int(self.meta["epoch"])

    @property
    def config(self) -> dict[str, Any]:
        """The training configuration the checkpoint was trained with."""
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
    """The versions that wrote a checkpoint, as its record stores them."""
    return {"advls": advls.__version__, "torch": torch.__version__}


def write_checkpoint(
    run_dir: str | os.PathLike[str],
    epoch: int,
    model_state: dict[str, Tensor],
    train_state: dict[str, Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write epoch ``epoch``'s tensors, then commit it by replacing ``checkpoint.json``.

    The record stores the sha256 of each tensor file, and a copy of it stays in the epoch's
    directory (``epoch.json``), so that an earlier epoch can be verified and used on its own
    when a later one is damaged. The caller holds the run directory
    (:func:`advls.locks.hold_run_directory`); :func:`advls.train.train` does.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}."))
    # One key only: safetensors writes its metadata in a hash map's order, which differs from
    # process to process, so with two keys the same run would give other bytes (and another
    # sha256) each time. The epoch is the record's.
    tag = {"format": FORMAT}
    digests = {}
    for filename, state in zip(TENSOR_FILES, (model_state, train_state), strict=True):
        data = save(_contiguous(state), metadata=tag)
        _write_synced(staging / filename, data)  # on disk before the record that points at them
        digests[filename] = hashlib.sha256(data).hexdigest()
    record = {
        "format": FORMAT, "epoch": epoch, "path": name, "versions": versions(),
        **meta, "sha256": digests,
    }  # fmt: skip
    text = json.dumps(record, indent=2, sort_keys=True)
    _write_synced(staging / EPOCH_RECORD, text.encode())
    _fsync(staging)
    final = run_dir / name
    if final.exists():  # left by a run killed after writing it but before committing it
        shutil.rmtree(final)
    os.replace(staging, final)
    write_text_atomically(run_dir / RECORD, text)
    _prune(run_dir, keep={f"epoch-{e:04d}" for e in range(epoch - _KEEP + 1, epoch + 1)})
    return final


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


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


# --------------------------------------------------------------------------- reading
class _Damage(CheckpointError):
    """A record or tensor file of one epoch that fails its checks (raised inside the reader)."""


def read_checkpoint(
    path: str | os.PathLike[str], *, with_train_state: bool = True, last_good: bool = False
) -> Checkpoint:
    """Read a run directory (or its ``checkpoint.json``); errors name the file at fault.

    Every file is checked before it is used: the record has every field the readers need,
    each tensor file matches the sha256 stored when it was saved (checked on the bytes
    before they are parsed) and holds only finite floating-point values. When the committed
    epoch fails, the error names the last intact epoch kept beside it; ``last_good=True``
    returns that epoch instead (the committed one when it is intact).

    Raises:
        DamagedCheckpointError: a file of the committed epoch fails its checks (and
            ``last_good`` is False, or no intact epoch is kept).
        CheckpointError: no advls checkpoint at ``path``.
    """
    record_path = _record_path(Path(path))
    if not record_path.is_file():
        raise CheckpointError(
            f"no advls checkpoint at {path}: expected a run directory containing {RECORD}"
        )
    run_dir = record_path.parent
    committed: int | None = None
    try:
        meta = _read_record(record_path, with_train_state)
        committed = meta["epoch"]
        return _read_epoch(run_dir, meta, with_train_state)
    except _Damage as error:
        intact = _last_intact(run_dir, below=committed, with_train_state=with_train_state)
        if last_good and intact is not None:
            return intact
        raise DamagedCheckpointError(
            f"{error}{_offer(run_dir, intact)}", None if intact is None else intact.epoch
        ) from None


class DamagedCheckpointError(CheckpointError):
    """The committed epoch of a run is damaged; ``last_intact`` is the epoch that is not."""

    def __init__(self, message: str, last_intact: int | None) -> None:
        super().__init__(message)
        self.last_intact = last_intact


def _offer(run_dir: Path, intact: Checkpoint | None) -> str:
    if intact is None:
        return f"; no intact earlier epoch is kept in {run_dir}: train the run again"
    return (
        f"; the last intact epoch is {intact.epoch} ({run_dir / intact.meta['path']}): "
        "advls train with this run's options and --resume-from-last-good goes back to it "
        "and trains on from there"
    )


def _read_record(path: Path, with_train_state: bool) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _Damage(f"{path} is not an advls checkpoint record: {error}") from None
    except OSError as error:
        raise _Damage(f"{path} cannot be read: {error.strerror or error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        # Not damage but something else's file: no earlier epoch of ours is offered for it.
        raise CheckpointError(f"{path} is not an advls checkpoint (format {FORMAT!r} expected)")
    _check_record(path, meta, with_train_state)
    return meta


def _read_epoch(run_dir: Path, meta: dict[str, Any], with_train_state: bool) -> Checkpoint:
    epoch_dir = run_dir / meta["path"]
    # Records written before hashes were stored have no "sha256": their files are parsed and
    # checked for finiteness, but a flipped bit that still decodes to a finite float passes.
    digests = meta.get("sha256", {})
    model_state = _load_tensors(epoch_dir / TENSOR_FILES[0], digests.get(TENSOR_FILES[0]))
    train_state = (
        _load_tensors(epoch_dir / TENSOR_FILES[1], digests.get(TENSOR_FILES[1]))
        if with_train_state
        else {}
    )
    return Checkpoint(run_dir, meta, model_state, train_state)


def _last_intact(run_dir: Path, below: int | None, *, with_train_state: bool) -> Checkpoint | None:
    """The newest epoch below ``below`` (any, if None) whose own record and files all pass.

    Only epochs that carry their own record (``epoch.json``) can be offered: runs written
    before it was kept have nothing but the committed epoch's record, which does not
    describe the optimizer or the schedule of the epoch before.
    """
    numbered = []
    for entry in run_dir.iterdir():
        if _EPOCH_DIR.fullmatch(entry.name) and entry.is_dir():
            number = int(entry.name.removeprefix("epoch-"))
            if below is None or number < below:
                numbered.append((number, entry))
    for number, entry in sorted(numbered, reverse=True):
        record_path = entry / EPOCH_RECORD
        if not record_path.is_file():
            continue
        try:
            meta = _read_record(record_path, with_train_state=True)
            if meta["epoch"] != number or meta["path"] != entry.name:
                continue
            candidate = _read_epoch(run_dir, meta, with_train_state=True)
        except CheckpointError:
            continue
        return candidate if with_train_state else replace(candidate, train_state={})
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_digest_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(name), str) and re.fullmatch(r"[0-9a-f]{64}", value[name])
        for name in TENSOR_FILES
    )


#: What each field a reader relies on must be: (dotted key, test, what it must be). A
#: nested key is checked only when its parent passed. The one list of what a record needs.
_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epoch", _is_positive_int, "be a positive integer"),
    (
        "path",
        lambda v: isinstance(v, str) and _EPOCH_DIR.fullmatch(v) is not None,
        "be an epoch directory name like epoch-0001",
    ),
    ("config", lambda v: isinstance(v, dict), "be an object"),
    ("config.dataset", lambda v: isinstance(v, str) and v != "", "name the data set"),
    ("config.model", lambda v: isinstance(v, str), "name the model"),
    ("config.loss", lambda v: isinstance(v, str), "name the training loss"),
    ("config.alpha", _is_number, "be a number"),
    ("config.temperature", _is_number, "be a number"),
    ("model", lambda v: isinstance(v, dict), "describe the architecture"),
    ("model.name", lambda v: isinstance(v, str), "name the architecture"),
    ("model.num_classes", _is_positive_int, "be a positive integer"),
    (
        "model.input_shape",
        lambda v: isinstance(v, list) and v != [] and all(_is_positive_int(d) for d in v),
        "be a list of positive integers",
    ),
    (
        "model.mean",
        lambda v: isinstance(v, list) and v != [] and all(_is_number(x) for x in v),
        "be a list of numbers",
    ),
    (
        "model.std",
        lambda v: isinstance(v, list) and v != [] and all(_is_number(x) and x > 0 for x in v),
        "be a list of positive numbers",
    ),
)

#: Fields only resuming training reads.
_TRAIN_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "optimizer",
        lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v),
        "hold the optimizer's state and param_groups",
    ),
    ("history", lambda v: isinstance(v, list), "be a list of per-epoch records"),
)


def _check_record(record_path: Path, meta: dict[str, Any], with_train_state: bool) -> None:
    """Every field the readers rely on; ``path`` must name an epoch directory beside the record."""
    problems = []
    failed: set[str] = set()
    fields = _FIELDS + (_TRAIN_FIELDS if with_train_state else ())
    for key, test, requirement in fields:
        parent, _, leaf = key.rpartition(".")
        if parent in failed:
            continue
        container = meta[parent] if parent else meta
        if leaf not in container:
            problems.append(f"'{key}' must {requirement}; it is missing")
            failed.add(key)
        elif not test(container[leaf]):
            problems.append(f"'{key}' must {requirement}")
            failed.add(key)
    # Records written before tensor hashes were kept have none; a record that has them must
    # have them whole, or a damaged file could pass as an old one.
    if "sha256" in meta and not _is_digest_map(meta["sha256"]):
        problems.append(f"'sha256' must map {' and '.join(TENSOR_FILES)} to sha256 digests")
    if problems:
        raise _Damage(f"{record_path} is damaged: {'; '.join(problems)}")


def _load_tensors(path: Path, digest: str | None) -> dict[str, Tensor]:
    """A tensor file's tensors, its bytes checked against ``digest`` before they are parsed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Damage(f"checkpoint file {path} is missing") from None
    except OSError as error:
        raise _Damage(f"checkpoint file {path} cannot be read: {error.strerror or error}") from None
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise _Damage(
            f"checkpoint file {path} is damaged: its bytes do not match the sha256 recorded "
            "when it was saved"
        )
    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _Damage(f"checkpoint file {path} is damaged: {error}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _Damage(
                f"checkpoint file {path} is damaged: tensor {name!r} holds NaN or infinite values"
            )
    return tensors


def _check_fits(model: nn.Module, tensors: Mapping[str, Tensor], where: Path) -> None:
    """The tensors are the model's: the same names, shapes and dtypes.

    ``load_state_dict`` checks names and shapes but casts dtypes silently (integer weights
    would load as floats); this names the first tensor at fault.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {where} do not fit the model: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}"
        )
    for name, own in expected.items():
        tensor = tensors[name]
        if tensor.shape != own.shape:
            raise CheckpointError(
                f"weights in {where} do not fit the model: {name!r} has shape "
                f"{list(tensor.shape)} where the model has {list(own.shape)}"
            )
        if tensor.dtype != own.dtype:
            found, wanted = str(tensor.dtype), str(own.dtype)
            raise CheckpointError(
                f"weights in {where} do not fit the model: {name!r} is "
                f"{found.removeprefix('torch.')} where the model has "
                f"{wanted.removeprefix('torch.')}"
            )


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", *, last_good: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a run directory, in eval mode, and return its metadata.

    ``last_good=True`` takes the last intact epoch when the committed one is damaged (see
    :func:`read_checkpoint`); the metadata returned is that epoch's.
    """
    from advls.models import create  # local: models do not depend on checkpoints

    checkpoint = read_checkpoint(path, with_train_state=False, last_good=last_good)
    spec = checkpoint.meta["model"]
    arguments = {k: spec[k] for k in ("num_classes", "input_shape", "mean", "std")}
    try:
        # First without memory (the meta device): a record may describe a model of any size,
        # but one that fits the weights on disk is only as large as they are.
        with torch.device("meta"):
            skeleton = create(spec["name"], **arguments)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"{checkpoint.run_dir / RECORD} describes no model advls can build: {error}"
        ) from None
    _check_fits(skeleton, checkpoint.model_state, checkpoint.run_dir)
    model = create(spec["name"], **arguments)
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
    run_dir: str | os.PathLike[str],
    state: TrainingState,
    config: Mapping[str, Any],
    *,
    last_good: bool = False,
) -> bool:
    """Restore ``state`` in place from ``run_dir``'s checkpoint; False when there is none.

    ``last_good=True`` resumes from the last intact epoch when the committed one is damaged
    (see :func:`read_checkpoint`) and commits that epoch again; training on from it gives the
    same weights on CPU. The caller holds the run directory, as :func:`advls.train.train` does.

    Raises:
        ValueError: the checkpoint belongs to a run whose ``config`` differs (the message
            names the fields).
        CheckpointError: the checkpoint's files are damaged or do not fit ``state``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).exists():
        return False
    try:
        checkpoint = read_checkpoint(run_dir)
        recommit = False
    except DamagedCheckpointError as error:
        if not last_good or error.last_intact is None:
            raise
        checkpoint, recommit = read_checkpoint(run_dir, last_good=True), True
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
    _check_fits(state.model, checkpoint.model_state, run_dir)
    if recommit:
        # Commit the intact epoch again at once, so that the run directory is whole even if
        # nothing more is trained (a complete run whose record was damaged).
        text = json.dumps(checkpoint.meta, indent=2, sort_keys=True)
        write_text_atomically(run_dir / RECORD, text)
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
