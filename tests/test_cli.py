"""The command line: help that teaches, clear errors, a JSON summary on success."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from advls.cli import app

runner = CliRunner()


def test_help_lists_commands_and_train_options() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "train" in top.output
    train_help = runner.invoke(app, ["train", "--help"])
    for option in ("--loss", "--alpha", "--preset", "--device", "--out"):
        assert option in train_help.output


def test_bad_alpha_is_a_clear_error_and_writes_nothing(tmp_path: Path, toy_npz: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--dataset", str(toy_npz), "--alpha", "1.5", "--out", str(run)]
    )
    assert result.exit_code == 2
    assert "--alpha" in result.output and "less than or equal to 1" in result.output
    assert not run.exists()


def test_missing_dataset_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--dataset", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert "nope.npz" in result.output


def test_train_prints_a_json_summary(tmp_path: Path, toy_npz: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--dataset", str(toy_npz), "--model", "linear", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--batch-size", "32", "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert summary["epoch"] == 1 and summary["test_accuracy"] == 1.0
    assert (run / "checkpoint.json").is_file()


def test_out_that_is_a_file_fails_before_training(tmp_path: Path, toy_npz: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("not a directory")
    result = runner.invoke(app, ["train", "--dataset", str(toy_npz), "--out", str(out)])
    assert result.exit_code == 2 and "exists and is not a directory" in result.output
