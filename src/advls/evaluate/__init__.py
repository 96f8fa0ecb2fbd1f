"""Robustness evaluation: protocols, per-example worst cases, and gradient-masking flags.

>>> from advls.evaluate import evaluate, PROTOCOLS
>>> result = evaluate(model, images, labels, protocols=["paper", "strong"], eps=[0.1, 0.3])
>>> print(format_markdown(result)); [flag.name for flag in result.raised]

:mod:`~advls.evaluate.protocols` defines the suites, :mod:`~advls.evaluate.runner` runs
their attacks once each, :mod:`~advls.evaluate.masking` holds the checks (what each measures
and how it judges), :mod:`~advls.evaluate.results` the types an evaluation returns,
:mod:`~advls.evaluate.run` puts them together and :mod:`~advls.evaluate.render` prints them;
:mod:`~advls.evaluate.sharded` cuts one evaluation into shards that run in parallel
(:mod:`~advls.evaluate.shards`: the plan, the seeds, the merge, the files kept).
"""

from advls.evaluate.masking import CHECKS, Thresholds, audit_records
from advls.evaluate.protocols import (
    PAPER_TABLE_LABELS,
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
from advls.evaluate.results import AttackOutcome, Evaluation, Flag, SanityChecks
from advls.evaluate.run import check_eps_list, evaluate
from advls.evaluate.runner import AttackSummary, attack_dataset
from advls.evaluate.sharded import FromCheckpoint, evaluate_sharded

__all__ = [
    "CHECKS",
    "PAPER_TABLE_LABELS",
    "PROTOCOLS",
    "AttackOutcome",
    "AttackSpec",
    "AttackSummary",
    "Evaluation",
    "Flag",
    "FromCheckpoint",
    "Protocol",
    "SanityChecks",
    "Thresholds",
    "attack_dataset",
    "audit_records",
    "check_eps_list",
    "default_eps",
    "default_l2_budgets",
    "evaluate",
    "evaluate_sharded",
    "format_markdown",
    "get_protocol",
    "paper_eps_to_pixels",
    "training_smoothing",
]
