"""Experiment specs: a YAML grid, validated before anything runs, expanded into keyed runs.

A spec names training defaults (``train``), one or more grids whose axes are multiplied
(``grid``: a mapping, or a list of mappings whose runs are joined), and how every run is
evaluated (``evaluate``). Each run is fully resolved (defaults included, fields that cannot
matter set to one canonical value) and keyed by a hash of that resolved form, so the same
experiment declared twice, or in two specs, is one run::

    name: lenet-quick
    train: {dataset: mnist, model: lenet-mnist, epochs: 2}
    grid:
      - {loss: [ce], defence: [none, fgsm-at]}
      - {loss: [standard, adversarial], alpha: [0.1, 0.5]}
    evaluate: {protocols: [paper], eps: [0.1, 0.2], n: 500}

Errors name the file, the field and the allowed values, and are raised before any training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from advls import data as datasets
from advls.evaluate import Protocol, check_eps_list, default_eps, get_protocol
from advls.train import TrainConfig

__all__ = [
    "EvaluateSpec",
    "ProtocolEntry",
    "RunSpec",
    "SpecError",
    "SweepSpec",
    "check_data_available",
    "load_spec",
    "parse_spec",
    "train_key",
]

#: Bumped when the resolved form of a run changes meaning; it is part of every key.
KEY_VERSION = 1
_TRAIN_FIELDS = tuple(TrainConfig.model_fields)
_CANONICAL = TrainConfig.model_construct()  # the defaults, for fields that cannot matter


class SpecError(ValueError):
    """A spec that cannot run; the message names the file and the field."""


class ProtocolEntry(BaseModel):
    """A named protocol, optionally with changed attack parameters or attacks left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    without: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        get_protocol(value)  # names the protocols when there is none by that name
        return value

    def build(self) -> Protocol:
        protocol = get_protocol(self.name)
        if self.without:
            protocol = protocol.without(*self.without)
        if self.params:
            protocol = protocol.with_params(**self.params)
        return protocol


class EvaluateSpec(BaseModel):
    """How every run of a sweep is evaluated, on the first ``n`` test images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocols: tuple[ProtocolEntry, ...] = (ProtocolEntry(name="paper"),)
    eps: tuple[float, ...] | None = Field(
        None, description="L-inf budgets in [0, 1] pixel units; default by dataset"
    )
    l2_budgets: tuple[float, ...] | None = None
    n: int = Field(1000, ge=1, description="evaluate on the first n test images")
    batch_size: int = Field(500, ge=1)
    seed: int = 0
    checks: bool = Field(True, description="run the gradient-masking checks")
    surrogate: Literal["none", "twin"] = Field(
        "none", description="twin: train a plain-CE twin (seed + 1) for the transfer attack"
    )

    @field_validator("protocols", mode="before")
    @classmethod
    def _names_to_entries(cls, value: Any) -> Any:
        if isinstance(value, (str, Mapping)):
            value = [value]
        if isinstance(value, Sequence):
            return [{"name": entry} if isinstance(entry, str) else entry for entry in value]
        return value

    @field_validator("protocols")
    @classmethod
    def _build(cls, value: tuple[ProtocolEntry, ...]) -> tuple[ProtocolEntry, ...]:
        if not value:
            raise ValueError("name at least one protocol")
        names = [entry.name for entry in value]
        if len(set(names)) != len(names):
            raise ValueError(f"each protocol may appear once, got {names}")
        for entry in value:
            entry.build()  # unknown attack labels or parameters fail here, not mid-sweep
        return value

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if value is None else check_eps_list(value)

    @field_validator("l2_budgets")
    @classmethod
    def _l2(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (not value or any(not 0 < b < float("inf") for b in value)):
            raise ValueError("l2_budgets must be positive finite numbers")
        return value


class SweepSpec(BaseModel):
    """The whole spec file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    train: dict[str, Any] = Field(default_factory=dict)
    grid: tuple[dict[str, Any], ...] = ({},)
    evaluate: EvaluateSpec = EvaluateSpec()
    paper: dict[str, Any] = Field(
        default_factory=dict,
        description="which alpha/eps stand for the paper's table indices (read by reports)",
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class RunSpec:
    """One run: its training config, its evaluation, and the keys derived from them.

    ``key`` identifies the whole run (training and evaluation); ``train_key`` only the
    training, so runs that differ in their evaluation share one checkpoint.
    """

    train: TrainConfig
    evaluate: EvaluateSpec
    eps: tuple[float, ...]
    key: str
    train_key: str

    @property
    def name(self) -> str:
        config = self.train
        method = config.loss if config.loss == "ce" else f"{config.loss}-{config.alpha:g}"
        defence = "" if config.defence == "none" else f"-{config.defence}"
        return f"{config.dataset}-{config.model}-{method}{defence}-s{config.seed}"

    def resolved(self) -> dict[str, Any]:
        """The fully resolved configuration, as stored and hashed."""
        return {"version": KEY_VERSION, "train": self.train.model_dump(), **self._evaluation()}

    def _evaluation(self) -> dict[str, Any]:
        evaluation = self.evaluate.model_dump(mode="json", exclude={"eps", "protocols"})
        evaluation["eps"] = list(self.eps)
        # The entry rebuilds the protocol; "resolved" records what it meant when it ran.
        evaluation["protocols"] = [
            {**entry.model_dump(mode="json"), "resolved": entry.build().describe()}
            for entry in self.evaluate.protocols
        ]
        return {"evaluate": evaluation}


def _digest(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical_train(values: Mapping[str, Any]) -> dict[str, Any]:
    """Set fields that cannot change a run to one value, so equal runs get equal keys.

    Plain cross-entropy ignores alpha and temperature, and alpha 0 is plain cross-entropy for
    every method; only Boltzmann smoothing reads the temperature; without a defence its
    settings are unused.
    """
    config = dict(values)
    if config["loss"] == "ce" or config["alpha"] == 0:
        config["loss"], config["alpha"] = "ce", 0.0
    if config["loss"] != "boltzmann":
        config["temperature"] = _CANONICAL.temperature
    if config["defence"] == "none":
        for name in ("defence_eps", "defence_beta", "defence_steps", "defence_step_size"):
            config[name] = getattr(_CANONICAL, name)
    elif config["defence"] == "fgsm-at":
        config["defence_steps"] = _CANONICAL.defence_steps
        config["defence_step_size"] = _CANONICAL.defence_step_size
    else:
        config["defence_beta"] = _CANONICAL.defence_beta
    if config["schedule"] != "step":
        config["step_epochs"] = _CANONICAL.step_epochs
    if config["optimizer"] == "adam" or config["momentum"] == 0:
        config["nesterov"] = False
    if config["optimizer"] == "adam":
        config["momentum"] = _CANONICAL.momentum
    return config


def _describe(error: ValidationError, where: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        got = item.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        joiner = "." if field and not where.endswith(" ") else ""
        lines.append(f"{where}{joiner}{field}: {item['msg']}{shown}")
    return "; ".join(lines)


def _check_axes(grid: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if name not in _TRAIN_FIELDS:
            raise SpecError(f"{where}: unknown key {name!r}; allowed: {', '.join(_TRAIN_FIELDS)}")
        listed = list(values) if isinstance(values, (list, tuple)) else [values]
        if not listed:
            raise SpecError(f"{where}.{name}: an axis needs at least one value")
        axes[name] = listed
    return axes


def _channels(dataset: str) -> int | None:
    spec = datasets.REGISTRY.get(dataset)
    return None if spec is None else len(spec.mean)


def expand(spec: SweepSpec, source: str = "<spec>") -> list[RunSpec]:
    """Every run of ``spec``, in declaration order, without duplicates."""
    unknown = sorted(set(spec.train) - set(_TRAIN_FIELDS))
    if unknown:
        raise SpecError(
            f"{source}: train: unknown key {unknown[0]!r}; allowed: {', '.join(_TRAIN_FIELDS)}"
        )
    runs: dict[str, RunSpec] = {}
    for index, grid in enumerate(spec.grid):
        where = f"{source}: grid[{index}]" if len(spec.grid) > 1 else f"{source}: grid"
        axes = _check_axes(grid, where)
        for combo in itertools.product(*axes.values()):
            chosen = dict(zip(axes, combo, strict=True))
            try:
                config = TrainConfig.model_validate({**spec.train, **chosen})
            except ValidationError as error:
                field = error.errors()[0]["loc"][0] if error.errors()[0]["loc"] else ""
                origin = where if field in chosen else f"{source}: train"
                raise SpecError(_describe(error, origin)) from None
            run = _make_run(config, spec.evaluate, source)
            runs.setdefault(run.key, run)
    return list(runs.values())


def _make_run(config: TrainConfig, evaluation: EvaluateSpec, source: str) -> RunSpec:
    train = TrainConfig.model_validate(canonical_train(config.model_dump()))
    eps = evaluation.eps
    if eps is None:
        channels = _channels(train.dataset)
        if channels is None:
            raise SpecError(
                f"{source}: evaluate.eps: give the budgets explicitly for the user dataset "
                f"{train.dataset!r} (defaults exist only for registered datasets)"
            )
        eps = default_eps((channels,))
    run = RunSpec(train=train, evaluate=evaluation, eps=tuple(eps), key="", train_key="")
    return RunSpec(
        train=train,
        evaluate=evaluation,
        eps=tuple(eps),
        key=_digest(run.resolved()),
        train_key=train_key(train),
    )


def train_key(config: TrainConfig) -> str:
    """The key of a training alone: equal for configs that train the same model."""
    canonical = canonical_train(config.model_dump())
    return _digest({"version": KEY_VERSION, "train": canonical})


def parse_spec(payload: Any, source: str = "<spec>") -> tuple[SweepSpec, list[RunSpec]]:
    """Validate a spec's mapping and expand it; :class:`SpecError` names what is wrong."""
    if not isinstance(payload, Mapping):
        raise SpecError(f"{source}: a spec is a mapping with name, train, grid and evaluate")
    try:
        spec = SweepSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(_describe(error, f"{source}: ")) from None
    runs = expand(spec, source)
    if not runs:
        raise SpecError(f"{source}: the grid expands to no runs")
    return spec, runs


def load_spec(path: str | os.PathLike[str]) -> tuple[SweepSpec, list[RunSpec]]:
    """Read, validate and expand a YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        payload = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    return parse_spec(payload, str(path))


def check_data_available(
    runs: Sequence[RunSpec], data_dir: str | os.PathLike[str] | None = None
) -> None:
    """Load every dataset the runs need, without downloading, so a missing or corrupt file
    fails before any training starts (the error names the file and where it was looked for).
    """
    needed = sorted({run.train.dataset for run in runs})
    for name in needed:
        sizes = {}
        for split in ("train", "test"):
            try:
                loaded = datasets.load(name, split, data_dir, download=False, progress=False)
            except datasets.DataError as error:
                raise SpecError(f"dataset {name!r} ({split}) is not usable: {error}") from None
            sizes[split] = len(loaded)
        for run in runs:
            if run.train.dataset != name:
                continue
            if run.evaluate.n > sizes["test"]:
                raise SpecError(
                    f"evaluate.n is {run.evaluate.n} but {name!r} has {sizes['test']} test images"
                )
            if run.train.train_subset is not None and run.train.train_subset > sizes["train"]:
                raise SpecError(
                    f"train_subset is {run.train.train_subset} but {name!r} has "
                    f"{sizes['train']} training images"
                )
