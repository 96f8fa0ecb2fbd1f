"""Every number as a bracket [certified, attacked], on real MNIST: the evaluation's certified
points are the bounds' own, never broken by an attack, merged exactly across shards, shown
on the page, stored by sweeps and drawn in the report; bad methods and unsupported models
are refused before any attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from advls.certify import certified
from advls.cli import app
from advls.evaluate import CHECKS, PROTOCOLS, Thresholds, evaluate, evaluate_sharded
from advls.evaluate.results import CertifiedOutcome
from mlp_files import run_audit_sweep, save_as_user_files, trained_mlp

QUICK = PROTOCOLS["standard"]
EPS = [0.005, 0.01, 0.03]
OPTIONS = {"protocols": [QUICK], "eps": EPS, "batch_size": 50}


@pytest.fixture(scope="module")
def mnist(real_data: Path) -> tuple[nn.Module, Tensor, Tensor]:
    """An MLP trained briefly on real MNIST, and 100 test points."""
    return trained_mlp(real_data, 100)


@pytest.fixture(scope="module")
def bracketed(mnist):
    model, images, labels = mnist
    return evaluate(model, images, labels, certify=["ibp", "crown"], **OPTIONS)


def test_the_certified_points_are_the_bounds_own_and_no_attack_breaks_one(mnist, bracketed):
    model, images, labels = mnist
    for eps in EPS:
        for method in ("ibp", "crown"):
            direct = certified(model, images.float() / 255, labels, eps, method)
            assert torch.equal(bracketed.certified_robust(eps, method), direct)
        proven = bracketed.certified_robust(eps)
        assert torch.equal(proven, bracketed.certified_robust(eps, "ibp") | direct)
        assert not bracketed.certified_but_broken("standard", eps).any()
        low, high = bracketed.bracket("standard", eps)
        assert low <= high <= bracketed.clean_accuracy
        assert not (proven & ~bracketed.correct).any()  # a clean error is never proven
    # CROWN proves at least what IBP does here, and something at the smallest budget.
    assert bracketed.certified_accuracy(0.005, "crown") >= bracketed.certified_accuracy(
        0.005, "ibp"
    )
    assert bracketed.certified_accuracy(0.005) > 0.5
    flag = next(f for f in bracketed.flags if f.name == "certified_broken")
    assert flag.checked and not flag.raised


def test_the_json_and_the_tables_carry_the_bracket(bracketed) -> None:
    from advls.evaluate import format_markdown

    payload = json.loads(bracketed.to_json())
    assert [(c["method"], c["eps"]) for c in payload["certified"]] == [
        (method, eps) for method in ("ibp", "crown") for eps in EPS
    ]
    brackets = {(b["protocol"], b["eps"]): b for b in payload["brackets"]}
    for eps in EPS:
        row = brackets[("standard", eps)]
        assert row["certified"] == bracketed.certified_accuracy(eps)
        assert row["attacked"] == bracketed.worst_case("standard", eps)
        assert row["certified_but_broken"] == 0
    table = format_markdown(bracketed)
    low, high = bracketed.bracket("standard", 0.03)
    assert f"[{low:.3f}, {high:.3f}]" in table and "| crown |" in table


def test_a_certified_point_that_was_broken_raises_the_flag(bracketed) -> None:
    """The soundness check judges the outcomes it is given: a proof of a point an attack
    broke (a wrong bound or an attack outside the ball) is raised with the point named."""
    import copy

    wrong = copy.copy(bracketed)
    fooled = next(o for o in bracketed.outcomes if o.eps == 0.03 and o.fooled.any())
    point = int((fooled.fooled & bracketed.correct).nonzero()[0])
    forged = bracketed.certified_robust(0.03, "ibp").clone()
    forged[point] = True
    wrong.certified = [CertifiedOutcome("ibp", 0.03, forged, 0.0)]
    flag = CHECKS["certified_broken"](wrong, Thresholds())
    assert flag.raised and flag.evidence[0]["first"][0] == point
    without = copy.copy(bracketed)
    without.certified = []
    assert not CHECKS["certified_broken"](without, Thresholds()).checked


def test_shards_certify_exactly_what_the_whole_evaluation_does(mnist, bracketed, tmp_path):
    """Bounds draw no random numbers: the sharded proofs equal the unsharded ones, and
    kept shards bring them back."""
    model, images, labels = mnist
    for _ in range(2):  # computed, then reused
        sharded = evaluate_sharded(
            model, images, labels, certify=["ibp", "crown"], shard_size=30, out=tmp_path,
            **OPTIONS,
        )  # fmt: skip
        for eps in EPS:
            for method in ("ibp", "crown"):
                assert torch.equal(
                    sharded.certified_robust(eps, method), bracketed.certified_robust(eps, method)
                )
    assert sharded.sharding["reused"] == 4


def test_unknown_methods_and_unsupported_models_are_refused_before_any_attack(mnist) -> None:
    model, images, labels = mnist
    with pytest.raises(ValueError, match="certify methods are ibp, crown-ibp, crown; got 'lp'"):
        evaluate(model, images, labels, certify=["lp"], **OPTIONS)
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh())
    with pytest.raises(ValueError, match="Tanh"):
        evaluate(tanh, images, labels, certify=["ibp"], **OPTIONS)


# --------------------------------------------------------------------------- command, sweeps
runner = CliRunner()


def test_the_command_certifies_and_the_audit_page_shows_the_bracket(
    mnist, tmp_path: Path, real_data: Path, monkeypatch
) -> None:
    model, _, _ = mnist
    factory, weights = save_as_user_files(model, tmp_path)
    monkeypatch.setenv("ADVLS_DATA", str(real_data))
    args = ["evaluate", "--model", f"{factory}:mlp", "--weights", str(weights),
            "--dataset", "mnist", "--n", "60",
            "--protocol", "standard", "--eps", "0.005,0.03", "--no-progress"]  # fmt: skip
    done = runner.invoke(app, [*args, "--certify", "ibp,crown", "--report", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "a" / "audit.md").read_text()
    payload = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert "Certified and attacked (L∞)" in page and "--certify ibp,crown" in page
    assert {c["method"] for c in payload["certified"]} == {"ibp", "crown"}
    bad = runner.invoke(app, [*args, "--certify", "ibp,milp", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "got 'milp'" in bad.output
    assert not (tmp_path / "b").exists()


def test_a_sweep_stores_the_bracket_and_its_report_draws_it(
    mnist, tmp_path: Path, real_data: Path, monkeypatch
) -> None:
    from advls.report.build import build_report
    from advls.store import Store

    model, _, _ = mnist
    monkeypatch.setenv("ADVLS_DATA", str(real_data))
    evaluate_spec = {"protocols": ["standard"], "eps": [0.005, 0.03], "n": 60,
                     "certify": ["ibp", "crown"]}  # fmt: skip
    store = run_audit_sweep(model, tmp_path, "certified-audit", evaluate_spec)
    with Store(store) as results:
        files = build_report(results, tmp_path / "report")
        rows = [r for r in results.results() if r["protocol"] == "certify"]
    assert {(r["attack"], r["eps"]) for r in rows} == {
        (method, eps) for method in ("ibp", "crown", "any") for eps in (0.005, 0.03)
    }
    markdown = (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| name |"))
    assert "Certified and attacked" in markdown and "| certified |" in header
    assert any(path.name == "brackets-audited.png" for path in map(Path, files.figures))
