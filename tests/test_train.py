"""Training: learning, determinism, exact resume after a kill, non-finite losses, config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from advls import train as training
from advls.checkpoint import CheckpointError, load_model, read_checkpoint
from advls.locks import LOCK_FILE
from advls.losses import ALIASES, METHODS, SmoothedCrossEntropy
from advls.train import (
    NonFiniteLogitsError,
    NonFiniteLossError,
    TrainConfig,
    _augment_crop_flip,
    resolve_device,
    train,
    train_epoch,
)

FAST = {"model": "linear", "epochs": 1, "batch_size": 32, "lr": 0.05}


def _config(npz: Path, **overrides) -> TrainConfig:
    return TrainConfig(dataset=str(npz), **{**FAST, **overrides})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_learns_an_easy_problem(toy_npz: Path) -> None:
    result = train(_config(toy_npz, model="lenet-mnist", epochs=2), progress=False, device="cpu")
    assert result.test_accuracy == 1.0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5
    assert not result.model.training


@pytest.mark.parametrize("loss", ["ce", "standard", "adversarial", "boltzmann", "second_best"])
def test_same_seed_same_weights_other_seed_other_weights(toy_npz: Path, loss: str) -> None:
    first = train(_config(toy_npz, loss=loss, model="lenet-mnist"), progress=False, device="cpu")
    second = train(_config(toy_npz, loss=loss, model="lenet-mnist"), progress=False, device="cpu")
    other = train(
        _config(toy_npz, loss=loss, model="lenet-mnist", seed=1), progress=False, device="cpu"
    )
    for key, value in _weights(first.model).items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert any(
        not torch.equal(v, other.model.state_dict()[k]) for k, v in _weights(first.model).items()
    )


def test_checkpoint_round_trip_and_metadata(toy_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(_config(toy_npz, epochs=2), run, progress=False, device="cpu")
    model, meta = load_model(run)
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    assert meta["epoch"] == 2 and meta["metrics"]["epoch"] == 2
    assert meta["config"] == _config(toy_npz, epochs=2).model_dump()
    assert meta["versions"]["torch"] == torch.__version__
    # Only safetensors and JSON on disk (and the writer's pid in the lock file): nothing that
    # would need unpickling.
    suffixes = {p.suffix for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert suffixes == {".json", ".safetensors"}
    assert set(os.listdir(run)) == {"checkpoint.json", "epoch-0001", "epoch-0002", LOCK_FILE}
    assert set(os.listdir(run / "epoch-0002")) == {
        "model.safetensors", "state.safetensors", "epoch.json"
    }  # fmt: skip


def test_checkpoint_files_and_keys_stay_readable(toy_npz: Path, tmp_path: Path) -> None:
    """The on-disk format is a contract: runs written by earlier versions must still resume."""
    run = tmp_path / "run"
    config = _config(toy_npz, epochs=2, optimizer="adam", schedule="step", step_epochs=1)
    train(config, run, progress=False, device="cpu")
    record = json.loads((run / "checkpoint.json").read_text())
    assert set(record) == {
        "format", "epoch", "path", "versions", "config", "model", "augment",
        "optimizer", "schedule", "history", "metrics", "sha256",
    }  # fmt: skip
    where = (record["format"], record["epoch"], record["path"])
    assert where == ("advls.checkpoint/1", 2, "epoch-0002")
    assert set(record["model"]) == {"name", "num_classes", "input_shape", "mean", "std"}
    assert set(record["optimizer"]) == {"state", "param_groups"}
    assert record["optimizer"]["state"]["0"]["exp_avg"] == {"tensor": "optim.0.exp_avg"}
    assert record["schedule"]["last_epoch"] == 2 * 256 // 32
    assert record["metrics"] == record["history"][-1] and len(record["history"]) == 2
    state = load_file(run / "epoch-0002" / "state.safetensors")
    assert set(state) == {
        "rng.torch", "rng.shuffle", "rng.augment",
        "optim.0.step", "optim.0.exp_avg", "optim.0.exp_avg_sq",
        "optim.1.step", "optim.1.exp_avg", "optim.1.exp_avg_sq",
    }  # fmt: skip
    weights = load_file(run / "epoch-0002" / "model.safetensors")
    assert set(weights) == {"normalize.mean", "normalize.std", "net.fc.weight", "net.fc.bias"}


def test_finished_run_trains_nothing_more(toy_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(toy_npz), run, progress=False, device="cpu")
    stamp = (run / "checkpoint.json").stat().st_mtime_ns
    again = train(_config(toy_npz), run, progress=False, device="cpu")
    assert again.resumed_from == 1 and len(again.history) == 1
    assert (run / "checkpoint.json").stat().st_mtime_ns == stamp


def test_a_different_configuration_in_the_same_directory_is_refused(
    toy_npz: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(_config(toy_npz), run, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"different configuration \(differs in: alpha, lr\)"):
        train(_config(toy_npz, alpha=0.3, lr=0.01), run, progress=False, device="cpu")


def test_damaged_or_foreign_checkpoints_are_named(toy_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(toy_npz), run, progress=False, device="cpu")
    weights = run / "epoch-0001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged"):
        load_model(run)
    with pytest.raises(CheckpointError, match="no advls checkpoint"):
        read_checkpoint(tmp_path / "nowhere")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="is not an advls checkpoint"):
        read_checkpoint(tmp_path / "other.json")


_ONE_THREAD_CLI = "import torch; torch.set_num_threads(1); from advls.cli import app; app()"


def _cli_train(npz: Path, run: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable, "-c", _ONE_THREAD_CLI,
        "train", "--dataset", str(npz), "--model", "lenet-mnist", "--epochs", str(epochs),
        "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(run),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    from conftest import write_toy_npz

    npz = write_toy_npz(tmp_path / "toy.npz", n=2048, shape=(1, 28, 28))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _cli_train(npz, straight, 3).wait(timeout=300) == 0

    process = _cli_train(npz, killed, 3)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2, right after epoch 1 was committed
    process.wait()
    assert read_checkpoint(killed).epoch == 1

    resumed = _cli_train(npz, killed, 3)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert b"resuming from epoch 1" in err
    a = load_file(straight / "epoch-0003" / "model.safetensors")
    b = load_file(killed / "epoch-0003" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history_a = json.loads((straight / "checkpoint.json").read_text())["history"]
    history_b = json.loads((killed / "checkpoint.json").read_text())["history"]
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]


class _BlowsUpAfter(torch.nn.Module):
    """Fault injection: a real model whose logits turn to NaN after ``steps`` training calls."""

    def __init__(self, inner: torch.nn.Module, steps: int) -> None:
        super().__init__()
        self.inner, self.steps = inner, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if self.training:
            self.steps -= 1
            if self.steps < 0:
                return logits * float("nan")
        return logits

    def state_dict(self, *args, **kwargs):  # the checkpoint keeps the inner model's names
        return self.inner.state_dict(*args, **kwargs)


@pytest.mark.parametrize("loss", ["ce", "adversarial"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    real_create = training.create
    steps_per_epoch = 256 // 32
    monkeypatch.setattr(
        training, "create", lambda *a, **k: _BlowsUpAfter(real_create(*a, **k), steps_per_epoch + 3)
    )
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 4: .*last good checkpoint"):
        train(_config(toy_npz, epochs=3, loss=loss), run, progress=False, device="cpu")
    assert read_checkpoint(run).epoch == 1
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_logits_name_the_step_and_their_cause(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = training.create
    monkeypatch.setattr(training, "create", lambda *a, **k: _BlowsUpAfter(real_create(*a, **k), 2))
    with pytest.raises(NonFiniteLogitsError, match=r"epoch 1, step 3: logits contain NaN") as info:
        train(_config(toy_npz, loss="adversarial"), tmp_path / "run", progress=False, device="cpu")
    # train() keeps the class (still a NonFiniteLossError) and chains the step's error.
    assert isinstance(info.value, NonFiniteLossError)
    cause = info.value.__cause__
    assert isinstance(cause, NonFiniteLogitsError)
    assert str(cause) == "step 3: logits contain NaN or infinite values"


def test_train_epoch_raises_the_logits_error_naming_the_step() -> None:
    model = _BlowsUpAfter(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), 1)
    images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLogitsError, match=r"^step 2: logits contain NaN"):
        train_epoch(
            model, optimizer, SmoothedCrossEntropy("adversarial", 0.1), images, labels,
            batch_size=4, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip


def test_bad_labels_propagate_as_value_errors_not_as_non_finite_losses() -> None:
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 1])  # 3 is out of range for 3 classes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]") as info:
        train_epoch(
            model, optimizer, SmoothedCrossEntropy("adversarial", 0.1), images, labels,
            batch_size=8, generator=generator,
        )  # fmt: skip
    assert not isinstance(info.value, NonFiniteLossError)
    assert "finite" not in str(info.value)


def test_crop_flip_is_a_translation_or_its_mirror() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 12, 12)
    out = _augment_crop_flip(images, generator, pad=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for original, augmented in zip(padded, out, strict=True):
        crops = [original[:, i : i + 12, j : j + 12] for i in range(5) for j in range(5)]
        plain = any(torch.equal(augmented, c) for c in crops)
        mirrored = any(torch.equal(augmented, c.flip(2)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < 16


def test_paper_preset_and_explicit_overrides() -> None:
    paper = TrainConfig(preset="paper")
    assert (paper.optimizer, paper.lr, paper.momentum, paper.batch_size, paper.schedule) == (
        "sgd", 1e-4, 0.0, 100, "plateau",
    )  # fmt: skip
    assert TrainConfig(preset="paper", lr=0.01).lr == 0.01
    assert TrainConfig(loss="ALS").loss == "adversarial"


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        *((name, name) for name in METHODS),
        *ALIASES.items(),
        ("ce", "ce"),
        ("CE", "ce"),
        ("Second-Best", "second_best"),
        ("SBLS", "second_best"),
        ("Boltzmann", "boltzmann"),
    ],
)
def test_loss_names_and_aliases_are_the_losses_own(loss: str, expected: str) -> None:
    assert TrainConfig(loss=loss).loss == expected


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("alpha", 1.5, "less than or equal to 1"),
        ("alpha", -0.1, "greater than or equal to 0"),
        ("temperature", 0.0, "greater than 0"),
        ("loss", "focal", "loss must be one of ce, standard, adversarial, boltzmann, second_best"),
        ("model", "vgg", "model must be one of"),
        ("dataset", "imagenet", "dataset must be one of mnist"),
        ("epochs", 0, "greater than or equal to 1"),
        ("optimizer", "rmsprop", "'sgd' or 'adam'"),
    ],
)
def test_bad_configuration_names_the_field(field: str, value, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        TrainConfig(**{field: value})
    assert info.value.errors()[0]["loc"][-1] == field or field in str(info.value)


def test_cuda_requested_without_a_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_a_record_pointing_outside_its_run_is_refused(toy_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(toy_npz), run, progress=False, device="cpu")
    record = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**record, "path": "../elsewhere/epoch-0001"}))
    with pytest.raises(CheckpointError, match="'path' must be an epoch directory"):
        read_checkpoint(run)
    del record["model"]
    (run / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="'model' must describe the architecture"):
        load_model(run)
