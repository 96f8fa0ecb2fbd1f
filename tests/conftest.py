"""Shared test configuration: thread budget, data location, small generated data sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Under pytest-xdist every worker gets one core; more threads would only fight over them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """Where the real MNIST/CIFAR-10 copies are: $ADVLS_DATA, else ../shared/data."""
    for candidate in (os.environ.get("ADVLS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate).resolve()  # absolute: subprocesses run in other folders
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real MNIST/CIFAR-10 not found: set ADVLS_DATA to the data directory")
    return found


def write_toy_npz(
    path: Path, n: int = 256, seed: int = 0, shape: tuple[int, ...] = (1, 16, 16)
) -> Path:
    """A 2-class set a small model learns in one epoch: class 1 images are bright, class 0 dark."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.uint8)
    base = np.where(y[:, None, None, None] == 1, 170, 40)
    x = np.clip(base + rng.integers(-30, 31, size=(n, *shape)), 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def toy_npz(tmp_path: Path) -> Path:
    return write_toy_npz(tmp_path / "toy.npz")


def cli_error(result) -> str:
    """The one error line of a command that failed cleanly (exit 2, no traceback), without
    its ``error: `` prefix; ``result`` is typer's CliRunner result."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.output.split())
    assert text.startswith("error: ") and "Traceback" not in text, text
    return text.removeprefix("error: ")
