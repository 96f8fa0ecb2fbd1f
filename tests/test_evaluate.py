"""advls.evaluate: protocols, per-example worst cases, the masking checks on synthetic outcomes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import bim, deepfool, eval_mode, fgsm, pgd
from advls.evaluate import (
    CHECKS,
    PAPER_TABLE_LABELS,
    PROTOCOLS,
    AttackOutcome,
    AttackSpec,
    Evaluation,
    Protocol,
    SanityChecks,
    Thresholds,
    audit_records,
    check_eps_list,
    evaluate,
    format_markdown,
    get_protocol,
    paper_eps_to_pixels,
    training_smoothing,
)
from advls.evaluate.masking import (
    AuditRecord,
    Check,
    NotChecked,
    raise_flags,
    zero_gradient_fraction,
)

N = 100


# --------------------------------------------------------------------------- protocols
def test_named_protocols_hold_the_designed_attacks() -> None:
    paper, standard, strong = (PROTOCOLS[name] for name in ("paper", "standard", "strong"))
    assert [s.attack for s in paper.attacks] == ["fgsm", "bim", "deepfool", "cw_l2"]
    # The authors' FGSM/BIM ascend the model's own loss; BIM takes 100 steps of eps/100.
    assert all(s.model_loss for s in paper.attacks if s.bounded)
    assert dict(paper.attacks[1].params) == {"steps": 100}
    assert not any(s.model_loss for s in (*standard.attacks, *strong.attacks))
    assert {s.attack for s in strong.attacks} >= {"fgsm", "pgd", "apgd", "square", "transfer"}
    assert {dict(s.params)["loss"] for s in strong.attacks if s.attack == "apgd"} == {"ce", "dlr"}
    assert dict(next(s for s in strong.attacks if s.attack == "pgd").params)["restarts"] == 5
    json.dumps([p.describe() for p in PROTOCOLS.values()])  # inspectable as JSON


def test_attack_config_fills_budget_loss_seed_and_surrogate() -> None:
    spec = PROTOCOLS["paper"].attacks[1]
    smoothing = {"method": "adversarial", "alpha": 0.1, "temperature": 1.0}
    assert spec.config(0.2, smoothing=smoothing, seed=3) == {
        "name": "bim", "steps": 100, "eps": 0.2, "loss": "smoothed", "smoothing": smoothing,
    }  # fmt: skip
    assert spec.config(0.2)["loss"] == "ce"  # a CE-trained model's own loss is CE
    strong = {spec.label: spec for spec in PROTOCOLS["strong"].attacks}
    assert strong["pgd-40x5"].config(0.1, seed=7)["seed"] == 7
    twin = nn.Linear(2, 2)
    transfer = strong["transfer"].config(0.1, surrogate=twin, seed=4)
    assert transfer["surrogate"] is twin and "seed" not in transfer
    assert transfer["attack"] == {"name": "pgd", "steps": 40, "loss": "ce", "seed": 4}
    assert "eps" not in PROTOCOLS["paper"].attacks[2].config(None)  # minimal attacks


def test_with_params_derives_a_variant_and_leaves_the_named_one() -> None:
    quick = PROTOCOLS["strong"].with_params(**{"apgd-ce": {"steps": 7}})
    assert dict(quick.attacks[2].params) == {"steps": 7, "loss": "ce"}
    assert dict(PROTOCOLS["strong"].attacks[2].params)["steps"] == 100
    with pytest.raises(ValueError, match="has no attack"):
        PROTOCOLS["strong"].with_params(nope={"steps": 1})
    assert "square" not in [s.label for s in PROTOCOLS["strong"].without("square").attacks]
    with pytest.raises(TypeError):
        PROTOCOLS["strong"].attacks[0].params["loss"] = "dlr"  # type: ignore[index]


def test_protocol_and_spec_validation() -> None:
    assert get_protocol("paper") is PROTOCOLS["paper"]
    with pytest.raises(ValueError, match="protocol must be one of paper, standard, strong"):
        get_protocol("strongest")
    with pytest.raises(ValueError, match="kind must be one of"):
        AttackSpec("x", "fgsm", "gradient")  # type: ignore[arg-type]
    spec = AttackSpec("a", "fgsm", "single-step")
    with pytest.raises(ValueError, match="unique"):
        Protocol("p", "", (spec, spec))


def test_training_smoothing_and_paper_eps() -> None:
    assert training_smoothing({"loss": "ce", "alpha": 0.1, "temperature": 1.0}) is None
    assert training_smoothing({"loss": "adversarial", "alpha": 0.0, "temperature": 1.0}) is None
    assert training_smoothing({"loss": "boltzmann", "alpha": 0.3, "temperature": 0.1}) == {
        "method": "boltzmann", "alpha": 0.3, "temperature": 0.1,
    }  # fmt: skip
    assert paper_eps_to_pixels(0.1, "cifar10") == 0.05
    assert paper_eps_to_pixels(0.1, "mnist") == 0.1


@pytest.mark.parametrize(
    ("eps", "message"),
    [
        ([], "non-empty"),
        ("0.1", "non-empty"),
        ([0.1, -0.2], "every eps must be an L-inf budget in \\(0, 1\\]"),
        ([1.5], "got 1.5"),
        ([0.0], "eps 0 is the clean accuracy"),
        ([math.nan], "got nan"),
        ([True], "got True"),
    ],
)
def test_eps_list_errors(eps: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_eps_list(eps)


def test_eps_list_sorted_unique() -> None:
    assert check_eps_list([0.3, 0.1, 0.3]) == (0.1, 0.3)


# --------------------------------------------------------------------------- small models
class Linear(nn.Module):
    def __init__(self, seed: int = 0, features: int = 16, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1) * 4 - 2)


class Scaled(nn.Module):
    """Logits times a huge factor: the softmax saturates and CE gradients vanish."""

    def __init__(self, model: nn.Module, factor: float = 1e4) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


class Quantised(nn.Module):
    """Inputs rounded to a few levels first: a non-differentiable layer, zero gradients."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


def _data(n: int = 60, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        labels = Linear()(images.float() / 255).argmax(dim=1)
    labels[:5] = (labels[:5] + 1) % 3  # a few clean errors
    return images, labels


MINI = Protocol(
    "mini",
    "fgsm and bim",
    (
        AttackSpec("fgsm", "fgsm", "single-step", {"loss": "ce"}),
        AttackSpec("bim", "bim", "iterative", {"steps": 5, "loss": "ce"}),
    ),
)


def test_worst_case_is_per_example_over_the_suite() -> None:
    model = Linear()
    images, labels = _data()
    result = evaluate(model, images, labels, protocols=[MINI], eps=[0.05, 0.1], checks=False)
    x = images.float() / 255
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == labels
    assert result.clean_accuracy == pytest.approx(float(correct.float().mean()))
    for eps in (0.05, 0.1):
        one = fgsm(model, x, labels, eps=eps).success
        two = bim(model, x, labels, eps=eps, steps=5).success
        expected = correct & ~one & ~two
        assert result.worst_case("mini", eps) == pytest.approx(float(expected.float().mean()))
        worst = result.worst_case("mini", eps)
        each = [result.outcome("mini", label, eps).robust_accuracy for label in ("fgsm", "bim")]
        assert worst <= min(each)
    # Clean errors count as failures of every attack; only correct points were attacked.
    outcome = result.outcome("mini", "bim", 0.1)
    assert bool(outcome.fooled[~correct].all())
    assert torch.equal(outcome.attacked, correct)


def _recorded_progress() -> tuple[list[str], Callable[[str, int], Callable[[int], None]]]:
    """A progress factory that records the label of every attack it is told about."""
    started: list[str] = []

    def progress(label: str, total: int) -> Callable[[int], None]:
        started.append(label)
        return lambda n: None

    return started, progress


def test_same_attack_in_two_protocols_runs_once() -> None:
    started, progress = _recorded_progress()
    images, labels = _data()
    twin = Protocol("twin", "", MINI.attacks)
    result = evaluate(
        Linear(), images, labels, protocols=[MINI, twin], eps=[0.1], checks=False,
        progress=progress,
    )  # fmt: skip
    assert started == ["mini/fgsm eps=0.1", "mini/bim eps=0.1"]
    assert torch.equal(
        result.outcome("twin", "bim", 0.1).fooled, result.outcome("mini", "bim", 0.1).fooled
    )


def test_evaluate_leaves_model_and_inputs_alone() -> None:
    model = Linear()
    model.train()
    images, labels = _data()
    copy = images.clone()
    evaluate(model, images, labels, protocols=[MINI], eps=[0.1], checks=False)
    assert model.training and torch.equal(images, copy)


def test_transfer_is_skipped_without_surrogate_and_class_mismatch_is_refused() -> None:
    images, labels = _data()
    quick = PROTOCOLS["strong"].with_params(
        **{"pgd-40x5": {"steps": 2, "restarts": 1}, "apgd-ce": {"steps": 2},
           "apgd-dlr": {"steps": 2}, "square": {"queries": 3}, "deepfool": {"steps": 2}}
    ).without("transfer")  # fmt: skip
    result = evaluate(Linear(), images, labels, protocols=["paper"], eps=[0.1], checks=False)
    assert result.skipped == []
    strong = evaluate(Linear(), images, labels, protocols=[quick], eps=[0.1], checks=False)
    assert strong.skipped == []
    with pytest.raises(ValueError, match="the surrogate has 4 classes but the evaluated model"):
        evaluate(
            Linear(), images, labels, protocols=[MINI], eps=[0.1],
            surrogate=Linear(classes=4),
        )  # fmt: skip


def test_bad_arguments() -> None:
    images, labels = _data()
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate(Linear(), images, labels, protocols=["nope"])
    with pytest.raises(ValueError, match="at least one protocol"):
        evaluate(Linear(), images, labels, protocols=[])
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(Linear(), images, labels, eps=[])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(Linear(), images, labels, batch_size=0)
    with pytest.raises(ValueError, match="equal length"):
        evaluate(Linear(), images, labels[:3])


def test_json_has_no_nan_and_tables_show_every_attack() -> None:
    images, labels = _data()
    result = evaluate(Linear(), images, labels, protocols=[MINI], eps=[0.05, 0.1], checks=False)
    result.outcomes[0] = AttackOutcome(
        "mini",
        AttackSpec("df", "deepfool", "minimal"),
        None,
        torch.zeros(len(labels), dtype=torch.bool),
        torch.zeros(len(labels)),
        torch.zeros(len(labels), dtype=torch.bool),
        0.0,
        0,
    )  # fmt: skip  (a minimal attack with no success: its median distance is NaN)
    payload = json.loads(result.to_json(extra="x"))
    assert payload["extra"] == "x"
    assert payload["results"][0]["median_l2"] is None
    assert {row["eps"] for row in payload["worst_case"]} == {0.05, 0.1}
    table = format_markdown(result, title="toy")
    assert "| mini | bim |" in table and "**worst case**" in table and "eps 0.05" in table


# --------------------------------------------------------------------------- the checks
def _outcome(protocol: str, label: str, kind: str, eps: float | None, fooled: list[bool]):
    mask = torch.tensor(fooled)
    return AttackOutcome(
        protocol, AttackSpec(label, "fgsm", kind), eps, mask, torch.zeros(len(mask)),
        torch.ones(len(mask), dtype=torch.bool), 0.0, 0,
    )  # fmt: skip


def _evaluation(outcomes: list[AttackOutcome], names=("strong",), eps=(0.1, 0.2), checks=None):
    protocols = tuple(Protocol(name, "", ()) for name in names)
    points = len(outcomes[0].fooled) if outcomes else N
    evaluation = Evaluation(
        points, 10, torch.ones(points, dtype=torch.bool), eps, (1.0,), protocols, outcomes
    )
    evaluation.checks = checks
    return evaluation


def _fooled(count: int) -> list[bool]:
    return [True] * count + [False] * (N - count)


def _flag(evaluation: Evaluation, name: str):
    return CHECKS[name](evaluation, Thresholds())


def test_single_step_stronger() -> None:
    weak_fgsm = [
        _outcome("strong", "fgsm", "single-step", 0.1, _fooled(40)),
        _outcome("strong", "pgd", "iterative", 0.1, _fooled(60)),
    ]
    assert not _flag(_evaluation(weak_fgsm, eps=(0.1,)), "single_step_stronger").raised
    strong_fgsm = [
        _outcome("strong", "fgsm", "single-step", 0.1, _fooled(60)),
        _outcome("strong", "pgd", "iterative", 0.1, _fooled(40)),
    ]
    flag = _flag(_evaluation(strong_fgsm, eps=(0.1,)), "single_step_stronger")
    assert flag.raised and flag.evidence[0]["single_step_accuracy"] == pytest.approx(0.4)
    assert not _flag(_evaluation(strong_fgsm[1:], eps=(0.1,)), "single_step_stronger").checked


def test_not_monotone_ignores_noise_and_catches_a_rise() -> None:
    rising = [
        _outcome("strong", "pgd", "iterative", 0.1, _fooled(50)),
        _outcome("strong", "pgd", "iterative", 0.2, _fooled(30)),  # accuracy 0.5 -> 0.7
    ]
    flag = _flag(_evaluation(rising), "not_monotone")
    assert flag.raised and flag.evidence[0]["accuracy"] == [pytest.approx(0.5), pytest.approx(0.7)]
    noisy = [
        _outcome("strong", "pgd", "iterative", 0.1, _fooled(50)),
        _outcome("strong", "pgd", "iterative", 0.2, _fooled(49)),  # one point: noise
    ]
    assert not _flag(_evaluation(noisy), "not_monotone").raised


def test_black_box_stronger_is_per_example() -> None:
    white = _fooled(50)
    # Square fools fewer points in total but 10 that no white-box attack fooled.
    black = [False] * 30 + [True] * 20 + [True] * 10 + [False] * 40
    outcomes = [
        _outcome("strong", "pgd", "iterative", 0.1, white),
        _outcome("strong", "square", "black-box", 0.1, black),
    ]
    flag = _flag(_evaluation(outcomes, eps=(0.1,)), "black_box_stronger")
    assert flag.raised and flag.evidence[0]["points_only_it_broke"] == 10
    covered = [_outcome("strong", "square", "black-box", 0.1, _fooled(45)), outcomes[0]]
    assert not _flag(_evaluation(covered, eps=(0.1,)), "black_box_stronger").raised


def test_protocol_gap_needs_strong_and_another_protocol() -> None:
    outcomes = [
        _outcome("paper", "bim", "iterative", 0.1, _fooled(20)),
        _outcome("strong", "apgd", "iterative", 0.1, _fooled(60)),
    ]
    flag = _flag(_evaluation(outcomes, names=("paper", "strong"), eps=(0.1,)), "protocol_gap")
    assert flag.raised and flag.evidence == [
        {"protocol": "paper", "eps": 0.1, "accuracy": 0.8, "strong_accuracy": pytest.approx(0.4)}
    ]
    close = [outcomes[1], _outcome("paper", "bim", "iterative", 0.1, _fooled(55))]
    assert not _flag(
        _evaluation(close, names=("paper", "strong"), eps=(0.1,)), "protocol_gap"
    ).raised
    alone = _flag(_evaluation(outcomes[1:], eps=(0.1,)), "protocol_gap")
    assert not alone.checked and not alone.raised


@pytest.mark.parametrize(
    ("field", "value", "name", "raised"),
    [
        ("zero_gradient_fraction", 0.5, "zero_gradients", True),
        ("zero_gradient_fraction", 0.0, "zero_gradients", False),
        ("large_eps_accuracy", 0.4, "large_eps_above_chance", True),
        ("large_eps_accuracy", 0.0, "large_eps_above_chance", False),
        ("unbounded_success_rate", 0.6, "unbounded_incomplete", True),
        ("unbounded_success_rate", 1.0, "unbounded_incomplete", False),
    ],
)
def test_sanity_check_flags(field: str, value: float, name: str, raised: bool) -> None:
    values = {
        "zero_gradient_fraction": 0.0, "large_eps": 0.5, "large_eps_accuracy": 0.0,
        "large_eps_attack": {}, "unbounded_success_rate": 1.0, "unbounded_attack": {},
    }  # fmt: skip
    checks = SanityChecks(**{**values, field: value})
    flag = _flag(_evaluation([], checks=checks), name)
    assert flag.checked and flag.raised is raised and flag.evidence
    assert not _flag(_evaluation([]), name).checked


def test_every_check_runs_on_an_empty_evaluation() -> None:
    flags = raise_flags(_evaluation([]), Thresholds())
    assert [f.name for f in flags] == list(CHECKS)[:-1]  # certified_broken: only with certify
    assert not any(f.raised for f in flags)


@settings(max_examples=20, deadline=None)
@given(fooled=st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=1, max_size=4))
def test_worst_case_never_exceeds_any_attack(fooled: list[list[bool]]) -> None:
    outcomes = [
        _outcome("strong", f"a{i}", "iterative", 0.1, mask) for i, mask in enumerate(fooled)
    ]
    evaluation = _evaluation(outcomes, eps=(0.1,))
    expected = 1.0 - float(torch.tensor(fooled).any(dim=0).float().mean())
    assert evaluation.worst_case("strong", 0.1) == pytest.approx(expected)
    assert all(evaluation.worst_case("strong", 0.1) <= o.robust_accuracy for o in outcomes)


# --------------------------------------------------------------------------- gradients
def test_zero_gradient_fraction_sees_saturation_and_quantisation() -> None:
    images, labels = _data()
    with torch.no_grad():
        labels = Linear()(images.float() / 255).argmax(dim=1)
    options = {"batch_size": 32, "device": torch.device("cpu")}
    assert zero_gradient_fraction(Linear(), images, labels, **options) == 0.0
    assert zero_gradient_fraction(Scaled(Linear()), images, labels, **options) > 0.9
    assert zero_gradient_fraction(Quantised(Linear()), images, labels, **options) == 1.0


def test_eval_mode_restores_mixed_submodule_modes() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model.train()
    model[1].eval()  # a frozen batch norm inside a training model
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training and model[2].training


def test_tables_show_the_evidence_of_raised_flags() -> None:
    outcomes = [
        _outcome("paper", "bim", "iterative", 0.1, _fooled(20)),
        _outcome("strong", "apgd", "iterative", 0.1, _fooled(60)),
    ]
    evaluation = _evaluation(outcomes, names=("paper", "strong"), eps=(0.1,))
    evaluation.flags = raise_flags(evaluation, Thresholds())
    table = format_markdown(evaluation)
    row = next(line for line in table.splitlines() if line.startswith("| protocol_gap"))
    assert "**RAISED**" in row and "accuracy 0.8, strong_accuracy 0.4" in row
    quiet = next(line for line in table.splitlines() if line.startswith("| zero_gradients"))
    assert "not checked" in quiet


# --------------------------------------------------------------------------- measurements
def test_checks_measure_gradients_then_bounded_then_minimal_attacks() -> None:
    started, progress = _recorded_progress()
    model = Linear()
    images, labels = _data()
    result = evaluate(model, images, labels, protocols=[MINI], eps=[0.1], seed=5, progress=progress)
    assert started[-2:] == ["check: pgd eps=0.5", "check: unbounded deepfool"]
    assert list(result.checks.as_dict()) == [
        # the preflight checks: a few forward passes on the model as handed over
        "probability_rows", "output_min", "output_row_sum_error", "randomized_points",
        "randomized_passes", "randomized_max_difference", "randomized_changed_predictions",
        "randomized_correct", "train_mode_model", "train_mode_modules", "train_mode_names",
        "active_after_eval",
        "zero_gradient_fraction", "zero_gradient_count", "large_eps", "large_eps_accuracy",
        "large_eps_attack", "unbounded_success_rate", "unbounded_attack",
    ]  # fmt: skip
    large = {"name": "pgd", "steps": 40, "loss": "ce", "eps": 0.5, "seed": 5}
    assert result.checks.large_eps_attack == large and result.checks["large_eps"] == 0.5
    x = images.float() / 255
    correct = result.correct
    fooled = ~correct
    params = {key: value for key, value in large.items() if key != "name"}
    fooled[correct] = pgd(model, x[correct], labels[correct], **params).success
    assert result.checks.large_eps_accuracy == pytest.approx(1 - float(fooled.float().mean()))
    unbounded = deepfool(model, x[correct], labels[correct], norm="l2", steps=100).success
    assert result.checks.unbounded_success_rate == pytest.approx(float(unbounded.float().mean()))
    assert result.checks.zero_gradient_fraction == 0.0
    payload = json.loads(result.to_json())
    assert payload["checks"] == {**result.checks.as_dict(), "large_eps_attack": large}
    # certified_broken applies only to a certified evaluation
    assert [flag["name"] for flag in payload["flags"]] == list(CHECKS)[:-1]


def test_a_check_attack_a_protocol_already_ran_runs_once() -> None:
    started, progress = _recorded_progress()
    images, labels = _data()
    standard = PROTOCOLS["standard"].without("cw-l2")
    evaluate(Linear(), images, labels, protocols=[standard], eps=[0.5], progress=progress)
    # PGD-40 at eps 0.5 with seed 0 and DeepFool-100 are the protocol's own attacks.
    assert not any(label.startswith("check:") for label in started)
    assert "standard/pgd-40 eps=0.5" in started and "standard/deepfool" in started


def test_audit_records_are_the_measurements_as_store_rows() -> None:
    from advls.store import Result
    from advls.sweep.job import evaluation_results

    images, labels = _data()
    result = evaluate(Linear(), images, labels, protocols=[MINI], eps=[0.1])
    checks = result.checks
    preflight = [(r.attack, r.metric) for r in audit_records(checks)][:6]
    assert preflight == [
        ("probability_outputs", "min"), ("probability_outputs", "row_sum_error"),
        ("randomized", "max_difference"), ("randomized", "changed_predictions"),
        ("train_mode", "modules_in_train_mode"), ("train_mode", "active_after_eval"),
    ]  # fmt: skip
    assert audit_records(checks)[6:] == [
        ("zero_gradients", None, "fraction", checks.zero_gradient_fraction),
        ("zero_gradients", None, "count", float(checks.zero_gradient_count)),
        ("pgd_large_eps", 0.5, "robust_accuracy", checks.large_eps_accuracy),
        ("deepfool_unbounded", None, "success_rate", checks.unbounded_success_rate),
    ]
    rows = evaluation_results(result)
    audit = [row for row in rows if row.protocol == "audit" and row.metric != "raised"]
    assert audit == [Result("audit", *record) for record in audit_records(checks)]
    flags = [row.attack for row in rows if row.metric == "raised"]
    assert flags == [f"flag:{flag.name}" for flag in result.flags if flag.checked]
    unmeasured = evaluate(Linear(), images, labels, protocols=[MINI], eps=[0.1], checks=False)
    assert not any(row.protocol == "audit" for row in evaluation_results(unmeasured))


def test_sanity_checks_read_as_mapping_and_attributes() -> None:
    checks = SanityChecks(zero_gradient_fraction=0.25, large_eps_attack={"name": "pgd"})
    assert checks.zero_gradient_fraction == checks["zero_gradient_fraction"] == 0.25
    assert dict(checks) == checks.as_dict() and len(checks) == 2
    checks.as_dict()["large_eps_attack"]["name"] = "changed"  # a copy
    assert checks.large_eps_attack == {"name": "pgd"}
    with pytest.raises(AttributeError, match="nothing measured as 'unbounded_success_rate'"):
        _ = checks.unbounded_success_rate
    assert "zero_gradient_fraction=0.25" in repr(checks)


class _AlwaysCounts(Check):
    """A check written as the recipe says: it measures the attacked points and judges them."""

    name = "counted"
    measures = "gradients"

    def measure(self, runner, *, seed):
        return {"attacked_points": len(runner.index)}

    def records(self, measured):
        return [AuditRecord("counted", None, "points", float(measured.attacked_points))]

    def judge(self, evaluation, thresholds):
        points = evaluation.checks.get("attacked_points") if evaluation.checks else None
        if points is None:
            raise NotChecked("nothing counted")
        return self.flag(points < evaluation.points, f"{points} attacked", [{"points": points}])


def test_a_new_check_is_one_class_and_one_registry_entry(monkeypatch) -> None:
    monkeypatch.setitem(CHECKS, _AlwaysCounts.name, _AlwaysCounts())
    images, labels = _data()
    result = evaluate(Linear(), images, labels, protocols=[MINI], eps=[0.1])
    attacked = int(result.correct.sum())
    assert result.checks["attacked_points"] == attacked
    flag = next(f for f in result.flags if f.name == "counted")
    assert flag.raised and flag.checked and flag.message == f"{attacked} attacked"
    records = audit_records(result.checks)
    assert [record.attack for record in records] == [
        *("probability_outputs", "probability_outputs", "randomized", "randomized"),
        *("train_mode", "train_mode"),
        *("zero_gradients", "zero_gradients", "counted", "pgd_large_eps", "deepfool_unbounded"),
    ]  # fmt: skip  (by stage, then in the registry's order)
    assert records[8] == ("counted", None, "points", float(attacked))
    assert not _flag(_evaluation([]), "counted").checked


def test_paper_table_labels_are_the_paper_protocols_and_the_reports() -> None:
    from advls.report.cells import PAPER_ATTACKS

    assert dict(PAPER_TABLE_LABELS) == {
        "FGSM": "fgsm", "BIM": "bim-100", "DeepFool": "deepfool", "CW": "cw-l2",
    }  # fmt: skip
    assert list(PAPER_TABLE_LABELS.values()) == [s.label for s in PROTOCOLS["paper"].attacks]
    assert PAPER_ATTACKS is PAPER_TABLE_LABELS
