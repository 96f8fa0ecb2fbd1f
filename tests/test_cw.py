"""Carlini-Wagner L2: confidence margin, pixels at the box edges, binary search, minimality."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from advls.attacks import ATTACKS, cw_l2, from_config


class Linear(nn.Module):
    """Logits ``W x + b`` over flattened inputs (float64, so the geometry is exact)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class Constant(nn.Module):
    """Logits that do not depend on the input (still differentiable in it)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: thread hand-offs would cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_problem(seed: int, n: int = 6, d: int = 32, k: int = 4):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, d, generator=gen, dtype=torch.float64) * 3.0
    bias = torch.randn(k, generator=gen, dtype=torch.float64)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=gen, dtype=torch.float64)
    model = Linear(weight, bias)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``max_{k != y} Z_k - Z_y``."""
    with torch.no_grad():
        logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], -torch.inf).amax(1) - true


def _exact_min_l2(model: Linear, x: Tensor, y: Tensor, kappa: float) -> tuple[Tensor, Tensor]:
    """Smallest L2 step reaching ``Z_k - Z_y >= kappa`` for some k (no box), and that step."""
    w, b = model.weight.detach(), model.bias.detach()
    logits = x @ w.T + b
    dists, steps = [], []
    for i in range(x.shape[0]):
        best, step = torch.inf, None
        for k in range(w.shape[0]):
            if k == int(y[i]):
                continue
            direction = w[k] - w[y[i]]
            gap = kappa - (logits[i, k] - logits[i, y[i]])
            dist = gap / direction.norm()
            if dist < best:
                best, step = dist, dist * direction / direction.norm()
        dists.append(best)
        steps.append(step)
    return torch.stack(dists), torch.stack(steps)


def test_registered_and_configurable() -> None:
    assert ATTACKS["cw_l2"] is cw_l2
    attack = from_config({"name": "cw_l2", "binary_search_steps": 2, "steps": 5})
    model, x, y = _linear_problem(0, n=2)
    assert attack(model, x, y).x_adv.shape == x.shape


@pytest.mark.parametrize("kappa", [0.0, 2.0])
def test_minimal_l2_and_confidence_on_linear_model(kappa: float) -> None:
    model, x, y = _linear_problem(1)
    exact, step = _exact_min_l2(model, x, y, kappa)
    # The unconstrained optimum stays inside the box, so it is the true minimum.
    assert bool(((x + step) > 0.0).all() and ((x + step) < 1.0).all())

    result = cw_l2(model, x, y, binary_search_steps=9, steps=500, lr=0.02, confidence=kappa)

    assert bool(result.success.all())
    margin = _margins(model, result.x_adv, y)
    assert bool((margin >= kappa - 1e-3).all()), margin
    assert bool((margin <= kappa + 0.05).all()), margin
    assert bool((result.l2 >= exact * (1 - 1e-6)).all())
    assert bool((result.l2 <= 1.05 * exact).all()), result.l2 / exact


def test_pixels_at_exactly_zero_and_one_move() -> None:
    # Only pixel 0 (at exactly 1) and pixel 1 (at exactly 0) matter: the class flips only
    # once 3 * (x0 - x1) drops below 2.5, so both must leave the box edge.
    d = 6
    weight = torch.zeros(2, d, dtype=torch.float64)
    weight[0, 0], weight[0, 1] = 3.0, -3.0
    bias = torch.tensor([-2.5, 0.0], dtype=torch.float64)
    model = Linear(weight, bias)
    x = torch.full((1, d), 0.5, dtype=torch.float64)
    x[0, 0], x[0, 1] = 1.0, 0.0
    y = torch.tensor([0])
    assert int(model(x).argmax(1)) == 0

    result = cw_l2(model, x, y, binary_search_steps=9, steps=500, lr=0.05)

    assert bool(result.success.all())
    adv = result.x_adv[0]
    assert float(adv[0]) < 1.0 - 0.03
    assert float(adv[1]) > 0.03
    # The minimal step splits the 1/6 evenly between the two pixels; nothing else moves much.
    assert abs(float(1.0 - adv[0]) - 1 / 12) < 0.01
    assert abs(float(adv[1]) - 1 / 12) < 0.01
    assert float((adv[2:] - 0.5).abs().max()) < 1e-3


def test_single_edge_pixel_float32() -> None:
    weight = torch.zeros(2, 4)
    weight[0, 3] = 2.0
    bias = torch.tensor([0.0, 1.8])
    model = Linear(weight, bias)  # class 0 while x3 > 0.9; x3 starts at exactly 1
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0]])
    result = cw_l2(model, x, torch.tensor([0]), binary_search_steps=9, steps=500, lr=0.05)
    assert bool(result.success.all())
    assert float(result.x_adv[0, 3]) < 0.9
    assert abs(float(result.l2[0]) - 0.1) < 0.01


def test_failures_return_the_original_input() -> None:
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(3, dtype=torch.long)
    constant = Constant(torch.tensor([1.0, 0.0, -1.0]))
    result = cw_l2(constant, x, y, binary_search_steps=3, steps=20)
    assert torch.equal(result.x_adv, x)
    assert not bool(result.success.any())
    assert bool((result.l2 == 0).all()) and bool((result.linf == 0).all())

    # Reachable only with pixel 0 above 5: impossible inside [0, 1].
    weight = torch.zeros(2, 16)
    weight[1, 0] = 1.0
    unreachable = Linear(weight, torch.tensor([5.0, 0.0]))
    result = cw_l2(unreachable, x, y, binary_search_steps=4, steps=50, lr=0.1)
    assert torch.equal(result.x_adv, x)
    assert not bool(result.success.any())


def test_binary_search_raises_c_per_example() -> None:
    # Boundaries 0.33-0.60 away: beyond what Adam's first, scale-free steps can cover.
    model, x, y = _linear_problem(2, n=4)
    short = cw_l2(model, x, y, binary_search_steps=1, steps=200, lr=0.02, initial_const=1e-5)
    assert not bool(short.success.any())
    assert torch.equal(short.x_adv, x)
    long = cw_l2(model, x, y, binary_search_steps=9, steps=200, lr=0.02, initial_const=1e-5)
    assert bool(long.success.all())
    exact, _ = _exact_min_l2(model, x, y, 0.0)
    assert bool((long.l2 <= 1.1 * exact).all()), long.l2 / exact


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 5),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def test_contract_invariants() -> None:
    torch.manual_seed(0)
    model = SmallNet().train()
    model.net[0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x[:, :, 0, :] = 0.0
    x[:, :, -1, :] = 1.0
    with torch.no_grad():
        model.eval()
        pred = model(x).argmax(1)
        model.train()
    y = pred.clone()
    y[:2] = (pred[:2] + 1) % 5  # misclassified to begin with
    x_before, y_before = x.clone(), y.clone()

    binary_search_steps, steps = 3, 30
    result = cw_l2(
        model, x, y, binary_search_steps=binary_search_steps, steps=steps, abort_early=False
    )

    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert model.training
    assert not model.net[0].weight.requires_grad and model.net[4].weight.requires_grad
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    delta = (result.x_adv - x).flatten(1)
    torch.testing.assert_close(result.l2, delta.norm(dim=1))
    torch.testing.assert_close(result.linf, delta.abs().amax(dim=1))
    model.eval()
    with torch.no_grad():
        fresh = model(result.x_adv).argmax(1) != y
    assert torch.equal(result.success, fresh)
    # Already misclassified: unchanged, counted as a success with a zero perturbation.
    assert torch.equal(result.x_adv[:2], x[:2])
    assert bool(result.success[:2].all()) and bool((result.l2[:2] == 0).all())
    # Everything else either succeeded or is returned untouched.
    for i in range(2, 8):
        assert bool(result.success[i]) or torch.equal(result.x_adv[i], x[i])
    # Clean prediction + one forward/backward per iteration + final scoring.
    assert result.model_calls == 1 + binary_search_steps * steps + 1


def test_abort_early_saves_calls_without_losing_success() -> None:
    model, x, y = _linear_problem(5)
    full = cw_l2(model, x, y, binary_search_steps=5, steps=400, lr=0.02, abort_early=False)
    early = cw_l2(model, x, y, binary_search_steps=5, steps=400, lr=0.02, abort_early=True)
    assert early.model_calls < full.model_calls
    assert torch.equal(early.success, full.success)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"binary_search_steps": 0}, "binary_search_steps"),
        ({"binary_search_steps": 2.0}, "binary_search_steps"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"initial_const": -1.0}, "initial_const"),
        ({"initial_const": 0.0}, "initial_const"),
        ({"confidence": -0.5}, "confidence"),
        ({"confidence": float("inf")}, "confidence"),
        ({"abort_early": "yes"}, "abort_early"),
    ],
)
def test_bad_parameters(kwargs: dict, name: str) -> None:
    model, x, y = _linear_problem(0, n=2)
    with pytest.raises(ValueError, match=name):
        cw_l2(model, x, y, **kwargs)


def test_bad_inputs() -> None:
    model, x, y = _linear_problem(0, n=2)
    with pytest.raises(ValueError):
        cw_l2(model, x * 3.0, y)
    with pytest.raises(ValueError):
        cw_l2(model, x, y[:1])


@pytest.mark.slow
def test_paper_protocol_cw_fools_a_plain_mlp_on_real_mnist(real_data):
    """The paper's CW (5 x 100) must be strong enough to break an undefended MNIST model.

    With Adam at lr 0.01, 100 steps cannot cover the L2 distance MNIST needs (about 1.3) and
    half the points survive; the paper's own CW fooled 98.5% of its plain MLP's points.
    """
    from advls.data import load
    from advls.evaluate.protocols import PROTOCOLS
    from advls.train import TrainConfig, train

    config = TrainConfig(dataset="mnist", model="mlp", loss="ce", epochs=1, train_subset=10000)
    model = train(config, data_dir=real_data, device="cpu", progress=False).model.eval()
    test = load("mnist", "test", real_data, progress=False)
    x, y = test.images[:100].float() / 255, test.labels[:100]
    spec = next(a for a in PROTOCOLS["paper"].attacks if a.label == "cw-l2")
    result = cw_l2(model, x, y, **spec.params)
    correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.85
    assert result.success[correct].float().mean() >= 0.98
    assert float(result.l2[result.success & correct].median()) < 2.0
