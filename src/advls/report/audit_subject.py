"""What an audit names as its subject: the model, how it was loaded, the data, the command."""

from __future__ import annotations

from dataclasses import dataclass

import advls

__all__ = ["AuditSubject"]


@dataclass(frozen=True)
class AuditSubject:
    """What was audited, as the page and the model card name it."""

    name: str  # e.g. "models.py:small_cnn" or a run directory
    source: str  # how it was loaded, e.g. "--model models.py:small_cnn --weights w.safetensors"
    dataset: str  # "mnist", "cifar10" or an .npz path
    split: str
    parameters: int
    command: str  # the exact shell command that reproduces the audit
    weights: str | None = None
    weights_sha256: str | None = None
    architecture: str | None = None  # the model card's; the name where None
    advls_version: str = advls.__version__
