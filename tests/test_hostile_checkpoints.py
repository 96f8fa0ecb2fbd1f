"""Run directories under attack: concurrent writers, damaged, poisoned or gutted checkpoints.

Each case was once accepted or crashed with a traceback; each is now refused with one line
naming the file (and, for a damaged epoch, the last intact one), through the real commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from advls.checkpoint import CheckpointError, DamagedCheckpointError, load_model, read_checkpoint
from advls.cli import app
from advls.locks import LOCK_FILE, RunDirectoryBusy, RunDirectoryError, hold_run_directory
from advls.train import TrainConfig, train

runner = CliRunner()

_ONE_THREAD_CLI = "import torch; torch.set_num_threads(1); from advls.cli import app; app()"
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_command(npz: Path, run: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        sys.executable, "-c", _ONE_THREAD_CLI,
        "train", "--dataset", str(npz), "--model", "lenet-mnist", "--epochs", str(epochs),
        "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(run), *extra,
    ]  # fmt: skip


def _one_line_error(result) -> str:
    """The command ended with exit code 2 and one error, no traceback; its text, unwrapped.

    The console wraps at its width, even inside a path, so the text is compared without any
    whitespace (see :func:`_says`).
    """
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.startswith("error:")
    return "".join(result.output.split())


def _says(message: str, text: str) -> bool:
    return "".join(text.split()) in message


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_toy_npz

    return write_toy_npz(tmp_path_factory.mktemp("hostile") / "toy.npz")


@pytest.fixture
def run(npz: Path, tmp_path: Path) -> Path:
    """A real two-epoch run of its own (each test damages it)."""
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=2, batch_size=32)
    train(config, tmp_path / "run", device="cpu", progress=False)
    return tmp_path / "run"


def _attack(run: Path):
    return runner.invoke(app, ["attack", "--checkpoint", str(run), "--eps", "0.1", "--n", "16"])


def _evaluate(run: Path, tmp_path: Path):
    args = ["evaluate", "--checkpoint", str(run), "--n", "16", "--no-progress"]
    return runner.invoke(app, [*args, "--out", str(tmp_path / "eval")])


def _records(run: Path, epoch: int = 2) -> tuple[Path, Path]:
    return run / "checkpoint.json", run / f"epoch-{epoch:04d}" / "epoch.json"


def _write_weights(run: Path, tensors: dict[str, torch.Tensor], *, rehash: bool) -> None:
    """Replace epoch 2's weights; ``rehash``: as a writer would who also rewrote the hashes."""
    weights = run / "epoch-0002" / "model.safetensors"
    save_file(tensors, weights)
    if rehash:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        for record_path in _records(run):
            if record_path.is_file():
                record = json.loads(record_path.read_text())
                record.setdefault("sha256", {})["model.safetensors"] = digest
                record_path.write_text(json.dumps(record))


# --------------------------------------------------------------------------- case 3: one writer
def test_two_concurrent_trains_one_refuses_and_the_checkpoint_is_a_solo_runs(
    tmp_path: Path,
) -> None:
    """They used to kill each other (a pruned staging directory, "Directory not empty")."""
    from conftest import write_toy_npz

    data = write_toy_npz(tmp_path / "toy.npz", n=2048, shape=(1, 28, 28))
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    # Started together, they reach the lock within moments of each other, and the winner
    # holds it for all four epochs (seconds): the other meets it held.
    both = [
        subprocess.Popen(
            _train_command(data, shared, epochs=4), env=_ENV, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    errors = [process.communicate(timeout=300)[1] for process in both]
    codes = sorted(process.returncode for process in both)
    assert codes == [0, 2], errors
    winner = next(p for p in both if p.returncode == 0)
    refused = errors[both.index(next(p for p in both if p.returncode == 2))]
    message = "".join(refused.split())
    assert _says(message, f"in use by process {winner.pid}, which is writing it")
    assert "Traceback" not in refused and message.startswith("error:")

    solo = subprocess.run(
        _train_command(data, alone, epochs=4), env=_ENV, capture_output=True, timeout=300
    )
    assert solo.returncode == 0, solo.stderr
    for name in ("model.safetensors", "state.safetensors"):
        a = load_file(shared / "epoch-0004" / name)
        b = load_file(alone / "epoch-0004" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        # And the same bytes: the same tensors, the same metadata, so the same sha256.
        files = [run / "epoch-0004" / name for run in (shared, alone)]
        assert files[0].read_bytes() == files[1].read_bytes(), name
        with safe_open(files[0], "pt") as handle:
            assert handle.metadata() == {"format": "advls.checkpoint/1"}
    # The records store the same hashes, as two saves of the same state must.
    shared_record = json.loads((shared / "checkpoint.json").read_text())
    alone_record = json.loads((alone / "checkpoint.json").read_text())
    assert shared_record["sha256"] == alone_record["sha256"]


def test_a_lock_dies_with_its_holder_even_by_kill_9(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from advls.locks import hold_run_directory\n"
            "with hold_run_directory(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    busy = pytest.raises(RunDirectoryBusy, match=f"in use by process {holder.pid}")
    with busy as caught, hold_run_directory(run):
        pass
    assert caught.value.pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with hold_run_directory(run):  # free at once: the kernel dropped the dead holder's lock
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_holding_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    """A caller holding a run (a sweep worker) can train into it without refusing itself."""
    with hold_run_directory(tmp_path / "run"), hold_run_directory(tmp_path / "run"):
        pass
    with hold_run_directory(tmp_path / "run"):  # released by the outer block's end
        pass


# --------------------------------------------------------------------------- case 11: --out
def test_an_out_that_cannot_be_created_fails_before_any_data_is_read(tmp_path: Path) -> None:
    """It failed only after the first epoch; now even a missing data set is not reached."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    args = ["train", "--dataset", str(tmp_path / "absent.npz"), "--model", "linear"]
    message = _one_line_error(runner.invoke(app, [*args, "--out", str(out), "--no-progress"]))
    assert _says(message, f"cannot write the run directory {out}")
    assert not _says(message, "absent.npz")


def test_a_real_run_into_an_unwritable_out_trains_nothing(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "a-file" / "run"
    (tmp_path / "a-file").write_text("")
    args = ["train", "--dataset", str(npz), "--model", "linear", "--epochs", "1"]
    message = _one_line_error(runner.invoke(app, [*args, "--out", str(out), "--no-progress"]))
    assert _says(message, "cannot write the run directory")
    assert not _says(message, "epoch 1/1")


def test_a_read_only_out_directory_is_refused_before_training(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("permissions do not bind this user (root)")
        with pytest.raises(RunDirectoryError, match="cannot write the run directory"):
            train(TrainConfig(dataset=str(tmp_path / "absent.npz")), out, progress=False)
    finally:
        out.chmod(0o755)


# --------------------------------------------------------------------------- case 4: contents
def test_a_flipped_byte_in_tensor_data_is_refused(run: Path, tmp_path: Path) -> None:
    weights = run / "epoch-0002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # after the length and the JSON header
    data[start] ^= 0x01  # the lowest mantissa bit of a float32: still a finite weight
    weights.write_bytes(bytes(data))
    for result in (_attack(run), _evaluate(run, tmp_path)):
        message = _one_line_error(result)
        assert _says(message, "model.safetensors is damaged: its bytes do not match the sha256")
        assert _says(message, "the last intact epoch is 1")
        assert _says(message, "--resume-from-last-good")
    assert not (tmp_path / "eval").exists()


def test_nan_weights_are_refused_even_with_matching_hashes(run: Path, tmp_path: Path) -> None:
    tensors = load_file(run / "epoch-0002" / "model.safetensors")
    tensors["net.fc.weight"][0, 0] = float("nan")
    _write_weights(run, tensors, rehash=True)
    for result in (_attack(run), _evaluate(run, tmp_path)):
        message = _one_line_error(result)
        assert _says(message, "tensor 'net.fc.weight' holds NaN or infinite values")


def test_integer_weights_are_refused(run: Path, tmp_path: Path) -> None:
    tensors = load_file(run / "epoch-0002" / "model.safetensors")
    _write_weights(run, {k: v.round().to(torch.int64) for k, v in tensors.items()}, rehash=True)
    for result in (_attack(run), _evaluate(run, tmp_path)):
        message = _one_line_error(result)
        assert _says(message, "do not fit the model: 'n")
        assert _says(message, "is int64 where the model has float32")


def test_records_without_hashes_still_load_and_are_still_checked(run: Path) -> None:
    """Runs written before hashes were stored: loaded, checked for what they have."""
    record_path, epoch_record = _records(run)
    record = json.loads(record_path.read_text())
    del record["sha256"]
    record_path.write_text(json.dumps(record))
    epoch_record.unlink()
    _, meta = load_model(run)
    assert meta["epoch"] == 2 and "sha256" not in meta
    tensors = load_file(run / "epoch-0002" / "model.safetensors")
    tensors["net.fc.bias"][0] = float("inf")
    _write_weights(run, tensors, rehash=False)
    with pytest.raises(CheckpointError, match=r"'net\.fc\.bias' holds NaN or infinite values"):
        load_model(run)


def test_a_partial_hash_table_is_damage_not_an_old_record(run: Path) -> None:
    record_path, _ = _records(run)
    record = json.loads(record_path.read_text())
    del record["sha256"]["model.safetensors"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"'sha256' must map model\.safetensors"):
        read_checkpoint(run)


def test_a_damaged_newest_epoch_is_resumed_from_the_last_intact_one(tmp_path: Path) -> None:
    """It was refused with nothing offered; now named, and --resume-from-last-good uses it."""
    from conftest import write_toy_npz

    data = write_toy_npz(tmp_path / "toy.npz", n=256, shape=(1, 28, 28))
    run = tmp_path / "run"
    assert subprocess.run(_train_command(data, run), env=_ENV, capture_output=True).returncode == 0
    weights = run / "epoch-0002" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])  # a torn file

    with pytest.raises(DamagedCheckpointError, match="the last intact epoch is 1") as caught:
        read_checkpoint(run)
    assert caught.value.last_intact == 1
    assert read_checkpoint(run, last_good=True).epoch == 1
    refused = subprocess.run(_train_command(data, run), env=_ENV, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume-from-last-good" in refused.stderr

    resumed = subprocess.run(
        _train_command(data, run, "--resume-from-last-good"),
        env=_ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch 1 of 2" in resumed.stderr
    assert weights.read_bytes() == intact  # epoch 2 trained again, bit for bit
    assert read_checkpoint(run).epoch == 2


# --------------------------------------------------------------------------- case 5: metadata
@pytest.mark.parametrize(
    ("section", "key"),
    [("model", "mean"), ("model", "std"), ("config", "dataset"), ("config", "loss")],
)
def test_a_record_missing_a_key_names_the_key_and_the_file(
    run: Path, tmp_path: Path, section: str, key: str
) -> None:
    """It was a KeyError traceback from attack and evaluate."""
    record_path, _ = _records(run)
    record = json.loads(record_path.read_text())
    del record[section][key]
    record_path.write_text(json.dumps(record))
    for result in (_attack(run), _evaluate(run, tmp_path)):
        message = _one_line_error(result)
        assert _says(message, f"{record_path} is damaged: '{section}.{key}' must")
        assert _says(message, "it is missing")


def test_a_complete_run_with_a_gutted_record_is_committed_again(npz: Path, run: Path) -> None:
    """The record lost a key but its epoch's own copy is intact: resuming restores it."""
    record_path, _ = _records(run)
    whole = json.loads(record_path.read_text())
    gutted = {**whole, "model": {k: v for k, v in whole["model"].items() if k != "mean"}}
    record_path.write_text(json.dumps(gutted))
    config = TrainConfig(dataset=str(npz), model="linear", loss="ce", epochs=2, batch_size=32)
    with pytest.raises(DamagedCheckpointError, match="last intact epoch is 2"):
        train(config, run, device="cpu", progress=False)
    result = train(config, run, device="cpu", progress=False, resume_from_last_good=True)
    assert result.resumed_from == 2
    assert json.loads(record_path.read_text()) == whole
