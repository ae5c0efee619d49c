"""mailrelay.signing.dkim_signature returns, byte for byte, the DKIM-Signature that dkimpy's own `dkim.sign`
returns for the same message, key, headers and time (issue 8), and Mail::DKIM verifies it."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any
from unittest import mock

import dkim
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailrelay import signing
from support.dkim import make_ed25519_key, make_rsa_key, verify_dkim

NOW = 1_795_000_000

HEADER_LINES = [
    b"From: =?UTF-8?B?5Lq65LqL?= <recruit@acme.example>\r\n",
    b"from:recruit@acme.example\r\n",
    b"To: applicant@gmail.example\r\n",
    b"TO:  a@b.example,\r\n\t c@d.example \r\n",
    b"Cc : x@y.example\r\n",  # space before the colon: neither signer signs it (the relay fails open)
    b"Subject: \xe9\x81\xb8\xe8\x80\x83\xe7\xb5\x90\xe6\x9e\x9c  of  \t the day \r\n",
    b"Subject: second\r\n",
    b"Date: Mon, 30 Nov 2026 06:00:00 +0900\r\n",
    b"Message-ID: <x@acme.example>\r\n",
    b"MIME-Version: 1.0\r\n",
    b"Content-Type: text/plain;\r\n charset=utf-8\r\n",
    b"Received: from a by b; Mon, 30 Nov 2026 06:00:00 +0900\r\n",
    b"X-Mailrelay-Decorated: 1\r\n",
    b"X-Other: \r\n",
    b"List-Unsubscribe: <https://acme.example/u/1>,\r\n <mailto:u@acme.example>\r\n",
]
BODY_PIECES = [b"\r\n", b" ", b"\t", b"  \t ", b"text", b"\xe3\x81\x82", b" \r\n", b"\r\n\r\n", b"\n", b"."]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, str]]:
    """algorithm → (the key bytes a LoadedKey holds, its TXT record)."""
    directory = tmp_path_factory.mktemp("keys")
    rsa_path, rsa_txt = make_rsa_key(directory)
    ed_path, ed_txt = make_ed25519_key(directory)
    return {
        "rsa-sha256": (rsa_path.read_bytes(), rsa_txt),
        "ed25519-sha256": (ed_path.read_bytes().strip(), ed_txt),
    }


def ours(
    message: bytes, algorithm: str, private: bytes, selector: bytes = b"sel", domain: bytes = b"acme.example"
) -> bytes:
    return signing.dkim_signature(
        message,
        selector=selector,
        domain=domain,
        algorithm=algorithm.encode(),
        key=signing.private_key(algorithm, private),
        include_headers=signing.include_headers(message),
        timestamp=NOW,
    )


def dkimpys(
    message: bytes, algorithm: str, private: bytes, selector: bytes = b"sel", domain: bytes = b"acme.example"
) -> bytes:
    # The clock is the one thing faked: dkimpy reads time.time() for t=.
    with mock.patch.object(dkim, "time", types.SimpleNamespace(time=lambda: NOW)):
        signature: bytes = dkim.sign(
            message,
            selector,
            domain,
            private,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=signing.include_headers(message),
            length=False,
            signature_algorithm=algorithm.encode(),
            linesep=b"\r\n",
        )
    return signature


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(st.sampled_from(HEADER_LINES), min_size=1, max_size=12),
    body=st.lists(st.sampled_from(BODY_PIECES), max_size=40),
    # Their lengths move the folds of the field; a d= or s= longer than a folded line is cut mid-token.
    selector=st.text("abcxyz0123456789-", min_size=1, max_size=80).map(str.encode),
    domain=st.text("abcxyz", min_size=1, max_size=90).map(lambda label: f"{label}.example".encode()),
)
def test_signature_is_dkimpys_byte_for_byte(
    keys: dict[str, tuple[bytes, str]],
    algorithm: str,
    headers: list[bytes],
    body: list[bytes],
    selector: bytes,
    domain: bytes,
) -> None:
    message = b"".join(headers) + b"\r\n" + b"".join(body)
    private, _ = keys[algorithm]
    expected = outcome(dkimpys, message, algorithm, private, selector, domain)
    assert outcome(ours, message, algorithm, private, selector, domain) == expected


def outcome(sign: Callable[..., bytes], *args: Any) -> bytes | tuple[type, str]:
    """The signature, or the error: a header line dkimpy cannot parse ("TO :") is refused by both."""
    try:
        return sign(*args)
    except Exception as exc:
        return type(exc), str(exc)


def test_signature_over_a_chunked_body_is_dkimpys(keys: dict[str, tuple[bytes, str]]) -> None:
    """Over BODY_CHUNK_BYTES the body is canonicalised a chunk at a time (issue 5); dkimpy does it whole."""
    body = b"line \t with  space \r\n" * 20_000 + b"\r\n\r\n"
    assert len(body) > signing.BODY_CHUNK_BYTES
    message = b"From: recruit@acme.example\r\nSubject: big\r\n\r\n" + body
    private, _ = keys["rsa-sha256"]
    assert ours(message, "rsa-sha256", private) == dkimpys(message, "rsa-sha256", private)


def test_b_tag_emptied_by_dkimpys_pattern_when_the_placeholder_does_not_end_the_field(
    keys: dict[str, tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dkim_signature cuts the b= placeholder off the end of the folded field; should a fold ever leave it
    elsewhere, dkimpy's own RE_BTAG substitution empties it instead, with the same result."""
    message = b"".join(HEADER_LINES[:3]) + b"\r\n" + b"body \r\n"
    private, _ = keys["rsa-sha256"]
    expected = dkimpys(message, "rsa-sha256", private)
    monkeypatch.setattr(signing, "_B_TAG_PLACEHOLDER", b"b=not what the field ends with")
    with mock.patch.object(signing.dkim, "RE_BTAG", wraps=signing.dkim.RE_BTAG) as pattern:
        assert ours(message, "rsa-sha256", private) == expected
    pattern.sub.assert_called_once()


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_signature_verifies_with_mail_dkim(keys: dict[str, tuple[bytes, str]], algorithm: str) -> None:
    headers = b"".join(line for line in HEADER_LINES if b" :" not in line)
    message = headers + b"\r\n\xe3\x81\x82  text \t\r\nmore\r\n\r\n\r\n"
    private, txt = keys[algorithm]
    signed = ours(message, algorithm, private) + message
    result = verify_dkim(signed, {"sel._domainkey.acme.example": txt}, require_domain="acme.example")
    assert result.passed, result
    assert [(s["algorithm"], s["result"]) for s in result.signatures] == [(algorithm, "pass")]


def test_list_unsubscribe_sender_and_resent_fields_are_signed_and_over_signed_when_present(
    keys: dict[str, tuple[bytes, str]],
) -> None:
    """A decorated copy has lost the company's own signature (strip-dkim), so ours is the only one: RFC 8058
    §4 offers one-click unsubscribe only when List-Unsubscribe and List-Unsubscribe-Post are in its h=, and
    a field outside it can be rewritten, or added a second time, under our signature."""
    message = (
        b"From: recruit@acme.example\r\nTo: a@b.example\r\nSubject: s\r\nSender: ats@acme.example\r\n"
        b"List-Unsubscribe: <https://acme.example/u/1>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"Resent-From: hr@acme.example\r\n\r\nbody\r\n"
    )
    private, txt = keys["rsa-sha256"]
    dns = {"sel._domainkey.acme.example": txt}
    signed = ours(message, "rsa-sha256", private) + message
    assert verify_dkim(signed, dns, require_domain="acme.example").passed
    for tampered in (
        signed.replace(b"acme.example/u/1", b"evil.example/u/1"),
        signed.replace(b"One-Click", b"Two-Click"),
        signed.replace(b"Sender: ats@", b"Sender: evil@"),
        signed.replace(b"Resent-From: hr@", b"Resent-From: evil@"),
        signed.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/u>\r\n\r\n", 1),
    ):
        assert not verify_dkim(tampered, dns, require_domain="acme.example").passed, tampered
    # Mail without them is signed as before: h= does not grow.
    plain = b"From: recruit@acme.example\r\nSubject: s\r\n\r\nbody\r\n"
    assert b"list-" not in b"".join(signing.include_headers(plain))
    assert b"sender" not in signing.include_headers(plain)


@pytest.mark.parametrize("end", [b"\x0b", b"\x0c", b" \x0b \t", b"\x0c\r\n\t"])
def test_a_field_ending_in_a_vertical_tab_or_form_feed_verifies_with_mail_dkim(
    keys: dict[str, tuple[bytes, str]], end: bytes
) -> None:
    """Relaxed canonicalisation deletes only WSP, space and tab, at the end of a value (RFC 6376 §3.4.2);
    dkimpy's bytes.strip() also took a vertical tab or a form feed there, Mail::DKIM keeps them, and the
    signature failed ("message has been altered"). Word's own text has \\x0b for a manual line break: a
    subject a script takes from it can end in one."""
    message = b"From: recruit@acme.example\r\nSubject: s" + end + b"\r\nTo: a@b.example\r\n\r\nbody\r\n"
    private, txt = keys["rsa-sha256"]
    result = verify_dkim(ours(message, "rsa-sha256", private) + message, {"sel._domainkey.acme.example": txt})
    assert result.passed, result


FIELD_VALUE_PIECES = [b" ", b"\t", b"\r\n", b"\n", b"\r", b"  \t ", b"a", b"\xe3\x81\x82"]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"From", b"SUBJECT ", b"x-Y\t", b"DKIM-Signature"]),
            st.lists(st.sampled_from(FIELD_VALUE_PIECES), max_size=12).map(b"".join),
        ),
        max_size=6,
    )
)
def test_relaxed_header_canonicalisation_is_dkimpys(fields: list[tuple[bytes, bytes]]) -> None:
    assert signing.relaxed_headers(fields) == dkim.canonicalization.Relaxed.canonicalize_headers(fields)


@settings(max_examples=300)
@example([(b"From", b" a  a\r\n"), (b"Subject", b" a\ta\r\n"), (b"To", b" a \r\n"), (b"Cc", b"\r\n")])
@example([(b"Subject", b" a\r\n b\r\n"), (b"Subject", b" a\r\r\n"), (b"Subject", b" a\rb\n")])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"From", b"Subject"]),
            st.tuples(
                st.lists(st.sampled_from([p for p in FIELD_VALUE_PIECES if b"\n" not in p]), max_size=8),
                st.sampled_from([b"\r\n", b"\n", b""]),
            ).map(lambda pieces_end: b"".join(pieces_end[0]) + pieces_end[1]),
        ),
        max_size=4,
    )
)
def test_relaxed_canonicalisation_of_one_line_values_as_parsed_is_dkimpys(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """Values as rfc822_parse gives them, one line ending with its CRLF: the path that skips the
    substitutions (issue 8), which values with a line break in the middle never take."""
    assert signing.relaxed_headers(fields) == dkim.canonicalization.Relaxed.canonicalize_headers(fields)


def test_one_line_values_as_parsed_skip_the_substitutions() -> None:
    """Issue 8: the fast path must fire for the values signing meets (each ends with its CRLF); as first
    written it never did, and no other test could tell, the bytes being the same either way."""
    headers, _body = signing.split_message(
        b"From: a@acme.example\r\nSubject: one line\r\nTo: b\r\n\r\nbody\r\n"
    )
    with mock.patch.object(signing, "_LINE_BREAK") as line_break:
        assert signing.relaxed_headers(headers) == [
            (b"from", b"a@acme.example\r\n"),
            (b"subject", b"one line\r\n"),
            (b"to", b"b\r\n"),
        ]
    line_break.sub.assert_not_called()
