"""Property tests: random MIME trees decorate correctly; random and mutated bytes never crash the parser."""

from __future__ import annotations

import base64
import itertools
import quopri
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages.checks import FOOTER, check_decorated, shape

from mailrelay.message import MimeError, NotDecoratable, WireReady, parse
from mailrelay.transport import wire_ready

MESSAGES = Path(__file__).resolve().parent / "messages"

SENTENCES = {
    "utf-8": [
        "今後のご活躍をお祈り申し上げます。",
        "we have decided to move forward with other candidates",
        "Grüße ①",
    ],
    "iso-2022-jp": ["誠に残念ながら、今回は採用を見送らせていただくことになりました。", "Dear applicant,"],
    "shift_jis": ["表計算ソフト ｶﾀｶﾅ 選考結果のご連絡", "Thank you for applying."],
    "iso-8859-1": ["Merci pour votre candidature, José.", "Unfortunately we will not proceed."],
}
CHARSETS = list(SENTENCES)
CTES = ["7bit", "8bit", "quoted-printable", "base64"]
_counter = itertools.count()


def encode_body(data: bytes, cte: str) -> bytes:
    if cte == "base64":
        text = base64.b64encode(data)
        return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"
    if cte == "quoted-printable":
        return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    return data


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["plain", "plain", "html", "html", "pdf", "text_attachment", "calendar"]))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    lines = draw(st.lists(st.sampled_from(SENTENCES[charset]), min_size=0, max_size=4))
    ending = draw(st.sampled_from(["\r\n", ""]))
    text = "\r\n".join(lines) + (ending if lines else "")
    if kind == "html":
        text = f"<html><body>\r\n<p>{text}</p>\r\n</body></html>\r\n"
    data = text.encode("iso2022_jp" if charset == "iso-2022-jp" else charset)
    if cte == "7bit" and not data.isascii():
        cte = "8bit"
    extra = ""
    if kind == "pdf":
        ctype, data, cte = "application/pdf", bytes(range(256)) * 3, "base64"
        extra = 'Content-Disposition: attachment; filename="cv.pdf"\r\n'
    elif kind == "text_attachment":
        ctype = f"text/plain; charset={charset}"
        extra = 'Content-Disposition: attachment; filename="notes.txt"\r\n'
    elif kind == "calendar":
        ctype = "text/calendar; method=REQUEST; charset=utf-8"
        data, cte = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n", "7bit"
    else:
        ctype = f"text/{kind}; charset={charset}"
    head = f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n{extra}\r\n".encode()
    return head + encode_body(data, cte)


def multipart(subtype: str, children: list[bytes]) -> bytes:
    boundary = f"=_b{next(_counter)}_"
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    for child in children:
        out += f"--{boundary}\r\n".encode() + child + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


trees = st.recursive(
    leaf(),
    lambda kids: st.builds(
        multipart,
        st.sampled_from(["mixed", "alternative", "related"]),
        st.lists(kids, min_size=1, max_size=3),
    ),
    max_leaves=8,
)

TOP = (
    b"From: recruit@acme.co.jp\r\nTo: a@example.com\r\n"
    b"Subject: =?UTF-8?B?6YG46ICD57WQ5p6c?=\r\nMIME-Version: 1.0\r\n"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_random_trees_decorate_and_keep_everything_else(tree: bytes) -> None:
    raw = TOP + tree
    m = parse(raw)
    m.text()
    plain, html = m.targets()
    if plain < 0 and html < 0:
        try:
            m.decorate(FOOTER)
        except NotDecoratable as exc:
            assert exc.reason == "no_body_part"
        return
    out = m.decorate(FOOTER)
    after = check_decorated(raw, out)
    assert shape(after) == shape(m)
    # Received as the wire needs it (smtp/data.py), the copy is the same bytes, and says whether it still
    # is without the transport scanning it again (message.splice).
    received = wire_ready(raw)
    if type(received) is WireReady:
        copy = parse(received).decorate(FOOTER)
        assert copy == out
        assert (type(copy) is WireReady) == (type(wire_ready(out)) is WireReady)


FIXTURES = sorted(p.read_bytes() for p in MESSAGES.glob("*.eml"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(FIXTURES))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "insert", "flip", "truncate"]))
        at = draw(st.integers(0, len(raw)))
        if op == "cut":
            raw = raw[:at] + raw[at + draw(st.integers(1, 200)) :]
        elif op == "insert":
            junk = draw(
                st.sampled_from(
                    [
                        b"\r\n--",
                        b"=\r\n",
                        b"\x1b$B",
                        b"</body>",
                        b"\r\n\r\n",
                        b"\xff\xfe",
                        b"=?x?B?@@?=",
                        b"--b-1--",
                    ]
                )
            )
            raw = raw[:at] + junk + raw[at:]
        elif op == "flip" and raw:
            at = min(at, len(raw) - 1)
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
        else:
            raw = raw[:at]
    return raw


def _exercise(raw: bytes) -> None:
    try:
        m = parse(raw)
    except MimeError:
        return
    m.text()
    m.header_values("subject")
    _ = m.protected
    try:
        out = m.decorate(FOOTER)
    except NotDecoratable:
        return
    parse(out)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_mutated_messages_never_raise_anything_but_mime_errors(raw: bytes) -> None:
    _exercise(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_mime_errors(raw: bytes) -> None:
    _exercise(raw)
