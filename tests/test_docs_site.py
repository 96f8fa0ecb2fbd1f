"""The documentation site: a strict build, complete references, and what a browser shows.

The site is built once per module with ``mkdocs build --strict`` into a temporary folder:
any warning fails it (a broken link or anchor, a page the nav names that does not exist, a
cross-reference that does not resolve, a docstring the API reference cannot parse). Then:

- the API reference has an entry for every public name of every public module;
- the CLI reference lists every command and option of the command tree;
- the search index exists and covers the guides and the API;
- headless Chromium opens the home page, an API page and a tutorial: the navigation is
  there, code is highlighted, and every image of every page loads.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml
from typer.core import TyperGroup, TyperOption

from browser import CHROMIUM_FLAGS, chromium
from test_docstrings import public_modules, public_names

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the docs extra is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
#: The command line has its own reference page; its modules are not in the API reference.
NOT_IN_API = ("advls.cli",)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built strictly; the build's log must hold no warning at all."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert done.returncode == 0 and not warnings, "\n".join(warnings) or log[-4000:]
    return out


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text()))


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


# --------------------------------------------------------------------------- the build
def test_every_guide_is_in_the_nav() -> None:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def paths(items: Any) -> list[str]:
        if isinstance(items, str):
            return [items]
        if isinstance(items, dict):
            return [p for value in items.values() for p in paths(value)]
        return [p for item in items for p in paths(item)]

    listed = set(paths(nav))
    guides = [DOCS / "index.md", DOCS / "getting-started.md", DOCS / "benchmarks.md"]
    for folder in ("tutorials", "concepts", "reference"):
        guides += (DOCS / folder).glob("*.md")
    missing = [str(p.relative_to(DOCS)) for p in guides if str(p.relative_to(DOCS)) not in listed]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"
    assert "reference/api/index.md" in listed


def test_every_public_name_has_an_api_entry(site: Path) -> None:
    ids = set().union(*(_ids(page) for page in (site / "reference" / "api").glob("*.html")))
    modules = [
        name for name in public_modules() if name != "advls" and not name.startswith(NOT_IN_API)
    ]
    # Each object is rendered once, where users import it from: a package that re-exports it,
    # or the module defining it. Any public module offering it under its name will do.
    offered: dict[tuple[int, str], set[str]] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            offered.setdefault((id(getattr(module, name)), name), set()).add(module_name)
    missing = [name for name in modules if name not in ids]
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            where = offered[(id(getattr(module, name)), name)]
            if not any(f"{owner}.{name}" in ids for owner in where):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"{len(missing)} public names have no API entry: {missing}"


def _commands(command: Any, ctx: typer.Context) -> list[tuple[str, Any]]:
    found = [(ctx.command_path, command)]
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            _, sub, _ = command.resolve_command(ctx, [name])
            found += _commands(sub, typer.Context(sub, info_name=name, parent=ctx))
    return found


def test_the_cli_reference_lists_every_command_and_option(site: Path) -> None:
    from advls.cli import app

    page = site / "reference" / "cli.html"
    ids, text = _ids(page), _text(page)
    root = typer.main.get_command(app)
    commands = _commands(root, typer.Context(root, info_name="advls"))
    assert {path for path, _ in commands} >= {
        "advls train", "advls attack", "advls evaluate", "advls sweep run", "advls report",
        "advls reproduce", "advls triangular", "advls analyze", "advls sweep salvage",
    }  # fmt: skip
    sections = re.split(r'<h[1-4] id="', page.read_text())
    for path, command in commands:
        anchor = path.replace(" ", "-")
        assert anchor in ids, f"no section for {path}"
        section = next(s for s in sections if s.startswith(f'{anchor}"'))
        for param in command.params:
            if isinstance(param, TyperOption) and not param.hidden:
                for option in (*param.opts, *param.secondary_opts):
                    assert option in html.unescape(section), f"{path}: {option} missing"
        assert (command.help or "").split("\n")[0].strip()[:40] in text


def test_the_search_index_covers_the_guides_and_the_api(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text())
    locations = {entry["location"].split("#")[0] for entry in index["docs"]}
    expected = ["index.html", "tutorials/evaluate.html", "concepts/masking-flags.html"]
    expected += ["reference/cli.html", "reference/api/losses.html", "results/index.html"]
    for page in expected:
        assert page in locations, page
    titles = {entry["title"] for entry in index["docs"]}
    assert {"SmoothedCrossEntropy", "evaluate", "Spread one evaluation across workers"} <= titles


# --------------------------------------------------------------------------- the browser
# Appended to a copy of a page (beside it, so that its assets resolve): after load, write
# what the browser made of it into the DOM.
PROBE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(img => ({
    src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth}));
  const nav = [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link")]
    .map(a => a.textContent.trim()).filter(Boolean);
  const code = [...document.querySelectorAll("div.highlight pre code")].map(c => ({
    text: c.innerText, tokens: c.querySelectorAll("span[class]").length,
    colours: new Set([...c.querySelectorAll("span[class]")].map(
      s => getComputedStyle(s).color)).size}));
  const headings = [...document.querySelectorAll("h1, h2, h3")].map(h => h.textContent.trim());
  const style = document.querySelector("link[rel=stylesheet]") !== null
    && getComputedStyle(document.querySelector(".md-header")).position !== "static";
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, nav, code, headings, style});
  document.body.appendChild(out);
});
</script>
"""


def probe(page: Path, scratch: Path) -> dict[str, Any]:
    """What headless Chromium shows of a page of the site."""
    copy = page.with_name(f"probed-{page.name}")
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={scratch / 'profile'}",
            "--allow-file-access-from-files",
            "--window-size=1280,900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    copy.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_chromium_shows_the_nav_an_api_page_and_a_tutorial(site: Path, tmp_path: Path) -> None:
    home = probe(site / "index.html", tmp_path)
    assert home["style"], "the theme's stylesheet did not apply"
    entries = ["Getting started", "Train with a smoothed loss", "Evaluate and audit a model"]
    entries += ["Gradient-masking flags", "Command line", "advls.losses", "Benchmarks"]
    for entry in entries:
        assert entry in home["nav"], entry

    api = probe(site / "reference" / "api" / "losses.html", tmp_path)
    assert "advls.losses" in api["headings"][0]
    assert any("SmoothedCrossEntropy" in heading for heading in api["headings"])
    signatures = [block for block in api["code"] if "def " in block["text"] or "(" in block["text"]]
    assert signatures and max(block["tokens"] for block in signatures) > 5

    tutorial = probe(site / "tutorials" / "training.html", tmp_path)
    assert tutorial["headings"][0].rstrip("¶") == "Train with a smoothed loss"
    python = [b for b in tutorial["code"] if "from advls.losses import" in b["text"]]
    shell = [b for b in tutorial["code"] if b["text"].startswith("advls train")]
    assert python and shell
    # Highlighted: the code is split into tokens, drawn in more than one colour.
    assert python[0]["tokens"] > 20 and python[0]["colours"] >= 3, python[0]
    assert shell[0]["colours"] >= 2, shell[0]


def test_every_image_of_the_site_loads(site: Path, tmp_path: Path) -> None:
    images = set()
    for page in site.rglob("*.html"):
        for source in re.findall(r'<img[^>]*\bsrc="([^"]+)"', page.read_text()):
            assert not source.startswith(("http:", "https:", "//")), f"{page}: {source}"
            target = (page.parent / html.unescape(source)).resolve()
            assert target.is_file(), f"{page.relative_to(site)}: {source} is not in the site"
            images.add(target.relative_to(site).as_posix())
    assert len(images) >= 20  # the results' figures, the home page's
    gallery = site / "all-images.html"
    tags = "".join(f'<img src="{source}" alt="{source}">' for source in sorted(images))
    gallery.write_text(f"<!doctype html><html><body>{tags}</body></html>")
    shown = probe(gallery, tmp_path)
    broken = [
        image["src"] for image in shown["images"] if not image["complete"] or not image["width"]
    ]
    assert len(shown["images"]) == len(images) and not broken, broken
