"""MkDocs hook: one API reference page per public module of advls, listed from the code.

The pages are not written by hand, so a module added to the package appears in the reference
(and its docstrings are held to the strict build) without anyone remembering to add it. The
package is read statically with griffe, as mkdocstrings reads it: listing the pages imports
none of it.

Each object is rendered once, where a user imports it from: a package's page renders the
names in its ``__all__``, then each public submodule's own docstring and the public names of
that submodule the package does not re-export. A cross-reference to either path resolves,
because mkdocstrings registers an object's canonical path beside the path it renders it at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PACKAGE = "advls"
#: Where the generated pages live inside the site; the nav entry naming this index is where
#: the hook adds the module pages.
INDEX = "reference/api/index.md"
#: The command line is documented by its own reference page, generated from the commands.
EXCLUDED = frozenset({"advls.cli"})


@dataclass(frozen=True)
class ModulePage:
    """The reference page of one top-level module: what it renders and where."""

    module: str
    summary: str
    sections: list[tuple[str, list[str] | None]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"reference/api/{self.module.removeprefix(PACKAGE + '.')}.md"

    def markdown(self) -> str:
        # The module's own heading is the page title; each submodule is a section under it.
        lines = [f"::: {self.module}", "    options:", "      heading_level: 1", ""]
        for name, members in self.sections:
            lines += [f"::: {name}", "    options:", "      heading_level: 2"]
            lines.append(f"      members: {members!r}" if members else "      members: false")
            lines.append("")
        return "\n".join(lines)


def _is_public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def _public_names(module: griffe.Module) -> list[str]:
    """The module's ``__all__``, or else the public objects it defines (not imports)."""
    if module.exports is not None:
        return [str(name) for name in module.exports]
    return [
        name
        for name, member in module.members.items()
        if not name.startswith("_") and not member.is_alias and not member.is_module
    ]


def _canonical(module: griffe.Module, name: str) -> str:
    member = module.members.get(name)
    return member.canonical_path if member is not None else f"{module.path}.{name}"


def _summary(obj: griffe.Object) -> str:
    """The docstring's first paragraph, its roles (``:mod:`~a.b```) shown as code."""
    docstring = obj.docstring.value if obj.docstring else ""
    first = " ".join(docstring.split("\n\n")[0].split())
    return re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", first)


def _submodules(module: griffe.Module) -> list[griffe.Module]:
    found = []
    for name, member in module.modules.items():
        if _is_public(name) and not member.is_alias:
            found.append(member)
            found += _submodules(member)
    return found


def module_pages(src: Path) -> list[ModulePage]:
    """The reference pages of every public top-level module of the package under ``src``."""
    package = griffe.load(PACKAGE, search_paths=[str(src)], resolve_aliases=True)
    pages = []
    for name in sorted(package.modules):
        module = package.modules[name]
        if not _is_public(name) or module.path in EXCLUDED:
            continue
        page = ModulePage(module.path, _summary(module))
        # Canonical paths already on the page: a name re-exported twice is rendered once.
        rendered = {_canonical(module, n) for n in _public_names(module)}
        for sub in _submodules(module):
            own = [n for n in _public_names(sub) if _canonical(sub, n) not in rendered]
            rendered.update(_canonical(sub, n) for n in own)
            page.sections.append((sub.path, own or None))
        pages.append(page)
    return pages


def _index(pages: list[ModulePage]) -> str:
    rows = [f"| [{p.module}]({Path(p.uri).name}) | {p.summary} |" for p in pages]
    return "\n".join(
        [
            "# API reference",
            "",
            "Every public module of advls, generated from its docstrings. Import names from",
            "the module a page is titled with: a package's page lists what the package exports,",
            "then what each of its submodules adds. The command line has its own",
            "[reference](../cli.md).",
            "",
            "| module | what it holds |",
            "|---|---|",
            *rows,
            "",
        ]
    )


_PAGES: list[ModulePage] = []


def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    """List the module pages and add them to the nav beside the API index."""
    src = Path(__file__).resolve().parents[2] / "src"  # docs/hooks/ -> the repository
    _PAGES[:] = module_pages(src)
    entries = [{page.module: page.uri} for page in _PAGES]

    def extend(items: list[Any]) -> bool:
        for position, item in enumerate(items):
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if value == INDEX:
                items[position + 1 : position + 1] = entries
                return True
            if isinstance(value, list) and extend(value):
                return True
        return False

    if not extend(config.nav or []):
        raise ValueError(f"mkdocs.yml: the nav must name {INDEX}, where the API pages go")
    return config


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add the generated pages to the site's files."""
    files.append(File.generated(config, INDEX, content=_index(_PAGES)))
    for page in _PAGES:
        files.append(File.generated(config, page.uri, content=page.markdown()))
    return files
