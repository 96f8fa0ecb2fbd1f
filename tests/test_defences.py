"""Adversarial-training baselines: crafted in eval mode, constant, inside the budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advls.defences import AdversarialTraining, craft_fgsm, craft_pgd
from advls.train import TrainConfig, train


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Dropout(0.5), torch.nn.Linear(12, 3)
    )


def test_fgsm_example_is_the_formula_in_eval_mode() -> None:
    model = _model().train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    crafted = craft_fgsm(model, x, y, eps=0.1)
    assert model.training  # mode restored
    model.eval()
    z = x.clone().requires_grad_(True)
    F.cross_entropy(model(z), y, reduction="sum").backward()
    expected = (x + 0.1 * z.grad.sign()).clamp(0, 1)
    assert torch.equal(crafted, expected)  # dropout was off while crafting
    assert not crafted.requires_grad


def test_pgd_example_stays_in_the_budget_and_box() -> None:
    model = _model()
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    x[0] = 0.0
    x[1] = 1.0
    generator = torch.Generator().manual_seed(0)
    crafted = craft_pgd(model, x, y, eps=0.05, steps=5, step_size=0.02, generator=generator)
    assert (crafted - x).abs().max() <= 0.05 + 1e-7
    assert crafted.min() >= 0 and crafted.max() <= 1
    again = craft_pgd(model, x, y, 0.05, 5, 0.02, torch.Generator().manual_seed(0))
    assert torch.equal(crafted, again)


def test_fgsm_training_loss_mixes_clean_and_adversarial_terms() -> None:
    model = _model().eval()  # no dropout, so the two forward passes agree
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    defence = AdversarialTraining("fgsm-at", eps=0.1, beta=0.3)
    loss, clean_logits = defence.loss(model, x, y, F.cross_entropy)
    x_adv = craft_fgsm(model, x, y, 0.1)
    expected = 0.3 * F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(clean_logits, model(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "mixup", "eps": 0.1}, "defence must be one of"),
        ({"kind": "fgsm-at", "eps": 0.0}, "eps must be in"),
        ({"kind": "fgsm-at", "eps": 0.1, "beta": 1.5}, "beta must be in"),
        ({"kind": "pgd-at", "eps": 0.1, "steps": 0}, "steps must be"),
    ],
)
def test_bad_defence_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdversarialTraining(**kwargs)


@pytest.mark.parametrize("defence", ["fgsm-at", "pgd-at"])
def test_adversarial_training_is_seeded_and_combines_with_smoothing(
    toy_npz: Path, defence: str
) -> None:
    config = TrainConfig(
        dataset=str(toy_npz), model="linear", loss="adversarial", alpha=0.1, epochs=2,
        batch_size=32, defence=defence, defence_eps=0.05, defence_steps=3,
    )  # fmt: skip
    first = train(config, device="cpu", progress=False)
    second = train(config, device="cpu", progress=False)
    assert first.test_accuracy == 1.0
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key])
