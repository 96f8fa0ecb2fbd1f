"""Every code example of the README and the documentation's guides runs, on real data.

Our own small collector. For each page (``README.md``, ``docs/index.md``,
``docs/getting-started.md`` and the pages of ``docs/tutorials/``, ``docs/concepts/`` and
``docs/reference/``; not the generated reference, the results or the architecture) it reads the
fenced code blocks in order and runs them in one fresh working directory, with
``ADVLS_DATA`` pointing at the real MNIST and CIFAR-10 copies:

- ``python`` blocks run in one namespace, so a page's later blocks use its earlier ones'
  names, as a reader pasting them into one session would;
- ``sh``, ``bash`` and ``shell`` blocks run in bash with ``set -e -o pipefail``; in a
  ``console`` block only the ``$ `` lines run (the rest is output);
- a block with a ``title="path"`` (any language: a Python module, a YAML spec) is not run
  but written to that path, as the reader is asked to save it;
- a block right after ``<!-- not-run: reason -->`` is skipped and counted, with its reason;
- a page holding ``<!-- test: slower -->`` is a ``slower`` test (``make test-all``).

Each page is one test. A failure names the page and line of the block that failed, with the
tail of what it printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

RUNNABLE = {"python", "py", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")
SLOWER = re.compile(r"<!--\s*test:\s*slower\s*-->")
TITLE = re.compile(r'title="(?P<path>[^"]+)"')


def pages() -> list[Path]:
    """The pages whose examples run, in a stable order."""
    found = [REPO / "README.md", DOCS / "index.md", DOCS / "getting-started.md"]
    for folder in ("tutorials", "concepts", "reference"):
        found += sorted((DOCS / folder).glob("*.md"))
    return [page for page in found if page.is_file()]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: where it is, what it is, what to do with it."""

    where: str  # page:line of the opening fence
    line: int  # line number of the block's first line of code
    language: str
    code: str
    file: str | None  # the path to write it to, for a block with a title
    not_run: str | None  # the reason it is skipped, for a block marked not-run


def read_blocks(text: str, name: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    position = 0
    while position < len(lines):
        opening = FENCE.match(lines[position])
        if opening is None:
            position += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].strip()
        language = info.split()[0].lower() if info else ""
        end = position + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        # A block inside a list is indented with it; its code is not.
        body = [
            line[indent:] if not line[:indent].strip() else line.lstrip()
            for line in lines[position + 1 : end]
        ]
        before = next((lines[i] for i in range(position - 1, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before)
        title = TITLE.search(info)
        blocks.append(
            Block(
                where=f"{name}:{position + 1}",
                line=position + 2,
                language=language,
                code="\n".join(body) + "\n",
                file=title["path"] if title else None,
                not_run=marked["reason"] if marked else None,
            )
        )
        position = end + 1
    return blocks


def console_commands(code: str) -> str:
    """The commands of a ``console`` block: its ``$ `` lines and their continuations."""
    commands: list[str] = []
    continuing = False
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif continuing:
            commands.append(line)
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def runnable(blocks: list[Block]) -> list[Block]:
    """The blocks a run executes or writes, in order: not the skipped ones, nor plain
    listings (``text``, ``yaml`` without a title, output)."""
    return [b for b in blocks if b.not_run is None and (b.file or b.language in RUNNABLE)]


# Runs in a child process in the page's working directory, so that a page's imports, files
# and threads never touch the test process. Reads the blocks as JSON; stops at the first
# failure, naming it.
DRIVER = r"""
import json, os, subprocess, sys, time, traceback
sys.path.insert(0, os.getcwd())  # a module the page saved imports, as the reader's would
namespace = {"__name__": "__main__"}
for block in json.load(open(sys.argv[1])):
    print(f"\n===== {block['where']}", flush=True)
    started = time.monotonic()
    if block["file"]:
        os.makedirs(os.path.dirname(block["file"]) or ".", exist_ok=True)
        with open(block["file"], "w") as out:
            out.write(block["code"])
        continue
    if block["language"] in ("python", "py"):
        # Padded so that a traceback's line numbers are the page's.
        source = "\n" * (block["line"] - 1) + block["code"]
        try:
            exec(compile(source, block["filename"], "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"\nFAILED: {block['where']}", flush=True)
            sys.exit(1)
    else:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]])
        if done.returncode:
            print(f"\nexit status {done.returncode}\nFAILED: {block['where']}", flush=True)
            sys.exit(1)
    print(f"----- {block['where']}: {time.monotonic() - started:.1f} s", flush=True)
"""


def run_blocks(blocks: list[Block], workdir: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``blocks`` in ``workdir`` in order; their output, or AssertionError naming the
    block that failed with the tail of its output."""
    todo = []
    for block in runnable(blocks):
        code = console_commands(block.code) if block.language == "console" else block.code
        source = REPO / block.where.rsplit(":", 1)[0]
        filename = str(source) if source.is_file() else block.where.rsplit(":", 1)[0]
        todo.append({**asdict(block), "code": code, "filename": filename})
    plan = workdir / ".blocks.json"
    plan.write_text(json.dumps(todo))
    try:
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(plan)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout if isinstance(error.stdout, str) else ""
        raise AssertionError(f"timed out after {timeout} s:\n{output[-4000:]}") from None
    finally:
        plan.unlink(missing_ok=True)
    if done.returncode:
        failed = re.findall(r"FAILED: (.*)", done.stdout)
        raise AssertionError(
            f"{failed[-1] if failed else 'the page'} failed:\n{done.stdout[-6000:]}"
        )
    return done.stdout


def page_env(data: Path) -> dict[str, str]:
    """The environment a reader has after the getting-started page: advls on the PATH, the
    data directory set; one torch thread per page, as the test workers have one core each."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ADVLS_DATA"] = str(data)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    env["COLUMNS"] = "100"
    return env


def _blocks(page: Path) -> list[Block]:
    return read_blocks(page.read_text(), str(page.relative_to(REPO)))


def _page_params() -> list:
    """One test per page with an example to run: ``slow`` (they train on real data), and
    ``slower`` where the page says so."""
    params = []
    for page in pages():
        if runnable(_blocks(page)):
            slower = SLOWER.search(page.read_text())
            marks = [pytest.mark.slow, *([pytest.mark.slower] if slower else [])]
            params.append(pytest.param(page, id=str(page.relative_to(REPO)), marks=marks))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_page_examples_run(page: Path, real_data: Path, tmp_path: Path) -> None:
    slower = bool(SLOWER.search(page.read_text()))
    run_blocks(_blocks(page), tmp_path, page_env(real_data), timeout=3600 if slower else 600)


def test_every_tutorial_and_the_readme_have_examples_that_run() -> None:
    guides = [REPO / "README.md", DOCS / "getting-started.md"]
    guides += sorted((DOCS / "tutorials").glob("*.md"))
    assert len(guides) >= 8
    for page in guides:
        assert runnable(_blocks(page)), f"{page.name} has no example that runs"


# --------------------------------------------------------------------------- the collector
SAMPLE = """# A page

```python
value = 41
```

Some text.

```python title="helpers.py"
def answer():
    return 42
```

<!-- not-run: needs a GPU -->
```sh
advls train --device cuda --out runs/gpu
```

```console
$ python -c "print(6 * 7)" \\
    > out.txt
42
$ cat out.txt
```

```yaml
not: run
```

- In a list:

    ```python
    from helpers import answer
    assert answer() == value + 1
    ```
"""


def test_the_collector_reads_every_block_and_its_marks() -> None:
    blocks = read_blocks(SAMPLE, "sample.md")
    assert [b.language for b in blocks] == ["python", "python", "sh", "console", "yaml", "python"]
    assert blocks[0].where == "sample.md:3" and blocks[0].code == "value = 41\n"
    assert blocks[1].file == "helpers.py"
    assert blocks[2].not_run == "needs a GPU"
    assert [b.not_run for b in blocks if b is not blocks[2]] == [None] * 5
    assert blocks[5].code.startswith("from helpers import answer\n")  # the list's indent is gone
    assert console_commands(blocks[3].code) == (
        'python -c "print(6 * 7)" \\\n    > out.txt\ncat out.txt\n'
    )
    assert runnable(blocks) == [blocks[0], blocks[1], blocks[3], blocks[5]]


def test_a_page_runs_in_order_sharing_names_and_files(tmp_path: Path) -> None:
    output = run_blocks(read_blocks(SAMPLE, "sample.md"), tmp_path, page_env(tmp_path), 120)
    assert (tmp_path / "helpers.py").read_text().startswith("def answer")
    assert (tmp_path / "out.txt").read_text() == "42\n"
    assert "sample.md:15" not in output  # the not-run block never started


@pytest.mark.parametrize(
    ("page", "failing"),
    [
        ("```python\nx = 1\n```\n\n```python\n\nassert x == 2\n```\n", "page.md:5"),
        ("```sh\ntrue\n```\n\n```sh\nfalse\necho never\n```\n", "page.md:5"),
        ("```sh\necho one | false | cat\n```\n", "page.md:1"),
        ("```console\n$ ls no-such-file\n```\n", "page.md:1"),
    ],
)
def test_a_failing_block_fails_the_page_naming_it(tmp_path: Path, page: str, failing: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(f"{failing} failed")) as raised:
        run_blocks(read_blocks(page, "page.md"), tmp_path, page_env(tmp_path), 120)
    if "assert x == 2" in page:  # the traceback points at the page's own line
        assert 'page.md", line 7' in str(raised.value)
    assert "never" not in str(raised.value).split("failed:", 1)[1]


def test_skipped_blocks_are_the_exception_and_say_why() -> None:
    counts = {"run": 0, "not-run": 0}
    reasons: list[str] = []
    for page in pages():
        for block in _blocks(page):
            if block.not_run is not None:
                counts["not-run"] += 1
                reasons.append(f"{block.where}: {block.not_run}")
                assert block.not_run, f"{block.where}: say why the block cannot run"
            elif block in runnable([block]):
                counts["run"] += 1
    print(f"\n{counts['run']} examples run, {counts['not-run']} do not:\n" + "\n".join(reasons))
    assert counts["run"] >= 4 * counts["not-run"], reasons
    for page in pages():
        for line in page.read_text().splitlines():
            assert not re.search(r"<!--\s*not[-_ ]?run(?!:)", line), f"{page.name}: {line}"
