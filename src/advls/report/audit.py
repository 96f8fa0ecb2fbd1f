"""The audit page of one evaluation: ``audit.html``, ``audit.md``, ``model_card.json``.

:func:`write_audit` is what ``advls evaluate --report DIR`` calls. The page leads with the
verdict (:func:`~advls.report.audit_verdict.audit_verdict`), then clean accuracy, robust
accuracy per protocol, attack and budget, accuracy against the budget, which attacks broke
which points, every masking check, the cost, what was skipped or adapted, and the command
that reproduces it. The page and the model card take their headline from one rule
(:func:`~advls.report.audit_numbers.headline`), so they print the same number.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from advls.atomic import write_text_atomically
from advls.evaluate import Evaluation
from advls.report.audit_figures import (
    plot_accuracy_against_eps,
    plot_broken_points,
)
from advls.report.audit_numbers import eps_text, flag_verdict, headline, percent, threat_model
from advls.report.audit_subject import AuditSubject
from advls.report.audit_tables import (
    broken_points_table,
    certified_table,
    checks_table,
    cost_table,
    minimal_table,
    robust_table,
    subject_table,
)
from advls.report.audit_verdict import audit_verdict
from advls.report.figures import save_figure
from advls.report.page import (
    CodeBlock,
    Document,
    FigureBlock,
    Section,
    TableBlock,
    TextBlock,
    render_html,
    render_markdown,
)

__all__ = [
    "AuditSubject",
    "audit_document",
    "audit_verdict",
    "model_card",
    "write_audit",
]


# --------------------------------------------------------------------------- the page
def _table_blocks(tables: dict[str, Any], **options: Any) -> list[TableBlock]:
    return [TableBlock(name, frame, **options) for name, frame in tables.items()]


def audit_document(
    evaluation: Evaluation,
    subject: AuditSubject,
    *,
    accuracy_figure: FigureBlock | None = None,
    broken_figure: FigureBlock | None = None,
) -> Document:
    """The audit page as a :class:`~advls.report.page.Document`; the figures' paths are
    relative to the folder the page is rendered from (see :func:`write_audit`)."""
    head = headline(evaluation)
    summary = TextBlock(
        [
            f"**{audit_verdict(evaluation)}**",
            f"Robust accuracy {percent(head.robust_accuracy)}% ({head.robust_points} of "
            f"{head.points} points) under the `{head.protocol}` protocol at ε "
            f"{eps_text(head.eps)} ({threat_model(head.norm)}), the worst case over its "
            f"attacks per point; clean accuracy {percent(evaluation.clean_accuracy)}%. These "
            "are the numbers `model_card.json` reports: `autoattack` if it was evaluated, "
            "else `strong`, else the first protocol, at its largest budget.",
        ]
    )
    robust = Section(
        "Robust accuracy",
        [
            TextBlock(
                [
                    "Robust accuracy counts every evaluated point: a clean error is a failure "
                    "of every attack. A protocol's worst case is per point: robust only if "
                    "every bounded attack of the protocol failed on it. In a cascade (↳) each "
                    "attack ran only on the points the earlier ones left, and its row is the "
                    "robust accuracy after it. The headline cell is highlighted."
                ]
            ),
            *_table_blocks(robust_table(evaluation), cell_class=_headline_cell(evaluation)),
            *_table_blocks(minimal_table(evaluation)),
            *_certified_blocks(evaluation),
        ],
    )
    figure_note = TextBlock(["No attack ran, so there is nothing to plot."])
    broken = Section(
        "Which attacks broke which points",
        [
            TextBlock(
                [
                    "Per protocol and budget: the points each attack *alone* broke (no other "
                    "attack of the protocol did; in a cascade, the points it newly broke), "
                    "those several attacks broke, the unbroken ones and the clean errors, "
                    "which add up to every point. The last row, not part of that sum, counts "
                    "the points only black-box or transfer attacks broke: no gradient attack "
                    "did, which is what gradient masking looks like."
                ]
            ),
            broken_figure or figure_note,
            *_table_blocks(broken_points_table(evaluation)),
        ],
    )
    raised = len(evaluation.raised)
    unchecked = sum(not flag.checked for flag in evaluation.flags)
    checks = Section(
        "Gradient-masking checks",
        [
            TextBlock(
                [
                    f"{len(evaluation.flags)} checks: {raised} raised, {unchecked} unchecked "
                    "(lacking what they need, so neither raised nor passed), "
                    f"{len(evaluation.flags) - raised - unchecked} passed."
                    if evaluation.flags
                    else "The masking checks were not run (evaluate with checks on)."
                ]
            ),
            *_table_blocks(checks_table(evaluation), cell_class=_verdict_cell),
        ],
    )
    costs = cost_table(evaluation)
    cost = Section(
        "Time and model calls",
        [
            TextBlock([_cost_text(evaluation, costs)]),
            *_table_blocks(costs, digits=2),
        ],
    )
    sections = [
        Section(
            "Clean accuracy",
            [
                TextBlock(
                    [
                        f"Clean accuracy {percent(evaluation.clean_accuracy)}% on "
                        f"{evaluation.points} points of {subject.dataset} ({subject.split}), "
                        f"{evaluation.num_classes} classes."
                    ]
                ),
                *_table_blocks(subject_table(evaluation, subject)),
            ],
        ),
        robust,
        Section("Accuracy against the budget", [accuracy_figure or figure_note]),
        broken,
        checks,
        cost,
        Section("Skipped and adapted attacks", [_skipped_block(evaluation)]),
        Section(
            "Reproduce",
            [
                TextBlock(["This command reproduces the audit:"]),
                CodeBlock(subject.command),
            ],
        ),
    ]
    return Document(f"Robustness audit: {subject.name}", summary, sections)


def _certified_blocks(evaluation: Evaluation) -> list[Any]:
    """The bracket table, where certification ran."""
    tables = certified_table(evaluation)
    if not tables:
        return []
    text = TextBlock(
        [
            "Certified accuracy is proven: the bounds ("
            + ", ".join(evaluation.certify_methods)
            + ") show that no perturbation within ε changes those points' class. Each "
            "robust accuracy therefore lies in the bracket [certified, attacked]: the truth "
            "is at least what is proven and at most what the attacks left."
        ]
    )
    return [text, *_table_blocks(tables)]


def _headline_cell(evaluation: Evaluation) -> Any:
    head = headline(evaluation)
    column = f"ε {eps_text(head.eps)}"

    def cell_class(key: Any, name: Any, value: object) -> str:
        return "far" if key == (head.protocol, "worst case") and name == column else ""

    return cell_class


def _verdict_cell(key: Any, column: Any, value: object) -> str:
    if column != "verdict":
        return ""
    return {"raised": "flag", "passed": "holds", "unchecked": "partly"}.get(str(value), "")


def _cost_text(evaluation: Evaluation, tables: dict[str, Any]) -> str:
    if not tables:
        return f"The evaluation took {evaluation.seconds:.1f} s; no attack ran."
    table = tables["Time and model calls"]
    once = table[table["ran once with"] == ""]
    return (
        f"The evaluation took {evaluation.seconds:.1f} s in all (clean passes, attacks and the "
        f"checks' own measurements); its protocols' attacks {once['seconds'].sum():.1f} s and "
        f"{int(once['model calls'].sum())} model calls, each run counted once (an attack two "
        "protocols configure alike runs once and shows in both)."
    )


def _skipped_block(evaluation: Evaluation) -> TextBlock:
    bullets = [
        f"`{s['protocol']}/{s['attack']}` skipped: {s['reason']}" for s in evaluation.skipped
    ]
    bullets += [
        f"`{a['protocol']}/{a['attack']}` adapted to {evaluation.num_classes} classes: "
        f"{a['change']}"
        for a in evaluation.adapted
    ]
    if not bullets:
        return TextBlock(["Every attack ran as its protocol configures it."])
    return TextBlock([], bullets)


# --------------------------------------------------------------------------- the model card
def model_card(evaluation: Evaluation, subject: AuditSubject) -> dict[str, Any]:
    """A RobustBench ``model_info`` entry of the evaluation, with an ``advls`` object.

    RobustBench's fields keep their types: accuracies as percentage strings with two
    decimals (``clean_acc``, ``autoattack_acc``, ``reported``), ``eps`` as a string such as
    ``"8/255"``. ``autoattack_acc`` is the headline robust accuracy: the worst case of the
    ``autoattack`` protocol if it was evaluated, else of ``strong``, else of the first
    protocol, at that protocol's largest budget (the footnote and ``advls.protocol`` say
    which), the same number, rounded the same way, as the page. ``reported`` is the
    ``paper`` protocol's worst case there where it was evaluated (what its attacks alone
    would report), else the headline. What advls cannot know keeps RobustBench's neutral
    values: no link, authors or venue, ``additional_data`` false, one forward pass.
    ``unreliable`` is true when a masking flag was raised.
    """
    head = headline(evaluation)
    paper_reports = head.norm == "linf" and "paper" in evaluation.protocol_names
    reported = evaluation.worst_case("paper", head.eps) if paper_reports else head.robust_accuracy
    raised = [flag.name for flag in evaluation.raised]
    footnote = (
        f"advls {subject.advls_version}: worst case of the {head.protocol} protocol per point "
        f"at eps {eps_text(head.eps)} ({threat_model(head.norm)}) on {evaluation.points} "
        f"points of {subject.dataset} ({subject.split})"
        + ("" if head.protocol == "autoattack" else ", not AutoAttack")
        + (f"; masking flags raised: {', '.join(raised)}" if raised else "")
        + "."
    )
    worst = {
        protocol.name: {
            "threat_model": threat_model(protocol.norm),
            "cascade": protocol.cascade,
            "worst_case": [
                {"eps": eps, "robust_accuracy": evaluation.worst_case(protocol.name, eps)}
                for eps in evaluation.budgets(protocol.name)
            ],
        }
        for protocol in evaluation.protocols
    }
    return {
        "link": "",
        "name": subject.name,
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": subject.dataset,
        "venue": "N/A",
        "architecture": subject.architecture or subject.name,
        "eps": eps_text(head.eps),
        "clean_acc": percent(evaluation.clean_accuracy),
        "reported": percent(reported),
        "autoattack_acc": percent(head.robust_accuracy),
        "footnote": footnote,
        "unreliable": bool(raised),
        "advls": {
            "version": subject.advls_version,
            "threat_model": threat_model(head.norm),
            "eps": head.eps,
            "protocol": head.protocol,
            "robust_accuracy": head.robust_accuracy,
            "robust_points": head.robust_points,
            "clean_accuracy": evaluation.clean_accuracy,
            "points": evaluation.points,
            "num_classes": evaluation.num_classes,
            "split": subject.split,
            "parameters": subject.parameters,
            "source": subject.source,
            "weights": subject.weights,
            "weights_sha256": subject.weights_sha256,
            "command": subject.command,
            "worst_cases": worst,
            "flags": {
                verdict: [f.name for f in evaluation.flags if flag_verdict(f) == verdict]
                for verdict in ("raised", "passed", "unchecked")
            },
            "verdict": audit_verdict(evaluation),
        },
    }


# --------------------------------------------------------------------------- writing
def _json(payload: Any) -> str:
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def write_audit(
    directory: str | os.PathLike[str], evaluation: Evaluation, subject: AuditSubject
) -> list[Path]:
    """Write the audit of ``evaluation`` into ``directory`` (created if missing).

    Writes ``figures/*.png`` (and the other formats
    :func:`~advls.report.figures.save_figure` writes), ``evaluation.json``
    (``Evaluation.to_json`` after the subject), ``model_card.json``, ``audit.md`` (figures
    linked under ``figures/``) and ``audit.html`` (one page with its images inside, that
    opens offline). Every file is written whole or not at all; returns their paths.

    Raises:
        ValueError: ``directory`` (or a folder above it) exists and is not a directory;
            nothing is written then.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory: give a folder for the audit")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(
            f"cannot create the audit folder {directory}: a file is in its way"
        ) from None
    written: list[Path] = []

    def figure(draw: Any, stem: str, title: str, caption: str) -> FigureBlock | None:
        drawn = draw(evaluation)
        if drawn is None:  # nothing to draw: an earlier audit's figure of that name goes
            for stale in (directory / "figures").glob(f"{stem}.*"):
                stale.unlink()
            return None
        paths = save_figure(drawn, directory / "figures" / stem)
        written.extend(paths)
        relative = [str(path.relative_to(directory)) for path in paths]
        return FigureBlock(title=title, png=relative[0], caption=caption, files=relative[1:])

    document = audit_document(
        evaluation,
        subject,
        accuracy_figure=figure(
            plot_accuracy_against_eps,
            "accuracy-vs-eps",
            "Robust accuracy against the budget",
            "A panel per protocol, a line per attack from the clean accuracy at ε = 0; the "
            "bold black line is the protocol's per-point worst case.",
        ),
        broken_figure=figure(
            plot_broken_points,
            "broken-points",
            "Which attacks broke which points",
            "A bar per protocol and budget adding up to every evaluated point; above each bar, "
            "the points only black-box or transfer attacks broke.",
        ),
    )
    files = {
        "evaluation.json": evaluation.to_json(subject=dataclasses.asdict(subject)) + "\n",
        "model_card.json": _json(model_card(evaluation, subject)),
        "audit.md": render_markdown(document),
        "audit.html": render_html(document, directory),
    }
    for name, text in files.items():
        write_text_atomically(directory / name, text)
        written.append(directory / name)
    return written
