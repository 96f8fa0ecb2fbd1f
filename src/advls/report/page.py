"""A report as a document of sections, rendered to Markdown and to one self-contained HTML page.

The builder (:mod:`advls.report.build`) decides what the report says; this module only
renders it. Both renderers read the same :class:`Document`, so ``report.md`` and
``report.html`` cannot drift apart. The HTML page embeds its images as data URIs and its
style inline: it opens offline, from any folder, or attached to an e-mail.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from advls.report.tables import table_markdown

__all__ = [
    "CodeBlock",
    "Document",
    "FigureBlock",
    "Section",
    "TableBlock",
    "TextBlock",
    "frame_html",
    "render_html",
    "render_markdown",
]

#: Decides a cell's CSS class from its row and column labels and its value ("" for none).
CellClass = Callable[[Hashable, Hashable, object], str]


@dataclass(frozen=True)
class TextBlock:
    """Paragraphs and a bullet list; ``code``, **bold** and *emphasis* are the inline marks."""

    paragraphs: Sequence[str] = ()
    bullets: Sequence[str] = ()


@dataclass(frozen=True)
class TableBlock:
    """A table as the report shows it, and the files that hold it in full."""

    name: str
    frame: pd.DataFrame
    caption: str = ""
    files: Sequence[str] = ()
    digits: int = 3
    cell_class: CellClass | None = None
    collapsed: bool = False  # long tables: folded in HTML; in Markdown linked when it has files


@dataclass(frozen=True)
class FigureBlock:
    """A figure: its PNG (embedded in HTML), its other formats, and what it shows."""

    title: str
    png: str
    caption: str = ""
    files: Sequence[str] = ()


@dataclass(frozen=True)
class CodeBlock:
    """Preformatted text, e.g. a command to copy: shown verbatim, never reflowed."""

    text: str
    language: str = "sh"


Block = TextBlock | TableBlock | FigureBlock | CodeBlock


@dataclass
class Section:
    """A titled part of a page: its blocks in order, under an ``h2`` with an anchor."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """GitHub's heading anchor: punctuation dropped, spaces to hyphens."""
        return re.sub(r"[^\w\- ]", "", self.title.lower()).replace(" ", "-")


@dataclass
class Document:
    """A whole page: its title, the summary under it, and its sections."""

    title: str
    summary: TextBlock
    sections: list[Section]


# --------------------------------------------------------------------------- Markdown
def _markdown_text(block: TextBlock) -> str:
    parts = [*block.paragraphs]
    if block.bullets:
        parts.append("\n".join(f"- {bullet}" for bullet in block.bullets))
    return "\n\n".join(parts)


def _links(files: Sequence[str]) -> str:
    return " · ".join(f"[{Path(name).suffix.lstrip('.') or name}]({name})" for name in files)


def _markdown_block(block: Block) -> str:
    if isinstance(block, TextBlock):
        return _markdown_text(block)
    if isinstance(block, CodeBlock):
        # The fence is longer than any run of backticks in the text, so none can close it.
        longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}{block.language}\n{block.text}\n{fence}"
    if isinstance(block, FigureBlock):
        text = f"**{block.title}.** {block.caption}".strip()
        link = f" ({_links(block.files)})" if block.files else ""
        return f"![{block.title}]({block.png})\n\n{text}{link}"
    heading = f"**{block.name}.**" + (f" {block.caption}" if block.caption else "")
    link = f" Files: {_links(block.files)}." if block.files else ""
    if block.collapsed and block.files:  # long, and written in full elsewhere
        return f"{heading}{link}"
    table = block.frame.copy()
    table.attrs = {}
    return f"{heading}{link}\n\n{table_markdown(table, digits=block.digits)}"


def render_markdown(document: Document) -> str:
    """The report as GitHub Markdown, figures and table files linked relatively."""
    lines = [f"# {document.title}", "", _markdown_text(document.summary), ""]
    lines += ["## Contents", ""]
    lines += [f"- [{section.title}](#{section.anchor})" for section in document.sections]
    for section in document.sections:
        lines += ["", f"## {section.title}", ""]
        lines += ["\n\n".join(_markdown_block(block) for block in section.blocks)]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 1.5rem 2rem 4rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { margin-top: 2.4rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
nav ul { columns: 2; } code { background: #f3f4f6; padding: 0 .25rem; border-radius: 3px; }
pre { background: #f3f4f6; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
pre code { padding: 0; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto;
         border: 1px solid #e5e7eb; } figcaption { font-size: .92rem; color: #444; }
.table-wrap { overflow-x: auto; margin: .6rem 0 1.6rem; }
table { border-collapse: collapse; font-size: .86rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .2rem .45rem; }
th { background: #f6f8fa; font-weight: 600; } td.num { text-align: right; }
td.empty { color: #9ca3af; text-align: center; }
td.far { background: #fde68a; font-weight: 600; } td.up { color: #166534; }
td.down { color: #b91c1c; } td.flag { background: #fee2e2; color: #991b1b; }
td.holds { background: #dcfce7; } td.partly { background: #fef9c3; }
td.fails { background: #fee2e2; } td.tied { color: #6b7280; }
.caption { font-size: .92rem; color: #444; margin: .2rem 0; } .files { font-size: .85rem; }
details summary { cursor: pointer; font-weight: 600; margin: .4rem 0; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and *emphasis*; nothing is marked inside code."""
    parts = []
    for number, piece in enumerate(html.escape(text).split("`")):
        if number % 2:  # between backticks
            parts.append(f"<code>{piece}</code>")
            continue
        piece = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", piece)
        parts.append(re.sub(r"\*([^*\s][^*]*?)\*", r"<em>\1</em>", piece))
    return "".join(parts)


def _html_text(block: TextBlock) -> str:
    parts = [f"<p>{_inline(paragraph)}</p>" for paragraph in block.paragraphs]
    if block.bullets:
        items = "".join(f"<li>{_inline(bullet)}</li>" for bullet in block.bullets)
        parts.append(f"<ul>{items}</ul>")
    return "\n".join(parts)


def _value_text(value: object, digits: int) -> tuple[str, bool]:
    """A cell's text and whether it is numeric; missing values are an en dash."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–", False
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{float(value):.{digits}f}", True
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(value), True
    return str(value), False


def _header_rows(frame: pd.DataFrame, index_names: list[str]) -> list[str]:
    """One header row per column level; equal neighbouring labels merge into one cell."""
    columns = frame.columns
    levels = columns.nlevels
    rows = []
    for level in range(levels):
        labels = [c[level] if isinstance(c, tuple) else c for c in columns]
        name = columns.names[level]
        cells = []
        if level == levels - 1:
            cells += [f"<th>{html.escape(n)}</th>" for n in index_names]
        elif index_names:
            cells.append(f'<th colspan="{len(index_names)}"></th>')
        position = 0
        while position < len(labels):
            span = 1
            while (
                level < levels - 1
                and position + span < len(labels)
                and labels[position + span] == labels[position]
            ):
                span += 1
            label = str(labels[position])
            text = f"{_symbol(name)} = {label}" if name is not None else label
            colspan = f' colspan="{span}"' if span > 1 else ""
            cells.append(f"<th{colspan}>{html.escape(text)}</th>")
            position += span
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows


def _symbol(name: Hashable) -> str:
    return {"eps": "ε", "alpha": "α"}.get(str(name), str(name))


def frame_html(frame: pd.DataFrame, *, digits: int = 3, cell_class: CellClass | None = None) -> str:
    """A table as HTML: index levels as leading header cells, numbers right-aligned."""
    plain_index = isinstance(frame.index, pd.RangeIndex)
    index_names = [] if plain_index else [str(n or "") for n in frame.index.names]
    head = "\n".join(_header_rows(frame, index_names))
    body, previous = [], None
    for key, values in zip(frame.index, frame.itertuples(index=False), strict=True):
        parts = []
        if not plain_index:
            keys = key if isinstance(key, tuple) else (key,)
            for level, part in enumerate(keys):
                repeated = level == 0 and len(keys) > 1 and previous is not None
                repeated = repeated and previous[0] == part
                parts.append(f"<th>{'' if repeated else html.escape(str(part))}</th>")
            previous = keys
        for column, value in zip(frame.columns, values, strict=True):
            text, numeric = _value_text(value, digits)
            classes = ["num"] if numeric else (["empty"] if text == "–" else [])
            if cell_class is not None:
                extra = cell_class(key, column, value)
                if extra:
                    classes.append(extra)
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            parts.append(f"<td{attribute}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(parts) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"


def _file_links(files: Sequence[str]) -> str:
    if not files:
        return ""
    links = " · ".join(
        f'<a href="{html.escape(name)}">{html.escape(Path(name).name)}</a>' for name in files
    )
    return f'<div class="files">Files: {links}</div>'


def _html_block(block: Block, root: Path) -> str:
    if isinstance(block, TextBlock):
        return _html_text(block)
    if isinstance(block, CodeBlock):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, FigureBlock):
        data = base64.b64encode((root / block.png).read_bytes()).decode("ascii")
        caption = f"<strong>{html.escape(block.title)}.</strong> {_inline(block.caption)}"
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.title)}">'
            f"<figcaption>{caption}{_file_links(block.files)}</figcaption></figure>"
        )
    table = frame_html(block.frame, digits=block.digits, cell_class=block.cell_class)
    caption = f'<p class="caption"><strong>{html.escape(block.name)}.</strong> '
    caption += f"{_inline(block.caption)}</p>"
    inner = f'{caption}{_file_links(block.files)}<div class="table-wrap">{table}</div>'
    if block.collapsed:
        rows = len(block.frame)
        return (
            f'<details data-table="{html.escape(block.name)}"><summary>{html.escape(block.name)}'
            f" ({rows} rows)</summary>{inner}</details>"
        )
    return f'<div class="table" data-table="{html.escape(block.name)}">{inner}</div>'


def render_html(document: Document, root: str | Path) -> str:
    """The report as one HTML page; ``root`` is where the figures' relative paths start."""
    root = Path(root)
    nav = "".join(
        f'<li><a href="#{section.anchor}">{html.escape(section.title)}</a></li>'
        for section in document.sections
    )
    sections = []
    for section in document.sections:
        blocks = "\n".join(_html_block(block, root) for block in section.blocks)
        sections.append(
            f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>\n{blocks}'
            "</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(document.title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(document.title)}</h1>\n{_html_text(document.summary)}\n"
        f"<nav><strong>Contents</strong><ul>{nav}</ul></nav>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
