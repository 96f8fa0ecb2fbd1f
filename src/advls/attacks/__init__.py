"""Adversarial attacks with one contract: ``attack(model, x, y, **params) -> AttackResult``.

Inputs live in [0, 1]; attacks never mutate them, always return points in [0, 1] (and in the
eps-ball when bounded), run the model in eval mode and restore its mode.

========== ================================================================================
``fgsm``    one signed-gradient step (L-inf)
``bim``     iterative FGSM with projection every step, no random start (Kurakin)
``pgd``     BIM with random start and restarts, L-inf or L2 (Madry)
``deepfool`` minimal L2 / L-inf perturbation, batched, top-k candidate classes
``cw_l2``   Carlini-Wagner L2 with per-example binary search over c
``apgd``    APGD (Croce & Hein) with CE or DLR loss, L-inf or L2, no step size to tune
``square``  Square attack: score-based L-inf random search, never calls backward
``transfer`` adversarials crafted on a surrogate model, evaluated on the target
========== ================================================================================

Attacks are also built from plain dicts (YAML): ``from_config({"name": "bim", "eps": 0.1})``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from advls.attacks.apgd import apgd
from advls.attacks.base import LOSSES, AttackResult
from advls.attacks.cw import cw_l2
from advls.attacks.deepfool import deepfool
from advls.attacks.fgsm import fgsm
from advls.attacks.iterative import bim, pgd
from advls.attacks.square import square
from advls.attacks.transfer import transfer

__all__ = [
    "ATTACKS",
    "LOSSES",
    "AttackResult",
    "apgd",
    "bim",
    "cw_l2",
    "deepfool",
    "fgsm",
    "from_config",
    "pgd",
    "square",
    "transfer",
]

Attack = Callable[..., AttackResult]

#: Every attack by name.
ATTACKS: dict[str, Attack] = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "deepfool": deepfool,
    "cw_l2": cw_l2,
    "apgd": apgd,
    "square": square,
    "transfer": transfer,
}


def from_config(config: Mapping[str, Any]) -> Callable[[nn.Module, Tensor, Tensor], AttackResult]:
    """An attack configured from a dict such as ``{"name": "bim", "eps": 0.1, "steps": 10}``.

    Unknown attack names and parameters the attack does not take are errors here, before
    anything runs; parameter values are checked by the attack itself.
    """
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError("an attack config must be a mapping with a 'name' key")
    params = {key: value for key, value in config.items() if key != "name"}
    name = config["name"]
    if name not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {name!r}")
    attack = ATTACKS[name]
    accepted = [
        p.name
        for p in inspect.signature(attack).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"attack {name!r} takes no parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted)}"
        )
    configured = functools.partial(attack, **params)
    functools.update_wrapper(configured, attack)
    return configured
