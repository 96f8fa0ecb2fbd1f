"""The attack core: what ``register`` enforces, the per-norm geometry and the restart driver.

An algorithm registered here does things wrong on purpose (steps outside the ball and the
box, returns stale logits); the contract around it must still hold.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import ATTACKS, apgd, from_config, pgd
from advls.attacks.core import register
from advls.attacks.geometry import GEOMETRIES, L2, LINF, geometry, norms
from advls.attacks.restarts import restart


class Linear(nn.Module):
    def __init__(self, seed: int = 0, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(12, classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def batch(n: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, 4, generator=generator), torch.randint(
        0, 4, (n,), generator=generator
    )


@pytest.fixture
def rogue() -> Iterator[str]:
    """An attack whose algorithm overshoots the ball and the box and lies about its logits."""

    @register("rogue", norms=("linf", "l2"))
    def rogue_attack(model, x, y, *, eps: float, norm: str = "linf", lie: bool = False):
        with torch.no_grad():
            clean = model(x)
        x_adv = x + 3 * eps + 0.5  # far outside the ball, and above 1 for many pixels
        return (x_adv, clean) if lie else x_adv

    yield "rogue"
    del ATTACKS["rogue"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("lie", [False, True])
def test_the_contract_clips_and_rescores_whatever_the_algorithm_returns(
    rogue: str, norm: str, lie: bool
) -> None:
    model = Linear().train()
    x, y = batch()
    x_copy = x.clone()
    result = from_config({"name": rogue, "eps": 0.05, "norm": norm, "lie": lie})(model, x, y)
    assert torch.equal(x, x_copy) and model.training
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    size = result.l2 if norm == "l2" else result.linf
    assert float(size.max()) <= 0.05 * (1 + 1e-5)
    with torch.no_grad():
        expected = model.eval()(result.x_adv).argmax(dim=1) != y
    # The logits the algorithm returned were of other points: they must not be used.
    assert torch.equal(result.success, expected)
    assert result.model_calls == 2  # the algorithm's forward pass and the scoring


def test_shared_parameters_are_checked_by_name_for_every_attack(rogue: str) -> None:
    model, (x, y) = Linear(), batch()
    with pytest.raises(ValueError, match="eps must be a finite number"):
        ATTACKS[rogue](model, x, y, eps=math.nan)
    with pytest.raises(ValueError, match="at most 1 for an L-inf attack"):
        ATTACKS[rogue](model, x, y, eps=2.0)
    ATTACKS[rogue](model, x, y, eps=2.0, norm="l2")  # an L2 ball may exceed the box
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2', got 'l1'"):
        ATTACKS[rogue](model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        ATTACKS[rogue](model, x + 2, y, eps=0.1)


def test_shared_parameters_are_documented_once_in_every_attack() -> None:
    for name, attack in ATTACKS.items():
        parameters = inspect.signature(attack).parameters
        for shared in ("seed", "smoothing"):
            if shared in parameters:
                assert attack.__doc__.count(f"        {shared}:") == 1, (name, shared)
    assert "a ``torch.Generator`` is drawn from" in " ".join(pgd.__doc__.split())
    assert list(inspect.signature(pgd).parameters)[:4] == ["model", "x", "y", "eps"]


def test_a_generator_seed_is_drawn_from_and_advanced() -> None:
    model, (x, y) = Linear(), batch()
    generator = torch.Generator().manual_seed(7)
    first = apgd(model, x, y, eps=0.1, steps=3, seed=generator).x_adv
    second = apgd(model, x, y, eps=0.1, steps=3, seed=generator).x_adv
    assert not torch.equal(first, second)  # the generator moved on
    fresh = torch.Generator().manual_seed(7)
    assert torch.equal(apgd(model, x, y, eps=0.1, steps=3, seed=fresh).x_adv, first)
    assert torch.equal(apgd(model, x, y, eps=0.1, steps=3, seed=7).x_adv, first)


# --------------------------------------------------------------------------- geometry
#: Absolute slack for sizes measured after float32 rounding at x (half an ulp per pixel).
_ROUNDED = 1e-6


@settings(max_examples=25, deadline=None)
@example(seed=0, eps=5.960464477539063e-08, norm="l2")  # L2 rescaling rounds at tiny eps
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 1.0),
    norm=st.sampled_from(sorted(GEOMETRIES)),
)
def test_projection_lands_in_the_ball_and_the_box_and_keeps_inside_points(
    seed: int, eps: float, norm: str
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 2, 3, 3, generator=generator)
    ball = geometry(norm)
    start = ball.random_start(x, eps, generator)
    l2, linf = norms(start - x)
    assert float((l2 if norm == "l2" else linf).max()) <= eps * (1 + 1e-5) + _ROUNDED
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0
    # Inside points stay: exactly under the L-inf clamp, to float rounding under L2's rescaling
    # (x + (p - x) need not round back to p); enforce leaves every inside point exactly.
    kept = ball.projection(x, eps)(start.clone())
    if norm == "linf":
        assert torch.equal(kept, start)
        inside = torch.ones(len(x), dtype=torch.bool)
    else:
        torch.testing.assert_close(kept, start, atol=1e-6, rtol=0)
        inside = norms(start - x)[0] <= eps * (1 + 1e-6)
    assert torch.equal(ball.enforce(start, x, eps)[inside], start[inside])
    far = x + 4 * torch.randn(x.shape, generator=generator)
    projected = ball.projection(x, eps)(far.clone())
    l2, linf = norms(projected - x)
    assert float((l2 if norm == "l2" else linf).max()) <= eps * (1 + 1e-5) + _ROUNDED
    assert float(projected.min()) >= 0.0 and float(projected.max()) <= 1.0


def test_directions_have_unit_norm_and_zero_gradients_stay_zero() -> None:
    grad = torch.randn(4, 1, 3, 3)
    grad[0] = 0.0
    assert torch.equal(LINF.direction_(grad.clone()), grad.sign())
    unit = L2.direction_(grad.clone())
    torch.testing.assert_close(norms(unit)[0][1:], torch.ones(3))
    assert float(unit[0].abs().max()) == 0.0
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        geometry("l1")


# --------------------------------------------------------------------------- restarts
def test_restart_keeps_the_first_success_and_otherwise_the_best_score() -> None:
    # x carries each example's index; run r returns the value r for every example it gets.
    x, y = torch.arange(4.0)[:, None], torch.zeros(4, dtype=torch.long)
    fooled_at = {0: 0, 1: 2}  # examples 2 and 3 are never fooled
    scores = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 5, 1, 2], 3: [0, 1, 2, 3]}
    given: list[list[int]] = []

    def run(xs: Tensor, ys: Tensor, last: bool):
        r, examples = len(given), xs[:, 0].long().tolist()
        given.append(examples)
        fooled = torch.tensor([fooled_at.get(e, 99) <= r for e in examples])
        score = torch.tensor([float(scores[e][r]) for e in examples])
        return torch.full((len(xs), 1), float(r)), fooled, score

    out, fooled = restart(run, x, y, runs=4)
    assert given == [[0, 1, 2, 3], [1, 2, 3], [1, 2, 3], [2, 3]]  # only the unfooled again
    # 0 and 1: the run that first fooled them; 2: its best score; 3: its best, the last run.
    assert out.squeeze(1).tolist() == [0.0, 2.0, 1.0, 3.0]
    assert fooled is not None and fooled.tolist() == [True, True, False, False]


def test_restart_without_scores_keeps_the_last_run() -> None:
    x, y = torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)
    runs: list[bool] = []

    def run(xs: Tensor, ys: Tensor, last: bool):
        runs.append(last)
        value = float(len(runs))
        return (
            torch.full((len(xs), 1), value),
            (None if last else torch.zeros(len(xs), dtype=torch.bool)),
            None,
        )

    out, fooled = restart(run, x, y, runs=3)
    assert out.squeeze(1).tolist() == [3.0, 3.0, 3.0]
    assert fooled is None  # the last run did not say
    assert runs == [False, False, True]  # only the last run may skip telling what it fooled
