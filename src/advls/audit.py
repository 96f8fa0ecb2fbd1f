"""One call from any PyTorch model and a dataset to an evaluation and the page a reviewer reads.

:func:`audit` is what ``advls evaluate`` runs, for an advls checkpoint or a model from
outside (:class:`advls.external.ModelSource`): it checks the model against the data before
any attack (logits of shape ``(N, K)``, labels below ``K``), runs the protocols with the
gradient-masking checks, and with ``report`` writes ``audit.html``, ``audit.md`` and
``model_card.json`` (:mod:`advls.report.audit`). Nothing is written when an input is wrong.

Example::

    from advls.audit import audit
    evaluation = audit(model, "cifar10", protocols=("paper", "strong"), n=500, report="audit/")
    print(evaluation.worst_case("strong", 8 / 255))
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advls.data.dataset import ImageDataset
from advls.data.integrity import file_digest
from advls.evaluate import Evaluation, evaluate
from advls.evaluate.inputs import check_labels, points_or_default
from advls.external import (
    ExternalModelError,
    ModelSource,
    check_model_io,
    load_external_model,
)
from advls.sharding import Sharding

__all__ = ["AuditData", "audit", "audit_data"]

#: What :func:`audit` takes as data: a dataset name or ``.npz`` path, a loaded dataset, or
#: ``(images, labels)`` tensors (uint8, or floats in [0, 1], ``(N, C, H, W)``).
AuditData = str | os.PathLike[str] | ImageDataset | tuple[Tensor, Tensor]


def audit_data(
    data: AuditData, *, split: str = "test", n: int | None = None, data_dir: Path | None = None
) -> tuple[Tensor, Tensor, str]:
    """The first ``n`` images and labels of ``data`` (by the library's rule: never silently
    fewer than asked; the default 1000 or a smaller split whole) and the data's name."""
    if isinstance(data, tuple):
        images, labels = data
        name = "tensors"
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ExternalModelError(
                f"data must be images (N, C, H, W) and labels (N,), got shapes "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
    else:
        if not isinstance(data, ImageDataset):
            from advls import data as datasets  # local: loading the readers is not free

            data = datasets.load(os.fspath(data), split, data_dir)
        images, labels, name = data.images, data.labels, data.name
    count = points_or_default(n, len(labels), dataset=repr(name), split=split)
    return images[:count], labels[:count].long(), name


def audit(
    model: nn.Module | ModelSource,
    data: AuditData,
    *,
    split: str = "test",
    n: int | None = None,
    data_dir: Path | None = None,
    device: torch.device | str = "cpu",
    report: str | os.PathLike[str] | None = None,
    name: str | None = None,
    command: Sequence[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    sharding: Sharding | Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` under ``protocols`` and, given ``report``, write the audit.

    Args:
        model: a module taking ``(N, C, H, W)`` floats in [0, 1] and returning logits (wrap
            any normalisation inside it), or a :class:`ModelSource` to build one from.
        data: see :data:`AuditData`; ``split``, ``n`` and ``data_dir`` select from it.
        report: a folder for ``audit.html``, ``audit.md``, ``model_card.json`` and
            ``evaluation.json``; checked before any work, written after.
        name: what the page calls the model (default: the factory, or the module's class).
        command: the command line that reproduces the audit, shown on the page.
        weights: the file ``model``'s weights came from, named with its sha256 on the page
            (a :class:`ModelSource` names its own).
        sharding: spread the evaluation over workers (:class:`advls.sharding.Sharding` or
            its fields as a mapping): :func:`advls.evaluate.evaluate_sharded` runs it, each
            worker building the model from ``model`` (a module is pickled to it; a
            :class:`ModelSource` is rebuilt there).
        out: with ``sharding``, the folder that keeps finished shards, so that an audit run
            again after a kill evaluates only the shards that had not finished.

        options: :func:`advls.evaluate.evaluate`'s keyword arguments (``protocols``,
            ``eps``, ``l2_budgets``, ``smoothing``, ``surrogate``, ``batch_size``, ``seed``,
            ``progress``, ...), passed on as they are.

    Raises:
        ExternalModelError: the model cannot be built, its weights do not fit, or its output
            on the data is not ``(N, K)`` logits with every label below ``K``.
        ValueError: bad budgets, protocols, ``n`` or ``report`` folder.
    """
    report_dir = None
    if report is not None:
        from advls.outputs import check_output_dir

        report_dir = check_output_dir(report, option="--report")
    device = torch.device(device)
    source = model if isinstance(model, ModelSource) else None
    module = load_external_model(source, device) if source is not None else model.to(device)
    images, labels, data_name = audit_data(data, split=split, n=n, data_dir=data_dir)
    classes = check_model_io(module, images, device)
    check_labels(labels, classes, f"{data_name} ({split}), for a model of {classes} classes")
    if sharding is not None:
        from advls.evaluate import evaluate_sharded

        spread = sharding if isinstance(sharding, Sharding) else Sharding(**sharding)
        recipe = source if source is not None else module
        evaluation = evaluate_sharded(
            recipe, images, labels, device=device, out=out, **spread.options(), **options
        )
    elif out is not None:
        raise ValueError("out keeps the shards of a sharded audit: give sharding too")
    else:
        evaluation = evaluate(module, images, labels, device=device, **options)
    if report_dir is not None:
        from advls.report.audit import AuditSubject, write_audit

        described = source.describe() if source is not None else {}
        if weights is not None and source is None:
            described = {"weights": os.fspath(weights), "weights_sha256": file_digest(weights)}
        subject = AuditSubject(
            name=name or (source.factory if source else type(module).__name__),
            source=shlex.join(source.command_args()) if source else "a module given in Python",
            dataset=data_name,
            split=split,
            parameters=sum(p.numel() for p in module.parameters()),
            command=shlex.join(command) if command else "(audited from Python)",
            weights=described.get("weights"),
            weights_sha256=described.get("weights_sha256"),
        )
        write_audit(report_dir, evaluation, subject)
    return evaluation
