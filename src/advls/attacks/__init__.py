"""Adversarial attacks with one contract: ``attack(model, x, y, **params) -> AttackResult``.

Inputs live in [0, 1]; attacks never mutate them, always return points in [0, 1] (and in the
eps-ball when bounded), run the model in eval mode and restore its mode. The contract is
enforced once, in :mod:`advls.attacks.core`; each attack module holds only its algorithm
(``docs/architecture.md`` shows how to add one).

========== ================================================================================
``fgsm``    one signed-gradient step (L-inf)
``fgm``     one normalised-gradient step (L2)
``fab``     FAB (Croce & Hein): minimal or bounded L-inf / L2, untargeted or FAB-T
``bim``     iterative FGSM with projection every step, no random start (Kurakin)
``pgd``     BIM with random start and restarts, L-inf or L2 (Madry)
``deepfool`` minimal L2 / L-inf perturbation, batched, top-k candidate classes
``cw_l2``   Carlini-Wagner L2 with per-example binary search over c
``apgd``    APGD (Croce & Hein) with CE or DLR loss, L-inf or L2, no step size to tune;
            ``targeted=True`` is APGD-T over the top runner-up classes
``square``  Square attack: score-based L-inf or L2 random search, never calls backward
``transfer`` adversarials crafted on a surrogate model, evaluated on the target
========== ================================================================================

Attacks are also built from plain dicts (YAML): ``from_config({"name": "bim", "eps": 0.1})``.
"""

from __future__ import annotations

# Importing each algorithm module registers its attack; the order is the registry's order.
from advls.attacks.fgsm import fgsm  # isort: skip
from advls.attacks.iterative import bim, pgd  # isort: skip
from advls.attacks.deepfool import deepfool  # isort: skip
from advls.attacks.cw import cw_l2  # isort: skip
from advls.attacks.apgd import apgd  # isort: skip
from advls.attacks.square import square  # isort: skip
from advls.attacks.transfer import transfer  # isort: skip
from advls.attacks.fgm import fgm  # isort: skip
from advls.attacks.fab import fab  # isort: skip
from advls.attacks.core import ATTACKS, NORMS, AttackResult, eval_mode, from_config
from advls.attacks.objectives import LOSSES, attack_loss
from advls.attacks.validation import check_eps

__all__ = [
    "ATTACKS",
    "LOSSES",
    "NORMS",
    "AttackResult",
    "apgd",
    "attack_loss",
    "bim",
    "check_eps",
    "cw_l2",
    "deepfool",
    "eval_mode",
    "fab",
    "fgm",
    "fgsm",
    "from_config",
    "pgd",
    "square",
    "transfer",
]
