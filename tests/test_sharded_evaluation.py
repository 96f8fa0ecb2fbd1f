"""One evaluation across many workers, on real MNIST: the plan and the seeds, exact merging
(per example, and every check's measurement), results that do not depend on the workers,
kept shards reused and never trusted when stale or damaged, and bad input refused with
nothing written."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from typer.testing import CliRunner

from advls.audit import audit
from advls.cli import app
from advls.evaluate import PROTOCOLS, Evaluation, evaluate, evaluate_sharded
from advls.evaluate.shards import (
    load_shard,
    merge_evaluations,
    plan_shards,
    save_shard,
    shard_seed,
)
from advls.models import create
from mlp_files import run_audit_sweep, save_as_user_files, trained_mlp

#: The strong protocol's shape (every kind of attack, random starts, Square's proposals) at
#: a cost a default test run affords.
CHEAP_STRONG = PROTOCOLS["strong"].with_params(
    **{
        "pgd-40x5": {"steps": 5, "restarts": 2},
        "apgd-ce": {"steps": 10},
        "apgd-dlr": {"steps": 10, "restarts": 1},
        "apgd-t": {"steps": 5, "target_classes": 2},
        "fab-t": {"steps": 5, "target_classes": 2},
        "square": {"queries": 50},
        "deepfool": {"steps": 20},
    }
)
OPTIONS = {"protocols": [CHEAP_STRONG], "eps": [0.1, 0.3], "batch_size": 40}


@pytest.fixture(scope="module")
def mnist(real_data: Path) -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP trained briefly on real MNIST, and 120 test points."""
    return trained_mlp(real_data, 120)


def same_outcomes(a: Evaluation, b: Evaluation, *, exact: bool = True) -> None:
    """Every per-example mask equal, distances equal (within 1e-6 unless exact)."""
    assert [(o.protocol, o.spec.label, o.eps) for o in a.outcomes] == [
        (o.protocol, o.spec.label, o.eps) for o in b.outcomes
    ]
    assert torch.equal(a.correct, b.correct)
    for left, right in zip(a.outcomes, b.outcomes, strict=True):
        assert torch.equal(left.fooled, right.fooled), (left.spec.label, left.eps)
        assert torch.equal(left.attacked, right.attacked)
        if exact:
            assert torch.equal(left.l2, right.l2)
        else:
            assert torch.allclose(left.l2, right.l2, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- plan and seeds
@given(points=st.integers(1, 3000), size=st.integers(1, 700))
@settings(max_examples=60, deadline=None)
def test_a_plan_by_size_covers_every_point_once_in_order(points: int, size: int) -> None:
    plan = plan_shards(points, shard_size=size)
    ranges = plan.ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == points
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(ranges))
    assert all(stop - start == size for start, stop in ranges[:-1])
    assert 1 <= ranges[-1][1] - ranges[-1][0] <= size
    assert plan.count == -(-points // size)


@given(points=st.integers(1, 3000), data_=st.data())
@settings(max_examples=60, deadline=None)
def test_a_plan_by_count_has_that_many_shards_of_nearly_equal_size(points, data_) -> None:
    count = data_.draw(st.integers(1, min(points, 64)))
    plan = plan_shards(points, shards=count)
    sizes = [stop - start for start, stop in plan.ranges()]
    assert plan.count == count and sum(sizes) == points
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"shards": 0}, "shards must be an integer >= 1, got 0"),
        ({"shards": 11}, "shards (11) cannot exceed the evaluated points (10)"),
        ({"shard_size": 0}, "shard_size must be an integer >= 1, got 0"),
        ({"shard_size": 2.5}, "shard_size must be an integer >= 1, got 2.5"),
        ({"shard_size": 5, "shards": 2}, "give shard_size or shards, not both"),
    ],
)
def test_bad_plans_are_refused_naming_the_argument(arguments, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_shards(10, **arguments)


def test_shard_seeds_are_distinct_reproducible_and_fit_a_generator() -> None:
    seeds = [shard_seed(seed, index) for seed in (0, 1, -3) for index in range(200)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [shard_seed(seed, index) for seed in (0, 1, -3) for index in range(200)]
    assert all(0 <= seed < 2**63 for seed in seeds)
    torch.Generator().manual_seed(max(seeds))  # accepted


# --------------------------------------------------------------------------- exact merging
def test_a_sharded_evaluation_is_its_shards_evaluated_alone_and_concatenated(mnist) -> None:
    """The closed form of merging: shard i is ``evaluate`` on its points with seed
    ``shard_seed(seed, i)``; every mask is theirs in order, the worst case is recomputed from
    the merged masks, seconds and calls add up."""
    model, images, labels = mnist
    sharded = evaluate_sharded(model, images, labels, shard_size=50, seed=7, **OPTIONS)
    alone = [
        evaluate(model, images[a:b], labels[a:b], seed=shard_seed(7, i), **OPTIONS)
        for i, (a, b) in enumerate([(0, 50), (50, 100), (100, 120)])
    ]
    concatenated = merge_evaluations(alone, seed=7)
    same_outcomes(sharded, concatenated)
    for merged_outcome, *pieces in zip(sharded.outcomes, *(p.outcomes for p in alone), strict=True):
        assert torch.equal(merged_outcome.fooled, torch.cat([p.fooled for p in pieces]))
        assert merged_outcome.model_calls == sum(p.model_calls for p in pieces)
    for eps in (0.1, 0.3):
        robust = sum(int(p.worst_case_robust("strong", eps).sum()) for p in alone)
        assert sharded.worst_case("strong", eps) == robust / 120
    assert sharded.sharding["shards"] == 3 and sharded.sharding["computed"] == 3
    assert sharded.clean_accuracy == evaluate(model, images, labels, checks=False, **{
        **OPTIONS, "protocols": [PROTOCOLS["paper"].without("cw-l2", "bim-100", "deepfool")]
    }).clean_accuracy  # fmt: skip


def test_merged_checks_equal_the_checks_measured_on_all_points(mnist) -> None:
    """Measurements that do not depend on the seed equal the unsharded ones exactly: the
    clean outputs' extremes, the zero-gradient count, the model's modes; the pooled shares
    are each shard's count over all points."""
    model, images, labels = mnist
    whole = evaluate(model, images, labels, **OPTIONS)
    sharded = evaluate_sharded(model, images, labels, shard_size=32, **OPTIONS)
    for key in ("probability_rows", "output_min", "output_row_sum_error",
                "zero_gradient_count", "zero_gradient_fraction", "train_mode_modules",
                "active_after_eval", "randomized_changed_predictions"):  # fmt: skip
        assert sharded.checks[key] == pytest.approx(whole.checks[key], rel=1e-6), key
    # Each of the 4 shards forwards its own first (<= 250) correct points: all of them here.
    assert sharded.checks["randomized_points"] == int(whole.correct.sum())
    assert 0.0 <= sharded.checks["large_eps_accuracy"] <= 1.0
    assert sharded.checks["large_eps_attack"]["seed"] == 0  # the evaluation's, not a shard's
    assert {flag.name for flag in sharded.flags} == {flag.name for flag in whole.flags}
    # The unseeded DeepFool check reads the same points in different batches: its rate is
    # within one point of the whole evaluation's.
    correct = int(whole.correct.sum())
    rates = (sharded.checks["unbounded_success_rate"], whole.checks["unbounded_success_rate"])
    assert abs(rates[0] - rates[1]) <= 1 / correct + 1e-9


def test_results_do_not_depend_on_how_many_workers_run(mnist) -> None:
    """One worker in this process and two spawned processes (one thread each): every mask
    equal, distances equal, checks equal."""
    model, images, labels = mnist
    one = evaluate_sharded(model, images, labels, shard_size=40, jobs=1, **OPTIONS)
    two = evaluate_sharded(model, images, labels, shard_size=40, jobs=2, threads=1, **OPTIONS)
    same_outcomes(one, two, exact=False)
    assert one.checks.as_dict() == two.checks.as_dict()
    assert two.sharding["workers"] == 2 and one.sharding["workers"] == 1
    assert one.sharding["fingerprint"] == two.sharding["fingerprint"]


# --------------------------------------------------------------------------- kept shards
def test_kept_shards_are_reused_and_a_missing_or_damaged_one_recomputed(mnist, tmp_path):
    model, images, labels = mnist
    first = evaluate_sharded(model, images, labels, shard_size=40, out=tmp_path, **OPTIONS)
    files = sorted((tmp_path / "shards").glob("*/shard-*.safetensors"))
    assert len(files) == 3 and first.sharding["computed"] == 3
    files[0].unlink()
    files[2].write_bytes(files[2].read_bytes()[:100])  # truncated: not trusted
    again = evaluate_sharded(model, images, labels, shard_size=40, out=tmp_path, **OPTIONS)
    assert (again.sharding["reused"], again.sharding["computed"]) == (1, 2)
    same_outcomes(first, again)
    assert again.checks.as_dict() == first.checks.as_dict()
    reread = evaluate_sharded(model, images, labels, shard_size=40, out=tmp_path, **OPTIONS)
    assert (reread.sharding["reused"], reread.sharding["computed"]) == (3, 0)
    same_outcomes(first, reread)
    assert _timeless(reread.as_dict()) == _timeless(first.as_dict())


def _timeless(payload: dict) -> dict:
    """An evaluation's JSON without what differs between runs: seconds and the sharding."""
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in payload["results"]]
    return {**payload, "results": rows, "seconds": None, "sharding": None}


def test_a_kept_shard_of_another_evaluation_is_never_read(mnist, tmp_path) -> None:
    """Another seed, other weights, other points: a new fingerprint, nothing reused."""
    model, images, labels = mnist
    images, labels = images[:60], labels[:60]
    evaluate_sharded(model, images, labels, shard_size=30, out=tmp_path, **OPTIONS)
    other_seed = evaluate_sharded(
        model, images, labels, shard_size=30, out=tmp_path, seed=1, **OPTIONS
    )
    assert other_seed.sharding["reused"] == 0
    changed = create("mlp", num_classes=10, input_shape=(1, 28, 28))
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.net.fc3.bias[0] += 1e-3
    other_model = evaluate_sharded(changed, images, labels, shard_size=30, out=tmp_path, **OPTIONS)
    assert other_model.sharding["reused"] == 0
    flipped = labels.clone()
    flipped[0] = (flipped[0] + 1) % 10
    other_labels = evaluate_sharded(model, images, flipped, shard_size=30, out=tmp_path, **OPTIONS)
    assert other_labels.sharding["reused"] == 0


def test_a_shard_file_round_trips_exactly_and_refuses_another_place(mnist, tmp_path) -> None:
    model, images, labels = mnist
    part = evaluate(model, images[:30], labels[:30], **OPTIONS)
    path = save_shard(tmp_path / "s.safetensors", part, fingerprint="f" * 64, index=2, start=60)
    common = {"protocols": part.protocols, "eps": part.eps, "l2_budgets": part.l2_budgets}
    back = load_shard(path, fingerprint="f" * 64, index=2, start=60, points=30, **common)
    same_outcomes(part, back)
    assert back.checks.as_dict() == json.loads(json.dumps(part.checks.as_dict()))
    for wrong in ({"index": 3}, {"start": 0}, {"fingerprint": "e" * 64}, {"points": 31}):
        where = {"fingerprint": "f" * 64, "index": 2, "start": 60, "points": 30, **wrong}
        assert load_shard(path, **where, **common) is None
    # A file of another evaluation's protocols (an attack this one lacks) is not its shard.
    fewer = {**common, "protocols": [PROTOCOLS["paper"]]}
    assert load_shard(path, fingerprint="f" * 64, index=2, start=60, points=30, **fewer) is None


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"shards": 0}, "shards must be an integer >= 1"),
        ({"shards": 121}, "cannot exceed the evaluated points (120)"),
        ({"shard_size": 0}, "shard_size must be an integer >= 1"),
        ({"jobs": 0}, "jobs must be an integer >= 1"),
        ({"executor": "slurm"}, "executor must be one of local, ray"),
        ({"executor": "ray", "gpus_per_shard": 1}, "needs CUDA"),
        ({"gpus_per_shard": 1}, "applies to the ray executor"),
        ({"gpus_per_shard": -1}, "gpus_per_shard must be a number >= 0"),
        ({"retries": -1}, "retries must be an integer >= 0"),
    ],
)
def test_bad_sharding_is_refused_and_writes_nothing(mnist, tmp_path, arguments, message):
    if arguments.get("gpus_per_shard") == 1 and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, images, labels = mnist
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_sharded(model, images, labels, out=out, **{**OPTIONS, **arguments})
    assert not out.exists()


def test_an_audit_shards_a_model_source_rebuilt_in_each_worker(mnist, tmp_path) -> None:
    """``audit(..., sharding=...)`` with a factory file: two spawned workers build the model
    from its source, and the result is the one-worker result."""
    from advls.external import ModelSource

    model, images, labels = mnist
    factory, weights = save_as_user_files(model, tmp_path)
    source = ModelSource(f"{factory}:mlp", {}, weights)
    one = audit(source, (images, labels), sharding={"shard_size": 60}, **OPTIONS)
    two = audit(source, (images, labels), sharding={"shard_size": 60, "jobs": 2}, **OPTIONS)
    same_outcomes(one, two, exact=False)
    direct = evaluate_sharded(model, images, labels, shard_size=60, **OPTIONS)
    same_outcomes(one, direct, exact=False)
    with pytest.raises(ValueError, match="give --shard-size or --shards, not both"):
        audit(source, (images, labels), sharding={"shard_size": 60, "shards": 2}, **OPTIONS)


# --------------------------------------------------------------------------- the command
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, real_data: Path) -> Path:
    from advls.train import TrainConfig, train

    root = tmp_path_factory.mktemp("sharded-cli")
    config = TrainConfig(dataset="mnist", model="linear", loss="ce", epochs=1, batch_size=128,
                         train_subset=2000, seed=0)  # fmt: skip
    train(config, root / "linear", data_dir=real_data, device="cpu", progress=False)
    return root / "linear"


QUICK = ["--protocol", "standard", "--eps", "0.1", "--n", "60", "--no-progress", "--json"]


def _json(output: str) -> dict:
    return json.loads(output[: output.rindex("}") + 1])


def test_the_command_shards_and_states_the_cut_in_its_reproducing_command(
    checkpoint: Path, tmp_path: Path, real_data: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ADVLS_DATA", str(real_data))
    args = ["evaluate", "--checkpoint", str(checkpoint), *QUICK]
    one = runner.invoke(app, [*args, "--shard-size", "25", "--report", str(tmp_path / "a")])
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, [*args, "--shard-size", "25", "--jobs", "2", "--threads", "1"])
    assert two.exit_code == 0, two.output
    first, second = _json(one.stdout), _json(two.stdout)
    assert first["worst_case"] == second["worst_case"] and first["results"] == [
        {**row, "seconds": first["results"][i]["seconds"]}
        for i, row in enumerate(second["results"])
    ]
    assert first["sharding"]["shards"] == 3 and second["sharding"]["workers"] == 2
    card = (tmp_path / "a" / "audit.md").read_text()
    assert "--shard-size 25" in card


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--jobs", "0"], "--jobs: Input should be greater than or equal to 1 (got 0)"),
        (["--shards", "0"], "--shards: Input should be greater than or equal to 1 (got 0)"),
        (["--shards", "61"], "shards (61) cannot exceed the evaluated points (60)"),
        (["--shard-size", "5", "--shards", "2"], "give --shard-size or --shards, not both"),
        (["--address", "auto"], "--address applies to --executor ray only"),
        (["--gpus-per-shard", "1"], "--gpus-per-shard applies to --executor ray only"),
        (["--executor", "ray", "--gpus-per-shard", "1"], "needs CUDA"),
    ],
)
def test_bad_sharding_options_exit_2_and_write_nothing(
    checkpoint: Path, tmp_path: Path, real_data: Path, monkeypatch, extra, message
) -> None:
    if "--gpus-per-shard" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("ADVLS_DATA", str(real_data))
    out = tmp_path / "out"
    args = ["evaluate", "--checkpoint", str(checkpoint), *QUICK, "--out", str(out), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


# --------------------------------------------------------------------------- sweeps
def test_unsharded_runs_keep_the_keys_they_had_before_shards_existed() -> None:
    from advls.sweep import parse_spec

    spec = {
        "name": "t", "train": {"dataset": "mnist", "model": "mlp", "epochs": 1},
        "grid": {"loss": ["standard"], "alpha": [0.1]},
        "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 10},
    }  # fmt: skip
    (run,) = parse_spec(spec)[1]
    assert run.key == "d10d3a2eb7365c81"  # computed by advls before evaluate.shards existed
    by_size = parse_spec({**spec, "evaluate": {**spec["evaluate"], "shards": {"size": 5}}})
    by_count = parse_spec({**spec, "evaluate": {**spec["evaluate"], "shards": {"count": 2}}})
    keys = {run.key, by_size[1][0].key, by_count[1][0].key}
    assert len(keys) == 3  # the cut fixes the results, so it is part of the run
    assert by_size[1][0].train_key == run.train_key  # one checkpoint serves all three


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ({}, "shards takes size (points per shard) or count, one of them"),
        ({"size": 5, "count": 2}, "shards takes size (points per shard) or count, one of them"),
        ({"count": 11}, "shards.count (11) cannot exceed the evaluated points (n=10)"),
        ({"size": 0}, "greater than or equal to 1"),
        ({"jobs": 2, "size": 5}, "jobs"),
    ],
)
def test_a_bad_shards_section_is_refused_naming_it(shards, message) -> None:
    from advls.sweep import SpecError, parse_spec

    spec = {
        "name": "t", "train": {"dataset": "mnist", "model": "mlp", "epochs": 1},
        "grid": {"loss": ["ce"]},
        "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 10, "shards": shards},
    }  # fmt: skip
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert message in str(raised.value) and "shards" in str(raised.value)


def test_a_sweep_shards_an_audit_as_the_command_does_and_keeps_its_shards(
    mnist, tmp_path: Path, real_data: Path, monkeypatch
) -> None:
    from advls.store import Store

    model, images, labels = mnist
    monkeypatch.setenv("ADVLS_DATA", str(real_data))
    evaluate_spec = {"protocols": ["standard"], "eps": [0.1, 0.3], "n": 120, "seed": 3,
                     "batch_size": 40, "shards": {"size": 50}}  # fmt: skip
    store = run_audit_sweep(model, tmp_path, "sharded-audit", evaluate_spec)
    direct = evaluate_sharded(
        model, images, labels, protocols=["standard"], eps=[0.1, 0.3], batch_size=40,
        shard_size=50, seed=3,
    )  # fmt: skip
    with Store(store) as results:
        (key,) = [run["key"] for run in results.runs()]
        rows = {(r["attack"], r["eps"]): r["value"] for r in results.results([key])
                if r["protocol"] == "standard" and r["metric"] == "robust_accuracy"}  # fmt: skip
    for eps in (0.1, 0.3):
        assert rows[("worst_case", eps)] == direct.worst_case("standard", eps)
    kept = list((tmp_path / "results-artifacts" / "runs" / key / "shards").glob("*/shard-*"))
    assert len(kept) == 3


# --------------------------------------------------------------------------- a killed driver
@pytest.mark.slower
def test_a_driver_killed_mid_evaluation_resumes_only_the_unfinished_shards(
    checkpoint: Path, tmp_path: Path, real_data: Path
) -> None:
    """SIGKILL of ``advls evaluate --out`` while shards run: the rerun reuses every shard
    kept before the kill, attacks only the others, and gives the uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    advls = [str(Path(sys.executable).parent / "advls")]
    env = {**os.environ, "ADVLS_DATA": str(real_data), "OMP_NUM_THREADS": "1"}
    args = ["evaluate", "--checkpoint", str(checkpoint), "--protocol", "strong", "--eps", "0.1",
            "--n", "200", "--shard-size", "20", "--no-progress", "--json"]  # fmt: skip
    out = tmp_path / "killed"
    driver = subprocess.Popen(
        [*advls, *args, "--jobs", "2", "--out", str(out)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    kept = lambda: sorted(out.glob("shards/*/shard-*.safetensors"))  # noqa: E731
    deadline = time.monotonic() + 600
    while len(kept()) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = kept()
    assert 3 <= len(before) < 10, "the driver must die with shards finished and unfinished"
    stamps = {path: path.stat().st_mtime_ns for path in before}
    time.sleep(1.0)  # let orphaned workers (they die with the driver) be gone

    rerun = subprocess.run([*advls, *args, "--out", str(out)], env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    resumed = _json(rerun.stdout)
    assert resumed["sharding"]["reused"] == len(before)
    assert resumed["sharding"]["computed"] == 10 - len(before)
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())
    whole = subprocess.run([*advls, *args], env=env, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr
    uninterrupted = _json(whole.stdout)
    assert resumed["worst_case"] == uninterrupted["worst_case"]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["results"]] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in uninterrupted["results"]
    ]
    assert resumed["checks"] == uninterrupted["checks"]


@pytest.mark.slower
def test_a_real_local_ray_instance_gives_the_results_of_this_process(mnist) -> None:
    """Two Ray tasks at a time (each shard a task declaring one CPU) against one worker in
    this process: every mask and check equal."""
    model, images, labels = mnist
    here = evaluate_sharded(model, images, labels, shard_size=40, **OPTIONS)
    on_ray = evaluate_sharded(
        model, images, labels, shard_size=40, executor="ray", jobs=2, **OPTIONS
    )
    same_outcomes(here, on_ray, exact=False)
    assert here.checks.as_dict() == on_ray.checks.as_dict()
    assert on_ray.sharding["executor"] == "ray" and on_ray.sharding["workers"] == 2
