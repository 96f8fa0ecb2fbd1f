"""Transfer attack: craft on a surrogate model, evaluate on the target.

The adversarial inputs are crafted on ``surrogate`` by an attack of the registry, built with
:func:`advls.attacks.from_config` (so unknown names and parameters are errors before
anything runs), then scored on the target ``model``: success, ``l2`` and ``linf`` describe the
target's predictions at ``x_adv``. The target is never differentiated.

``model_calls`` counts the *target's* forward passes only: one over the batch at ``x`` (its
clean predictions; inputs it already misclassifies are successes and come back unchanged)
and one over the inputs it classified correctly, at their ``x_adv`` (skipped when there are
none): 2, or 1. The inner attack's passes through the surrogate are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks.core import ATTACKS, eval_mode, from_config, keyword_parameters, register

__all__ = ["transfer"]


class _SameClasses(nn.Module):
    """The surrogate, refusing logits with another number of classes than the target's."""

    def __init__(self, surrogate: nn.Module, classes: int) -> None:
        super().__init__()
        self.surrogate = surrogate
        self.classes = classes
        self.training = surrogate.training  # the flag only: train() would recurse

    def forward(self, x: Tensor) -> Tensor:
        logits = self.surrogate(x)
        if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != self.classes:
            raise ValueError(
                f"the surrogate has {logits.shape[1]} classes but the target has "
                f"{self.classes}: a transfer attack needs models over the same classes"
            )
        return logits


def _inner_config(
    attack: str | Mapping[str, Any], eps: float | None, params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The inner attack's ``from_config`` dict, with ``eps`` and ``params`` merged in."""
    if isinstance(attack, str):
        config: dict[str, Any] = {"name": attack}
    elif isinstance(attack, Mapping):
        if "name" not in attack:
            raise ValueError("attack as a mapping needs a 'name' key, e.g. {'name': 'pgd'}")
        config = dict(attack)
    else:
        raise ValueError(
            f"attack must be an attack name or a config mapping, got {type(attack).__name__}"
        )
    if config["name"] == "transfer":
        raise ValueError("attack must be an attack other than 'transfer' (no recursion)")
    if params is not None:
        if not isinstance(params, Mapping):
            raise ValueError(f"params must be a mapping or None, got {type(params).__name__}")
        if "name" in params:
            raise ValueError("params must not contain 'name': name the attack with attack=")
        twice = sorted(set(params) & set(config))
        if twice:
            raise ValueError(f"inner attack parameter(s) given twice: {', '.join(twice)}")
        config.update(params)
    if eps is not None:
        if "eps" in config:
            raise ValueError("eps is given twice: as transfer's eps and in the inner attack")
        config["eps"] = eps
    return config


@register("transfer", norms=None)
def transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    surrogate: nn.Module,
    attack: str | Mapping[str, Any] = "pgd",
    eps: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Adversarial inputs crafted on ``surrogate`` by ``attack``, evaluated on ``model``.

    Args:
        surrogate: the model the inputs are crafted on; it must predict the same classes as
            the target (same number of logits). Its mode and ``requires_grad`` flags come back
            as they were. It may be the target itself (then this is the inner attack).
        attack: an attack name of the registry (``"pgd"``, ``"fgsm"``, ...) or a config
            ``{"name": "pgd", "steps": 40, ...}``; not ``"transfer"``.
        eps: the inner attack's budget, when given (else it must be in ``attack``/``params``
            if the inner attack needs one).
        params: more parameters of the inner attack (a key may be given only once overall).

    ``model_calls``: forward passes of the target only (2, or 1 when it misclassifies every
    input): see the module docstring.
    """
    if not isinstance(surrogate, nn.Module):
        raise ValueError(
            f"surrogate must be a torch.nn.Module (the model to craft on), "
            f"got {type(surrogate).__name__}"
        )
    config = _inner_config(attack, eps, params)
    crafted = from_config(config)
    missing = [
        p.name
        for p in keyword_parameters(ATTACKS[config["name"]])
        if p.default is p.empty and p.name not in config
    ]
    if missing:
        raise ValueError(
            f"attack {config['name']!r} needs {', '.join(missing)}: pass it to transfer "
            f"(eps=...) or in the attack's config"
        )
    with torch.no_grad():
        logits = model(x).detach().clone()
    correct = logits.argmax(dim=1) == y
    with eval_mode(surrogate):
        inner = crafted(_SameClasses(surrogate, logits.shape[1]), x, y)
    x_adv = inner.x_adv.detach().clone()
    x_adv[~correct] = x[~correct]
    todo = correct.nonzero().squeeze(1)
    if todo.numel():
        with torch.no_grad():
            logits[todo] = model(x_adv[todo])
    return x_adv, logits
