"""IBP training (advls.defences.IBPTraining, TrainConfig.defence="ibp"): the loss in closed form,
the eps/kappa schedule, its wiring into training and resume, and real MNIST.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advls import certify
from advls import data as datasets
from advls.defences import IBPTraining, worst_case_logits
from advls.models import create
from advls.train import TrainConfig, _make_defence, train


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create("linear", 4, input_shape=(1, 3, 3)).eval()


def test_at_kappa_one_the_loss_is_the_clean_loss_exactly() -> None:
    model = _linear()
    x, y = torch.rand(8, 1, 3, 3), torch.randint(0, 4, (8,))
    defence = IBPTraining(eps=0.3, kappa=1.0, ramp_steps=5)
    for _ in range(7):  # warm-up, ramp and after: kappa stays 1
        loss, logits = defence.loss(model, x, y, F.cross_entropy)
        assert torch.equal(loss, F.cross_entropy(model(x), y))
        assert torch.equal(logits, model(x))


def test_the_robust_term_is_cross_entropy_of_the_exact_worst_case_of_a_linear_model() -> None:
    """For one affine layer IBP is exact: ``-m_k`` is ``max over the box of z_k - z_y``,
    ``sum_j max((w_k - w_y)_j l_j, (w_k - w_y)_j u_j) + b_k - b_y`` in closed form."""
    model = _linear(1)
    x, y = torch.rand(6, 1, 3, 3), torch.randint(0, 4, (6,))
    eps, kappa = 0.1, 0.3
    weight, bias = model.net.fc.weight.double(), model.net.fc.bias.double()
    lower, upper = (
        (x.flatten(1).double() - eps).clamp(min=0),
        (x.flatten(1).double() + eps).clamp(max=1),
    )
    difference = weight.unsqueeze(0) - weight[y].unsqueeze(1)  # (N, K, D): w_k - w_y
    worst = torch.maximum(difference * lower.unsqueeze(1), difference * upper.unsqueeze(1)).sum(-1)
    worst = worst + bias.unsqueeze(0) - bias[y].unsqueeze(1)
    chain = certify.extract(model, x)
    assert torch.allclose(worst_case_logits(chain, x, y, eps).double(), worst, atol=1e-5)
    # Past the ramp: kappa CE(z) + (1 - kappa) CE(worst case).
    defence = IBPTraining(eps=eps, kappa=kappa, warmup_steps=0, ramp_steps=1, step=1)
    loss, _ = defence.loss(model, x, y, F.cross_entropy)
    expected = kappa * F.cross_entropy(model(x).double(), y) + (1 - kappa) * F.cross_entropy(
        worst, y
    )
    assert math.isclose(float(loss.detach()), float(expected.detach()), rel_tol=1e-5)
    # The worst case is worse than any point of the box: CE there is at most CE(worst).
    corner = torch.where(torch.rand(6, 9) < 0.5, lower, upper).float().view_as(x)
    with torch.no_grad():
        assert float(F.cross_entropy(model(corner), y)) <= float(F.cross_entropy(worst, y)) + 1e-5


def test_at_a_tiny_eps_the_worst_case_is_the_clean_logits_shifted() -> None:
    """``-m(x, 0)_k = z_k - z_y``, and cross-entropy ignores a shift of all logits. In float64
    only the input box's outward rounding (2^-21 of a pixel) remains; in float32, what
    training uses, the layers' rounding terms stay within a few hundredths of these logits."""
    model = create("lenet-mnist", 10).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    chain = certify.extract(model, x)
    z = model(x).detach().double()
    shifted = z - z.gather(1, y.view(-1, 1))
    exact = certify.chain_margin_bounds(chain, x.double(), y, 1e-9, "ibp", torch.float64)
    exact = -exact.masked_fill(torch.isinf(exact), 0.0).detach()
    assert (exact >= shifted - 1e-9).all() and torch.allclose(exact, shifted, atol=1e-3)
    worst = worst_case_logits(chain, x, y, 1e-7).detach().double()
    assert (worst >= shifted - 1e-6).all() and torch.allclose(worst, shifted, atol=0.1)
    assert math.isclose(
        float(F.cross_entropy(exact, y)), float(F.cross_entropy(z, y)), rel_tol=1e-3
    )


def test_the_schedule_warms_up_then_ramps_linearly_then_holds() -> None:
    defence = IBPTraining(eps=0.2, kappa=0.5, warmup_steps=10, ramp_steps=20)
    assert defence.schedule(0) == (0.0, 1.0)
    assert defence.schedule(10) == (0.0, 1.0)
    eps, kappa = defence.schedule(20)
    assert math.isclose(eps, 0.1) and math.isclose(kappa, 0.75)
    eps, kappa = defence.schedule(15)
    assert math.isclose(eps, 0.05) and math.isclose(kappa, 0.875)
    assert defence.schedule(30) == (0.2, 0.5) and defence.schedule(10_000) == (0.2, 0.5)
    # Each loss call advances the clock by one step.
    model, x, y = _linear(), torch.rand(2, 1, 3, 3), torch.tensor([0, 1])
    for _ in range(3):
        defence.loss(model, x, y, F.cross_entropy)
    assert defence.step == 3


def test_the_config_builds_the_schedule_in_steps_and_keeps_other_runs_identity() -> None:
    config = TrainConfig(
        defence="ibp", defence_eps=0.3, epochs=4, defence_warmup=0.25, defence_ramp=0.5
    )
    defence = _make_defence(config, torch.Generator(), steps_per_epoch=10)
    assert isinstance(defence, IBPTraining)
    assert (defence.eps, defence.kappa, defence.warmup_steps, defence.ramp_steps) == (
        0.3,
        0.5,
        10,
        20,
    )
    assert "defence_ramp" in config.identity()
    plain = TrainConfig(defence="pgd-at").identity()
    assert not {"defence_kappa", "defence_warmup", "defence_ramp"} & set(plain)
    with pytest.raises(ValueError, match="defence_warmup \\+ defence_ramp must be at most 1"):
        TrainConfig(defence="ibp", defence_warmup=0.6, defence_ramp=0.5)
    with pytest.raises(ValueError, match="eps must be in"):
        IBPTraining(eps=0.0)


class _Stop(Exception):
    pass


def _stop_at_epoch(epoch: int):
    def say(message: str) -> None:
        # The log line of an epoch comes before its checkpoint: this one is never saved.
        if message.startswith(f"epoch {epoch}/"):
            raise _Stop

    return say


def test_ibp_training_resumes_on_the_same_schedule(tmp_path: Path, toy_npz: Path) -> None:
    """A run stopped after epoch 1 and resumed ends with the weights of an uninterrupted run:
    the schedule's clock comes back with the epoch (the ramp spans epochs 1 to 3 here)."""
    config = TrainConfig(
        dataset=str(toy_npz), model="mlp", loss="ce", epochs=3, batch_size=64, defence="ibp",
        defence_eps=0.05, defence_warmup=0.2, defence_ramp=0.6, seed=3,
    )  # fmt: skip
    whole = train(config, tmp_path / "whole", device="cpu", progress=False)
    stopped = tmp_path / "stopped"
    with pytest.raises(_Stop):
        train(config, stopped, device="cpu", progress=False, log=_stop_at_epoch(2))
    resumed = train(config, stopped, device="cpu", progress=False)
    assert resumed.resumed_from == 1
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(math.isfinite(record["train_loss"]) for record in whole.history)
    # Resuming with the clock at 0 would have trained differently: the test can tell.
    restarted = TrainConfig(**{**config.model_dump(), "defence_warmup": 0.0})
    other = train(restarted, tmp_path / "other", device="cpu", progress=False)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(whole.model.parameters(), other.model.parameters(), strict=True)
    )


def _certified(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, float]:
    return {m: certify.certified_accuracy(model, x, y, eps, m) for m in ("ibp", "crown-ibp")}


@pytest.mark.slower
def test_ibp_training_on_real_mnist_certifies_what_plain_training_cannot(real_data: Path) -> None:
    """About 80 s on 2 cores: 6 epochs of IBP training (eps ramped to 0.15 over half of them,
    the clean weight to 0.5) against plain training with the same recipe."""
    eps = 0.1
    common = dict(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=6, train_subset=20_000,
        optimizer="adam", lr=1e-3, weight_decay=0.0,
    )  # fmt: skip
    plain = train(TrainConfig(**common), data_dir=real_data, device="cpu", progress=False)
    schedule = dict(defence="ibp", defence_eps=0.15, defence_warmup=0.05, defence_ramp=0.5)
    certified = train(
        TrainConfig(**common, **schedule), data_dir=real_data, device="cpu", progress=False
    )
    test = datasets.load("mnist", "test", real_data)
    x, y = test.images[:500].float() / 255, test.labels[:500]
    plain_rates, ibp_rates = (
        _certified(plain.model, x, y, eps),
        _certified(certified.model, x, y, eps),
    )
    print(
        f"lenet-mnist, 6 epochs on 20k images, certified at eps {eps}: plain {plain_rates} "
        f"(clean {plain.test_accuracy:.3f}), IBP-trained {ibp_rates} "
        f"(clean {certified.test_accuracy:.3f})"
    )
    assert ibp_rates["ibp"] > plain_rates["ibp"] + 0.5
    assert certified.test_accuracy > 0.85
