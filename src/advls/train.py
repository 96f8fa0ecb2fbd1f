"""Training: Algorithm 1 of the paper for any loss, with checkpoints and exact resume.

Each mini-batch is smoothed by the configured method, the smoothed cross-entropy is
minimised, and after every epoch the run directory gets a checkpoint holding the weights, the
optimizer, the schedule and every random-number-generator state. Resuming from it continues
bit for bit where the run stopped (on CPU), so a killed run and an uninterrupted one end with
identical weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import Tensor, nn

from advls import data as datasets
from advls.checkpoint import (
    Schedule,
    TrainingState,
    resume_training_state,
    save_training_state,
)
from advls.defences import AdversarialTraining, Defence, IBPTraining
from advls.locks import hold_run_directory
from advls.losses import (
    ALIASES,
    METHODS,
    NonFiniteLogitsError,
    NonFiniteLossError,
    SmoothedCrossEntropy,
    canonical_method,
)
from advls.models import MODELS, create

__all__ = [
    "LOSSES",
    "PRESETS",
    "NonFiniteLogitsError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "evaluate_accuracy",
    "resolve_device",
    "train",
    "train_epoch",
]

#: ``ce`` is plain cross-entropy; the others are the smoothing methods of :mod:`advls.losses`.
LOSSES: tuple[str, ...] = ("ce", *METHODS)

#: Named settings. ``paper`` follows the authors' code: plain SGD, lr 1e-4, batch 100,
#: learning rate reduced on plateaus of the training loss.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "optimizer": "sgd",
        "lr": 1e-4,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "batch_size": 100,
        "schedule": "plateau",
        "augment": "none",
    },
}


#: TrainConfig's fields that only ibp training reads (left out of other runs' identity).
_IBP_FIELDS = ("defence_kappa", "defence_warmup", "defence_ramp")

_ABBREVIATIONS = {method: alias for alias, method in ALIASES.items() if alias.isalpha()}
_LOSS_HELP = "ce, or a smoothing method: " + ", ".join(
    f"{method} ({_ABBREVIATIONS[method]})" if method in _ABBREVIATIONS else method
    for method in METHODS
)


class TrainConfig(BaseModel):
    """Everything that determines a training run; validated once, then immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each description is also the field's help on the command line (``advls train``).
    dataset: str = Field(
        "mnist", description=f"{', '.join(datasets.REGISTRY)}, or a path to a .npz with x and y"
    )
    model: str = Field("lenet-mnist", description=", ".join(MODELS))
    loss: str = Field("adversarial", description=_LOSS_HELP)
    alpha: float = Field(
        0.1, ge=0.0, le=1.0, description="Smoothing strength in [0, 1] (ignored for ce)"
    )
    temperature: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="Boltzmann temperature T > 0"
    )
    epochs: int = Field(10, ge=1, description="Number of epochs")
    batch_size: int = Field(128, ge=1, description="Mini-batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd or adam")
    lr: float = Field(0.05, gt=0.0, allow_inf_nan=False, description="Learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD: Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0.0, allow_inf_nan=False, description="Weight decay")
    schedule: Literal["none", "cosine", "step", "plateau"] = Field(
        "cosine", description="none, cosine, step or plateau"
    )
    step_epochs: int = Field(30, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/plateau decay factor")
    augment: Literal["auto", "none", "crop-flip"] = Field(
        "auto",
        description="auto, none or crop-flip (auto: crop-flip for colour images except SVHN)",
    )
    train_subset: int | None = Field(
        None, ge=1, description="Train on the first N training images only"
    )
    defence: Literal["none", "fgsm-at", "pgd-at", "ibp"] = Field(
        "none",
        description="Defence: none, fgsm-at (Goodfellow), pgd-at (Madry) or ibp (certified "
        "training, Gowal et al.)",
    )
    defence_eps: float = Field(
        0.1, gt=0.0, le=1.0, description="The defence's L-inf budget (ibp: the target eps)"
    )
    defence_beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="fgsm-at: weight of the clean loss (1 - beta on FGSM inputs)",
    )
    defence_steps: int = Field(7, ge=1, description="pgd-at: PGD steps per batch")
    defence_step_size: float | None = Field(
        None, gt=0.0, description="pgd-at: PGD step size (default 2.5 eps / steps)"
    )
    defence_kappa: float = Field(
        0.5, ge=0.0, le=1.0, description="ibp: final weight of the clean loss (Gowal et al.: 0.5)"
    )
    defence_warmup: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="ibp: fraction of the training steps at eps 0 before the ramp",
    )
    defence_ramp: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="ibp: fraction of the training steps over which eps rises from 0 to "
        "defence_eps and the clean weight falls from 1 to defence_kappa",
    )
    seed: int = Field(0, description="Seed: the same seed gives identical weights on CPU")
    preset: Literal["default", "paper"] = Field(
        "default",
        description="default (SGD+Nesterov, lr 0.05, cosine) or paper (the authors' plain SGD, "
        "lr 1e-4, batch 100, plateau). Explicit options override it",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in datasets.REGISTRY and not value.endswith(".npz"):
            allowed = ", ".join(datasets.REGISTRY)
            raise ValueError(f"dataset must be one of {allowed} or a path to a .npz file")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}")
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value.lower() == "ce":
            return "ce"
        try:
            return canonical_method(value)
        except ValueError:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}") from None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        # A preset fills in what the user did not set explicitly.
        if isinstance(values, dict) and values.get("preset") in PRESETS:
            return {**PRESETS[values["preset"]], **values}
        return values

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.defence_warmup + self.defence_ramp > 1.0:
            raise ValueError(
                "defence_warmup + defence_ramp must be at most 1 (fractions of the training), "
                f"got {self.defence_warmup} + {self.defence_ramp}"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_unused_schedule(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The ibp schedule's fields appear only in ibp runs, so the identity (and the keys
        # and checkpoints built on it) of every other run is what it was before they existed.
        values = handler(self)
        if self.defence != "ibp":
            for name in _IBP_FIELDS:
                values.pop(name, None)
        return values

    def resolved_augment(self, input_shape: tuple[int, int, int]) -> str:
        """``augment`` with ``auto`` resolved for inputs of ``input_shape``."""
        if self.augment != "auto":
            return self.augment
        # Random crops and flips help natural colour images; they hurt digits (6 vs 9).
        return "crop-flip" if input_shape[0] == 3 and self.dataset != "svhn" else "none"

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a resumed run must match them exactly)."""
        return self.model_dump()


@dataclass
class TrainResult:
    """The trained model (eval mode), the per-epoch history and where the checkpoint is."""

    model: nn.Module
    history: list[dict[str, float]]
    run_dir: Path | None
    resumed_from: int

    @property
    def test_accuracy(self) -> float:
        """The last epoch's clean test accuracy."""
        return self.history[-1]["test_accuracy"]


# --------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return resolved


# --------------------------------------------------------------------------- pieces
def _make_criterion(config: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    if config.loss == "ce" or config.alpha == 0.0:
        return F.cross_entropy
    return SmoothedCrossEntropy(config.loss, config.alpha, config.temperature)


def _make_defence(
    config: TrainConfig, generator: torch.Generator, steps_per_epoch: int
) -> Defence | None:
    if config.defence == "none":
        return None
    if config.defence == "ibp":
        total = config.epochs * steps_per_epoch
        return IBPTraining(
            eps=config.defence_eps,
            kappa=config.defence_kappa,
            warmup_steps=round(config.defence_warmup * total),
            ramp_steps=max(1, round(config.defence_ramp * total)),
        )
    return AdversarialTraining(
        kind=config.defence,
        eps=config.defence_eps,
        beta=config.defence_beta,
        steps=config.defence_steps,
        step_size=config.defence_step_size,
        generator=generator,
    )


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def _make_schedule(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> Schedule | None:
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        # Stepped every iteration: with few epochs a per-epoch cosine is a staircase.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_epochs * steps_per_epoch, gamma=config.gamma
        )
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=config.gamma, patience=2
        )
    return None


def _augment_crop_flip(images: Tensor, generator: torch.Generator | None, pad: int = 4) -> Tensor:
    """Random ``pad``-pixel translations (zero padding) and horizontal flips, per example."""
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    rows = (torch.arange(h, device=device)[None, :] + shifts[0, :, None])[:, None, :, None]
    cols = (torch.arange(w, device=device)[None, :] + shifts[1, :, None])[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def _batches(
    images: Tensor, labels: Tensor, batch_size: int, order: Tensor | None
) -> Iterator[tuple[Tensor, Tensor]]:
    n = images.shape[0]
    for start in range(0, n, batch_size):
        index = (
            order[start : start + batch_size]
            if order is not None
            else slice(start, start + batch_size)
        )
        yield images[index], labels[index]


def _to_unit(batch: Tensor, memory_format: torch.memory_format) -> Tensor:
    # uint8 pixels to [0, 1] floats; the model normalises internally.
    return batch.to(dtype=torch.float32, memory_format=memory_format).div_(255.0)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    """Clean accuracy of ``model`` on uint8 images (or floats in [0, 1]); restores its mode."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in _batches(images, labels, batch_size, None):
        x = x.to(device)
        x = _to_unit(x, torch.contiguous_format) if x.dtype == torch.uint8 else x.float()
        correct += (model(x).argmax(dim=1) == y.to(device)).sum()
    model.train(was_training)
    return float(correct) / max(1, images.shape[0])


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    schedule: Any = None,
    augment_generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    defence: Defence | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """One pass of Algorithm 1 over ``images`` (uint8, on the model's device) in random order.

    ``schedule`` is stepped after every optimizer step; ``augment_generator`` turns on random
    crops and flips; ``defence`` trains on adversarial examples or certified bounds (the
    reported accuracy is then on the examples the loss saw last: clean for fgsm-at and ibp,
    adversarial for pgd-at).
    Returns the mean training loss and the training accuracy.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (the parameters may be damaged);
            a :class:`NonFiniteLogitsError` when the smoothed loss met non-finite logits.
        ValueError: the loss refused its inputs otherwise (labels out of range, ...).
    """
    device = images.device
    model.train()
    order = torch.randperm(images.shape[0], generator=generator).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    # Checking the loss forces a device sync; on an accelerator do it every few steps only.
    check_every = 1 if device.type == "cpu" else 25
    for step, (x, y) in enumerate(_batches(images, labels, batch_size, order)):
        x = _to_unit(x, memory_format)
        if augment_generator is not None:
            x = _augment_crop_flip(x, augment_generator)
        try:
            with autocast:
                if defence is None:
                    logits = model(x)
                    loss = criterion(logits.float(), y)
                else:
                    loss, logits = defence.loss(model, x, y, lambda z, t: criterion(z.float(), t))
        except NonFiniteLossError as error:  # the smoothed loss refuses non-finite logits
            raise type(error)(f"step {step + 1}: {error}") from None  # same class, with the step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.detach().argmax(dim=1) == y).sum()
        if step % check_every == 0 and not bool(torch.isfinite(loss_sum)):
            raise NonFiniteLossError(f"step {step + 1}: the loss is not finite")
        if on_step is not None:
            on_step(step)
    mean_loss = float(loss_sum) / images.shape[0]
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError("the loss is not finite")
    return mean_loss, float(correct) / images.shape[0]


# --------------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    channels_last: bool = True,
    eval_batch_size: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume_from_last_good: bool = False,
) -> TrainResult:
    """Train ``config``'s model with its loss; checkpoint every epoch into ``run_dir``.

    If ``run_dir`` already holds a checkpoint of the same configuration, training resumes
    from its last epoch (and returns at once when it is complete); with
    ``resume_from_last_good`` from the last intact epoch when the last one is damaged.
    ``amp`` (bf16 autocast) and ``channels_last`` apply on CUDA only; CPU runs are float32
    and deterministic.

    ``run_dir`` is created and checked writable before any data is read, and held for the
    whole run (:func:`advls.locks.hold_run_directory`): a second writer is refused at once.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the last checkpoint is kept. It
            is the subclass :class:`NonFiniteLogitsError` when the logits already were.
        RunDirectoryBusy: another process is writing ``run_dir`` (the message names its pid).
        RunDirectoryError: ``run_dir`` cannot be created or written.
        CheckpointError: ``run_dir``'s checkpoint is damaged (the message names the last
            intact epoch).
        ValueError: the run directory holds a different run, or bad arguments.
    """
    device = resolve_device(device)
    held = hold_run_directory(run_dir) if run_dir is not None else contextlib.nullcontext()
    with held:
        return _train(
            config, run_dir, data_dir=data_dir, device=device, amp=amp,
            channels_last=channels_last, eval_batch_size=eval_batch_size, progress=progress,
            log=log, resume_from_last_good=resume_from_last_good,
        )  # fmt: skip


def _train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str] | None,
    *,
    data_dir: str | os.PathLike[str] | None,
    device: torch.device,
    amp: bool,
    channels_last: bool,
    eval_batch_size: int,
    progress: bool,
    log: Callable[[str], None] | None,
    resume_from_last_good: bool,
) -> TrainResult:
    train_set = datasets.load(config.dataset, "train", data_dir)
    test_set = datasets.load(config.dataset, "test", data_dir)
    if config.train_subset is not None:
        train_set = _subset(train_set, config.train_subset)
    model_spec = {
        "name": config.model,
        "num_classes": train_set.num_classes,
        "input_shape": list(train_set.input_shape),
        "mean": list(train_set.mean),
        "std": list(train_set.std),
    }
    torch.manual_seed(config.seed)  # before the model's weights are drawn
    model = create(
        config.model,
        num_classes=train_set.num_classes,
        input_shape=train_set.input_shape,
        mean=train_set.mean,
        std=train_set.std,
    )
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if (on_cuda and channels_last) else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = _make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    schedule = _make_schedule(config, optimizer, steps_per_epoch)
    criterion = _make_criterion(config)
    generator = torch.Generator().manual_seed(config.seed)
    augment = config.resolved_augment(train_set.input_shape)
    # One seeded generator on the device for augmentation and the defence's random starts;
    # its state is checkpointed, so a resumed run draws the same numbers.
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    defence = _make_defence(config, augment_generator, steps_per_epoch)

    state = TrainingState(model, optimizer, schedule, generator, augment_generator, device)
    if run_dir is not None:
        resume_training_state(run_dir, state, config.identity(), last_good=resume_from_last_good)
    start_epoch = state.epoch
    if isinstance(defence, IBPTraining):
        defence.step = start_epoch * steps_per_epoch  # the schedule's clock, on resume too
    say = log or (lambda message: None)
    if start_epoch:
        say(f"resuming from epoch {start_epoch} of {config.epochs} in {run_dir}")

    # The whole data set lives on the device as uint8; batches are cut from it directly.
    train_images, train_labels = train_set.images.to(device), train_set.labels.to(device)
    test_images, test_labels = test_set.images.to(device), test_set.labels.to(device)
    description = {"config": config.identity(), "model": model_spec, "augment": augment}

    with _progress_bar(progress, config.epochs, steps_per_epoch, start_epoch) as advance:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            try:
                train_loss, train_accuracy = train_epoch(
                    model,
                    optimizer,
                    criterion,
                    train_images,
                    train_labels,
                    batch_size=config.batch_size,
                    generator=generator,
                    schedule=None if config.schedule == "plateau" else schedule,
                    augment_generator=augment_generator if augment == "crop-flip" else None,
                    autocast_dtype=torch.bfloat16 if (on_cuda and amp) else None,
                    memory_format=memory_format,
                    defence=defence,
                    on_step=lambda step, epoch=epoch: advance(epoch, step),
                )
            except NonFiniteLossError as error:
                kept = f"; the last good checkpoint in {run_dir} is kept" if run_dir else ""
                # The same class (logits or loss), so callers and the sweep's record can tell
                # which diverged; both are NonFiniteLossError.
                raise type(error)(
                    f"training stopped at epoch {epoch + 1}, {error}{kept}. "
                    "Lower the learning rate or check the data."
                ) from error
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                schedule.step(train_loss)
            record = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "test_accuracy": evaluate_accuracy(
                    model, test_images, test_labels, eval_batch_size, device
                ),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            state.history.append(record)
            state.epoch = epoch + 1
            say(
                f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
                f"train acc {record['train_accuracy']:.4f}  "
                f"test acc {record['test_accuracy']:.4f}  "
                f"({record['seconds']:.1f} s)"
            )
            if run_dir is not None:
                save_training_state(run_dir, state, description)
    model.eval()
    run_path = Path(run_dir) if run_dir is not None else None
    return TrainResult(model, state.history, run_path, start_epoch)


def _subset(dataset: datasets.ImageDataset, count: int) -> datasets.ImageDataset:
    if count > len(dataset):
        raise ValueError(
            f"train_subset must be at most the training set size {len(dataset)}, got {count}"
        )
    return datasets.ImageDataset(
        name=dataset.name,
        split=dataset.split,
        images=dataset.images[:count].contiguous(),
        labels=dataset.labels[:count].contiguous(),
        classes=dataset.classes,
        mean=dataset.mean,
        std=dataset.std,
    )


@contextlib.contextmanager
def _progress_bar(
    enabled: bool, epochs: int, steps_per_epoch: int, start_epoch: int
) -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(epoch, step)`` driving a rich bar over all steps, or a no-op."""
    if not enabled:
        yield lambda epoch, step: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Updating rich on every step costs more than a small model's step; update every few.
    every = max(1, steps_per_epoch // 50)
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(
            "train",
            total=epochs * steps_per_epoch,
            completed=start_epoch * steps_per_epoch,
            epoch=start_epoch + 1,
            epochs=epochs,
        )

        def advance(epoch: int, step: int) -> None:
            if step % every == 0 or step == steps_per_epoch - 1:
                done = epoch * steps_per_epoch + step + 1
                progress.update(task, completed=done, epoch=epoch + 1)

        yield advance
