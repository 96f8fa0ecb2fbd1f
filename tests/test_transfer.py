"""Transfer attack: crafted on the surrogate by a registry attack, scored on the target."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import ATTACKS, fgsm, from_config, pgd, transfer
from test_attack_invariants import CLASSES, SHAPE, Linear, make_batch, make_model, state

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Counter(nn.Module):
    """Counts forward passes and the examples they cover."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the flag only
        self.calls = 0
        self.rows: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.rows.append(x.shape[0])
        return self.model(x)


class Fixed(nn.Module):
    """Predicts class 0 by a wide margin whatever the input (it has parameters all the same)."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(SHAPE), classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.bias[0] = 100.0

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def correct_labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(x).argmax(dim=1)


# --------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize(
    "attack,direct",
    [
        (
            {"name": "pgd", "steps": 5, "seed": 3},
            lambda m, x, y: pgd(m, x, y, eps=0.1, steps=5, seed=3),
        ),
        ("fgsm", lambda m, x, y: fgsm(m, x, y, eps=0.1)),
        ({"name": "bim", "steps": 4}, lambda m, x, y: ATTACKS["bim"](m, x, y, eps=0.1, steps=4)),
    ],
    ids=["pgd", "fgsm", "bim"],
)
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_the_target_as_its_own_surrogate_is_the_inner_attack(attack, direct, kind: str) -> None:
    model = make_model(kind, 1).eval()
    x, y = make_batch(2, 16)
    correct = correct_labels(model, x) == y
    assert 0 < int(correct.sum()) < 16  # both kinds of input are present
    expected = direct(model, x, y)
    result = transfer(model, x, y, surrogate=model, attack=attack, eps=0.1)
    # Inputs the target classifies correctly: exactly the inner attack's output.
    assert torch.equal(result.x_adv[correct], expected.x_adv[correct])
    assert torch.equal(result.success[correct], expected.success[correct])
    # Inputs it misclassifies to begin with: successes, returned unchanged.
    assert torch.equal(result.x_adv[~correct], x[~correct])
    assert bool(result.success[~correct].all())
    assert result.model_calls == 2


def test_same_as_the_inner_attack_when_everything_is_correct() -> None:
    model = make_model("conv", 4).eval()
    x, _ = make_batch(5, 12)
    y = correct_labels(model, x)
    expected = pgd(model, x, y, eps=0.05, steps=6, restarts=2, seed=9)
    result = transfer(
        model,
        x,
        y,
        surrogate=model,
        attack="pgd",
        eps=0.05,
        params={"steps": 6, "restarts": 2, "seed": 9},
    )
    assert torch.equal(result.x_adv, expected.x_adv)
    assert torch.equal(result.success, expected.success)
    torch.testing.assert_close(result.linf, expected.linf)
    assert 0 < int(result.success.sum()) < 12


# --------------------------------------------------------------------------- the target decides
def test_success_is_the_targets_not_the_surrogates() -> None:
    """The surrogate is fooled everywhere, the target (constant prediction) nowhere."""
    target = Fixed()
    surrogate = make_model("linear", 0)
    x, _ = make_batch(1, 10)
    y = torch.zeros(10, dtype=torch.long)  # the target is always right
    with torch.no_grad():
        surrogate.fc.bias.copy_(-surrogate(x).mean(dim=0))  # roughly balanced on x...
    on_surrogate = pgd(surrogate, x, y, eps=0.5, steps=10, seed=0)
    assert bool(on_surrogate.success.all())  # ...and easily fooled

    result = transfer(
        target,
        x,
        y,
        surrogate=surrogate,
        attack={"name": "pgd", "seed": 0},
        eps=0.5,
        params={"steps": 10},
    )
    assert torch.equal(result.x_adv, on_surrogate.x_adv)  # crafted on the surrogate...
    assert not bool(result.success.any())  # ...scored on the target
    assert result.robust_accuracy == 1.0
    delta = (result.x_adv - x).flatten(1)
    torch.testing.assert_close(result.linf, delta.abs().amax(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.l2, delta.norm(dim=1), atol=1e-6, rtol=0)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    kinds=st.tuples(*(st.sampled_from(["conv", "mlp", "linear"]),) * 2),
    eps=st.floats(0.0, 1.0),
)
def test_contract(seed: int, kinds: tuple[str, str], eps: float) -> None:
    target, surrogate = make_model(kinds[0], seed), make_model(kinds[1], seed + 1)
    target.train()
    surrogate.eval()
    next(target.parameters()).requires_grad_(False)
    flags = [[p.requires_grad for p in m.parameters()] for m in (target, surrogate)]
    before = [state(target), state(surrogate)]
    x, y = make_batch(seed + 2, 6)
    x_copy, y_copy = x.clone(), y.clone()
    counted = Counter(target)

    result = transfer(
        counted, x, y, surrogate=surrogate, attack={"name": "bim", "steps": 3}, eps=eps
    )

    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert target.training and not surrogate.training
    assert [[p.requires_grad for p in m.parameters()] for m in (target, surrogate)] == flags
    assert all(p.grad is None for m in (target, surrogate) for p in m.parameters())
    after = [state(target), state(surrogate)]
    assert all(torch.equal(b[k], a[k]) for b, a in zip(before, after, strict=True) for k in b)

    x_adv = result.x_adv
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(result.linf.max()) <= eps + 1e-6
    target.eval()
    with torch.no_grad():
        clean = target(x).argmax(dim=1) != y
        assert torch.equal(result.success, target(x_adv).argmax(dim=1) != y)
    assert torch.equal(x_adv[clean], x[clean])
    # The target's passes only: the clean batch, then the correctly classified ones.
    assert result.model_calls == counted.calls == (2 if bool((~clean).any()) else 1)
    assert counted.rows[0] == 6 and counted.rows[1:] == [int((~clean).sum())] * (counted.calls - 1)


def test_modes_restored_when_surrogate_is_in_train_mode() -> None:
    target, surrogate = make_model("conv", 0).eval(), make_model("conv", 1).train()
    surrogate.conv.weight.requires_grad_(False)
    x, y = make_batch(3, 5)
    transfer(target, x, y, surrogate=surrogate, attack="fgsm", eps=0.1)
    assert not target.training and surrogate.training
    assert not surrogate.conv.weight.requires_grad and surrogate.fc.weight.requires_grad
    assert all(p.requires_grad for p in target.parameters())


def test_from_config_as_the_protocols_build_it() -> None:
    target, surrogate = make_model("mlp", 0), make_model("mlp", 1)
    x, y = make_batch(3, 8)
    config = {
        "name": "transfer",
        "attack": {"name": "pgd", "steps": 5, "loss": "ce", "seed": 0},
        "eps": 0.1,
        "surrogate": surrogate,
    }
    result = from_config(config)(target, x, y)
    direct = transfer(
        target,
        x,
        y,
        surrogate=surrogate,
        eps=0.1,
        attack={"name": "pgd", "steps": 5, "loss": "ce", "seed": 0},
    )
    assert torch.equal(result.x_adv, direct.x_adv)


# --------------------------------------------------------------------------- errors
def test_class_count_mismatch() -> None:
    target = make_model("linear", 0)
    surrogate = Linear(math.prod(SHAPE), CLASSES + 1)
    x, y = make_batch(0, 4)
    target.train()
    surrogate.train()
    with pytest.raises(ValueError, match=r"the surrogate has 4 classes but the target has 3"):
        transfer(target, x, y, surrogate=surrogate, attack="fgsm", eps=0.1)
    assert target.training and surrogate.training  # restored after the error too
    assert all(p.requires_grad for m in (target, surrogate) for p in m.parameters())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"attack": "nope", "eps": 0.1}, "attack must be one of"),
        ({"attack": {"name": "pgd", "stepz": 3}, "eps": 0.1}, "takes no parameter"),
        ({"attack": "pgd", "eps": 0.1, "params": {"stepz": 3}}, "takes no parameter"),
        ({"attack": "transfer", "eps": 0.1}, "other than 'transfer'"),
        ({"attack": {"name": "transfer"}, "eps": 0.1}, "other than 'transfer'"),
        ({"attack": {"steps": 3}, "eps": 0.1}, "'name' key"),
        ({"attack": 3, "eps": 0.1}, "attack must be an attack name or a config"),
        ({"attack": "pgd"}, "needs eps"),
        ({"attack": {"name": "pgd", "eps": 0.1}, "eps": 0.1}, "eps is given twice"),
        (
            {"attack": {"name": "pgd", "steps": 3}, "eps": 0.1, "params": {"steps": 4}},
            "given twice",
        ),
        ({"attack": "pgd", "eps": 0.1, "params": {"name": "fgsm"}}, "must not contain 'name'"),
        ({"attack": "pgd", "eps": 0.1, "params": [("steps", 3)]}, "params must be a mapping"),
        ({"attack": "pgd", "eps": -0.1}, "eps must be"),
        ({"attack": "pgd", "eps": 0.1, "params": {"steps": 0}}, "steps must be"),
    ],
)
def test_bad_configurations(kwargs: dict, message: str) -> None:
    target, surrogate = make_model("linear", 0), make_model("linear", 1)
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=message):
        transfer(target, x, y, surrogate=surrogate, **kwargs)


def test_the_surrogate_must_be_a_module() -> None:
    target = make_model("linear", 0)
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=r"surrogate must be a torch\.nn\.Module"):
        transfer(target, x, y, surrogate=lambda t: target(t), attack="fgsm", eps=0.1)


def test_bad_inputs_are_refused_before_crafting() -> None:
    target, surrogate = make_model("linear", 0), Counter(make_model("linear", 1))
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transfer(target, x * 3, y, surrogate=surrogate, attack="fgsm", eps=0.1)
    with pytest.raises(ValueError, match="labels must lie"):
        transfer(target, x, torch.full_like(y, CLASSES), surrogate=surrogate, eps=0.1)
    assert surrogate.calls == 0
