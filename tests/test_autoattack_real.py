"""AutoAttack inside advls on real MNIST: few-class tasks, a randomized model, and the cheap
part of the parity with torchattacks' ports of AutoAttack (the full table, 1000 points on
three LeNets, is in docs/benchmarks.md: ``benchmarks/bench_autoattack.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advls import data
from advls.attacks import apgd
from advls.evaluate import PROTOCOLS, evaluate
from advls.models import create

pytestmark = pytest.mark.slow


def train_on_digits(root: Path, digits: tuple[int, ...], *, model: str, steps: int, seed: int = 0):
    """A model of ``len(digits)`` classes trained with Adam on those digits of MNIST's train
    split; returns it in eval mode with the test points of those digits (relabelled 0..K-1)."""
    torch.manual_seed(seed)
    train, test = data.load("mnist", "train", root), data.load("mnist", "test", root)

    def subset(split) -> tuple[Tensor, Tensor]:
        keep = torch.isin(split.labels, torch.tensor(digits))
        labels = split.labels[keep]
        relabelled = torch.searchsorted(torch.tensor(digits), labels)
        return split.images[keep].float() / 255, relabelled

    x, y = subset(train)
    net = create(model, num_classes=len(digits), input_shape=(1, 28, 28))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    return net.eval(), subset(test)


def cheap_paper_and_strong():
    """The paper and strong protocols with fewer steps (their shapes, not their cost)."""
    paper = PROTOCOLS["paper"].without("cw-l2").with_params(**{"bim-100": {"steps": 20}})
    strong = PROTOCOLS["strong"].with_params(
        **{
            "pgd-40x5": {"steps": 10, "restarts": 2},
            "apgd-ce": {"steps": 20},
            "apgd-dlr": {"steps": 20, "restarts": 1},
            "apgd-t": {"steps": 20},
            "fab-t": {"steps": 20},
            "square": {"queries": 300},
        }
    )
    return paper, strong


@pytest.mark.slower
@pytest.mark.parametrize("digits", [(3, 8), (1, 4, 7)])
def test_two_and_three_class_models_go_through_every_protocol(real_data: Path, digits) -> None:
    model, (x, y) = train_on_digits(real_data, digits, model="mlp", steps=150)
    x, y = x[:60], y[:60]
    paper, strong = cheap_paper_and_strong()
    # autoattack as it is; autoattack-rand with EOT over 4 passes, not 20 (the shape, cheaper).
    rand = PROTOCOLS["autoattack-rand"].with_params(
        **{"apgd-ce-eot": {"eot_iter": 4}, "apgd-dlr-eot": {"eot_iter": 4}}
    )
    evaluation = evaluate(
        model, x, y, protocols=[paper, strong, "autoattack", rand], eps=[0.1, 0.3]
    )
    k = len(digits)
    assert evaluation.num_classes == k and evaluation.clean_accuracy > 0.9
    adapted = {(a["protocol"], a["attack"]): a["change"] for a in evaluation.adapted}
    # Targeted DLR needs 4 classes and there are only K - 1 targets; DLR needs 3.
    assert f"{k - 1} target class(es)" in adapted[("autoattack", "apgd-t")]
    assert "CE in its place" in adapted[("autoattack", "apgd-t")]
    assert f"{k - 1} target class(es)" in adapted[("strong", "fab-t")]
    assert (("strong", "apgd-dlr") in adapted) == (k == 2)
    for protocol in ("paper", "strong", "autoattack", "autoattack-rand"):
        worst = [evaluation.worst_case(protocol, eps) for eps in (0.1, 0.3)]
        assert 0.0 <= worst[1] <= worst[0] <= evaluation.clean_accuracy
    # strong holds every autoattack attack: its worst case cannot be far above autoattack's.
    for eps in (0.1, 0.3):
        gap = evaluation.worst_case("strong", eps) - evaluation.worst_case("autoattack", eps)
        assert gap <= 2 / len(y) + 1e-9
    assert evaluation.worst_case("autoattack", 0.3) < 0.5  # eps 0.3 breaks binary MNIST too


class GaussianInput(nn.Module):
    """A randomized defence: Gaussian noise added to the input at every forward pass."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


@pytest.mark.slower
def test_a_randomized_model_is_detected_and_eot_lowers_its_robust_accuracy(real_data: Path):
    base, (x, y) = train_on_digits(real_data, tuple(range(10)), model="mlp", steps=400)
    model = GaussianInput(base, sigma=0.3)
    x, y = x[:150], y[:150]
    torch.manual_seed(0)
    evaluation = evaluate(
        model, x, y, protocols=["autoattack-rand"], eps=[0.05], checks=True, seed=0
    )
    flags = {flag.name: flag for flag in evaluation.flags}
    assert flags["randomized"].raised
    assert flags["randomized"].evidence[0]["changed_predictions"] > 0
    # The same APGD-CE with and without EOT, as autoattack-rand and autoattack run it.
    torch.manual_seed(0)
    plain = apgd(model, x, y, eps=0.05, steps=100, seed=0)
    torch.manual_seed(0)
    eot = apgd(model, x, y, eps=0.05, steps=100, seed=0, eot_iter=20)
    print(
        f"robust accuracy: apgd-ce {plain.robust_accuracy:.3f}, with EOT {eot.robust_accuracy:.3f}"
    )
    assert eot.robust_accuracy < plain.robust_accuracy


def _reference_autoattack(model: nn.Module, eps: float):
    """AutoAttack's standard version from torchattacks' ports, as the reference configures
    it: the benchmark's own builder (benchmarks/bench_autoattack.py), so both use one."""
    pytest.importorskip("torchattacks")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from bench_autoattack import reference_autoattack
    finally:
        sys.path.pop(0)
    return reference_autoattack(model, eps)


def test_apgd_t_matches_torchattacks_apgdt(real_data: Path) -> None:
    ta = pytest.importorskip("torchattacks")
    model, (x, y) = train_on_digits(real_data, tuple(range(10)), model="mlp", steps=400)
    x, y = x[:150], y[:150]
    with torch.no_grad():
        keep = model(x).argmax(dim=1) == y
    x, y = x[keep], y[keep]
    ours = apgd(model, x, y, eps=0.05, targeted=True, steps=100, seed=0)
    attack = ta.APGDT(model, eps=0.05, steps=100, n_restarts=1, seed=0, n_classes=10)
    with torch.no_grad():
        theirs = model(attack(x, y)).argmax(dim=1) != y
    print(f"APGD-T success: ours {ours.success_rate:.3f}, torchattacks {theirs.float().mean():.3f}")
    # The same algorithm from different random starts: within two points of each other.
    assert abs(int(ours.success.sum()) - int(theirs.sum())) <= 2
    assert 0.1 < ours.success_rate < 0.95  # a budget where the comparison means something


@pytest.mark.slower
def test_autoattack_matches_the_reference_configured_suite(real_data: Path) -> None:
    model, (x, y) = train_on_digits(real_data, tuple(range(10)), model="mlp", steps=400)
    x, y = x[:200], y[:200]
    ours = evaluate(model, x, y, protocols=["autoattack"], eps=[0.05], checks=False)
    with torch.no_grad():
        theirs = model(_reference_autoattack(model, 0.05)(x, y)).argmax(dim=1) == y
    accuracy = ours.worst_case("autoattack", 0.05)
    print(f"autoattack: ours {accuracy:.3f}, reference-configured {theirs.float().mean():.3f}")
    assert abs(accuracy - float(theirs.float().mean())) <= 3 / len(y)
