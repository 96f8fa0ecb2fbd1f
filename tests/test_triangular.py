"""The triangular experiment (paper §3.1): closed forms, optima, Monte-Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advls.losses import METHODS, smoothed_cross_entropy
from advls.theory import triangular as T

GAMMA = 0.6


@settings(max_examples=50, deadline=None)
@given(gamma=st.floats(0.5, 2 / 3), eps=st.floats(0.0, 1.0))
def test_bayes_closed_forms(gamma: float, eps: float) -> None:
    t = T.bayes_threshold(gamma)
    assert t == 0.0
    assert T.clean_accuracy(t, gamma) == pytest.approx(1 - gamma / 2, abs=1e-12)
    assert T.bayes_accuracy(gamma) == pytest.approx(1 - gamma / 2, abs=1e-12)
    expected = (1 - gamma / 2) * (1 - eps) ** 2
    assert T.adversarial_accuracy(t, gamma, eps) == pytest.approx(expected, abs=1e-12)
    assert T.bayes_adversarial_accuracy(gamma, eps) == pytest.approx(expected, abs=1e-12)


def test_bayes_threshold_maximises_clean_accuracy() -> None:
    ts = np.linspace(-1, 1, 2001)
    accs = [T.clean_accuracy(t, GAMMA) for t in ts]
    assert abs(ts[int(np.argmax(accs))]) < 1e-3


@pytest.mark.parametrize("t", [-0.7, -0.3, 0.0, 0.2])
def test_accuracy_formulas_match_sampling(t: float) -> None:
    x, y = T.sample(200_000, GAMMA, seed=1)
    assert y.mean() == pytest.approx(GAMMA, abs=0.005)
    for eps in (0.0, 0.1, 0.4):
        correct = np.where(y == 1, x > t + eps, x <= t - eps).mean()
        assert T.adversarial_accuracy(t, GAMMA, eps) == pytest.approx(correct, abs=0.005)
    clean = np.where(y == 1, x > t, x <= t).mean()
    assert T.clean_accuracy(t, GAMMA) == pytest.approx(clean, abs=0.005)


def test_sampler_matches_cdfs() -> None:
    x, y = T.sample(100_000, GAMMA, seed=2)
    for q in (-0.8, -0.4, -0.1, 0.3, 0.7):
        assert (x[y == 1] <= q).mean() == pytest.approx(float(T.cdf1(q)), abs=0.01)
        assert (x[y == 0] <= q).mean() == pytest.approx(float(T.cdf0(q)), abs=0.01)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_numpy_loss_equals_library_loss(method: str, alpha: float) -> None:
    t = -0.3
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    for y in (0, 1):
        labels = torch.full((41,), y, dtype=torch.int64)
        logits = torch.stack((torch.full_like(x, t), x), dim=1)
        for temperature in (0.1, 1.0):
            lib = smoothed_cross_entropy(logits, labels, method, alpha, temperature, "none")
            ours = T.example_loss(x.numpy() - t, y, method, alpha)
            np.testing.assert_allclose(lib.numpy(), ours, atol=1e-12)


def test_risk_matches_monte_carlo_average() -> None:
    x, y = T.sample(200_000, GAMMA, seed=3)
    for method, alpha, t in (("adversarial", 0.1, -0.4), ("standard", 0.3, 0.1)):
        loss = np.where(
            y == 1,
            T.example_loss(x - t, 1, method, alpha),
            T.example_loss(x - t, 0, method, alpha),
        )
        assert T.expected_risk(t, GAMMA, method, alpha) == pytest.approx(loss.mean(), abs=5e-3)


def test_cross_entropy_threshold_is_not_bayes() -> None:
    t_ce = T.optimal_threshold(GAMMA, "standard", 0.0)
    assert abs(t_ce) > 0.1
    assert T.clean_accuracy(t_ce, GAMMA) < T.bayes_accuracy(GAMMA) - 0.01
    # alpha = 0 is plain CE for every method.
    assert T.optimal_threshold(GAMMA, "adversarial", 0.0) == pytest.approx(t_ce, abs=1e-6)


@pytest.mark.parametrize(
    ("method", "alpha"),
    [
        ("standard", 0.0),
        ("adversarial", 0.1),
        ("adversarial", 0.5),
        ("standard", 0.1),
        ("second_best", 0.3),
    ],
)
def test_optimum_is_a_true_minimum(method: str, alpha: float) -> None:
    t = T.optimal_threshold(GAMMA, method, alpha)
    r = T.expected_risk(t, GAMMA, method, alpha)
    assert r <= T.expected_risk(t + 0.01, GAMMA, method, alpha)
    assert r <= T.expected_risk(t - 0.01, GAMMA, method, alpha)


def test_two_class_methods_coincide_except_als() -> None:
    t_sls = T.optimal_threshold(GAMMA, "standard", 0.2)
    assert T.optimal_threshold(GAMMA, "boltzmann", 0.2) == pytest.approx(t_sls, abs=1e-6)
    assert T.optimal_threshold(GAMMA, "second_best", 0.2) == pytest.approx(t_sls, abs=1e-6)
    assert abs(T.optimal_threshold(GAMMA, "adversarial", 0.2) - t_sls) > 0.01


@pytest.mark.parametrize(
    ("method", "alpha"),
    [
        ("standard", 0.0),
        ("adversarial", 0.1),
        ("standard", 0.1),
        ("boltzmann", 0.3),
        ("adversarial", 0.5),
    ],
)
def test_monte_carlo_training_agrees(method: str, alpha: float) -> None:
    eps = (0.1, 0.3, 0.5)
    fit = T.fit_monte_carlo(GAMMA, method, alpha, eps, n=100_000, seed=0)
    t = T.optimal_threshold(GAMMA, method, alpha)
    assert fit["threshold"] == pytest.approx(t, abs=0.02)
    assert fit["clean"] == pytest.approx(T.clean_accuracy(t, GAMMA), abs=0.01)
    for e in eps:
        assert fit["adv"][e] == pytest.approx(T.adversarial_accuracy(t, GAMMA, e), abs=0.01)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: T.clean_accuracy(0.0, 0.4), "gamma"),
        (lambda: T.adversarial_accuracy(0.0, 0.7, 0.1), "gamma"),
        (lambda: T.optimal_threshold(0.6, "adversarial", 1.5), "alpha"),
        (lambda: T.optimal_threshold(0.6, "adversarial", -0.1), "alpha"),
        (lambda: T.adversarial_accuracy(0.0, 0.6, -0.1), "eps"),
        (lambda: T.bayes_adversarial_accuracy(0.6, -1.0), "eps"),
        (lambda: T.optimal_threshold(0.6, "nope", 0.1), "method"),
        (lambda: T.run(gammas=(0.9,), out_dir="unused"), "gamma"),
        (lambda: T.run(alphas=(2.0,), out_dir="unused"), "alpha"),
        (lambda: T.run(eps=(-0.5,), out_dir="unused"), "eps"),
    ],
)
def test_bad_input_names_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_run_writes_table_and_figures(tmp_path) -> None:
    res = T.run(
        gammas=(0.6,), alphas=(0.1,), eps=(0.5,), methods=("als",), out_dir=tmp_path, mc_samples=0
    )
    assert (tmp_path / "triangular.md").is_file()
    assert (tmp_path / "triangular.json").is_file()
    for fig in res["gammas"]["0.6"]["figures"]:
        assert (tmp_path / "figures").joinpath(fig.split("/")[-1]).stat().st_size > 10_000
    rows = res["gammas"]["0.6"]["table"]
    assert [r["classifier"] for r in rows] == ["Bayes", "CE", "ALS"]
    assert "0.627" in (tmp_path / "triangular.md").read_text()


def test_no_smoothed_classifier_beats_both_bayes_and_ce() -> None:
    grid = np.linspace(0, 1, 201)
    for method in ("adversarial", "standard"):
        for alpha in (0.05, 0.1, 0.2, 0.3, 0.5):
            t = T.optimal_threshold(GAMMA, method, alpha)
            assert not T.beats_both(GAMMA, t, grid)
