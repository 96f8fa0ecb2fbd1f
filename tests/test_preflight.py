"""The preflight masking checks: probability outputs, randomized models, train mode and
dropout left active, and the count beside the zero-gradient share."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.evaluate import CHECKS, PROTOCOLS, Thresholds, audit_records, evaluate
from advls.evaluate.masking import AuditRecord, Randomized, zero_gradient_count
from advls.evaluate.protocols import AttackSpec, Protocol
from advls.evaluate.results import Evaluation, SanityChecks
from advls.evaluate.runner import AttackRunner

PREFLIGHT = ("probability_outputs", "randomized", "train_mode")
CPU = torch.device("cpu")
#: One single-step and one 2-step attack: the checks, not the protocol, are under test.
QUICK = Protocol(
    "quick",
    "fgsm and a short pgd",
    (
        AttackSpec("fgsm", "fgsm", "single-step", {"loss": "ce"}),
        AttackSpec("pgd", "pgd", "iterative", {"steps": 2, "loss": "ce"}),
    ),
)


# --------------------------------------------------------------------------- small models
class Linear(nn.Module):
    """A deterministic affine classifier on 16 pixels with ``classes`` outputs."""

    def __init__(self, classes: int = 3, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1) * 4 - 2)


class Softmaxed(nn.Module):
    """The classifier with ``nn.Softmax`` on top: probabilities, not logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.softmax = model, nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.softmax(self.model(x))


class Perturbed(nn.Module):
    """A randomized model: each forward perturbs its input afresh, with dropout forced on
    whatever the mode (``F.dropout(training=True)``) and/or Gaussian noise of std ``sigma``."""

    def __init__(self, model: nn.Module, *, dropout: float = 0.0, sigma: float = 0.0) -> None:
        super().__init__()
        self.model, self.dropout, self.sigma = model, dropout, sigma

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=True) if self.dropout else x
        return self.model(x + self.sigma * torch.randn_like(x) if self.sigma else x)


class MCDropout(nn.Module):
    """An MC-dropout model: its ``train()`` keeps the dropout in training, even for eval()."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.drop, self.model = nn.Dropout(0.2), model

    def train(self, mode: bool = True) -> MCDropout:
        super().train(mode)
        self.drop.train(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.drop(x))


class NaNRows(nn.Module):
    """Logits, except NaN rows for the brighter half of the inputs: an odd model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        bright = x.flatten(1).mean(dim=1, keepdim=True) > 0.5
        return torch.where(bright, torch.full_like(logits, math.nan), logits)


def _data(model: nn.Module, n: int = 48, seed: int = 1) -> tuple[Tensor, Tensor]:
    """uint8 4x4 images and the labels ``model`` gives them (all correctly classified)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(dim=1)
    return images, labels


def _runner(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 20):
    correct = torch.ones(len(labels), dtype=torch.bool)
    return AttackRunner(
        model, images, labels, correct, batch_size=batch_size, device=CPU, progress=None
    )


def _judged(
    measured: dict,
    name: str,
    protocols: tuple[str, ...] = ("quick",),
    points: int = 48,
    thresholds: Thresholds | None = None,
):
    """Check ``name`` judging an evaluation whose only content is ``measured``."""
    evaluation = Evaluation(
        points, 3, torch.ones(points, dtype=torch.bool), (0.1,), (1.0,),
        tuple(Protocol(p, "", ()) for p in protocols), checks=SanityChecks(**measured),
    )  # fmt: skip
    return CHECKS[name](evaluation, thresholds or Thresholds())


def _evaluate(model: nn.Module, images: Tensor, labels: Tensor, **options) -> Evaluation:
    options.setdefault("protocols", [QUICK])
    return evaluate(model, images, labels, eps=[0.1], **options)


def _flags(evaluation: Evaluation) -> dict:
    return {flag.name: flag for flag in evaluation.flags}


def _raised(evaluation: Evaluation) -> set[str]:
    return {flag.name for flag in evaluation.raised}


# --------------------------------------------------------------------------- the registry
def test_preflight_checks_come_first_and_measure_first() -> None:
    assert list(CHECKS)[:3] == list(PREFLIGHT)
    assert all(CHECKS[name].measures == "preflight" for name in PREFLIGHT)
    model = Linear().eval()
    images, labels = _data(model)
    result = _evaluate(model, images, labels)
    keys = list(result.checks)
    assert keys.index("active_after_eval") < keys.index("zero_gradient_fraction")
    # certified_broken applies only to a certified evaluation
    assert [flag.name for flag in result.flags] == list(CHECKS)[:-1]
    records = [record.attack for record in audit_records(result.checks)]
    assert records[:6] == ["probability_outputs"] * 2 + ["randomized"] * 2 + ["train_mode"] * 2


# --------------------------------------------------------------------------- probability outputs
def test_probability_outputs_measures_the_clean_outputs() -> None:
    model = Softmaxed(Linear())
    images, labels = _data(model)
    measured = CHECKS["probability_outputs"].measure(_runner(model, images, labels), seed=0)
    with torch.no_grad():
        probabilities = model(images.float() / 255).double()
    assert measured["probability_rows"] == len(images)
    assert measured["output_min"] == float(probabilities.min()) >= 0
    error = float((probabilities.sum(dim=1) - 1).abs().max())
    assert measured["output_row_sum_error"] == pytest.approx(error, abs=1e-12)
    flag = _judged(measured, "probability_outputs")
    assert flag.raised and flag.checked and "return logits" in flag.message
    assert flag.evidence == [
        {"rows": 48, "min": measured["output_min"], "max_row_sum_error": error}
    ]


@pytest.mark.parametrize(
    ("low", "error", "raised"),
    [(0.0, 0.0, True), (-5e-6, 5e-6, True), (-2e-5, 0.0, False), (0.0, 2e-5, False),
     (-3.2, 4.1, False), (math.nan, 0.0, False), (None, None, False)],
)  # fmt: skip
def test_probability_outputs_tolerance(low, error, raised) -> None:
    measured = {"probability_rows": 10, "output_min": low, "output_row_sum_error": error}
    flag = _judged(measured, "probability_outputs")
    assert flag.checked and flag.raised is raised


@settings(max_examples=25, deadline=None)
@given(
    classes=st.integers(2, 12),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 2**16),
)
def test_softmax_is_always_caught_and_log_softmax_never(classes, scale, seed) -> None:
    base = Linear(classes, seed=seed, scale=scale)
    images, labels = _data(base, n=20, seed=seed)
    softmax = CHECKS["probability_outputs"].measure(
        _runner(Softmaxed(base), images, labels), seed=0
    )
    assert _judged(softmax, "probability_outputs").raised

    class LogSoftmax(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.log_softmax(base(x), dim=1)

    logs = CHECKS["probability_outputs"].measure(_runner(LogSoftmax(), images, labels), seed=0)
    assert not _judged(logs, "probability_outputs").raised


# --------------------------------------------------------------------------- randomized
def test_randomized_evidence_is_what_the_passes_give() -> None:
    model = Perturbed(Linear(2, scale=0.3), sigma=0.3)
    images, labels = _data(Linear(2, scale=0.3))
    runner = _runner(model, images, labels)
    torch.manual_seed(7)
    measured = CHECKS["randomized"].measure(runner, seed=0)
    # The same passes by hand, from the same random state and in the same batches.
    torch.manual_seed(7)
    with torch.no_grad():
        x = images.float() / 255
        passes = torch.stack(
            [torch.cat([model(x[i : i + 20]) for i in range(0, 48, 20)]) for _ in range(5)]
        ).double()
    unit = passes / (passes.norm(dim=2, keepdim=True) + 1e-10)
    largest = max(float((unit[a] - unit[b]).norm(dim=1).max()) for a in range(5) for b in range(a))
    predictions = passes.argmax(dim=2)
    changed = int((predictions != predictions[0]).any(dim=0).sum())
    assert measured["randomized_max_difference"] == pytest.approx(largest, rel=1e-9)
    assert measured["randomized_changed_predictions"] == changed > 0
    assert measured["randomized_correct"] == (predictions == labels).sum(dim=1).tolist()
    assert measured["randomized_points"] == 48 and measured["randomized_passes"] == 5
    flag = _judged(measured, "randomized")
    assert flag.raised and "autoattack-rand" in flag.message
    assert "as this evaluation did" not in flag.message
    assert flag.evidence[0]["changed_predictions"] == changed
    assert flag.evidence[0]["max_difference"] == measured["randomized_max_difference"]


def test_randomized_uses_at_most_250_points_and_a_deterministic_model_moves_not_at_all() -> None:
    model = Linear()
    images, labels = _data(model, n=300)
    measured = CHECKS["randomized"].measure(_runner(model, images, labels, batch_size=64), seed=0)
    assert measured["randomized_points"] == Randomized.points == 250
    assert measured["randomized_max_difference"] == 0.0
    assert measured["randomized_changed_predictions"] == 0
    assert measured["randomized_correct"] == [250] * 5
    flag = _judged(measured, "randomized")
    assert flag.checked and not flag.raised


@pytest.mark.parametrize(
    ("difference", "changed", "raised"),
    [(0.0, 0, False), (5e-5, 0, False), (2e-4, 0, True), (0.0, 1, True)],
)
def test_randomized_threshold_and_the_rand_protocol_message(difference, changed, raised) -> None:
    measured = {
        "randomized_points": 48, "randomized_passes": 5, "randomized_max_difference": difference,
        "randomized_changed_predictions": changed, "randomized_correct": [48] * 5,
    }  # fmt: skip
    assert _judged(measured, "randomized").raised is raised
    ran = _judged(measured, "randomized", protocols=("quick", "autoattack-rand"))
    assert ran.raised is raised  # a fact about the model, whatever protocol ran
    assert ("as this evaluation did" in ran.message) is raised


# --------------------------------------------------------------------------- train mode
def test_train_mode_reads_the_handed_over_modes_and_leaves_them() -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.1), nn.Linear(8, 3)
    )
    images, labels = _data(model.eval())
    model.train()
    model[2].eval()  # a frozen batch norm inside a model handed over in train mode
    measured = CHECKS["train_mode"].measure(_runner(model, images, labels), seed=0)
    assert model.training and not model[2].training and model[3].training
    # Only modules whose output depends on the mode count: the dropout, not the linears.
    assert measured == {
        "train_mode_model": True, "train_mode_modules": 1,
        "train_mode_names": ["3"], "active_after_eval": [],
    }  # fmt: skip
    flag = _judged(measured, "train_mode")
    assert flag.raised and "handed over in train mode" in flag.message
    assert flag.evidence == [
        {"found": "handed over in train mode", "model": True, "modules": 1, "names": ["3"]}
    ]


def test_train_mode_sees_dropout_that_eval_leaves_on() -> None:
    model = MCDropout(Linear())
    images, labels = _data(Linear())
    model.eval()
    assert model.drop.training  # what the override does
    measured = CHECKS["train_mode"].measure(_runner(model, images, labels), seed=0)
    assert measured["train_mode_modules"] == 0  # eval() was called: nothing it switches off
    assert measured["active_after_eval"] == [{"module": "drop", "type": "Dropout"}]
    flag = _judged(measured, "train_mode")
    assert flag.raised and "stay in training after model.eval()" in flag.message
    assert {"found": "training after eval()", "module": "drop", "type": "Dropout"} in flag.evidence


def test_train_mode_is_clear_for_a_model_in_eval_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    images, labels = _data(model)
    measured = CHECKS["train_mode"].measure(_runner(model, images, labels), seed=0)
    assert measured["train_mode_modules"] == 0 and measured["active_after_eval"] == []
    flag = _judged(measured, "train_mode")
    assert flag.checked and not flag.raised and flag.evidence == []


# --------------------------------------------------------------------------- zero gradients
def test_zero_gradients_counts_beside_the_share() -> None:
    class Saturated(nn.Module):
        """Logits times 1e4 on half the points: their softmax saturates, CE's gradient is 0."""

        def forward(self, x: Tensor) -> Tensor:
            logits = Linear()(x)
            first = torch.arange(len(x)) % 2 == 0
            return torch.where(first[:, None], logits * 1e4, logits)

    model = Saturated()
    images, labels = _data(Linear())
    x = (images.float() / 255).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)
    expected = int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    assert 0 < expected <= 24
    count = zero_gradient_count(model, images, labels, batch_size=48, device=CPU)
    assert count == expected
    measured = CHECKS["zero_gradients"].measure(_runner(model, images, labels, 48), seed=0)
    assert measured == {"zero_gradient_fraction": expected / 48, "zero_gradient_count": expected}
    flag = _judged(measured, "zero_gradients")
    assert flag.raised and flag.message.startswith(f"{expected} correctly classified point(s)")
    assert flag.evidence[0]["zero_gradient_count"] == expected
    assert CHECKS["zero_gradients"].records(SanityChecks(**measured)) == [
        AuditRecord("zero_gradients", None, "fraction", expected / 48),
        AuditRecord("zero_gradients", None, "count", float(expected)),
    ]
    # One point is enough (AutoAttack's rule), unless the thresholds ask for more.
    one = {"zero_gradient_fraction": 1 / 48, "zero_gradient_count": 1}
    assert _judged(one, "zero_gradients").raised
    assert not _judged(one, "zero_gradients", thresholds=Thresholds(zero_gradient_points=2)).raised
    none = _judged({"zero_gradient_fraction": 0.0, "zero_gradient_count": 0}, "zero_gradients")
    assert none.checked and not none.raised and none.evidence[0]["zero_gradient_count"] == 0


def test_an_old_evaluation_without_the_new_keys_still_judges() -> None:
    old = {
        "zero_gradient_fraction": 0.25, "large_eps": 0.5, "large_eps_accuracy": 0.0,
        "large_eps_attack": {}, "unbounded_success_rate": 1.0, "unbounded_attack": {},
    }  # fmt: skip
    flag = _judged(old, "zero_gradients", points=48)
    assert flag.raised and flag.evidence[0]["zero_gradient_count"] == 12  # 0.25 of 48 attacked
    for name in PREFLIGHT:
        unchecked = _judged(old, name)
        assert not unchecked.checked and not unchecked.raised
    assert [record.attack for record in audit_records(SanityChecks(**old))] == [
        "zero_gradients", "pgd_large_eps", "deepfool_unbounded",
    ]  # fmt: skip


# --------------------------------------------------------------------------- through evaluate()
def test_a_plain_model_raises_no_preflight_flag_for_two_three_and_ten_classes() -> None:
    for classes in (2, 3, 10):
        model = Linear(classes).eval()
        images, labels = _data(model)
        result = _evaluate(model, images, labels)
        flags = _flags(result)
        assert all(flags[name].checked and not flags[name].raised for name in PREFLIGHT)
        assert not flags["zero_gradients"].raised
        assert result.checks.randomized_max_difference == 0.0
        json.loads(result.to_json())  # every measurement is JSON


@pytest.mark.parametrize("classes", [2, 3])
def test_softmax_on_top_is_flagged_for_few_classes(classes: int) -> None:
    model = Softmaxed(Linear(classes)).eval()
    images, labels = _data(model)
    result = _evaluate(model, images, labels)
    raised = _raised(result)
    assert "probability_outputs" in raised and not {"randomized", "train_mode"} & raised
    evidence = _flags(result)["probability_outputs"].evidence[0]
    with torch.no_grad():
        probabilities = model(images.float() / 255).double()[result.correct]
    assert evidence["rows"] == int(result.correct.sum())
    assert evidence["min"] == float(probabilities.min())


def test_dropout_in_forward_is_randomized_not_train_mode() -> None:
    model = Perturbed(Linear(), dropout=0.3).eval()
    images, labels = _data(Linear())
    torch.manual_seed(0)
    result = _evaluate(model, images, labels)
    raised = _raised(result)
    assert "randomized" in raised and "train_mode" not in raised
    assert result.checks.randomized_max_difference > 1e-2


def test_gaussian_input_noise_changes_predictions() -> None:
    model = Perturbed(Linear(2, scale=0.3), sigma=0.3).eval()
    images, labels = _data(Linear(2, scale=0.3))
    torch.manual_seed(0)
    result = _evaluate(model, images, labels)
    flag = _flags(result)["randomized"]
    assert flag.raised and flag.evidence[0]["changed_predictions"] > 0
    assert flag.evidence[0]["points"] == int(result.correct.sum())
    rand = Protocol("autoattack-rand", "stands in for the EOT protocol", QUICK.attacks)
    torch.manual_seed(0)
    again = _flags(_evaluate(model, images, labels, protocols=[rand]))["randomized"]
    assert again.raised and "as this evaluation did" in again.message


def test_mc_dropout_raises_train_mode_and_randomized() -> None:
    model = MCDropout(Linear()).eval()  # as an MC-dropout user hands it over
    images, labels = _data(Linear())
    torch.manual_seed(0)
    result = _evaluate(model, images, labels)
    assert {"train_mode", "randomized"} <= _raised(result)
    assert result.checks.active_after_eval == [{"module": "drop", "type": "Dropout"}]
    assert result.checks.train_mode_names == []  # handed over as eval() leaves it
    flag = _flags(result)["train_mode"]
    assert "handed over" not in flag.message and "model.eval() (drop)" in flag.message


def test_a_model_handed_over_in_train_mode_is_flagged_and_left_in_it() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.2), nn.Linear(8, 3))
    images, labels = _data(model.eval())
    model.train()
    model[3].eval()
    result = _evaluate(model, images, labels)
    flag = _flags(result)["train_mode"]
    assert flag.raised and flag.evidence[0]["names"] == ["2"]
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    assert not ({"randomized", "probability_outputs"} & _raised(result))
    # A model of linear layers in train mode computes what it computes in eval: no flag.
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).train()
    assert "train_mode" not in _raised(_evaluate(plain, images, labels))


def test_odd_models_never_crash_the_checks() -> None:
    base = Linear().eval()
    images, labels = _data(base)
    model = NaNRows(base).eval()
    runner = _runner(model, images, labels)
    measured = {}
    for name in PREFLIGHT:
        measured.update(CHECKS[name].measure(runner, seed=0))
    assert math.isnan(measured["output_min"])
    assert measured["randomized_max_difference"] == 0.0  # NaN in every pass is no change
    flags = {name: _judged(measured, name) for name in PREFLIGHT}
    assert all(flag.checked and not flag.raised for flag in flags.values())
    records = CHECKS["probability_outputs"].records(SanityChecks(**measured))
    assert math.isnan(records[0].value)
    # No correctly classified point: nothing to forward, said so rather than silently clean.
    wrong = evaluate(base, images, (labels + 1) % 3, protocols=[QUICK], eps=[0.1])
    for name in PREFLIGHT[:2]:
        flag = _flags(wrong)[name]
        assert not flag.checked and "no correctly classified point" in flag.message
    assert _flags(wrong)["train_mode"].checked
    json.loads(wrong.to_json())


# --------------------------------------------------------------------------- real MNIST
REAL_POINTS = 200


class KeepDropout(nn.Module):
    """A trained LeNet whose ``train()`` override keeps its dropout on (MC dropout)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> KeepDropout:
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.train(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@pytest.fixture(scope="module")
def lenet(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    import os

    from advls.train import TrainConfig, train

    os.environ["ADVLS_DATA"] = str(real_data)
    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=10_000
    )
    return train(config, tmp_path_factory.mktemp("preflight"), device="cpu", progress=False).model


@pytest.fixture(scope="module")
def mnist(real_data: Path) -> tuple[Tensor, Tensor]:
    from advls import data as datasets

    test = datasets.load("mnist", "test", real_data)
    return test.images[:REAL_POINTS], test.labels[:REAL_POINTS]


def _real(model: nn.Module, mnist: tuple[Tensor, Tensor]) -> Evaluation:
    paper = PROTOCOLS["paper"].without("cw-l2", "deepfool").with_params(**{"bim-100": {"steps": 5}})
    torch.manual_seed(0)
    return evaluate(model, *mnist, protocols=[paper], eps=[0.1])


@pytest.mark.slower
def test_real_plain_lenet_raises_no_preflight_flag(lenet, mnist) -> None:
    result = _real(lenet, mnist)
    assert result.clean_accuracy > 0.9
    flags = _flags(result)
    assert all(flags[name].checked and not flags[name].raised for name in PREFLIGHT)
    assert result.checks.randomized_max_difference == 0.0
    assert result.checks.zero_gradient_count == 0


@pytest.mark.slower
def test_real_softmax_on_top_is_flagged(lenet, mnist) -> None:
    result = _real(Softmaxed(lenet).eval(), mnist)
    assert "probability_outputs" in _raised(result)
    assert result.checks.output_min >= 0 and result.checks.output_row_sum_error < 1e-5


@pytest.mark.slower
def test_real_dropout_left_active_is_flagged(lenet, mnist) -> None:
    model = KeepDropout(copy.deepcopy(lenet)).eval()  # eval() leaves its dropout on
    result = _real(model, mnist)
    assert {"train_mode", "randomized"} <= _raised(result)
    assert [m["type"] for m in result.checks.active_after_eval] == ["Dropout"]
    assert result.checks.randomized_changed_predictions > 0


@pytest.mark.slower
def test_real_gaussian_noise_is_detected(lenet, mnist) -> None:
    result = _real(Perturbed(lenet, sigma=0.5).eval(), mnist)
    flag = _flags(result)["randomized"]
    assert flag.raised and flag.evidence[0]["changed_predictions"] > 0
    assert "train_mode" not in _raised(result)
