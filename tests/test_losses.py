"""Tests for advls.losses: Theorem 1, the smoothed targets, gradients, conventions, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import Tensor

from advls.losses import (
    ALIASES,
    METHODS,
    NonFiniteLogitsError,
    NonFiniteLossError,
    SmoothedCrossEntropy,
    alpha_from_torch_label_smoothing,
    canonical_method,
    logit_penalty,
    smooth_labels,
    smoothed_cross_entropy,
    smoothing_distribution,
    torch_label_smoothing_eps,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- custom methods
def uniform_all(logits: Tensor, labels: Tensor) -> Tensor:
    """Uniform over all K classes, the true one included (PyTorch's convention)."""
    return torch.full_like(logits, 1.0 / logits.shape[1])


def user_softmax(logits: Tensor, labels: Tensor) -> Tensor:
    """A user-defined soft-min over all classes."""
    return (-logits).softmax(dim=1)


CUSTOM = (uniform_all, user_softmax)
ALL_METHODS = (*METHODS, *CUSTOM)


# --------------------------------------------------------------------------- strategies
@st.composite
def problems(draw, min_k: int = 2, max_k: int = 12, max_n: int = 16, scale: float = 30.0):
    """(logits float64 (N, K), labels int64 (N,)) with labels in range."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(min_k, max_k))
    elements = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64)
    z = draw(hnp.arrays(np.float64, (n, k), elements=elements))
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    return torch.from_numpy(z), torch.from_numpy(y)


alphas = st.floats(0.0, 1.0, allow_nan=False)
temperatures = st.floats(0.05, 100.0, allow_nan=False)
methods = st.sampled_from(ALL_METHODS)
reductions = st.sampled_from(["mean", "sum", "none"])


# --------------------------------------------------------------------------- references
def reference_r(z: Tensor, y: Tensor, method, temperature: float = 1.0) -> Tensor:
    """Each method's smoothing distribution r, row by row in plain Python.

    Goibert & Dohmatob, "Adversarial Robustness via (Adversarial) Label-Smoothing": SLS is
    uniform over the K - 1 wrong classes; ALS is one-hot of the smallest logit over all
    classes (ties split evenly); BLS is r_k ∝ exp(-z_k / T) over the wrong classes; SBLS is
    one-hot of the largest wrong logit (ties split evenly).
    """
    if callable(method):
        return method(z, y).double()
    n, k = z.shape
    r = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        row, yi = z[i].tolist(), int(y[i])
        wrong = [j for j in range(k) if j != yi]
        if method == "standard":
            for j in wrong:
                r[i, j] = 1.0 / (k - 1)
        elif method == "adversarial":
            low = min(row)
            ties = [j for j in range(k) if row[j] == low]
            for j in ties:
                r[i, j] = 1.0 / len(ties)
        elif method == "second_best":
            high = max(row[j] for j in wrong)
            ties = [j for j in wrong if row[j] == high]
            for j in ties:
                r[i, j] = 1.0 / len(ties)
        elif method == "boltzmann":
            shift = min(row[j] for j in wrong)
            weights = {j: math.exp(-(row[j] - shift) / temperature) for j in wrong}
            total = sum(weights.values())
            for j in wrong:
                r[i, j] = weights[j] / total
        else:  # pragma: no cover
            raise AssertionError(method)
    return r


def reference_q(z: Tensor, y: Tensor, method, alpha: float, temperature: float = 1.0) -> Tensor:
    one_hot = F.one_hot(y, z.shape[1]).double()
    return (1 - alpha) * one_hot + alpha * reference_r(z.double(), y, method, temperature)


def smooth_ce(z: Tensor, q: Tensor) -> Tensor:
    """SmoothCE(z, q) = -sum_k q_k log softmax(z)_k, per example, by the definition."""
    return -(q * z.double().log_softmax(dim=1)).sum(dim=1)


def close(a: Tensor, b: Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- 1. Theorem 1
@FAST
@given(problems(), methods, alphas, temperatures)
def test_theorem_1_loss_equals_cross_entropy_plus_penalty(problem, method, alpha, temperature):
    z, y = problem
    loss = smoothed_cross_entropy(z, y, method, alpha, temperature, reduction="none")
    ce = F.cross_entropy(z, y, reduction="none")
    penalty = logit_penalty(z, y, method, alpha, temperature)
    assert loss.dtype == torch.float64 and loss.shape == (z.shape[0],)
    close(loss, ce + penalty, atol=1e-10)
    # And both equal SmoothCE against the method's target, from the definition.
    close(loss, smooth_ce(z, reference_q(z, y, method, alpha, temperature)), atol=1e-10)


# --------------------------------------------------------------------------- 2. the targets
@FAST
@given(problems(), methods, alphas, temperatures)
def test_smooth_labels_lie_in_the_tv_ball_and_are_detached(problem, method, alpha, temperature):
    z, y = problem
    z = z.clone().requires_grad_(True)
    q = smooth_labels(z, y, method, alpha, temperature)
    assert q.shape == z.shape and q.dtype == torch.float64
    assert not q.requires_grad and q.grad_fn is None
    assert bool((q >= 0).all())
    close(q.sum(dim=1), torch.ones(z.shape[0], dtype=torch.float64), atol=1e-12)
    q_y = q.gather(1, y[:, None]).squeeze(1)
    assert bool((q_y >= 1 - alpha - 1e-12).all())


@FAST
@given(problems(), methods, alphas, temperatures)
def test_smooth_labels_match_the_design_definitions(problem, method, alpha, temperature):
    z, y = problem
    close(
        smoothing_distribution(z, y, method, temperature),
        reference_r(z, y, method, temperature),
        atol=1e-12,
    )
    close(
        smooth_labels(z, y, method, alpha, temperature),
        reference_q(z, y, method, alpha, temperature),
        atol=1e-12,
    )


# --------------------------------------------------------------------------- 3. gradients
@FAST
@given(problems(max_k=24), methods, alphas, temperatures, st.integers(0, 2**31 - 1))
def test_gradient_is_softmax_minus_target(problem, method, alpha, temperature, seed):
    # K from 2 to 24: short rows (10-class problems) and longer ones.
    z, y = problem
    n = z.shape[0]
    q = reference_q(z, y, method, alpha, temperature)
    closed_form = z.softmax(dim=1) - q
    upstream = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    expected = {
        "none": upstream[:, None] * closed_form,
        "sum": closed_form,
        "mean": closed_form / n,
    }
    for reduction, grad_expected in expected.items():
        x = z.clone().requires_grad_(True)
        loss = smoothed_cross_entropy(x, y, method, alpha, temperature, reduction=reduction)
        loss.backward(upstream if reduction == "none" else None)
        assert x.grad is not None and x.grad.dtype == torch.float64
        close(x.grad, grad_expected, atol=1e-12)


@FAST
@given(problems(), methods, alphas, temperatures)
def test_penalty_gradient_treats_r_as_a_constant(problem, method, alpha, temperature):
    z, y = problem
    x = z.clone().requires_grad_(True)
    logit_penalty(x, y, method, alpha, temperature).sum().backward()
    one_hot = F.one_hot(y, z.shape[1]).double()
    close(x.grad, alpha * (one_hot - reference_r(z, y, method, temperature)), atol=1e-12)


def test_gradient_with_non_contiguous_logits():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    z = base.t().requires_grad_(False)
    x = base.clone().requires_grad_(True)
    loss = smoothed_cross_entropy(x.t(), y, "boltzmann", 0.3, 0.5, reduction="sum")
    loss.backward()
    q = reference_q(z, y, "boltzmann", 0.3, 0.5)
    close(x.grad.t(), z.softmax(dim=1) - q, atol=1e-12)


# --------------------------------------------------------------------------- 4. alpha = 0
@FAST
@given(problems(), methods, temperatures)
def test_alpha_zero_is_plain_cross_entropy(problem, method, temperature):
    z, y = problem
    for reduction in ("none", "sum", "mean"):
        loss = smoothed_cross_entropy(z, y, method, 0.0, temperature, reduction=reduction)
        close(loss, F.cross_entropy(z, y, reduction=reduction), atol=1e-12)
    close(
        logit_penalty(z, y, method, 0.0, temperature),
        torch.zeros(z.shape[0], dtype=z.dtype),
        atol=0.0,
    )


# --------------------------------------------------------------------------- 5. ALS is the max
@FAST
@given(problems(max_k=5), alphas)
def test_als_target_maximises_the_loss_over_the_tv_ball(problem, alpha):
    z, y = problem
    k = z.shape[1]
    loss = smoothed_cross_entropy(z, y, "adversarial", alpha, reduction="none")
    one_hot = F.one_hot(y, k).double()
    # The loss is linear in q, so its max over the polytope {q_y >= 1 - alpha} is at a vertex.
    vertices = [one_hot] + [
        (1 - alpha) * one_hot + alpha * F.one_hot(torch.full_like(y, j), k).double()
        for j in range(k)
    ]
    values = torch.stack([smooth_ce(z, v) for v in vertices], dim=1)
    best = values.amax(dim=1)
    assert bool((loss[:, None] >= values - 1e-12).all())
    close(loss, best, atol=1e-12)
    q = smooth_labels(z, y, "adversarial", alpha)
    assert bool((q.gather(1, y[:, None]) >= 1 - alpha - 1e-12).all())


@FAST
@given(problems(), alphas)
def test_als_target_is_the_one_hot_when_y_is_the_unique_argmin(problem, alpha):
    z, y = problem
    z = z.clone()
    z[torch.arange(z.shape[0]), y] = z.amin(dim=1) - 1.0
    q = smooth_labels(z, y, "adversarial", alpha)
    close(q, F.one_hot(y, z.shape[1]).double(), atol=1e-15)
    close(
        logit_penalty(z, y, "adversarial", alpha), torch.zeros(z.shape[0], dtype=z.dtype), atol=0.0
    )


# --------------------------------------------------------------------------- 6. BLS limits
@st.composite
def separated_problems(draw):
    """Distinct logits at least 0.5 apart, and y never the smallest logit."""
    n = draw(st.integers(1, 8))
    k = draw(st.integers(2, 12))
    rows, labels = [], []
    for _ in range(n):
        values = draw(st.lists(st.integers(-40, 40), min_size=k, max_size=k, unique=True))
        rows.append([0.5 * v for v in values])
        smallest = int(np.argmin(values))
        labels.append(draw(st.sampled_from([j for j in range(k) if j != smallest])))
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(labels)


@FAST
@given(separated_problems(), alphas)
def test_boltzmann_tends_to_adversarial_and_standard(problem, alpha):
    z, y = problem
    cold = smooth_labels(z, y, "boltzmann", alpha, temperature=1e-4)
    close(cold, smooth_labels(z, y, "adversarial", alpha), atol=1e-12)
    hot = smooth_labels(z, y, "boltzmann", alpha, temperature=1e6)
    close(hot, smooth_labels(z, y, "standard", alpha), atol=1e-4)


# --------------------------------------------------------------------------- 7. PyTorch's eps
@FAST
@given(problems(scale=10.0), st.floats(0.0, 1.0), st.sampled_from([torch.float32, torch.float64]))
def test_standard_equals_torch_label_smoothing(problem, fraction, dtype):
    z, y = problem
    k = z.shape[1]
    alpha = fraction * (k - 1) / k
    eps = torch_label_smoothing_eps(alpha, k)
    assert 0.0 <= eps <= 1.0
    z = z.to(dtype)
    for reduction in ("mean", "sum", "none"):
        ours = smoothed_cross_entropy(z, y, "standard", alpha, reduction=reduction)
        theirs = torch.nn.CrossEntropyLoss(label_smoothing=eps, reduction=reduction)(z, y)
        assert ours.dtype == dtype
        close(ours, theirs, atol=1e-6, rtol=1e-6)


@given(st.floats(0.0, 1.0), st.integers(2, 1000))
def test_torch_eps_conversions_are_inverses(fraction, k):
    alpha = fraction * (k - 1) / k
    eps = torch_label_smoothing_eps(alpha, k)
    assert eps == pytest.approx(alpha * k / (k - 1), abs=1e-12)
    assert alpha_from_torch_label_smoothing(eps, k) == pytest.approx(alpha, abs=1e-12)
    assert torch_label_smoothing_eps(alpha_from_torch_label_smoothing(fraction, k), k) == (
        pytest.approx(fraction, abs=1e-12)
    )


def test_torch_eps_boundaries():
    assert torch_label_smoothing_eps(0.0, 10) == 0.0
    assert torch_label_smoothing_eps(0.9, 10) == pytest.approx(1.0, abs=1e-12)
    assert torch_label_smoothing_eps(0.5, 2) == pytest.approx(1.0, abs=1e-12)
    assert alpha_from_torch_label_smoothing(1.0, 10) == pytest.approx(0.9)
    assert alpha_from_torch_label_smoothing(0.1, 2) == pytest.approx(0.05)


@pytest.mark.parametrize(("alpha", "k"), [(0.91, 10), (0.51, 2), (1.0, 3), (0.7, 3)])
def test_torch_eps_rejects_inexpressible_alpha(alpha, k):
    with pytest.raises(ValueError, match=r"alpha must be at most \(K-1\)/K"):
        torch_label_smoothing_eps(alpha, k)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, "10", None])
def test_torch_eps_rejects_bad_num_classes(bad):
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2"):
        torch_label_smoothing_eps(0.1, bad)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2"):
        alpha_from_torch_label_smoothing(0.1, bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf])
def test_alpha_from_torch_rejects_bad_eps(bad):
    with pytest.raises(ValueError, match=r"eps \(PyTorch label_smoothing\) must be in \[0, 1\]"):
        alpha_from_torch_label_smoothing(bad, 10)


# --------------------------------------------------------------------------- 8. ties
@FAST
@given(separated_problems(), alphas, st.data())
def test_ties_are_split_evenly(problem, alpha, data):
    z, y = problem
    n, k = z.shape
    assume(k >= 3)
    rows = torch.arange(n)
    # Two wrong classes share the smallest logit: ALS puts alpha/2 on each.
    low = z.clone()
    pairs = [
        data.draw(
            st.sampled_from(
                [(a, b) for a in range(k) for b in range(a + 1, k) if int(y[i]) not in (a, b)]
            )
        )
        for i in range(n)
    ]
    a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    low[rows, a] = low[rows, b] = z.amin(dim=1) - 1.0
    q = smooth_labels(low, y, "adversarial", alpha)
    expected = (1 - alpha) * F.one_hot(y, k).double()
    expected[rows, a] += alpha / 2
    expected[rows, b] += alpha / 2
    close(q, expected, atol=1e-15)
    # Two wrong classes share the largest wrong logit: SBLS puts alpha/2 on each.
    high = z.clone()
    high[rows, a] = high[rows, b] = z.amax(dim=1) + 1.0
    close(smooth_labels(high, y, "second_best", alpha), expected, atol=1e-15)


@FAST
@given(st.integers(1, 16), st.integers(2, 12), st.floats(-50, 50), alphas, st.data())
def test_all_equal_logits_spread_als_over_every_class(n, k, value, alpha, data):
    y = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    z = torch.full((n, k), value, dtype=torch.float64)
    expected = (1 - alpha) * F.one_hot(y, k).double() + alpha / k
    close(smooth_labels(z, y, "adversarial", alpha), expected, atol=1e-15)
    # SBLS and BLS over the K - 1 wrong classes are then uniform, i.e. SLS.
    sls = smooth_labels(z, y, "standard", alpha)
    close(smooth_labels(z, y, "second_best", alpha), sls, atol=1e-15)
    close(smooth_labels(z, y, "boltzmann", alpha, 0.01), sls, atol=1e-15)


def test_second_best_ignores_the_true_class_even_when_it_is_largest():
    z = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.0, 4.0, 4.0, 9.0]], dtype=torch.float64)
    y = torch.tensor([0, 3])
    q = smooth_labels(z, y, "second_best", 0.2)
    expected = torch.tensor([[0.8, 0.0, 0.2, 0.0], [0.0, 0.1, 0.1, 0.8]], dtype=torch.float64)
    close(q, expected, atol=1e-15)


# --------------------------------------------------------------------------- 9. closed forms
@FAST
@given(problems(), alphas, temperatures)
def test_penalties_have_the_closed_forms_of_theorem_1(problem, alpha, temperature):
    z, y = problem
    n, k = z.shape
    z_y = z.gather(1, y[:, None]).squeeze(1)
    wrong = ~F.one_hot(y, k).bool()
    wrong_logits = z[wrong].reshape(n, k - 1)

    als = logit_penalty(z, y, "adversarial", alpha)
    close(als, alpha * (z_y - z.amin(dim=1)), atol=1e-12)
    assert bool((als >= 0).all())
    close(
        logit_penalty(z, y, "second_best", alpha),
        alpha * (z_y - wrong_logits.amax(dim=1)),
        atol=1e-12,
    )
    close(
        logit_penalty(z, y, "standard", alpha), alpha * (z_y - wrong_logits.mean(dim=1)), atol=1e-12
    )
    r = (-wrong_logits / temperature).softmax(dim=1)
    close(
        logit_penalty(z, y, "boltzmann", alpha, temperature),
        alpha * (r * (z_y[:, None] - wrong_logits)).sum(dim=1),
        atol=1e-12,
    )


# --------------------------------------------------------------------------- 10. dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_float_dtype_works(dtype, method):
    g = torch.Generator().manual_seed(1)
    z64 = torch.randn(12, 7, dtype=torch.float64, generator=g) * 3
    y = torch.randint(0, 7, (12,), generator=g)
    z = z64.to(dtype)
    x = z.clone().requires_grad_(True)
    loss = smoothed_cross_entropy(x, y, method, 0.2, 0.7, reduction="mean")
    expected_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert loss.dtype == expected_dtype and bool(torch.isfinite(loss))
    # The reference uses the same (rounded) logits, so only arithmetic precision differs.
    reference = smooth_ce(z.double(), reference_q(z.double(), y, method, 0.2, 0.7)).mean()
    tolerance = {torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float32: 1e-5}.get(dtype, 1e-12)
    assert float(loss.detach()) == pytest.approx(float(reference), abs=tolerance, rel=tolerance)
    assert float(loss.detach()) == pytest.approx(
        float(smoothed_cross_entropy(z64, y, method, 0.2, 0.7)), abs=5e-2, rel=5e-2
    )
    loss.backward()
    assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())
    grad_reference = (z.double().softmax(dim=1) - reference_q(z.double(), y, method, 0.2, 0.7)) / 12
    close(x.grad.double(), grad_reference, atol=2e-3 if dtype != torch.float64 else 1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_autocast_bfloat16_gives_a_float32_loss(method):
    torch.manual_seed(0)
    layer = torch.nn.Linear(10, 6).double()
    x = torch.randn(16, 10, dtype=torch.float64)
    y = torch.randint(0, 6, (16,))
    reference = smoothed_cross_entropy(layer(x), y, method, 0.3).detach()
    layer = layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x.float())
        assert logits.dtype == torch.bfloat16
        loss = smoothed_cross_entropy(logits, y, method, 0.3)
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    assert float(loss.detach()) == pytest.approx(float(reference), rel=3e-2, abs=3e-2)
    loss.backward()
    assert layer.weight.grad is not None and bool(torch.isfinite(layer.weight.grad).all())


# --------------------------------------------------------------------------- 11. API
@FAST
@given(problems(), methods, alphas, temperatures)
def test_reductions_and_module_agree(problem, method, alpha, temperature):
    z, y = problem
    none = smoothed_cross_entropy(z, y, method, alpha, temperature, reduction="none")
    total = smoothed_cross_entropy(z, y, method, alpha, temperature, reduction="sum")
    mean = smoothed_cross_entropy(z, y, method, alpha, temperature, reduction="mean")
    assert none.shape == (z.shape[0],) and total.shape == () and mean.shape == ()
    close(total, none.sum(), atol=1e-10)
    close(mean, none.mean(), atol=1e-10)
    for reduction, value in (("none", none), ("sum", total), ("mean", mean)):
        module = SmoothedCrossEntropy(method, alpha, temperature, reduction=reduction)
        close(module(z, y), value, atol=0.0)


def test_module_default_is_mean_reduction():
    z = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    close(
        SmoothedCrossEntropy("standard", 0.1)(z, y),
        smoothed_cross_entropy(z, y, "standard", 0.1, reduction="none").mean(),
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("method", "alpha", "expected"),
    [
        ("adversarial", 0.1, ["method='adversarial'", "alpha=0.1"]),
        ("als", 0.25, ["method='adversarial'", "alpha=0.25"]),
        ("sls", 0.3, ["method='standard'", "alpha=0.3"]),
        ("bls", 0.2, ["method='boltzmann'", "alpha=0.2", "temperature=0.5"]),
        ("sbls", 0.05, ["method='second_best'", "alpha=0.05"]),
        (user_softmax, 0.4, ["method='user_softmax'", "alpha=0.4"]),
    ],
)
def test_module_repr_names_method_and_alpha(method, alpha, expected):
    text = repr(SmoothedCrossEntropy(method, alpha, temperature=0.5))
    assert text.startswith("SmoothedCrossEntropy(")
    for part in expected:
        assert part in text


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("als", "adversarial"),
        ("sls", "standard"),
        ("bls", "boltzmann"),
        ("sbls", "second_best"),
        ("ALS", "adversarial"),
        ("second-best", "second_best"),
    ],
)
def test_method_aliases(alias, canonical):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 6, (9,), generator=g)
    assert torch.equal(
        smooth_labels(z, y, alias, 0.3, 0.4), smooth_labels(z, y, canonical, 0.3, 0.4)
    )
    assert torch.equal(
        smoothed_cross_entropy(z, y, alias, 0.3, 0.4, reduction="none"),
        smoothed_cross_entropy(z, y, canonical, 0.3, 0.4, reduction="none"),
    )
    assert SmoothedCrossEntropy(alias).method == canonical


@pytest.mark.parametrize(
    "name",
    [*METHODS, *ALIASES, "ALS", "Second-Best", "SECOND_BEST", "Boltzmann", "Sls"],
)
def test_canonical_method_accepts_names_and_aliases_in_any_case(name):
    expected = ALIASES.get(name.lower(), name.lower())
    assert expected in METHODS
    assert canonical_method(name) == expected
    assert SmoothedCrossEntropy(name).method == expected


@pytest.mark.parametrize("name", ["gaussian", "ce", "second best", "als ", "", 3, None])
def test_canonical_method_rejects_other_names(name):
    with pytest.raises(ValueError, match="method must be one of standard, adversarial"):
        canonical_method(name)


def test_methods_differ_from_each_other():
    # Guards against every name mapping to the same distribution.
    z = torch.tensor([[3.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    targets = [smooth_labels(z, y, m, 0.4).squeeze(0).tolist() for m in METHODS]
    for a, b in itertools.combinations(targets, 2):
        assert a != b


# --------------------------------------------------------------------------- 12. validation
Z = torch.randn(4, 5, dtype=torch.float64)
Y = torch.tensor([0, 1, 4, 2])

BAD_HYPERPARAMETERS = [
    ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": 1.0001}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": math.nan}, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": "0.1"}, r"alpha must be a number in \[0, 1\]"),
    ({"temperature": 0.0}, r"temperature must be a finite number > 0"),
    ({"temperature": -1.0}, r"temperature must be a finite number > 0"),
    ({"temperature": math.inf}, r"temperature must be a finite number > 0"),
    ({"temperature": math.nan}, r"temperature must be a finite number > 0"),
    ({"method": "gaussian"}, r"method must be one of standard, adversarial, boltzmann"),
    ({"method": 3}, r"method must be one of"),
    ({"reduction": "avg"}, r"reduction must be one of \('mean', 'sum', 'none'\)"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smoothed_cross_entropy(Z, Y, **{"method": "boltzmann", **kwargs})
    # The module validates eagerly, at construction.
    with pytest.raises(ValueError, match=message):
        SmoothedCrossEntropy(**{"method": "boltzmann", **kwargs})
    if "reduction" not in kwargs:
        with pytest.raises(ValueError, match=message):
            smooth_labels(Z, Y, **{"method": "boltzmann", **kwargs})
        with pytest.raises(ValueError, match=message):
            logit_penalty(Z, Y, **{"method": "boltzmann", **kwargs})


BAD_INPUTS = [
    (Z, torch.tensor([0, 1, -1, 2]), r"labels must lie in \[0, 4\] for K=5"),
    (Z, torch.tensor([0, 1, 5, 2]), r"labels must lie in \[0, 4\] for K=5"),
    (Z, Y[:, None], r"labels must be a 1-D tensor of length N=4"),
    (Z, Y[:3], r"labels must be a 1-D tensor of length N=4"),
    (Z, Y.double(), r"labels must be an integer tensor"),
    (Z, Y.bool(), r"labels must be an integer tensor"),
    (Z, [0, 1, 4, 2], r"labels must be a 1-D tensor"),
    (Z[0], Y, r"logits must be a 2-D tensor \(N, K\)"),
    (Z[:, :, None], Y, r"logits must be a 2-D tensor \(N, K\)"),
    (Z.numpy(), Y, r"logits must be a 2-D tensor \(N, K\)"),
    (Z.long(), Y, r"logits must be floating point"),
    (Z[:, :1], torch.zeros(4, dtype=torch.long), r"logits must have at least 2 classes"),
]


@pytest.mark.parametrize(("logits", "labels", "message"), BAD_INPUTS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_bad_inputs_raise(logits, labels, message, method):
    with pytest.raises(ValueError, match=message):
        smoothed_cross_entropy(logits, labels, method)
    with pytest.raises(ValueError, match=message):
        SmoothedCrossEntropy(method)(logits, labels)
    with pytest.raises(ValueError, match=message):
        smooth_labels(logits, labels, method)
    with pytest.raises(ValueError, match=message):
        logit_penalty(logits, labels, method)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_finite_logits_raise(bad, method, alpha, dtype):
    z = Z.clone().to(dtype)
    z[2, 3] = bad
    message = r"logits contain NaN or infinite values"
    # NonFiniteLogitsError is a ValueError (a refused input) and a NonFiniteLossError.
    for reduction in ("none", "sum", "mean"):
        with pytest.raises(NonFiniteLogitsError, match=message):
            smoothed_cross_entropy(z, Y, method, alpha, reduction=reduction)
        with pytest.raises(NonFiniteLogitsError, match=message):
            SmoothedCrossEntropy(method, alpha, reduction=reduction)(z, Y)
    with pytest.raises(NonFiniteLogitsError, match=message):
        logit_penalty(z, Y, method, alpha)
    with pytest.raises(NonFiniteLogitsError, match=message):
        smooth_labels(z, Y, method, alpha)
    with pytest.raises(NonFiniteLogitsError, match=message):
        smoothing_distribution(z, Y, method)


def test_non_finite_logits_error_is_a_value_error_and_a_loss_error():
    assert issubclass(NonFiniteLogitsError, ValueError)
    assert issubclass(NonFiniteLogitsError, NonFiniteLossError)
    assert not issubclass(NonFiniteLossError, ValueError)


def test_finite_logits_that_overflow_the_loss_raise_a_loss_error():
    z = torch.tensor([[3e38, -3e38, 0.0]])  # log-softmax overflows to -inf at the minimum
    with pytest.raises(NonFiniteLossError, match="not finite although the logits are") as info:
        smoothed_cross_entropy(z, torch.tensor([0]), "adversarial", 0.1)
    assert not isinstance(info.value, NonFiniteLogitsError)


@pytest.mark.parametrize(
    "labels", [torch.tensor([0, 1, 5, 2]), torch.tensor([0, -1, 4, 2]), Y.double()]
)
def test_bad_labels_are_not_reported_as_non_finite(labels):
    with pytest.raises(ValueError, match="labels must") as info:
        smoothed_cross_entropy(Z, labels, "adversarial", 0.1)
    assert not isinstance(info.value, NonFiniteLossError)
    assert "finite" not in str(info.value)


def _wrong_shape(logits, labels):
    return torch.full_like(logits[:, 1:], 1.0 / (logits.shape[1] - 1))


def _not_normalised(logits, labels):
    return torch.ones_like(logits)


def _negative(logits, labels):
    r = torch.zeros_like(logits)
    r[:, 0], r[:, 1] = 2.0, -1.0
    return r


def _not_finite(logits, labels):
    return torch.full_like(logits, math.nan)


def _not_a_tensor(logits, labels):
    return [[0.2] * logits.shape[1]] * logits.shape[0]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_wrong_shape, r"must return an \(N, K\) = \(4, 5\) tensor, got \(4, 4\)"),
        (_not_a_tensor, r"must return an \(N, K\) = \(4, 5\) tensor, got list"),
        (_not_normalised, r"must return finite, non-negative rows summing to 1"),
        (_negative, r"must return finite, non-negative rows summing to 1"),
        (_not_finite, r"must return finite, non-negative rows summing to 1"),
    ],
)
def test_bad_custom_distributions_raise(fn, message):
    for call in (
        lambda: smoothed_cross_entropy(Z, Y, fn, 0.1),
        lambda: SmoothedCrossEntropy(fn, 0.1)(Z, Y),
        lambda: smooth_labels(Z, Y, fn, 0.1),
        lambda: logit_penalty(Z, Y, fn, 0.1),
        lambda: smoothing_distribution(Z, Y, fn),
    ):
        with pytest.raises(ValueError, match=message):
            call()


# --------------------------------------------------------------------------- 13. no mutation
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inputs_are_not_mutated(method, reduction, dtype):
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(8, 6, generator=g) * 4).to(dtype).requires_grad_(True)
    y = torch.randint(0, 6, (8,), generator=g).int()
    z_before, y_before = z.detach().clone(), y.clone()
    loss = smoothed_cross_entropy(z, y, method, 0.3, 0.5, reduction=reduction)
    loss.sum().backward()
    smooth_labels(z, y, method, 0.3, 0.5)
    logit_penalty(z, y, method, 0.3, 0.5).sum().backward()
    assert torch.equal(z.detach(), z_before) and torch.equal(y, y_before)
    assert y.dtype == torch.int32


def test_custom_distribution_output_is_not_mutated():
    # A user may return a cached tensor; building q from it must not scale it in place.
    cached = torch.full((4, 5), 0.2, dtype=torch.float64)
    before = cached.clone()

    def cached_r(logits, labels):
        return cached

    first = smoothed_cross_entropy(Z, Y, cached_r, 0.3, reduction="none")
    second = smoothed_cross_entropy(Z, Y, cached_r, 0.3, reduction="none")
    smooth_labels(Z, Y, cached_r, 0.3)
    SmoothedCrossEntropy(cached_r, 0.3)(Z, Y)
    assert torch.equal(cached, before)
    assert torch.equal(first, second)
    close(first, smooth_ce(Z, reference_q(Z, Y, uniform_all, 0.3)), atol=1e-12)


# --------------------------------------------------------------------------- 14. large logits
@FAST
@given(problems(scale=1.0), methods, alphas, st.sampled_from([torch.float32, torch.float64]))
def test_large_logits_do_not_overflow(problem, method, alpha, dtype):
    z, y = problem
    z = z * 1e4
    z_cast = z.to(dtype)
    loss = smoothed_cross_entropy(z_cast, y, method, alpha, 0.5, reduction="none")
    assert bool(torch.isfinite(loss).all())
    # Closed form in float64 on the same logits: LSE(z) - sum_k q_k z_k.
    z64 = z_cast.double()
    q = reference_q(z64, y, method, alpha, 0.5)
    expected = torch.logsumexp(z64, dim=1) - (q * z64).sum(dim=1)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-2
    close(loss.double(), expected, atol=tolerance, rtol=1e-6 if dtype == torch.float32 else 0.0)
    x = z_cast.clone().requires_grad_(True)
    smoothed_cross_entropy(x, y, method, alpha, 0.5, reduction="sum").backward()
    assert bool(torch.isfinite(x.grad).all())


def test_second_derivatives_match_the_composite_loss() -> None:
    """Input-gradient penalties differentiate the loss twice: the fused backward must too."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])

    def penalty_gradient(loss_fn) -> torch.Tensor:
        weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)
        weight.data = torch.randn(5, 4, dtype=torch.float64)
        (gx,) = torch.autograd.grad(loss_fn(x @ weight), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), weight)
        return gw

    def composite(logits: torch.Tensor) -> torch.Tensor:
        q = smooth_labels(logits, labels, "adversarial", 0.2)
        return -(q * logits.log_softmax(dim=1)).sum(dim=1).mean()

    ours = penalty_gradient(lambda z: smoothed_cross_entropy(z, labels, "adversarial", 0.2))
    torch.testing.assert_close(ours, penalty_gradient(composite), rtol=1e-10, atol=1e-12)


# r is locally constant for these (piecewise constant for ALS and SBLS), so finite differences
# see exactly the gradient with q held fixed; Boltzmann's r moves with z and is checked in
# closed form above instead.
@pytest.mark.parametrize("method", ["standard", "adversarial", "second_best", uniform_all])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck(method, reduction) -> None:
    g = torch.Generator().manual_seed(4)
    z = (torch.randn(6, 7, dtype=torch.float64, generator=g) * 2).requires_grad_(True)
    y = torch.randint(0, 7, (6,), generator=g)

    def loss(x: Tensor) -> Tensor:
        return smoothed_cross_entropy(x, y, method, 0.3, reduction=reduction)

    assert torch.autograd.gradcheck(loss, (z,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(loss, (z,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("classes", [5, 20])
def test_non_contiguous_logits(classes: int) -> None:
    base = torch.randn(classes, 6, dtype=torch.float64)
    labels = torch.arange(6) % classes
    expected = smoothed_cross_entropy(base.t().contiguous(), labels, "standard", 0.1)
    torch.testing.assert_close(smoothed_cross_entropy(base.t(), labels, "standard", 0.1), expected)
