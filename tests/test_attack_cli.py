"""`advls attack`: a checkpoint, an attack, a summary; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from advls.cli import app
from advls.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_toy_npz

    root = tmp_path_factory.mktemp("attack-cli")
    npz = write_toy_npz(root / "toy.npz")
    run = root / "run"
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=2, batch_size=32)
    train(config, run, device="cpu", progress=False)
    return run


def _summary(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_attack_prints_accuracies_and_saves_examples(run_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "adv.safetensors"
    args = ["attack", "--checkpoint", str(run_dir), "--attack", "bim", "--eps", "0.3"]
    result = runner.invoke(app, [*args, "--steps", "5", "--n", "64", "--save", str(saved)])
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)
    assert summary["points"] == 64 and summary["clean_accuracy"] == 1.0
    assert summary["robust_accuracy"] <= summary["clean_accuracy"]
    assert summary["attack"] == {"name": "bim", "eps": 0.3, "steps": 5}
    tensors = load_file(saved)
    assert tensors["x_adv"].shape == (64, 1, 16, 16)
    assert float(tensors["linf"].max()) <= 0.3 + 1e-6
    assert float(1 - tensors["success"].float().mean()) == summary["robust_accuracy"]


def test_minimal_attack_reports_distortion(run_dir: Path) -> None:
    args = ["attack", "--checkpoint", str(run_dir), "--attack", "deepfool", "--n", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)
    assert summary["success_rate"] > 0.9 and summary["median_l2"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attack", "nope"], "attack must be one of"),
        (["--attack", "fgsm", "--eps", "-0.1"], "eps must be"),
        (["--attack", "fgsm", "--eps", "0.1", "--param", "restarts=3"], "takes no parameter"),
        (["--attack", "fgsm", "--eps", "0.1", "--loss", "hinge"], "loss must be one of"),
    ],
)
def test_bad_attack_settings_are_clear_errors(
    run_dir: Path, extra: list[str], message: str
) -> None:
    result = runner.invoke(app, ["attack", "--checkpoint", str(run_dir), *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["attack", "--checkpoint", str(tmp_path / "none"), "--eps", "0.1"])
    assert result.exit_code == 2
    assert "no advls checkpoint" in result.output


def test_bad_yaml_and_save_targets_fail_before_attacking(run_dir: Path, tmp_path: Path) -> None:
    base = ["attack", "--checkpoint", str(run_dir), "--attack", "pgd", "--eps", "0.1"]
    result = runner.invoke(app, [*base, "--param", "restarts=[1"])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    result = runner.invoke(app, [*base, "--save", str(tmp_path)])
    assert result.exit_code == 2 and "must name a .safetensors file" in result.output


def test_undefined_statistics_are_json_null(run_dir: Path) -> None:
    # A budget far too small to fool the model: no success, so no median distortion.
    args = ["attack", "--checkpoint", str(run_dir), "--eps", "0.001", "--n", "16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)  # json.loads refuses a bare NaN only in strict parsers
    assert summary["median_l2"] is None and summary["success_rate"] == 0.0


def test_smoothed_loss_of_a_plain_model_is_cross_entropy(run_dir: Path) -> None:
    args = ["attack", "--checkpoint", str(run_dir), "--eps", "0.1", "--param", "loss=smoothed"]
    result = runner.invoke(app, [*args, "--n", "16"])
    assert result.exit_code == 0, result.output
    assert _summary(result.stdout)["attack"]["loss"] == "ce"


def test_the_readme_cw_example_runs(run_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "adv.safetensors"
    args = ["attack", "--checkpoint", str(run_dir), "--attack", "cw_l2", "--steps", "100"]
    result = runner.invoke(
        app, [*args, "--param", "binary_search_steps=5", "--n", "16", "--save", str(saved)]
    )
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)
    assert summary["attack"] == {"name": "cw_l2", "steps": 100, "binary_search_steps": 5}
    assert summary["success_rate"] > 0 and saved.is_file()


def test_missing_eps_of_a_bounded_attack_is_a_usage_error(run_dir: Path) -> None:
    """It was a TypeError traceback from inside the attack."""
    result = runner.invoke(app, ["attack", "--checkpoint", str(run_dir), "--n", "10"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # exited, no traceback
    assert "--eps is required: fgsm is a bounded attack" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eps", "0"], "every eps must be an L-inf budget in (0, 1] pixel units, got 0.0"),
        (["--eps", "nan"], "every eps must be an L-inf budget in (0, 1] pixel units, got nan"),
        (["--eps", "0.1", "--param", "eps=0"], "(0, 1] pixel units, got 0.0"),
        (["--attack", "pgd", "--param", "norm=l2", "--eps", "0"], "every L2 budget must be"),
        (["--eps", "0.1", "--n", "0"], "n, the number of points, must be an integer >= 1"),
    ],
)
def test_budgets_and_counts_follow_the_evaluations_rules(
    run_dir: Path, extra: list[str], message: str
) -> None:
    """``--eps 0`` was accepted here and refused by evaluate: now one rule."""
    result = runner.invoke(app, ["attack", "--checkpoint", str(run_dir), *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_an_l2_budget_above_one_is_an_l2_budget(run_dir: Path) -> None:
    args = ["attack", "--checkpoint", str(run_dir), "--attack", "pgd", "--param", "norm=l2"]
    result = runner.invoke(app, [*args, "--eps", "2", "--steps", "2", "--n", "8"])
    assert result.exit_code == 0, result.output
    assert _summary(result.stdout)["attack"]["eps"] == 2.0


def test_more_points_than_the_split_has_is_an_error(run_dir: Path) -> None:
    """``--n 10000000`` silently attacked the split's 256 points."""
    args = ["attack", "--checkpoint", str(run_dir), "--eps", "0.1", "--n", "10000000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "n is 10000000 but" in output and "has 256 test images; ask for at most 256" in output
