"""The gradient-masking flags on real MNIST: they fire on deliberately masked models and stay
silent on a plainly trained and on a PGD-trained one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advls import data as datasets
from advls.evaluate import PROTOCOLS, Evaluation, evaluate
from advls.train import TrainConfig, train

# One worker trains the models once: make test runs with --dist loadfile, one file per worker.
pytestmark = [pytest.mark.slow]

POINTS = 200
EPS = (0.1, 0.3)
# The strong protocol at a test's budget: fewer steps, restarts and queries.
QUICK_STRONG = PROTOCOLS["strong"].with_params(
    **{
        "pgd-40x5": {"steps": 10, "restarts": 2},
        "apgd-ce": {"steps": 30},
        "apgd-dlr": {"steps": 30},
        "apgd-t": {"steps": 30, "target_classes": 3},
        "fab-t": {"steps": 30, "target_classes": 3},
        "square": {"queries": 300, "rescale_schedule": True},
    }
)
PAPER = PROTOCOLS["paper"].without("cw-l2").with_params(**{"bim-100": {"steps": 10}})


class Scaled(nn.Module):
    """Logits times 1e4: the softmax saturates, cross-entropy gradients are exactly zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * 1e4


class Quantised(nn.Module):
    """Inputs rounded to 255 grey levels first: the same classifier, but no gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 255) / 255)


def _train(root: Path, name: str, **overrides) -> nn.Module:
    config = TrainConfig(
        dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, train_subset=20_000, **overrides
    )
    return train(config, root / name, device="cpu", progress=False).model


@pytest.fixture(scope="module")
def models(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, nn.Module]:
    import os

    os.environ["ADVLS_DATA"] = str(real_data)
    root = tmp_path_factory.mktemp("masking")
    return {
        "plain": _train(root, "plain"),
        "pgd-at": _train(root, "pgd-at", defence="pgd-at", defence_eps=0.1, defence_steps=5),
    }


def _evaluate(model: nn.Module, real_data: Path) -> Evaluation:
    test = datasets.load("mnist", "test", real_data)
    return evaluate(
        model, test.images[:POINTS], test.labels[:POINTS], protocols=[PAPER, QUICK_STRONG],
        eps=EPS,
    )  # fmt: skip


def _raised(evaluation: Evaluation) -> set[str]:
    return {flag.name for flag in evaluation.raised}


@pytest.mark.parametrize("name", ["plain", "pgd-at"])
def test_flags_stay_silent_on_honest_models(
    models: dict[str, nn.Module], real_data: Path, name: str
) -> None:
    evaluation = _evaluate(models[name], real_data)
    assert evaluation.clean_accuracy > 0.9
    assert _raised(evaluation) == set(), [f for f in evaluation.flags if f.raised]
    assert all(flag.checked for flag in evaluation.flags if flag.name != "black_box_stronger")


def test_saturated_softmax_is_flagged(models: dict[str, nn.Module], real_data: Path) -> None:
    evaluation = _evaluate(Scaled(models["plain"]), real_data)
    raised = _raised(evaluation)
    assert {"zero_gradients", "protocol_gap"} <= raised
    # Scale-invariant DLR still finds what CE cannot: the evidence says where to look.
    assert evaluation.outcome("strong", "apgd-dlr", 0.3).robust_accuracy < (
        evaluation.outcome("strong", "apgd-ce", 0.3).robust_accuracy - 0.2
    )


def test_input_quantisation_is_flagged(models: dict[str, nn.Module], real_data: Path) -> None:
    evaluation = _evaluate(Quantised(models["plain"]), real_data)
    raised = _raised(evaluation)
    assert {"zero_gradients", "black_box_stronger", "unbounded_incomplete"} <= raised
    assert "large_eps_above_chance" in raised
