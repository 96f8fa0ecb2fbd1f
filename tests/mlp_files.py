"""A briefly trained MNIST MLP, as the tests of sharded and certified evaluation use it, and
as a user hands it over: a factory file and a safetensors file, and a sweep that audits it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn
from typer.testing import CliRunner

FACTORY = (
    "from advls.models import create\n\n"
    "def mlp():\n    return create('mlp', num_classes=10, input_shape=(1, 28, 28))\n"
)


def trained_mlp(real_data: Path, points: int) -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP after 150 Adam steps on real MNIST (about 90% clean), in eval mode, and the
    first ``points`` test images and labels."""
    from advls import data
    from advls.models import create

    torch.manual_seed(0)
    train, test = data.load("mnist", "train", real_data), data.load("mnist", "test", real_data)
    net = create("mlp", num_classes=10, input_shape=(1, 28, 28))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    x = train.images.float() / 255
    for _ in range(150):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(net(x[batch]), train.labels[batch].long()).backward()
        optimizer.step()
    return net.eval(), test.images[:points], test.labels[:points].long()


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
