"""Issue 3, corpus-wide: every message file under tests/ goes through the relay's own planning and pipeline;
what is untouched stays byte-identical, what is changed decodes strictly with one footer, and every
decorated copy carries a DKIM signature that Perl's Mail::DKIM accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from messages.checks import check_decorated

from conftest import KeyPairs
from mailrelay.app import build
from mailrelay.config import FooterTemplate, Settings
from mailrelay.message import Footer, MimeError, NotDecoratable, parse
from mailrelay.relay import Relay, Transaction
from mailrelay.stages import Copy
from support.dkim import verify_dkim

TESTS = Path(__file__).resolve().parent
CORPUS = sorted(p for p in TESTS.rglob("*.eml") if "tools" not in p.parts and not p.name.startswith("_"))
# The checker's own footer, with the link as a template slot: the checks know where to look.
TEMPLATE = FooterTemplate(
    text="――――――――\nご友人に求人をご紹介ください / Refer a friend: {link}\n",
    html='<p class="mr-footer">ご友人に求人をご紹介ください / <a href="{link}">Refer a friend</a></p>',
)
ADDED = (b"dkim-signature:", b"x-mailrelay-decorated:")


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 150, len(CORPUS)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, keys: KeyPairs) -> Relay:
    from conftest import CONFIG_TEMPLATE, REPO

    base = tmp_path_factory.mktemp("corpus")
    text = CONFIG_TEMPLATE.format(
        state_dir=base / "var", client_networks='["127.0.0.0/8"]', max_recipients=10, next_hop_port=25,
        timeout=5, transaction_timeout=10, directory="outbox", database_url="", time_budget=5,
        rules=REPO / "rules" / "*.toml", store_recipient="hash", starttls="off", rsa_key=keys.rsa_key,
        ed25519="",
    )  # fmt: skip
    from mailrelay.config import load_settings

    (base / "config.toml").write_text(text, encoding="utf-8")
    settings: Settings = load_settings(base / "config.toml")
    tenant = dataclasses.replace(settings.tenants[0], footers={"ja": TEMPLATE, "en": TEMPLATE})
    settings = dataclasses.replace(settings, tenants=(tenant,))
    return build(settings).relay


def strip_added_headers(out: bytes) -> bytes:
    """The message without the header fields the relay prepends (our DKIM-Signature and marker)."""
    position = 0
    while out[position:].lower().startswith(ADDED):
        end = out.index(b"\r\n", position)
        while out[end + 2 : end + 3] in (b" ", b"\t"):
            end = out.index(b"\r\n", end + 2)
        position = end + 2
    return out[position:]


def check_copy(raw: bytes, out: bytes, link: str, keys: KeyPairs) -> None:
    check_decorated(raw, strip_added_headers(out), footer=Footer(TEMPLATE.text, TEMPLATE.html), link=link)
    result = verify_dkim(out, keys.dns(), require_domain="acme.co.jp")
    assert result.passed, result


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(TESTS)) for p in CORPUS])
def test_relay_decision_on_every_corpus_message(path: Path, relay: Relay, keys: KeyPairs) -> None:
    raw = path.read_bytes()
    if b"\n" in raw.replace(b"\r\n", b""):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as the relay normalises it first
    txn = Transaction("CORPUS", "recruit@acme.co.jp", [], ["applicant@gmail.example", "hr@acme.co.jp"], raw)
    plan = relay.plan(txn, lambda _reason: None)
    internal = next(g for g in plan.groups if "hr@acme.co.jp" in g.recipients)
    assert internal.content == raw, "the company's own copy is always the original"
    applicant = next(g for g in plan.groups if "applicant@gmail.example" in g.recipients)
    if plan.decision != "decorated":
        assert applicant.content == raw, f"{plan.decision}: forwarded as the exact bytes received"
        return
    assert applicant.copy is not None
    check_copy(raw, applicant.content, applicant.copy.link, keys)


def test_a_related_root_named_by_start_is_detected_and_decorated(relay: Relay, keys: KeyPairs) -> None:
    """Detection reads the root that `start` names (RFC 2387 §3.2) and decoration decorates that part."""
    raw = (TESTS / "messages" / "related_start_root_not_first.eml").read_bytes()
    txn = Transaction("RELATED", "recruit@acme.co.jp", [], ["applicant@gmail.example"], raw)
    plan = relay.plan(txn, lambda _reason: None)
    assert plan.decision == "decorated"
    (applicant,) = plan.groups
    assert applicant.copy is not None
    check_copy(raw, applicant.content, applicant.copy.link, keys)


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(TESTS)) for p in CORPUS])
def test_forced_decoration_keeps_every_structure_intact(path: Path, relay: Relay, keys: KeyPairs) -> None:
    """Decoration on every message, rejection or not: the MIME and signing properties hold for all."""
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    try:
        parsed = parse(raw, relay.limits)
    except MimeError:
        return  # over a cap: the relay forwards it unmodified (tests/test_message_limits.py)
    copy = Copy(
        "applicant@gmail.example", relay.settings.tenants[0], "forced", "ja", "acme.co.jp", parsed, raw
    )
    try:
        for _name, stage in relay.pipeline:
            stage(copy)
    except NotDecoratable as exc:
        assert exc.reason in {"signed", "encrypted", "no_body_part", "charset", "encoding", "malformed"}
        if parsed.protected:
            assert exc.reason == parsed.protected
        return
    assert not parsed.protected
    check_copy(raw, copy.raw, copy.link, keys)
