"""Robustness evaluation: protocols, per-example worst cases, and gradient-masking flags.

>>> from advls.evaluate import evaluate, PROTOCOLS
>>> result = evaluate(model, images, labels, protocols=["paper", "strong"], eps=[0.1, 0.3])
>>> print(format_markdown(result)); [flag.name for flag in result.raised]

See :mod:`advls.evaluate.protocols` for the suites and :mod:`advls.evaluate.masking` for
the checks.
"""

from advls.evaluate.masking import CHECKS, Flag, SanityChecks, Thresholds
from advls.evaluate.protocols import (
    PROTOCOLS,
    AttackSpec,
    Protocol,
    default_eps,
    default_l2_budgets,
    get_protocol,
    paper_eps_to_pixels,
    training_smoothing,
)
from advls.evaluate.render import format_markdown
from advls.evaluate.run import AttackOutcome, Evaluation, check_eps_list, evaluate

__all__ = [
    "CHECKS",
    "PROTOCOLS",
    "AttackOutcome",
    "AttackSpec",
    "Evaluation",
    "Flag",
    "Protocol",
    "SanityChecks",
    "Thresholds",
    "check_eps_list",
    "default_eps",
    "default_l2_budgets",
    "evaluate",
    "format_markdown",
    "get_protocol",
    "paper_eps_to_pixels",
    "training_smoothing",
]
