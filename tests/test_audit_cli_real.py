"""Audits of a user's own models through the real command line, on real MNIST and CIFAR-10.

The models live in a module written to a folder outside the package; a user's script trains
them briefly and saves safetensors; ``advls evaluate --model file.py:factory --report DIR``
audits them, and the page is opened in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from advls import data as datasets
from browser import probe
from test_audit_report import validate
from user_models import train_briefly, write_models

pytestmark = [pytest.mark.slow]

ADVLS = str(Path(sys.executable).with_name("advls"))
#: The paper protocol with fewer BIM, DeepFool and CW steps (the same attacks, cheaper).
QUICK = ["--protocol", "paper"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def advls(*args: str, data: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVLS_DATA": str(data), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [ADVLS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )


def _evaluation(report: Path) -> dict[str, Any]:
    return json.loads((report / "evaluation.json").read_text())


def _check_page(report: Path, scratch: Path) -> dict[str, Any]:
    """The page as Chromium shows it: every image loaded, the tables there, the verdict first
    and naming every raised flag; the card valid and equal to the page."""
    evaluation = _evaluation(report)
    shown = probe(report / "audit.html", scratch)
    markdown = (report / "audit.md").read_text()
    assert len(shown["images"]) == len(re.findall(r"!\[[^\]]*\]\([^)]+\.png\)", markdown)) >= 2
    for image in shown["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    tables = {table["name"]: table["rows"] for table in shown["tables"]}
    for name in ("Audited model", "Robust accuracy (L∞)", "Gradient-masking checks"):
        assert tables.get(name, 0) >= 1, tables
    assert tables["Gradient-masking checks"] == len(evaluation["flags"])
    opening = shown["opening"]
    assert 0 <= opening["top"] < opening["viewport"]
    raised = [flag["name"] for flag in evaluation["flags"] if flag["raised"]]
    for name in raised:
        assert f"{name} raised" in opening["text"]
    card = json.loads((report / "model_card.json").read_text())
    validate(card)
    assert card["clean_acc"] == f"{100 * evaluation['clean_accuracy']:.2f}"
    assert f"Robust accuracy {card['autoattack_acc']}%" in shown["text"]
    assert sorted(card["advls"]["flags"]["raised"]) == sorted(raised)
    assert shown["code"] and shown["code"][0].startswith("advls evaluate --model ")
    return evaluation


@pytest.fixture(scope="module")
def mnist_models(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CNN and an MLP briefly trained on 2000 real MNIST digits, and the CNN behind 8-bit
    input rounding (zero input gradients), each saved as safetensors beside the module."""
    folder = tmp_path_factory.mktemp("user")
    module = write_models(folder / "my_models.py")
    train = datasets.load("mnist", "train", real_data)
    images, labels = train.images[:2000], train.labels[:2000]
    cnn = train_briefly(lambda: module.small_cnn(width=8), images, labels, seed=0)
    mlp = train_briefly(lambda: module.mlp(hidden=64), images, labels, seed=0)
    rounded = module.Rounded(cnn)
    for name, model in {"cnn": cnn, "mlp": mlp, "rounded": rounded}.items():
        save_file(model.state_dict(), folder / f"{name}.safetensors")
    return {"folder": folder, "data": real_data}


@pytest.mark.parametrize(("factory", "weights"), [("small_cnn", "cnn"), ("mlp", "mlp")])
def test_a_users_model_is_audited_from_its_file(
    mnist_models: dict[str, Any], tmp_path: Path, factory: str, weights: str
):
    folder = mnist_models["folder"]
    done = advls(
        "evaluate", "--model", f"my_models.py:{factory}", "--weights", f"{weights}.safetensors",
        "--dataset", "mnist", *QUICK, "--eps", "0.1,0.3", "--n", "60",
        "--report", str(tmp_path / "audit"), "--no-progress",
        data=mnist_models["data"], cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluation = _check_page(tmp_path / "audit", tmp_path / "browser")
    assert evaluation["clean_accuracy"] > 0.7
    assert evaluation["subject"]["name"] == f"my_models.py:{factory}"
    assert (
        evaluation["subject"]["weights_sha256"]
        == hashlib.sha256((folder / f"{weights}.safetensors").read_bytes()).hexdigest()
    )
    worst = {row["eps"]: row["robust_accuracy"] for row in evaluation["worst_case"]}
    assert worst[0.3] <= worst[0.1] <= evaluation["clean_accuracy"]


@pytest.mark.slower
def test_a_masked_models_audit_names_its_flags_in_the_verdict(
    mnist_models: dict[str, Any], tmp_path: Path
):
    """Rounding the input zeroes every gradient: the paper's attacks fail, the strong
    suite's black-box attack does not, and the page's first sentence says so."""
    done = advls(
        "evaluate", "--model", "my_models.py:rounded_cnn", "--weights", "rounded.safetensors",
        "--dataset", "mnist", "--protocol", "paper", "--protocol", "strong",
        "--eps", "0.1,0.3", "--n", "30", "--report", str(tmp_path / "audit"), "--no-progress",
        data=mnist_models["data"], cwd=mnist_models["folder"],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluation = _check_page(tmp_path / "audit", tmp_path / "browser")
    raised = {flag["name"] for flag in evaluation["flags"] if flag["raised"]}
    assert {"zero_gradients", "protocol_gap"} <= raised
    verdict = (tmp_path / "audit" / "audit.md").read_text()
    assert "The paper protocol overstates robustness" in verdict


def test_a_cifar_model_is_audited_with_its_normalisation(real_data: Path, tmp_path: Path):
    """A model trained on normalised inputs: ``--mean/--std`` put the normalisation in front,
    so the audit's clean accuracy is the user's own, and budgets stay in pixels."""
    module = write_models(tmp_path / "user" / "nets.py")
    train = datasets.load("cifar10", "train", real_data)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    # train_briefly divides by 255: it gets the normalised images scaled back up
    normalised = (train.images[:2000].float() / 255 - mean) / std * 255
    cnn = train_briefly(lambda: module.small_cnn(channels=3, width=8), normalised,
                        train.labels[:2000], seed=0, steps=800)  # fmt: skip
    save_file(cnn.state_dict(), tmp_path / "user" / "cifar.safetensors")
    test = datasets.load("cifar10", "test", real_data)
    with torch.no_grad():
        direct = cnn(((test.images[:80].float() / 255) - mean) / std).argmax(1)
    expected = int((direct == test.labels[:80]).sum()) / 80
    common = ["--model", "nets.py:small_cnn", "--model-arg", "channels=3",
              "--weights", "cifar.safetensors", "--dataset", "cifar10", *QUICK,
              "--eps", "2/255,8/255", "--n", "80", "--no-progress"]  # fmt: skip
    done = advls(
        "evaluate", *common, "--mean", ",".join(map(str, CIFAR_MEAN)),
        "--std", ",".join(map(str, CIFAR_STD)), "--report", str(tmp_path / "audit"),
        data=real_data, cwd=tmp_path / "user",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluation = _check_page(tmp_path / "audit", tmp_path / "browser")
    assert evaluation["clean_accuracy"] == expected
    # It learned something: chance is 8 of 80 (sd about 2.7); 16 is three sd above it.
    assert expected >= 0.2
    assert evaluation["eps"] == pytest.approx([2 / 255, 8 / 255])
    card = json.loads((tmp_path / "audit" / "model_card.json").read_text())
    assert card["dataset"] == "cifar10" and card["eps"] == "8/255"
    bare = advls("evaluate", *common, "--json", data=real_data, cwd=tmp_path / "user")
    assert bare.returncode == 0, bare.stderr
    unnormalised = json.loads(bare.stdout[: bare.stdout.rindex("}") + 1])["clean_accuracy"]
    assert unnormalised != evaluation["clean_accuracy"]  # the wrapper is what made it right
