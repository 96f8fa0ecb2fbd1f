"""Sweeps that audit models advls did not train: a user's study of four checkpoints.

A model module is written to a folder outside the package and trained there on real MNIST
as a user's own would be (plain PyTorch, four seeds, safetensors files); a ``model:`` spec
audits the four through the real ``advls sweep run``. Every stored number must equal
:func:`advls.audit.audit` on the same model and points, bit for bit; a driver killed with
SIGKILL must end in the same export, byte for byte; every way of declaring the study wrong
must stop ``--dry-run`` with exit 2, naming the field, with nothing written.

Every sweep here runs with one torch thread (``--threads 1``), and so do the direct audits,
so that the order of float sums, and with it every number, is the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from advls import data as datasets
from advls.audit import audit
from advls.cli import app
from advls.data.integrity import file_digest
from advls.evaluate import get_protocol
from advls.external import ModelSource
from advls.report.build import build_report
from advls.store import Result, Store, StoreError
from advls.sweep import (
    AuditRunSpec,
    RunSpec,
    SpecError,
    create,
    load_spec,
    parse_spec,
    register,
    run_sweep,
)
from advls.sweep.export import results_table
from advls.sweep.job import evaluation_results
from user_models import train_briefly, write_models

runner = CliRunner()
ADVLS = str(Path(sys.executable).with_name("advls"))

SEEDS = (0, 1, 2, 3)
#: The paper protocol with fewer BIM, DeepFool and CW steps: the same attacks, a cheaper audit.
PARAMS = {"bim-100": {"steps": 10}, "deepfool": {"steps": 10}, "cw-l2": {"steps": 10}}
EPS = [0.1, 0.3]
POINTS = 50


def audit_spec(**changes) -> dict:
    """The study's spec: the four checkpoints of ``models/cnn.py`` on MNIST's test split."""
    spec = {
        "name": "study-audit",
        "model": {"factory": "models/cnn.py:small_cnn", "args": {"width": 8}, "dataset": "mnist"},
        "grid": {"weights": [f"ckpts/s{seed}.safetensors" for seed in SEEDS]},
        "evaluate": {
            "protocols": [{"name": "paper", "params": PARAMS}],
            "eps": EPS,
            "n": POINTS,
        },
    }
    spec.update(changes)
    return spec


def write_cnn_models(folder: Path) -> ModuleType:
    """``models/cnn.py`` in ``folder``, imported."""
    return write_models(folder / "models" / "cnn.py")


def save_weights(folder: Path, weights: dict[str, dict[str, torch.Tensor]]) -> None:
    (folder / "ckpts").mkdir(exist_ok=True)
    for name, state in weights.items():
        save_file(state, folder / "ckpts" / f"{name}.safetensors")


def write_spec(folder: Path, payload: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(payload))
    return path


def train_cnn(module: ModuleType, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """The study's CNN after a few hundred SGD steps on the digits."""
    return train_briefly(lambda: module.small_cnn(width=8), images, labels, seed).state_dict()


def advls(*args: str, data: Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVLS_DATA": str(data), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [ADVLS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"advls {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def one_thread():
    """Torch in this process as the sweeps run it: one thread (restored by the caller)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


# ---------------------------------------------------------------------- the study, trained
@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """``models/cnn.py``, four checkpoints trained on 2000 real digits, and the spec."""
    folder = tmp_path_factory.mktemp("study")
    module = write_cnn_models(folder)
    train = datasets.load("mnist", "train", real_data, progress=False)
    threads = one_thread()
    try:
        weights = {
            f"s{seed}": train_cnn(module, train.images[:2000], train.labels[:2000], seed)
            for seed in SEEDS
        }
    finally:
        torch.set_num_threads(threads)
    save_weights(folder, weights)
    write_spec(folder, audit_spec())
    return folder


@pytest.fixture(scope="module")
def reference(study: Path, real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study audited once, uninterrupted, from another working directory (the spec's
    paths are relative to the spec file, not to where the command runs)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    store = study / "reference.db"
    command = ["sweep", "run", str(study / "spec.yaml"), "--store", str(store)]
    advls(*command, "--threads", "1", "--no-progress", data=real_data, cwd=elsewhere)
    return store


def _stored(store: Store, key: str) -> dict[tuple, float | None]:
    return {
        (row["protocol"], row["attack"], row["eps"], row["metric"]): row["value"]
        for row in store.results([key])
    }


@pytest.mark.slow
def test_every_checkpoint_is_audited_as_audit_itself_audits_it(study, reference, real_data):
    with Store(reference, readonly=True) as store:
        runs = store.runs()
        stored = {run["name"]: _stored(store, run["key"]) for run in runs}
    assert [run["name"] for run in runs] == [f"s{seed}" for seed in SEEDS]
    assert all(run["status"] == "done" and run["attempts"] == 1 for run in runs)
    protocol = get_protocol("paper").with_params(**PARAMS)
    threads = one_thread()
    try:
        for seed in SEEDS:
            weights = study / "ckpts" / f"s{seed}.safetensors"
            source = ModelSource(f"{study / 'models' / 'cnn.py'}:small_cnn", {"width": 8}, weights)
            evaluation = audit(
                source,
                "mnist",
                split="test",
                n=POINTS,
                data_dir=real_data,
                protocols=[protocol],
                eps=EPS,
                seed=0,
            )
            rows = stored[f"s{seed}"]
            # Every row the store holds is the direct audit's, bit for bit (NaN is NULL there).
            expected = {
                (r.protocol, r.attack, r.eps, r.metric): None if r.value != r.value else r.value
                for r in evaluation_results(evaluation)
            }
            assert rows == expected
            assert rows[("clean", "clean", None, "accuracy")] == evaluation.clean_accuracy
            for eps in EPS:
                worst = rows[("paper", "worst_case", eps, "robust_accuracy")]
                assert worst == evaluation.worst_case("paper", eps)
                (fgsm,) = [o for o in evaluation.outcomes if (o.spec.label, o.eps) == ("fgsm", eps)]
                assert rows[("paper", "fgsm", eps, "robust_accuracy")] == fgsm.robust_accuracy
            # Trained models, and attacks that work on them: the numbers are not degenerate.
            assert evaluation.clean_accuracy > 0.7
            assert evaluation.worst_case("paper", 0.3) < evaluation.clean_accuracy
            assert any(group == "audit" for group, *_ in rows)  # the masking checks ran
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_status_export_and_report_show_the_four_audits(study, reference, tmp_path):
    status = runner.invoke(app, ["sweep", "status", "--store", str(reference)])
    assert status.exit_code == 0, status.output
    assert "study-audit" in status.stdout and "4/4" in status.stdout

    csv = tmp_path / "audits.csv"
    exported = runner.invoke(app, ["sweep", "export", "--store", str(reference), "--out", str(csv)])
    assert exported.exit_code == 0, exported.output
    table = pd.read_csv(csv)
    with Store(reference, readonly=True) as store:
        assert len(table) == len(store.results())
    per_run = table.drop_duplicates("run").set_index("name")
    assert sorted(per_run.index) == [f"s{seed}" for seed in SEEDS]
    for seed in SEEDS:
        row = per_run.loc[f"s{seed}"]
        weights = study / "ckpts" / f"s{seed}.safetensors"
        assert row["weights"] == str(weights.resolve())
        assert row["weights_sha256"] == file_digest(weights)
        assert row["factory"] == f"{(study / 'models' / 'cnn.py').resolve()}:small_cnn"
        assert (row["dataset"], row["split"]) == ("mnist", "test")
    # The training columns do not apply to an audit: empty, not made up.
    assert table[["model", "loss", "alpha", "defence", "epochs", "seed"]].isna().all().all()

    out = tmp_path / "report"
    report = runner.invoke(app, ["report", "--store", str(reference), "--out", str(out)])
    assert report.exit_code == 0, report.output
    page = (out / "report.md").read_text()
    assert "## Audited models" in page and "the store holds audits only" in page
    audited = pd.read_csv(out / "tables" / "table-audited-models.csv")
    assert sorted(set(audited["name"])) == [f"s{seed}" for seed in SEEDS]
    assert len(audited) == len(SEEDS) * len(EPS)
    clean = table[(table["protocol"] == "clean") & (table["metric"] == "accuracy")]
    for name, value in zip(clean["name"], clean["value"], strict=True):
        assert set(audited[audited["name"] == name]["clean"]) == {value}
    for _, row in audited.iterrows():
        worst = table[
            (table["name"] == row["name"])
            & (table["attack"] == "worst_case")
            & (table["eps"] == row["eps"])
        ]
        assert row["paper"] == worst["value"].item()
    assert (out / "report.html").is_file()


# ---------------------------------------------------------------------- kill -9, run again
def _done(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with Store(store, readonly=True) as opened:
            return opened.counts()["done"]
    except StoreError:  # the driver is still creating it
        return 0


@pytest.mark.slow
def test_a_driver_killed_after_its_first_audit_resumes_to_the_same_export(
    study: Path, reference: Path, real_data: Path, tmp_path: Path
):
    store = tmp_path / "killed.db"
    command = [ADVLS, "sweep", "run", str(study / "spec.yaml"), "--store", str(store)]
    command += ["--threads", "1", "--no-progress"]
    env = {**os.environ, "ADVLS_DATA": str(real_data), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while _done(store) < 1:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with Store(store, readonly=True) as opened:
        counts = opened.live_counts()
    assert 1 <= counts["done"] < len(SEEDS), counts
    assert counts["stale"] == 1  # the audit in flight, its driver gone

    advls(*command[1:], data=real_data, cwd=tmp_path)
    with Store(store, readonly=True) as opened:
        runs = opened.runs()
    assert all(run["status"] == "done" for run in runs)
    assert sorted(run["attempts"] for run in runs) == [1, 1, 1, 2]

    exports = []
    for source in (reference, store):
        out = tmp_path / f"{source.stem}.csv"
        result = runner.invoke(app, ["sweep", "export", "--store", str(source), "--out", str(out)])
        assert result.exit_code == 0, result.output
        exports.append(out.read_bytes())
    # Byte for byte: the export has no timing column, and every number is deterministic.
    assert exports[0] == exports[1]


@pytest.mark.slower
def test_worker_processes_and_ray_give_the_reference_numbers(study, reference, real_data, tmp_path):
    """The factory file is imported in each worker (spawned processes, Ray tasks): the task
    carries only paths and digests, and the numbers are the reference's."""

    def numbers(path: Path) -> list[tuple]:
        with Store(path, readonly=True) as opened:
            keys = sorted(run["key"] for run in opened.runs() if run["status"] == "done")
            return [(key, sorted(_stored(opened, key).items(), key=str)) for key in keys]

    expected = numbers(reference)
    command = ["sweep", "run", str(study / "spec.yaml"), "--jobs", "2", "--threads", "1"]
    jobs = tmp_path / "jobs.db"
    advls(*command, "--store", str(jobs), data=real_data, cwd=tmp_path)
    assert numbers(jobs) == expected
    pytest.importorskip("ray")
    ray = tmp_path / "ray.db"
    advls(*command, "--store", str(ray), "--executor", "ray", data=real_data, cwd=tmp_path)
    assert numbers(ray) == expected


# ---------------------------------------------------------------------- validation, no data
@pytest.fixture
def untrained(tmp_path: Path) -> Path:
    """The study's files with untrained weights (nothing here reads a dataset), a narrower
    model's weights, and a model file whose import fails."""
    folder = tmp_path / "study"
    module = write_cnn_models(folder)
    torch.manual_seed(0)
    weights = {f"s{seed}": module.small_cnn(width=8).state_dict() for seed in SEEDS}
    weights["narrow"] = module.small_cnn(width=4).state_dict()
    save_weights(folder, weights)
    (folder / "models" / "broken.py").write_text("import torch\nraise ImportError('no GPU')\n")
    return folder


def _files(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


def _model(**changes) -> dict:
    return {**audit_spec()["model"], **changes}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (  # a weights file that is not there
            {"grid": {"weights": ["ckpts/s0.safetensors", "ckpts/s9.safetensors"]}},
            ["grid.weights", "s9.safetensors does not exist"],
        ),
        (  # weights of another width
            {"model": _model(weights="ckpts/narrow.safetensors"), "grid": {}},
            ["model.weights", "do not fit the model", "of the wrong shape"],
        ),
        (  # a factory file whose import fails
            {"model": _model(factory="models/broken.py:small_cnn")},
            ["model.factory", "broken.py raised ImportError: no GPU"],
        ),
        (  # a factory module that is not installed
            {"model": _model(factory="no_such_package.models:small_cnn")},
            ["model.factory", "cannot import no_such_package.models"],
        ),
        (  # a callable the file does not define
            {"model": _model(factory="models/cnn.py:big_cnn")},
            ["model.factory", "has no callable 'big_cnn'", "small_cnn"],
        ),
        (  # a spec with both sections
            {"train": {"dataset": "mnist", "model": "mlp"}},
            ["train", "model", "not both"],
        ),
        (  # a misspelt key of the model section
            {"model": _model(widht=8)},
            ["model: unknown key 'widht'", "allowed: factory, args, weights"],
        ),
        (  # a misspelt grid axis
            {"grid": {"weight": ["ckpts/s0.safetensors"]}},
            ["grid: unknown key 'weight'"],
        ),
        (  # a colour model for grey digits: its output does not fit the dataset
            {"model": _model(args={"width": 8, "channels": 3}), "grid": {}},
            ["model.dataset", "cannot take the dataset's images", "(2, 1, 28, 28)"],
        ),
        (  # fewer classes than the dataset's labels
            {"model": _model(args={"width": 8, "classes": 5}), "grid": {}},
            ["model.dataset", "returns 5 logits", "mnist has 10 classes"],
        ),
        (  # a normalisation of three channels for grey digits
            {"model": _model(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])},
            ["model.mean", "3 value(s) for images of 1 channel(s)"],
        ),
        (  # strict types: a number is no path
            {"model": _model(weights=3), "grid": {}},
            ["model.weights", "valid string"],
        ),
        (  # no twin is trained for a model from outside
            {"evaluate": {**audit_spec()["evaluate"], "surrogate": "twin"}},
            ["evaluate.surrogate", "no twin is trained"],
        ),
        (  # a split MNIST does not have
            {"model": _model(split="validation")},
            ["model.split", "got 'validation'"],
        ),
    ],
    ids=[
        "missing-weights", "misfit-weights", "import-fails", "no-module", "no-callable",
        "train-and-model", "unknown-key", "unknown-axis", "output-misfit", "too-few-classes",
        "mean-channels", "strict-types", "twin", "split",
    ],
)  # fmt: skip
def test_a_wrong_study_stops_the_dry_run_naming_the_field(untrained, changes, expected):
    spec = write_spec(untrained, audit_spec(**changes))
    before = _files(untrained)
    result = runner.invoke(
        app,
        ["sweep", "run", str(spec), "--store", str(untrained / "s.db"), "--dry-run"],
        env={"COLUMNS": "1000"},  # one line: long paths are not folded
    )
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    message = " ".join(result.output.split())
    assert str(spec) in message
    for part in expected:
        assert part in message
    assert _files(untrained) == before  # no store, no artifacts, nothing written


def test_the_valid_study_dry_runs_with_the_weights_stems_as_names(untrained, real_data):
    spec = write_spec(untrained, audit_spec())
    before = _files(untrained)
    result = runner.invoke(
        app,
        ["sweep", "run", str(spec), "--store", str(untrained / "s.db"), "--dry-run"],
        env={"ADVLS_DATA": str(real_data)},
    )
    assert result.exit_code == 0, result.output
    assert "study-audit: 4 runs" in result.stdout
    assert all(f"s{seed}" in result.stdout for seed in SEEDS)
    assert _files(untrained) == before


# ---------------------------------------------------------------------- keys
def _keys(folder: Path, weights: list[str], **model) -> list[str]:
    payload = audit_spec(grid={"weights": weights})
    payload["model"].update(model)
    _, runs = load_spec(write_spec(folder, payload, "keys.yaml"))
    assert all(isinstance(run, AuditRunSpec) for run in runs)
    return [run.key for run in runs]


def test_a_weights_file_is_keyed_by_its_bytes_not_its_path(untrained: Path):
    (untrained / "copies").mkdir()
    copy = untrained / "copies" / "renamed.safetensors"
    shutil.copyfile(untrained / "ckpts" / "s0.safetensors", copy)
    (original,) = _keys(untrained, ["ckpts/s0.safetensors"])
    # The same bytes at another path, absolute or relative, is the same run, declared once.
    assert _keys(untrained, ["ckpts/s0.safetensors", str(copy), "copies/renamed.safetensors"]) == [
        original
    ]
    # A label names the run; it is not part of what the run is.
    assert _keys(untrained, ["ckpts/s0.safetensors"], label="baseline") == [original]

    # One byte changed (the first weight's lowest mantissa bit): a new run.
    raw = bytearray(copy.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header] ^= 1
    copy.write_bytes(bytes(raw))
    changed = _keys(untrained, ["ckpts/s0.safetensors", "copies/renamed.safetensors"])
    assert len(changed) == 2 and changed[0] == original and changed[1] != original
    # So are other arguments, or another split, with the same weights.
    assert _keys(untrained, ["ckpts/s0.safetensors"], split="train") != [original]
    assert _keys(untrained, ["ckpts/s0.safetensors"], mean=[0.5], std=[0.25]) != [original]


def test_the_factory_file_is_keyed_by_its_bytes_and_the_study_may_move(untrained, tmp_path):
    (original,) = _keys(untrained, ["ckpts/s0.safetensors"])
    moved = shutil.copytree(untrained, tmp_path / "moved")
    assert _keys(moved, ["ckpts/s0.safetensors"]) == [original]
    with open(moved / "models" / "cnn.py", "a") as handle:
        handle.write("\n# edited\n")
    assert _keys(moved, ["ckpts/s0.safetensors"]) != [original]


def test_a_file_changed_after_registration_fails_its_run_and_stores_nothing(untrained: Path):
    spec, runs = load_spec(write_spec(untrained, audit_spec()))
    weights = untrained / "ckpts" / "s1.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    with Store(untrained / "s.db") as store:
        keys = register(store, spec, runs)
        weights.write_bytes(bytes(raw))  # after the key was computed from the old bytes
        # Only the changed run may be claimed here; the others are not this test's.
        summary = run_sweep(store, [keys[1]], create("local"), artifact_dir=untrained / "artifacts")
        failed = store.runs([keys[1]])[0]
        assert summary.counts["failed"] == 1 and not store.results([keys[1]])
    assert (
        failed["status"] == "failed" and "changed since the sweep registered it" in failed["error"]
    )
    assert "s1.safetensors" in failed["error"]


# ---------------------------------------------------------------------- one store, both kinds
def _finish(store: Store, claims, value: float) -> None:
    for claim in claims:
        rows = [
            Result("clean", "clean", None, "accuracy", value),
            Result("paper", "fgsm", 0.1, "robust_accuracy", value / 2),
            Result("paper", "worst_case", 0.1, "robust_accuracy", value / 4),
            Result("audit", "flag:zero-gradients", None, "raised", 1.0),
        ]
        store.complete(claim.key, rows)


def test_trained_runs_and_audits_share_a_store_its_export_and_its_report(untrained, tmp_path):
    trained_spec, trained = parse_spec(
        {
            "name": "trained",
            "train": {"dataset": "mnist", "model": "mlp", "epochs": 1},
            "grid": {"loss": ["ce", "adversarial"]},
            "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 10},
        }
    )
    audit_spec_, audits = load_spec(write_spec(untrained, audit_spec()))
    assert all(isinstance(run, RunSpec) for run in trained)
    with Store(tmp_path / "both.db") as store:
        register(store, trained_spec, trained)
        register(store, audit_spec_, audits)
        _finish(store, store.claim(len(trained), [run.key for run in trained]), 0.9)
        _finish(store, store.claim(len(audits), [run.key for run in audits]), 0.8)
        table = results_table(store)
        files = build_report(store, tmp_path / "report")
        stored = store.sweep_spec("study-audit")
    assert "train" not in stored and stored["model"]["factory"] == "models/cnn.py:small_cnn"

    kinds = table.drop_duplicates("run").set_index("name")
    assert len(kinds) == len(trained) + len(audits)
    is_audit = kinds["factory"].notna()
    assert sorted(kinds.index[is_audit]) == [f"s{seed}" for seed in SEEDS]
    assert kinds.loc[~is_audit, "loss"].tolist() == ["ce", "adversarial"]
    assert kinds.loc[is_audit, "loss"].isna().all()
    assert kinds.loc[~is_audit, "weights_sha256"].isna().all()
    assert set(kinds["dataset"]) == {"mnist"}

    page = files.markdown.read_text()
    assert "## Audited models" in page and "they cover the trained runs only" in page
    assert "## Audit: the paper's protocol against the strong one" in page
    audited = pd.read_csv(files.tables["audited-models"])
    assert sorted(audited["name"]) == [f"s{seed}" for seed in SEEDS]
    assert set(audited["clean"]) == {0.8} and set(audited["paper"]) == {0.2}
    assert set(audited["flags"]) == {"zero-gradients"}


# ---------------------------------------------------------------------- a dataset of one's own
def test_a_study_on_its_own_npz_is_checked_against_it_and_runs(untrained: Path):
    from conftest import write_toy_npz

    write_toy_npz(untrained / "toy.npz", n=64)  # two classes of 1 x 16 x 16 images
    payload = audit_spec(
        model=_model(dataset="toy.npz", args={"width": 4, "classes": 2}),
        grid={"label": ["toy-model"]},
        evaluate={"protocols": [{"name": "paper", "params": PARAMS}], "n": 32, "checks": False},
    )
    spec, runs = load_spec(write_spec(untrained, payload))
    (run,) = runs
    assert run.dataset == str((untrained / "toy.npz").resolve()) and run.name == "toy-model"
    assert run.task == (2, (1, 16, 16)) and run.eps == (0.1, 0.2, 0.3)  # grey images' default

    # Labels the model cannot output (five classes, three logits): named before anything runs.
    five = np.random.default_rng(0).integers(0, 256, size=(20, 1, 16, 16), dtype=np.uint8)
    np.savez(untrained / "five.npz", x=five, y=np.arange(20) % 5)
    payload["model"].update(dataset="five.npz", args={"width": 4, "classes": 3})
    with pytest.raises(
        SpecError, match=r"model\.dataset: .*five\.npz \(test\): labels must lie in 0\.\.2"
    ):
        parse_spec(payload, "toy.yaml", base=untrained)

    with Store(untrained / "toy.db") as store:
        keys = register(store, spec, runs)
        summary = run_sweep(store, keys, create("local"), artifact_dir=untrained / "artifacts")
        assert summary.counts["done"] == 1, store.runs()[0]["error"]
        clean = [r["value"] for r in store.results() if r["protocol"] == "clean"]
    assert len(clean) == 1 and 0 <= clean[0] <= 1
