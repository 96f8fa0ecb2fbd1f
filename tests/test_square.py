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
from advls.attacks.square import _eta, _fraction
from test_attack_invariants import (
    CLASSES,
    SHAPE,
    Constant,
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


def owners(rows: Tensor, x: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """The example each queried row belongs to: the only input within eps of it."""
    gaps = (rows[:, None] - x[None]).flatten(2)  # (rows, examples, features)
    distance = gaps.abs().amax(dim=2) if norm == "linf" else gaps.norm(dim=2)
    nearest = distance.topk(min(2, x.shape[0]), dim=1, largest=False)
    assert bool((nearest.values[:, 0] <= eps + 1e-6).all())
    if x.shape[0] > 1:
        assert bool((nearest.values[:, 1] > eps + 1e-6).all()), "examples too close to match"
    return nearest.indices[:, 0]


def trajectories(
    recorder: Recorder, x: Tensor, eps: float, norm: str = "linf"
) -> list[list[tuple[Tensor, Tensor]]]:
    """Per example, the (point, logits) of every query after the clean one, in order."""
    paths: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(x.shape[0])]
    for rows, logits in zip(recorder.inputs[1:], recorder.outputs[1:], strict=True):
        matched = owners(rows, x, eps, norm).tolist()
        for row, out, owner in zip(rows, logits, matched, strict=True):
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
#: The inputs the contract tests vary (eps is drawn per norm).
CONTRACT = {
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(1, 6),
    "kind": st.sampled_from(["conv", "mlp", "linear"]),
    "queries": st.integers(1, 40),
}


@FAST
@given(**CONTRACT, eps=st.one_of(st.just(1.0), st.floats(0.0, 1.0)))
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
@pytest.mark.parametrize("norm", ["linf", "l2"])
@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["conv", "mlp", "linear"]),
    eps=st.floats(0.01, 0.3),
)
def test_the_search_keeps_exactly_the_improvements(
    norm: str, seed: int, kind: str, eps: float
) -> None:
    """Replay: the start is taken, then a candidate only when it lowers the margin.

    So the margin at the accepted point never increases over the run. (For L2 the queried
    rows are matched to their examples in L2: the inputs are about 2.4 apart, eps <= 0.3.)
    """
    model = make_model(kind, seed).eval()
    recorder = Recorder(model)
    x, y = distinct_batch(seed + 1, 6)
    with torch.no_grad():
        y[1:] = model(x[1:]).argmax(dim=1)  # example 0 keeps its random label
    result = square(recorder, x, y, eps=eps, norm=norm, queries=40, seed=seed)
    paths = trajectories(recorder, x, eps, norm)
    clean_logits = recorder.outputs[0]
    for i, path in enumerate(paths):
        if clean_logits[i].argmax() != y[i]:
            assert len(path) == 0 and torch.equal(result.x_adv[i], x[i])
            continue
        best, best_loss = path[0][0], float(loss(path[0][1][None], y[i : i + 1]))
        for point, logits in path[1:]:
            if norm == "linf":  # (an L2 step on windows where delta is 0 may change nothing)
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


# --------------------------------------------------------------------------- L2
def l2_batch(seed: int, n: int, shape: tuple[int, ...] = SHAPE) -> tuple[Tensor, Tensor]:
    """``make_batch``-like inputs (exact 0s and 1s included) of any shape, random labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=generator)
    u = torch.rand(x.shape, generator=generator)
    x[u < 0.15] = 0.0
    x[u > 0.85] = 1.0
    return x, torch.randint(0, CLASSES, (n,), generator=generator)


def paper_rectangle(rows: int, cols: int) -> Tensor:
    """The paper's M(r, s), 1-indexed: M_ij = sum_{k = max(|i - r//2 - 1|, |j - s//2 - 1|)}^{n}
    1/(k+1)^2 with n = max(r, s) // 2, by explicit loops."""
    top = max(rows, cols) // 2
    m = torch.zeros(rows, cols, dtype=torch.float64)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            start = max(abs(i - rows // 2 - 1), abs(j - cols // 2 - 1))
            m[i - 1, j - 1] = sum(1.0 / (k + 1) ** 2 for k in range(start, top + 1))
    return m


def paper_eta(side: int) -> Tensor:
    """eta = [M(h1, s) / ||.||; -M(h2, s) / ||.||] / ||.||, h1 = s // 2, h2 = s - h1."""
    halves = [paper_rectangle(side // 2, side), -paper_rectangle(side - side // 2, side)]
    stacked = torch.cat([h / h.norm() if h.numel() else h for h in halves])
    return stacked / stacked.norm()


@pytest.mark.parametrize("side", [1, 2, 3, 4, 5, 7, 10, 15, 28])
def test_the_meta_pseudo_gaussian_window_is_the_papers(side: int) -> None:
    window = _eta(side, dtype=torch.float64)
    assert window.shape == (side, side) and window.dtype == torch.float64
    torch.testing.assert_close(window, paper_eta(side), atol=1e-12, rtol=0)
    assert abs(float(window.norm()) - 1.0) < 1e-12
    top, bottom = window[: side // 2], window[side // 2 :]
    # Sign structure: the upper half positive, the lower half negative, no zero anywhere.
    assert bool((top > 0).all()) and bool((bottom < 0).all())
    if side >= 2:  # each half carries half the energy (both were normalised first)
        assert abs(float(top.norm()) - 0.5**0.5) < 1e-12
        assert abs(float(bottom.norm()) - 0.5**0.5) < 1e-12
    # Odd sides are symmetric left to right; each half peaks at its centre (column
    # side // 2, the right one of two for even sides) and falls off from it.
    if side % 2:
        assert torch.equal(window, window.flip(1))
    for half in (top, bottom.neg()):
        if half.numel():
            r, c = half.shape[0] // 2, side // 2
            assert float(half[r, c]) == float(half.max())
            assert bool((half[r, c:].diff() <= 0).all()) and bool((half[r:, c].diff() <= 0).all())
    if side == 5:  # one entry by hand: the top half's centre (row 1) is 1 + 1/4 + 1/9
        raw = paper_rectangle(2, 5)
        assert float(raw[1, 2]) == pytest.approx(1 + 1 / 4 + 1 / 9)
        assert float(raw[0, 0]) == pytest.approx(1 / 9)


def test_the_window_matches_torchattacks() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    reference = torchattacks.Square(Linear(), norm="L2", eps=1.0)
    for side in range(1, 30):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            theirs = reference.eta(side)  # transposed or not, at random
        ours = _eta(side)
        assert torch.allclose(ours, theirs, atol=1e-6) or torch.allclose(
            ours.t(), theirs, atol=1e-6
        )


def test_the_l2_start_is_a_grid_of_windows_at_norm_eps() -> None:
    """17 x 17: tiles of side 3, 5 x 5 of them from pixel 1, each +-eta(3) (or its transpose)
    per channel, all at the same scale eps / sqrt(tiles * channels)."""
    shape = (2, 17, 17)
    recorder = Recorder(Constant())  # accepts nothing: every candidate is from the start
    n, eps = 6, 1.0
    x = torch.full((n, *shape), 0.5)  # no clipping: the largest move is about 0.1
    y = torch.zeros(n, dtype=torch.long)
    square(recorder, x, y, eps=eps, norm="l2", queries=2, seed=0)
    delta = (recorder.inputs[1] - x).double()
    torch.testing.assert_close(
        delta.flatten(1).norm(dim=1), torch.full((n,), eps, dtype=torch.float64)
    )
    inside = torch.zeros(17, 17, dtype=torch.bool)
    inside[1:16, 1:16] = True
    assert float(delta[:, :, ~inside].abs().max()) == 0.0
    scale = eps / math.sqrt(25 * 2)
    eta = _eta(3, dtype=torch.float64) * scale
    patterns = {"up": eta, "up_t": eta.t(), "down": -eta, "down_t": -eta.t()}
    seen = set()
    for i in range(n):
        for r in range(5):
            for c in range(5):
                tile = delta[i, :, 1 + 3 * r : 4 + 3 * r, 1 + 3 * c : 4 + 3 * c]
                names = []
                for channel in tile:
                    match = [
                        k for k, v in patterns.items() if torch.allclose(channel, v, atol=1e-6)
                    ]
                    assert len(match) == 1
                    names.append(match[0])
                assert len({name.endswith("_t") for name in names}) == 1  # one shape a tile
                seen.add(tuple(names))
    assert len(seen) > 4  # signs and shapes vary between tiles, channels and examples


def reference_l2_step(
    x: Tensor,
    current: Tensor,
    eps: float,
    corners: tuple[int, int, int, int],
    window: Tensor,
    signs: Tensor,
) -> Tensor:
    """One L2 update written out per channel, from the paper and AutoAttack's formula."""
    side = window.shape[0]
    a, b, c, d = corners  # the first window at (a, b), the second at (c, d)
    channels = x.shape[0]
    delta = (current - x).double()
    both = torch.zeros(x.shape[1:], dtype=torch.bool)
    both[a : a + side, b : b + side] = True
    both[c : c + side, d : d + side] = True
    spare = max(eps**2 - float(delta.norm()) ** 2, 0.0) / channels
    out = delta.clone()
    out[:, c : c + side, d : d + side] = 0.0
    for k in range(channels):
        old = delta[k, a : a + side, b : b + side]
        new = window * float(signs[k]) + old / (old.norm() + 1e-12)
        target = math.sqrt(spare + float(delta[k][both].norm()) ** 2)
        out[k, a : a + side, b : b + side] = new / (new.norm() + 1e-12) * target
    return (x.double() + eps * out / (out.norm() + 1e-12)).clamp(0.0, 1.0)


def matches_an_l2_step(
    x: Tensor, current: Tensor, candidate: Tensor, eps: float, side: int
) -> bool:
    """Whether some windows, orientation and signs make the reference step give ``candidate``.

    Brute force over every pair of window positions, both orientations and every sign vector;
    a pair is skipped unless the second window's cells outside the first are back at ``x``
    (the step zeroes them, so they must be), which leaves few pairs to try in full.
    """
    height, width = x.shape[1:]
    at_x = (candidate == x).all(dim=0)
    eta = _eta(side, dtype=torch.float64)
    corners = [(r, c) for r in range(height - side + 1) for c in range(width - side + 1)]
    channels = x.shape[0]
    sign_sets = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * channels).view(-1, channels)
    for a, b in corners:
        for c, d in corners:
            second_only = torch.zeros(height, width, dtype=torch.bool)
            second_only[c : c + side, d : d + side] = True
            second_only[a : a + side, b : b + side] = False
            if not bool(at_x[second_only].all()):
                continue
            for window in (eta, eta.t()):
                for signs in sign_sets:
                    step = reference_l2_step(x, current, eps, (a, b, c, d), window, signs)
                    if torch.allclose(step, candidate.double(), atol=2e-6, rtol=0):
                        return True
    return False


@pytest.mark.parametrize("eps", [0.4, 3.0])
def test_each_l2_candidate_is_the_papers_update(eps: float) -> None:
    """Nothing is accepted (constant logits), so each candidate is one update of the start,
    found by brute force: side 5 (round(sqrt(0.33 * 49)) = 4, made odd), then 3 (p / 64 at
    iteration 1 of 2). eps = 3.0 clips a lot, so the spare budget term matters."""
    shape = (2, 7, 7)
    recorder = Recorder(Constant())  # accepts nothing: every candidate is from the start
    n = 4
    x, _ = l2_batch(0, n, shape)
    y = torch.zeros(n, dtype=torch.long)
    result = square(recorder, x, y, eps=eps, norm="l2", queries=4, p_init=0.33, seed=1)
    assert result.model_calls == 4 and torch.equal(result.x_adv, recorder.inputs[1])
    start = recorder.inputs[1]
    for candidate, side in zip(recorder.inputs[2:], (5, 3), strict=True):
        for i in range(n):
            assert matches_an_l2_step(x[i], start[i], candidate[i], eps, side)
    # A wrong side (or a wrong rule) matches nothing.
    assert not matches_an_l2_step(x[0], start[0], recorder.inputs[3][0], eps, 5)


def test_l2_candidates_spend_the_whole_budget_when_nothing_clips() -> None:
    """Inside the box the perturbation always has norm eps, channel by channel preserved
    (the moved mass stays in its channel), and changes lie within two squares."""
    shape = (3, 12, 12)
    recorder = Recorder(Constant())  # accepts nothing: every candidate is from the start
    n, eps = 5, 0.5
    x = torch.full((n, *shape), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    square(recorder, x, y, eps=eps, norm="l2", queries=30, seed=0)
    start = recorder.inputs[1] - x
    per_channel = start.flatten(2).norm(dim=2)
    for point in recorder.inputs[2:]:
        delta = point - x
        assert float(delta.abs().max()) < 0.5  # nothing was clipped
        torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.full((n,), eps))
        torch.testing.assert_close(delta.flatten(2).norm(dim=2), per_channel, atol=1e-5, rtol=0)


@FAST
@given(**CONTRACT, eps=st.one_of(st.just(0.0), st.floats(0.0, 6.0)))
def test_l2_contract(seed: int, n: int, kind: str, eps: float, queries: int) -> None:
    model = make_model(kind, seed).eval()
    recorder = Recorder(model)
    x, y = make_batch(seed + 1, n)
    x_copy, y_copy = x.clone(), y.clone()

    result = square(recorder, x, y, eps=eps, norm="l2", queries=queries, seed=seed)

    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    assert bool((delta.norm(dim=1) <= eps * (1 + 1e-6)).all())
    torch.testing.assert_close(result.l2, delta.norm(dim=1), atol=1e-6, rtol=0)
    # Every point the algorithm queried is in the ball and the box (no help from the core).
    for rows in recorder.inputs:
        assert float(rows.min()) >= 0.0 and float(rows.max()) <= 1.0
    with torch.no_grad():
        clean = model(x).argmax(dim=1) != y
        expected = model(x_adv).argmax(dim=1) != y
    assert torch.equal(result.success, expected)
    assert torch.equal(x_adv[clean], x[clean])
    # No scoring pass: the accepted points' logits were used, so every call was a query.
    assert result.model_calls == len(recorder.inputs) and 1 <= result.model_calls <= queries
    if eps == 0.0 or queries == 1:
        assert torch.equal(x_adv, x) and result.model_calls == 1


@pytest.mark.parametrize("eps", [0.3, 1.0, 4.0])
def test_l2_queried_points_stay_in_the_ball(eps: float) -> None:
    model = make_model("mlp", 2).eval()
    recorder = Recorder(model)
    x, y = distinct_batch(3, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    square(recorder, x, y, eps=eps, norm="l2", queries=60, seed=0)
    for rows in recorder.inputs[1:]:
        # Rows are the examples still attacked: each lies within eps of one input (L2).
        gaps = (rows[:, None] - x[None]).flatten(2).norm(dim=2).amin(dim=1)
        assert bool((gaps <= eps * (1 + 1e-6)).all())


def test_l2_is_reproducible_and_private() -> None:
    model = make_model("conv", 0)
    x, y = make_batch(1, 8)
    rng = torch.get_rng_state()
    first = square(model, x, y, eps=1.0, norm="l2", queries=60, seed=7)
    second = square(model, x, y, eps=1.0, norm="l2", queries=60, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.x_adv, second.x_adv) and first.model_calls == second.model_calls
    other = square(model, x, y, eps=1.0, norm="l2", queries=60, seed=8)
    assert not torch.equal(first.x_adv, other.x_adv)


@pytest.mark.parametrize("queries", [1, 2, 9])
def test_l2_spends_the_budget_exactly_when_nothing_is_fooled(queries: int) -> None:
    recorder = Recorder(Stubborn())
    x, _ = distinct_batch(0, 5)
    y = torch.zeros(5, dtype=torch.long)
    result = square(recorder, x, y, eps=2.0, norm="l2", queries=queries, seed=0)
    assert result.model_calls == queries == len(recorder.inputs)
    assert all(rows.shape[0] == 5 for rows in recorder.inputs)
    assert not bool(result.success.any())


def test_l2_fools_a_linear_model_a_step_along_the_weights_fools() -> None:
    """Two classes, margin half of what the best L2 step (eps * ||w1 - w0||) removes."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, 10, 10)
    n, eps = 16, 1.0
    w = torch.randn(2, math.prod(shape), generator=generator)
    x = 0.5 + 0.1 * (torch.rand((n, *shape), generator=generator) - 0.5)
    direction = w[1] - w[0]
    model = Linear(math.prod(shape), 2)
    with torch.no_grad():
        model.fc.weight.copy_(w)
        model.fc.bias.zero_()
        margins = -(x.flatten(1) @ direction)
        model.fc.bias[0] = 0.5 * eps * float(direction.norm()) - float(margins.mean())
        assert bool((model(x).argmax(dim=1) == 0).all())
    result = square(
        model, x, torch.zeros(n, dtype=torch.long), eps=eps, norm="l2", queries=500, seed=0
    )
    assert float(result.success.float().mean()) >= 0.75
    assert float(result.l2.max()) <= eps * (1 + 1e-6)


@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_schedule_decides_where_p_halves(rescale: bool) -> None:
    """Observed square sides per iteration (L-inf, 10 x 10) follow the schedule read against
    ``queries`` (rescaled) or against 10000 iterations (AutoAttack's resc_schedule=False)."""
    shape = (1, 10, 10)
    recorder = Recorder(Constant())  # accepts nothing: every candidate is from the start
    queries = 60
    x, _ = l2_batch(5, 3, shape)
    y = torch.zeros(3, dtype=torch.long)
    square(recorder, x, y, eps=0.2, queries=queries, rescale_schedule=rescale, seed=0)
    start = recorder.inputs[1]
    budget = queries if rescale else 10000
    for iteration, candidate in enumerate(recorder.inputs[2:]):
        expected = min(max(round(math.sqrt(_fraction(0.8, iteration, budget) * 100)), 1), 10)
        for i in range(3):
            rows = (candidate[i] != start[i]).any(dim=0).any(dim=1).nonzero().squeeze(1)
            assert len(rows) == expected  # the start is constant down a column
    assert len(rows) == (1 if rescale else 4)  # the last side: p_init / 512 against p_init / 4


def test_l2_from_config_and_large_budgets() -> None:
    model = make_model("conv", 5)
    x, y = make_batch(6, 8)
    config = {"name": "square", "norm": "l2", "eps": 2.5, "queries": 30, "seed": 3}
    configured = from_config(config)(model, x, y)
    direct = square(model, x, y.int(), eps=2.5, norm="l2", queries=30, seed=3)
    assert torch.equal(configured.x_adv, direct.x_adv)
    assert float(direct.l2.max()) <= 2.5 * (1 + 1e-6)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"eps": 1.0, "norm": "l1"}, "norm must be 'linf' or 'l2', got 'l1'"),
        ({"eps": -0.5, "norm": "l2"}, "eps must be"),
        ({"eps": math.inf, "norm": "l2"}, "eps must be"),
        ({"eps": 1.0, "norm": "l2", "p_init": 0.0}, r"p_init must be a finite number in \(0, 1\]"),
        ({"eps": 1.0, "norm": "l2", "p_init": 1.01}, r"p_init must be a finite number in \(0, 1\]"),
        ({"eps": 1.0, "norm": "l2", "p_init": -0.2}, "p_init must be"),
        ({"eps": 1.0, "norm": "l2", "queries": 0}, "queries must be an integer >= 1"),
        ({"eps": 0.1, "rescale_schedule": 1}, "rescale_schedule must be True or False"),
    ],
)
def test_bad_l2_parameters(params: dict, message: str) -> None:
    model = make_model("linear", 0)
    x, y = make_batch(0, 3)
    with pytest.raises(ValueError, match=message):
        square(model, x, y, **params)


# --------------------------------------------------------------------------- L2 on real MNIST
class SmallMNISTNet(nn.Module):
    """Two strided convolutions and a linear layer: about 90% on MNIST after one short epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def mnist_net(real_data: Path) -> tuple[nn.Module, Tensor, Tensor]:
    """The small net trained on 10000 MNIST training images, and the first 200 test points."""
    from advls import data

    train = data.load("mnist", "train", real_data, download=False, progress=False)
    test = data.load("mnist", "test", real_data, download=False, progress=False)
    images, labels = train.images[:10000].float() / 255, train.labels[:10000].long()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallMNISTNet()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        for start in range(0, len(labels), 50):
            batch = slice(start, start + 50)
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
    model.eval().requires_grad_(False)
    x, y = test.images[:200].float() / 255, test.labels[:200].long()
    with torch.no_grad():
        assert float((model(x).argmax(dim=1) == y).float().mean()) > 0.8
    return model, x, y


def compare_with_torchattacks(
    mnist_net: tuple[nn.Module, Tensor, Tensor], eps: float, iterations: int, rescale: bool
) -> tuple[float, float]:
    """Success rates (ours, torchattacks') of L2 Square with ``iterations`` search steps.

    torchattacks' ``n_queries`` counts iterations; ours counts the clean pass and the start
    too, so ``queries = iterations + 2`` runs as many steps.
    """
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = mnist_net
    ours = square(
        model, x, y, eps=eps, norm="l2", queries=iterations + 2, rescale_schedule=rescale, seed=0
    )
    assert float(ours.l2.max()) <= eps * (1 + 1e-6)
    assert ours.model_calls <= iterations + 2
    reference = torchattacks.Square(
        model,
        norm="L2",
        eps=eps,
        n_queries=iterations,
        n_restarts=1,
        p_init=0.8,
        loss="margin",
        resc_schedule=rescale,
        seed=0,
    )
    with torch.random.fork_rng():  # it seeds the global RNG
        x_theirs = reference(x, y)
    with torch.no_grad():
        theirs = float((model(x_theirs).argmax(dim=1) != y).float().mean())
    print(
        f"L2 eps {eps}, {iterations} iterations: ours {ours.success_rate:.3f}, theirs {theirs:.3f}"
    )
    return ours.success_rate, theirs


def tolerance(ours: float, theirs: float, n: int) -> float:
    """Three standard deviations of the difference of two independent success rates on ``n``
    points (at least one point). The two runs draw independent randomness on the same points;
    given the points, each rate's variance is ``sum_i p_i (1 - p_i) / n^2 <= p (1 - p) / n``
    (``p_i``: point ``i``'s chance of being fooled), so the pooled binomial bound is
    conservative and a one-sided check ``ours >= theirs - tolerance`` fails a correct
    implementation with probability below 0.2%."""
    pooled = (ours + theirs) / 2
    return max(3 * math.sqrt(2 * pooled * (1 - pooled) / n), 1 / n)


@pytest.mark.slow
def test_l2_is_as_strong_as_torchattacks_on_real_mnist(
    mnist_net: tuple[nn.Module, Tensor, Tensor],
) -> None:
    ours, theirs = compare_with_torchattacks(mnist_net, 2.0, 200, rescale=True)
    assert 0.2 < theirs < 0.95  # a regime where a weaker search would show
    assert ours >= theirs - tolerance(ours, theirs, 200)


@pytest.mark.slower
@pytest.mark.parametrize(
    "eps,rescale", [(1.5, True), (2.0, True), (2.0, False)], ids=["1.5", "2.0", "2.0-autoattack"]
)
def test_l2_is_as_strong_as_torchattacks_at_1000_queries(
    mnist_net: tuple[nn.Module, Tensor, Tensor], eps: float, rescale: bool
) -> None:
    """200 points, 1000 iterations; ``rescale_schedule=False`` is AutoAttack's own setting."""
    ours, theirs = compare_with_torchattacks(mnist_net, eps, 1000, rescale=rescale)
    assert 0.2 < theirs < 0.98
    assert ours >= theirs - tolerance(ours, theirs, 200)
