"""Every public name of advls has a docstring: modules, functions, classes and their methods.

The public API is what a user can reach without an underscore: every module under ``advls``
whose path has no ``_`` part, and in it the names of its ``__all__`` (or, without one, the
functions and classes it defines). The API reference renders exactly these docstrings, so
an empty one is an empty entry on the site. The assertion lists every missing docstring with
its file and line, so one run shows all there is to write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import advls

SRC = Path(advls.__file__).resolve().parent


def public_modules() -> list[str]:
    """Dotted names of every public module of the package, the package itself first."""
    names = [advls.__name__]
    for info in pkgutil.walk_packages(advls.__path__, prefix="advls."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or else the functions and classes the module itself defines."""
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return list(exported)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def _generated(cls: type) -> bool:
    """Whether a class's docstring is the one Python writes for an undocumented dataclass
    or named tuple (its signature), not one its author wrote."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return True
    generated = dataclasses.is_dataclass(cls) or (
        issubclass(cls, tuple) and hasattr(cls, "_fields")
    )
    return generated and doc.startswith(f"{cls.__name__}(")


def _own_or_advls_doc(cls: type, name: str) -> bool:
    """A method is documented by its own docstring or by the advls base class it overrides:
    the project's contract documented once (``Check.judge``), not a third party's."""
    for base in cls.__mro__:
        member = base.__dict__.get(name)
        if member is None:
            continue
        if not base.__module__.startswith("advls"):
            return False
        function = member.fget if isinstance(member, property) else member
        function = getattr(function, "__func__", function)
        if getattr(function, "__doc__", None):
            return True
    return False


def _where(obj: Any) -> str:
    target = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    try:
        path = Path(inspect.getsourcefile(target) or "?").resolve()
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return "?"
    with contextlib.suppress(ValueError):  # a name defined outside the checkout
        path = path.relative_to(SRC.parents[1])
    return f"{path}:{line}"


def _methods(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties a class defines itself (not dunders, not fields)."""
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod | property) or inspect.isfunction(member):
            yield name, member


@functools.cache
def missing_docstrings() -> tuple[str, ...]:
    """``file:line  dotted.name (kind)`` for every public name without a docstring."""
    missing: list[str] = []
    seen: set[int] = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(f"{_where(module)}  {module_name} (module)")
        for name in public_names(module):
            value = getattr(module, name, None)
            if not (inspect.isclass(value) or inspect.isfunction(value)) or id(value) in seen:
                continue  # constants are documented by their `#:` comment, read by the site
            if not getattr(value, "__module__", "").startswith("advls"):
                continue  # a re-exported third-party name is documented by its own library
            seen.add(id(value))
            qualified = f"{value.__module__}.{value.__qualname__}"
            if inspect.isfunction(value):
                if not (value.__doc__ or "").strip():
                    missing.append(f"{_where(value)}  {qualified} (function)")
                continue
            if _generated(value):
                missing.append(f"{_where(value)}  {qualified} (class)")
            for method_name, method in _methods(value):
                if not _own_or_advls_doc(value, method_name):
                    kind = "property" if isinstance(method, property) else "method"
                    missing.append(f"{_where(method)}  {qualified}.{method_name} ({kind})")
    return tuple(missing)


def test_the_walk_finds_the_public_api() -> None:
    # The walk itself must see what users import: a broken walk would pass vacuously.
    modules = public_modules()
    for expected in ("advls.losses", "advls.attacks", "advls.evaluate", "advls.sweep.spec"):
        assert expected in modules
    assert not any("._" in name for name in modules)
    losses = importlib.import_module("advls.losses")
    assert "SmoothedCrossEntropy" in public_names(losses)
    theory = importlib.import_module("advls.theory.triangular")
    assert public_names(theory) == list(theory.__all__)


def test_the_check_sees_a_missing_docstring() -> None:
    @dataclasses.dataclass
    class Undocumented:
        value: int

        def method(self) -> int:
            return self.value

    @dataclasses.dataclass
    class Documented:
        """Written by hand."""

        value: int

    assert _generated(Undocumented)
    assert not _generated(Documented)
    assert [name for name, _ in _methods(Undocumented)] == ["method"]
    Undocumented.__module__ = "advls.fake"
    assert not _own_or_advls_doc(Undocumented, "method")


@pytest.mark.parametrize("kind", ["module", "function", "class", "method", "property"])
def test_every_public_name_has_a_docstring(kind: str) -> None:
    missing = [line for line in missing_docstrings() if line.endswith(f"({kind})")]
    assert not missing, f"{len(missing)} public {kind} docstrings missing:\n" + "\n".join(missing)
