"""AutoAttack inside advls: APGD-T, EOT, the cascade protocols and few-class tasks.

The cross-checks against torchattacks' ports of AutoAttack on real MNIST models are in
``test_autoattack_real.py``; here are the closed forms, the drivers' invariants, the
protocols' shapes and the errors.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import ATTACKS, apgd
from advls.attacks.gradient import input_gradient
from advls.attacks.objectives import targeted_dlr, targeted_loss
from advls.attacks.restarts import over_targets, runner_up
from advls.evaluate import PROTOCOLS, Protocol, evaluate, format_markdown
from advls.evaluate.protocols import fit_to_classes

SHAPE = (1, 6, 6)


def linear(classes: int, seed: int = 0) -> nn.Module:
    """A random affine classifier on flattened inputs (its logits scaled to give margins)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), classes))
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    return model


def batch(n: int, classes: int, model: nn.Module, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs in [0, 1] labelled by the model itself, so every point starts correct."""
    x = torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input at every forward pass."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


# --------------------------------------------------------------------------- losses, targets
@settings(max_examples=25, deadline=None)
@given(
    st.integers(4, 12),
    st.integers(0, 2**16),
    st.floats(0.1, 10.0),
    st.floats(-5.0, 5.0),
)
def test_targeted_dlr_closed_form_and_invariance(k: int, seed: int, scale: float, shift: float):
    logits = torch.randn((5, k), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y, target = torch.zeros(5, dtype=torch.long), torch.full((5,), k - 1)
    ordered = logits.sort(dim=1, descending=True).values
    expected = (logits[:, k - 1] - logits[:, 0]) / (
        ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12
    )
    assert torch.allclose(targeted_dlr(logits, y, target), expected)
    moved = targeted_dlr(logits * scale + shift, y, target)
    assert torch.allclose(moved, expected, rtol=1e-6, atol=1e-9)


def test_targeted_losses_refuse_what_they_cannot_do() -> None:
    three = torch.randn(2, 3)
    with pytest.raises(ValueError, match="at least 4 classes"):
        targeted_dlr(three, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targeted attack's loss"):
        targeted_loss("margin", torch.ones(2, dtype=torch.long))
    # Targeted CE is minus the cross-entropy to the target.
    target = torch.tensor([1, 2])
    value = targeted_loss("ce", target)(three, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(value, -F.cross_entropy(three, target, reduction="none"))


def test_runner_up_is_the_rank_th_highest_class() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 6.0, 0.0]])
    assert runner_up(logits, 1).tolist() == [1, 2]
    assert runner_up(logits, 2).tolist() == [2, 0]
    assert runner_up(logits, 4).tolist() == [3, 3]


def test_over_targets_attacks_only_points_still_robust_in_target_order() -> None:
    model = linear(6)
    x, y = batch(8, 6, model)
    with torch.no_grad():
        order = model(x).sort(dim=1, descending=True).indices
    calls: list[tuple[list[int], list[int]]] = []
    rows = {tuple(row.tolist()): i for i, row in enumerate(x.flatten(1))}

    def run(xs: Tensor, ys: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        which = [rows[tuple(row.tolist())] for row in xs.flatten(1)]
        calls.append((which, target.tolist()))
        # Target t fools exactly the points whose index is below t's rank: 0..1, then 2..3...
        rank = len(calls)
        fooled = torch.tensor([i < 2 * rank for i in which])
        return xs + 0.5 * fooled.view(-1, 1, 1, 1), fooled

    x_adv = over_targets(model, run, x, y, target_classes=3)
    assert [which for which, _ in calls] == [list(range(8)), list(range(2, 8)), list(range(4, 8))]
    for rank, (which, targets) in enumerate(calls, start=2):
        assert targets == [int(order[i, rank - 1]) for i in which]  # the rank-th class
    moved = (x_adv != x).flatten(1).any(dim=1)
    assert moved.tolist() == [True] * 6 + [False] * 2  # unfooled points keep their input


# --------------------------------------------------------------------------- APGD-T and EOT
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_t_breaks_at_least_what_apgd_ce_breaks_on_an_affine_model(norm: str, eps: float):
    model = linear(10)
    x, y = batch(64, 10, model, seed=1)
    ce = apgd(model, x, y, eps=eps, norm=norm, steps=20, seed=0)
    targeted = apgd(model, x, y, eps=eps, norm=norm, steps=20, targeted=True, seed=0)
    # On an affine model the best target is among the runner-ups: 9 targets find every
    # point an untargeted run finds (and the contract holds: success = re-prediction).
    assert bool((targeted.success | ~ce.success).all())
    with torch.no_grad():
        assert torch.equal(targeted.success, model(targeted.x_adv).argmax(dim=1) != y)
    if norm == "linf":
        assert float(targeted.linf.max()) <= eps + 1e-7
    else:
        assert float(targeted.l2.max()) <= eps * (1 + 1e-5)


def test_apgd_t_model_calls_follow_the_targets() -> None:
    model = linear(5)
    x, y = batch(16, 5, model)
    one = apgd(model, x, y, eps=0.0, steps=7, targeted=True, target_classes=1, seed=0)
    # eps 0 fools nothing: the clean pass, then per target one run (steps + 1), then scoring.
    assert one.model_calls == 1 + (7 + 1) + 1
    four = apgd(model, x, y, eps=0.0, steps=7, targeted=True, target_classes=4, seed=0)
    assert four.model_calls == 1 + 4 * (7 + 1) + 1
    assert not bool(four.success.any())


def test_eot_on_a_deterministic_model_changes_nothing_but_the_cost() -> None:
    model = linear(4)
    x, y = batch(12, 4, model)
    plain = apgd(model, x, y, eps=0.05, steps=6, seed=3)
    averaged = apgd(model, x, y, eps=0.05, steps=6, seed=3, eot_iter=3)
    assert torch.equal(plain.x_adv, averaged.x_adv)
    assert plain.model_calls == 6 + 2
    assert averaged.model_calls == 3 * 6 + 2


def test_eot_gradient_is_the_mean_over_passes() -> None:
    # A model whose logit is w.x * s with a random sign s in {1, 3}: E[grad] = 2 w.
    weight = torch.randn(1, math.prod(SHAPE))
    draws = iter([1.0, 3.0, 3.0, 1.0])

    class Switching(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            z = (x.flatten(1) @ weight.T) * next(draws)
            return torch.cat((z, -z), dim=1)

    x, y = torch.rand((2, *SHAPE)), torch.zeros(2, dtype=torch.long)
    objective = lambda logits, labels: logits[:, 0]  # noqa: E731
    grad = input_gradient(Switching(), x, y, objective, eot_iter=4)
    assert torch.allclose(grad.flatten(1), 2.0 * weight.expand(2, -1))


def test_eot_recovers_the_expected_gradient_of_a_randomized_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.Tanh(), nn.Linear(32, 10))
    x, y = batch(64, 10, model, seed=3)
    noisy = Noisy(model, sigma=1.0)
    objective = lambda logits, labels: F.cross_entropy(logits, labels, reduction="none")  # noqa: E731
    # The expected gradient, estimated with many draws; one draw and EOT's 20 next to it.
    expected = input_gradient(noisy, x, y, objective, eot_iter=2000)
    one = input_gradient(noisy, x, y, objective, eot_iter=1)
    eot = input_gradient(noisy, x, y, objective, eot_iter=20)

    def error(grad: Tensor) -> float:
        return float((grad - expected).norm())

    # The mean of 20 draws has about 1/sqrt(20) = 0.22 of one draw's error.
    assert error(eot) < 0.4 * error(one)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"targeted": True, "target_classes": 0}, "target_classes must be an integer >= 1"),
        ({"targeted": True, "target_classes": 4}, "target_classes must be below"),
        ({"targeted": True, "loss": "margin"}, "targeted apgd's loss"),
        ({"targeted": "yes"}, "targeted must be True or False"),
        ({"eot_iter": 0}, "eot_iter must be an integer >= 1"),
        ({"eot_iter": 2.0}, "eot_iter must be an integer >= 1"),
        ({"norm": "l1"}, "norm must be 'linf' or 'l2'"),
    ],
)
def test_apgd_bad_arguments_name_themselves(params: dict, message: str) -> None:
    model = linear(4)
    x, y = batch(4, 4, model)
    with pytest.raises(ValueError, match=message):
        apgd(model, x, y, eps=0.1, steps=2, **{"target_classes": 3, **params})


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "apgd", "fgm"])
def test_every_gradient_attack_takes_eot_iter(name: str) -> None:
    model = linear(3)
    x, y = batch(6, 3, model)
    seeded = {"seed": 0} if name in ("pgd", "apgd") else {}
    attack = functools.partial(ATTACKS[name], **seeded)
    base = attack(model, x, y, eps=0.1, eot_iter=1)
    twice = attack(model, x, y, eps=0.1, eot_iter=2)
    assert torch.equal(base.x_adv, twice.x_adv)  # a deterministic model: the same gradient
    assert twice.model_calls > base.model_calls
    with pytest.raises(ValueError, match="eot_iter"):
        attack(model, x, y, eps=0.1, eot_iter=0)


# --------------------------------------------------------------------------- few classes
@pytest.mark.parametrize(
    "config, classes, fitted, said",
    [
        ({"loss": "dlr"}, 2, {"loss": "ce"}, "DLR needs 3 classes"),
        ({"loss": "dlr"}, 3, {"loss": "dlr"}, ""),
        (
            {"loss": "dlr", "targeted": True, "target_classes": 9},
            3,
            {"loss": "ce", "targeted": True, "target_classes": 2},
            "targeted DLR needs 4 classes: CE in its place; 2 target class(es)",
        ),
        (
            {"loss": "dlr", "targeted": True, "target_classes": 9},
            5,
            {"loss": "dlr", "targeted": True, "target_classes": 4},
            "4 target class(es)",
        ),
        ({"targeted": True, "target_classes": 9}, 10, {"targeted": True, "target_classes": 9}, ""),
    ],
)
def test_fit_to_classes_does_what_autoattack_does(config, classes, fitted, said) -> None:
    got, change = fit_to_classes({"name": "apgd", **config}, classes)
    assert got == {"name": "apgd", **fitted}
    assert change.startswith(said) if said else change == ""


# --------------------------------------------------------------------------- the protocols
def test_autoattack_protocols_are_autoattacks_versions() -> None:
    standard = PROTOCOLS["autoattack"]
    assert standard.cascade and standard.norm == "linf"
    assert [s.label for s in standard.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    params = {s.label: dict(s.params) for s in standard.attacks}
    assert params["apgd-ce"] == {"steps": 100, "loss": "ce"}
    assert params["apgd-t"] == {"steps": 100, "loss": "dlr", "targeted": True, "target_classes": 9}
    assert params["fab-t"] == {"steps": 100, "targeted": True, "target_classes": 9}
    assert params["square"] == {"queries": 5002, "rescale_schedule": False}  # 5000 steps
    l2 = PROTOCOLS["autoattack-l2"]
    assert l2.norm == "l2" and all(dict(s.params)["norm"] == "l2" for s in l2.attacks)
    rand = PROTOCOLS["autoattack-rand"]
    assert [dict(s.params)["eot_iter"] for s in rand.attacks] == [20, 20]
    assert [dict(s.params)["loss"] for s in rand.attacks] == ["ce", "dlr"]
    # strong is a superset of autoattack's attacks, each run on every point.
    strong = PROTOCOLS["strong"]
    assert not strong.cascade
    strong_configs = [dict(s.params) | {"name": s.attack} for s in strong.attacks]
    for spec in standard.attacks:
        assert dict(spec.params) | {"name": spec.attack} in strong_configs


def test_a_cascade_must_hold_bounded_attacks_only() -> None:
    deepfool = next(s for s in PROTOCOLS["strong"].attacks if s.label == "deepfool")
    with pytest.raises(ValueError, match="bounded attacks only"):
        Protocol("x", "x", (deepfool,), cascade=True)
    with pytest.raises(ValueError, match="norm"):
        Protocol("x", "x", (), norm="l1")  # type: ignore[arg-type]


def cheap(name: str) -> Protocol:
    """A named protocol with few steps, so a test runs in seconds."""
    protocol = PROTOCOLS[name]
    changes = {}
    for spec in protocol.attacks:
        params = dict(spec.params)
        if "steps" in params:
            changes[spec.label] = {"steps": 5}
        if "queries" in params:
            changes[spec.label] = {"queries": 50, "rescale_schedule": True}
        if "eot_iter" in params:
            changes[spec.label] = {"steps": 5, "eot_iter": 2}
    return protocol.with_params(**changes)


def test_cascade_attacks_only_the_survivors_and_reports_cumulative_accuracy() -> None:
    model = linear(10, seed=4)
    x, y = batch(80, 10, model, seed=4)
    y[:5] = (y[:5] + 1) % 10  # five clean errors
    protocol = cheap("autoattack").without("fab-t")
    evaluation = evaluate(model, x, y, protocols=[protocol], eps=[0.02, 0.05], checks=False)
    for eps in (0.02, 0.05):
        outcomes = [o for o in evaluation.outcomes if o.eps == eps]
        assert [o.spec.label for o in outcomes] == ["apgd-ce", "apgd-t", "square"]
        robust = evaluation.correct.clone()
        for outcome in outcomes:
            assert torch.equal(outcome.attacked, robust)  # only the points still robust
            assert bool((outcome.fooled | robust).all())  # earlier breaks stay broken
            robust = ~outcome.fooled
        accuracies = [o.robust_accuracy for o in outcomes]
        assert accuracies == sorted(accuracies, reverse=True)  # cumulative: never rises
        assert evaluation.worst_case("autoattack", eps) == accuracies[-1]
    text = format_markdown(evaluation)
    assert "↳ apgd-t" in text and "cascade" in text


def test_a_cascade_beside_strong_reads_its_attacks_from_strong_at_no_cost() -> None:
    # Listed first, autoattack still runs after strong, which runs each of its attacks on
    # every point: the cascade's result is then exactly the union of those runs' breaks.
    model = linear(10, seed=8)
    x, y = batch(60, 10, model, seed=8)
    y[:3] = (y[:3] + 1) % 10
    autoattack, strong = cheap("autoattack"), cheap("strong")
    evaluation = evaluate(model, x, y, protocols=[autoattack, strong], eps=[0.02, 0.05])
    assert evaluation.outcomes[0].protocol == "autoattack"  # reported in the order asked
    labels = [spec.label for spec in autoattack.attacks]
    for eps in (0.02, 0.05):
        shared = [
            o for o in evaluation.outcomes
            if o.protocol == "strong" and o.eps == eps and o.spec.label in labels
        ]  # fmt: skip
        assert len(shared) == len(labels) and all(o.seconds > 0 for o in shared)
        union = torch.stack([o.fooled for o in shared]).any(dim=0)
        assert evaluation.worst_case("autoattack", eps) == pytest.approx(
            float((~union).float().mean())
        )
        cascade = [o for o in evaluation.outcomes if o.protocol == "autoattack" and o.eps == eps]
        assert all(o.seconds == 0 and o.model_calls == 0 for o in cascade)
        assert evaluation.worst_case("autoattack", eps) >= evaluation.worst_case("strong", eps)
    alone = evaluate(model, x, y, protocols=[autoattack], eps=[0.02], checks=False)
    assert alone.outcomes[0].seconds > 0 and alone.outcomes[0].model_calls > 0


def test_l2_protocol_runs_at_the_l2_budgets() -> None:
    model = linear(10, seed=5)
    x, y = batch(40, 10, model, seed=5)
    protocol = cheap("autoattack-l2").without("fab-t")
    evaluation = evaluate(
        model, x, y, protocols=[protocol], eps=[0.1], l2_budgets=[0.5, 1.0], checks=False
    )
    assert {o.eps for o in evaluation.outcomes} == {0.5, 1.0}
    worst = evaluation.as_dict()["worst_case"]
    assert [(w["protocol"], w["eps"]) for w in worst] == [
        ("autoattack-l2", 0.5),
        ("autoattack-l2", 1.0),
    ]
    assert "L2 0.5" in format_markdown(evaluation)


@pytest.mark.parametrize("classes", [2, 3])
def test_few_class_models_go_through_autoattack_and_say_what_changed(classes: int) -> None:
    model = linear(classes, seed=6)
    x, y = batch(30, classes, model, seed=6)
    protocols = [cheap("autoattack").without("fab-t"), cheap("autoattack-rand")]
    evaluation = evaluate(model, x, y, protocols=protocols, eps=[0.05], checks=False)
    changes = {(a["protocol"], a["attack"]): a["change"] for a in evaluation.adapted}
    assert "CE in its place" in changes[("autoattack", "apgd-t")]
    assert f"{classes - 1} target class(es)" in changes[("autoattack", "apgd-t")]
    if classes == 2:
        assert "DLR needs 3 classes" in changes[("autoattack-rand", "apgd-dlr-eot")]
    else:
        assert ("autoattack-rand", "apgd-dlr-eot") not in changes
    assert "Adapted to" in format_markdown(evaluation)
    assert evaluation.as_dict()["adapted"] == evaluation.adapted


def test_the_evaluation_re_predicts_so_a_lucky_draw_breaks_nothing() -> None:
    # A randomized model whose noise flips many predictions: Square keeps the logits of the
    # query it accepted, which one lucky draw may have misclassified. The evaluation counts
    # a point as broken only if a fresh pass misclassifies the returned point (AutoAttack's
    # rule), so its square outcome is below the attack's own success rate.
    base = linear(10, seed=7)
    x, y = batch(120, 10, base, seed=7)
    noisy = Noisy(base, sigma=0.6)
    protocol = Protocol("lucky", "", (PROTOCOLS["autoattack"].attacks[3],), cascade=True)
    protocol = protocol.with_params(square={"queries": 60, "rescale_schedule": True})
    torch.manual_seed(0)
    evaluation = evaluate(noisy, x, y, protocols=[protocol], eps=[0.01], checks=False)
    outcome = evaluation.outcomes[0]
    torch.manual_seed(0)
    raw = ATTACKS["square"](noisy, x, y, eps=0.01, queries=60, seed=0, rescale_schedule=True)
    assert outcome.success_rate < raw.success_rate - 0.1
    # On a deterministic model the re-prediction is the attack's own success.
    deterministic = evaluate(base, x, y, protocols=[protocol], eps=[0.05], checks=False)
    square = ATTACKS["square"](base, x, y, eps=0.05, queries=60, seed=0, rescale_schedule=True)
    assert torch.equal(deterministic.outcomes[0].fooled, square.success)
