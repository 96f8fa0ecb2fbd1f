"""Run protocols over a test set: per-attack and worst-case robust accuracy, checks, flags.

Robust accuracy is over *all* evaluated points: a point counts as robust at a budget when the
model classifies it correctly and the attack does not change that. Only correctly classified
points are attacked. The worst case of a protocol at a budget is per example: a point is
robust only if every bounded attack of the protocol failed on it (AutoAttack's reading).
An attack that appears in several protocols with the same configuration runs once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks import eval_mode
from advls.evaluate.inputs import check_eps_list, check_l2_budgets
from advls.evaluate.masking import Thresholds, measure_checks, raise_flags
from advls.evaluate.protocols import (
    AttackSpec,
    Protocol,
    default_eps,
    default_l2_budgets,
    fit_to_classes,
    get_protocol,
)
from advls.evaluate.results import AttackOutcome, CertifiedOutcome, Evaluation
from advls.evaluate.runner import AttackRunner, ProgressFactory, to_unit

__all__ = ["ProgressFactory", "check_certify_methods", "check_eps_list", "evaluate"]


def _predict(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Clean logits' argmax for every point (on the CPU)."""
    predictions = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            predictions.append(model(to_unit(images[start : start + batch_size], device)).cpu())
    return torch.cat(predictions)


def _check_surrogate(surrogate: nn.Module, images: Tensor, num_classes: int, device) -> None:
    with torch.no_grad(), eval_mode(surrogate):
        logits = surrogate(to_unit(images[:1], device))
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"the surrogate has {logits.shape[-1]} classes but the evaluated model has "
            f"{num_classes}: a transfer attack needs a model of the same task"
        )


def check_certify_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    """The bound methods named, each once, in the order given.

    Raises:
        ValueError: a method :mod:`advls.certify` does not know.
    """
    from advls.certify import METHODS

    chosen = (methods,) if isinstance(methods, str) else tuple(methods)
    for method in chosen:
        if method not in METHODS:
            raise ValueError(f"certify methods are {', '.join(METHODS)}; got {method!r}")
    return tuple(dict.fromkeys(chosen))


def _certify(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    methods: Sequence[str],
    budgets: Sequence[float],
    batch_size: int,
    device: torch.device,
) -> list[CertifiedOutcome]:
    """Each method's certified points at each budget, over all points (on the CPU)."""
    if not methods:
        return []
    from advls.certify import certified

    found = []
    for method in methods:
        for eps in budgets:
            started = time.perf_counter()
            proven = []
            for start in range(0, len(images), batch_size):
                x = to_unit(images[start : start + batch_size], device)
                y = labels[start : start + batch_size].to(device)
                proven.append(certified(model, x, y, eps, method).cpu())
            seconds = time.perf_counter() - started
            found.append(CertifiedOutcome(method, eps, torch.cat(proven), seconds))
    return found


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    protocols: Sequence[str | Protocol] = ("strong",),
    eps: Sequence[float] | None = None,
    l2_budgets: Sequence[float] | None = None,
    smoothing: Mapping[str, Any] | None = None,
    surrogate: nn.Module | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checks: bool = True,
    thresholds: Thresholds | None = None,
    progress: ProgressFactory | None = None,
    certify: Sequence[str] = (),
) -> Evaluation:
    """Evaluate ``model`` on ``images`` (uint8, or floats in [0, 1]) under ``protocols``.

    Args:
        protocols: names from :data:`advls.evaluate.PROTOCOLS` or ``Protocol`` objects.
        eps: L-inf budgets in (0, 1] pixel units; defaults by input shape (0.1/0.2/0.3 for
            grey-scale digits, 2, 4, 8 / 255 for colour images).
        l2_budgets: where minimal attacks' distances are read as robust accuracy.
        smoothing: the model's training loss ``{"method", "alpha", "temperature"}`` for the
            paper protocol's attacks; None for a model trained with plain cross-entropy.
        surrogate: a plainly trained twin for the transfer attack (skipped without one).
        seed: for the attacks that draw random numbers.
        checks: measure what the masking checks need (zero gradients, PGD at eps 0.5,
            unbounded DeepFool) and raise the flags.
        progress: ``progress(label, total)`` returns a callback given each batch's size.
        certify: bound methods (:data:`advls.certify.METHODS`: ``ibp``, ``crown-ibp``,
            ``crown``) whose certified points are computed at every L-inf budget, so each
            robust accuracy comes as the bracket ``[certified, attacked]``; a model the
            bounds do not support is refused before any attack.
    """
    started = time.perf_counter()
    chosen = tuple(get_protocol(protocol) for protocol in protocols)
    if not chosen:
        raise ValueError("protocols must name at least one protocol")
    if len({p.name for p in chosen}) != len(chosen):
        raise ValueError("each protocol may be evaluated once")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if images.dim() < 2 or len(images) != len(labels) or len(images) == 0:
        raise ValueError("images (N, ...) and labels (N,) must be non-empty and of equal length")
    budgets = check_eps_list(eps if eps is not None else default_eps(images.shape[1:]))
    l2 = check_l2_budgets(
        l2_budgets if l2_budgets is not None else default_l2_budgets(images.shape[1:])
    )
    methods = check_certify_methods(certify)
    thresholds = thresholds or Thresholds()
    device = torch.device(device)
    labels = labels.long()

    with eval_mode(model):
        logits_shape = model(to_unit(images[:1], device)).shape
    num_classes = int(logits_shape[-1])
    if surrogate is not None:
        _check_surrogate(surrogate, images, num_classes, device)
    with eval_mode(model):
        correct = _predict(model, images, batch_size, device).argmax(dim=1) == labels

    evaluation = Evaluation(len(labels), num_classes, correct, budgets, l2, chosen)
    # Bounds first: a model they cannot read fails here, before the attacks' hours.
    evaluation.certified = _certify(model, images, labels, methods, budgets, batch_size, device)
    runner = AttackRunner(
        model, images, labels, correct, batch_size=batch_size, device=device, progress=progress
    )
    outcomes: dict[str, list[AttackOutcome]] = {}
    # Protocols that run every attack on every point go first, so that a cascade reads the
    # attacks it shares with them instead of running them again (AttackRunner.run).
    for protocol in sorted(chosen, key=lambda p: p.cascade):
        budgets_of = l2 if protocol.norm == "l2" else budgets
        attacks: list[tuple[AttackSpec, Sequence[float | None]]] = []
        for spec in protocol.attacks:
            if spec.kind == "transfer" and surrogate is None:
                evaluation.skipped.append(
                    {"protocol": protocol.name, "attack": spec.label, "reason": "no surrogate"}
                )
                continue
            attacks.append((spec, budgets_of if spec.bounded else (None,)))
        for spec, _ in attacks:
            _, change = fit_to_classes(spec.config(None, seed=seed), num_classes)
            if change:
                evaluation.adapted.append(
                    {"protocol": protocol.name, "attack": spec.label, "change": change}
                )
        found: dict[tuple[str, float | None], AttackOutcome] = {}
        for budget in budgets_of if protocol.cascade else (None,):
            # A cascade attacks, at each budget, only the points the earlier attacks left.
            robust = correct.clone() if protocol.cascade else None
            for spec, spec_budgets in attacks:
                for eps_ in (budget,) if protocol.cascade else spec_budgets:
                    config = spec.config(eps_, smoothing=smoothing, seed=seed, surrogate=surrogate)
                    config, _ = fit_to_classes(config, num_classes)
                    where = f"{protocol.name}/{spec.label}" + (f" eps={eps_:g}" if eps_ else "")
                    run = runner.run(config, where, among=robust)
                    attacked = correct if robust is None else robust.clone()
                    if robust is not None:
                        robust &= ~run.fooled
                    fooled = ~robust if robust is not None else run.fooled
                    found[(spec.label, eps_)] = AttackOutcome(
                        protocol.name, spec, eps_, fooled, run.l2, attacked, run.seconds,
                        run.model_calls,
                    )  # fmt: skip
        # Outcomes in the protocol's order of attacks, each over its budgets.
        outcomes[protocol.name] = [
            found[(spec.label, eps_)] for spec, spec_budgets in attacks for eps_ in spec_budgets
        ]
    order = {protocol.name: rank for rank, protocol in enumerate(chosen)}
    for protocol in chosen:
        evaluation.outcomes.extend(outcomes[protocol.name])
    for notes in (evaluation.skipped, evaluation.adapted):
        notes.sort(key=lambda note: order[note["protocol"]])

    if checks:
        evaluation.checks = measure_checks(runner, seed=seed)
        evaluation.flags = raise_flags(evaluation, thresholds)
    evaluation.seconds = time.perf_counter() - started
    return evaluation
