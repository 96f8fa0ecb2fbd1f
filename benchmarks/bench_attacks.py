"""The paper's attacks, ours versus foolbox 3, on a LeNet trained on real MNIST.

Same model (lenet-mnist, one epoch of plain training on MNIST, seed 0), same 1000 test images in
one batch, same parameters: FGSM (eps 0.1), FGM (L2 eps 1.5), BIM-10 (eps 0.1, step eps/4, no
random start), DeepFool-L2 (50 steps, 10 candidates, overshoot 0.02), CW-L2 (5 binary steps x
100 iterations, lr 0.01). Each attack's samples are interleaved with foolbox's; the ratio is the
median over rounds of ours/foolbox (threshold <= 1.0). Quality is reported beside time: success
rate and median L2 over correctly classified points, and for FGSM/FGM/BIM the largest difference
to foolbox's points. BIM-10 is also compared with its floor: 10 forward+backward passes of the
model at its iterates, each with the sign step and clamp (threshold <= 1.06), and with the
former floor of 10 passes at the clean batch (reported, no threshold).

    .venv/bin/python benchmarks/bench_attacks.py [--threads N] [--rounds R] [--points N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from _timing import (
    add_common_args,
    apply_threads,
    emit,
    interleaved,
    log,
    machine_info,
    median,
    ratio_stats,
)
from advls import attacks
from advls import data as datasets
from advls.train import TrainConfig, train

EPS = 0.1
L2_EPS = 1.5
FALLBACK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def trained_lenet(data_dir: str | os.PathLike[str]) -> torch.nn.Module:
    config = TrainConfig(dataset="mnist", model="lenet-mnist", loss="ce", epochs=1, seed=0)
    return train(config, data_dir=data_dir, device="cpu", progress=False).model.eval()


def quality(model, x, y, x_adv) -> dict[str, float]:
    # foolbox 3's CW returns an all-zero image where it fails; that is a failure, not an
    # adversarial example, even when the model misclassifies a blank image.
    blank = x_adv.flatten(1).abs().amax(dim=1) == 0
    x_adv = torch.where(blank.view(-1, 1, 1, 1), x, x_adv)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = (model(x_adv).argmax(1) != y) & correct
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    return {
        "success_rate": float(fooled.sum()) / max(1, int(correct.sum())),
        "median_l2": float(l2[fooled].median()) if fooled.any() else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    import foolbox as fb

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, rounds=5, warmup=1)
    parser.add_argument("--points", type=int, default=1000, help="test images (1000)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="subset of fgsm fgm bim deepfool cw"
    )
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    data_dir = os.environ.get("ADVLS_DATA") or FALLBACK_DATA
    log(f"bench_attacks: training lenet-mnist for one epoch on MNIST from {data_dir}")
    model = trained_lenet(data_dir)
    test = datasets.load("mnist", "test", data_dir, download=False, progress=False)
    x = test.images[: args.points].float() / 255.0
    y = test.labels[: args.points]
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))

    step = EPS / 4
    fb_bim = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=step, steps=10)
    fb_deepfool = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    fb_cw = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100, stepsize=0.01)
    fb_fgsm = fb.attacks.LinfFastGradientAttack(random_start=False)
    fb_fgm = fb.attacks.L2FastGradientAttack(random_start=False)
    pairs = {
        "fgsm": (
            lambda: attacks.fgsm(model, x, y, eps=EPS).x_adv,
            lambda: fb_fgsm(fmodel, x, y, epsilons=EPS)[1],
        ),
        "fgm": (
            lambda: attacks.fgm(model, x, y, eps=L2_EPS).x_adv,
            lambda: fb_fgm(fmodel, x, y, epsilons=L2_EPS)[1],
        ),
        "bim": (
            lambda: attacks.bim(model, x, y, eps=EPS, steps=10, step_size=step).x_adv,
            lambda: fb_bim(fmodel, x, y, epsilons=EPS)[1],
        ),
        "deepfool": (
            lambda: attacks.deepfool(model, x, y, steps=50, candidates=10, overshoot=0.02).x_adv,
            lambda: fb_deepfool(fmodel, x, y, epsilons=None)[0],
        ),
        "cw": (
            lambda: attacks.cw_l2(model, x, y, binary_search_steps=5, steps=100, lr=0.01).x_adv,
            lambda: fb_cw(fmodel, x, y, epsilons=None)[0],
        ),
    }  # fmt: skip
    results = {}
    for name, (ours, theirs) in pairs.items():
        if args.only and name not in args.only:
            continue
        # A DeepFool or CW call on 1000 images takes tens of seconds to minutes, so fewer
        # rounds (and no warm-up) keep the benchmark within minutes; noise is small there.
        rounds = {"deepfool": 2, "cw": 1}.get(name, args.rounds)
        warmup = 0 if name in ("deepfool", "cw") else args.warmup
        times = interleaved({"ours": ours, "foolbox": theirs}, rounds=rounds, warmup=warmup)
        ratio = ratio_stats(times["ours"], times["foolbox"])
        ours_adv, their_adv = ours(), theirs()
        entry = {
            "ours_s": median(times["ours"]),
            "foolbox_s": median(times["foolbox"]),
            "ratio": ratio["median"],
            "ratio_q1": ratio["q1"],
            "ratio_q3": ratio["q3"],
            "rounds": rounds,
            "threshold": 1.0,
            "ours_quality": quality(model, x, y, ours_adv),
            "foolbox_quality": quality(model, x, y, their_adv),
        }
        if name in ("fgsm", "fgm", "bim"):
            entry["max_abs_difference"] = float((ours_adv - their_adv).abs().max())
        entry["pass"] = entry["ratio"] <= 1.0
        log(
            f"  {name:9s} ours {entry['ours_s']:.3f} s  foolbox {entry['foolbox_s']:.3f} s  "
            f"ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
        )
        results[name] = entry

    if not args.only or "bim" in args.only:
        low, high = (x - EPS).clamp(min=0.0), (x + EPS).clamp(max=1.0)

        def floor() -> None:
            # What BIM-10 cannot avoid: ten forward+backward passes w.r.t. the input at its
            # iterates, each followed by a sign step and a clamp, the model frozen as the
            # attack freezes it. (Iterates cost more than the clean batch: see below.)
            x_adv = x.clone()
            with attacks.eval_mode(model):
                for _ in range(10):
                    z = x_adv.requires_grad_(True)
                    loss = F.cross_entropy(model(z), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, z)
                    x_adv = torch.clamp(z.detach().add_(grad.sign_(), alpha=step), low, high)

        def clean_floor() -> None:
            # The former floor: ten passes at the clean batch only, which the model computes
            # faster than adversarial iterates (a data-dependent few per cent on CPU).
            for _ in range(10):
                z = x.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)

        contenders = {"bim": pairs["bim"][0], "floor": floor, "clean_floor": clean_floor}
        times = interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
        for name, threshold in (("floor", 1.06), ("clean_floor", None)):
            ratio = ratio_stats(times["bim"], times[name])
            results[f"bim_vs_{name}"] = {
                "bim_s": median(times["bim"]),
                f"{name}_s": median(times[name]),
                "ratio": ratio["median"],
                "ratio_q1": ratio["q1"],
                "ratio_q3": ratio["q3"],
                "threshold": threshold,
                "pass": threshold is None or ratio["median"] <= threshold,
            }
            log(f"  bim/{name} ratio {ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]")

    emit(
        {
            "benchmark": "attacks",
            "description": __doc__.split("\n")[0],
            "machine": machine_info(),
            "settings": {"rounds": args.rounds, "warmup": args.warmup, "points": args.points},
            "results": results,
            "all_pass": all(entry["pass"] for entry in results.values()),
        }
    )


if __name__ == "__main__":
    main()
