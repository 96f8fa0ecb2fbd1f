"""Adversarial-training baselines on real MNIST reproduce the known patterns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advls import attacks
from advls import data as datasets
from advls.train import TrainConfig, train

EPS = 0.1
POINTS = 1000


def _test_points(real_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    test = datasets.load("mnist", "test", real_data)
    return test.images[:POINTS].float() / 255.0, test.labels[:POINTS]


@pytest.mark.slow
def test_fgsm_training_resists_fgsm_far_more_than_bim(real_data: Path) -> None:
    """The paper's baseline pattern (MNIST LeNet at its largest eps: FGSM 0.754, BIM 0.316):
    an FGSM-trained model looks robust to FGSM and much less so to BIM at the same eps."""
    config = TrainConfig(
        dataset="mnist",
        model="lenet-mnist",
        loss="ce",
        epochs=3,
        defence="fgsm-at",
        defence_eps=EPS,
    )
    model = train(config, data_dir=real_data, device="cpu", progress=False).model
    x, y = _test_points(real_data)
    eps = 2 * EPS
    fgsm = attacks.fgsm(model, x, y, eps=eps).robust_accuracy
    bim = attacks.bim(model, x, y, eps=eps, steps=10, step_size=eps / 4).robust_accuracy
    print(f"FGSM-AT (eps {EPS}): FGSM accuracy {fgsm:.3f}, BIM-10 {bim:.3f} at eps {eps}")
    assert fgsm >= bim + 0.2


@pytest.mark.slower
def test_pgd_training_withstands_pgd(real_data: Path) -> None:
    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=5, defence="pgd-at", defence_eps=EPS
    )
    model = train(config, data_dir=real_data, device="cpu", progress=False).model
    x, y = _test_points(real_data)
    robust = attacks.pgd(model, x, y, eps=EPS, steps=20, restarts=3, seed=0).robust_accuracy
    print(f"PGD-AT: PGD-20 (3 restarts) accuracy {robust:.3f} at eps {EPS}")
    assert robust >= 0.90
