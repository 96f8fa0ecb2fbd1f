"""Logit squeezing and the gradient gap (paper §3.2).

Label smoothing shrinks the logit margin ``z_y - max_{k != y} z_k`` (logit squeezing) and,
with it, the confidence ``max_k p_k``. Against an L-inf attack of size ``eps`` a first-order
(linear) model of the logits says the attack succeeds when

    eps * ||grad_x z_y - grad_x z_k||_1 > z_y - z_k   for some k != y,

so a smaller margin only helps robustness if the *gradient gap* ``||grad_x (z_y - z_k)||_1``
does not shrink with it. This module measures the three distributions (margin, top
probability, gradient gap for ``k*`` the best other class), checks the criterion where it is
exact (an affine model without the ``[0, 1]`` box), and ``analyze`` turns a sweep of
checkpoints into the paper's Figure 2 (a: squeezing as alpha grows, b: gradient-gap densities).

Conventions: inputs are images in ``[0, 1]`` (floats) or ``uint8`` pixels (divided by 255);
models are put in eval mode for the measurement and their previous mode comes back; inputs
are never modified. Strict inequalities throughout: an exact tie (probability zero) counts as
"not attacked".
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks import eval_mode, fgsm

__all__ = [
    "UnboxedAttack",
    "affine_map",
    "analyze",
    "first_order_criterion",
    "gradient_gaps",
    "input_gradient_gaps",
    "linear_criterion",
    "linear_slack",
    "logit_margins",
    "optimal_linf_unboxed",
    "top_probabilities",
]

_BATCH = 500


# --------------------------------------------------------------------------- helpers


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _as_input(model: nn.Module, x: Tensor) -> Tensor:
    """A fresh float copy of ``x`` on the model's device (uint8 pixels become ``[0, 1]``)."""
    device, dtype = _device_dtype(model)
    if x.dtype == torch.uint8:
        return x.to(device=device, dtype=dtype).div_(255.0)
    return x.detach().to(device=device, dtype=dtype, copy=True)


def _check(x: Tensor, y: Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (N, ...) and y (N,) with the same N, got {x.shape}, {y.shape}")


def _best_other(logits: Tensor, y: Tensor) -> Tensor:
    """``argmax_{k != y} z_k`` per row."""
    others = logits.detach().clone()
    others.scatter_(1, y.view(-1, 1), float("-inf"))
    return others.argmax(dim=1)


def _logits(model: nn.Module, x: Tensor, batch_size: int = _BATCH) -> Tensor:
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(_as_input(model, c)) for c in x.split(batch_size)])


# --------------------------------------------------------------------------- distributions


def logit_margins(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = _BATCH) -> Tensor:
    """Per-example logit margin ``z_y - max_{k != y} z_k`` (negative: misclassified)."""
    _check(x, y)
    logits = _logits(model, x, batch_size)
    y = y.to(logits.device)
    top_other = logits.gather(1, _best_other(logits, y).view(-1, 1)).squeeze(1)
    return (logits.gather(1, y.view(-1, 1)).squeeze(1) - top_other).cpu()


def top_probabilities(model: nn.Module, x: Tensor, batch_size: int = _BATCH) -> Tensor:
    """Per-example confidence ``max_k softmax(z)_k``, in ``(0, 1]``."""
    return _logits(model, x, batch_size).softmax(dim=1).amax(dim=1).cpu()


def _graded_batches(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(inputs requiring grad, logits, labels)`` per batch, in eval mode with grad enabled."""
    _check(x, y)
    with eval_mode(model), torch.enable_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            xb = _as_input(model, xb).requires_grad_(True)
            logits = model(xb)
            yield xb, logits, yb.to(logits.device)


def gradient_gaps(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = _BATCH) -> Tensor:
    """Per-example ``||grad_x (z_y - z_k*)||_1`` with ``k*`` the best other class at ``x``.

    One backward pass per batch: the model must treat examples independently (true in eval
    mode for every advls model).
    """
    gaps = []
    for xb, logits, yb in _graded_batches(model, x, y, batch_size):
        k = _best_other(logits, yb)
        gap = logits.gather(1, yb.view(-1, 1)) - logits.gather(1, k.view(-1, 1))
        (grad,) = torch.autograd.grad(gap.sum(), xb)
        gaps.append(grad.flatten(1).abs().sum(dim=1).cpu())
    return torch.cat(gaps)


def input_gradient_gaps(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = _BATCH
) -> tuple[Tensor, Tensor]:
    """For every class k: ``(z_y - z_k, ||grad_x (z_y - z_k)||_1)``, each of shape (N, K).

    The entries of the true class are ``(0, 0)``. Costs K backward passes per batch.
    """
    margins, gaps = [], []
    for xb, logits, yb in _graded_batches(model, x, y, batch_size):
        jac = torch.stack(
            [
                torch.autograd.grad(logits[:, k].sum(), xb, retain_graph=True)[0].flatten(1)
                for k in range(logits.shape[1])
            ],
            dim=1,
        )  # (n, K, D)
        rows = torch.arange(len(yb), device=jac.device)
        gaps.append((jac[rows, yb].unsqueeze(1) - jac).abs().sum(dim=2).cpu())
        z = logits.detach()
        margins.append((z.gather(1, yb.view(-1, 1)) - z).cpu())
    return torch.cat(margins), torch.cat(gaps)


def first_order_criterion(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, batch_size: int = _BATCH
) -> Tensor:
    """``exists k != y: eps * ||grad_x (z_y - z_k)||_1 > z_y - z_k`` per example (bool).

    The linear prediction of the paper's argument; exact for an affine model without the box.
    A misclassified input satisfies it for every ``eps >= 0``.
    """
    margins, gaps = input_gradient_gaps(model, x, y, batch_size)
    hit = eps * gaps > margins
    hit.scatter_(1, y.cpu().view(-1, 1), False)
    return hit.any(dim=1)


# --------------------------------------------------------------------------- affine models


def affine_map(model: nn.Module, input_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(W, b)`` in float64 with ``model(x) = W x.flatten() + b`` for an affine model.

    Read off exactly from input-gradients of a float64 copy (so it includes the
    normalisation layer: ``W_eff = W / std``, ``b_eff = b - W mean / std``). Raises
    ``ValueError`` when the model is not affine (checked at two random inputs).
    """
    model64 = copy.deepcopy(model).double().eval()
    device, _ = _device_dtype(model64)
    dim = math.prod(input_shape)
    zero = torch.zeros(1, *input_shape, dtype=torch.float64, device=device, requires_grad=True)
    with torch.enable_grad():
        logits = model64(zero)
        weight = torch.stack(
            [
                torch.autograd.grad(logits[0, k], zero, retain_graph=True)[0].flatten()
                for k in range(logits.shape[1])
            ]
        )
    bias = logits.detach()[0]
    probe = torch.rand(2, dim, dtype=torch.float64, device=device, generator=None)
    with torch.no_grad():
        actual = model64(probe.view(2, *input_shape))
    predicted = probe @ weight.T + bias
    if not torch.allclose(actual, predicted, rtol=1e-9, atol=1e-9):
        raise ValueError("the model is not affine in its input")
    return weight.cpu(), bias.cpu()


def _affine_terms(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, margins z_y - z_k (N, K), gaps ||w_y - w_k||_1 (N, K))`` in float64."""
    _check(x, y)
    weight, bias = affine_map(model, x.shape[1:])
    flat = (x.double() / 255.0 if x.dtype == torch.uint8 else x.detach().double().cpu()).flatten(1)
    y = y.cpu()
    logits = flat @ weight.T + bias
    margins = logits.gather(1, y.view(-1, 1)) - logits
    pair = torch.cdist(weight, weight, p=1)  # (K, K): ||w_j - w_k||_1
    return weight, margins, pair[y]


def linear_slack(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``min_{k != y} [(z_y - z_k) - eps ||w_y - w_k||_1]`` per example, for an affine model.

    Negative exactly when the optimal unboxed L-inf attack of size ``eps`` succeeds.
    """
    _, margins, gaps = _affine_terms(model, x, y)
    slack = margins - eps * gaps
    slack.scatter_(1, y.cpu().view(-1, 1), float("inf"))
    return slack.amin(dim=1)


def linear_criterion(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``exists k != y: eps ||w_y - w_k||_1 > z_y - z_k`` per example (bool), affine model."""
    return linear_slack(model, x, y, eps) < 0


@dataclass(frozen=True)
class UnboxedAttack:
    """The optimal L-inf attack on an affine model, without clipping to ``[0, 1]``.

    ``x_adv = x + eps sign(w_target - w_y)`` (float64), ``target`` the class whose margin the
    budget overcomes by the most, ``success`` whether the model (run in float64) misclassifies
    ``x_adv``.
    """

    x_adv: Tensor
    target: Tensor
    success: Tensor


def optimal_linf_unboxed(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> UnboxedAttack:
    """For each k the step ``eps sign(w_k - w_y)`` lowers ``z_y - z_k`` by ``eps ||w_y - w_k||_1``,
    the most any L-inf step of size eps can; the attack takes the k with the lowest result.

    Any other class j keeps ``z_y - z_j >= (z_y - z_j) - eps ||w_y - w_j||_1``, so the model
    misclassifies ``x_adv`` iff :func:`linear_slack` is negative (the exactness the tests check
    by running the model).
    """
    weight, margins, gaps = _affine_terms(model, x, y)
    y = y.cpu()
    slack = margins - eps * gaps
    slack.scatter_(1, y.view(-1, 1), float("inf"))
    target = slack.argmin(dim=1)
    direction = torch.sign(weight[target] - weight[y])
    flat = (x.double() / 255.0 if x.dtype == torch.uint8 else x.detach().double().cpu()).flatten(1)
    x_adv = (flat + eps * direction).view(x.shape)
    model64 = copy.deepcopy(model).double().eval()
    device, _ = _device_dtype(model64)
    with torch.no_grad():
        success = model64(x_adv.to(device)).argmax(dim=1).cpu() != y
    return UnboxedAttack(x_adv=x_adv, target=target, success=success)


# --------------------------------------------------------------------------- sweep analysis


def _method_alpha(meta: dict[str, Any]) -> tuple[str, float]:
    config = meta.get("config", {})
    loss = str(config.get("loss", "?"))
    alpha = 0.0 if loss == "ce" else float(config.get("alpha", 0.0))
    return loss, alpha


_SHORT = {
    "ce": "CE",
    "standard": "SLS",
    "adversarial": "ALS",
    "boltzmann": "BLS",
    "second_best": "SBLS",
}


def _summary(values: Tensor) -> dict[str, float]:
    v = values.double()
    return {
        "mean": float(v.mean()),
        "median": float(v.median()),
        "std": float(v.std()) if len(v) > 1 else 0.0,
    }


def analyze(
    checkpoints: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    points: int = 1000,
    split: str = "test",
    *,
    eps: float = 0.1,
    device: str | torch.device = "cpu",
    figures: bool = True,
) -> dict[str, Any]:
    """Squeezing statistics of each checkpoint on the first ``points`` images of ``split``.

    Each checkpoint is labelled by ``method`` (its loss; ``ce`` counts as alpha 0 of every
    method in the figures) and ``alpha`` from its ``meta["config"]``. For each: clean accuracy,
    mean/median/std of the logit margin, top probability and gradient gap, and at ``eps`` the
    rate of the first-order criterion, the success rate of clipped cross-entropy FGSM and how
    often the two agree. Writes ``squeezing.json`` and ``squeezing.csv`` into ``out_dir`` and,
    when ``figures``, ``figures/figure-2a-squeezing.png`` and
    ``figures/figure-2b-gradient-gap.png``. Returns ``{"rows", "json", "csv", "figures"}``
    (per-example arrays under ``"samples"``, not written to disk).
    """
    from advls import data as datasets
    from advls.checkpoint import load_model

    if not checkpoints:
        raise ValueError("analyze needs at least one checkpoint")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for path in checkpoints:
        model, meta = load_model(path, device=device)
        method, alpha = _method_alpha(meta)
        dataset = str(meta.get("config", {}).get("dataset", "mnist"))
        if dataset not in cache:
            ds = datasets.load(dataset, split, data_dir)
            n = min(points, len(ds.labels))
            cache[dataset] = (ds.images[:n].float().div_(255.0), ds.labels[:n].long())
        x, y = cache[dataset]
        margins = logit_margins(model, x, y)
        probs = top_probabilities(model, x)
        gaps = gradient_gaps(model, x, y)
        criterion = first_order_criterion(model, x, y, eps)
        attacked = fgsm(model, x.to(device), y.to(device), eps=eps, loss="ce").success.cpu()
        row = {
            "run": str(path),
            "dataset": dataset,
            "model": meta.get("model", {}).get("name"),
            "method": method,
            "alpha": alpha,
            "epoch": meta.get("epoch"),
            "points": len(y),
            "accuracy": float((margins > 0).double().mean()),
            **{f"margin_{k}": v for k, v in _summary(margins).items()},
            **{f"top_prob_{k}": v for k, v in _summary(probs).items()},
            **{f"gradient_gap_{k}": v for k, v in _summary(gaps).items()},
            "eps": eps,
            "criterion_rate": float(criterion.double().mean()),
            "fgsm_success_rate": float(attacked.double().mean()),
            "fgsm_agreement": float((criterion == attacked).double().mean()),
        }
        rows.append(row)
        samples.append(
            {"method": method, "alpha": alpha, "margin": margins, "top_prob": probs, "gap": gaps}
        )
    json_path = out / "squeezing.json"
    json_path.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    csv_path = out / "squeezing.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written: list[str] = []
    if figures:
        written = _figures(samples, out / "figures")
    return {
        "rows": rows,
        "json": str(json_path),
        "csv": str(csv_path),
        "figures": written,
        "samples": samples,
    }


def _panels(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Method -> its samples sorted by alpha, with the CE runs as alpha 0 of every method."""
    methods = sorted({s["method"] for s in samples if s["method"] != "ce"})
    ce = [s for s in samples if s["method"] == "ce"]
    if not methods:
        return {"ce": ce}
    return {
        m: sorted(ce + [s for s in samples if s["method"] == m], key=lambda s: s["alpha"])
        for m in methods
    }


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    # alpha 0 darkest (most confident), larger alpha lighter, as in the paper.
    return [cmap(0.05 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


def _label(s: dict[str, Any]) -> str:
    return f"α = {s['alpha']:g}" + (" (CE)" if s["method"] == "ce" else "")


def _figures(samples: list[dict[str, Any]], fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig_dir.mkdir(parents=True, exist_ok=True)
    panels = _panels(samples)
    ncols = len(panels)

    # Figure 2a: margins (top row) and confidence (bottom row) per method, one curve per alpha.
    all_m = torch.cat([s["margin"] for s in samples]).numpy()
    lo, hi = np.percentile(all_m, [0.5, 99.5])
    margin_bins = np.linspace(min(lo, 0.0), hi, 60)
    prob_bins = np.linspace(0.0, 1.0, 41)
    fig, axes = plt.subplots(2, ncols, figsize=(5.2 * ncols, 7.2), squeeze=False)
    for col, (method, group) in enumerate(panels.items()):
        for colour, s in zip(_colours(len(group)), group, strict=True):
            m = s["margin"].numpy()
            axes[0, col].hist(
                m, bins=margin_bins, density=True, histtype="step", lw=2, color=colour,
                label=f"{_label(s)}: mean {m.mean():.2f}",
            )  # fmt: skip
            axes[1, col].hist(
                s["top_prob"].numpy(), bins=prob_bins, density=True, histtype="step", lw=2,
                color=colour, label=_label(s),
            )  # fmt: skip
        name = _SHORT.get(method, method)
        axes[0, col].set_title(f"{name}: logit margin as α grows")
        axes[0, col].set_xlabel("logit margin  $z_y - \\max_{k \\neq y} z_k$")
        axes[0, col].set_ylabel("density")
        axes[0, col].axvline(0.0, color="grey", ls=":", lw=1)
        axes[0, col].legend(fontsize=9)
        axes[1, col].set_title(f"{name}: confidence")
        axes[1, col].set_xlabel("top softmax probability  $\\max_k p_k$")
        axes[1, col].set_ylabel("density (log scale)")
        axes[1, col].set_yscale("log")
        axes[1, col].legend(fontsize=9, loc="best")
    fig.suptitle("Figure 2a: logit squeezing (darker = smaller α = more confident)")
    fig.tight_layout()
    path_a = fig_dir / "figure-2a-squeezing.png"
    fig.savefig(path_a, dpi=110)
    plt.close(fig)

    # Figure 2b: gradient-gap densities per method, one curve per alpha, log-spaced bins.
    all_g = torch.cat([s["gap"] for s in samples]).numpy()
    positive = all_g[all_g > 0]
    glo, ghi = np.percentile(positive, [0.5, 99.5]) if positive.size else (1e-3, 1.0)
    gap_bins = np.geomspace(max(glo, 1e-6), max(ghi, glo * 10), 60)
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)
    for col, (method, group) in enumerate(panels.items()):
        ax = axes[0, col]
        for colour, s in zip(_colours(len(group)), group, strict=True):
            g = s["gap"].numpy()
            ax.hist(
                g, bins=gap_bins, density=False, weights=np.full(len(g), 1.0 / len(g)),
                histtype="step", lw=2, color=colour,
                label=f"{_label(s)}: median {np.median(g):.3g}",
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"{_SHORT.get(method, method)}: gradient gap")
        ax.set_xlabel("$\\|\\nabla_x (z_y - z_{k^*})\\|_1$  (log scale)")
        ax.set_ylabel("fraction of examples per bin")
        ax.legend(fontsize=9)
    fig.suptitle("Figure 2b: gradient-gap densities ($k^*$ = best other class)")
    fig.tight_layout()
    path_b = fig_dir / "figure-2b-gradient-gap.png"
    fig.savefig(path_b, dpi=110)
    plt.close(fig)
    return [str(path_a), str(path_b)]
