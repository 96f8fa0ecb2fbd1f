"""On a CUDA device: training under bf16 autocast and channels_last, every attack's contract,
an evaluation through the CLI, and the certified bounds.

Marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is false, so the default run
on a CPU machine skips them; ``scripts/gpu_check.sh`` runs them on a lent GPU
(``pytest -m cuda``) and docs/benchmarks.md records that run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from advls import certify
from advls.certify.sampling import box_samples
from advls.checkpoint import load_model
from advls.cli import app
from advls.evaluate import evaluate
from advls.train import TrainConfig, train
from random_networks import randomly_initialised
from test_attack_invariants import CASES, check_result, make_batch, make_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "model,loss,defence",
    [
        ("lenet-mnist", "ce", "none"),
        ("lenet-mnist", "adversarial", "none"),
        ("lenet-mnist", "boltzmann", "fgsm-at"),
        ("lenet-mnist", "ce", "pgd-at"),
        ("mlp", "ce", "ibp"),
    ],
)
def test_training_on_cuda_learns_checkpoints_and_resumes(
    toy_npz: Path, tmp_path: Path, model: str, loss: str, defence: str
) -> None:
    config = TrainConfig(
        dataset=str(toy_npz), model=model, loss=loss, alpha=0.1, defence=defence,
        defence_eps=0.05, epochs=2, batch_size=32, lr=0.05,
    )  # fmt: skip
    run = tmp_path / "run"
    result = train(config, run, device="cuda", amp=True, channels_last=True, progress=False)
    assert result.test_accuracy == 1.0, result.history
    parameters = list(result.model.parameters())
    assert all(p.device.type == "cuda" for p in parameters)
    assert all(torch.isfinite(p).all() for p in parameters)
    # bf16 autocast keeps the master weights in float32.
    assert all(p.dtype == torch.float32 for p in parameters)
    for p in parameters:
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)

    again = train(config, run, device="cuda", progress=False)
    assert again.resumed_from == 2 and len(again.history) == 2
    loaded, _ = load_model(run, device="cpu")
    for key, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[key]), key


# --------------------------------------------------------------------------- the attacks
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_every_attack_keeps_its_contract_on_cuda(case: str, kind: str) -> None:
    attack, params, norm = CASES[case]
    if "surrogate" in params:
        params = {**params, "surrogate": copy.deepcopy(params["surrogate"]).to(CUDA)}
    eps = 0.3
    if norm is not None:
        params = {**params, "eps": eps}
    model = make_model(kind, 3).to(CUDA)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = make_batch(4, 24)
    x, y = x.to(CUDA), y.to(CUDA)
    x_copy = x.clone()

    result = attack(model, x, y, **params)

    assert torch.equal(x, x_copy) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert result.x_adv.device.type == "cuda" and result.success.device.type == "cuda"
    check_result(result, model, x, y, eps, norm, l2_atol=1e-5)


# --------------------------------------------------------------------------- one evaluation
def test_evaluate_cli_on_cuda_agrees_with_the_cpu(toy_npz: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(
        app,
        ["train", "--dataset", str(toy_npz), "--model", "lenet-mnist", "--loss", "ce",
         "--epochs", "2", "--batch-size", "32", "--device", "cuda", "--out", str(run),
         "--no-progress"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    command = [
        "evaluate", "--checkpoint", str(run), "--protocol", "paper", "--protocol", "autoattack",
        "--eps", "0.1,0.3", "--n", "128", "--device", "cuda", "--json", "--no-progress",
    ]  # fmt: skip
    evaluated = runner.invoke(app, command)
    assert evaluated.exit_code == 0, evaluated.output
    document = json.loads(evaluated.stdout)
    clean = document["clean_accuracy"]
    assert clean > 0.9
    for outcome in document["results"]:
        assert outcome["robust_accuracy"] <= clean + 1e-12, outcome
    for worst in document["worst_case"]:
        assert worst["robust_accuracy"] <= clean + 1e-12

    # The paper protocol's attacks are deterministic: the CPU gives the same numbers, up to
    # a point or two that float32 rounding (TF32 convolutions on the GPU) moves across.
    model, _ = load_model(run, device="cpu")
    from advls import data as datasets

    test = datasets.load(str(toy_npz), "test")
    on_cpu = evaluate(
        model, test.images[:128], test.labels[:128], protocols=("paper",), eps=(0.1, 0.3),
        device="cpu", checks=False,
    )  # fmt: skip
    assert abs(on_cpu.clean_accuracy - clean) <= 1 / 128
    cuda_paper = {
        (o["attack"], o["eps"]): o["robust_accuracy"]
        for o in document["results"]
        if o["protocol"] == "paper"
    }
    for outcome in on_cpu.outcomes:
        key = (outcome.spec.label, outcome.eps)
        assert abs(cuda_paper[key] - outcome.robust_accuracy) <= 2 / 128, key


# --------------------------------------------------------------------------- the bounds
class SmallConvNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 10),
            nn.ReLU(),
            nn.Linear(10, 5),
        )


def _exact_logits(model: nn.Module, points: Tensor) -> Tensor:
    """The network in float64 on the CPU: what the bounds must contain."""
    exact = copy.deepcopy(model).double().cpu().eval()
    with torch.no_grad():
        return exact(points.flatten(0, 1).double().cpu()).view(*points.shape[:2], -1)


@pytest.mark.parametrize("method", certify.METHODS)
@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_bounds_computed_on_cuda_contain_the_exact_logits(method: str, eps: float) -> None:
    model = randomly_initialised(SmallConvNet(), seed=5).to(CUDA)
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(6)).to(CUDA)
    y = torch.arange(12, device=CUDA) % 5
    lower, upper = certify.logit_bounds(model, x, eps, method)
    margins = certify.margin_bounds(model, x, y, eps, method)
    assert lower.device.type == "cuda" and margins.device.type == "cuda"

    points = box_samples(model, x, y, eps, 400, seed=7)
    assert points.device.type == "cuda"
    z = _exact_logits(model, points)
    low, high = lower.cpu().unsqueeze(1), upper.cpu().unsqueeze(1)
    assert (z >= low).all() and (z <= high).all()
    exact_margins = z.gather(2, y.cpu().view(-1, 1, 1).expand(-1, z.shape[1], 1)) - z
    finite = torch.isfinite(margins.cpu()).unsqueeze(1)
    assert ((exact_margins >= margins.cpu().unsqueeze(1)) | ~finite).all()

    # The same bounds on the CPU: equal up to the rounding each device accounts for.
    cpu_lower, cpu_upper = certify.logit_bounds(model.cpu(), x.cpu(), eps, method)
    width = (cpu_upper - cpu_lower).abs().max()
    assert float((lower.cpu() - cpu_lower).abs().max()) <= 1e-2 * float(width)
    assert float((upper.cpu() - cpu_upper).abs().max()) <= 1e-2 * float(width)
