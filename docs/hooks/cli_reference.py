"""MkDocs hook: the CLI reference, generated from the ``advls`` command tree at build time.

``docs/reference/cli.md`` holds a marker line; this hook replaces it with a section per
command (its help, usage, arguments and options with types, choices and defaults), read
from the same click objects that print ``advls COMMAND --help``. The reference therefore
cannot drift from the commands: a new option appears the next time the site is built.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import Any

import typer
import typer.main
from typer.core import TyperArgument, TyperGroup, TyperOption

# typer carries its own copy of click: the command tree's classes are typer's, not click's.
Command = Any

#: The line of ``reference/cli.md`` that the generated reference replaces.
MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"


def _escape(text: str) -> str:
    """Markdown-safe prose: code spans kept, HTML and emphasis characters escaped outside."""
    pieces = re.split(r"(`[^`]*`)", text)
    out = []
    for piece in pieces:
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            out.append(piece)
            continue
        piece = piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(re.sub(r"([\\*_\[\]|#])", r"\\\1", piece))
    return "".join(out)


def _help(text: str) -> list[str]:
    """A command's help as Markdown: prose paragraphs, and example commands as code."""
    lines: list[str] = []
    for paragraph in (text or "").split("\n\n"):
        paragraph = paragraph.strip("\b\n ")
        if not paragraph:
            continue
        if paragraph.startswith("advls "):
            lines += ["```sh", *paragraph.splitlines(), "```", ""]
        else:
            lines += [_escape(" ".join(paragraph.split())), ""]
    return lines


def _type(param: Any, ctx: typer.Context) -> str:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice and descriptor.choices:
        choices = [c.value if isinstance(c, enum.Enum) else c for c in descriptor.choices]
        return " \\| ".join(f"`{c}`" for c in choices)
    shown = param.display_type(ctx) if hasattr(param, "display_type") else param.type.name
    return _escape(shown.strip("<>"))


def _default(param: Any, ctx: typer.Context) -> str:
    if param.required or getattr(param, "show_default", True) is False:
        return ""
    value = param.get_default(ctx, call=False)
    if callable(value) or value is None or value == () or value == []:
        return ""
    if getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None):
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "" if value is False else "on"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    return f"`{value}`"


def _parameter_rows(command: Command, ctx: typer.Context) -> list[str]:
    arguments = [p for p in command.params if isinstance(p, TyperArgument)]
    options = [
        p
        for p in command.params
        if isinstance(p, TyperOption) and not p.hidden and p.name != "help"
    ]
    lines: list[str] = []
    if arguments:
        lines += ["**Arguments**", "", "| argument | type | description |", "|---|---|---|"]
        for arg in arguments:
            required = " (required)" if arg.required else ""
            help_text = _escape(" ".join((getattr(arg, "help", "") or "").split()))
            lines.append(f"| `{arg.name.upper()}`{required} | {_type(arg, ctx)} | {help_text} |")
        lines.append("")
    if options:
        lines += ["**Options**", "", "| option | type | default | description |"]
        lines.append("|---|---|---|---|")
        for opt in options:
            names = " / ".join(f"`{name}`" for name in [*opt.opts, *opt.secondary_opts])
            required = " (required)" if opt.required else ""
            help_text = _escape(" ".join((opt.help or "").split()))
            row = f"| {names}{required} | {_type(opt, ctx)} | {_default(opt, ctx)} | {help_text} |"
            lines.append(row)
        lines.append("")
    return lines


def commands(
    command: Command | None = None, ctx: typer.Context | None = None
) -> Iterator[tuple[typer.Context, Command]]:
    """Every command of ``advls`` with its context, depth first, in ``--help`` order.

    A group's subcommands are resolved as the command line resolves them when they run,
    so a command built only on invocation (``advls train``) is listed with its options.
    """
    if command is None:
        from advls.cli import app

        command = typer.main.get_command(app)
        ctx = typer.Context(command, info_name="advls")
    assert ctx is not None
    yield ctx, command
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            _, sub, _ = command.resolve_command(ctx, [name])
            if sub is not None and not sub.hidden:
                yield from commands(sub, typer.Context(sub, info_name=name, parent=ctx))


def reference() -> str:
    """The Markdown of every command's section."""
    lines: list[str] = []
    for ctx, command in commands():
        path = ctx.command_path
        depth = min(path.count(" ") + 1, 4)
        lines += [f"{'#' * depth} `{path}`", ""]
        lines += _help(command.help or "")
        usage = " ".join([path, *command.collect_usage_pieces(ctx)])
        lines += ["```text", usage, "```", ""]
        if isinstance(command, TyperGroup):
            rows = [
                f"| [`{path} {name}`](#{(path + ' ' + name).replace(' ', '-')}) "
                f"| {_escape(command.get_command(ctx, name).get_short_help_str(limit=200))} |"
                for name in command.list_commands(ctx)
            ]
            lines += ["| command | what it does |", "|---|---|", *rows, ""]
        lines += _parameter_rows(command, ctx)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker of the CLI reference page with the generated reference."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} must hold the line {MARKER}, where the reference goes")
    return markdown.replace(MARKER, reference())
