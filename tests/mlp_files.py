"""A trained MNIST MLP as a user hands it over: a factory file and a safetensors file, and a
sweep that audits it. Shared by the tests of sharded and certified evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

FACTORY = (
    "from advls.models import create\n\n"
    "def mlp():\n    return create('mlp', num_classes=10, input_shape=(1, 28, 28))\n"
)


def save_as_user_files(model: nn.Module, folder: Path) -> tuple[Path, Path]:
    """``folder/nets.py`` (factory ``mlp``) and ``folder/mlp.safetensors`` holding ``model``."""
    (folder / "nets.py").write_text(FACTORY)
    save_file(model.state_dict(), folder / "mlp.safetensors")
    return folder / "nets.py", folder / "mlp.safetensors"


def run_audit_sweep(model: nn.Module, folder: Path, name: str, evaluate: dict[str, Any]) -> Path:
    """A ``model:`` spec auditing ``model`` on MNIST with ``evaluate``, run into
    ``folder/results.db`` by ``advls sweep run`` (ADVLS_DATA must point at the data)."""
    from advls.cli import app

    save_as_user_files(model, folder)
    spec = {
        "name": name,
        "model": {"factory": "nets.py:mlp", "weights": "mlp.safetensors", "dataset": "mnist"},
        "evaluate": evaluate,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = folder / "results.db"
    done = CliRunner().invoke(
        app, ["sweep", "run", str(folder / "spec.yaml"), "--store", str(store), "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    return store
