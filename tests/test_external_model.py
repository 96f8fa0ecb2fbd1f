"""Models from outside advls through the real command line: ``advls evaluate --model``.

A model module is written to a temporary folder outside the package, as a user's would be;
every way of getting it wrong ends in exit 2 with one line that says what to change, and
nothing written.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from advls.checkpoint import read_checkpoint
from advls.cli import app
from advls.external import (
    ExternalModelError,
    ModelSource,
    load_external_model,
    parse_model_args,
    read_state_dict,
)
from advls.train import TrainConfig, train
from conftest import cli_error, write_toy_npz
from user_models import MODELS

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(MODELS)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-class 16x16 toy set."""
    return write_toy_npz(tmp_path_factory.mktemp("toy") / "toy.npz")


_error = cli_error


def _evaluate(*args: str) -> object:
    return runner.invoke(app, ["evaluate", "--no-progress", *args])


def _toy_mlp(models: Path, tmp_path: Path) -> tuple[str, Path]:
    """The factory of a 2-class MLP for the toy set, and a safetensors file of its weights."""
    factory = f"{models}:mlp"
    model = load_external_model(ModelSource(factory, {"pixels": 256, "hidden": 8, "classes": 2}))
    weights = tmp_path / "mlp.safetensors"
    save_file(model.state_dict(), weights)
    return factory, weights


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("model", "complaint"),
    [
        ("no_such_package.models:net", "cannot import no_such_package.models"),
        ("{dir}/missing.py:net", "missing.py does not exist"),
        ("{models}:absent", "has no callable 'absent'; it defines"),
        ("{models}:exploding", "raised RuntimeError: the factory exploded"),
        ("{models}:not_a_model", "returned a int, not a torch.nn.Module"),
        ("{models}:flat", "to (2,); advls needs logits of shape (2, K) with K >= 2"),
        ("{models}:pair", "returns a tuple, not a tensor of logits"),
        ("{models}:channels_last", "cannot take the dataset's images, of shape (2, 1, 16, 16)"),
        ("{models}", "PACKAGE.MODULE:FACTORY or path/to/file.py:FACTORY"),
    ],
)
def test_a_model_that_cannot_be_used_is_named_and_nothing_is_written(
    models: Path, toy: Path, tmp_path: Path, model: str, complaint: str
):
    factory = model.format(models=models, dir=tmp_path)
    report = tmp_path / "audit"
    message = _error(
        _evaluate("--model", factory, "--dataset", str(toy), "--protocol", "paper",
                  "--eps", "0.1", "--n", "8", "--report", str(report), "--out", str(report))
    )  # fmt: skip
    assert complaint in message
    assert not report.exists()


def test_labels_beyond_the_models_classes_are_refused(models: Path, toy: Path, tmp_path: Path):
    with np.load(toy) as arrays:
        x = arrays["x"]
    five = np.savez(tmp_path / "five.npz", x=x, y=np.arange(len(x)) % 5) or tmp_path / "five.npz"
    factory, weights = _toy_mlp(models, tmp_path)
    message = _error(
        _evaluate("--model", factory, "--model-arg", "pixels=256", "--model-arg", "hidden=8",
                  "--model-arg", "classes=2", "--weights", str(weights), "--dataset", str(five),
                  "--protocol", "paper", "--eps", "0.1", "--n", "10")
    )  # fmt: skip
    assert "for a model of 2 classes: labels must lie in 0..1 (2 classes)" in message
    assert "6 of 10 are larger (the largest is 4)" in message


def test_weights_that_do_not_fit_name_the_first_keys(models: Path, toy: Path, tmp_path: Path):
    factory, weights = _toy_mlp(models, tmp_path)
    state = read_state_dict(weights)
    state["head.weight"] = torch.zeros(3, 8)  # wrong shape
    state["extra.bias"] = torch.zeros(1)  # unexpected
    del state["body.0.bias"]  # missing
    save_file(state, tmp_path / "bad.safetensors")
    args = ["--model-arg", "pixels=256", "--model-arg", "hidden=8", "--model-arg", "classes=2"]
    message = _error(
        _evaluate("--model", factory, *args, "--weights", str(tmp_path / "bad.safetensors"),
                  "--dataset", str(toy), "--protocol", "paper", "--eps", "0.1", "--n", "8")
    )  # fmt: skip
    assert "do not fit the model: 1 missing: body.0.bias; 1 unexpected: extra.bias" in message
    assert "1 of the wrong shape: head.weight (3, 8) for (2, 8)" in message


def test_nan_weights_are_refused(models: Path, tmp_path: Path):
    factory, weights = _toy_mlp(models, tmp_path)
    state = read_state_dict(weights)
    state["head.bias"] = torch.tensor([0.0, float("nan")])
    save_file(state, tmp_path / "nan.safetensors")
    source = ModelSource(factory, {"pixels": 256, "hidden": 8, "classes": 2},
                         tmp_path / "nan.safetensors")  # fmt: skip
    with pytest.raises(ExternalModelError, match=r"NaN or infinite values in head\.bias"):
        load_external_model(source)


class _Payload:
    """A pickle that would create a file when loaded: advls must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_needs_code_is_refused_and_its_code_never_runs(
    models: Path, toy: Path, tmp_path: Path
):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"head.weight": _Payload(marker)}, handle)
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(256, 2)), whole)  # a module, not weights
    for path in (tmp_path / "evil.pt", whole):
        message = _error(
            _evaluate("--model", f"{models}:mlp", "--weights", str(path), "--dataset", str(toy),
                      "--protocol", "paper", "--eps", "0.1", "--n", "8")
        )  # fmt: skip
        assert "is a pickle that needs code to load" in message
        assert "weights_only=True" in message
    assert not marker.exists()


def test_a_nested_or_data_parallel_state_dict_is_unwrapped(models: Path, tmp_path: Path):
    _, weights = _toy_mlp(models, tmp_path)
    state = read_state_dict(weights)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "nested.pt")  # fmt: skip
    unwrapped = read_state_dict(tmp_path / "nested.pt")
    assert unwrapped.keys() == state.keys()
    assert all(torch.equal(unwrapped[key], state[key]) for key in state)


def test_model_args_arrive_typed():
    parsed = parse_model_args(["depth=18", "rate=0.5", "pretrained=false", "widths=[16, 32]",
                               "name=wide", "path=a:b"])  # fmt: skip
    assert parsed == {"depth": 18, "rate": 0.5, "pretrained": False, "widths": [16, 32],
                      "name": "wide", "path": "a:b"}  # fmt: skip
    for bad in (["depth"], ["1x=2"], ["a=1", "a=2"]):
        with pytest.raises(ExternalModelError):
            parse_model_args(bad)


def test_mean_and_std_go_together_and_fit_the_channels(models: Path, toy: Path):
    assert "--mean and --std go together" in _error(
        _evaluate("--model", f"{models}:mlp", "--mean", "0.5", "--dataset", str(toy))
    )
    assert "go with --model" in _error(_evaluate("--checkpoint", "x", "--weights", "w.pt"))
    assert "--checkpoint" in _error(_evaluate("--dataset", str(toy)))


# --------------------------------------------------------------------------- same numbers
def _outcomes(payload: dict) -> list[tuple]:
    return [
        (r["protocol"], r["attack"], r["eps"], r["robust_accuracy"]) for r in payload["results"]
    ]


def test_an_advls_checkpoint_through_model_and_weights_gives_the_checkpoints_numbers(
    toy: Path, tmp_path: Path
):
    config = TrainConfig(dataset=str(toy), model="mlp", loss="ce", epochs=1, batch_size=32)
    train(config, tmp_path / "run", device="cpu", progress=False)
    record = read_checkpoint(tmp_path / "run", with_train_state=False)
    spec = record.meta["model"]
    weights = next((tmp_path / "run").glob("epoch-*/model.safetensors"))
    common = ["--protocol", "paper", "--protocol", "strong", "--eps", "0.1,0.2", "--n", "40",
              "--json"]  # fmt: skip
    through_checkpoint = _evaluate("--checkpoint", str(tmp_path / "run"), *common)
    through_model = _evaluate(
        "--model", "advls.models:create", "--model-arg", f"name={spec['name']}",
        "--model-arg", f"num_classes={spec['num_classes']}",
        "--model-arg", f"input_shape={list(spec['input_shape'])}",
        "--weights", str(weights), "--dataset", str(toy), *common,
    )  # fmt: skip
    assert through_checkpoint.exit_code == 0, through_checkpoint.output
    assert through_model.exit_code == 0, through_model.output
    ours, theirs = (json.loads(r.stdout[: r.stdout.rindex("}") + 1])
                    for r in (through_checkpoint, through_model))  # fmt: skip
    assert _outcomes(ours) == _outcomes(theirs) and len(_outcomes(ours)) > 5
    assert ours["clean_accuracy"] == theirs["clean_accuracy"]
    assert ours["worst_case"] == theirs["worst_case"]
    assert [f["raised"] for f in ours["flags"]] == [f["raised"] for f in theirs["flags"]]
    assert theirs["model"]["weights_sha256"] and theirs["model"]["factory"] == "advls.models:create"


# --------------------------------------------------------------------------- Python
def test_one_python_call_gives_the_evaluation_and_its_page(models: Path, toy: Path, tmp_path: Path):
    from advls.audit import audit
    from advls.evaluate import evaluate

    factory, weights = _toy_mlp(models, tmp_path)
    source = ModelSource(factory, {"pixels": 256, "hidden": 8, "classes": 2}, weights)
    options = {"protocols": ("paper",), "eps": (0.1, 0.2), "n": 24}
    evaluation = audit(source, str(toy), report=tmp_path / "audit", **options)
    assert {p.name for p in (tmp_path / "audit").iterdir()} >= {
        "audit.html", "audit.md", "model_card.json", "evaluation.json",
    }  # fmt: skip
    with np.load(toy) as arrays:
        images, labels = torch.from_numpy(arrays["x"][:24]), torch.from_numpy(arrays["y"][:24])
    direct = evaluate(load_external_model(source), images, labels.long(), protocols=("paper",),
                      eps=(0.1, 0.2))  # fmt: skip
    untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in direct.as_dict()["results"]]
    assert [
        {k: v for k, v in r.items() if k != "seconds"} for r in evaluation.as_dict()["results"]
    ] == untimed
    assert evaluation.worst_case("paper", 0.2) == direct.worst_case("paper", 0.2)
    subject = json.loads((tmp_path / "audit" / "evaluation.json").read_text())["subject"]
    assert subject["name"] == factory and subject["weights"] == str(weights)
    # A report folder that cannot be one is refused before any work, and nothing is written.
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        audit(source, str(toy), report=tmp_path / "taken", **options)
    assert (tmp_path / "taken").read_text() == "mine"
