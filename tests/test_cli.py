"""The command line: help that teaches, clear errors, a JSON summary on success."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from advls.cli import app
from advls.cli.console import KNOWN_ERRORS, help_text, reported_errors
from advls.cli.fields import option_name

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


# --------------------------------------------------------------------------- structure
HEAVY = ("torch", "matplotlib", "pandas")
REPORT_LOADED = f"import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def _loaded_by(code: str) -> str:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT_LOADED}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def _running(args: list[str]) -> str:
    return (
        "import sys\nfrom advls.cli import app\n"
        f"sys.argv = ['advls', *{args!r}]\ntry:\n    app()\nexcept SystemExit:\n    pass"
    )


@pytest.mark.parametrize(
    "code",
    [
        "import advls.cli",
        _running(["--help"]),
        _running(["sweep", "--help"]),
        _running(["attack", "--help"]),
        _running(["report", "--help"]),
    ],
)
def test_the_cli_and_its_help_load_no_torch_matplotlib_or_pandas(code: str) -> None:
    assert _loaded_by(code) == "[]"


def test_python_dash_m_advls_is_the_advls_command() -> None:
    """Where no console script is installed (a PYTHONPATH checkout, a GPU image), ``python -m
    advls`` runs the same CLI under the same name."""
    done = subprocess.run(
        [sys.executable, "-m", "advls", "sweep", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: advls sweep" in " ".join(done.stdout.split())


def test_the_probe_sees_what_is_loaded() -> None:
    assert _loaded_by(_running(["train", "--help"])) == "['torch']"  # train reads TrainConfig


def _commands() -> dict[str, typer.core.TyperCommand | TyperGroup]:
    """Every command and group of the CLI by its path, as it runs (train included)."""
    found = {}

    def walk(command, path: tuple[str, ...], ctx: typer.Context) -> None:
        found[" ".join(path)] = command
        if isinstance(command, TyperGroup):
            for name in command.list_commands(ctx):
                _, sub, _ = command.resolve_command(ctx, [name])
                assert sub is not None
                walk(sub, (*path, name), typer.Context(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    walk(root, (), typer.Context(root, info_name="advls"))
    return found


def test_every_command_is_listed() -> None:
    names = set(_commands())
    assert names == {
        "", "train", "attack", "evaluate", "triangular", "analyze", "reproduce", "report",
        "sweep", "sweep run", "sweep status", "sweep export", "sweep salvage",
    }  # fmt: skip


def _body(output: str) -> list[str]:
    """The help's prose: the lines between the usage line and the first panel."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith("╭"))
    return lines[start:end]


@pytest.mark.parametrize("width", [60, 200])
def test_help_reflows_at_any_width(width: int) -> None:
    for path, command in _commands().items():
        result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": str(width)})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= width, path
        body = _body(result.output)
        text = " ".join(" ".join(body).split())
        for paragraph in (command.help or "").split("\n\n"):
            if "\n" in paragraph:  # an example of several lines keeps them
                continue
            words = " ".join(paragraph.split())
            assert words in text, (path, width, words)
            if len(words) < width - 10:  # fits: one line, as written
                assert any(line.strip() == words for line in body), (path, width, words)
        # A line that ends where the next line's first word would still have fitted is a
        # line break copied from the source, not a wrap.
        for this, following in itertools.pairwise(body):
            if this.strip() and following.strip():
                room = width - 2 - len(this.rstrip())
                assert len(following.split()[0]) + 1 > room, (path, width, this, following)


def test_group_listings_keep_each_summary_on_one_line() -> None:
    commands = _commands()
    for group in ("", "sweep"):
        result = runner.invoke(app, [*group.split(), "--help"], env={"COLUMNS": "200"})
        for name, command in commands.items():
            if name.rpartition(" ")[0] != group or name == group:
                continue
            summary = " ".join((command.help or "").split("\n\n")[0].split())
            assert any(summary in line for line in result.output.splitlines()), (name, summary)


# --------------------------------------------------------------------------- train options
def test_every_train_config_field_is_an_option_with_help() -> None:
    from advls.train import TrainConfig

    options = {
        param.name: param
        for param in _commands()["train"].params
        if param.param_type_name == "option"
    }
    for field in TrainConfig.model_fields:
        option = options[field]
        assert option.opts[0] == option_name(field) and option.help, field
        # One source: the help is the field's own description.
        description = TrainConfig.model_fields[field].description
        assert description and option.help.startswith(description), field
    assert options["nesterov"].secondary_opts == ["--no-nesterov"]


def _config_from(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The TrainConfig `advls train ARGS` would train, caught before any training."""
    import advls.train

    seen = []

    def capture(config, *args, **kwargs):
        seen.append(config)
        raise ValueError("stopped before training")

    monkeypatch.setattr(advls.train, "train", capture)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and "stopped before training" in result.output, result.output
    return seen[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {}),
        (["--dataset", "cifar10", "--model", "lenet", "--loss", "sls"],
         {"dataset": "cifar10", "model": "lenet", "loss": "standard"}),
        (["--alpha", "0.3", "--temperature", "2", "--epochs", "3", "--seed", "7"],
         {"alpha": 0.3, "temperature": 2.0, "epochs": 3, "seed": 7}),
        (["--batch-size", "64", "--optimizer", "adam", "--lr", "0.001", "--momentum", "0.5"],
         {"batch_size": 64, "optimizer": "adam", "lr": 0.001, "momentum": 0.5}),
        (["--no-nesterov", "--weight-decay", "0", "--schedule", "step", "--step-epochs", "5",
          "--gamma", "0.5"],
         {"nesterov": False, "weight_decay": 0.0, "schedule": "step", "step_epochs": 5,
          "gamma": 0.5}),
        (["--augment", "crop-flip", "--train-subset", "100"],
         {"augment": "crop-flip", "train_subset": 100}),
        (["--defence", "pgd-at", "--defence-eps", "0.2", "--defence-beta", "0.25",
          "--defence-steps", "3", "--defence-step-size", "0.05"],
         {"defence": "pgd-at", "defence_eps": 0.2, "defence_beta": 0.25, "defence_steps": 3,
          "defence_step_size": 0.05}),
        (["--preset", "paper"], {"preset": "paper"}),
        (["--preset", "paper", "--lr", "0.01", "--nesterov"],
         {"preset": "paper", "lr": 0.01, "nesterov": True}),
    ],
)  # fmt: skip
def test_train_options_make_the_config_the_model_would(
    args: list[str], expected: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from advls.train import TrainConfig

    config = _config_from(args, monkeypatch, tmp_path)
    assert config == TrainConfig(**expected)
    if expected.get("preset") == "paper":  # the preset fills what was not given
        assert config.batch_size == 100 and config.schedule == "plateau"


def test_a_bad_choice_names_the_option(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--optimizer", "rmsprop", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--optimizer" in result.output
    assert "rmsprop" in result.output and "sgd" in result.output


# --------------------------------------------------------------------------- errors, stores
def test_known_errors_are_one_line_and_others_keep_their_traceback() -> None:
    import advls.store
    import advls.train

    for error in (
        ValueError("bad value"),
        OSError("bad disk"),
        advls.store.StoreError("bad store"),
        advls.train.NonFiniteLossError("bad loss"),
    ):
        with pytest.raises(typer.Exit) as exit_info, reported_errors():
            raise error
        assert exit_info.value.exit_code == 2
    with pytest.raises(RuntimeError, match="a bug"), reported_errors():
        raise RuntimeError("a bug")
    with pytest.raises(typer.Exit) as exit_info, reported_errors(RuntimeError):
        raise RuntimeError("expected here")
    assert exit_info.value.exit_code == 2
    with pytest.raises(typer.Exit) as exit_info, reported_errors(RuntimeError):
        raise typer.Exit(code=1)  # a command's own exit passes through unchanged
    assert exit_info.value.exit_code == 1


def test_known_error_names_are_the_library_classes() -> None:
    import importlib

    for module, name in KNOWN_ERRORS:
        error = getattr(importlib.import_module(module), name)
        assert issubclass(error, Exception) and not issubclass(error, (ValueError, OSError))


def test_help_text_joins_prose_and_keeps_examples() -> None:
    doc = """First line
    goes on.

    A second
    paragraph.

        advls do --this
        advls do --that
    """
    assert help_text(doc) == (
        "First line goes on.\n\nA second paragraph.\n\nadvls do --this\nadvls do --that"
    )


@pytest.fixture
def open_stores(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every Store opened while the test runs that has not been closed."""
    from advls.store import Store

    opened: list = []
    init, close = Store.__init__, Store.close

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    def tracked_close(self):
        close(self)
        if self in opened:
            opened.remove(self)

    monkeypatch.setattr(Store, "__init__", tracked_init)
    monkeypatch.setattr(Store, "close", tracked_close)
    return opened


def test_sweep_commands_close_the_store(tmp_path: Path, open_stores: list) -> None:
    from advls.store import Store

    path = tmp_path / "results.db"
    Store(path).close()
    for args, code in (
        (["sweep", "status", "--store", str(path)], 0),
        (["sweep", "status", "--store", str(path), "--sweep", "nope"], 2),
        (["sweep", "export", "--store", str(path), "--out", str(tmp_path / "r.csv")], None),
        (["report", "--store", str(path), "--out", str(tmp_path / "report")], 2),
    ):
        result = runner.invoke(app, args)
        assert code is None or result.exit_code == code, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert not open_stores, f"{args} left the store open"


def test_sweep_run_checks_execution_options_first(tmp_path: Path) -> None:
    spec = tmp_path / "absent.yaml"  # never read: the options are refused before the spec
    for option, message in (
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
        (["--executor", "slurm"], "--executor must be local or ray, got 'slurm'"),
        (["--address", "auto"], "--address applies to --executor ray only"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda[:N], got 'tpu'"),
    ):
        for command in (["sweep", "run", str(spec)], ["reproduce", "mnist-quick"]):
            result = runner.invoke(app, [*command, *option, "--no-progress"])
            assert result.exit_code == 2 and message in result.output, (command, option)
