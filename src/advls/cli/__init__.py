"""The ``advls`` command line: a thin layer over the library.

One module per command group: :mod:`~advls.cli.train`, :mod:`~advls.cli.attack`,
:mod:`~advls.cli.evaluate`, :mod:`~advls.cli.theory` (triangular, analyze),
:mod:`~advls.cli.report` (reproduce, report) and :mod:`~advls.cli.sweep`, over one console
and error path (:mod:`~advls.cli.console`). Commands import the library inside their
functions, so that ``import advls.cli`` and ``advls --help`` load no torch, matplotlib or
pandas. This module assembles them, in the order ``advls --help`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from advls.cli import attack, evaluate, report, sweep, theory, train
from advls.cli.console import help_text

__all__ = ["app"]


class _Commands(TyperGroup):
    """The top-level group, which builds ``train`` only when it runs.

    ``train``'s options are TrainConfig's fields, and reading them imports torch; so the group
    lists ``train`` by its help alone and builds the command (:func:`advls.cli.train.command`)
    when it is invoked, with or without ``--help``.
    """

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return ["train", *super().list_commands(ctx)]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if cmd_name == "train":
            return TyperCommand("train", help=help_text(train.train.__doc__ or ""))
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: typer.Context, args: list[str]
    ) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        return name, (train.command() if name == "train" else command), rest


def _add(group: typer.Typer, command: Callable[..., Any]) -> None:
    group.command(help=help_text(command.__doc__ or ""))(command)


app = typer.Typer(
    cls=_Commands,
    help="Label-smoothing defences against adversarial examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _command in (
    attack.attack,
    evaluate.evaluate,
    theory.triangular,
    theory.analyze,
    report.reproduce,
    report.report,
):
    _add(app, _command)

_sweep = typer.Typer(help=help_text(sweep.HELP), no_args_is_help=True)
for _command in sweep.COMMANDS:
    _add(_sweep, _command)
app.add_typer(_sweep, name="sweep")
