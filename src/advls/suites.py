"""The experiment suites shipped with advls: named specs that `advls reproduce` runs.

The YAML files live in the package (``advls/configs``, also reachable as ``configs/`` at the
top of a checkout), so an installed advls reproduces the paper without the repository.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SUITES_DIR", "suite_names", "suite_path"]

SUITES_DIR = Path(__file__).resolve().parent / "configs"


def suite_names() -> list[str]:
    """The shipped suites, by name (``mnist-quick``, ``paper-mnist``, ...)."""
    return sorted(path.stem for path in SUITES_DIR.glob("*.yaml"))


def suite_path(suite: str) -> Path:
    """The spec of a shipped suite, or ``suite`` itself when it names a YAML file.

    Raises:
        ValueError: neither a shipped suite nor an existing file; the message lists the
            suites.
    """
    shipped = SUITES_DIR / f"{suite}.yaml"
    if "/" not in suite and "\\" not in suite and shipped.is_file():
        return shipped
    given = Path(suite)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    raise ValueError(
        f"unknown suite {suite!r}; choose one of {', '.join(suite_names())} "
        "or give the path of a spec file (.yaml)"
    )
