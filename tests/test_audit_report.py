"""The audit page of one evaluation: verdict, per-attack breakdowns, model card, a browser.

Real evaluations, built once per module: a small MLP trained for 300 steps on 2000 real
MNIST images, evaluated on 60 test points under shortened paper, strong and autoattack
protocols; the same MLP with logits scaled by 1e4 (a saturated softmax: masking flags
raised); and a fixed two-class linear model (attacks adapted to K = 2).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from advls import data as datasets
from advls import models
from advls.evaluate import PROTOCOLS, Evaluation, Flag, evaluate
from advls.report.audit import AuditSubject, audit_verdict, model_card, write_audit
from advls.report.audit_numbers import broken_points, eps_text, headline, percent
from browser import probe as probe_page
from test_real_masking import Scaled

pytestmark = [pytest.mark.slow]

POINTS = 60
EPS = (0.03, 0.1)
QUICK_STRONG = PROTOCOLS["strong"].with_params(
    **{
        "pgd-40x5": {"steps": 10, "restarts": 1},
        "apgd-ce": {"steps": 10},
        "apgd-dlr": {"steps": 10, "restarts": 1},
        "apgd-t": {"steps": 10, "target_classes": 2},
        "fab-t": {"steps": 10, "target_classes": 2},
        "square": {"queries": 100, "rescale_schedule": True},
        "deepfool": {"steps": 20},
    }
)
PAPER = PROTOCOLS["paper"].with_params(
    **{
        "bim-100": {"steps": 10},
        "cw-l2": {"steps": 20, "binary_search_steps": 2},
        "deepfool": {"steps": 20},
    }
)
QUICK_AUTOATTACK = PROTOCOLS["autoattack"].with_params(
    **{
        "apgd-ce": {"steps": 10},
        "apgd-t": {"steps": 10, "target_classes": 2},
        "fab-t": {"steps": 10, "target_classes": 2},
        "square": {"queries": 100, "rescale_schedule": True},
    }
)
SUBJECT = AuditSubject(
    name="models.py:mlp",
    source="--model models.py:mlp --weights mlp.safetensors",
    dataset="mnist",
    split="test",
    parameters=535_818,
    command="advls evaluate --model models.py:mlp --weights mlp.safetensors --protocol paper "
    "--protocol strong --protocol autoattack --eps 0.03,0.1 --n 60 --report 'out dir'",
    weights="mlp.safetensors",
    weights_sha256="0" * 64,
)

#: RobustBench's ``model_info`` fields as its entries type them, and advls's own object.
PERCENT = {"type": "string", "pattern": r"^\d{1,3}\.\d{2}$"}
FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "link",
        "name",
        "authors",
        "additional_data",
        "number_forward_passes",
        "dataset",
        "venue",
        "architecture",
        "eps",
        "clean_acc",
        "reported",
        "autoattack_acc",
        "footnote",
        "unreliable",
        "advls",
    ],
    "properties": {
        "link": {"type": "string"},
        "name": {"type": "string"},
        "authors": {"type": "string"},
        "additional_data": {"type": "boolean"},
        "number_forward_passes": {"type": "integer", "minimum": 1},
        "dataset": {"type": "string"},
        "venue": {"type": "string"},
        "architecture": {"type": "string"},
        "eps": {"type": "string", "pattern": r"^(\d+/255|\d+(\.\d+)?)$"},
        "clean_acc": PERCENT,
        "reported": PERCENT,
        "autoattack_acc": PERCENT,
        "footnote": {"type": "string"},
        "unreliable": {"type": "boolean"},
        "advls": {
            "type": "object",
            "required": [
                "version",
                "threat_model",
                "eps",
                "protocol",
                "robust_accuracy",
                "robust_points",
                "clean_accuracy",
                "points",
                "num_classes",
                "worst_cases",
                "flags",
                "verdict",
                "command",
            ],
            "properties": {
                "version": {"type": "string"},
                "threat_model": {"enum": ["Linf", "L2"]},
                "eps": {"type": "number", "exclusiveMinimum": 0},
                "protocol": {"type": "string"},
                "robust_accuracy": FRACTION,
                "robust_points": {"type": "integer", "minimum": 0},
                "clean_accuracy": FRACTION,
                "points": {"type": "integer", "minimum": 1},
                "num_classes": {"type": "integer", "minimum": 2},
                "weights_sha256": {"type": ["string", "null"]},
                "command": {"type": "string"},
                "verdict": {"type": "string"},
                "worst_cases": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["threat_model", "cascade", "worst_case"],
                        "properties": {
                            "threat_model": {"enum": ["Linf", "L2"]},
                            "cascade": {"type": "boolean"},
                            "worst_case": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["eps", "robust_accuracy"],
                                    "properties": {
                                        "eps": {"type": "number"},
                                        "robust_accuracy": FRACTION,
                                    },
                                },
                            },
                        },
                    },
                },
                "flags": {
                    "type": "object",
                    "required": ["raised", "passed", "unchecked"],
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


# --------------------------------------------------------------------------- schema checking
_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def _hand_validate(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema that SCHEMA uses, for machines without jsonschema."""
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, _TYPES[kind])
            and not (kind in ("integer", "number") and isinstance(value, bool))
            for kind in kinds
        )
        assert ok, f"{where}: {value!r} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{where}: {value} > {schema['maximum']}"
    if "exclusiveMinimum" in schema:
        assert value > schema["exclusiveMinimum"], f"{where}: {value} <= minimum"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                _hand_validate(item, sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for number, item in enumerate(value):
            _hand_validate(item, schema["items"], f"{where}[{number}]")


def validate(card: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:
        _hand_validate(card, SCHEMA)
    else:
        jsonschema.validate(card, SCHEMA)


def test_hand_validator_catches_what_the_schema_forbids() -> None:
    """The fallback must be able to fail too (it runs where jsonschema is missing)."""
    good = {"type": "object", "required": ["a"], "properties": {"a": PERCENT}}
    _hand_validate({"a": "12.50"}, good)
    for bad in ({}, {"a": "12.5"}, {"a": 12.5}):
        with pytest.raises(AssertionError):
            _hand_validate(bad, good)
    with pytest.raises(AssertionError):
        _hand_validate(True, {"type": "integer"})


# --------------------------------------------------------------------------- evaluations
@pytest.fixture(scope="module")
def mnist(real_data: Path) -> dict[str, Any]:
    train = datasets.load("mnist", "train", real_data)
    test = datasets.load("mnist", "test", real_data)
    torch.manual_seed(0)
    model = models.create("mlp")
    x, y = train.images[:2000].float() / 255, train.labels[:2000]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, len(y), (64,), generator=generator)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return {"model": model, "images": test.images[:POINTS], "labels": test.labels[:POINTS]}


@pytest.fixture(scope="module")
def plain(mnist: dict[str, Any]) -> Evaluation:
    """No surrogate: the strong protocol's transfer attack is skipped."""
    return evaluate(
        mnist["model"], mnist["images"], mnist["labels"],
        protocols=[PAPER, QUICK_STRONG, QUICK_AUTOATTACK], eps=EPS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def masked(mnist: dict[str, Any]) -> Evaluation:
    """The saturated MLP, with the plain one as the transfer attack's surrogate."""
    return evaluate(
        Scaled(mnist["model"]), mnist["images"], mnist["labels"],
        protocols=[PAPER, QUICK_STRONG, QUICK_AUTOATTACK], eps=EPS, surrogate=mnist["model"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def binary() -> Evaluation:
    """A fixed linear model on 16x16 grey images, class 1 when brighter than 0.5 on average:
    the margin of an image is its distance from 0.5, so budgets break some points and not
    others; a few labels are flipped (clean errors)."""
    generator = torch.Generator().manual_seed(3)
    brightness = torch.rand(80, generator=generator) * 0.8 + 0.1
    noise = torch.rand(80, 1, 16, 16, generator=generator) * 0.1 - 0.05
    images = ((brightness.view(-1, 1, 1, 1) + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    labels = (images.float().mean(dim=(1, 2, 3)) / 255 > 0.5).long()
    labels[:4] = 1 - labels[:4]
    model = models.create("linear", num_classes=2, input_shape=(1, 16, 16))
    with torch.no_grad():
        weight = torch.full((256,), 10.0 / 256)
        model.net.fc.weight.copy_(torch.stack([-weight, weight]))
        model.net.fc.bias.copy_(torch.tensor([5.0, -5.0]))
    return evaluate(model, images, labels, protocols=[QUICK_STRONG], eps=(0.05, 0.2))


@pytest.fixture(scope="module")
def written(
    plain: Evaluation, masked: Evaluation, binary: Evaluation, tmp_path_factory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audits")
    folders = {}
    for name, evaluation in (("plain", plain), ("masked", masked), ("binary", binary)):
        folders[name] = root / name / "report"  # nested: write_audit creates the folders
        write_audit(folders[name], evaluation, SUBJECT)
    return folders


# --------------------------------------------------------------------------- the verdict
def one_sentence(text: str) -> bool:
    """Ends with a full stop and has no other sentence end (decimal points aside)."""
    return text.endswith(".") and not re.search(r"[.!?](\s|$)", text[:-1])


def assert_names_the_flags(verdict: str, evaluation: Evaluation) -> None:
    assert one_sentence(verdict), verdict
    for flag in evaluation.flags:
        if flag.raised:
            assert f"{flag.name} raised" in verdict
        elif not flag.checked:
            assert f"{flag.name} unchecked" in verdict
        else:
            assert flag.name not in verdict, (flag.name, verdict)


def test_verdict_of_a_masked_model_names_its_raised_flags(masked: Evaluation) -> None:
    raised = {flag.name for flag in masked.raised}
    assert {"zero_gradients", "protocol_gap"} <= raised  # what a saturated softmax does
    verdict = audit_verdict(masked)
    assert_names_the_flags(verdict, masked)
    # The gap's decisive numbers: the paper protocol's worst case against the strong one's.
    gap = next(flag for flag in masked.raised if flag.name == "protocol_gap")
    case = max(gap.evidence, key=lambda e: e["accuracy"] - e["strong_accuracy"])
    assert verdict.startswith(f"The {case['protocol']} protocol overstates robustness: ")
    assert (
        f"{case['protocol']} {percent(case['accuracy'])}% vs strong "
        f"{percent(case['strong_accuracy'])}% at ε {eps_text(case['eps'])}"
    ) in verdict
    zero = next(flag for flag in masked.raised if flag.name == "zero_gradients")
    assert f"{zero.evidence[0]['zero_gradient_count']} point(s)" in verdict
    head = headline(masked)
    assert f"{head.protocol} robust accuracy {percent(head.robust_accuracy)}%" in verdict


def test_verdict_of_a_plain_model(plain: Evaluation) -> None:
    verdict = audit_verdict(plain)
    assert_names_the_flags(verdict, plain)
    # Without a surrogate the black-box check still has Square: every check is decided.
    assert not plain.raised and all(flag.checked for flag in plain.flags)
    assert verdict.startswith("No sign of gradient masking: ")
    assert verdict.endswith(", every check passed.")


def _with_flags(evaluation: Evaluation, flags: list[Flag]) -> Evaluation:
    return dataclasses.replace(evaluation, flags=flags)


def test_verdict_wording_rules(plain: Evaluation) -> None:
    passed = [dataclasses.replace(f, raised=False, checked=True) for f in plain.flags]
    verdict = audit_verdict(_with_flags(plain, passed))
    assert verdict.endswith(", every check passed.") and one_sentence(verdict)

    # An unchecked flag is named as such with what it lacked, and never counted as passed.
    lacking = Flag("protocol_gap", False, False, "needs the strong protocol and another one")
    some = _with_flags(plain, [*passed[:-1], lacking])
    verdict = audit_verdict(some)
    assert_names_the_flags(verdict, some)
    assert "every check passed" not in verdict
    assert "protocol_gap unchecked (needs the strong protocol and another one)" in verdict
    assert f"{len(passed) - 1} check(s) passed" in verdict

    # A flag this page does not know: its own message, without its sentence ends.
    novel = Flag("novel_check", True, True, "something odd. It repeats.", [{"x": 1}])
    odd = _with_flags(plain, [*passed, novel])
    verdict = audit_verdict(odd)
    assert_names_the_flags(verdict, odd)
    assert "novel_check raised (something odd; It repeats)" in verdict
    assert verdict.startswith("The evaluation shows signs of gradient masking: ")

    # Evidence of an unexpected shape falls back to the message too.
    broken = Flag("protocol_gap", True, True, "the gap is large", [{"nothing": 0}])
    verdict = audit_verdict(_with_flags(plain, [broken]))
    assert "protocol_gap raised (the gap is large)" in verdict and one_sentence(verdict)

    verdict = audit_verdict(_with_flags(plain, []))
    assert verdict.startswith("No gradient-masking check ran: ") and one_sentence(verdict)

    nothing = [dataclasses.replace(f, raised=False, checked=False) for f in plain.flags]
    verdict = audit_verdict(_with_flags(plain, nothing))
    assert verdict.startswith("No check could run: ")
    assert_names_the_flags(verdict, _with_flags(plain, nothing))


# --------------------------------------------------------------------------- the numbers
def _direct_breakdown(evaluation: Evaluation, protocol: str, eps: float) -> dict[str, Any]:
    """Who broke which point, point by point from the fooled tensors."""
    cascade = next(p.cascade for p in evaluation.protocols if p.name == protocol)
    chosen = [
        o for o in evaluation.outcomes if o.protocol == protocol and o.eps == eps and o.spec.bounded
    ]
    alone = {o.spec.label: 0 for o in chosen}
    several = unbroken = errors = black_box_only = 0
    for point in range(evaluation.points):
        if not evaluation.correct[point]:
            errors += 1
            continue
        if cascade:  # cumulative: an attack broke what was robust before it and is not now
            before = [False] + [bool(o.fooled[point]) for o in chosen[:-1]]
            breakers = [
                o for o, was in zip(chosen, before, strict=True) if o.fooled[point] and not was
            ]
        else:
            breakers = [o for o in chosen if o.fooled[point]]
        if not breakers:
            unbroken += 1
        elif len(breakers) == 1:
            alone[breakers[0].spec.label] += 1
        else:
            several += 1
        kinds = {o.spec.kind for o in breakers}
        if kinds and kinds <= {"black-box", "transfer"}:
            black_box_only += 1
    return {"alone": alone, "several": several, "unbroken": unbroken, "clean_errors": errors,
            "black_box_only": black_box_only}  # fmt: skip


@pytest.mark.parametrize("name", ["plain", "masked", "binary"])
def test_alone_counts_match_the_fooled_tensors(name: str, request) -> None:
    evaluation: Evaluation = request.getfixturevalue(name)
    informative = 0
    for protocol in evaluation.protocol_names:
        for eps in evaluation.budgets(protocol):
            found = broken_points(evaluation, protocol, eps)
            direct = _direct_breakdown(evaluation, protocol, eps)
            assert found.alone == direct["alone"]
            for key in ("several", "unbroken", "clean_errors", "black_box_only"):
                assert getattr(found, key) == direct[key], (protocol, eps, key)
            total = sum(found.alone.values()) + found.several + found.unbroken
            assert total + found.clean_errors == evaluation.points
            # The unbroken points are the worst case's robust ones.
            assert found.unbroken == int(evaluation.worst_case_robust(protocol, eps).sum())
            if found.cascade:
                assert found.several == 0
            informative += sum(found.alone.values()) + found.several > 0
    assert informative  # some attack broke something: the comparison was not vacuous


def _markdown_rows(markdown: str, name: str) -> list[list[str]]:
    """The body rows of the Markdown table titled ``name``, as lists of cells."""
    block = markdown.split(f"**{name}.**", 1)[1].split("\n\n", 2)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_page_shows_the_breakdown_and_the_robust_accuracies(
    masked: Evaluation, written: dict[str, Path]
) -> None:
    markdown = (written["masked"] / "audit.md").read_text()
    for protocol in masked.protocol_names:
        rows = {
            cells[0]: cells[1:] for cells in _markdown_rows(markdown, f"Points broken, {protocol}")
        }
        cascade = next(p.cascade for p in masked.protocols if p.name == protocol)
        prefix = "newly broken by" if cascade else "broken only by"
        for column, eps in enumerate(masked.budgets(protocol)):
            found = broken_points(masked, protocol, eps)
            for label, count in found.alone.items():
                assert rows[f"{prefix} {label}"][column] == str(count)
            assert rows["all points"][column] == str(POINTS)
            assert rows["of these, only black-box/transfer broke"][column] == str(
                found.black_box_only
            )
    # Rows: protocol (blank when repeated), attack, then one value per eps.
    rows = _markdown_rows(markdown, "Robust accuracy (L∞)")
    worst = [cells[1:] for cells in rows if cells[1] == "worst case"]
    assert len(worst) == len(masked.protocol_names)
    for protocol, cells in zip(masked.protocol_names, worst, strict=True):
        expected = [f"{masked.worst_case(protocol, eps):.3f}" for eps in masked.eps]
        assert cells[1:] == expected


# --------------------------------------------------------------------------- the model card
@pytest.mark.parametrize("name", ["plain", "masked", "binary"])
def test_model_card_validates_and_matches_the_page(
    name: str, request, written: dict[str, Path]
) -> None:
    evaluation: Evaluation = request.getfixturevalue(name)
    card = json.loads((written[name] / "model_card.json").read_text())
    validate(card)
    assert card == json.loads(json.dumps(model_card(evaluation, SUBJECT)))
    # The headline rule: autoattack if evaluated, else strong, else the first; largest eps.
    protocol = "autoattack" if "autoattack" in evaluation.protocol_names else "strong"
    eps = max(evaluation.budgets(protocol))
    assert (card["advls"]["protocol"], card["advls"]["eps"]) == (protocol, eps)
    assert card["advls"]["robust_accuracy"] == evaluation.worst_case(protocol, eps)
    assert card["autoattack_acc"] == f"{100 * evaluation.worst_case(protocol, eps):.2f}"
    assert card["clean_acc"] == f"{100 * evaluation.clean_accuracy:.2f}"
    assert card["eps"] == eps_text(eps)
    assert card["unreliable"] is bool(evaluation.raised)
    assert set(card["advls"]["flags"]["raised"]) == {f.name for f in evaluation.raised}
    # The page prints the same number, rounded the same way.
    for page in ("audit.md", "audit.html"):
        text = (written[name] / page).read_text()
        shown = re.search(r"Robust accuracy (\d+\.\d\d)% \((\d+) of (\d+) points\)", text)
        assert shown is not None
        assert shown.group(1) == card["autoattack_acc"]
        assert int(shown.group(2)) == card["advls"]["robust_points"]
        assert int(shown.group(3)) == evaluation.points
        assert f"robust accuracy {card['autoattack_acc']}%" in text  # the verdict's
    for worst in card["advls"]["worst_cases"][protocol]["worst_case"]:
        assert worst["robust_accuracy"] == evaluation.worst_case(protocol, worst["eps"])


def test_headline_falls_back_to_strong_then_to_the_first(plain: Evaluation) -> None:
    by_name = {p.name: p for p in plain.protocols}
    without = dataclasses.replace(plain, protocols=(by_name["paper"], by_name["strong"]))
    assert headline(without).protocol == "strong"
    only = dataclasses.replace(plain, protocols=(by_name["paper"],))
    head = headline(only)
    assert (head.protocol, head.eps) == ("paper", max(EPS))
    assert head.robust_accuracy == plain.worst_case("paper", max(EPS))
    card = model_card(only, SUBJECT)
    validate(card)
    assert card["advls"]["protocol"] == "paper" and "not AutoAttack" in card["footnote"]


def test_eps_is_written_as_people_write_it() -> None:
    assert [eps_text(e) for e in (0.3, 0.031, 8 / 255, 2 / 255, 1.0, 0.5)] == [
        "0.3", "0.031", "8/255", "2/255", "1", "0.5",
    ]  # fmt: skip


# --------------------------------------------------------------------------- the files
SECTIONS = (
    "Clean accuracy",
    "Robust accuracy",
    "Accuracy against the budget",
    "Which attacks broke which points",
    "Gradient-masking checks",
    "Time and model calls",
    "Skipped and adapted attacks",
    "Reproduce",
)


def test_written_files_and_their_order(
    plain: Evaluation, binary: Evaluation, written: dict[str, Path]
) -> None:
    folder = written["plain"]
    markdown = (folder / "audit.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    assert headings == ["Contents", *SECTIONS]
    # The verdict first, bold, before anything else.
    assert markdown.split("\n\n")[1] == f"**{audit_verdict(plain)}**"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) == 2
    for image in images:
        assert image.startswith("figures/") and (folder / image).stat().st_size > 10_000
    # The command in a fenced block, exactly (its quotes too).
    assert f"```sh\n{SUBJECT.command}\n```" in markdown
    payload = json.loads((folder / "evaluation.json").read_text())
    assert payload["subject"]["weights_sha256"] == SUBJECT.weights_sha256
    assert payload["clean_accuracy"] == plain.clean_accuracy
    assert "strong/transfer` skipped: no surrogate" in markdown
    assert not list(folder.glob(".*")) and not list((folder / "figures").glob(".*"))

    two = (written["binary"] / "audit.md").read_text()
    assert binary.num_classes == 2 and binary.adapted
    for adapted in binary.adapted:
        assert f"`{adapted['protocol']}/{adapted['attack']}` adapted to 2 classes: " in two
        assert adapted["change"] in two
    assert any("DLR needs 3 classes" in a["change"] for a in binary.adapted)


def test_write_audit_refuses_a_file_and_writes_nothing(plain: Evaluation, tmp_path) -> None:
    target = tmp_path / "audit"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="not a directory"):
        write_audit(target, plain, SUBJECT)
    with pytest.raises(ValueError, match="a file is in its way"):
        write_audit(target / "below", plain, SUBJECT)
    assert target.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["audit"]


def test_write_audit_returns_what_it_wrote_and_rewrites_in_place(
    binary: Evaluation, tmp_path
) -> None:
    paths = write_audit(tmp_path, binary, SUBJECT)
    names = {str(p.relative_to(tmp_path)) for p in paths}
    assert {"audit.html", "audit.md", "model_card.json", "evaluation.json"} <= names
    assert "figures/accuracy-vs-eps.png" in names and "figures/broken-points.png" in names
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == names
    again = write_audit(tmp_path, binary, SUBJECT)
    assert again == paths
    assert (tmp_path / "model_card.json").read_text() == json.dumps(
        model_card(binary, SUBJECT), indent=2
    ) + "\n"


# --------------------------------------------------------------------------- the browser
def test_audit_page_in_headless_chromium(
    masked: Evaluation, written: dict[str, Path], tmp_path
) -> None:
    page = (written["masked"] / "audit.html").read_text()
    assert "<script" not in page.lower()
    # Nothing to fetch: images are data URIs, links are anchors or files beside the page.
    for reference in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert reference.startswith(("data:image/png;base64,", "#", "figures/")), reference
    assert not re.search(r"url\(|@import|https?://", page)

    alone = tmp_path / "alone"  # beside no figures: the page must carry its own
    alone.mkdir()
    (alone / "audit.html").write_text(page)
    probe = probe_page(alone / "audit.html", tmp_path / "browser")

    assert len(probe["images"]) == 2
    for image in probe["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    tables = {table["name"]: table["rows"] for table in probe["tables"]}
    expected = {
        "Audited model": 11,
        "Robust accuracy (L∞)": sum(
            len({o.spec.label for o in masked.outcomes if o.protocol == p and o.spec.bounded}) + 1
            for p in masked.protocol_names
        ),
        "Minimal attacks": sum(not o.spec.bounded for o in masked.outcomes),
        "Points broken, paper": 2 + 5,
        "Points broken, strong": 8 + 5,
        "Points broken, autoattack": 4 + 4,  # a cascade has no "several" row
        "Gradient-masking checks": len(masked.flags),
        "Time and model calls": len(masked.outcomes),
    }
    assert tables == expected

    verdict = probe["opening"]
    assert verdict["text"] == audit_verdict(masked)
    assert 0 <= verdict["top"] < verdict["viewport"] and verdict["height"] > 0
    for flag in masked.raised:
        assert f"{flag.name} raised" in verdict["text"]
    assert probe["code"] == [SUBJECT.command]
