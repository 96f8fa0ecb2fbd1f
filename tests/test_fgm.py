"""FGM, the L2 fast gradient method: its closed form, foolbox's points, and a zero gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advls.attacks import ATTACKS, fgm, from_config


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def _batch(n: int = 32, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=generator)
    x[:, :, 0] = 0.0  # a row of pixels at the box's edge, where the clip bites
    return x, torch.randint(0, 3, (n,), generator=generator)


def test_fgm_is_one_step_of_length_eps_along_the_normalised_gradient() -> None:
    model, (x, y) = _model(), _batch()
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), y, reduction="sum"), leaf)
    size = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (x + 0.5 * grad / size).clamp(0, 1)
    result = fgm(model, x, y, eps=0.5)
    torch.testing.assert_close(result.x_adv, expected, atol=1e-6, rtol=0)
    assert float(result.l2.max()) <= 0.5 + 1e-6
    assert result.model_calls == 2
    assert bool((result.l2 < 0.5 - 1e-3).any())  # the box clip shortened some steps
    # Away from the box's edges every step has length eps exactly.
    inner = 0.25 + 0.5 * x
    torch.testing.assert_close(fgm(model, inner, y, eps=0.1).l2, torch.full((len(x),), 0.1))


def test_fgm_equals_foolbox_l2_fast_gradient() -> None:
    fb = pytest.importorskip("foolbox")
    model, (x, y) = _model(3), _batch(64, 4)
    for eps in (0.1, 1.0, 3.0):
        raw, _, success = fb.attacks.L2FastGradientAttack(random_start=False)(
            fb.PyTorchModel(model, bounds=(0.0, 1.0)), x, y, epsilons=eps
        )
        ours = fgm(model, x, y, eps=eps)
        assert float((raw - ours.x_adv).abs().max()) <= 1e-6
        assert torch.equal(success, ours.success)


def test_an_input_without_gradient_does_not_move() -> None:
    class Constant(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1).sum(dim=1, keepdim=True) * 0.0 + torch.tensor([1.0, 0.0, 0.0])

    x, y = _batch(4)
    result = fgm(Constant(), x, y, eps=1.0)
    assert torch.equal(result.x_adv, x)
    assert torch.equal(result.success, y != 0)


def test_fgm_is_registered_and_configurable_and_refuses_l_inf() -> None:
    model, (x, y) = _model(), _batch()
    assert ATTACKS["fgm"] is fgm
    configured = from_config({"name": "fgm", "eps": 0.3, "loss": "margin"})
    assert torch.equal(
        configured(model, x, y).x_adv, fgm(model, x, y, eps=0.3, loss="margin").x_adv
    )
    with pytest.raises(ValueError, match="takes no parameter"):
        from_config({"name": "fgm", "eps": 0.3, "norm": "linf"})
    with pytest.raises(ValueError, match="eps must be"):
        fgm(model, x, y, eps=-1.0)


def test_a_random_start_stays_in_the_ball_and_is_reproducible() -> None:
    model, (x, y) = _model(), _batch()
    first = fgm(model, x, y, eps=0.4, random_start=True, seed=3)
    again = fgm(model, x, y, eps=0.4, random_start=True, seed=3)
    assert torch.equal(first.x_adv, again.x_adv)
    assert not torch.equal(first.x_adv, fgm(model, x, y, eps=0.4).x_adv)
    assert float(first.l2.max()) <= 0.4 * (1 + 1e-5)
    with pytest.raises(ValueError, match="random_start must be True or False"):
        fgm(model, x, y, eps=0.4, random_start=1)
