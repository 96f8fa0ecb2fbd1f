"""Experiment specs: validation names file, field and allowed values; expansion and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from advls.sweep import SpecError, check_data_available, load_spec, parse_spec
from advls.sweep.spec import canonical_train
from advls.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def spec(**changes):
    base = {
        "name": "t",
        "train": {"dataset": "mnist", "model": "mlp", "epochs": 1},
        "grid": {"loss": ["standard", "adversarial"], "alpha": [0.1, 0.5]},
        "evaluate": {"protocols": ["paper"], "eps": [0.1], "n": 10},
    }
    base.update(changes)
    return base


def write(tmp_path: Path, payload) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_grid_is_the_product_of_its_axes_in_order():
    _, runs = parse_spec(spec())
    assert [(r.train.loss, r.train.alpha) for r in runs] == [
        ("standard", 0.1),
        ("standard", 0.5),
        ("adversarial", 0.1),
        ("adversarial", 0.5),
    ]
    assert len({r.key for r in runs}) == 4


def test_a_list_of_grids_is_joined_and_runs_that_cannot_differ_are_one():
    # ce ignores alpha and any method at alpha 0 is ce: five declarations, two runs.
    grids = [
        {"loss": ["ce"], "alpha": [0.1, 0.5]},
        {"loss": ["standard", "boltzmann"], "alpha": [0.0]},
    ]
    _, runs = parse_spec(spec(grid=[*grids, {"loss": ["standard"], "alpha": [0.3]}]))
    assert [(r.train.loss, r.train.alpha) for r in runs] == [("ce", 0.0), ("standard", 0.3)]


def test_key_includes_defaults_and_every_field():
    _, (a,) = parse_spec(spec(grid={"loss": ["standard"], "alpha": [0.1]}))
    # Spelling out a default gives the same run ...
    explicit = spec(grid={"loss": ["standard"], "alpha": [0.1]})
    explicit["train"] = {**explicit["train"], "lr": TrainConfig().lr, "seed": 0}
    _, (b,) = parse_spec(explicit)
    assert a.key == b.key and a.train_key == b.train_key
    # ... changing any training or evaluation field gives another.
    for train_change in ({"epochs": 2}, {"lr": 0.01}, {"seed": 1}, {"batch_size": 64}):
        changed = spec(grid={"loss": ["standard"], "alpha": [0.1]})
        changed["train"] = {**changed["train"], **train_change}
        assert parse_spec(changed)[1][0].key != a.key, train_change
    other_eval = spec(grid={"loss": ["standard"], "alpha": [0.1]})
    other_eval["evaluate"] = {**other_eval["evaluate"], "eps": [0.2]}
    (c,) = parse_spec(other_eval)[1]
    assert c.key != a.key
    assert c.train_key == a.train_key  # one checkpoint serves both evaluations


def test_resolved_config_rebuilds_the_run():
    _, runs = parse_spec(spec())
    resolved = runs[0].resolved()
    assert TrainConfig.model_validate(resolved["train"]) == runs[0].train
    assert resolved["evaluate"]["eps"] == [0.1]
    assert resolved["evaluate"]["protocols"][0]["name"] == "paper"
    assert {a["label"] for a in resolved["evaluate"]["protocols"][0]["resolved"]["attacks"]} == {
        "fgsm",
        "bim-100",
        "deepfool",
        "cw-l2",
    }


def test_default_eps_follow_the_dataset():
    payload = spec()
    del payload["evaluate"]["eps"]
    assert parse_spec(payload)[1][0].eps == (0.1, 0.2, 0.3)
    payload["train"] = {**payload["train"], "dataset": "cifar10", "model": "lenet"}
    assert parse_spec(payload)[1][0].eps == pytest.approx((2 / 255, 4 / 255, 8 / 255))


@settings(max_examples=25, deadline=None)
@given(
    alphas=st.lists(st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.9]), min_size=1, max_size=4),
    seeds=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    flip=st.booleans(),
)
def test_keys_do_not_depend_on_declaration_order(alphas, seeds, flip):
    grid = {"loss": ["adversarial"], "alpha": alphas, "seed": seeds}
    ordered = dict(reversed(list(grid.items()))) if flip else grid
    keys_a = {r.key for r in parse_spec(spec(grid=grid))[1]}
    keys_b = {r.key for r in parse_spec(spec(grid=ordered))[1]}
    assert keys_a == keys_b
    assert len(keys_a) == len(set(alphas)) * len(set(seeds))


def test_canonical_form_is_idempotent_and_valid():
    for loss in ("ce", "standard", "boltzmann"):
        for defence in ("none", "fgsm-at", "pgd-at"):
            config = TrainConfig(loss=loss, defence=defence, alpha=0.2).model_dump()
            once = canonical_train(config)
            assert canonical_train(once) == once
            TrainConfig.model_validate(once)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"grid": {"alph": [0.1]}}, ["spec.yaml: grid: unknown key 'alph'", "allowed:", "alpha"]),
        ({"train": {"dataset": "mnist", "lr": "fast"}}, ["spec.yaml: train", "lr", "fast"]),
        (
            {"grid": {"alpha": [0.1, 1.5]}},
            ["spec.yaml: grid.alpha", "less than or equal to 1", "1.5"],
        ),
        (
            {"grid": {"loss": ["boltzmann"], "temperature": [0]}},
            ["grid.temperature", "greater than 0"],
        ),
        ({"grid": {"loss": ["fancy"]}}, ["grid.loss", "ce, standard, adversarial"]),
        ({"grid": {"model": ["vgg"]}}, ["grid.model", "linear, mlp"]),
        ({"evaluate": {"eps": [0.1, 2.0]}}, ["spec.yaml: evaluate.eps", "(0, 1]"]),
        ({"evaluate": {"protocols": ["fast"]}}, ["evaluate.protocols", "paper, standard, strong"]),
        (
            {"evaluate": {"protocols": [{"name": "paper", "params": {"bim": {"steps": 2}}}]}},
            ["evaluate.protocols", "bim-100"],
        ),
        (
            {"evaluate": {"n": 0}},
            ["evaluate.n: n, the number of points, must be an integer >= 1, got 0"],
        ),
        ({"evaluations": {}}, ["spec.yaml: evaluations", "Extra inputs are not permitted"]),
        ({"grid": {"optimizer": ["lbfgs"]}}, ["grid.optimizer", "'sgd' or 'adam'"]),
    ],
)
def test_invalid_specs_name_file_field_and_allowed_values(tmp_path, change, expected):
    path = write(tmp_path, spec(**change))
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_unreadable_specs(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(SpecError, match="a spec is a mapping"):
        load_spec(scalar)


def test_user_dataset_needs_explicit_eps(tmp_path, toy_npz):
    payload = spec(train={"dataset": str(toy_npz), "model": "linear"})
    del payload["evaluate"]["eps"]
    with pytest.raises(SpecError, match=r"evaluate\.eps: give the budgets explicitly"):
        parse_spec(payload)


def test_missing_dataset_fails_naming_the_file_and_where_it_looked(tmp_path):
    _, runs = parse_spec(spec(train={"dataset": "svhn", "model": "lenet"}))
    with pytest.raises(SpecError) as raised:
        check_data_available(runs, tmp_path)
    message = str(raised.value)
    assert "svhn" in message and "train_32x32.mat" in message and str(tmp_path) in message


def test_missing_npz_and_too_many_points(tmp_path, toy_npz):
    _, runs = parse_spec(spec(train={"dataset": str(tmp_path / "gone.npz"), "model": "linear"}))
    with pytest.raises(SpecError, match=r"gone\.npz"):
        check_data_available(runs)
    payload = spec(train={"dataset": str(toy_npz), "model": "linear"})
    payload["evaluate"]["n"] = 10_000
    _, runs = parse_spec(payload)
    with pytest.raises(SpecError, match=r"evaluate\.n is 10000 but .* has 256 test images"):
        check_data_available(runs)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    sweep, runs = load_spec(path)
    assert sweep.name == path.stem
    assert runs and len({r.key for r in runs}) == len(runs)


def test_every_run_of_a_grid_shares_one_twin():
    """The transfer twin is the plain run of the next seed, whatever the run's defence."""
    from advls.sweep.job import twin_config

    _, runs = parse_spec(
        {
            "name": "twins",
            "train": {"dataset": "mnist", "model": "mlp", "defence_eps": 0.03},
            "grid": [
                {"loss": ["ce"], "defence": ["none", "fgsm-at"]},
                {"loss": ["adversarial", "boltzmann"], "alpha": [0.1], "temperature": [2.0]},
            ],
        }
    )
    twins = {twin_config(run.train).model_dump_json() for run in runs}
    assert len(runs) == 4 and len(twins) == 1
    twin = twin_config(runs[0].train)
    assert (twin.loss, twin.defence, twin.seed) == ("ce", "none", 1)
