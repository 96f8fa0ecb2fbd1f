"""Certified bounds (advls.certify): soundness against sampled and attacked points, closed
forms, tightness order of the methods, the relaxations, bad input, and the model left as found.

Soundness is checked against the model's own float32 forward pass, which differs from exact
arithmetic by its rounding; ``_tolerance`` allows that much and no more.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advls import attacks, certify
from advls import data as datasets
from advls.certify import crown, graph, ibp
from advls.certify.sampling import box_samples
from advls.models import Normalize, create, max_pool_2x2
from random_networks import randomly_initialised

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SAMPLES = 10_000  # points per drawn model, over all its inputs


# --------------------------------------------------------------------------- models
def mlp(inputs: int, hidden: tuple[int, ...], classes: int, *, norm: bool, seed: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size)]
        if norm:
            layers += [nn.BatchNorm1d(size)]
        layers += [nn.ReLU(), nn.Dropout(0.3)]
        width = size
    layers.append(nn.Linear(width, classes))
    return randomly_initialised(nn.Sequential(*layers), seed)


def cnn(channels: int, side: int, classes: int, *, variant: int, seed: int) -> nn.Module:
    """Conv (strided, grouped, dilated in some variants), batch norm, ReLU, max pooling
    (several geometries), average or adaptive average pooling, flatten, linear."""
    pools = [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.MaxPool2d(2, stride=1),
    ]
    second = [
        nn.Conv2d(4, 3, 2),
        nn.Conv2d(4, 4, 2, stride=2, padding=1, groups=2),
        nn.Conv2d(4, 3, 2, dilation=2, padding=1),
    ]
    averages = [nn.AvgPool2d(2), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(2)]
    features = nn.Sequential(
        Normalize([0.4] * channels, [0.8] * channels),
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        pools[variant % 3],
        second[variant // 3 % 3],
        nn.ReLU(),
        averages[variant % 2 + variant // 4],
        nn.Flatten(),
    )
    with torch.no_grad():
        width = features.eval()(torch.zeros(2, channels, side, side)).shape[1]
    model = nn.Sequential(
        features, nn.Linear(width, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, classes)
    )
    return randomly_initialised(model, seed)


class Functional(nn.Module):
    """A model written as advls's are: functional calls, inline normalisation, view/size."""

    def __init__(self, channels: int, side: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.5))
        self.conv1 = nn.Conv2d(channels, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        flat = 4 * ((side // 2) // 2) ** 2
        self.fc1 = nn.Linear(flat, 7)
        self.fc2 = nn.Linear(7, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        x = F.relu(max_pool_2x2(self.conv1(x)))
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(x)


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    family = draw(st.sampled_from(["mlp", "cnn", "functional"]))
    seed = draw(st.integers(0, 10_000))
    classes = draw(st.integers(2, 5))
    if family == "mlp":
        shape = (1, draw(st.integers(2, 5)), draw(st.integers(2, 5)))
        hidden = tuple(draw(st.lists(st.integers(2, 12), min_size=1, max_size=3)))
        model = mlp(math.prod(shape), hidden, classes, norm=draw(st.booleans()), seed=seed)
        return model, shape
    channels, side = draw(st.integers(1, 2)), draw(st.integers(6, 9))
    if family == "cnn":
        variant = draw(st.integers(0, 8))
        return cnn(channels, side, classes, variant=variant, seed=seed), (channels, side, side)
    side = side // 4 * 4
    return randomly_initialised(Functional(channels, side, classes), seed), (channels, side, side)


# --------------------------------------------------------------------------- helpers
def _box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)


def _logits(model: nn.Module, points: Tensor) -> Tensor:
    with torch.no_grad():
        return model(points.flatten(0, 1)).view(*points.shape[:2], -1).double()


def _tolerance(*values: Tensor) -> float:
    """What float32 rounding of the model's forward pass can account for."""
    finite = [v[torch.isfinite(v)].abs().max() for v in values if torch.isfinite(v).any()]
    return 1e-5 * (1.0 + float(max(finite)))


def _inputs(shape: tuple[int, ...], n: int, seed: int) -> Tensor:
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
    x[0].flatten()[:3] = torch.tensor([0.0, 1.0, 0.999])  # pixels at and near the box's edge
    return x


# --------------------------------------------------------------------------- soundness


@THOROUGH
@given(
    network=networks(),
    eps=st.floats(0.005, 0.3),
    seed=st.integers(0, 1000),
)
def test_no_sampled_or_attacked_point_leaves_the_bounds(
    network: tuple[nn.Module, tuple[int, ...]], eps: float, seed: int
) -> None:
    model, shape = network
    x = _inputs(shape, 2, seed)
    with torch.no_grad():
        classes = model(x).shape[1]
    y = torch.randint(0, classes, (2,), generator=torch.Generator().manual_seed(seed))
    _assert_sound(model, x, y, eps, box_samples(model, x, y, eps, SAMPLES // len(x), seed=seed))


def _assert_sound(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    points: Tensor,
    methods: tuple[str, ...] = certify.METHODS,
) -> None:
    """Every point of ``points`` (``(N, M, ...)``) lies in its box, and every logit and
    margin it takes lies within each method's bounds."""
    lower_box, upper_box = _box(x, eps)
    assert (points >= lower_box.unsqueeze(1)).all() and (points <= upper_box.unsqueeze(1)).all()
    z = _logits(model, points)  # (N, M, K)
    margins = z.gather(2, y.view(-1, 1, 1).expand(-1, z.shape[1], 1)) - z
    for method in methods:
        low, high = certify.logit_bounds(model, x, eps, method)
        bound = certify.margin_bounds(model, x, y, eps, method)
        tol = _tolerance(low, high, bound, z)
        assert (z >= low.unsqueeze(1) - tol).all(), (method, float((low.unsqueeze(1) - z).max()))
        assert (z <= high.unsqueeze(1) + tol).all(), (method, float((z - high.unsqueeze(1)).max()))
        off_label = torch.isfinite(bound).unsqueeze(1)
        assert ((margins >= bound.unsqueeze(1) - tol) | ~off_label).all(), method
        assert torch.isinf(
            bound.gather(1, y.view(-1, 1))
        ).all() and off_label.sum() == y.numel() * (z.shape[2] - 1)
        assert (low <= high).all()


@FAST
@given(network=networks(), eps=st.floats(0.01, 0.2), seed=st.integers(0, 1000))
def test_float32_ibp_holds_the_exact_arithmetic_interval(
    network: tuple[nn.Module, tuple[int, ...]], eps: float, seed: int
) -> None:
    """IBP in float32 with outward rounding contains IBP computed in float64 (exact to 1e-13):
    without the rounding terms it would fall inside about as often as outside."""
    model, shape = network
    x = _inputs(shape, 3, seed)
    chain = certify.extract(model, x)
    box32 = ibp.input_box(x, eps, torch.float32)
    box64 = tuple(end.double() for end in box32)  # the same box, exactly
    for index in range(1, len(chain.ops) + 1):
        with torch.no_grad():
            low32, high32 = ibp.propagate(chain.ops[:index], *box32)
            low64, high64 = ibp.propagate(chain.ops[:index], *box64)
        assert (low32.double() <= low64).all() and (high32.double() >= high64).all(), index
        # ... and by little: about 1e-5 of the magnitudes per layer.
        assert float((low64 - low32.double()).max()) <= 1e-3 * (1 + float(high64.abs().max()))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_a_cancelling_float32_sum_stays_inside_its_interval(kind: str) -> None:
    """``2^25 + 1 + ... + 1 - 2^25`` (200 ones, spread so the kernels add them one at a time
    to the large partial sum) is 0 in float32 but 200 exactly. The box has zero width, so
    only the layer's rounding term ``2 γ_n |W| |c|`` can hold the exact value: the widening
    of the incoming centre alone gives ``3 u |W| |c|``, about 12 here."""
    stride, ones = 128, 200
    row = torch.zeros(stride * (ones + 2))
    row[0], row[stride * (ones + 1)] = 2.0**25, -(2.0**25)
    row[stride : stride * (ones + 1) : stride] = 1.0
    size = row.numel()
    if kind == "dense":
        weight, point = row.repeat(3, 1), torch.ones(5, size)
        op = graph.Dense("fc", (size,), (3,), tf32="matmul", weight=weight)
    else:
        weight, point = row.view(1, 1, 1, size), torch.ones(1, 1, 1, size)
        op = graph.Conv("conv", (1, 1, size), (1, 1, 1), tf32="conv", weight=weight)
    if float(op.forward(point).flatten()[0]) != 0.0:
        pytest.skip("this machine's float32 kernels add these terms in another order")
    lower, upper = ibp.interval(op, point, point)
    assert (lower <= float(ones)).all() and (upper >= float(ones)).all()


def test_the_input_box_holds_float32_projections_and_stays_in_the_unit_box() -> None:
    x = torch.tensor([[0.0, 0.3, 0.1, 0.7, 1.0, 0.1 + 1e-8]])
    for eps in (0.1, 0.3, 1e-3):
        lower, upper = ibp.input_box(x, eps, torch.float32)
        projected_low, projected_high = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
        assert (lower <= projected_low).all() and (upper >= projected_high).all()
        assert (lower >= 0).all() and (upper <= 1).all()
        exact_low = (x.double() - eps).clamp(min=0)
        assert (lower.double() <= exact_low).all()
        assert float((exact_low - lower.double()).max()) < 1e-6


# --------------------------------------------------------------------------- closed forms
def _linear_exact(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The minimum of ``(w_y - w_k)·x' + b_y - b_k`` over the box, per coordinate in closed form."""
    lower, upper = _box(x.flatten(1).double(), eps)
    difference = weight.double()[y].unsqueeze(1) - weight.double().unsqueeze(0)  # (N, K, D)
    ends = torch.minimum(difference * lower.unsqueeze(1), difference * upper.unsqueeze(1))
    return ends.sum(-1) + (bias.double()[y].unsqueeze(1) - bias.double().unsqueeze(0))


@pytest.mark.parametrize("method", certify.METHODS)
def test_a_linear_model_is_bounded_exactly(method: str) -> None:
    """Every method is exact on one affine layer: the margins fold into it before the box
    closes them (differences of logit intervals would be looser), and the logits' ends are
    the box's ends."""
    torch.manual_seed(0)
    model = create("linear", 10, input_shape=(1, 6, 6), mean=(0.2,), std=(0.5,)).eval()
    x, y = torch.rand(7, 1, 6, 6), torch.randint(0, 10, (7,))
    eps = 0.05
    fc = model.net.fc
    # The normalisation folds into the layer: W x / s - W m / s + b.
    weight, bias = fc.weight / 0.5, fc.bias - fc.weight.sum(1) * 0.2 / 0.5
    exact = _linear_exact(weight, bias, x, y, eps)
    bound = certify.margin_bounds(model, x, y, eps, method)
    off_label = torch.isfinite(bound)
    assert (bound[off_label] <= exact[off_label] + 1e-9).all()  # sound ...
    assert torch.allclose(bound[off_label], exact[off_label], atol=1e-5)  # ... and exact
    lower, upper = _box(x.flatten(1).double(), eps)
    w = weight.double()
    exact_low = (w.clamp(min=0) @ lower.T + w.clamp(max=0) @ upper.T).T + bias.double()
    exact_high = (w.clamp(min=0) @ upper.T + w.clamp(max=0) @ lower.T).T + bias.double()
    low, high = certify.logit_bounds(model, x, eps, method)
    assert torch.allclose(low, exact_low, atol=1e-5) and torch.allclose(high, exact_high, atol=1e-5)
    # Differences of the logit intervals are strictly looser than the folded margins.
    difference = low.gather(1, y.view(-1, 1)) - high
    assert (difference[off_label] < bound[off_label] - 1e-3).all()


def test_max_pooling_alone_is_bounded_exactly_by_every_method() -> None:
    """The max of a box is ``[max_i l_i, max_i u_i]``: IBP's image, and what CROWN's pool
    relaxation gives back on exact input bounds."""
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).eval()
    x = torch.rand(5, 1, 4, 2)
    lower, upper = _box(x, 0.1)
    exact_low = F.max_pool2d(lower, 2).flatten(1).double()
    exact_high = F.max_pool2d(upper, 2).flatten(1).double()
    for method in certify.METHODS:
        low, high = certify.logit_bounds(model, x, 0.1, method)
        assert (low <= exact_low).all() and (high >= exact_high).all()
        assert torch.allclose(low, exact_low, atol=1e-6) and torch.allclose(
            high, exact_high, atol=1e-6
        )


# --------------------------------------------------------------------------- relaxations
@FAST
@given(
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    ceil=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_the_pool_relaxation_bounds_every_window_and_beats_the_constant(
    kernel: int, stride: int, padding: int, ceil: bool, seed: int
) -> None:
    padding = min(padding, kernel // 2)
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, 2, 5, 5)
    pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
    op = graph.MaxPool(
        "pool", (2, 5, 5), tuple(pool(x).shape[1:]), (kernel,) * 2, (stride,) * 2,
        (padding,) * 2, (1, 1), ceil,
    )  # fmt: skip
    centre = torch.randn((2, 2, 5, 5), generator=generator, dtype=torch.float64)
    radius = torch.rand((2, 2, 5, 5), generator=generator, dtype=torch.float64)
    radius = radius * (torch.rand((2, 2, 5, 5), generator=generator) < 0.7)  # some exact inputs
    lower, upper = centre - radius, centre + radius
    relaxation = crown.PoolRelaxation.of(op, lower, upper)
    points = lower + (upper - lower) * torch.rand(
        (32, *lower.shape), generator=generator, dtype=torch.float64
    )
    corners = torch.where(torch.rand((32, *lower.shape), generator=generator) < 0.5, upper, lower)
    for sample in (points, corners):
        flat = sample.flatten(3)  # (M, N, C, HW)
        exact = F.max_pool2d(sample.flatten(0, 1), kernel, stride, padding, ceil_mode=ceil)
        exact = exact.view(*sample.shape[:3], -1)
        below = flat.gather(3, relaxation.low_at.unsqueeze(0).expand(32, -1, -1, -1))
        at_high = flat.gather(3, relaxation.high_at.unsqueeze(0).expand(32, -1, -1, -1))
        above = relaxation.slope * at_high + relaxation.shift
        assert (below <= exact + 1e-12).all()
        assert (above >= exact - 1e-9).all()
    # On the box the upper line never exceeds the constant max_i u_i.
    top = F.max_pool2d(upper, kernel, stride, padding, ceil_mode=ceil).flatten(2)
    high_at_upper = upper.flatten(2).gather(2, relaxation.high_at)
    assert (relaxation.slope * high_at_upper + relaxation.shift <= top + 1e-9).all()


def test_the_pool_relaxation_in_closed_form() -> None:
    """One 2x2 window: exact where an input dominates, else the chord through (l_k, U) and
    (u_k, u_k), with k the top upper bound and U the runner-up."""
    op = graph.MaxPool("pool", (1, 2, 2), (1, 1, 1), (2, 2), (2, 2))
    dominated = crown.PoolRelaxation.of(
        op,
        torch.tensor([5.0, 0.0, 1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 2),
        torch.tensor([6.0, 4.0, 3.0, 4.5], dtype=torch.float64).view(1, 1, 2, 2),
    )
    assert (int(dominated.low_at), int(dominated.high_at)) == (0, 0)
    assert (float(dominated.slope), float(dominated.shift)) == (1.0, 0.0)
    open_window = crown.PoolRelaxation.of(
        op,
        torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 2),
        torch.tensor([3.0, 4.0, 2.0, 2.5], dtype=torch.float64).view(1, 1, 2, 2),
    )
    assert (int(open_window.low_at), int(open_window.high_at)) == (3, 1)
    assert math.isclose(float(open_window.slope), 1 / 3)  # (u_k - U) / (u_k - l_k) = 1/3
    assert math.isclose(float(open_window.shift), 3 - 1 / 3)  # U - slope * l_k


def test_the_relu_relaxation_is_the_triangle_with_the_adaptive_lower_slope() -> None:
    lower = torch.tensor([[-2.0, -1.0, 0.5, -3.0, -1.0]], dtype=torch.float64)
    upper = torch.tensor([[1.0, 3.0, 2.0, -0.5, 1.0]], dtype=torch.float64)
    relaxation = crown.ReluRelaxation.of(lower, upper)
    assert relaxation.lower_slope.flatten().tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert torch.allclose(
        relaxation.upper_slope.flatten(),
        torch.tensor([1 / 3, 3 / 4, 1.0, 0.0, 0.5], dtype=torch.float64),
    )
    assert torch.allclose(
        relaxation.upper_shift.flatten(),
        torch.tensor([2 / 3, 3 / 4, 0.0, 0.0, 0.5], dtype=torch.float64),
    )


# --------------------------------------------------------------------------- tightness
def _widths(model: nn.Module, x: Tensor, eps: float) -> dict[str, float]:
    widths = {}
    for method in certify.METHODS:
        low, high = certify.logit_bounds(model, x, eps, method)
        widths[method] = float((high - low).mean())
    return widths


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (mlp(16, (12, 10), 4, norm=False, seed=1), (1, 4, 4)),
        (mlp(16, (10, 8, 6), 3, norm=True, seed=2), (1, 4, 4)),
        (cnn(1, 8, 3, variant=0, seed=3), (1, 8, 8)),
        (cnn(2, 7, 4, variant=1, seed=4), (2, 7, 7)),
        (randomly_initialised(Functional(1, 8, 3), 5), (1, 8, 8)),
    ],
    ids=["mlp", "mlp-bn", "cnn", "cnn-ceil", "functional"],
)
def test_crown_is_tighter_than_crown_ibp_and_ibp_on_average(
    model: nn.Module, shape: tuple[int, ...]
) -> None:
    """Full CROWN beats both on average (logit widths and margin lower bounds). CROWN-IBP
    against IBP is not ordered: on random networks at larger eps CROWN's linear bounds on
    IBP's loose pre-activation bounds can be the looser (Zhang et al. 2020), so it is not
    asserted."""
    x = torch.rand((16, *shape), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))
    for eps in (0.02, 0.1):
        widths = _widths(model, x, eps)
        assert widths["crown"] <= widths["crown-ibp"] + 1e-9, widths
        assert widths["crown"] < widths["ibp"], widths
        margins = {m: certify.margin_bounds(model, x, y, eps, m) for m in certify.METHODS}
        means = {m: float(b[torch.isfinite(b)].mean()) for m, b in margins.items()}
        assert means["crown"] >= means["crown-ibp"] - 1e-9, means
        assert means["crown"] > means["ibp"], means


def test_the_advls_models_are_read_and_reproduced() -> None:
    torch.manual_seed(0)
    for name, shape in (
        ("linear", (1, 28, 28)),
        ("mlp", (1, 28, 28)),
        ("lenet-mnist", (1, 28, 28)),
        ("lenet", (3, 32, 32)),
    ):
        model = create(name, 10, mean=(0.1307,) * shape[0], std=(0.3081,) * shape[0]).eval()
        x = torch.rand(3, *shape)
        chain = certify.extract(model, x)
        with torch.no_grad():
            assert torch.allclose(chain.forward(x), model(x), atol=1e-5)
        kinds = [type(op).__name__ for op in chain.ops]
        if name == "lenet-mnist":
            assert kinds == [
                "Scale", "Conv", "MaxPool", "ReLU", "Conv", "MaxPool", "ReLU", "Reshape",
                "Dense", "ReLU", "Dense",
            ]  # fmt: skip


# --------------------------------------------------------------------------- certificates
def _attacked(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 40) -> Tensor:
    """Points any of PGD (CE, margin; 3 restarts) and APGD (CE, DLR) misclassifies."""
    broken = torch.zeros(len(x), dtype=torch.bool)
    for loss in ("ce", "margin"):
        result = attacks.pgd(model, x, y, eps=eps, steps=steps, restarts=3, loss=loss, seed=0)
        broken |= result.success
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    for loss in ("ce", "dlr") if classes >= 3 else ("ce",):
        broken |= attacks.apgd(model, x, y, eps=eps, steps=steps, loss=loss, seed=0).success
    return broken


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (mlp(16, (12, 10), 4, norm=True, seed=7), (1, 4, 4)),
        (cnn(1, 8, 4, variant=2, seed=8), (1, 8, 8)),
    ],
    ids=["mlp", "cnn"],
)
def test_no_certified_point_is_broken_by_pgd_or_apgd(
    model: nn.Module, shape: tuple[int, ...]
) -> None:
    x = torch.rand((64, *shape), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)  # correct by construction, so certificates can be issued
    for eps in (0.01, 0.03, 0.1):
        broken = _attacked(model, x, y, eps)
        for method in certify.METHODS:
            certain = certify.certified(model, x, y, eps, method)
            assert not (certain & broken).any(), (eps, method)
            assert certify.certified_accuracy(model, x, y, eps, method) <= 1 - float(
                broken.float().mean()
            )
    # The test is not vacuous: some points are certified, some broken.
    assert certify.certified(model, x, y, 0.01, "crown").any()
    assert _attacked(model, x, y, 0.1).any()


def test_a_misclassified_point_is_never_certified() -> None:
    model = mlp(4, (6,), 3, norm=False, seed=11)
    x = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    wrong = (predicted + 1) % 3
    for method in certify.METHODS:
        assert not certify.certified(model, x, wrong, 1e-4, method).any()
        assert certify.certified_accuracy(model, x, wrong, 1e-4, method) == 0.0
        # At a tiny radius the correctly labelled points are nearly all certified.
        assert certify.certified_accuracy(model, x, predicted, 1e-4, method) >= 0.9


@pytest.mark.slow
def test_on_real_mnist_certificates_bracket_attacks(real_data: Path) -> None:
    """A briefly trained LeNet-MNIST: certified <= attacked accuracy, no certified point broken,
    the methods order as they should (full CROWN on a subset: it is the expensive one), and
    10^4 sampled, vertex and PGD points per budget stay inside every method's bounds."""
    from advls.train import TrainConfig, train

    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=6000
    )
    model = train(config, data_dir=real_data, device="cpu", progress=False).model
    test = datasets.load("mnist", "test", real_data)
    x, y = test.images[:100].float() / 255, test.labels[:100]
    eps = 0.01
    broken = _attacked(model, x, y, eps, steps=20)
    accuracy = {m: certify.certified(model, x, y, eps, m) for m in ("ibp", "crown-ibp")}
    accuracy["crown"] = certify.certified(model, x[:30], y[:30], eps, "crown")
    for method, certain in accuracy.items():
        assert not (certain & broken[: len(certain)]).any(), method
    rates = {m: float(c.float().mean()) for m, c in accuracy.items()}
    attacked = 1 - float(broken.float().mean())
    print(f"LeNet-MNIST (1 epoch, 6000 images), eps {eps}: certified {rates}, attacked {attacked}")
    assert rates["ibp"] <= rates["crown-ibp"]
    assert (accuracy["crown"] >= accuracy["crown-ibp"][:30]).all()
    assert rates["crown-ibp"] > 0.3
    # The sampled soundness check on the trained model: 10^4 points at each budget.
    for budget in (0.01, 0.1):
        points = box_samples(model, x[:10], y[:10], budget, 1000, seed=1)
        _assert_sound(model, x[:10], y[:10], budget, points, ("ibp", "crown-ibp"))
        _assert_sound(model, x[:2], y[:2], budget, points[:2], ("crown",))


# --------------------------------------------------------------------------- the contract
def _toy() -> tuple[nn.Module, Tensor, Tensor]:
    model = mlp(4, (5,), 3, norm=True, seed=0)
    return model, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps must be a number in (0, 1]"),
        ({"eps": 1.5}, "eps must be a number in (0, 1]"),
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": True}, "eps"),
        ({"method": "lirpa"}, "method must be one of ibp, crown-ibp, crown"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict, message: str) -> None:
    model, x, y = _toy()
    arguments = {"eps": 0.1, "method": "ibp", **kwargs}
    for call in (
        lambda: certify.margin_bounds(model, x, y, **arguments),
        lambda: certify.certified_accuracy(model, x, y, **arguments),
        lambda: certify.logit_bounds(model, x, **arguments),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"count": 2}, "count must be an integer of at least 3"),
     ({"count": 10.0}, "count must be an integer"),
     ({"count": 10, "vertex_share": 1.5}, "vertex_share must lie in")],
)  # fmt: skip
def test_box_samples_refuses_bad_arguments_by_name(kwargs: dict, message: str) -> None:
    model, x, y = _toy()
    with pytest.raises(ValueError, match=message):
        box_samples(model, x, y, 0.1, **kwargs)


def test_box_samples_mix_uniform_points_vertices_and_pgd() -> None:
    """The shares asked for: vertices at a box end in every pixel, the uniform points almost
    never, and the last two points PGD's own (the same seed gives the same points)."""
    model, x, y = _toy()
    points = box_samples(model, x, y, 0.1, 52, seed=3, vertex_share=0.2)
    lower, upper = _box(x, 0.1)
    at_end = (points == lower.unsqueeze(1)) | (points == upper.unsqueeze(1))
    per_point = at_end.flatten(2).all(2)  # (N, M): every pixel at an end of the box
    assert per_point[:, 40:50].all() and not per_point[:, :40].any()
    pgd = attacks.pgd(model, x, y, eps=0.1, steps=20, restarts=2, loss="margin", seed=3).x_adv
    assert torch.equal(points[:, -1], pgd)
    assert torch.equal(points, box_samples(model, x, y, 0.1, 52, seed=3, vertex_share=0.2))


def test_bad_inputs_and_labels_are_refused_by_name() -> None:
    model, x, y = _toy()
    with pytest.raises(ValueError, match="x must lie in"):
        certify.margin_bounds(model, x * 2, y, 0.1)
    with pytest.raises(ValueError, match="y has 3 labels but x has 4"):
        certify.margin_bounds(model, x, y[:3], 0.1)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\]"):
        certify.certified(model, x, torch.tensor([0, 1, 2, 3]), 0.1)
    with pytest.raises(ValueError, match="y must be a 1-D integer"):
        certify.margin_bounds(model, x, y.float(), 0.1)
    with pytest.raises(ValueError, match=r"model must be a torch\.nn\.Module"):
        certify.margin_bounds(lambda t: t, x, y, 0.1)  # type: ignore[arg-type]


def test_uint8_inputs_read_as_pixels() -> None:
    model, _, y = _toy()
    pixels = torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8)
    assert torch.equal(
        certify.margin_bounds(model, pixels, y, 0.1),
        certify.margin_bounds(model, pixels.float() / 255, y, 0.1),
    )


class _Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Tanh(), nn.Linear(5, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class _Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.fc(x.flatten(1)))


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.fc(x.flatten(1))
        return z, z


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Tanh(), "certify does not support nn.Tanh at 'features.3'"),
        (_Gelu(), "certify does not support F.gelu"),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Unflatten(1, (3, 1))),
            "model must return logits of shape",
        ),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), "at least 2 logits"),
        (_Pair(), "model must return"),
        (create("resnet18", 10, input_shape=(1, 2, 2)), "residual connections, as in resnet18"),
    ],
    ids=["tanh", "gelu", "3-d output", "one logit", "tuple", "resnet18"],
)
def test_unsupported_models_are_refused_naming_what(model: nn.Module, message: str) -> None:
    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        certify.margin_bounds(model, x, torch.zeros(4, dtype=torch.long), 0.1)


def test_the_model_and_inputs_are_left_as_found() -> None:
    model, x, y = _toy()
    model.train()
    model[2].eval()  # a submodule frozen in eval mode stays so
    model[1].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_copy, y_copy = x.clone(), y.clone()
    for method in certify.METHODS:
        certify.certified_accuracy(model, x, y, 0.1, method)
        certify.logit_bounds(model, x, 0.1, method)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


def test_batching_does_not_change_the_bounds() -> None:
    model = cnn(1, 8, 3, variant=1, seed=2)
    x, y = torch.rand(9, 1, 8, 8), torch.randint(0, 3, (9,))
    for method in certify.METHODS:
        whole = certify.margin_bounds(model, x, y, 0.05, method, batch_size=9)
        parts = certify.margin_bounds(model, x, y, 0.05, method, batch_size=2)
        # float32 kernels may block their sums differently by batch size: rounding, no more.
        assert torch.allclose(whole, parts, rtol=1e-5, atol=1e-5), method


def test_small_chunks_in_full_crown_give_the_same_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn(1, 8, 3, variant=0, seed=6)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))
    whole = certify.margin_bounds(model, x, y, 0.05, "crown")
    monkeypatch.setattr(crown, "CHUNK_ELEMENTS", 64)
    assert torch.allclose(certify.margin_bounds(model, x, y, 0.05, "crown"), whole, atol=1e-10)


def test_ibp_margins_are_differentiable_in_the_parameters() -> None:
    """Certified training backpropagates through IBP: gradients reach every parameter."""
    model = cnn(1, 8, 3, variant=0, seed=1).train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    chain = certify.extract(model, x)  # the network as in eval mode, whatever the mode
    assert model.training and all(p.requires_grad for p in model.parameters())
    bounds = certify.chain_margin_bounds(chain, x, y, 0.05)
    loss = F.cross_entropy(-bounds.masked_fill(torch.isinf(bounds), 0.0).float(), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
