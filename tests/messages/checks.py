"""Property checks on a decorated message, decoding with stdlib codecs where they can (not our own code)."""

from __future__ import annotations

import base64
import binascii
import quopri
import re

from mailrelay.charsets import decode_iso2022jp
from mailrelay.message import Footer, Limits, ParsedMessage, Part, html_insert_position, parse

LINK = "https://r.example/t/AbC123"
FOOTER = Footer(
    text="――――――――\nご友人に求人をご紹介ください / Refer a friend: " + LINK + "\n",
    html='<p class="mr-footer">ご友人に求人をご紹介ください / <a href="' + LINK + '">Refer a friend</a></p>',
)
FOOTER_MARK = "mr-footer"
DEFAULT_LIMITS = Limits()


def shape(m: ParsedMessage) -> list[tuple[int, int, str]]:
    return [(p.depth, p.parent, p.content_type) for p in m.parts]


def decode_transfer(p: Part, raw: bytes) -> bytes:
    body = raw[p.body_start : p.end]
    if p.cte == "base64":
        compact = re.sub(rb"\s+", b"", body)
        return base64.b64decode(compact, validate=True)
    if p.cte == "quoted-printable":
        return quopri.decodestring(body)
    return body


def strict_text(p: Part, data: bytes) -> str:
    """Strict decode in the part's declared charset, with stdlib codecs (ours only for CP50221 JIS)."""
    label = p.params.get("charset", "").lower()
    if not label:
        label = "iso-2022-jp" if b"\x1b$B" in data else "us-ascii"
    codec = {"shift_jis": "cp932", "euc-jp": "euc_jp", "iso-2022-jp": "iso2022_jp"}.get(label, label)
    if codec == "iso2022_jp":
        try:
            return data.decode("iso2022_jp")
        except UnicodeDecodeError:
            return decode_iso2022jp(data, "strict")
    return data.decode(codec)


def splice_targets(raw: bytes, before: ParsedMessage, out: bytes, after: ParsedMessage) -> bytes:
    """`raw` with each target part's bytes replaced by the decorated one: equals `out` iff nothing else
    changed."""
    pieces: list[bytes] = []
    pos = 0
    for i in sorted(t for t in before.targets() if t >= 0):
        pieces.append(raw[pos : before.parts[i].start])
        pieces.append(out[after.parts[i].start : after.parts[i].end])
        pos = before.parts[i].end
    pieces.append(raw[pos:])
    return b"".join(pieces)


def check_decorated(
    raw: bytes, out: bytes, footer: Footer = FOOTER, link: str = LINK, limits: Limits = DEFAULT_LIMITS
) -> ParsedMessage:
    before, after = parse(raw, limits), parse(out, limits)
    assert shape(before) == shape(after)
    assert before.targets() == after.targets()
    assert splice_targets(raw, before, out, after) == out, "a byte outside the decorated parts changed"
    if b"\n" not in raw.replace(b"\r\n", b""):
        assert b"\n" not in out.replace(b"\r\n", b""), "bare LF written into CRLF mail"
    assert max(len(line) for line in out.split(b"\r\n")) <= 998  # RFC 5322 §2.1.1
    for i in (t for t in before.targets() if t >= 0):
        p0, p1 = before.parts[i], after.parts[i]
        # The target's header lines stay, except a rewritten CTE (and charset for us-ascii text).
        kept = [raw[f.start : f.end] for f in p0.fields if f.name not in (b"content-transfer-encoding",)]
        new = [out[f.start : f.end] for f in p1.fields if f.name not in (b"content-transfer-encoding",)]
        if p0.params.get("charset", "us-ascii").lower() in ("us-ascii", "") and p0.subtype == "plain":
            kept = [h for h in kept if not h.lower().startswith(b"content-type")]
            new = [h for h in new if not h.lower().startswith(b"content-type")]
        assert kept == new
        body = out[p1.body_start : p1.end]
        if p1.cte in ("quoted-printable", "base64"):
            assert all(len(line) <= 76 for line in body.split(b"\r\n")), "RFC 2045 §6.7/§6.8 line length"
        if p1.cte in ("7bit", ""):
            assert body.isascii()
        original = strict_text(p0, decode_transfer(p0, raw)).replace("\r\n", "\n")
        decorated = strict_text(p1, decode_transfer(p1, out)).replace("\r\n", "\n")
        assert "\ufffd" not in decorated
        assert decorated.count(link) == 1, "exactly one footer"
        if p1.subtype == "plain":
            assert decorated.startswith(original.rstrip("\n")), "original text kept, footer after it"
            tail = decorated[len(original.rstrip("\n")) :]
            assert not original or "\n\n" in tail.split(link)[0], "an empty line before the footer"
            for line in tail.split("\n"):
                assert not line.endswith(" "), "footer lines never end in a space (RFC 3676)"
        else:
            assert decorated.count(FOOTER_MARK) == 1
            start = decorated.index('<p class="mr-footer">')
            end = decorated.index("</p>", start) + len("</p>")
            without = (
                decorated[:start] + decorated[end:].removeprefix("\n"),
                decorated[:start].removesuffix("\n") + decorated[end:],
            )
            assert original in without, "the HTML outside the footer is unchanged"
            # Where: the original insertion point (before the last real </body>, else </html>, else end).
            expected = len(original.encode()[: html_insert_position(original.encode())].decode())
            assert start in (expected, expected + 1)
    return after


def b64_lines_ok(body: bytes) -> bool:
    try:
        base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except binascii.Error:
        return False
    return all(len(line) <= 76 for line in body.split(b"\r\n"))
