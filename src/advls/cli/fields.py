"""A pydantic model's fields as a command's options: one source for names, types and defaults.

Typer reads a command's options from its signature, so :func:`with_options` puts into a
command's signature the options :func:`field_options` makes from a model: ``field_name`` becomes
``--field-name``, a ``Literal`` a choice, a ``bool`` a ``--x/--no-x`` flag, and the model's
default the option's. The command takes them as ``**kwargs`` and builds the model from them,
which validates them once; :func:`describe_invalid` names what it refuses by option.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, get_origin

import typer
from pydantic import BaseModel, ValidationError

__all__ = ["describe_invalid", "field_options", "option_name", "with_options"]

Command = TypeVar("Command", bound=Callable[..., Any])


def option_name(field: str) -> str:
    """The option of a field: ``defence_eps`` -> ``--defence-eps``."""
    return "--" + field.replace("_", "-")


def _sentence(text: str | None) -> str:
    return "" if not text else text if text.endswith(".") else f"{text}."


def field_options(
    model: type[BaseModel],
    *,
    helps: Mapping[str, str] | None = None,
    unset: Collection[str] = (),
) -> list[inspect.Parameter]:
    """One keyword option per field of ``model``, in the model's order.

    Args:
        model: the pydantic model whose fields become options.
        helps: help text by field name; a field not in it takes its ``Field(description=…)``.
        unset: fields whose option defaults to None (given: passed on; not given: left to the
            model, e.g. to a preset that fills them in) and shows no default.

    Raises:
        ValueError: a field has neither help nor a description.
    """
    helps = helps or {}
    options = []
    for name, field in model.model_fields.items():
        text = helps.get(name) or _sentence(field.description)
        if not text:
            raise ValueError(f"{model.__name__}.{name} has no help: give it a description")
        if field.is_required():
            annotation, default = field.annotation, inspect.Parameter.empty
        elif name in unset or field.default is None:
            annotation, default = field.annotation | None, None
        else:
            annotation, default = field.annotation, field.default
        # A choice's values would widen the column of every option's type: the help says them.
        metavar = "<choice>" if get_origin(field.annotation) is Literal else None
        option = typer.Option(help=text, metavar=metavar)
        options.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[annotation, option],
            )
        )
    return options


def with_options(
    options: Sequence[inspect.Parameter], *, after: str
) -> Callable[[Command], Command]:
    """A decorator: the command with ``options`` in its signature after its parameter ``after``.

    The options stand where the command's ``**kwargs`` stood, and are passed into them; the
    parameters after ``after`` must be keyword-only, as the options are.
    """

    def decorate(command: Command) -> Command:
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        at = [p.name for p in own].index(after) + 1

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature([*own[:at], *options, *own[at:]])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def describe_invalid(error: ValidationError) -> str:
    """A model's validation error, each problem named by its option and the value given."""
    lines = [
        f"{option_name('-'.join(str(p) for p in e['loc']))}: {e['msg']} (got {e.get('input')!r})"
        for e in error.errors()
    ]
    return "invalid options:\n  " + "\n  ".join(lines)
