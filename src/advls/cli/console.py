"""How the command line speaks: its consoles, its help text and its one error path.

Every command writes messages, progress and errors to :data:`console` (standard error), so
that standard output carries only results (JSON, tables, paths) a script can read. A command
ends on an error through :func:`fail`, or lets :func:`reported_errors` turn the library's
known errors into the same one line.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "KNOWN_ERRORS",
    "console",
    "fail",
    "help_text",
    "interrupted",
    "reported_errors",
    "stdout_console",
]

#: Messages, progress bars and errors.
console = Console(stderr=True)

#: The library's errors that are not ValueErrors, as (public module, name). (DataError,
#: CheckpointError, SpecError and pydantic's ValidationError are ValueErrors.) They are looked
#: up among the loaded modules when an error is caught, not imported, so that importing the
#: CLI imports no torch: an error's module is loaded by the time the error is raised.
KNOWN_ERRORS: tuple[tuple[str, str], ...] = (
    ("advls.store", "StoreError"),
    ("advls.train", "NonFiniteLossError"),
)


def stdout_console() -> Console:
    """A console on standard output, for tables; sized to the terminal as it is now."""
    return Console()


def help_text(doc: str) -> str:
    """A docstring as help that reflows at any terminal width.

    Each prose paragraph becomes one line, which the help renderer wraps to the terminal.
    An indented paragraph (an example command) keeps its lines, set flush with the prose:
    the renderer would dedent some examples and not others.
    """
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        "\n".join(line.strip() for line in p.splitlines())
        if p.startswith(" ")
        else " ".join(p.split())
        for p in paragraphs
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` and end the command with exit code ``code``.

    The message is one line, never folded at the terminal's width: paths and commands in it
    stay whole, to be copied (the terminal still wraps it for the eye).
    """
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=code)


def interrupted(message: str) -> NoReturn:
    """End a command stopped by Ctrl-C with exit code 130, saying what was kept."""
    console.print(f"[yellow]interrupted[/]: {message}")
    raise typer.Exit(code=130)


def _known(error: Exception, also: tuple[type[Exception], ...]) -> bool:
    loaded = tuple(
        getattr(sys.modules[module], name) for module, name in KNOWN_ERRORS if module in sys.modules
    )
    return isinstance(error, (ValueError, OSError, *loaded, *also))


@contextlib.contextmanager
def reported_errors(*also: type[Exception]) -> Iterator[None]:
    """Report the library's errors raised inside as one line and exit code 2.

    Known: ValueError (DataError, CheckpointError, SpecError, ValidationError and bad
    arguments), OSError, the errors of :data:`KNOWN_ERRORS`, and those in ``also``. Anything
    else is a bug and keeps its traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):  # click's own exits are RuntimeErrors: let them end
        raise
    except Exception as error:
        if not _known(error, also):
            raise
        fail(str(error))
