"""The attack contract (docs/architecture.md) on every attack, closed forms and cross-checks.

Every attack must: return points in [0, 1] (bounded ones inside the eps-ball), report norms
and success that match its output, leave ``x``, ``y``, the parameters, buffers, train/eval
mode and ``requires_grad`` flags as it found them, and reject bad input with a ValueError.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import advls.attacks as attacks
from advls.attacks import ATTACKS, bim, fgsm, from_config, pgd

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHAPE = (1, 6, 6)
CLASSES = 3

# (name, attack, extra params, bounded norm or None); eps is drawn by the tests.
CASES = {
    "fgsm": (fgsm, {}, "linf"),
    "fgm": (ATTACKS["fgm"], {}, "l2"),
    "bim": (bim, {"steps": 5}, "linf"),
    "pgd-linf": (pgd, {"steps": 5, "restarts": 2, "seed": 0}, "linf"),
    "pgd-l2": (pgd, {"norm": "l2", "steps": 5, "restarts": 2, "seed": 0}, "l2"),
    "deepfool": (ATTACKS["deepfool"], {"steps": 20}, None),
    "deepfool-linf": (ATTACKS["deepfool"], {"norm": "linf", "steps": 20}, None),
    "cw_l2": (ATTACKS["cw_l2"], {"binary_search_steps": 2, "steps": 20}, None),
    "apgd-linf": (ATTACKS["apgd"], {"steps": 5, "restarts": 2, "seed": 0}, "linf"),
    "apgd-l2": (ATTACKS["apgd"], {"norm": "l2", "steps": 5, "restarts": 2, "seed": 0}, "l2"),
    "apgd-dlr": (ATTACKS["apgd"], {"loss": "dlr", "steps": 5, "seed": 0}, "linf"),
    # APGD-T on 3 classes: targeted CE (targeted DLR needs 4) against both other classes.
    "apgd-t-linf": (
        ATTACKS["apgd"],
        {"targeted": True, "loss": "ce", "target_classes": 2, "steps": 4, "seed": 0},
        "linf",
    ),
    "apgd-t-l2": (
        ATTACKS["apgd"],
        {"norm": "l2", "targeted": True, "loss": "ce", "target_classes": 2, "steps": 4, "seed": 0},
        "l2",
    ),
    "apgd-eot": (ATTACKS["apgd"], {"steps": 3, "eot_iter": 2, "seed": 0}, "linf"),
    "square-linf": (ATTACKS["square"], {"queries": 20, "seed": 0}, "linf"),
    "square-l2": (ATTACKS["square"], {"norm": "l2", "queries": 20, "seed": 0}, "l2"),
    "fab-linf": (ATTACKS["fab"], {"steps": 4, "restarts": 2, "seed": 0}, "linf"),
    "fab-l2": (ATTACKS["fab"], {"norm": "l2", "steps": 4, "seed": 0}, "l2"),
    "fab-t": (
        ATTACKS["fab"],
        {"targeted": True, "target_classes": 2, "steps": 4, "seed": 0},
        "linf",
    ),
    "fab-minimal": (ATTACKS["fab"], {"eps": None, "steps": 4, "restarts": 2, "seed": 0}, None),
    "transfer": (
        ATTACKS["transfer"],
        {"surrogate": nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), "attack": "fgsm"},
        "linf",
    ),
}


# --------------------------------------------------------------------------- models and data
class ConvNet(nn.Module):
    """Input normalisation, conv, batch norm and dropout: train mode would change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.5))
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 4 * 4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.conv((x - self.mean) / 0.25)))
        return self.fc(self.drop(h.flatten(1)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(SHAPE), 16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(x.flatten(1) * 2 - 1))))


class Linear(nn.Module):
    def __init__(self, features: int = math.prod(SHAPE), classes: int = CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class Constant(nn.Module):
    """Logits that ignore the input (its gradient is zero): always predicts class 0."""

    def forward(self, x: Tensor) -> Tensor:
        zeros = x.flatten(1).sum(dim=1, keepdim=True) * 0.0
        return zeros + torch.tensor([1.0, 0.0, 0.0])


class WrongShape(nn.Module):
    def __init__(self, shape: str) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(SHAPE), CLASSES)
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(x.flatten(1))
        return logits[:, 0] if self.shape == "flat" else logits[:, :, None]


def make_model(kind: str, seed: int) -> nn.Module:
    """A model with parameters (and batch-norm statistics) drawn from a private generator."""
    model = {"conv": ConvNet, "mlp": MLP, "linear": Linear}[kind]()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point() and tensor.dim() > 0:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        if kind == "conv":
            model.bn.running_var.abs_().add_(0.5)
    return model


def make_batch(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """Inputs in [0, 1] with some exact 0s and 1s, and random labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SHAPE), generator=generator)
    u = torch.rand(x.shape, generator=generator)
    x[u < 0.15] = 0.0
    x[u > 0.85] = 1.0
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    return x, y


def run_case(case: str, model: nn.Module, x: Tensor, y: Tensor, eps: float):
    attack, params, norm = CASES[case]
    if norm is not None:
        params = {**params, "eps": eps}
    try:
        return attack(model, x, y, **params)
    except NotImplementedError:
        pytest.skip(f"{case} is still a placeholder")


def state(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


# --------------------------------------------------------------------------- the contract
def check_result(
    result, model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str | None, l2_atol=1e-6
) -> None:
    """What an attack returns: points in [0, 1] (and in the ``norm`` ball of ``eps`` when it
    is bounded), norms that match them, and success that equals re-predicting them (the
    model is left in eval mode)."""
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    torch.testing.assert_close(result.l2, delta.norm(dim=1), atol=l2_atol, rtol=0)
    torch.testing.assert_close(result.linf, delta.abs().amax(dim=1), atol=1e-6, rtol=0)
    if norm == "linf":
        assert float(result.linf.max()) <= eps + 1e-6
    elif norm == "l2":
        assert float(result.l2.max()) <= eps + 1e-5
    model.eval()
    with torch.no_grad():
        expected = model(x_adv).argmax(dim=1) != y
    assert result.success.dtype == torch.bool
    assert torch.equal(result.success, expected)


@pytest.mark.parametrize("case", list(CASES))
@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    kind=st.sampled_from(["conv", "mlp", "linear"]),
    eps=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
)
def test_contract(case: str, seed: int, n: int, kind: str, eps: float) -> None:
    model = make_model(kind, seed)
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)  # mixed flags must come back as they were
    flags = [p.requires_grad for p in model.parameters()]
    before = state(model)
    x, y = make_batch(seed + 1, n)
    x_copy, y_copy = x.clone(), y.clone()

    result = run_case(case, model, x, y, eps)

    # Nothing the caller owns has changed.
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)

    check_result(result, model, x, y, eps, CASES[case][2])
    # At least the clean forward pass (attacks that read the logits they return need no more).
    assert isinstance(result.model_calls, int) and result.model_calls >= 1


@pytest.mark.parametrize(
    "attack",
    [
        fgsm,
        functools.partial(bim, steps=3),
        functools.partial(pgd, steps=3),
        functools.partial(pgd, norm="l2", steps=3),
        functools.partial(pgd, restarts=3, steps=3),
    ],
    ids=["fgsm", "bim", "pgd-linf", "pgd-l2", "pgd-restarts"],
)
@FAST
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["conv", "mlp", "linear"]))
def test_zero_budget_returns_the_input(attack, seed: int, kind: str) -> None:
    model = make_model(kind, seed).eval()
    x, y = make_batch(seed, 5)
    result = attack(model, x, y, eps=0.0)
    assert torch.equal(result.x_adv, x)
    with torch.no_grad():
        assert torch.equal(result.success, model(x).argmax(dim=1) != y)
    assert float(result.l2.max()) == 0.0 and float(result.linf.max()) == 0.0


# --------------------------------------------------------------------------- randomness
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_pgd_seed_is_reproducible_and_private(norm: str, eps: float) -> None:
    model = make_model("conv", 0)
    x, y = make_batch(1, 8)
    rng = torch.get_rng_state()
    first = pgd(model, x, y, eps=eps, norm=norm, steps=3, restarts=3, seed=7)
    second = pgd(model, x, y, eps=eps, norm=norm, steps=3, restarts=3, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.success, second.success)
    other = pgd(model, x, y, eps=eps, norm=norm, steps=3, restarts=3, seed=8)
    assert not torch.equal(first.x_adv, other.x_adv)


def test_pgd_l2_random_start_fills_the_ball() -> None:
    """Zero steps are not allowed, so look at the start through a model with no gradient."""
    x = torch.full((200, *SHAPE), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    result = pgd(Constant(), x, y, eps=0.3, norm="l2", steps=1, seed=0)
    # Zero gradient: no step is taken, x_adv is the start point; uniform in the 36-ball means
    # radius eps * U^(1/36), almost always near eps but spread below it.
    assert float(result.l2.max()) <= 0.3 + 1e-6
    assert 0.2 < float(result.l2.min()) < 0.3
    assert float(result.l2.median()) > 0.28


def test_restarts_keep_the_first_success() -> None:
    model = make_model("mlp", 3)
    x, y = make_batch(4, 64)
    one = pgd(model, x, y, eps=0.05, steps=3, restarts=1, seed=5)
    more = pgd(model, x, y, eps=0.05, steps=3, restarts=4, seed=5)
    assert 0 < int(one.success.sum()) < 64  # a meaningful test: some but not all fooled
    assert bool((more.success | ~one.success).all())
    assert torch.equal(more.x_adv[one.success], one.x_adv[one.success])
    assert int(more.success.sum()) >= int(one.success.sum())


# --------------------------------------------------------------------------- model calls
def test_model_calls() -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 4)
    assert fgsm(model, x, y, eps=0.1).model_calls == 2  # gradient, final scoring
    for steps in (1, 7):
        assert bim(model, x, y, eps=0.1, steps=steps).model_calls == steps + 1
        assert pgd(model, x, y, eps=0.1, steps=steps, seed=0).model_calls == steps + 1
    # Never fooled (y is the constant prediction): every restart runs and scores.
    never = torch.zeros(4, dtype=torch.long)
    assert pgd(Constant(), x, never, eps=0.1, steps=3, restarts=4).model_calls == 4 * 4
    # Always fooled: the restart loop stops after the first run.
    always = torch.ones(4, dtype=torch.long)
    assert pgd(Constant(), x, always, eps=0.1, steps=3, restarts=4).model_calls == 1 + 4
    # Without a random start every restart would repeat the first: only one runs.
    assert pgd(model, x, y, eps=0.1, steps=3, restarts=4, random_start=False).model_calls == 4


# --------------------------------------------------------------------------- closed forms
def test_fgsm_closed_form_on_a_linear_model() -> None:
    generator = torch.Generator().manual_seed(0)
    features, n, eps = 20, 32, 0.07
    model = Linear(features, 5).double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(5, features, generator=generator, dtype=torch.float64))
        model.fc.bias.copy_(torch.randn(5, generator=generator, dtype=torch.float64))
    x = torch.rand(n, features, generator=generator, dtype=torch.float64)
    x[:, :3] = 0.0
    x[:, 3:6] = 1.0
    y = torch.randint(0, 5, (n,), generator=generator)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x @ w.T + b, dim=1)
    grad = (p - F.one_hot(y, 5).double()) @ w
    expected = (x + eps * grad.sign()).clamp(0.0, 1.0)
    result = fgsm(model, x, y, eps=eps)
    assert torch.equal(result.x_adv, expected)

    one_step = bim(model, x, y, eps=eps, steps=1, step_size=eps)
    torch.testing.assert_close(one_step.x_adv, expected, atol=1e-12, rtol=0)
    assert torch.equal(one_step.success, result.success)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_pgd_without_random_start_is_bim(kind: str) -> None:
    model = make_model(kind, 2)
    x, y = make_batch(3, 16)
    reference = bim(model, x, y, eps=0.1, steps=6, step_size=0.1)
    for restarts in (1, 3):
        result = pgd(
            model, x, y, eps=0.1, steps=6, step_size=0.1, random_start=False, restarts=restarts
        )
        assert torch.equal(result.x_adv, reference.x_adv)


def test_bim_default_step_is_eps_over_steps() -> None:
    model = make_model("mlp", 1)
    x, y = make_batch(2, 8)
    default = bim(model, x, y, eps=0.2, steps=4)
    explicit = bim(model, x, y, eps=0.2, steps=4, step_size=0.05)
    assert torch.equal(default.x_adv, explicit.x_adv)
    madry = pgd(model, x, y, eps=0.2, steps=4, seed=1)
    explicit = pgd(model, x, y, eps=0.2, steps=4, step_size=2.5 * 0.2 / 4, seed=1)
    assert torch.equal(madry.x_adv, explicit.x_adv)


def test_from_config_matches_the_direct_call() -> None:
    model = make_model("conv", 5)
    x, y = make_batch(6, 8)
    configured = from_config({"name": "bim", "eps": 0.1, "steps": 10})(model, x, y)
    direct = bim(model, x, y, eps=0.1, steps=10)
    assert torch.equal(configured.x_adv, direct.x_adv)
    assert torch.equal(configured.success, direct.success)
    assert configured.model_calls == direct.model_calls
    assert set(ATTACKS) >= {"fgsm", "bim", "pgd", "deepfool", "cw_l2"}


def test_int32_labels() -> None:
    model = make_model("mlp", 7)
    x, y = make_batch(8, 8)
    expected = bim(model, x, y, eps=0.1, steps=3)
    result = bim(model, x, y.int(), eps=0.1, steps=3)
    assert torch.equal(result.x_adv, expected.x_adv)
    assert torch.equal(result.success, expected.success)
    assert torch.equal(fgsm(model, x, y.int(), eps=0.1).x_adv, fgsm(model, x, y, eps=0.1).x_adv)


@pytest.mark.parametrize("case", list(CASES))
def test_runs_under_no_grad(case: str) -> None:
    """Evaluation loops often run under ``torch.no_grad()``; gradient attacks must still work."""
    model = make_model("mlp", 7)
    x, y = make_batch(8, 8)
    expected = run_case(case, model, x, y, 0.1)
    with torch.no_grad():
        result = run_case(case, model, x, y, 0.1)
    assert torch.equal(result.x_adv, expected.x_adv)


@pytest.mark.parametrize("loss", ["margin", "dlr", "smoothed"])
def test_other_losses_run(loss: str) -> None:
    model = make_model("mlp", 9)
    x, y = make_batch(10, 8)
    smoothing = {"method": "adversarial", "alpha": 0.1} if loss == "smoothed" else None
    for attack in (fgsm, bim, pgd):
        result = attack(model, x, y, eps=0.1, loss=loss, smoothing=smoothing)
        assert float(result.linf.max()) <= 0.1 + 1e-6


# --------------------------------------------------------------------------- strength
def trained_toy_model(n: int, generator: torch.Generator) -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP fitted (in eval mode, no gradients left) to ``n`` noisy copies of class centres."""
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    centres = torch.rand(CLASSES, *SHAPE, generator=generator)
    x = (centres[y] + 0.15 * torch.randn(n, *SHAPE, generator=generator)).clamp(0.0, 1.0)
    model = make_model("mlp", 0)
    model.drop.p = 0.0
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval().zero_grad(set_to_none=True)
    return model, x, y


def test_stronger_attacks_are_at_least_as_strong() -> None:
    """PGD with restarts <= BIM <= FGSM in robust accuracy on a trained toy model."""
    model, x, y = trained_toy_model(256, torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = float((model(x).argmax(dim=1) == y).float().mean())
    assert clean > 0.9
    eps = 0.08
    by_fgsm = fgsm(model, x, y, eps=eps).robust_accuracy
    by_bim = bim(model, x, y, eps=eps, steps=10).robust_accuracy
    by_pgd = pgd(model, x, y, eps=eps, steps=10, restarts=3, seed=0).robust_accuracy
    assert by_pgd <= by_bim + 0.02
    assert by_bim <= by_fgsm + 0.02
    assert by_fgsm < clean  # the budget is large enough to matter


# --------------------------------------------------------------------------- foolbox
def test_bim_and_l2_pgd_match_foolbox() -> None:
    fb = pytest.importorskip("foolbox")
    model = make_model("conv", 11).eval()
    x, y = make_batch(12, 16)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    for eps, steps, step in [(0.1, 10, 0.01), (0.3, 5, 0.1), (0.03, 20, 0.2 * 0.03)]:
        foolbox_bim = fb.attacks.LinfBasicIterativeAttack(
            abs_stepsize=step, steps=steps, random_start=False
        )
        raw, _, succeeded = foolbox_bim(fmodel, x, y, epsilons=eps)
        ours = bim(model, x, y, eps=eps, steps=steps, step_size=step)
        assert float((raw - ours.x_adv).abs().max()) <= 1e-6
        assert torch.equal(succeeded, ours.success)
    foolbox_l2 = fb.attacks.L2ProjectedGradientDescentAttack(
        abs_stepsize=0.2, steps=10, random_start=False
    )
    raw, _, _ = foolbox_l2(fmodel, x, y, epsilons=1.0)
    ours = pgd(model, x, y, eps=1.0, norm="l2", steps=10, step_size=0.2, random_start=False)
    assert float((raw - ours.x_adv).abs().max()) <= 1e-5


# --------------------------------------------------------------------------- validation
BAD_PARAMS = [
    (fgsm, {"eps": -0.1}, "eps must be"),
    (fgsm, {"eps": 1.5}, "at most 1"),
    (fgsm, {"eps": math.nan}, "eps must be"),
    (fgsm, {"eps": 0.1, "loss": "hinge"}, "loss must be"),
    (bim, {"eps": -0.1}, "eps must be"),
    (bim, {"eps": 1.5}, "at most 1"),
    (bim, {"eps": 0.1, "steps": 0}, "steps must be"),
    (bim, {"eps": 0.1, "steps": 2.5}, "steps must be"),
    (bim, {"eps": 0.1, "step_size": 0.0}, "step_size must be"),
    (bim, {"eps": 0.1, "step_size": -1.0}, "step_size must be"),
    (bim, {"eps": 0.1, "loss": "hinge"}, "loss must be"),
    (pgd, {"eps": -0.1}, "eps must be"),
    (pgd, {"eps": 1.5}, "at most 1"),
    (pgd, {"eps": -1.0, "norm": "l2"}, "eps must be"),
    (pgd, {"eps": 0.1, "norm": "l1"}, "norm must be"),
    (pgd, {"eps": 0.1, "steps": 0}, "steps must be"),
    (pgd, {"eps": 0.1, "restarts": 0}, "restarts must be"),
    (pgd, {"eps": 0.1, "step_size": math.inf}, "step_size must be"),
    (pgd, {"eps": 0.1, "seed": 1.5}, "seed must be"),
    (pgd, {"eps": 0.1, "random_start": "yes"}, "random_start must be"),
    (pgd, {"eps": 0.1, "loss": "hinge"}, "loss must be"),
]


@pytest.mark.parametrize("attack,params,message", BAD_PARAMS)
def test_bad_parameters(attack, params: dict, message: str) -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=message):
        attack(model, x, y, **params)


def test_pgd_l2_budget_may_exceed_one() -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 3)
    assert float(pgd(model, x, y, eps=2.0, norm="l2", steps=2).l2.max()) <= 2.0 + 1e-5


@pytest.mark.parametrize(
    "config,message",
    [
        ({"name": "nope"}, "attack must be one of"),
        ({"name": "bim", "eps": 0.1, "stepz": 3}, "takes no parameter"),
        ({"eps": 0.1}, "'name' key"),
    ],
)
def test_bad_configs(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_config(config)


def _bad_inputs(case: str):
    x, y = make_batch(0, 4)
    model = make_model("linear", 0)
    above = x.clone()
    above[0, 0, 0, 0] = 1.01
    below = x.clone()
    below[-1, 0, 0, 0] = -1e-3
    return {
        "wrong shape (N,)": (WrongShape("flat"), x, y, "logits of shape"),
        "wrong shape (N, K, 1)": (WrongShape("extra"), x, y, "logits of shape"),
        "label count": (model, x, y[:3], "labels but x has"),
        "float labels": (model, x, y.float(), "integer tensor"),
        "2-D labels": (model, x, y[:, None], "integer tensor"),
        "label out of range": (model, x, torch.full_like(y, CLASSES), "labels must lie"),
        "above 1": (model, above, y, r"\[0, 1\]"),
        "below 0": (model, below, y, r"\[0, 1\]"),
        "integer inputs": (model, (x * 255).to(torch.uint8), y, "floating-point"),
    }[case]


@pytest.mark.parametrize(
    "bad",
    [
        "wrong shape (N,)",
        "wrong shape (N, K, 1)",
        "label count",
        "float labels",
        "2-D labels",
        "label out of range",
        "above 1",
        "below 0",
        "integer inputs",
    ],
)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs(case: str, bad: str) -> None:
    model, x, y, message = _bad_inputs(bad)
    attack, params, norm = CASES[case]
    if norm is not None:
        params = {**params, "eps": 0.1}
    x_copy = x.clone()
    try:
        with pytest.raises(ValueError, match=message):
            attack(model, x, y, **params)
    except NotImplementedError:
        pytest.skip(f"{case} is still a placeholder")
    assert torch.equal(x, x_copy)


def test_every_registered_attack_is_covered_in_every_norm() -> None:
    """The contract test above runs every attack in every norm it takes."""
    names = {attack: name for name, attack in ATTACKS.items()}

    def default(name: str) -> str:
        return (attacks.NORMS[name] or ("linf",))[0]

    covered = {
        (names[attack], params.get("norm", default(names[attack])))
        for attack, params, _ in CASES.values()
    }
    for name, norms in attacks.NORMS.items():
        for norm in norms or ("linf",):
            assert (name, norm) in covered, f"{name} in {norm} is not in CASES"


def test_dlr_needs_three_classes_and_smoothed_needs_the_smoothing() -> None:
    from advls.attacks import attack_loss

    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="dlr loss needs at least 3 classes"):
        attack_loss("dlr")(logits, labels)
    with pytest.raises(ValueError, match="needs the model's smoothing"):
        attack_loss("smoothed")
    assert attack_loss("smoothed", method="adversarial", alpha=0.1)(logits, labels).shape == (4,)


def test_success_rate_is_undefined_without_correct_points() -> None:
    import math

    from advls.evaluate import attack_dataset

    model = make_model("linear", 0)
    x, _ = make_batch(0, 6)
    wrong = (model(x).argmax(1) + 1) % model(x).shape[1]
    summary, _ = attack_dataset(functools.partial(fgsm, eps=0.1), model, x, wrong)
    assert summary.clean_accuracy == 0.0 and summary.robust_accuracy == 0.0
    assert math.isnan(summary.success_rate)
