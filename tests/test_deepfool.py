"""Tests for advls.attacks.deepfool: closed form on linear models, batching, contract, foolbox."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from advls.attacks import deepfool
from advls.attacks.geometry import norms

OVERSHOOT = 0.02
EXTRA = 1e-4  # foolbox's step extension: every step is |f_k - f_y| / ||w||_q + 1e-4 long


# --------------------------------------------------------------------------- models
def linear_model(dim: int = 20, classes: int = 5, seed: int = 0) -> nn.Linear:
    """``W x + b`` in float64 with every logit equal at x = 0.5: boundaries run near 0.5."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
        model.bias.copy_(-model.weight.sum(dim=1) * 0.5)
    return model


def near_centre(n: int, dim: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.45 + 0.1 * torch.rand(n, dim, generator=gen, dtype=torch.float64)


class SqrtGap(nn.Module):
    """Two classes with ``f_1 - f_0 = sqrt(x) - sqrt(0.5)``: concave, so every linearised
    step falls short of the boundary at x = 0.5 and DeepFool needs several iterations."""

    def forward(self, x: Tensor) -> Tensor:
        gap = x.clamp_min(1e-6).sqrt() - math.sqrt(0.5)
        return torch.cat([torch.zeros_like(gap), gap], dim=1)


def tanh_mlp(seed: int = 0, dim: int = 8, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, classes)).double()


def blobs(n: int, seed: int, dim: int = 10, classes: int = 3) -> tuple[Tensor, Tensor]:
    """Separable Gaussian blobs inside [0, 1]^dim."""
    gen = torch.Generator().manual_seed(seed)
    centres = 0.25 + 0.5 * torch.rand(classes, dim, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = (centres[y] + 0.06 * torch.randn(n, dim, generator=gen)).clamp(0.0, 1.0)
    return x, y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """A small ReLU MLP trained on the blobs (seeded), and held-out points it is tested on."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    x, y = blobs(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x_test, y_test = blobs(200, seed=2)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean()
    assert accuracy > 0.95, "the toy model failed to train; the attack tests would mean nothing"
    return model, x_test, y_test


def expected_linear_step(
    model: nn.Linear, x: Tensor, y: Tensor, norm: str, allowed: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The exact minimal perturbation of a linear model, per example, written out by hand.

    Returns (distance to the nearest boundary, the unit-free step direction, the nearest k).
    ``allowed[i, k]`` restricts which classes count (all but y by default).
    """
    weight = model.weight.detach()
    logits = model(x).detach()
    gaps = (logits - logits.gather(1, y[:, None])).abs()  # |f_k - f_y|
    dirs = weight[None, :, :] - weight[y][:, None, :]  # w_k - w_y, (N, K, D)
    dual = dirs.norm(p=2, dim=2) if norm == "l2" else dirs.abs().sum(dim=2)
    dist = gaps / dual
    mask = torch.ones_like(dist, dtype=torch.bool) if allowed is None else allowed.clone()
    mask[torch.arange(len(y)), y] = False
    dist = dist.masked_fill(~mask, math.inf)
    best = dist.argmin(dim=1)
    w = dirs[torch.arange(len(y)), best]
    direction = w / w.norm(dim=1, keepdim=True) if norm == "l2" else w.sign()
    return dist.gather(1, best[:, None]).squeeze(1), direction, best


# --------------------------------------------------------------------------- closed form
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_gets_the_exact_minimal_perturbation_in_one_step(norm: str) -> None:
    model = linear_model()
    x = near_centre(64, 20)
    y = model(x).argmax(dim=1).detach()  # every example starts correctly classified
    dist, direction, nearest = expected_linear_step(model, x, y, norm)
    expected = x + (1 + OVERSHOOT) * (dist + EXTRA)[:, None] * direction
    assert expected.min() > 0 and expected.max() < 1, "test setup: clipping must not bind"

    result = deepfool(model, x, y, norm=norm, candidates=5, overshoot=OVERSHOOT, steps=1)

    # The 1e-8 floors foolbox adds to the norms change the step by ~1e-9 relative.
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-8)
    size = result.l2 if norm == "l2" else result.linf
    torch.testing.assert_close(size, (1 + OVERSHOOT) * (dist + EXTRA), rtol=1e-7, atol=0)
    assert result.success.all()
    # Without overshoot and the 1e-4 extension the step lands exactly on f_k = f_y.
    on_boundary = x + dist[:, None] * direction
    logits = model(on_boundary).detach()
    rows = torch.arange(len(y))
    torch.testing.assert_close(logits[rows, nearest], logits[rows, y], rtol=0, atol=1e-10)
    if norm == "l2":
        weight = model.weight.detach()
        w = weight[nearest] - weight[y]
        cosine = nn.functional.cosine_similarity(result.x_adv - x, w, dim=1)
        torch.testing.assert_close(cosine, torch.ones_like(cosine), rtol=0, atol=1e-12)

    # More steps change nothing: the linear model is fooled after one, so the loop stops
    # (clean scoring + step 1 + the check that ends the loop + scoring the result).
    again = deepfool(model, x, y, norm=norm, candidates=5, overshoot=OVERSHOOT, steps=50)
    torch.testing.assert_close(again.x_adv, result.x_adv, rtol=0, atol=0)
    assert again.model_calls == 4
    assert result.model_calls == 3


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_candidates_restrict_the_classes_to_the_most_likely(norm: str) -> None:
    model = linear_model(classes=6, seed=3)
    x = near_centre(64, 20, seed=4)
    logits = model(x).detach()
    y = logits.argmax(dim=1)
    runner_up = logits.scatter(1, y[:, None], -math.inf).argmax(dim=1)
    allowed = nn.functional.one_hot(runner_up, 6).bool()
    dist, direction, _ = expected_linear_step(model, x, y, norm, allowed)
    expected = x + (1 + OVERSHOOT) * (dist + EXTRA)[:, None] * direction

    result = deepfool(model, x, y, norm=norm, candidates=2, steps=1)
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-8)
    full = deepfool(model, x, y, norm=norm, candidates=6, steps=1)
    # The restriction matters for some examples (else this test proves nothing) ...
    assert (full.x_adv - result.x_adv).abs().amax() > 1e-3
    # ... and never finds a nearer boundary than the search over every class.
    size = (lambda r: r.l2) if norm == "l2" else (lambda r: r.linf)
    assert (size(full) <= size(result) + 1e-12).all()
    # candidates beyond K is the same as K.
    many = deepfool(model, x, y, norm=norm, candidates=100, steps=1)
    torch.testing.assert_close(many.x_adv, full.x_adv, rtol=0, atol=0)


def test_concave_boundary_takes_several_steps_and_failures_keep_their_last_point() -> None:
    model = SqrtGap()
    x = torch.tensor([[0.1], [0.2], [0.3]], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)

    short = deepfool(model, x, y, steps=1)
    assert not short.success.any()
    # The first linearised step, by hand: f = sqrt(x) - sqrt(.5), f' = 1 / (2 sqrt(x)).
    gap = x.sqrt() - math.sqrt(0.5)
    slope = 1 / (2 * x.sqrt())
    first = x + (1 + OVERSHOOT) * (gap.abs() / slope + EXTRA)
    torch.testing.assert_close(short.x_adv, first, rtol=0, atol=1e-7)
    assert (short.x_adv < 0.5).all()

    done = deepfool(model, x, y, steps=50)
    assert done.success.all()
    # Converges to just past the boundary at 0.5, not far beyond it.
    assert (done.x_adv > 0.5).all() and (done.x_adv < 0.5 + 0.02).all()
    assert 4 < done.model_calls < 50


# --------------------------------------------------------------------------- batching
@pytest.mark.parametrize(("norm", "loss"), [("l2", "logits"), ("linf", "crossentropy")])
def test_batch_gives_the_same_points_as_each_example_alone(norm: str, loss: str) -> None:
    model = tanh_mlp()
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(16, 8, generator=gen, dtype=torch.float64)
    y = model(x).argmax(dim=1).detach()
    y[:3] = (y[:3] + 1) % 4  # a few start misclassified
    batch = deepfool(model, x, y, norm=norm, loss=loss, candidates=3)
    steps_taken = set()
    for i in range(len(x)):
        alone = deepfool(model, x[i : i + 1], y[i : i + 1], norm=norm, loss=loss, candidates=3)
        torch.testing.assert_close(batch.x_adv[i : i + 1], alone.x_adv, rtol=0, atol=1e-6)
        assert batch.success[i] == alone.success[0]
        steps_taken.add(alone.model_calls)
    # Examples needed different numbers of iterations, so early stopping was exercised.
    assert len(steps_taken) >= 3


def test_losses_agree() -> None:
    model = tanh_mlp(seed=2)
    x = torch.rand(32, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = model(x).argmax(dim=1).detach()
    logits = deepfool(model, x, y, loss="logits")
    ce = deepfool(model, x, y, loss="crossentropy")
    # log-softmax differences are logit differences: only rounding separates the two.
    torch.testing.assert_close(ce.x_adv, logits.x_adv, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_contract(norm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)
    )
    model.train()
    model[0].weight.requires_grad_(False)  # a frozen layer must stay frozen
    x = torch.rand(40, 8, generator=torch.Generator().manual_seed(3))
    x[0] = 0.0  # points on the box's faces
    x[1] = 1.0
    model.eval()
    y = model(x).argmax(dim=1).detach()
    model.train()
    y[:5] = (y[:5] + 1) % 4  # misclassified from the start
    x_before, y_before = x.clone(), y.clone()

    result = deepfool(model, x, y, norm=norm, steps=30)

    assert model.training and model[1].training
    assert not model[0].weight.requires_grad and model[4].weight.requires_grad
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        fooled = model(result.x_adv).argmax(dim=1) != y
    assert torch.equal(result.success, fooled)
    assert result.success[:5].all()
    assert torch.equal(result.x_adv[:5], x[:5])
    l2, linf = norms(result.x_adv - x)
    torch.testing.assert_close(result.l2, l2)
    torch.testing.assert_close(result.linf, linf)
    assert result.success.float().mean() > 0.9
    assert not result.x_adv.requires_grad


def test_empty_batch_and_all_misclassified() -> None:
    model = tanh_mlp()
    empty = deepfool(model, torch.empty(0, 8, dtype=torch.float64), torch.empty(0).long())
    assert empty.x_adv.shape == (0, 8) and empty.success.shape == (0,)
    x = torch.rand(5, 8, dtype=torch.float64)
    wrong = (model(x).argmax(dim=1).detach() + 1) % 4
    result = deepfool(model, x, wrong)
    assert torch.equal(result.x_adv, x) and result.success.all()
    assert result.model_calls == 2  # scoring the clean batch and the result: no iteration


# --------------------------------------------------------------------------- trained model
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_trained_model_is_fooled_with_near_minimal_perturbations(
    trained: tuple[nn.Module, Tensor, Tensor], norm: str
) -> None:
    model, x, y = trained
    result = deepfool(model, x, y, norm=norm)
    assert result.success.float().mean() >= 0.95
    # Near-minimal: along each example's own perturbation the label flips late. (DeepFool
    # overshoots some examples on a ReLU net, foolbox alike, so only the median is robust;
    # here it is ~0.87, and an attack stepping a fixed 2x too far would give <= 0.5.)
    delta = result.x_adv - x
    fractions = torch.linspace(0, 1, 101)
    with torch.no_grad():
        flipped = torch.stack([model(x + t * delta).argmax(dim=1) != y for t in fractions])
    first_flip = fractions[flipped.float().argmax(dim=0)]
    correct = ~flipped[0]
    assert first_flip[correct & result.success].median() >= 0.75


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["logits", "crossentropy"])
def test_matches_foolbox(trained: tuple[nn.Module, Tensor, Tensor], norm: str, loss: str) -> None:
    fb = pytest.importorskip("foolbox")
    model, x, y = trained
    ours = deepfool(model, x, y, norm=norm, loss=loss, steps=50, candidates=3, overshoot=0.02)
    attack_cls = fb.attacks.L2DeepFoolAttack if norm == "l2" else fb.attacks.LinfDeepFoolAttack
    attack = attack_cls(steps=50, candidates=3, overshoot=0.02, loss=loss)
    raw, _, success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    torch.testing.assert_close(ours.x_adv, raw, rtol=0, atol=1e-5)
    assert torch.equal(ours.success, success)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"norm": "l1"}, "norm"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"candidates": 1}, "candidates"),
        ({"candidates": True}, "candidates"),
        ({"candidates": 3.0}, "candidates"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"overshoot": math.nan}, "overshoot"),
        ({"overshoot": math.inf}, "overshoot"),
        ({"loss": "ce"}, "loss"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, name: str) -> None:
    model = tanh_mlp()
    x = torch.rand(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        deepfool(model, x, torch.zeros(2, dtype=torch.long), **kwargs)


def test_bad_inputs_raise() -> None:
    model = tanh_mlp()
    x = torch.rand(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must lie in"):
        deepfool(model, x + 1.5, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        deepfool(model, x, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="at least 2 classes \\(K >= 2\\)"):
        deepfool(nn.Linear(8, 1).double(), x, torch.zeros(2, dtype=torch.long))


def test_runs_under_no_grad() -> None:
    """Evaluation loops often run under ``torch.no_grad()``; the attack must still work."""
    model = tanh_mlp()
    x = torch.rand(8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    y = model(x).argmax(dim=1).detach()
    expected = deepfool(model, x, y)
    with torch.no_grad():
        result = deepfool(model, x, y)
    assert torch.equal(result.x_adv, expected.x_adv)
    assert result.success.all()
