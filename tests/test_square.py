"""Square attack: score-based only, the attack contract, the random search's rules, real MNIST.

Several tests replay the search from outside: a recording wrapper keeps every query and its
logits, each queried row is matched to its example (the only input within eps of it), and
the accepted point of every example is recomputed from the rule "take the start, then any
candidate that lowers the margin".
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls.attacks import fgsm, from_config, square
from advls.attacks.square import _fraction
from test_attack_invariants import (
    CLASSES,
    SHAPE,
    Linear,
    make_batch,
    make_model,
    state,
    trained_toy_model,
)

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers
class Recorder(nn.Module):
    """Keeps a copy of every input it is given and of the logits it returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the flag only: the attack restores it on the model
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        self.inputs.append(x.detach().clone())
        self.outputs.append(logits.detach().clone())
        return logits


class NoGradOnly(nn.Module):
    """A model that refuses to run with autograd recording."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(SHAPE), CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise AssertionError("square ran the model with gradients enabled")
        return self.fc(x.flatten(1))


def loss(logits: Tensor, y: Tensor) -> Tensor:
    """The attack's objective, computed independently: z_y - max_{k != y} z_k."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others[torch.arange(len(y)), y] = -math.inf
    return true - others.amax(dim=1)


def owners(rows: Tensor, x: Tensor, eps: float) -> Tensor:
    """The example each queried row belongs to: the only input within eps of it (L-inf)."""
    distance = (rows[:, None] - x[None]).flatten(2).abs().amax(dim=2)  # (rows, examples)
    nearest = distance.topk(min(2, x.shape[0]), dim=1, largest=False)
    assert bool((nearest.values[:, 0] <= eps + 1e-6).all())
    if x.shape[0] > 1:
        assert bool((nearest.values[:, 1] > eps + 1e-6).all()), "examples too close to match"
    return nearest.indices[:, 0]


def trajectories(recorder: Recorder, x: Tensor, eps: float) -> list[list[tuple[Tensor, Tensor]]]:
    """Per example, the (point, logits) of every query after the clean one, in order."""
    paths: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(x.shape[0])]
    for rows, logits in zip(recorder.inputs[1:], recorder.outputs[1:], strict=True):
        for row, out, owner in zip(rows, logits, owners(rows, x, eps).tolist(), strict=True):
            paths[owner].append((row, out))
    return paths


def distinct_batch(seed: int, n: int, shape: tuple[int, ...] = SHAPE) -> tuple[Tensor, Tensor]:
    """Inputs far apart in L-inf (so queries can be matched to examples) and random labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=generator)
    x.view(n, -1)[:, 0] = torch.linspace(0.0, 1.0, n) if n > 1 else 0.5  # >= 1/(n-1) apart
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    return x, y


# --------------------------------------------------------------------------- no gradients
def test_the_model_only_runs_without_autograd() -> None:
    model = NoGradOnly()
    x, _ = make_batch(0, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # correct to begin with: the search must run
    with torch.enable_grad():  # the attack must turn it off itself
        result = square(model, x, y, eps=0.2, queries=50, seed=0)
    assert result.model_calls >= 2
    assert all(p.grad is None for p in model.parameters())


def test_no_backward_pass_ever_runs() -> None:
    model = make_model("mlp", 1)
    backward_calls = []
    model.fc1.register_full_backward_hook(lambda *args: backward_calls.append(1))
    x, y = make_batch(2, 8)

    # The hook does count backward passes: a gradient attack fires it.
    fgsm(model, x, y, eps=0.1)
    assert len(backward_calls) > 0
    backward_calls.clear()

    result = square(model, x, y, eps=0.3, queries=100, seed=0)
    assert result.model_calls > 2
    assert backward_calls == []
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- the contract
@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    kind=st.sampled_from(["conv", "mlp", "linear"]),
    eps=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    queries=st.integers(1, 40),
)
def test_contract(seed: int, n: int, kind: str, eps: float, queries: int) -> None:
    model = make_model(kind, seed)
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)  # mixed flags must come back as they were
    flags = [p.requires_grad for p in model.parameters()]
    before = state(model)
    x, y = make_batch(seed + 1, n)
    x_copy, y_copy = x.clone(), y.clone()

    result = square(model, x, y, eps=eps, queries=queries, seed=seed)

    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)

    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    assert float(delta.abs().max()) <= eps + 1e-6
    torch.testing.assert_close(result.l2, delta.norm(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.linf, delta.abs().amax(dim=1), atol=1e-6, rtol=0)

    model.eval()
    with torch.no_grad():
        clean = model(x).argmax(dim=1) != y
        expected = model(x_adv).argmax(dim=1) != y
    assert result.success.dtype == torch.bool
    assert torch.equal(result.success, expected)
    assert bool(result.success[clean].all())  # misclassified inputs stay successes...
    assert torch.equal(x_adv[clean], x[clean])  # ...and come back unchanged
    assert isinstance(result.model_calls, int) and 1 <= result.model_calls <= queries


@pytest.mark.parametrize("kind", ["conv", "mlp", "linear"])
def test_zero_budget_returns_the_input(kind: str) -> None:
    model = make_model(kind, 3).eval()
    x, y = make_batch(4, 8)
    result = square(model, x, y, eps=0.0, queries=100, seed=0)
    assert torch.equal(result.x_adv, x)
    with torch.no_grad():
        assert torch.equal(result.success, model(x).argmax(dim=1) != y)
    assert float(result.l2.max()) == 0.0 and float(result.linf.max()) == 0.0
    assert result.model_calls == 1  # nothing can change: only the clean predictions


def test_seed_is_reproducible_and_private() -> None:
    model = make_model("conv", 0)
    x, y = make_batch(1, 8)
    rng = torch.get_rng_state()
    first = square(model, x, y, eps=0.1, queries=60, seed=7)
    second = square(model, x, y, eps=0.1, queries=60, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.success, second.success)
    assert first.model_calls == second.model_calls
    other = square(model, x, y, eps=0.1, queries=60, seed=8)
    assert not torch.equal(first.x_adv, other.x_adv)


def test_without_a_seed_it_draws_from_the_global_rng() -> None:
    model = make_model("mlp", 0)
    x, y = make_batch(1, 8)
    torch.manual_seed(123)
    first = square(model, x, y, eps=0.1, queries=30)
    torch.manual_seed(123)
    second = square(model, x, y, eps=0.1, queries=30)
    assert torch.equal(first.x_adv, second.x_adv)


# --------------------------------------------------------------------------- queries
class Stubborn(nn.Module):
    """Predicts class 0 by a wide margin whatever the input, with a trainable-looking weight."""

    def __init__(self, shape: tuple[int, ...] = SHAPE) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(shape), CLASSES)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)
            self.fc.bias.copy_(torch.tensor([100.0, 0.0, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("queries", [1, 2, 3, 17])
def test_the_query_budget_is_spent_exactly_when_nothing_is_fooled(queries: int) -> None:
    recorder = Recorder(Stubborn())
    x, _ = distinct_batch(0, 5)
    y = torch.zeros(5, dtype=torch.long)
    result = square(recorder, x, y, eps=0.2, queries=queries, seed=0)
    assert result.model_calls == queries == len(recorder.inputs)
    assert not bool(result.success.any())
    assert all(rows.shape[0] == 5 for rows in recorder.inputs)  # every example every time
    if queries == 1:
        assert torch.equal(result.x_adv, x)


def test_queries_per_example_stay_within_the_budget_and_stop_when_fooled() -> None:
    model = make_model("mlp", 5).eval()
    recorder = Recorder(model)
    x, _ = distinct_batch(6, 12)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # all correct to begin with...
    y[:2] = (y[:2] + 1) % CLASSES  # ...but two
    eps, queries = 0.02, 60
    result = square(recorder, x, y, eps=eps, queries=queries, seed=1)
    assert result.model_calls == len(recorder.inputs) <= queries
    assert recorder.inputs[0].shape[0] == 12  # the clean pass covers the batch
    paths = trajectories(recorder, x, eps)
    for i, path in enumerate(paths):
        assert 1 + len(path) <= queries
        # Once an example is misclassified it is no longer queried: only its last query may be.
        fooled = [bool(logits.argmax() != y[i]) for _, logits in path]
        assert not any(fooled[:-1])
        assert bool(result.success[i]) == (
            any(fooled) or bool(recorder.outputs[0][i].argmax() != y[i])
        )
    assert all(len(path) == 0 for path in paths[:2])  # misclassified: only the clean pass
    assert 2 < int(result.success.sum()) < 12  # a meaningful test: some but not all fooled


# --------------------------------------------------------------------------- the search
@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["conv", "mlp", "linear"]),
    eps=st.floats(0.01, 0.3),
)
def test_the_search_keeps_exactly_the_improvements(seed: int, kind: str, eps: float) -> None:
    """Replay: the start is taken, then a candidate only when it lowers the margin."""
    model = make_model(kind, seed).eval()
    recorder = Recorder(model)
    x, y = distinct_batch(seed + 1, 6)
    with torch.no_grad():
        y[1:] = model(x[1:]).argmax(dim=1)  # example 0 keeps its random label
    result = square(recorder, x, y, eps=eps, queries=40, seed=seed)
    paths = trajectories(recorder, x, eps)
    clean_logits = recorder.outputs[0]
    for i, path in enumerate(paths):
        if clean_logits[i].argmax() != y[i]:
            assert len(path) == 0 and torch.equal(result.x_adv[i], x[i])
            continue
        best, best_loss = path[0][0], float(loss(path[0][1][None], y[i : i + 1]))
        for point, logits in path[1:]:
            assert not torch.equal(point, best)  # a candidate always changes something
            value = float(loss(logits[None], y[i : i + 1]))
            if value < best_loss:
                best, best_loss = point, value
        assert torch.equal(result.x_adv[i], best)
        # So the loss at x_adv is the lowest of all the points queried after the clean one.
        with torch.no_grad():
            final = float(loss(model(result.x_adv[i : i + 1]), y[i : i + 1]))
        queried = [float(loss(logits[None], y[i : i + 1])) for _, logits in path]
        lowest = min(queried)
        assert final <= lowest + 1e-5 * (1 + abs(lowest))  # one pass vs. batched rounding
        assert bool(result.success[i]) == (best_loss < 0)


def test_the_start_is_vertical_stripes() -> None:
    shape = (3, 7, 9)
    recorder = Recorder(Stubborn(shape))
    x = torch.full((4, *shape), 0.5)
    x[1] = 0.0  # -eps is clipped away: the stripes become eps or 0
    y = torch.zeros(4, dtype=torch.long)
    square(recorder, x, y, eps=0.25, queries=2, seed=0)
    start = recorder.inputs[1] - x
    # Every column of every channel moves by one value along the whole column.
    assert torch.equal(start, start[:, :, :1].expand_as(start))
    assert set(start[[0, 2, 3]].unique().tolist()) == {-0.25, 0.25}
    assert set(start[1].unique().tolist()) == {0.0, 0.25}
    # Signs differ between columns, channels and examples (not one pattern for all).
    assert len({tuple(row.tolist()) for row in start[[0, 2, 3], :, 0].flatten(1)}) == 3


@pytest.mark.parametrize("p_init,side", [(0.8, 7), (0.3, 4), (0.05, 2), (0.001, 1)])
def test_each_candidate_changes_one_square_by_eps_per_channel(p_init: float, side: int) -> None:
    """The first iteration's window has side round(sqrt(p_init * H * W)), capped at H, W."""
    shape = (3, 7, 9)
    recorder = Recorder(Stubborn(shape))
    n, eps = 16, 0.125
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((n, *shape), generator=generator)
    y = torch.zeros(n, dtype=torch.long)
    square(recorder, x, y, eps=eps, queries=3, p_init=p_init, seed=0)
    start, candidate = recorder.inputs[1], recorder.inputs[2]  # nothing is ever accepted
    changed = (candidate != start).any(dim=1)  # (n, H, W)
    tops = set()
    for i in range(n):
        rows = changed[i].any(dim=1).nonzero().squeeze(1)
        cols = changed[i].any(dim=0).nonzero().squeeze(1)
        # The start is constant down each column, so a changed column changes over all the
        # square's rows: exactly `side` consecutive rows; the columns fit in `side`.
        assert rows.tolist() == list(range(int(rows[0]), int(rows[0]) + side))
        assert int(cols.max()) - int(cols.min()) < side
        tops.add(int(rows[0]))
        # On the changed columns every channel is x + s_c * eps (clipped): one sign a channel.
        block = (slice(None), rows[:, None], cols[None, :])
        new, old = candidate[i][block], x[i][block]
        for c in range(3):
            up, down = (old[c] + eps).clamp(0, 1), (old[c] - eps).clamp(0, 1)
            assert torch.equal(new[c], up) or torch.equal(new[c], down)
    if side < 7:
        assert len(tops) > 1  # positions are drawn per example


def test_the_schedule_halves_p_as_in_the_paper() -> None:
    # Iteration i of 10000 queries: p_init up to 10, then halved after 10, 50, 200, 500, ...
    expected = {
        0: 1,
        10: 1,
        11: 2,
        50: 2,
        51: 4,
        200: 4,
        201: 8,
        500: 8,
        501: 16,
        1001: 32,
        2001: 64,
        4001: 128,
        6001: 256,
        8000: 256,
        8001: 512,
        9999: 512,
    }
    for iteration, divisor in expected.items():
        assert _fraction(0.8, iteration, 10000) == 0.8 / divisor
    # Rescaled to the budget: with 1000 queries the boundaries are ten times earlier.
    assert _fraction(0.8, 1, 1000) == 0.8
    assert _fraction(0.8, 2, 1000) == 0.4
    assert _fraction(0.8, 5, 1000) == 0.4
    assert _fraction(0.8, 6, 1000) == 0.2
    assert _fraction(0.8, 999, 1000) == 0.8 / 512


# --------------------------------------------------------------------------- strength
def test_it_fools_a_linear_model_an_eps_step_fools() -> None:
    """A two-class linear model whose margin the optimal L-inf step removes twice over."""
    generator = torch.Generator().manual_seed(0)
    n, eps = 32, 0.1
    w = torch.randn(2, *SHAPE, generator=generator)
    x = torch.full((n, *SHAPE), 0.5) + 0.1 * (torch.rand((n, *SHAPE), generator=generator) - 0.5)
    direction = (w[1] - w[0]).flatten()
    model = Linear(math.prod(SHAPE), 2)
    with torch.no_grad():
        model.fc.weight.copy_(w.flatten(1))
        # Margin z_0 - z_1 at x is half of what the best step (eps * ||w0 - w1||_1) removes.
        best_step = eps * float(direction.abs().sum())
        model.fc.bias.copy_(torch.tensor([0.0, 0.0]))
        margins = -(x.flatten(1) @ direction)
        model.fc.bias[0] = 0.5 * best_step - float(margins.mean())
    y = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        assert bool((model(x).argmax(dim=1) == 0).all())  # all correct to begin with
    optimal = (x + eps * direction.sign().view(SHAPE)).clamp(0, 1)  # the L-inf step that fools
    with torch.no_grad():
        assert bool((model(optimal).argmax(dim=1) == 1).all())
    result = square(model, x, y, eps=eps, queries=300, seed=0)
    assert bool(result.success.all())
    assert float(result.linf.max()) <= eps + 1e-6


def test_it_beats_noise_on_a_trained_toy_model() -> None:
    """On a trained MLP, Square at 200 queries fools far more than random +-eps noise does."""
    generator = torch.Generator().manual_seed(0)
    model, x, y = trained_toy_model(128, generator)
    eps = 0.1
    with torch.no_grad():
        clean = float((model(x).argmax(dim=1) == y).float().mean())
        signs = torch.randint(0, 2, x.shape, generator=generator) * 2 - 1
        noisy = float((model((x + eps * signs).clamp(0, 1)).argmax(dim=1) == y).float().mean())
    assert clean > 0.9
    robust = square(model, x, y, eps=eps, queries=200, seed=0).robust_accuracy
    assert robust < noisy - 0.5  # about 0.25 against 0.99


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "params,message",
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": 1.5}, "at most 1"),
        ({"eps": math.nan}, "eps must be"),
        ({"eps": 0.1, "queries": 0}, "queries must be an integer >= 1"),
        ({"eps": 0.1, "queries": 2.5}, "queries must be"),
        ({"eps": 0.1, "queries": True}, "queries must be"),
        ({"eps": 0.1, "p_init": 0.0}, "p_init must be"),
        ({"eps": 0.1, "p_init": 1.5}, r"p_init must be a finite number in \(0, 1\]"),
        ({"eps": 0.1, "p_init": math.inf}, "p_init must be"),
        ({"eps": 0.1, "seed": 1.5}, "seed must be"),
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=message):
        square(model, x, y, **params)


def test_bad_inputs() -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 4)
    with pytest.raises(ValueError, match=r"image inputs x of shape \(N, C, H, W\)"):
        square(model, x.flatten(1), y, eps=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        square(model, x * 2, y, eps=0.1)
    with pytest.raises(ValueError, match="labels must lie"):
        square(model, x, torch.full_like(y, CLASSES), eps=0.1)


def test_from_config_and_int32_labels() -> None:
    model = make_model("conv", 5)
    x, y = make_batch(6, 8)
    configured = from_config({"name": "square", "eps": 0.1, "queries": 30, "seed": 3})(model, x, y)
    direct = square(model, x, y.int(), eps=0.1, queries=30, seed=3)
    assert torch.equal(configured.x_adv, direct.x_adv)
    assert torch.equal(configured.success, direct.success)


def test_empty_batch() -> None:
    result = square(make_model("linear", 0), torch.zeros(0, *SHAPE), torch.zeros(0).long(), eps=0.1)
    assert result.x_adv.shape == (0, *SHAPE) and result.success.shape == (0,)


# --------------------------------------------------------------------------- real MNIST
@pytest.mark.slow
def test_square_breaks_a_ce_lenet_on_real_mnist(real_data: Path, tmp_path: Path) -> None:
    from advls import data
    from advls.train import TrainConfig, train

    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=20000
    )
    trained = train(config, tmp_path / "run", data_dir=real_data, device="cpu", progress=False)
    assert trained.test_accuracy > 0.95
    test = data.load("mnist", "test", real_data)
    x = test.images[:200].float() / 255
    y = test.labels[:200]
    result = square(trained.model, x, y, eps=0.3, queries=1000, seed=0)
    print(f"square eps 0.3, 1000 queries: robust accuracy {result.robust_accuracy:.3f}")
    assert result.robust_accuracy < 0.10
    assert float(result.linf.max()) <= 0.3 + 1e-6
