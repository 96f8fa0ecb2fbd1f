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

A spec may instead audit models it did not train: a ``model`` section (instead of
``train``) names a factory, its arguments, the weights, the dataset and its split, and the
grid's axes are those fields (:class:`ModelSpec`); each run is an :class:`AuditRunSpec`,
keyed by the contents of its files (the weights' sha256, not their path)::

    name: study-audit
    model: {factory: models/cnn.py:small_cnn, args: {width: 16}, dataset: mnist}
    grid:
      weights: [ckpts/s0.safetensors, ckpts/s1.safetensors]
    evaluate: {protocols: [paper, strong], eps: [0.1, 0.3], n: 200}

Errors name the file, the field and the allowed values, and are raised before any training:
every attack configuration of every protocol is built and checked by the attacks' own
validation (:func:`check_attacks`), and numbers are typed strictly (``epochs: true`` is not
1, ``n: 2.0`` is not 2). An audited model is built once per distinct factory, arguments and
weights, its weights fitted and its output checked against the dataset's images and classes.

A spec is input from anyone, so it is read within bounds, each checked before the work it
guards (:data:`advls.limits.LIMITS`): at most :data:`MAX_SPEC_BYTES` read from a regular file (no
devices or pipes); YAML aliases may repeat values, but the document they expand to may hold
at most :data:`MAX_YAML_VALUES` values, nested at most :data:`MAX_YAML_DEPTH` deep (a
"billion laughs" is refused before it is built); and a grid may expand to at most
``max_runs`` runs (default :data:`DEFAULT_MAX_RUNS`), counted as the product of its axes
before any run is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import nn

from advls import data as datasets
from advls.attacks import from_config
from advls.attacks.validation import check_seed, make_generator
from advls.evaluate import Protocol, check_eps_list, default_eps, get_protocol
from advls.evaluate.inputs import check_l2_budgets, check_labels, check_points
from advls.evaluate.protocols import default_l2_budgets, fit_to_classes, training_smoothing
from advls.external import (
    ExternalModelError,
    ModelSource,
    build_model,
    check_model_io,
    fit_weights,
    import_factory,
    read_state_dict,
)
from advls.limits import (
    DEFAULT_MAX_RUNS,
    LIMITS,
    MAX_SPEC_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
)
from advls.train import TrainConfig

__all__ = [
    "DEFAULT_MAX_RUNS",
    "LIMITS",
    "MAX_SPEC_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "AnyRunSpec",
    "AuditRunSpec",
    "AuditedModel",
    "EvaluateSpec",
    "ModelSpec",
    "ProtocolEntry",
    "RunSpec",
    "SpecError",
    "SweepSpec",
    "check_attacks",
    "check_data_available",
    "check_seed_usable",
    "count_runs",
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


def check_seed_usable(seed: int, name: str = "seed") -> int:
    """A seed the attacks' and training's generators accept: the attacks' own rule, then the
    generator itself (an integer beyond 64 bits passes the type check but cannot seed one).
    """
    check_seed(seed)
    try:
        make_generator(seed, torch.device("cpu"))
    except (RuntimeError, OverflowError, ValueError) as error:
        raise ValueError(f"{name} {seed} cannot seed a random generator ({error})") from None
    return seed


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
        """The named protocol with this entry's attacks left out and parameters changed."""
        protocol = get_protocol(self.name)
        if self.without:
            protocol = protocol.without(*self.without)
        if self.params:
            protocol = protocol.with_params(**self.params)
        return protocol


class ShardSpec(BaseModel):
    """An evaluation cut into shards, as ``advls evaluate --shard-size/--shards`` cuts it:
    ``size`` points each, or ``count`` shards of equal size.

    The cut enters the run's key (it and the seed fix the results). A run's worker
    evaluates its shards one after another, keeping each in the run's artifacts as it
    finishes, so a killed sweep, run again, resumes an evaluation from its last finished
    shard; the numbers are those of ``advls evaluate`` with the same cut and seed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: StrictInt | None = Field(None, ge=1, description="points per shard")
    count: StrictInt | None = Field(None, ge=1, description="or: this many equal shards")

    @model_validator(mode="after")
    def _one_cut(self) -> ShardSpec:
        if (self.size is None) == (self.count is None):
            raise ValueError("shards takes size (points per shard) or count, one of them")
        return self


class EvaluateSpec(BaseModel):
    """How every run of a sweep is evaluated, on the first ``n`` test images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocols: tuple[ProtocolEntry, ...] = (ProtocolEntry(name="paper"),)
    eps: tuple[StrictFloat, ...] | None = Field(
        None, description="L-inf budgets in [0, 1] pixel units; default by dataset"
    )
    l2_budgets: tuple[StrictFloat, ...] | None = None
    n: StrictInt = Field(1000, description="evaluate on the first n test images")
    batch_size: StrictInt = Field(500, ge=1)
    seed: StrictInt = 0
    checks: StrictBool = Field(True, description="run the gradient-masking checks")
    surrogate: Literal["none", "twin"] = Field(
        "none", description="twin: train a plain-CE twin (seed + 1) for the transfer attack"
    )
    shards: ShardSpec | None = Field(
        None, description="cut the evaluation into shards, kept as they finish"
    )
    certify: tuple[Literal["ibp", "crown-ibp", "crown"], ...] = Field(
        (), description="bound methods: certified accuracy at every eps beside the attacks"
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

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        return check_seed_usable(value)

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if value is None else check_eps_list(value)

    @field_validator("n", mode="before")
    @classmethod
    def _n(cls, value: Any) -> int:
        return check_points(value)  # the commands' rule and message

    @field_validator("l2_budgets", mode="before")
    @classmethod
    def _l2(cls, value: Any) -> tuple[float, ...] | None:
        return None if value is None else check_l2_budgets(value)

    @model_validator(mode="after")
    def _shards_fit(self) -> EvaluateSpec:
        count = self.shards.count if self.shards is not None else None
        if count is not None and count > self.n:
            raise ValueError(
                f"shards.count ({count}) cannot exceed the evaluated points (n={self.n})"
            )
        return self


class SweepSpec(BaseModel):
    """The whole spec file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    train: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] | None = Field(
        None, description="models to audit instead of training (ModelSpec's fields)"
    )
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


def _resolved_evaluation(evaluate: EvaluateSpec, eps: tuple[float, ...]) -> dict[str, Any]:
    """A run's evaluation as stored and hashed, with its budgets and protocols resolved."""
    evaluation = evaluate.model_dump(mode="json", exclude={"eps", "protocols", "shards", "certify"})
    # Absent unless set, so that the keys of runs that use neither stay as they were.
    if evaluate.shards is not None:
        evaluation["shards"] = evaluate.shards.model_dump(mode="json")
    if evaluate.certify:
        evaluation["certify"] = list(dict.fromkeys(evaluate.certify))
    evaluation["eps"] = list(eps)
    # The entry rebuilds the protocol; "resolved" records what it meant when it ran.
    evaluation["protocols"] = [
        {**entry.model_dump(mode="json"), "resolved": entry.build().describe()}
        for entry in evaluate.protocols
    ]
    return {"evaluate": evaluation}


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
        """``dataset-model-method[-defence]-sSEED``."""
        config = self.train
        method = config.loss if config.loss == "ce" else f"{config.loss}-{config.alpha:g}"
        defence = "" if config.defence == "none" else f"-{config.defence}"
        return f"{config.dataset}-{config.model}-{method}{defence}-s{config.seed}"

    @property
    def dataset(self) -> str:
        """The dataset the run trains and is evaluated on."""
        return self.train.dataset

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits it reads: trained on ``train``, evaluated on ``test`` (the last)."""
        return ("train", "test")

    @property
    def smoothing(self) -> dict[str, Any] | None:
        """The training loss the paper protocol's attacks ascend."""
        return training_smoothing(self.train.model_dump())

    @property
    def task(self) -> tuple[int, tuple[int, ...]]:
        """Classes and one input's shape, for checking the attacks."""
        return _task(self.train.dataset)

    def resolved(self) -> dict[str, Any]:
        """The fully resolved configuration, as stored and hashed."""
        return {
            "version": KEY_VERSION,
            "train": self.train.model_dump(),
            **_resolved_evaluation(self.evaluate, self.eps),
        }


class ModelSpec(BaseModel):
    """A model to audit: a spec's ``model`` section merged with one point of its grid.

    Paths (a ``file.py`` factory, ``weights``, a ``.npz`` dataset) are relative to the spec
    file. Any field may be a grid axis; an axis of ``mean``, ``std`` or ``args`` is a list of
    lists or mappings.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    factory: StrictStr = Field(
        description="package.module:callable or path/to/file.py:callable returning an nn.Module"
    )
    args: dict[StrictStr, Any] = Field(
        default_factory=dict, description="keyword arguments of the factory"
    )
    weights: StrictStr | None = Field(
        None, description=".safetensors, or a state dict saved with torch.save"
    )
    dataset: StrictStr = Field(description="a registered dataset or a .npz file of x and y")
    split: StrictStr = "test"
    mean: tuple[StrictFloat, ...] | None = Field(None, description="per-channel mean, with std")
    std: tuple[StrictFloat, ...] | None = None
    label: StrictStr | None = Field(
        None, min_length=1, description="the run's name (default: the weights' file stem)"
    )

    @field_validator("args")
    @classmethod
    def _plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:  # the arguments are part of the run's key and of the stored config
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                "arguments must be plain YAML values (numbers, strings, booleans, lists, "
                f"mappings), got {value!r}"
            ) from None
        return value


_MODEL_FIELDS = tuple(ModelSpec.model_fields)


@dataclass(frozen=True)
class AuditedModel:
    """A :class:`ModelSpec` resolved: absolute paths, each file with its sha256.

    This is what a run stores and a worker rebuilds (:meth:`from_dict`); :meth:`identity`
    is what its key hashes, the files' contents and not where they lie.
    """

    factory: str
    args: dict[str, Any]
    weights: str | None
    dataset: str
    split: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    label: str | None
    factory_sha256: str | None  # None for a module's factory, named by its import path
    weights_sha256: str | None
    dataset_sha256: str | None  # None for a registered dataset, checked by its registry

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> AuditedModel:
        """The model as :meth:`as_dict` stored it."""
        values = dict(payload)
        for name in ("mean", "std"):
            values[name] = None if values[name] is None else tuple(values[name])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: as stored with the run."""
        values = dict(self.__dict__)
        for name in ("mean", "std"):
            values[name] = None if values[name] is None else list(values[name])
        return values

    def identity(self) -> dict[str, Any]:
        """What makes two audited models the same: the factory (a file by its bytes and the
        callable's name), its arguments, the weights' bytes and the normalisation."""
        factory = self.factory
        if self.factory_sha256 is not None:
            factory = ":" + factory.rpartition(":")[2]
        return {
            "factory": factory,
            "factory_sha256": self.factory_sha256,
            "args": self.args,
            "weights_sha256": self.weights_sha256,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    def data_identity(self) -> dict[str, Any]:
        """The evaluated data: a registered name, or a file's bytes, and the split."""
        dataset = None if self.dataset_sha256 is not None else self.dataset
        return {"dataset": dataset, "dataset_sha256": self.dataset_sha256, "split": self.split}

    def files(self) -> Iterator[tuple[str, str, str]]:
        """``(what, path, sha256)`` of every file the key was computed from."""
        location = self.factory.rpartition(":")[0]
        for what, path, digest in (
            ("model", location, self.factory_sha256),
            ("weights", self.weights, self.weights_sha256),
            ("dataset", self.dataset, self.dataset_sha256),
        ):
            if path is not None and digest is not None:
                yield what, path, digest

    def source(self) -> ModelSource:
        """The model as :func:`advls.external.load_external_model` builds it."""
        weights = None if self.weights is None else Path(self.weights)
        return ModelSource(self.factory, self.args, weights, self.mean, self.std)

    @property
    def name(self) -> str:
        """The label, else the weights' file stem, else the factory's callable."""
        if self.label is not None:
            return self.label
        if self.weights is not None:
            return Path(self.weights).stem
        return self.factory.rpartition(":")[2]


@dataclass(frozen=True)
class AuditRunSpec:
    """One audit: a model advls did not train, its evaluation, and the keys derived from them.

    ``key`` identifies the audit (model, data and evaluation, files by their contents);
    ``train_key`` the model alone (nothing is trained: it only groups the audits of one
    model). ``classes`` and ``shape`` are what validation found, for checking the attacks.
    """

    model: AuditedModel
    evaluate: EvaluateSpec
    eps: tuple[float, ...]
    key: str
    train_key: str
    classes: int = field(compare=False)
    shape: tuple[int, ...] = field(compare=False)

    @property
    def name(self) -> str:
        """The model's :attr:`AuditedModel.name`."""
        return self.model.name

    @property
    def dataset(self) -> str:
        """The dataset the model is evaluated on (a name, or a ``.npz``'s absolute path)."""
        return self.model.dataset

    @property
    def splits(self) -> tuple[str, ...]:
        """The one split it is evaluated on."""
        return (self.model.split,)

    @property
    def smoothing(self) -> None:
        """No training loss is known: the paper protocol's attacks ascend cross-entropy."""
        return None

    @property
    def task(self) -> tuple[int, tuple[int, ...]]:
        """The model's classes and one input's shape."""
        return self.classes, self.shape

    def resolved(self) -> dict[str, Any]:
        """The resolved configuration, as stored (the key hashes :meth:`keyed`)."""
        return {
            "version": KEY_VERSION,
            "kind": "audit",
            "model": self.model.as_dict(),
            **_resolved_evaluation(self.evaluate, self.eps),
        }

    def keyed(self) -> dict[str, Any]:
        """What the key hashes: :meth:`resolved` with files by their contents, without paths
        or the label (a file moved, or renamed in the spec, is the same audit)."""
        return {
            "version": KEY_VERSION,
            "kind": "audit",
            "model": self.model.identity(),
            "data": self.model.data_identity(),
            **_resolved_evaluation(self.evaluate, self.eps),
        }


#: A run of either kind: trained by advls, or an audit of a model from outside.
AnyRunSpec = RunSpec | AuditRunSpec


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
    elif config["defence"] == "ibp":  # bounds, not attacks: no mix, no PGD steps
        for name in ("defence_beta", "defence_steps", "defence_step_size"):
            config[name] = getattr(_CANONICAL, name)
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
        message = item["msg"]
        if item["type"] == "value_error":
            # Our own rule's message, as the commands print it: without pydantic's prefix,
            # and with the value already in it.
            message = str(item["ctx"]["error"])
        shown = "" if isinstance(got, (dict, list)) or "got " in message else f" (got {got!r})"
        joiner = "." if field and not where.endswith(" ") else ""
        lines.append(f"{where}{joiner}{field}: {message}{shown}")
    return "; ".join(lines)


def _fields(spec: SweepSpec) -> tuple[str, tuple[str, ...]]:
    """The section that holds a spec's defaults, and the keys it and the grid may name."""
    return ("model", _MODEL_FIELDS) if spec.model is not None else ("train", _TRAIN_FIELDS)


def _check_axes(
    grid: Mapping[str, Any], where: str, fields: tuple[str, ...] = _TRAIN_FIELDS
) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if name not in fields:
            raise SpecError(f"{where}: unknown key {name!r}; allowed: {', '.join(fields)}")
        listed = list(values) if isinstance(values, (list, tuple)) else [values]
        if not listed:
            raise SpecError(f"{where}.{name}: an axis needs at least one value")
        axes[name] = listed
    return axes


def _channels(dataset: str) -> int | None:
    spec = datasets.REGISTRY.get(dataset)
    return None if spec is None else len(spec.mean)


def count_runs(spec: SweepSpec, source: str = "<spec>") -> int:
    """How many runs the grids declare (before duplicates are merged), without making any."""
    _, fields = _fields(spec)
    total = 0
    for index, grid in enumerate(spec.grid):
        where = f"{source}: grid[{index}]" if len(spec.grid) > 1 else f"{source}: grid"
        total += math.prod(len(values) for values in _check_axes(grid, where, fields).values())
    return total


#: Where a field of one run came from: its grid (``…: grid.alpha``) or the section's defaults.
Origin = Callable[[str], str]


def _first_field(error: ValidationError) -> str:
    location = error.errors()[0]["loc"]
    return str(location[0]) if location else ""


def _trained_run(
    values: Mapping[str, Any], origin: Origin, evaluation: EvaluateSpec, source: str
) -> RunSpec:
    try:
        # Strict: a YAML true is no epoch count, 2.0 no batch size, "0.1" no alpha.
        config = TrainConfig.model_validate(values, strict=True)
        check_seed_usable(config.seed)
    except ValidationError as error:
        raise SpecError(_describe(error, origin(_first_field(error)))) from None
    except ValueError as error:
        raise SpecError(f"{origin('seed')}.seed: {error}") from None
    return _make_run(config, evaluation, source)


def _check_audit_evaluation(spec: SweepSpec, source: str) -> None:
    """What an audit spec cannot ask for: a trained twin, or the paper's table indices."""
    if "train" in spec.model_fields_set:
        raise SpecError(
            f"{source}: give train (runs advls trains) or model (models to audit), not both"
        )
    if spec.evaluate.surrogate != "none":
        raise SpecError(
            f"{source}: evaluate.surrogate: an audited model has no training to repeat, so no "
            "twin is trained; use surrogate: none (the transfer attack is then skipped)"
        )
    if spec.paper:
        raise SpecError(
            f"{source}: paper: maps trained runs to the paper's tables; a model spec has none"
        )


def expand(
    spec: SweepSpec,
    source: str = "<spec>",
    *,
    max_runs: int = DEFAULT_MAX_RUNS,
    base: str | os.PathLike[str] | None = None,
) -> list[AnyRunSpec]:
    """Every run of ``spec``, in declaration order, without duplicates.

    A ``model`` spec's paths are relative to ``base`` (the spec file's folder; default the
    working directory), and each of its distinct models is built and checked
    (:class:`_ModelChecks`).

    Raises:
        SpecError: an unknown key, a bad value (named by grid and field), a model that cannot
            be audited as declared, or more than ``max_runs`` runs (counted before any is
            made).
    """
    section, fields = _fields(spec)
    defaults = spec.model if spec.model is not None else spec.train
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise SpecError(
            f"{source}: {section}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}"
        )
    if spec.model is not None:
        _check_audit_evaluation(spec, source)
    declared = count_runs(spec, source)
    if declared > max_runs:
        raise SpecError(
            f"{source}: the grid expands to {declared} runs, more than the {max_runs} allowed "
            f"without --max-runs; pass --max-runs {declared} if you mean to run them all"
        )
    if spec.model is not None:
        make: Callable[[dict[str, Any], Origin], AnyRunSpec] = _ModelChecks(
            spec.evaluate, Path.cwd() if base is None else Path(base)
        ).run
    else:

        def make(values: dict[str, Any], origin: Origin) -> AnyRunSpec:
            return _trained_run(values, origin, spec.evaluate, source)

    runs: dict[str, AnyRunSpec] = {}
    for index, grid in enumerate(spec.grid):
        where = f"{source}: grid[{index}]" if len(spec.grid) > 1 else f"{source}: grid"
        axes = _check_axes(grid, where, fields)
        for combo in itertools.product(*axes.values()):
            chosen = dict(zip(axes, combo, strict=True))

            def origin(name: str, chosen: dict[str, Any] = chosen, where: str = where) -> str:
                return where if name in chosen else f"{source}: {section}"

            run = make({**defaults, **chosen}, origin)
            runs.setdefault(run.key, run)
    return list(runs.values())


def _names_a_file(location: str) -> bool:
    """Whether a factory's location is a file (as :func:`advls.external.import_factory`
    reads it) rather than an importable module."""
    return location.endswith(".py") or os.sep in location or "/" in location


class _ModelChecks:
    """Resolves and checks the models of a ``model`` spec, before anything runs.

    Each distinct factory, arguments and weights is built once (on the CPU), its weights
    fitted, and its output checked on each dataset it is audited on: finite ``(N, K)``
    logits for the dataset's images, and ``K`` above every label. A registered dataset is
    checked by its shape and classes (its files are read later, where the data directory is
    known: :func:`check_data_available`); a ``.npz`` is read here. Files are hashed once.
    """

    def __init__(self, evaluation: EvaluateSpec, base: Path) -> None:
        self.evaluation = evaluation
        self.base = base
        self._digests: dict[Path, str] = {}
        self._data: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None, int]] = {}
        self._classes: dict[str, int] = {}

    def run(self, values: dict[str, Any], origin: Origin) -> AuditRunSpec:
        """The audit of one point of the grid, resolved and checked."""
        try:
            config = ModelSpec.model_validate(values)
        except ValidationError as error:
            raise SpecError(_describe(error, origin(_first_field(error)))) from None

        def at(name: str) -> str:
            return f"{origin(name)}.{name}"

        model = self._resolve(config, at)
        classes, shape = self._check(model, at)
        eps = tuple(self.evaluation.eps or default_eps((shape[0],)))
        model_key = {"version": KEY_VERSION, "kind": "audit", "model": model.identity()}
        run = AuditRunSpec(
            model, self.evaluation, eps, "", "model-" + _digest(model_key), classes, shape
        )
        return dataclasses.replace(run, key=_digest(run.keyed()))

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return (path if path.is_absolute() else self.base / path).resolve()

    def _file(self, text: str, what: str, at: str) -> tuple[str, str]:
        """An existing file's absolute path and sha256."""
        path = self._path(text)
        if not path.is_file():
            raise SpecError(f"{at}: the {what} {path} does not exist")
        if path not in self._digests:
            self._digests[path] = datasets.file_digest(path)
        return str(path), self._digests[path]

    def _resolve(self, config: ModelSpec, at: Origin) -> AuditedModel:
        location, colon, callable_name = config.factory.rpartition(":")
        if not colon or not location or not callable_name:
            raise SpecError(
                f"{at('factory')}: give package.module:callable or path/to/file.py:callable, "
                f"got {config.factory!r}"
            )
        factory, factory_sha = config.factory, None
        if _names_a_file(location):
            path, factory_sha = self._file(location, "model file", at("factory"))
            factory = f"{path}:{callable_name}"
        weights = weights_sha = None
        if config.weights is not None:
            weights, weights_sha = self._file(config.weights, "weights file", at("weights"))
        dataset, dataset_sha = config.dataset, None
        registered = datasets.REGISTRY.get(config.dataset)
        if registered is not None:
            splits = tuple(registered.splits)
        elif config.dataset.lower().endswith(".npz"):
            dataset, dataset_sha = self._file(config.dataset, "dataset", at("dataset"))
            splits = ("train", "test")
        else:
            raise SpecError(
                f"{at('dataset')}: {config.dataset!r} is neither a registered dataset "
                f"({', '.join(datasets.REGISTRY)}) nor a .npz file"
            )
        if config.split not in splits:
            raise SpecError(
                f"{at('split')}: {config.dataset} has the splits {', '.join(splits)}, got "
                f"{config.split!r}"
            )
        model = AuditedModel(
            factory, dict(config.args), weights, dataset, config.split, config.mean, config.std,
            config.label, factory_sha, weights_sha, dataset_sha,
        )  # fmt: skip
        try:
            model.source()  # the normalisation's own rule: both or neither, one per channel
        except ExternalModelError as error:
            raise SpecError(f"{at('mean')}: {error}") from None
        return model

    def _images(
        self, model: AuditedModel, at: Origin
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Two images to try the model on, the labels to check it against (None: a
        registered dataset, whose labels are its classes) and the number of classes."""
        key = (model.dataset, model.split)
        if key not in self._data:
            registered = datasets.REGISTRY.get(model.dataset)
            if registered is not None:
                classes, shape = _task(model.dataset)
                self._data[key] = (torch.full((2, *shape), 0.5), None, classes)
            else:
                try:
                    loaded = datasets.load(model.dataset, model.split, progress=False)
                except datasets.DataError as error:
                    raise SpecError(f"{at('dataset')}: {error}") from None
                self._data[key] = (loaded.images[:2], loaded.labels, loaded.num_classes)
        return self._data[key]

    def _check(self, model: AuditedModel, at: Origin) -> tuple[int, tuple[int, ...]]:
        """The model's number of classes and one input's shape, after checking it."""
        images, labels, dataset_classes = self._images(model, at)
        shape = tuple(images.shape[1:])
        if model.mean is not None and len(model.mean) != shape[0]:
            raise SpecError(
                f"{at('mean')}: {len(model.mean)} value(s) for images of {shape[0]} channel(s)"
            )
        built = json.dumps([model.identity(), model.data_identity()], sort_keys=True)
        if built not in self._classes:
            self._classes[built] = self._classes_of(model, images, labels, dataset_classes, at)
        return self._classes[built], shape

    def _classes_of(
        self,
        model: AuditedModel,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        dataset_classes: int,
        at: Origin,
    ) -> int:
        try:
            import_factory(model.factory)
        except ExternalModelError as error:
            raise SpecError(f"{at('factory')}: {error}") from None
        try:
            module = build_model(model.factory, model.args)
        except ExternalModelError as error:
            raise SpecError(f"{at('args' if model.args else 'factory')}: {error}") from None
        if model.weights is not None:
            try:
                fit_weights(module, read_state_dict(Path(model.weights)), model.weights)
            except ExternalModelError as error:
                raise SpecError(f"{at('weights')}: {error}") from None
        # Normalisation is elementwise: the output's shape does not depend on it.
        try:
            classes = check_model_io(module, images)
        except ExternalModelError as error:
            raise SpecError(f"{at('dataset')}: {model.dataset} ({model.split}): {error}") from None
        if labels is not None:
            try:
                check_labels(labels, classes, f"{model.dataset} ({model.split})")
            except ValueError as error:
                raise SpecError(f"{at('dataset')}: {error}") from None
        elif classes < dataset_classes:
            raise SpecError(
                f"{at('dataset')}: the model returns {classes} logits per image, but "
                f"{model.dataset} has {dataset_classes} classes"
            )
        return classes


class _Reached(Exception):
    """An attack called its model: it has checked its parameters and would now run."""


class _Probe(nn.Module):
    """A model whose first forward pass stops the attack that calls it.

    Attacks check their parameters (the shared ones in ``register``'s wrapper, their own at
    the top of the algorithm) before they call the model, so calling an attack on the probe
    runs exactly the evaluation's validation of a configuration, and nothing else.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise _Reached


def _task(dataset: str) -> tuple[int, tuple[int, ...]]:
    """Classes and one input's shape of a registered dataset; a plausible one otherwise (a
    user's file is read only by check_data_available)."""
    spec = datasets.REGISTRY.get(dataset)
    if spec is None:
        return 10, (1, 28, 28)
    channels = len(spec.mean)
    return len(spec.classes), (channels, 28, 28) if channels == 1 else (channels, 32, 32)


def check_attacks(runs: Sequence[AnyRunSpec], source: str = "<spec>") -> None:
    """Build every attack configuration of every run's protocols and check it, before any
    training: names, parameters, ranges and seeds, by the attacks' own validation.

    Each configuration is built as the evaluation builds it (``AttackSpec.config`` with the
    run's budgets, smoothing and seed, then ``fit_to_classes``), configured by
    ``from_config`` and called on a probe model that stops it before any work. Runs that
    would build the same configurations are checked once.

    Raises:
        SpecError: naming the protocol, the attack's label, the budget and the attacks' own
            message.
    """
    probe = _Probe()
    checked: set[str] = set()
    for run in runs:
        smoothing = run.smoothing
        classes, shape = run.task
        evaluation = run.evaluate
        signature = json.dumps(
            [evaluation.model_dump(mode="json"), run.eps, smoothing, classes, shape],
            sort_keys=True,
        )
        if signature in checked:
            continue
        checked.add(signature)
        x = torch.full((1, *shape), 0.5)
        y = torch.zeros(1, dtype=torch.long)
        l2 = evaluation.l2_budgets or default_l2_budgets(shape)
        for entry in evaluation.protocols:
            protocol = entry.build()
            budgets = l2 if protocol.norm == "l2" else run.eps
            for attack in protocol.attacks:
                if attack.kind == "transfer" and evaluation.surrogate == "none":
                    continue  # the evaluation skips it too
                for eps in budgets if attack.bounded else (None,):
                    config = attack.config(
                        eps, smoothing=smoothing, seed=evaluation.seed, surrogate=probe
                    )
                    config, _ = fit_to_classes(config, classes)
                    try:
                        from_config(config)(probe, x, y)
                    except _Reached:
                        continue
                    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
                        at = "" if eps is None else f" at eps {eps:g}"
                        raise SpecError(
                            f"{source}: evaluate.protocols: {protocol.name}/{attack.label}"
                            f"{at}: {error}"
                        ) from None


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


def parse_spec(
    payload: Any,
    source: str = "<spec>",
    *,
    max_runs: int = DEFAULT_MAX_RUNS,
    base: str | os.PathLike[str] | None = None,
) -> tuple[SweepSpec, list[AnyRunSpec]]:
    """Validate a spec's mapping, expand it and check its attacks; :class:`SpecError` names
    what is wrong. More than ``max_runs`` runs is an error, found before any run is made.
    A ``model`` spec's paths are relative to ``base`` (default: the working directory)."""
    if not isinstance(payload, Mapping):
        raise SpecError(
            f"{source}: a spec is a mapping with name, train (or model), grid and evaluate"
        )
    try:
        spec = SweepSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(_describe(error, f"{source}: ")) from None
    runs = expand(spec, source, max_runs=max_runs, base=base)
    if not runs:
        raise SpecError(f"{source}: the grid expands to no runs")
    check_attacks(runs, source)
    return spec, runs


def _read_bounded(path: Path) -> str:
    """The text of a regular file of at most :data:`MAX_SPEC_BYTES`, read without blocking
    on a pipe or reading a device forever."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read it ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise SpecError(f"{path}: {kind}; a spec is a YAML file")
        try:
            data = handle.read(MAX_SPEC_BYTES + 1)
        except OSError as error:
            raise SpecError(f"{path}: cannot read it ({error.strerror})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path}: larger than {MAX_SPEC_BYTES} bytes, more than a spec holds; a grid of "
            "many runs is written as axes, not as a list of runs"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_YAML_VALUES` values, or that
    nests deeper than :data:`MAX_YAML_DEPTH`, before anything is built from it.

    An alias is the node it names, shared: the size of each node is computed once, so this
    costs the size of the file, not of the expansion.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise SpecError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep")
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise SpecError(f"{source}: an alias refers to a value that contains it")
            return known
        sizes[id(node)] = -1  # in progress: a recursive alias comes back here
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item, depth + 1) for item in node.value)
        else:
            total = 1
        if total > MAX_YAML_VALUES:
            raise SpecError(
                f"{source}: expands to more than {MAX_YAML_VALUES} values (its aliases repeat "
                "too much); write the values out, or alias smaller parts"
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def _parse_yaml(text: str, source: str) -> Any:
    """YAML's safe subset, with its aliases' expansion bounded before it is built."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # reads the stream: bad characters fail here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SpecError(f"{source}: not valid YAML: {error}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_spec(
    path: str | os.PathLike[str], *, max_runs: int = DEFAULT_MAX_RUNS
) -> tuple[SweepSpec, list[AnyRunSpec]]:
    """Read, validate and expand a YAML spec file, within the limits of :data:`LIMITS`; a
    ``model`` spec's paths are relative to the file's folder."""
    path = Path(path)
    payload = _parse_yaml(_read_bounded(path), str(path))
    return parse_spec(payload, str(path), max_runs=max_runs, base=path.resolve().parent)


def check_data_available(
    runs: Sequence[AnyRunSpec], data_dir: str | os.PathLike[str] | None = None
) -> None:
    """Load every dataset split the runs need, without downloading, so a missing or corrupt
    file fails before any training starts (the error names the file and where it was looked
    for); each run's ``n`` must fit its evaluated split, and ``train_subset`` the training set.
    """
    order = {"train": 0, "test": 1}
    needed = sorted(
        {(run.dataset, split) for run in runs for split in run.splits},
        key=lambda pair: (pair[0], order.get(pair[1], len(order)), pair[1]),
    )
    sizes: dict[tuple[str, str], int] = {}
    for name, split in needed:
        try:
            loaded = datasets.load(name, split, data_dir, download=False, progress=False)
        except datasets.DataError as error:
            raise SpecError(f"dataset {name!r} ({split}) is not usable: {error}") from None
        sizes[(name, split)] = len(loaded)
    for run in runs:
        name, evaluated = run.dataset, run.splits[-1]
        try:
            check_points(
                run.evaluate.n, sizes[(name, evaluated)], dataset=repr(name), split=evaluated
            )
        except ValueError as error:
            raise SpecError(f"evaluate.{error}") from None
        subset = run.train.train_subset if isinstance(run, RunSpec) else None
        if subset is not None and subset > sizes[(name, "train")]:
            raise SpecError(
                f"train_subset is {subset} but {name!r} has {sizes[(name, 'train')]} training "
                "images"
            )
