"""`advls evaluate`: tables and JSON out; bad input is a clear error and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advls.cli import app
from advls.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_toy_npz

    root = tmp_path_factory.mktemp("evaluate-cli")
    npz = write_toy_npz(root / "toy.npz")
    made = {}
    for name, seed in (("model", 0), ("twin", 1)):
        config = TrainConfig(
            dataset=str(npz), model="linear", loss="ce", epochs=2, batch_size=32, seed=seed
        )
        train(config, root / name, device="cpu", progress=False)
        made[name] = root / name
    # A three-class task: a surrogate whose number of classes differs.
    rng = np.random.default_rng(0)
    three = root / "three.npz"
    np.savez(three, x=rng.integers(0, 256, (64, 1, 16, 16), dtype=np.uint8), y=np.arange(64) % 3)
    config = TrainConfig(dataset=str(three), model="linear", loss="ce", epochs=1, batch_size=32)
    train(config, root / "three", device="cpu", progress=False)
    made["three"] = root / "three"
    return made


QUICK = ["--n", "24", "--no-progress"]


def test_evaluate_writes_json_and_tables(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(runs["model"]), "--protocol", "paper"]
    result = runner.invoke(app, [*args, "--eps", "0.1,0.3", *QUICK, "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "evaluation.json").read_text())
    assert payload["points"] == 24 and payload["eps"] == [0.1, 0.3]
    assert payload["checkpoint"] == str(runs["model"])
    attacks = {(r["attack"], r["eps"]) for r in payload["results"]}
    assert {("fgsm", 0.1), ("bim-100", 0.3), ("deepfool", None), ("cw-l2", None)} <= attacks
    assert {f["name"] for f in payload["flags"]} >= {"zero_gradients", "protocol_gap"}
    worst = {row["eps"]: row["robust_accuracy"] for row in payload["worst_case"]}
    assert worst[0.3] <= worst[0.1] <= payload["clean_accuracy"]
    table = (out / "evaluation.md").read_text()
    assert "| paper | bim-100 |" in table and "gradient-masking check" in table
    assert table in result.stdout


def test_show_protocols() -> None:
    result = runner.invoke(app, ["evaluate", "--show-protocols"])
    assert result.exit_code == 0
    names = [p["name"] for p in json.loads(result.stdout)]
    assert names == [
        "paper",
        "standard",
        "strong",
        "autoattack",
        "autoattack-l2",
        "autoattack-rand",
    ]
    # The help names every protocol, so a new one cannot go unmentioned.
    help_text = " ".join(
        runner.invoke(app, ["evaluate", "--help"], terminal_width=200).stdout.split()
    )
    assert all(name in help_text for name in names)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eps", "-0.1"], "every eps must be an L-inf budget in (0, 1]"),
        (["--eps", "0.1,abc"], "--eps takes numbers"),
        (["--eps", "2"], "in (0, 1] pixel units, got 2.0"),
        (["--protocol", "strongest"], "protocol must be one of"),
        (["--n", "0"], "n, the number of points, must be an integer >= 1, got 0"),
        (["--eps", "0"], "every eps must be an L-inf budget in (0, 1] pixel units, got 0.0"),
        (["--l2-budget", "0"], "every L2 budget must be a finite number > 0, got 0.0"),
        (["--n", "10000000"], "has 256 test images; ask for at most 256"),
    ],
)
def test_bad_options_write_nothing(
    runs: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(runs["model"]), *QUICK, "--out", str(out), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_empty_eps_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(runs["model"]), "--eps", ",", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--eps takes numbers" in result.output
    assert not out.exists()


def test_missing_and_foreign_checkpoints(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    missing = runner.invoke(
        app, ["evaluate", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]
    )
    assert missing.exit_code == 2 and "nope" in missing.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint.json").write_text('{"format": "something else"}')
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(foreign), "--out", str(out)])
    assert result.exit_code == 2 and "error" in result.output
    assert runner.invoke(app, ["evaluate"]).exit_code == 2
    assert not out.exists()


def test_surrogate_of_another_task_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(runs["model"]), "--surrogate", str(runs["three"])]
    result = runner.invoke(app, [*args, *QUICK, "--out", str(out)])
    assert result.exit_code == 2
    assert "has 3 classes but" in " ".join(result.output.split())
    assert not out.exists()
