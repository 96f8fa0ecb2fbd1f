"""Hostile values through the real command line: budgets, point counts and labels.

One rule per value, one message wherever the value comes from: ``advls attack``,
``advls evaluate`` and a sweep spec refuse the same bad ``eps`` or ``n`` with the same words
(:mod:`advls.evaluate.inputs`), and labels follow one rule in every reader and command
(:mod:`advls.data.labels`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advls.checkpoint import read_checkpoint
from advls.cli import app
from advls.sweep.spec import SpecError, check_data_available, parse_spec
from advls.train import TrainConfig, train
from conftest import cli_error, write_toy_npz

runner = CliRunner()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear model of the 256-point, 2-class toy set."""
    root = tmp_path_factory.mktemp("hostile")
    npz = write_toy_npz(root / "toy.npz")
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=1, batch_size=32)
    train(config, root / "run", device="cpu", progress=False)
    return root / "run"


_error = cli_error


def _attack(run: Path, *extra: str) -> str:
    return _error(runner.invoke(app, ["attack", "--checkpoint", str(run), *extra]))


def _evaluate(run: Path, *extra: str) -> str:
    args = ["evaluate", "--checkpoint", str(run), "--no-progress", *extra]
    return _error(runner.invoke(app, args))


def _spec(dataset: str, **evaluate: object) -> dict:
    return {"name": "hostile", "train": {"dataset": dataset}, "evaluate": evaluate}


# --------------------------------------------------------------------------- case 9: values
def test_attack_without_eps_is_a_usage_error(toy_run: Path) -> None:
    """``advls attack --checkpoint RUN --n 10`` was a TypeError traceback."""
    message = _attack(toy_run, "--n", "10")
    assert message.startswith("--eps is required: fgsm is a bounded attack")


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan", "inf"])
def test_one_eps_rule_one_message_in_attack_evaluate_and_spec(toy_run: Path, bad: str) -> None:
    """``--eps 0`` was accepted by attack and refused by evaluate; the spec refused it too."""
    from_attack = _attack(toy_run, "--eps", bad, "--n", "10")
    from_evaluate = _evaluate(toy_run, "--eps", bad, "--n", "10")
    assert from_attack == from_evaluate
    assert from_attack.startswith("every eps must be an L-inf budget in (0, 1] pixel units")
    with pytest.raises(SpecError) as refused:
        parse_spec(_spec("mnist", eps=[float(bad)]), "s.yaml")
    assert from_attack in str(refused.value)


def test_an_integer_eps_from_yaml_gets_the_same_message(toy_run: Path) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(_spec("mnist", eps=[0]), "s.yaml")  # YAML's 0 is an int
    assert _attack(toy_run, "--eps", "0") in str(refused.value)


def test_n_beyond_the_split_is_an_error_naming_its_size(toy_run: Path) -> None:
    """``--n 10000000`` silently used the split's points."""
    from_attack = _attack(toy_run, "--eps", "0.1", "--n", "10000000")
    from_evaluate = _evaluate(toy_run, "--n", "10000000")
    assert from_attack == from_evaluate
    assert from_attack.startswith("n is 10000000 but ")
    assert from_attack.endswith("has 256 test images; ask for at most 256")


def test_the_default_n_takes_a_smaller_split_whole(toy_run: Path) -> None:
    result = runner.invoke(app, ["attack", "--checkpoint", str(toy_run), "--eps", "0.1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next(line for line in result.stdout.splitlines() if line[:1] == "{"))
    assert summary["points"] == 256


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_one_n_rule_in_attack_and_evaluate(toy_run: Path, bad: str) -> None:
    from_attack = _attack(toy_run, "--eps", "0.1", "--n", bad)
    assert from_attack == _evaluate(toy_run, "--n", bad)
    assert from_attack == f"n, the number of points, must be an integer >= 1, got {bad}"


def test_the_spec_refuses_n_with_the_commands_message(toy_run: Path) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(_spec("mnist", n=0), "s.yaml")
    assert _attack(toy_run, "--eps", "0.1", "--n", "0") in str(refused.value)
    dataset = read_checkpoint(toy_run, with_train_state=False).meta["config"]["dataset"]
    _, runs = parse_spec(_spec(dataset, n=10000000, eps=[0.1]), "s.yaml")
    with pytest.raises(SpecError) as refused:
        check_data_available(runs)
    assert _attack(toy_run, "--eps", "0.1", "--n", "10000000") in str(refused.value)


def test_labels_the_model_lacks_are_refused_by_attack_and_evaluate(tmp_path: Path) -> None:
    """A dataset changed after training: its labels are checked against the model's classes."""
    npz = write_toy_npz(tmp_path / "toy.npz", n=64)
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=1, batch_size=32)
    train(config, tmp_path / "run", device="cpu", progress=False)
    with np.load(npz) as arrays:
        x = arrays["x"]
    np.savez(npz, x=x, y=np.arange(64) % 3)  # now three classes
    from_attack = _attack(tmp_path / "run", "--eps", "0.1")
    assert from_attack == _evaluate(tmp_path / "run")
    assert "for a model of 2 classes: labels must lie in 0..1 (2 classes)" in from_attack
    assert "21 of 64 are larger (the largest is 2)" in from_attack


# --------------------------------------------------------------------------- case 10: labels
def _train(npz: Path, out: Path) -> object:
    args = ["train", "--dataset", str(npz), "--model", "linear", "--epochs", "1"]
    return runner.invoke(app, [*args, "--batch-size", "32", "--no-progress", "--out", str(out)])


def _labelled(path: Path, labels: list[int], **extra: object) -> Path:
    x = np.random.default_rng(0).integers(0, 256, (len(labels), 1, 8, 8), dtype=np.uint8)
    np.savez(path, x=x, y=np.asarray(labels), **extra)
    return path


@pytest.mark.parametrize(
    ("labels", "complaint"),
    [
        ([57] * 32, "every label is 57, but a classifier needs labels of at least 2 classes"),
        ([-1, 0, 1, 1] * 8, "labels must be class indices >= 0, but 8 of 32 are negative"),
        ([0, 1, 2, 5] * 8, "labels run 0..5, but classes 3, 4 never occur (4 of 6 present)"),
        ([1, 2, 3] * 8, "labels run 0..3, but class 0 never occurs"),
        ([0, 57] * 16, "classes 1..56 never occur (2 of 58 present)"),
    ],
)
def test_labels_that_are_not_class_indices_train_nothing(
    tmp_path: Path, labels: list[int], complaint: str
) -> None:
    """All-57 labels trained a 58-class model without a word; -1 said "0..-1"."""
    npz = _labelled(tmp_path / "odd.npz", labels)
    message = _error(_train(npz, tmp_path / "run"))
    assert message.startswith(f"{npz}: ") and complaint in message
    assert "0..-1" not in message
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_declared_classes_decide_the_number_of_classes(tmp_path: Path) -> None:
    names = np.array([f"class-{k}" for k in range(58)])
    npz = _labelled(tmp_path / "declared.npz", [0, 57] * 16, classes=names)
    result = _train(npz, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert read_checkpoint(tmp_path / "run").meta["model"]["num_classes"] == 58


@pytest.mark.parametrize(
    ("classes", "complaint"),
    [
        (np.array(["only"]), "a classifier needs 2"),
        (np.array(["a", "b", "a"]), "names some class twice"),
        (np.array([0, 1, 2]), "classes must be a 1-D array of strings"),
        (np.array(["a", "b"]), r"labels must lie in 0..1 (2 classes), but 8 of 32 are larger"),
    ],
)
def test_declared_classes_are_checked(tmp_path: Path, classes: np.ndarray, complaint: str) -> None:
    npz = _labelled(tmp_path / "declared.npz", [0, 1, 1, 2] * 8, classes=classes)
    assert complaint in _error(_train(npz, tmp_path / "run"))
