"""Griffe extension: advls's reStructuredText docstring markup, as the Markdown the site renders.

The docstrings are Google style (``Args:``, ``Returns:``, ``Raises:``) with
reStructuredText inline markup, which reads well in ``help()`` and in an editor. Before
mkdocstrings renders them this extension rewrites, in every docstring of the package:

- roles (``:func:`~advls.losses.logit_penalty```, ``:class:`Evaluation```) into
  cross-references when the name resolves to an object the API reference renders, and into
  code otherwise (a private helper, the standard library); a role naming an ``advls.`` path
  that does not exist is logged as a warning, which fails the strict build;
- simple tables (``=====  =====`` borders) into lists;
- a paragraph ending in ``::`` into one ending in ``:`` (the indented block after it is
  already a code block in Markdown).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

logger = griffe.logger

ROLE = re.compile(r":(?:py:)?(mod|func|class|meth|data|attr|obj|exc|const):`(~?)([^`]+)`")
BORDER = re.compile(r"^(\s*)(=+)((?:\s+=+)+)\s*$")
EXCLUDED = ("advls.cli",)


def _public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def _names(module: griffe.Module) -> list[str]:
    if module.exports is not None:
        return [str(name) for name in module.exports]
    return [n for n, m in module.members.items() if not m.is_alias and not m.is_module]


def rendered_paths(package: griffe.Module) -> set[str]:
    """Canonical paths of every object the API reference renders (see api_reference.py)."""
    paths: set[str] = set()

    def add(obj: griffe.Object | griffe.Alias) -> None:
        try:
            target = obj.final_target if obj.is_alias else obj
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return
        if target.path in paths:
            return
        paths.add(target.path)
        if target.is_class:
            for name, member in target.members.items():
                if not name.startswith("_"):
                    add(member)

    def walk(module: griffe.Module) -> None:
        if not _public(module.path) or module.path.startswith(EXCLUDED):
            return
        paths.add(module.path)
        for name in _names(module):
            if name in module.members:
                add(module.members[name])
        for sub in module.modules.values():
            if not sub.is_alias:
                walk(sub)

    walk(package)
    return paths


class RstMarkup(griffe.Extension):
    """Rewrite reStructuredText markup in the package's docstrings as Markdown."""

    def __init__(self, package: str = "advls") -> None:
        self.package = package

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Once the package is loaded, rewrite the docstring of every object in it."""
        if pkg.path != self.package:
            return
        self.collection = loader.modules_collection
        self.rendered = rendered_paths(pkg)
        self._rewrite_tree(pkg)

    def _rewrite_tree(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite_tree(member)

    def _resolve(self, target: str, scope: griffe.Object) -> str | None:
        """The canonical path ``target`` names from ``scope``, or None."""
        head, _, rest = target.partition(".")
        candidates = [target]
        for where in (scope, scope.parent):
            if where is None:
                continue
            try:
                resolved = where.resolve(head)
            except (griffe.NameResolutionError, ValueError):
                continue
            candidates.append(f"{resolved}.{rest}" if rest else resolved)
        for candidate in candidates:
            try:
                found = self.collection[candidate]
            except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            try:
                return found.final_target.path if found.is_alias else found.path
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None
        return None

    def _role(self, match: re.Match[str], scope: griffe.Object) -> str:
        _, short, target = match.groups()
        text, _, explicit = target.partition(" <")
        if explicit:
            target = explicit.rstrip(">")
        target = target.strip().removesuffix("()")
        shown = text.strip() if explicit else (target.rsplit(".", 1)[-1] if short else target)
        path = self._resolve(target, scope)
        if path is None and target.startswith(self.package + "."):
            where = scope.relative_filepath if hasattr(scope, "relative_filepath") else scope
            logger.warning(f"{where}: {scope.path} refers to {target}, which does not exist")
        if path is not None and path in self.rendered:
            return f"[`{shown}`][{path}]"
        return f"`{shown}`"

    def rewrite(self, text: str, scope: griffe.Object) -> str:
        """``text`` with its roles, simple tables and ``::`` rewritten."""
        text = ROLE.sub(lambda match: self._role(match, scope), text)
        text = _tables(text)
        return re.sub(r"(\S)::$", r"\1:", re.sub(r"^\s*::$", "", text, flags=re.M), flags=re.M)


def _tables(text: str) -> str:
    """Simple two-column tables (no header) as a list: first column in bold, then the rest."""
    lines = text.splitlines()
    out: list[str] = []
    position = 0
    while position < len(lines):
        border = BORDER.match(lines[position])
        end = next((i for i in range(position + 1, len(lines)) if BORDER.match(lines[i])), None)
        if border is None or end is None:
            out.append(lines[position])
            position += 1
            continue
        indent, width = len(border.group(1)), len(border.group(2))
        rows: list[list[str]] = []
        for line in lines[position + 1 : end]:
            body = line[indent:]
            if body[:1].isspace() and rows:
                rows[-1][1] += " " + body.strip()
                continue
            cut = width if body[width : width + 1].isspace() else body.find(" ", width)
            cut = len(body) if cut < 0 else cut
            rows.append([body[:cut].strip(), body[cut:].strip()])
        out += [" " * indent + f"- {first}: {rest}" for first, rest in rows]
        position = end + 1
    return "\n".join(out)
