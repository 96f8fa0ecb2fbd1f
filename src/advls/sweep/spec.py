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

Errors name the file, the field and the allowed values, and are raised before any training:
every attack configuration of every protocol is built and checked by the attacks' own
validation (:func:`check_attacks`), and numbers are typed strictly (``epochs: true`` is not
1, ``n: 2.0`` is not 2).

A spec is input from anyone, so it is read within bounds, each checked before the work it
guards (:data:`advls.limits.LIMITS`): at most :data:`MAX_SPEC_BYTES` read from a regular file (no
devices or pipes); YAML aliases may repeat values, but the document they expand to may hold
at most :data:`MAX_YAML_VALUES` values, nested at most :data:`MAX_YAML_DEPTH` deep (a
"billion laughs" is refused before it is built); and a grid may expand to at most
``max_runs`` runs (default :data:`DEFAULT_MAX_RUNS`), counted as the product of its axes
before any run is made.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    ValidationError,
    field_validator,
)
from torch import nn

from advls import data as datasets
from advls.attacks import from_config
from advls.attacks.validation import check_seed, make_generator
from advls.evaluate import Protocol, check_eps_list, default_eps, get_protocol
from advls.evaluate.inputs import check_l2_budgets, check_points
from advls.evaluate.protocols import default_l2_budgets, fit_to_classes, training_smoothing
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
    "EvaluateSpec",
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
        message = item["msg"]
        if item["type"] == "value_error":
            # Our own rule's message, as the commands print it: without pydantic's prefix,
            # and with the value already in it.
            message = str(item["ctx"]["error"])
        shown = "" if isinstance(got, (dict, list)) or "got " in message else f" (got {got!r})"
        joiner = "." if field and not where.endswith(" ") else ""
        lines.append(f"{where}{joiner}{field}: {message}{shown}")
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


def count_runs(spec: SweepSpec, source: str = "<spec>") -> int:
    """How many runs the grids declare (before duplicates are merged), without making any."""
    total = 0
    for index, grid in enumerate(spec.grid):
        where = f"{source}: grid[{index}]" if len(spec.grid) > 1 else f"{source}: grid"
        total += math.prod(len(values) for values in _check_axes(grid, where).values())
    return total


def expand(
    spec: SweepSpec, source: str = "<spec>", *, max_runs: int = DEFAULT_MAX_RUNS
) -> list[RunSpec]:
    """Every run of ``spec``, in declaration order, without duplicates.

    Raises:
        SpecError: an unknown key, a bad value (named by grid and field), or more than
            ``max_runs`` runs (counted before any is made).
    """
    unknown = sorted(set(spec.train) - set(_TRAIN_FIELDS))
    if unknown:
        raise SpecError(
            f"{source}: train: unknown key {unknown[0]!r}; allowed: {', '.join(_TRAIN_FIELDS)}"
        )
    declared = count_runs(spec, source)
    if declared > max_runs:
        raise SpecError(
            f"{source}: the grid expands to {declared} runs, more than the {max_runs} allowed "
            f"without --max-runs; pass --max-runs {declared} if you mean to run them all"
        )
    runs: dict[str, RunSpec] = {}
    for index, grid in enumerate(spec.grid):
        where = f"{source}: grid[{index}]" if len(spec.grid) > 1 else f"{source}: grid"
        axes = _check_axes(grid, where)
        for combo in itertools.product(*axes.values()):
            chosen = dict(zip(axes, combo, strict=True))
            try:
                # Strict: a YAML true is no epoch count, 2.0 no batch size, "0.1" no alpha.
                config = TrainConfig.model_validate({**spec.train, **chosen}, strict=True)
                check_seed_usable(config.seed)
            except ValidationError as error:
                field = error.errors()[0]["loc"][0] if error.errors()[0]["loc"] else ""
                origin = where if field in chosen else f"{source}: train"
                raise SpecError(_describe(error, origin)) from None
            except ValueError as error:
                origin = where if "seed" in chosen else f"{source}: train"
                raise SpecError(f"{origin}.seed: {error}") from None
            run = _make_run(config, spec.evaluate, source)
            runs.setdefault(run.key, run)
    return list(runs.values())


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


def check_attacks(runs: Sequence[RunSpec], source: str = "<spec>") -> None:
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
        smoothing = training_smoothing(run.train.model_dump())
        classes, shape = _task(run.train.dataset)
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
    payload: Any, source: str = "<spec>", *, max_runs: int = DEFAULT_MAX_RUNS
) -> tuple[SweepSpec, list[RunSpec]]:
    """Validate a spec's mapping, expand it and check its attacks; :class:`SpecError` names
    what is wrong. More than ``max_runs`` runs is an error, found before any run is made."""
    if not isinstance(payload, Mapping):
        raise SpecError(f"{source}: a spec is a mapping with name, train, grid and evaluate")
    try:
        spec = SweepSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(_describe(error, f"{source}: ")) from None
    runs = expand(spec, source, max_runs=max_runs)
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
) -> tuple[SweepSpec, list[RunSpec]]:
    """Read, validate and expand a YAML spec file, within the limits of :data:`LIMITS`."""
    path = Path(path)
    payload = _parse_yaml(_read_bounded(path), str(path))
    return parse_spec(payload, str(path), max_runs=max_runs)


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
            try:
                check_points(run.evaluate.n, sizes["test"], dataset=repr(name), split="test")
            except ValueError as error:
                raise SpecError(f"evaluate.{error}") from None
            if run.train.train_subset is not None and run.train.train_subset > sizes["train"]:
                raise SpecError(
                    f"train_subset is {run.train.train_subset} but {name!r} has "
                    f"{sizes['train']} training images"
                )
