"""APGD (Croce & Hein 2020): checkpoints, step halving, best-point tracking, DLR invariance.

The contract every attack meets (bounds, no mutation, mode restored, ...) is checked for APGD
by ``test_attack_invariants.py`` (its ``apgd-*`` cases); this file checks what is APGD's own.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import ATTACKS, apgd, attack_loss, from_config, pgd
from advls.attacks.apgd import _checkpoints

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: thread hand-offs would cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- models and data
class MLP(nn.Module):
    def __init__(self, features: int = 36, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, 24)
        self.fc2 = nn.Linear(24, classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x.flatten(1) * 2 - 1)))


class Affine(nn.Module):
    """``scale * model(x) + shift``: the same classifier, with shifted and scaled logits."""

    def __init__(self, model: nn.Module, scale: float, shift: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale + self.shift


class Recording(nn.Module):
    """Records every input batch the attack feeds the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.model(x)


class Constant(nn.Module):
    """Always predicts class 0; zero gradient."""

    def forward(self, x: Tensor) -> Tensor:
        zeros = x.flatten(1).sum(dim=1, keepdim=True) * 0.0
        return zeros + torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype)


def batch(seed: int, n: int, dtype: torch.dtype = torch.float32, classes: int = 4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 6, 6), generator=generator, dtype=dtype)
    x[:, :, 0] = 0.0
    x[:, :, -1] = 1.0
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def labelled(model: nn.Module, seed: int, n: int, dtype: torch.dtype = torch.float32):
    """Inputs labelled by the model itself: all clean points are correctly classified."""
    x, _ = batch(seed, n, dtype)
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


# --------------------------------------------------------------------------- checkpoints
def _checkpoints_by_fractions(steps: int) -> tuple[int, ...]:
    """The paper's formula in exact rational arithmetic (an independent implementation)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    w = sorted({math.ceil(q * steps) for q in p})
    return tuple(v for v in w if v < steps)


def test_checkpoints_for_100_steps_by_hand() -> None:
    # p: 0, .22, .41 (+.19), .57 (+.16), .70 (+.13), .80 (+.10), .87 (+.07), .93 (+.06),
    # .99 (+.06); the next, 1.05, is past the end. At 100 steps w_j = 100 p_j.
    assert _checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    # ceil(10 p): 0, 2.2->3, 4.1->5, 5.7->6, 7, 8, 8.7->9, 9.3->10 and 9.9->10 are not < 10.
    assert _checkpoints(10) == (0, 3, 5, 6, 7, 8, 9)
    # ceil(5 p): 0, 1.1->2, 2.05->3, 2.85->3 (repeat), 3.5->4, 4, then 5s (the end).
    assert _checkpoints(5) == (0, 2, 3, 4)
    assert _checkpoints(1) == (0,)
    assert _checkpoints(200) == (0, 44, 82, 114, 140, 160, 174, 186, 198)


def test_checkpoints_match_exact_arithmetic() -> None:
    for steps in range(1, 1001):
        assert _checkpoints(steps) == _checkpoints_by_fractions(steps), steps


# --------------------------------------------------------------------------- DLR invariance
@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    classes=st.integers(3, 12),
    shift=st.floats(-1e3, 1e3),
    log_scale=st.floats(-3.0, 3.0),
)
def test_dlr_is_invariant_to_shifting_and_scaling_logits(
    seed: int, classes: int, shift: float, log_scale: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, classes, generator=generator, dtype=torch.float64) * 5
    # Keep the denominator z_pi1 - z_pi3 away from 0 (there the ratio is ill-conditioned):
    # where it is small, raise the top logit by 1.
    top = logits.sort(dim=1, descending=True).values
    close = (top[:, 0] - top[:, 2]) < 0.1
    logits[close, logits[close].argmax(dim=1)] += 1.0
    labels = torch.randint(0, classes, (16,), generator=generator)
    dlr = attack_loss("dlr")
    scale = 10.0**log_scale
    reference = dlr(logits, labels)
    torch.testing.assert_close(dlr(logits + shift, labels), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dlr(logits * scale, labels), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dlr(logits * scale + shift, labels), reference, rtol=1e-6, atol=1e-6)
    # It is not invariant to everything: moving one logit changes it.
    moved = logits.clone()
    moved[torch.arange(len(labels)), labels] += 1.0
    assert not torch.allclose(dlr(moved, labels), reference)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.15)])
@pytest.mark.parametrize("scale,shift", [(3.7, 0.0), (1.0, -42.5), (0.05, 7.0)])
def test_apgd_dlr_does_not_see_an_affine_change_of_the_logits(
    norm: str, eps: float, scale: float, shift: float
) -> None:
    model = MLP(seed=1).double()
    x, y = labelled(model, 2, 24, torch.float64)
    plain = apgd(model, x, y, eps=eps, norm=norm, steps=30, loss="dlr", seed=3)
    moved = apgd(
        Affine(model, scale, shift), x, y, eps=eps, norm=norm, steps=30, loss="dlr", seed=3
    )
    assert 0 < int(plain.success.sum()) < 24  # some fooled, some not: both paths matter
    torch.testing.assert_close(moved.x_adv, plain.x_adv, rtol=0, atol=1e-9)
    assert torch.equal(moved.success, plain.success)


# --------------------------------------------------------------------------- the iterates
def test_returns_the_first_misclassified_iterate_or_the_best_one() -> None:
    """Replays the iterates (through a recording loss) and checks the choice per example."""
    model = MLP(seed=4)
    x, y = labelled(model, 5, 32)
    seen: list[tuple[Tensor, Tensor]] = []

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        values = F.cross_entropy(logits, labels, reduction="none")
        seen.append((logits.detach().clone(), values.detach().clone()))
        return values

    result = apgd(model, x, y, eps=0.02, steps=25, loss=loss, seed=0)
    assert len(seen) == 26  # x^(0) .. x^(25)
    logits = torch.stack([z for z, _ in seen])  # (iterates, n, classes)
    losses = torch.stack([v for _, v in seen])  # (iterates, n)
    fooled = logits.argmax(dim=2) != y
    with torch.no_grad():
        final_logits = model(result.x_adv)
        final_loss = F.cross_entropy(final_logits, y, reduction="none")
    assert 0 < int(result.success.sum()) < 32
    assert torch.equal(result.success, fooled.any(dim=0))
    for i in range(32):
        if fooled[:, i].any():
            first = int(fooled[:, i].nonzero()[0])
            torch.testing.assert_close(final_logits[i], logits[first, i])
        else:
            # The best iterate; its loss beats the start's and is the running maximum's end.
            torch.testing.assert_close(final_loss[i], losses[:, i].max())
            assert float(final_loss[i]) >= float(losses[0, i])
            running = losses[:, i].cummax(dim=0).values
            assert bool((running[1:] >= running[:-1]).all())
            assert float(running[-1]) > float(losses[0, i])  # the attack made progress


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
def test_iterates_follow_the_momentum_update(norm: str, eps: float) -> None:
    """Replays the iterates before the first checkpoint (eta = 2 eps throughout):
    ``z = P(x_k + eta s(grad))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a) (x_k - x_{k-1}))``
    with ``a = 0.75``, and ``x_1 = z`` for the first step."""
    model = MLP(seed=17).double()
    x, y = labelled(model, 18, 8, torch.float64)
    recording = Recording(model)
    steps = 30  # checkpoints 0, 7, 13, ...: x_1 .. x_7 come from the same step size
    apgd(recording, x, y, eps=eps, norm=norm, steps=steps, seed=0)
    iterates = recording.inputs

    def project(point: Tensor) -> Tensor:
        if norm == "linf":
            return torch.minimum(torch.maximum(point, x - eps), x + eps).clamp(0.0, 1.0)
        delta = point - x
        factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)

    def direction(point: Tensor) -> Tensor:
        leaf = point.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), y, reduction="sum"), leaf)
        if norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    assert _checkpoints(steps)[1] == 7
    for k in range(7):
        current = iterates[k]
        z = project(current + 2 * eps * direction(current))
        if k == 0:
            expected = z
        else:
            momentum = current - iterates[k - 1]
            expected = project(current + 0.75 * (z - current) + 0.25 * momentum)
        torch.testing.assert_close(iterates[k + 1], expected, rtol=0, atol=1e-12)


def test_step_halving_converges_where_a_fixed_step_oscillates() -> None:
    """A concave loss peaked inside the ball: sign steps of a fixed size bounce around the
    peak; APGD's checkpoints halve the step (and restart from the best point) and close in."""

    class Identity(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            flat = x.flatten(1)
            return torch.cat([10.0 + 0.0 * flat[:, :1], flat], dim=1)  # class 0 always wins

    generator = torch.Generator().manual_seed(0)
    n, d, eps = 16, 8, 0.2
    x = 0.3 + 0.4 * torch.rand(n, 1, d, generator=generator, dtype=torch.float64)
    peak = x.flatten(1) + 0.3 * (torch.rand(n, d, generator=generator, dtype=torch.float64) - 0.5)
    y = torch.zeros(n, dtype=torch.long)

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        return -((logits[:, 1:] - peak) ** 2).sum(dim=1)

    target = torch.minimum(torch.maximum(peak, x.flatten(1) - eps), x.flatten(1) + eps)
    ours = apgd(Identity(), x, y, eps=eps, steps=100, loss=loss, seed=0)
    assert float((ours.x_adv.flatten(1) - target).abs().max()) < 0.01
    fixed = pgd(Identity(), x, y, eps=eps, steps=100, step_size=0.1, loss=loss, seed=0)
    assert float((fixed.x_adv.flatten(1) - target).abs().max()) > 0.05


# --------------------------------------------------------------------------- closed forms
def _binary_linear(seed: int, d: int = 20) -> tuple[nn.Linear, Tensor]:
    """Two classes; class 0 wins by a margin no budget here can overturn, so no example is
    ever fooled and the attack must return the loss maximiser."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(0.2 * torch.randn(2, d, generator=generator, dtype=torch.float64))
        model.bias.copy_(torch.tensor([10.0, 0.0], dtype=torch.float64))
    direction = (model.weight[1] - model.weight[0]).detach()
    return model, direction


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_optimum_on_a_linear_model(seed: int) -> None:
    model, direction = _binary_linear(seed)
    generator = torch.Generator().manual_seed(seed + 10)
    x = torch.rand(32, 20, generator=generator, dtype=torch.float64)
    x[:, :3] = 0.0
    x[:, 3:6] = 1.0
    y = torch.zeros(32, dtype=torch.long)
    eps = 0.1
    # CE rises with (w1 - w0) . x: the optimum in the ball and the box is a clipped corner.
    expected = (x + eps * direction.sign()).clamp(0.0, 1.0)
    result = apgd(model, x, y, eps=eps, steps=20, seed=seed)
    assert not result.success.any()
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-12)


def test_l2_optimum_on_a_linear_model() -> None:
    model, direction = _binary_linear(3)
    generator = torch.Generator().manual_seed(4)
    x = 0.35 + 0.3 * torch.rand(32, 20, generator=generator, dtype=torch.float64)
    y = torch.zeros(32, dtype=torch.long)
    eps = 0.3  # every coordinate of the step is below 0.3: the box is not active
    expected = x + eps * direction / direction.norm()
    result = apgd(model, x, y, eps=eps, norm="l2", steps=100, seed=0)
    assert not result.success.any()
    assert float((result.x_adv - expected).norm(dim=1).max()) < 1e-4
    torch.testing.assert_close(result.l2, torch.full_like(result.l2, eps), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- randomness
@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.8)])
def test_seed_is_reproducible_and_private(norm: str, eps: float) -> None:
    model = MLP(seed=6)
    x, y = batch(7, 16)
    rng = torch.get_rng_state()
    first = apgd(model, x, y, eps=eps, norm=norm, steps=10, restarts=2, seed=7)
    second = apgd(model, x, y, eps=eps, norm=norm, steps=10, restarts=2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.success, second.success)
    other = apgd(model, x, y, eps=eps, norm=norm, steps=10, restarts=2, seed=8)
    assert not torch.equal(first.x_adv, other.x_adv)


def test_without_a_seed_the_global_rng_draws_the_start() -> None:
    model = MLP(seed=6)
    x, y = batch(7, 8)
    torch.manual_seed(123)
    first = apgd(model, x, y, eps=0.05, steps=3)
    torch.manual_seed(123)
    second = apgd(model, x, y, eps=0.05, steps=3)
    assert torch.equal(first.x_adv, second.x_adv)


# --------------------------------------------------------------------------- restarts
def test_restarts_attack_only_the_examples_not_yet_fooled() -> None:
    model = MLP(seed=8)
    x, y = labelled(model, 9, 40)
    steps, eps = 6, 0.02
    one = apgd(model, x, y, eps=eps, steps=steps, seed=2)
    assert 0 < int(one.success.sum()) < 40
    recording = Recording(model)
    more = apgd(recording, x, y, eps=eps, steps=steps, restarts=3, seed=2)
    sizes = [len(batch_) for batch_ in recording.inputs]
    left = int((~one.success).sum())
    # Run 1: the whole batch (steps + 1 evaluations); run 2: only the examples run 1 left.
    assert sizes[: steps + 1] == [40] * (steps + 1)
    assert sizes[steps + 1 : 2 * (steps + 1)] == [left] * (steps + 1)
    second_run = recording.inputs[steps + 1]
    todo = (~one.success).nonzero().squeeze(1)
    gap = (second_run - x[todo]).flatten(1).abs().amax(dim=1)
    assert float(gap.max()) <= eps + 1e-6  # the starts lie around the right examples
    assert sizes[-1] == 40  # the final scoring
    assert more.model_calls == len(sizes)
    # Run 1 is the single run (same generator, drawn first): its successes are kept as is.
    assert torch.equal(more.x_adv[one.success], one.x_adv[one.success])
    assert bool((more.success | ~one.success).all())
    assert int(more.success.sum()) >= int(one.success.sum())


def test_restarts_keep_the_highest_loss_point_of_examples_never_fooled() -> None:
    model = MLP(seed=8)
    x, y = labelled(model, 9, 40)
    result = apgd(model, x, y, eps=0.02, steps=6, restarts=4, seed=2)
    single_run = apgd(model, x, y, eps=0.02, steps=6, seed=2)
    assert (~result.success).any()
    with torch.no_grad():
        final = F.cross_entropy(model(result.x_adv), y, reduction="none")
        single = F.cross_entropy(model(single_run.x_adv), y, reduction="none")
    never = ~result.success
    assert bool((final[never] >= single[never] - 1e-6).all())


def test_model_calls() -> None:
    model = MLP(seed=0, classes=3)
    x, y = batch(0, 4, classes=3)
    for steps in (1, 7):
        assert apgd(model, x, y, eps=0.1, steps=steps, seed=0).model_calls == steps + 2
    never = torch.zeros(4, dtype=torch.long)  # the constant prediction: no run fools any
    assert apgd(Constant(), x, never, eps=0.1, steps=3, restarts=4).model_calls == 4 * 4 + 1
    always = torch.ones(4, dtype=torch.long)  # always wrong: one run, then stop
    assert apgd(Constant(), x, always, eps=0.1, steps=3, restarts=4).model_calls == 4 + 1


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    "params",
    [{}, {"norm": "l2"}, {"loss": "dlr"}, {"restarts": 3}, {"norm": "l2", "restarts": 2}],
    ids=["linf", "l2", "dlr", "restarts", "l2-restarts"],
)
@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_zero_budget_returns_the_input(params: dict, seed: int) -> None:
    model = MLP(seed=seed % 1000)
    x, y = batch(seed, 6)
    result = apgd(model, x, y, eps=0.0, steps=5, seed=seed, **params)
    assert torch.equal(result.x_adv, x)
    with torch.no_grad():
        assert torch.equal(result.success, model(x).argmax(dim=1) != y)
    assert float(result.l2.max()) == 0.0 and float(result.linf.max()) == 0.0


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.5)])
def test_points_stay_in_the_ball_and_the_box_and_x_is_untouched(norm: str, eps: float) -> None:
    model = MLP(seed=11)
    x, y = batch(12, 32)
    x_copy, y_copy = x.clone(), y.clone()
    recording = Recording(model)
    result = apgd(recording, x, y, eps=eps, norm=norm, steps=15, restarts=2, seed=0)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    for inputs in recording.inputs:  # every iterate, not only the answer
        assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0
    if norm == "linf":
        assert float(result.linf.max()) <= eps + 1e-6
    else:
        assert float(result.l2.max()) <= eps + 1e-5


@pytest.mark.parametrize("loss", ["margin", "dlr", "smoothed"])
def test_other_losses(loss: str) -> None:
    model = MLP(seed=13)
    x, y = batch(14, 16)
    smoothing = {"method": "adversarial", "alpha": 0.1} if loss == "smoothed" else None
    result = apgd(model, x, y, eps=0.1, steps=10, loss=loss, smoothing=smoothing, seed=0)
    assert float(result.linf.max()) <= 0.1 + 1e-6
    assert result.success_rate > 0.0


def test_from_config_and_registry() -> None:
    model = MLP(seed=15)
    x, y = batch(16, 8)
    assert ATTACKS["apgd"] is apgd
    configured = from_config({"name": "apgd", "eps": 0.1, "steps": 5, "seed": 1})(model, x, y)
    direct = apgd(model, x, y, eps=0.1, steps=5, seed=1)
    assert torch.equal(configured.x_adv, direct.x_adv)


def test_stronger_than_pgd_with_the_same_budget_of_steps() -> None:
    """On a trained toy model, APGD-CE fools at least as many points as PGD with as many steps."""
    generator = torch.Generator().manual_seed(0)
    n, classes = 256, 4
    y = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.rand(classes, 1, 6, 6, generator=generator)
    x = (centres[y] + 0.15 * torch.randn(n, 1, 6, 6, generator=generator)).clamp(0.0, 1.0)
    model = MLP(seed=0, classes=classes)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    eps = 0.08
    by_pgd = pgd(model, x, y, eps=eps, steps=20, seed=0).robust_accuracy
    by_apgd = apgd(model, x, y, eps=eps, steps=20, seed=0).robust_accuracy
    by_dlr = apgd(model, x, y, eps=eps, steps=20, loss="dlr", seed=0).robust_accuracy
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert by_pgd < clean  # the budget matters
    assert by_apgd <= by_pgd + 0.01
    assert by_dlr <= by_pgd + 0.02


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "params,message",
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": 1.5}, "at most 1"),
        ({"eps": math.nan}, "eps must be"),
        ({"eps": -1.0, "norm": "l2"}, "eps must be"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be"),
        ({"eps": 0.1, "steps": 0}, "steps must be"),
        ({"eps": 0.1, "steps": 2.5}, "steps must be"),
        ({"eps": 0.1, "restarts": 0}, "restarts must be"),
        ({"eps": 0.1, "rho": 0.0}, r"rho must be .*\(0, 1\)"),
        ({"eps": 0.1, "rho": 1.0}, r"rho must be .*\(0, 1\)"),
        ({"eps": 0.1, "rho": -0.5}, r"rho must be .*\(0, 1\)"),
        ({"eps": 0.1, "rho": math.nan}, r"rho must be .*\(0, 1\)"),
        ({"eps": 0.1, "rho": True}, r"rho must be .*\(0, 1\)"),
        ({"eps": 0.1, "loss": "hinge"}, "loss must be"),
        ({"eps": 0.1, "loss": "smoothed"}, "needs the model's smoothing"),
        ({"eps": 0.1, "seed": 1.5}, "seed must be"),
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    model = MLP(seed=0)
    x, y = batch(0, 3)
    with pytest.raises(ValueError, match=message):
        apgd(model, x, y, **params)


def test_l2_budget_may_exceed_one() -> None:
    model = MLP(seed=0)
    x, y = batch(0, 3)
    assert float(apgd(model, x, y, eps=3.0, norm="l2", steps=3).l2.max()) <= 3.0 + 1e-5


def test_a_callable_loss_must_be_per_example() -> None:
    model = MLP(seed=0)
    x, y = batch(0, 3)
    with pytest.raises(ValueError, match="per example"):
        apgd(model, x, y, eps=0.1, steps=2, loss=lambda z, t: F.cross_entropy(z, t))


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_apgd_is_at_least_as_strong_as_pgd40_on_mnist(real_data: Path, tmp_path: Path) -> None:
    from advls import data as datasets
    from advls.train import TrainConfig, train

    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=20000
    )
    trained = train(config, tmp_path / "run", data_dir=real_data, device="cpu", progress=False)
    model = trained.model.eval()
    test = datasets.load("mnist", "test", real_data, download=False, progress=False)
    x = test.images[:500].float() / 255.0
    y = test.labels[:500]
    eps = 0.1
    by_pgd = pgd(model, x, y, eps=eps, steps=40, seed=0).robust_accuracy
    by_ce = apgd(model, x, y, eps=eps, steps=100, seed=0).robust_accuracy
    by_dlr = apgd(model, x, y, eps=eps, steps=100, loss="dlr", seed=0).robust_accuracy
    print(f"robust accuracy at eps {eps}: PGD-40 {by_pgd}, APGD-CE {by_ce}, APGD-DLR {by_dlr}")
    assert by_ce <= by_pgd + 0.005
    assert by_dlr <= by_pgd + 0.005
