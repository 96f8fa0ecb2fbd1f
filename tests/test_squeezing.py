"""Logit squeezing and the gradient gap: hand checks, the exact linear criterion, real MNIST."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from advls.attacks.fgsm import fgsm
from advls.checkpoint import load_model
from advls.data import load
from advls.models import create
from advls.theory.squeezing import (
    affine_map,
    analyze,
    first_order_criterion,
    gradient_gaps,
    linear_criterion,
    linear_slack,
    logit_margins,
    optimal_linf_unboxed,
    top_probabilities,
)
from advls.train import TrainConfig, train

SHAPE = (1, 6, 6)


def _linear(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return create("linear", num_classes=classes, input_shape=SHAPE, mean=(0.3,), std=(0.7,))


def _batch(n: int = 64, seed: int = 1, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, classes, (n,), generator=g)


class _Fixed(nn.Module):
    """Returns the given logits whatever the input (for hand computations)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits * self.scale + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_margins_and_top_probabilities_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 4.0]])
    model = _Fixed(logits)
    x = torch.zeros(3, 1, 2, 2)
    y = torch.tensor([0, 2, 2])
    assert torch.allclose(logit_margins(model, x, y), torch.tensor([1.5, -2.0, 3.0]))
    probs = top_probabilities(model, x)
    assert torch.allclose(probs, logits.softmax(1).amax(1))
    assert bool(((probs > 0) & (probs <= 1)).all())


def test_gradient_gap_is_weight_gap_for_linear_model() -> None:
    model = _linear()
    x, y = _batch()
    weight, bias = affine_map(model, SHAPE)
    # The effective map folds in the normalisation: W / std, b - W mean / std.
    fc = model.net.fc
    assert torch.allclose(weight, fc.weight.double() / 0.7, atol=1e-6)
    assert torch.allclose(bias, fc.bias.double() - fc.weight.double().sum(1) * 0.3 / 0.7, atol=1e-6)
    logits = model(x).detach()
    others = logits.clone().scatter_(1, y.view(-1, 1), float("-inf"))
    k = others.argmax(1)
    expected = (weight[y] - weight[k]).abs().sum(1)
    assert torch.allclose(gradient_gaps(model, x, y, batch_size=7).double(), expected, rtol=1e-5)


def test_mode_restored_inputs_untouched_and_batching_invariant() -> None:
    torch.manual_seed(0)
    model = create("lenet-mnist", num_classes=10)
    model.train()
    x = torch.rand(12, 1, 28, 28)
    y = torch.randint(0, 10, (12,))
    x0, y0 = x.clone(), y.clone()
    a = gradient_gaps(model, x, y, batch_size=5)
    b = gradient_gaps(model, x, y, batch_size=12)
    m = logit_margins(model, x, y)
    top_probabilities(model, x)
    first_order_criterion(model, x, y, 0.1, batch_size=5)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, x0) and torch.equal(y, y0) and x.grad is None
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert bool((a >= 0).all()) and m.shape == (12,)
    # uint8 pixels are read as [0, 1] images.
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.allclose(logit_margins(model, pixels, y), logit_margins(model, pixels / 255.0, y))


def test_linear_criterion_exact_on_random_model() -> None:
    model = _linear(seed=3)
    x, y = _batch(n=400, seed=4)
    for eps in (0.0, 0.02, 0.05, 0.1, 0.3):
        criterion = linear_criterion(model, x, y, eps)
        attack = optimal_linf_unboxed(model, x, y, eps)
        assert torch.equal(criterion, attack.success)
        assert torch.equal(criterion, first_order_criterion(model, x, y, eps))
        assert torch.allclose(
            (attack.x_adv - x.double()).abs().amax(dim=(1, 2, 3)),
            torch.tensor(eps, dtype=torch.float64),
        )
    # eps = 0: the criterion is misclassification itself; it grows with eps.
    assert torch.equal(linear_criterion(model, x, y, 0.0), model(x).argmax(1) != y)
    assert bool((linear_slack(model, x, y, 0.3) <= linear_slack(model, x, y, 0.1)).all())


def test_affine_map_rejects_nonlinear_model() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not affine"):
        affine_map(create("mlp", num_classes=10), (1, 28, 28))


# --------------------------------------------------------------------------- real MNIST


@pytest.mark.slow
def test_linear_criterion_on_real_mnist(real_data: Path, tmp_path: Path) -> None:
    config = TrainConfig(dataset="mnist", model="linear", loss="ce", epochs=1)
    model = train(
        config, tmp_path / "linear", data_dir=real_data, device="cpu", progress=False
    ).model
    test = load("mnist", "test", real_data)
    x, y = test.images[:1000].float() / 255.0, test.labels[:1000].long()
    for eps in (0.05, 0.1, 0.2):
        criterion = linear_criterion(model, x, y, eps)
        unboxed = optimal_linf_unboxed(model, x, y, eps)
        assert torch.equal(criterion, unboxed.success), (
            "criterion must be exact, example by example"
        )
        boxed = fgsm(model, x, y, eps=eps, loss="ce").success
        agreement = float((criterion == boxed).double().mean())
        assert 0.0 <= agreement <= 1.0
        # Clipping only shrinks the perturbation, and CE's direction is not the optimal one:
        # FGSM can never succeed where the unboxed optimum fails.
        assert not bool((boxed & ~criterion).any())
        print(
            f"linear MNIST eps={eps}: criterion rate {criterion.double().mean():.3f}, "
            f"clipped CE FGSM success {boxed.double().mean():.3f}, agreement {agreement:.3f}"
        )


SWEEP_ALPHAS = (0.1, 0.3, 0.5)


@pytest.fixture(scope="module")
def lenet_sweep(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("squeeze-sweep")
    runs = []
    common = {"dataset": "mnist", "model": "lenet-mnist", "epochs": 2, "train_subset": 20000}
    start = time.perf_counter()
    for loss, alpha in [("ce", 0.0)] + [
        (m, a) for m in ("adversarial", "standard") for a in SWEEP_ALPHAS
    ]:
        run = root / f"{loss}-{alpha}"
        train(
            TrainConfig(loss=loss, alpha=alpha, **common),
            run,
            data_dir=real_data,
            device="cpu",
            progress=False,
        )
        runs.append(run)
    print(f"sweep trained in {time.perf_counter() - start:.0f} s")
    return runs


@pytest.mark.slow
def test_margin_decreases_with_alpha_on_real_mnist(
    lenet_sweep: list[Path], real_data: Path, tmp_path: Path
) -> None:
    result = analyze(lenet_sweep, tmp_path, data_dir=real_data, points=1000)
    rows = result["rows"]
    ce = [r for r in rows if r["method"] == "ce"]
    assert len(ce) == 1 and ce[0]["alpha"] == 0.0
    for method in ("adversarial", "standard"):
        curve = ce + sorted((r for r in rows if r["method"] == method), key=lambda r: r["alpha"])
        means = [r["margin_mean"] for r in curve]
        print(method, [f"{r['alpha']:g}: {r['margin_mean']:.3f}" for r in curve])
        assert all(a > b for a, b in itertools.pairwise(means)), (method, means)
        assert all(r["accuracy"] > 0.5 for r in curve)  # ALS at 0.5 learns slowly
    for figure in result["figures"]:
        assert Path(figure).stat().st_size > 10_000
    assert Path(result["json"]).is_file() and Path(result["csv"]).is_file()
    _, meta = load_model(lenet_sweep[1])
    assert meta["config"]["loss"] == "adversarial"
