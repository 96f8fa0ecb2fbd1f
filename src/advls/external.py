"""Models from outside advls: a factory named as ``pkg.module:factory`` or ``file.py:factory``,
its arguments, its weights and its normalisation.

Everything a user can get wrong is checked here, before any attack runs, and ends in an
:class:`ExternalModelError` that says what to change: a factory that cannot be imported or
raises, weights that need code to load (advls never unpickles objects: state dicts are read
with ``torch.load(weights_only=True)`` or from safetensors), weights whose keys or shapes do
not fit the model, and a model whose output on the dataset's images is not ``(N, K)`` logits.

advls feeds models images as ``(N, C, H, W)`` floats in ``[0, 1]``; a model that expects
normalised inputs is wrapped in a :class:`~advls.models.Normalize` layer (``mean``/``std``)
so that budgets and the box stay in pixel units.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from advls.data.integrity import file_digest

__all__ = [
    "ExternalModelError",
    "ModelSource",
    "build_model",
    "check_model_io",
    "fit_weights",
    "import_factory",
    "load_external_model",
    "parse_model_args",
    "read_state_dict",
]

#: How many offending keys, and how many of a module's callables, an error names.
_SHOWN, _SHOWN_NAMES = 5, 12
#: Keys under which training scripts commonly nest the state dict in a saved dictionary.
_NESTED = ("state_dict", "model_state_dict", "model")


class ExternalModelError(ValueError):
    """A model, its weights or its data cannot be used as given; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """How to build a model from outside advls (what ``--model``, ``--model-arg``,
    ``--weights``, ``--mean`` and ``--std`` say on the command line).

    ``factory`` is ``package.module:callable`` or ``path/to/file.py:callable``; it is called
    with ``args`` as keyword arguments and must return an :class:`torch.nn.Module`.
    """

    factory: str
    args: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if ":" not in self.factory or not all(self.factory.rpartition(":")[::2]):
            raise ExternalModelError(
                f"--model takes PACKAGE.MODULE:FACTORY or path/to/file.py:FACTORY, got "
                f"{self.factory!r}"
            )
        if (self.mean is None) != (self.std is None):
            raise ExternalModelError("--mean and --std go together: give both or neither")
        if self.std is not None and (
            len(self.std) != len(self.mean or ()) or min(self.std, default=1) <= 0
        ):
            raise ExternalModelError(
                f"--mean and --std need one value per channel and std > 0, got "
                f"{self.mean} and {self.std}"
            )

    def describe(self) -> dict[str, Any]:
        """The source as JSON-ready data, with the weights' sha256 (the record of an audit)."""
        return {
            "factory": self.factory,
            "args": dict(self.args),
            "weights": os.fspath(self.weights) if self.weights is not None else None,
            "weights_sha256": file_digest(self.weights) if self.weights is not None else None,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    def command_args(self) -> list[str]:
        """The command-line options that name this source, for a reproducing command."""
        words = ["--model", self.factory]
        for key, value in self.args.items():
            words += ["--model-arg", f"{key}={_argument_text(value)}"]
        if self.weights is not None:
            words += ["--weights", os.fspath(self.weights)]
        if self.mean is not None and self.std is not None:
            words += ["--mean", ",".join(f"{v:g}" for v in self.mean)]
            words += ["--std", ",".join(f"{v:g}" for v in self.std)]
        return words


def _argument_text(value: Any) -> str:
    """``value`` as ``--model-arg`` reads it back (YAML flow style for lists and mappings)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["depth=18", "widths=[16, 32]", "name=wide"]`` as keyword arguments.

    Each value is read as a YAML scalar or flow collection, so numbers, booleans, lists and
    mappings arrive typed (``18`` an int, ``true`` a bool); anything else is a string.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ExternalModelError(f"--model-arg takes KEY=VALUE with KEY a name, got {pair!r}")
        if key in parsed:
            raise ExternalModelError(f"--model-arg {key} is given twice")
        try:
            parsed[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            parsed[key] = text  # not YAML: the text itself, e.g. a path with a colon
    return parsed


def import_factory(reference: str) -> Callable[..., Any]:
    """The callable ``reference`` names: ``package.module:name`` or ``path/file.py:name``."""
    location, _, name = reference.rpartition(":")
    if location.endswith(".py") or os.sep in location or "/" in location:
        module = _import_file(Path(location).expanduser())
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:  # a module's own import can fail in any way
            hint = " (is it installed or on PYTHONPATH?)" if isinstance(error, ImportError) else ""
            raise ExternalModelError(
                f"cannot import {location}{hint}: {type(error).__name__}: {error}"
            ) from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        # Functions first: a factory is more often a function than a class.
        offered = sorted(
            (
                attr
                for attr, value in vars(module).items()
                if callable(value) and not attr.startswith("_") and not inspect.ismodule(value)
            ),
            key=lambda attr: (inspect.isclass(getattr(module, attr)), attr),
        )
        shown = ", ".join(offered[:_SHOWN_NAMES])
        more = f" and {len(offered) - _SHOWN_NAMES} more" if len(offered) > _SHOWN_NAMES else ""
        raise ExternalModelError(
            f"{location} has no callable {name!r}"
            + (f"; it defines {shown}{more}" if offered else "")
        )
    return factory


def _import_file(path: Path) -> Any:
    """Import a model file as its own module; its folder is importable while it runs, so it
    may import its neighbours, as a script would."""
    if not path.is_file():
        raise ExternalModelError(f"the model file {path} does not exist")
    resolved = path.resolve()
    tag = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    module_name = f"advls_external_{resolved.stem}_{tag}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ExternalModelError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    sys.path.insert(0, os.fspath(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ExternalModelError(
            f"importing {path} raised {type(error).__name__}: {error}"
        ) from None
    finally:
        sys.path.remove(os.fspath(resolved.parent))
    return module


def build_model(reference: str, args: Mapping[str, Any]) -> nn.Module:
    """Call the factory ``reference`` with ``args``; its result must be an ``nn.Module``."""
    factory = import_factory(reference)
    try:
        model = factory(**args)
    except Exception as error:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ExternalModelError(
            f"{reference}({shown}) raised {type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ExternalModelError(
            f"{reference} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file: safetensors, or a PyTorch state dict saved with
    ``torch.save`` and read with ``weights_only=True`` (no code runs).

    A dictionary that nests the state dict under ``state_dict``, ``model_state_dict`` or
    ``model`` is unwrapped, and a ``module.`` prefix on every key (``DataParallel``) dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExternalModelError(f"the weights file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        state: Any = _read_safetensors(path)
    else:
        state = _read_torch(path)
    if isinstance(state, Mapping):
        for key in _NESTED:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ExternalModelError(
            f"{path} holds a {type(state).__name__}, not a state dict of named tensors; save "
            "model.state_dict()"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ExternalModelError(f"{path} is not a readable safetensors file: {error}") from None


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is not the user's
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch colours its message for terminals; an error line is plain text.
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
        first = plain.splitlines()[0] if plain else ""
        raise ExternalModelError(
            f"{path} is a pickle that needs code to load ({first[:200]}); advls reads only "
            "weights (torch.load with weights_only=True). Save model.state_dict() with "
            "torch.save, or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ExternalModelError(
            f"cannot read {path} as safetensors or a PyTorch state dict: {error}"
        ) from None


def fit_weights(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking that keys, shapes and values fit,
    naming the first few that do not."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} for {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    found = {"missing": missing, "unexpected": unexpected, "of the wrong shape": mismatched}
    for what, keys in found.items():
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}")
    if problems:
        shown = "; ".join(problems)
        raise ExternalModelError(f"the weights {source} do not fit the model: {shown}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ExternalModelError(f"the weights {source} hold NaN or infinite values in {key}")
    model.load_state_dict(state, strict=True)


def load_external_model(source: ModelSource, device: torch.device | str = "cpu") -> nn.Module:
    """Build ``source``'s model, load its weights, wrap its normalisation; in eval mode."""
    from advls.models import Normalize  # local: the layer, not advls's model zoo

    model = build_model(source.factory, source.args)
    if source.weights is not None:
        fit_weights(model, read_state_dict(source.weights), os.fspath(source.weights))
    if source.mean is not None and source.std is not None:
        model = nn.Sequential(Normalize(source.mean, source.std), model)
    return model.to(device).eval()


def check_model_io(model: nn.Module, images: Tensor, device: torch.device | str = "cpu") -> int:
    """The number of classes ``K`` of ``model``, after checking that it takes ``images`` (as
    ``(N, C, H, W)`` floats in [0, 1]) and returns finite ``(N, K)`` logits, ``K >= 2``."""
    sample = images[:2].to(device)
    sample = sample.float() / 255 if sample.dtype == torch.uint8 else sample.float()
    shape = tuple(sample.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(sample)
    except Exception as error:
        raise ExternalModelError(
            f"the model cannot take the dataset's images, of shape {shape} (N, C, H, W), "
            f"floats in [0, 1]: {type(error).__name__}: {str(error).splitlines()[0][:300]}. "
            "Is it a model for this dataset, and for channels-first input?"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(output, Tensor):
        raise ExternalModelError(
            f"the model returns a {type(output).__name__}, not a tensor of logits"
        )
    if output.dim() != 2 or output.shape[0] != shape[0] or output.shape[1] < 2:
        raise ExternalModelError(
            f"the model maps images of shape {shape} to {tuple(output.shape)}; advls needs "
            f"logits of shape ({shape[0]}, K) with K >= 2 classes"
        )
    if not bool(torch.isfinite(output).all()):
        raise ExternalModelError("the model outputs NaN or infinite logits on clean images")
    return int(output.shape[1])
