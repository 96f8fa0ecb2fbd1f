"""Headless Chromium for the tests: open a page as a reader would and say what it showed.

``probe(page)`` loads a copy of the page with a probe script appended (the page itself has
none), lets the browser finish, and returns every image (loaded or not, natural size), every
``data-table`` table (rows), and the page's visible text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# Appended to a copy of the page: after load, write what the browser made of it into the DOM.
PROBE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(img => ({
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
  const tables = [...document.querySelectorAll("[data-table]")].map(t => ({
    name: t.dataset.table, rows: t.querySelectorAll("tbody tr").length}));
  const text = document.body.innerText;
  const first = document.querySelector("h1 + p");  // the page's opening paragraph
  const box = first ? first.getBoundingClientRect() : null;
  const opening = first && {text: first.innerText, top: box.top, height: box.height,
                            viewport: window.innerHeight};
  const code = [...document.querySelectorAll("pre code")].map(c => c.innerText);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, tables, text, opening, code});
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    """Debian's chromium, installed on first use when this machine can (root and apt-get)."""
    found = shutil.which("chromium")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    return shutil.which("chromium") or pytest.fail("chromium installed but not on PATH")


def probe(page: Path, scratch: Path) -> dict[str, Any]:
    """What headless Chromium shows of ``page``: ``images``, ``tables``, ``text``,
    ``opening`` and ``code``."""
    scratch.mkdir(parents=True, exist_ok=True)
    probed = scratch / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={scratch / 'profile'}",
            "--window-size=1280,900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stderr[-2000:]
    text = match.group(1)
    for entity, char in (("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return json.loads(text)
