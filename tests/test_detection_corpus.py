"""The shipped rules against the labelled corpus: precision must be 100 %, recall at least 97 %."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailrelay.detection import DetectionInput, RuleSet, Verdict, load_rules
from mailrelay.message import parse

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus" / "detection"
RULE_FILES = sorted((REPO / "rules").glob("*.toml"))
REJECTIONS = sorted((CORPUS / "rejection").glob("*.eml"))
OTHERS = sorted((CORPUS / "other").glob("*.eml"))


def detection_input(raw: bytes) -> DetectionInput:
    """What the relay hands detection: the relay's own MIME engine extracts subject, bodies and headers."""
    parsed = parse(raw)
    text = parsed.text()
    return DetectionInput(
        subject=text.subject,
        plain=text.plain,
        html=text.html,
        header=parsed.header_values,
        sender=next(iter(parsed.header_values("From")), ""),
        tenant="example",
    )


def stdlib_input(raw: bytes) -> DetectionInput:
    """An independent extraction with the stdlib, to show the verdicts do not hinge on one MIME parser."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)

    def body(kind: str) -> str:
        part = msg.get_body(preferencelist=(kind,))
        if part is None:
            return ""
        content = part.get_content()
        return content if isinstance(content, str) else ""

    def header(name: str) -> list[str]:
        return [str(v) for v in msg.get_all(name, [])]

    return DetectionInput(
        subject=str(msg.get("Subject", "")),
        plain=body("plain"),
        html=body("html"),
        header=header,
        sender=str(msg.get("From", "")),
        tenant="example",
    )


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(RULE_FILES, {"example": {"ja", "en"}})


def verdicts(rules: RuleSet, files: list[Path]) -> dict[str, Verdict]:
    return {f.name: rules.evaluate(detection_input(f.read_bytes())) for f in files}


def test_explaining_a_verdict_does_not_change_it(rules: RuleSet) -> None:
    """The relay evaluates without `explain` (issue 8); `mailrelay check --explain` with it: same verdicts."""
    for f in REJECTIONS + OTHERS:
        plain = rules.evaluate(detection_input(f.read_bytes()))
        explained = rules.evaluate(detection_input(f.read_bytes()), explain=True)
        assert plain == replace(explained, details=()), f.name
        assert explained.details and not plain.details, f.name


def test_corpus_is_large_and_varied() -> None:
    assert len(REJECTIONS) >= 60
    assert len(OTHERS) >= 60
    names = [f.name for f in REJECTIONS + OTHERS]
    for layout in (
        "iso2022",
        "sjis_8bit",
        "sjis_b64",
        "utf8_qp",
        "utf8_b64",
        "html_only",
        "alternative",
        "mixed",
    ):
        assert any(layout in n for n in names), layout
    for f in REJECTIONS + OTHERS:
        assert b"\r\n" in f.read_bytes() and b"\n" not in f.read_bytes().replace(b"\r\n", b""), f.name


def test_shipped_rules_precision_and_recall(rules: RuleSet, capsys: pytest.CaptureFixture[str]) -> None:
    positives = verdicts(rules, REJECTIONS)
    negatives = verdicts(rules, OTHERS)
    missed = sorted(name for name, v in positives.items() if not v.rejection)
    false = sorted(f"{name} ({v.rule}: {', '.join(v.fired)})" for name, v in negatives.items() if v.rejection)
    caught = len(positives) - len(missed)
    precision = caught / (caught + len(false)) if caught + len(false) else 1.0
    recall = caught / len(positives)
    summary = (
        f"detection corpus: precision {precision:.1%} ({len(false)} false positives of {len(negatives)}), "
        f"recall {recall:.1%} ({caught}/{len(positives)}); "
        f"missed: {missed or 'none'}; false: {false or 'none'}"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert not false, summary
    assert recall >= 0.97, summary


@pytest.mark.parametrize("path", REJECTIONS + OTHERS, ids=lambda p: p.name)
def test_both_extractions_agree(rules: RuleSet, path: Path) -> None:
    raw = path.read_bytes()
    ours, stdlib = rules.evaluate(detection_input(raw)), rules.evaluate(stdlib_input(raw))
    assert (ours.rejection, ours.rule, ours.fired) == (stdlib.rejection, stdlib.rule, stdlib.fired)


@pytest.mark.parametrize(
    "stem", ["ja_procurement_job", "ja_order_clerk_job", "en_vendor_manager_job", "en_mortgage_advisor_job"]
)
def test_a_rejection_for_a_job_named_by_a_trap_word_is_detected(rules: RuleSet, stem: str) -> None:
    """A veto names the situation it guards against, not a line of work: 調達, 発注, 見積, 納品, "vendor" or
    "mortgage" alone vetoed every rejection for the 調達・購買 or 受発注 job, the Vendor Manager or the
    Mortgage Advisor role, in its subject or body."""
    (path,) = [p for p in REJECTIONS if p.name.startswith(f"{stem}_")]
    verdict = rules.evaluate(detection_input(path.read_bytes()))
    assert verdict.rejection, verdict


@pytest.mark.parametrize("stem", ["ja_fugoukaku", "ja_futsuuka"])
def test_a_rejection_saying_fugoukaku_or_futsuuka_is_detected(rules: RuleSet, stem: str) -> None:
    """不合格 and 不通過 hold the pass notices' 合格となりました and 通過となりました: as vetoes, those killed
    every rejection that says 不合格となりました or 不通過となりました, whatever else it said."""
    (path,) = [p for p in REJECTIONS if p.name.startswith(f"{stem}_")]
    verdict = rules.evaluate(detection_input(path.read_bytes()))
    assert verdict.rejection, verdict
