"""Byte-level MIME: bounded scanning, text extraction for detection, and footer splicing that keeps every
byte we do not mean to change."""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pybase64

from mailrelay.charsets import (
    ASCII,
    JIS_ESCAPE_RE,
    UTF8,
    Charset,
    CharsetError,
    ascii_mode_view,
    back_to_ascii,
    decode_iso2022jp,
    lookup,
)


@dataclass(frozen=True)
class Limits:
    """Caps checked by a cheap pre-scan before any full parse (issue 3, "Bounded")."""

    max_parts: int = 1000
    max_depth: int = 50
    max_header_bytes: int = 100 * 1024  # one header block, like Postfix header_size_limit


class MimeError(Exception):
    """The message cannot be decorated; `reason` is a short metric-safe word (closed set)."""

    reason: str = "malformed"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LimitExceeded(MimeError):
    """Over a pre-scan cap: reason is one of "parts", "depth", "header_size"."""


class NotDecoratable(MimeError):
    """Decoration refused: reason is one of "signed", "encrypted", "no_body_part", "charset",
    "encoding", "malformed"."""


@dataclass(frozen=True)
class Footer:
    """A footer already rendered for one recipient: `text` is plain text, `html` is HTML markup (escaped)."""

    text: str
    html: str


@dataclass(frozen=True)
class MessageText:
    """What detection reads: decoded text, in str."""

    subject: str  # RFC 2047 decoded, unfolded
    plain: str  # the main text/plain body, decoded in its charset ("" if none)
    html: str  # the main text/html body source, decoded in its charset ("" if none)


# ---------------------------------------------------------------------------------------------------------
# The scanner: header blocks, boundaries, part byte ranges. Nothing here decodes a body.


@dataclass
class HeaderField:
    """One header field: raw[start:end] is the whole field with its folded lines and final line break."""

    name: bytes  # lower-cased
    start: int
    value_start: int  # first byte after the colon
    end: int


@dataclass
class Part:
    """One MIME entity as byte offsets into the message: headers raw[start:body_start], body
    raw[body_start:end] (RFC 2046 §5.1.1: the line break before a delimiter belongs to the delimiter)."""

    start: int
    header_end: int  # where a header line can be inserted (just before the blank line)
    body_start: int
    end: int
    depth: int
    parent: int
    fields: list[HeaderField]
    maintype: str = "text"
    subtype: str = "plain"
    params: dict[str, str] = field(default_factory=dict)
    children: list[int] = field(default_factory=list)
    cte: str = "7bit"
    attachment: bool = False

    @property
    def content_type(self) -> str:
        return f"{self.maintype}/{self.subtype}"


_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext: printable ASCII except ":"

# Line-ending checks over whole messages, several per decorated copy (planning, signing, the next hop's
# DATA preparation). A regex whose pattern starts with a literal byte finds it as bytes.count finds one
# byte (~0.25 ms/MB here); bytes.count and `in` with a two-byte pattern such as b"\r\n" take three times as
# long (issue 8 profile: ~0.1 ms of scans per 48 KB copy).
_CR_NOT_BEFORE_LF = re.compile(rb"\r[^\n]")
_DOT_AFTER_LF = re.compile(rb"\n\.")


class WireReady(bytes):
    """Content already as the wire needs it: CRLF line endings only, a final CRLF, no line starting with
    ".". The next hop's client (transport) sends it without normalising or dot-stuffing it, and signing
    splits it without scanning it again: each of those scans reads the whole message."""


class CleanLines(bytes):
    """New content made so that every CR and LF is in a CRLF and no line starts with "." (WireReady, but
    it may end within a line): splice need not scan it. Base64 with CRLF line breaks is, by construction."""


def crlf_only(content: bytes) -> bool:
    """Every CR and every LF of `content` belongs to a CRLF. Exactly when there are as many CRs as LFs and
    every CR is followed by an LF: the CRLFs are then as many as the LFs, so no LF is bare either."""
    return (
        content.count(b"\r") == content.count(b"\n")
        and not content.endswith(b"\r")
        and _CR_NOT_BEFORE_LF.search(content) is None
    )


def starts_a_line_with_dot(content: bytes) -> bool:
    """Some line of `content` (after an LF, or the first) starts with ".": what SMTP dot-stuffs."""
    return content.startswith(b".") or _DOT_AFTER_LF.search(content) is not None


def _header_end(raw: bytes, start: int, end: int, cap: int) -> tuple[int, int]:
    """(header_end, body_start) of the entity at raw[start:end]; at most `cap` header bytes are read."""
    if raw.startswith(b"\r\n", start) and start + 2 <= end:
        return start, start + 2
    if raw.startswith(b"\n", start) and start < end:
        return start, start + 1
    stop = min(end, start + cap + 3)
    a = raw.find(b"\n\r\n", start, stop)
    # Only a bare-LF blank line before the CRLF one matters: on CRLF mail, a search up to `stop` would read
    # the whole body for one that is never there (~2 % of a 20 KB rejection's CPU, issue 8 profile).
    b = raw.find(b"\n\n", start, a + 1 if a >= 0 else stop)
    if a < 0 and b < 0:
        if end - start > cap:
            raise LimitExceeded("header_size", f"header block over {cap} bytes")
        return end, end
    if b < 0 or 0 <= a < b:
        hend, body = a + 1, a + 3
    else:
        hend, body = b + 1, b + 2
    if hend - start > cap:
        raise LimitExceeded("header_size", f"header block over {cap} bytes")
    return hend, body


def _parse_fields(raw: bytes, start: int, end: int) -> tuple[list[HeaderField], bool]:
    """Header fields of raw[start:end]; the flag says a line was neither a field nor a continuation."""
    fields: list[HeaderField] = []
    broken = False
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos] in (0x20, 0x09):
            # RFC 5322 §2.2.3 folding: a continuation line belongs to the field above it.
            if fields:
                fields[-1].end = line_end
            else:
                broken = True
        else:
            colon = raw.find(b":", pos, line_end)
            name = raw[pos:colon].rstrip(b" \t") if colon > pos else b""
            if name and _FIELD_NAME.fullmatch(name):
                fields.append(HeaderField(name.lower(), pos, colon + 1, line_end))
            else:
                broken = True
        pos = line_end
    return fields, broken


def _unfold(value: bytes) -> bytes:
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip(b" \t\r\n")


_PARAM = re.compile(
    r"""\s*;\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)""",
)


@functools.lru_cache(maxsize=512)
def _parse_content_type(value: str) -> tuple[str, str, dict[str, str]]:
    """RFC 2045 §5.1 type/subtype and parameters (RFC 2231 charset'' prefixes dropped, continuations
    joined); a value we cannot read yields text/plain, as RFC 2045 §5.2 says."""
    head, _, rest = value.partition(";")
    mtype, _, subtype = head.strip().lower().partition("/")
    params: dict[str, str] = {}
    pieces: dict[str, dict[int, str]] = {}
    for m in _PARAM.finditer(";" + rest):
        key = m.group(1).lower()
        val = m.group(2)
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        cont = re.fullmatch(r"([^*]+)\*(\d+)\*?", key)
        if cont:
            pieces.setdefault(cont.group(1), {})[int(cont.group(2))] = val
            continue
        if key.endswith("*"):
            key = key[:-1]
            val = val.split("'", 2)[-1]
        params.setdefault(key, val)
    for key, parts in pieces.items():
        params.setdefault(key, "".join(parts[i] for i in sorted(parts)))
    if not mtype or not subtype or not re.fullmatch(r"[a-z0-9!#$&^_.+-]+", mtype + subtype):
        return "text", "plain", params
    return mtype, subtype.strip(), params


def _field_text(raw: bytes, f: HeaderField) -> str:
    return _unfold(raw[f.value_start : f.end]).decode("latin-1")


def _scan(raw: bytes, limits: Limits) -> tuple[list[Part], bool]:
    """All entities of `raw` in document order, iteratively (no recursion to exhaust), checking the caps
    as it goes so that a hostile message costs at most one pass over its bytes."""
    parts: list[Part] = []
    malformed = False
    # (start, end, depth, parent, default content type)
    stack: list[tuple[int, int, int, int, str]] = [(0, len(raw), 0, -1, "text/plain")]
    while stack:
        start, end, depth, parent, default = stack.pop()
        if depth > limits.max_depth:
            raise LimitExceeded("depth", f"nesting deeper than {limits.max_depth}")
        if len(parts) >= limits.max_parts:
            raise LimitExceeded("parts", f"more than {limits.max_parts} parts")
        hend, body = _header_end(raw, start, end, limits.max_header_bytes)
        fields, broken = _parse_fields(raw, start, hend)
        malformed = malformed or broken
        part = Part(start, hend, body, end, depth, parent, fields)
        index = len(parts)
        parts.append(part)
        if parent >= 0:
            parts[parent].children.append(index)
        # The first occurrence of each field counts (RFC 2045 allows only one of each).
        mime: dict[bytes, HeaderField] = {}
        for f in fields:
            if f.name.startswith(b"content-"):
                mime.setdefault(f.name, f)
        ctype = mime.get(b"content-type")
        if ctype is not None:
            part.maintype, part.subtype, part.params = _parse_content_type(_field_text(raw, ctype))
        else:
            part.maintype, _, part.subtype = default.partition("/")
        cte = mime.get(b"content-transfer-encoding")
        if cte is not None:
            part.cte = _field_text(raw, cte).strip().lower() or "7bit"
        disp = mime.get(b"content-disposition")
        if disp is not None:
            # RFC 2183 §2: a disposition type, then parameters; read as a type "<kind>/x" with them, so
            # "attachment; size=42" stays an attachment.
            kind, sep, rest = _field_text(raw, disp).partition(";")
            kind, _, dparams = _parse_content_type(kind.strip() + "/x" + sep + rest)
            part.attachment = kind == "attachment" or "filename" in dparams
        part.attachment = part.attachment or "name" in part.params
        if part.maintype != "multipart":
            continue
        boundary = part.params.get("boundary", "")
        if not boundary or not boundary.isascii():
            malformed = True
            continue
        child_default = "message/rfc822" if part.subtype == "digest" else "text/plain"
        children, closed = _split(raw, body, end, b"--" + boundary.encode("ascii"))
        malformed = malformed or not closed
        if len(parts) + len(children) > limits.max_parts:
            raise LimitExceeded("parts", f"more than {limits.max_parts} parts")
        for cstart, cend in reversed(children):
            stack.append((cstart, cend, depth + 1, index, child_default))
    return parts, malformed


def _split(raw: bytes, start: int, end: int, delim: bytes) -> tuple[list[tuple[int, int]], bool]:
    """Body ranges between the delimiter lines of one multipart body (RFC 2046 §5.1.1: a delimiter is
    "--boundary" at the start of a line, optionally "--" for the last, then only transport padding)."""
    ranges: list[tuple[int, int]] = []
    open_at = -1
    pos = start
    closed = False
    while True:
        i = raw.find(delim, pos, end)
        if i < 0:
            break
        if i == start or raw[i - 1] == 0x0A:
            after = i + len(delim)
            close = raw.startswith(b"--", after) and after + 2 <= end
            j = after + 2 if close else after
            nl = raw.find(b"\n", j, end)
            line_end = end if nl < 0 else nl + 1
            if not raw[j:line_end].strip(b" \t\r\n"):
                if open_at >= 0:
                    before = i
                    if i > start and raw[i - 1] == 0x0A:
                        before = i - 2 if i - 2 >= start and raw[i - 2] == 0x0D else i - 1
                    ranges.append((open_at, max(before, open_at)))
                if close:
                    closed = True
                    break
                open_at = line_end
                pos = line_end
                continue
        pos = i + 1
    if not closed and open_at >= 0:
        ranges.append((open_at, end))
    return ranges, closed


# ---------------------------------------------------------------------------------------------------------
# Transfer encodings (RFC 2045 §6).


# bytes.translate deletes in C: a regex substitution took ~85 µs per 4 KB base64 part (issue 8).
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(b for b in range(256) if b not in _B64_ALPHABET)


def _b64_decode(data: bytes, strict: bool) -> bytes:
    compact = data.translate(None, b" \t\r\n")
    if strict:
        # Whole groups of four, all in the alphabet but for "=" or "==" at the very end (RFC 4648 §4).
        # What translate leaves is the characters outside the alphabet: a regex took ~30 µs per 14 KB.
        outside = compact.translate(None, _B64_ALPHABET)
        if len(compact) % 4 or outside not in (b"", b"=", b"==") or not compact.endswith(outside):
            raise NotDecoratable("encoding", "invalid base64")
        # pybase64 (libbase64, SIMD) decodes what binascii does, byte for byte, ~20 times as fast: 0.7 against
        # 16 µs for 9.7 KB; in the relay, 20 KB mail with two base64 text parts at 10 sessions took 4 % less
        # CPU per message (issue 8).
        return pybase64.b64decode(compact, validate=True)
    compact = compact.translate(None, _NOT_B64)
    return binascii.a2b_base64(compact[: len(compact) - len(compact) % 4] or b"")


def b64_encode(data: bytes, eol: bytes, final_eol: bool) -> bytes:
    """RFC 2045 §6.8: 76-character lines; CleanLines with CRLF (the base64 alphabet has no CR, LF or ".")."""
    text = pybase64.b64encode(data)
    lines = [text[i : i + 76] for i in range(0, len(text), 76)]
    encoded = eol.join(lines) + (eol if final_eol and lines else b"")
    return CleanLines(encoded) if eol == b"\r\n" else encoded


_B64_LINE_OCTETS = 57  # what one line of 76 base64 characters encodes


def b64_reencode(body: bytes, old: bytes, new: bytes, eol: bytes, final_eol: bool) -> tuple[int, bytes]:
    """`new` in base64 for a part whose `body` decodes strictly to `old`, as (offset, data): data takes the
    place of body[offset:]. Where `body` is what b64_encode writes for `old`, its lines up to the first
    octet that `new` changes are kept, so a footer near the end encodes only the last lines again; the
    result is byte for byte what encoding all of `new` gives. Encoding a whole 15 KB HTML part again took
    ~75 µs a decorated copy in place (issue 8 profile)."""
    chars = -(-len(old) // 3) * 4  # the base64 characters of `old`, padding included (RFC 4648 §4)
    lines = chars // 76  # the full lines
    ends = -(-chars // 76) - (0 if final_eol else 1)  # the line ends b64_encode writes
    width = 76 + len(eol)
    # Written by b64_encode: every line end where it belongs, and no other white space. The strict decode
    # left only white space besides `chars` characters, so a body as long as the characters and the line
    # ends together has none elsewhere. The checks read every 78th byte or none (bytes.count took ~5 µs
    # per 16 KB).
    canonical = (
        len(body) == chars + len(eol) * ends
        and all(body[76 + i :: width] == eol[i : i + 1] * min(lines, ends) for i in range(len(eol)))
        and (not final_eol or body.endswith(eol))  # the last line's end, when it is not a full line
    )
    # The lines that can be kept hold 57 octets each and end in a line end. A last line of 76 characters
    # may hold 55 or 56 and end in padding (len(old) % 57 of 55 or 56), and without `final_eol` the last
    # line has no end: kept, `new`'s next characters would have followed its "=" or run on in it (a footer
    # appended to a text part was corrupt so).
    kept = min(len(old) // _B64_LINE_OCTETS, ends)
    if canonical and kept:
        shared = memoryview(old)
        if not new.startswith(shared[: kept * _B64_LINE_OCTETS]):
            # Bisect for the last full line whose octets `new` still starts with: a memcmp a step.
            same, differs = 0, kept
            while differs - same > 1:
                middle = (same + differs) // 2
                if new.startswith(shared[: middle * _B64_LINE_OCTETS]):
                    same = middle
                else:
                    differs = middle
            kept = same
    if not canonical or not kept:
        return 0, b64_encode(new, eol, final_eol)
    return kept * width, b64_encode(new[kept * _B64_LINE_OCTETS :], eol, final_eol)


# An "=" that is neither "=XX" nor a soft line break (RFC 2045 §6.7 rules 1 and 5).
_QP_BAD = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*(?:\r?\n|\Z))")
_LINE_BREAK = re.compile(rb"\r?\n")


def qp_decode(data: bytes, strict: bool) -> bytes:
    """RFC 2045 §6.7; hard line breaks come back as CRLF (the canonical form)."""
    if strict and _QP_BAD.search(data):
        raise NotDecoratable("encoding", "invalid quoted-printable")
    lines = _LINE_BREAK.split(data)
    out: list[bytes] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        # Rule 3: trailing whitespace was added in transport and is deleted when decoding.
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            out.append(line[:-1])
        else:
            out.append(line)
            if i != last:
                out.append(b"\r\n")
    return binascii.a2b_qp(b"".join(out))


_QP_TOKEN = [
    bytes((b,)) if (33 <= b <= 126 and b != 61) or b in (32, 9) else b"=%02X" % b for b in range(256)
]
_QP_LITERAL = re.compile(rb"[\x21-\x3c\x3e-\x7e \t]*")


def qp_encode(data: bytes, eol: bytes) -> bytes:
    """RFC 2045 §6.7: "=" and non-printables as =XX, trailing space/tab escaped, lines of at most 76
    characters with "=" soft breaks that never split an =XX; each CRLF (or LF) of `data` is a hard break."""
    out: list[bytes] = []
    for line in _LINE_BREAK.split(data):
        if _QP_LITERAL.fullmatch(line):
            # A trailing space or tab becomes "=20" or "=09", two characters longer (rule 3): a line of 75
            # or 76 that ends in one is no longer short enough to stay whole (rule 5).
            blank_end = bool(line) and line[-1] in (32, 9)
            if len(line) + 2 * blank_end <= 76:
                if blank_end:
                    line = line[:-1] + b"=%02X" % line[-1]
                out.append(line)
                continue
            tokens = [line[i : i + 1] for i in range(len(line))]
        else:
            tokens = [_QP_TOKEN[b] for b in line]
        if line[-1] in (32, 9):
            tokens[-1] = b"=%02X" % line[-1]
        width = 0
        current: list[bytes] = []
        for token in tokens:
            if width + len(token) > 75:
                out.append(b"".join(current) + b"=")
                current, width = [], 0
            current.append(token)
            width += len(token)
        out.append(b"".join(current))
    return eol.join(out)


def _decode_cte(data: bytes, cte: str, strict: bool) -> bytes:
    if cte == "base64":
        return _b64_decode(data, strict)
    if cte == "quoted-printable":
        return qp_decode(data, strict)
    if cte in ("7bit", "8bit", "binary") or not strict:
        return data
    raise NotDecoratable("encoding", f"unknown Content-Transfer-Encoding {cte[:40]!r}")


# ---------------------------------------------------------------------------------------------------------
# Headers (RFC 5322 §2.2, RFC 2047).

_B64_WORD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_bytes(data: bytes) -> str:
    if JIS_ESCAPE_RE.search(data):
        return decode_iso2022jp(data, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp932", "replace")


def _decode_words(charset: str, chunks: list[bytes]) -> str:
    cs = lookup(charset.split("*", 1)[0])
    data = b"".join(chunks)
    if cs is None:
        return data.decode("utf-8", "replace")
    return cs.decode(data, "replace")


def decode_header_value(value: bytes) -> str:
    """Unfolded, RFC 2047 decoded; never raises. Adjacent encoded words in one charset are joined before
    decoding because mailers split multibyte (and ISO-2022-JP) characters across them (RFC 2047 §6.2)."""
    value = _unfold(value)
    out: list[str] = []
    pos = 0
    run_charset = b""
    run: list[bytes] = []
    for m in _ENCODED_WORD.finditer(value):
        if m.group(2) in b"bB" and not _B64_WORD.fullmatch(m.group(3)):
            continue  # not a valid encoded word: shown as the text it is (RFC 2047 §6.3)
        gap = value[pos : m.start()]
        if run and gap.strip(b" \t\r\n") == b"" and m.group(1).lower() == run_charset:
            pass
        else:
            if run:
                out.append(_decode_words(run_charset.decode("latin-1"), run))
                run = []
            # Whitespace between two encoded words is not displayed (RFC 2047 §6.2).
            if not (out and pos and gap.strip(b" \t\r\n") == b""):
                out.append(_decode_bytes(gap))
        run_charset = m.group(1).lower()
        payload = m.group(3)
        if m.group(2) in b"bB":
            payload = re.sub(rb"[^A-Za-z0-9+/]", b"", payload)
            payload += b"=" * (-len(payload) % 4)
            try:
                run.append(binascii.a2b_base64(payload))
            except binascii.Error:
                run.append(m.group())
        else:
            run.append(binascii.a2b_qp(payload, header=True))
        pos = m.end()
    if run:
        out.append(_decode_words(run_charset.decode("latin-1"), run))
    out.append(_decode_bytes(value[pos:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# HTML insertion point.

# The rest of a start tag after "<" and its first letter: a value quoted after "=" is consumed whole, so a
# "</body>" inside it (alt="… </body> …") is text, not a tag (HTML §13.2.5.36-38); a quote anywhere else
# belongs to a name or an unquoted value (§13.2.5.33, .38). Possessive: nothing here is given back.
_TAG_REST = rb"""(?:[^>"'=]++|=\s*+"[^"]*+"|=\s*+'[^']*+'|=)*+"""
# Elements whose content is text up to their own end tag (§13.2.5.2-4: RCDATA, RAWTEXT, script data).
_TEXT_ELEMENTS = rb"(?i:script|style|title|textarea|xmp|iframe|noembed|noframes)"
# A comment ends at "-->" or "--!>" (HTML §13.2.5.51-52), or at once for "<!-->" and "<!--->", which are
# whole, empty comments (§13.2.5.43-44, abrupt-closing-of-empty-comment); unclosed, it runs to the end.
_COMMENT = rb"<!--(?:-?>|.*?--!?>|.*)"
# Left to right, as the tokenizer reads (HTML §13.2.5): comments, start tags with their attributes, and the
# text elements are consumed whole, so a </body> inside them is never a candidate; of the rest, the last
# </body> wins (a quoted reply may carry an earlier one); its name ends at whitespace, "/" or ">", so
# </body-x> (a custom element) is not one (§13.2.5.8).
_HTML_SCAN = re.compile(
    _COMMENT + rb"|<(" + _TEXT_ELEMENTS + rb")(?=[\s/>])" + _TAG_REST + rb".*?(?:</(?i:\1)\s*>|\Z)"
    rb"|<[a-zA-Z]" + _TAG_REST + rb"|</((?i:body|html))(?=[\s/>])[^>]*>",
    re.DOTALL,
)
# Reading every start tag's attributes costs (the bench's 20 KB rejection's 7 KB of HTML: 4 -> 23 µs; a
# 32 KB table-and-inline-style template ~22 -> ~135 µs), so the scan first skips only comments, scripts and
# styles, and its candidate is taken when nothing before it can hold it as text: no tag left open (or
# holding a quote) since the last "<", and no title, textarea and the like open. Without one, the full scan
# decides. Left as before: a "<!--" or "<script" inside an attribute value or a title, which the quick scan
# reads as the start of a comment or script that hides what follows (issue 8; found by review).
_HTML_SCAN_QUICK = re.compile(
    _COMMENT + rb"|<((?i:script|style))(?=[\s/>]).*?(?:</(?i:\1)\s*>|\Z)"
    rb"|</((?i:body|html))(?=[\s/>])[^>]*>",
    re.DOTALL,
)
# Without IGNORECASE, which costs the regex its quick search for "<" (6.4 against ~1 µs on that HTML).
_TEXT_ELEMENT_TAG = re.compile(rb"<(/?)([TtXxIiNn][A-Za-z]{2,7})(?=[\s/>])(\s*>)?")
_TEXT_ELEMENT_NAMES = frozenset((b"title", b"textarea", b"xmp", b"iframe", b"noembed", b"noframes"))
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def html_insert_position(view: bytes) -> int:
    """Before the last real </body>; else before the last real </html>; else the end."""
    at = _last_candidate(_HTML_SCAN_QUICK, view)
    if at < len(view) and _plainly_a_tag(view, at):
        return at
    return _last_candidate(_HTML_SCAN, view)


def _plainly_a_tag(view: bytes, at: int) -> bool:
    """Whether the "</" at `at` can only be a tag: no attribute value and no text element holds it."""
    lt = view.rfind(b"<", 0, at)
    if lt >= 0 and (lt > view.rfind(b">", 0, at) or b'"' in view[lt:at] or b"'" in view[lt:at]):
        return False
    # As the full scan reads them: an element's text runs to its own end tag ("</title>", blanks allowed).
    open_element: bytes | None = None
    for m in _TEXT_ELEMENT_TAG.finditer(view, 0, at):
        name = m.group(2).lower()
        if name not in _TEXT_ELEMENT_NAMES:
            continue
        if open_element is None:
            open_element = None if m.group(1) else name
        elif m.group(1) and m.group(3) and name == open_element:
            open_element = None
    return open_element is None


def _last_candidate(scan: re.Pattern[bytes], view: bytes) -> int:
    last_body = last_html = -1
    for m in scan.finditer(view):
        tag = m.group(2)
        if tag is None:
            continue
        if tag.lower() == b"body":
            last_body = m.start()
        else:
            last_html = m.start()
    if last_body >= 0:
        return last_body
    if last_html >= 0:
        return last_html
    return len(view)


# ---------------------------------------------------------------------------------------------------------
# The parsed message.

_SIGNED = "signed"
_ENCRYPTED = "encrypted"


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    data: bytes


class ParsedMessage:
    """One received message, scanned once. Decoration never mutates it: each call returns new bytes."""

    raw: bytes

    def __init__(self, raw: bytes, parts: list[Part], malformed: bool) -> None:
        self.raw = raw
        self.parts = parts
        self.malformed = malformed
        first_nl = raw.find(b"\n")
        # What we generate follows the message's own line ending: CRLF for SMTP mail (RFC 5322 §2.1).
        self.eol = b"\n" if first_nl > 0 and raw[first_nl - 1] != 0x0D else b"\r\n"
        self._fields_by_name: dict[str, list[HeaderField]] | None = None
        self._headers: dict[str, list[str]] = {}  # decoded values, by lower-cased name, as asked for
        self._targets: tuple[int, int] | None = None
        self._text: MessageText | None = None
        self._protected: str | None = None
        # Detection reads the text parts and decoration rewrites them: each is undone (transfer encoding,
        # then charset) once per message, not once for each and again per applicant copy (issue 8).
        self._strict_bodies: dict[int, bytes] = {}  # by body_start
        self._decodes_in: dict[int, str] = {}  # the label of the charset a body decoded in without error
        self._html_positions: dict[int, int] = {}  # where the footer goes in an HTML body, by body_start

    # -- headers ------------------------------------------------------------------------------------------

    def header_values(self, name: str) -> list[str]:
        """Top-level header values (unfolded, RFC 2047 decoded), in order of appearance. Only the fields
        asked for are decoded: the relay reads three or four of a message's dozen (issue 8 profile)."""
        key = name.lower()
        values = self._headers.get(key)
        if values is None:
            values = self._headers[key] = [
                decode_header_value(self.raw[f.value_start : f.end]) for f in self._top_fields(key)
            ]
        return list(values)

    def address_header_values(self, name: str) -> list[str]:
        """Top-level values of an address field (From, To, …) unfolded but not RFC 2047-decoded, for an
        address parser: an encoded word may stand only in a display name, and decoded first it could read
        as an address (RFC 2047 §5). 8-bit text (RFC 6532) is decoded as header values are."""
        return [
            _decode_bytes(_unfold(self.raw[f.value_start : f.end])) for f in self._top_fields(name.lower())
        ]

    def _top_fields(self, key: str) -> list[HeaderField]:
        if self._fields_by_name is None:
            by_name: dict[str, list[HeaderField]] = {}
            for f in self.parts[0].fields:
                by_name.setdefault(f.name.decode("ascii", "replace"), []).append(f)
            self._fields_by_name = by_name
        return self._fields_by_name.get(key, [])

    # -- structure ----------------------------------------------------------------------------------------

    @property
    def protected(self) -> str | None:
        """ "signed" or "encrypted" if any part is multipart/signed, multipart/encrypted or
        application/pkcs7-mime (at any depth), else None."""
        if self._protected is None:
            self._protected = next((k for k in map(_protection, self.parts) if k), "")
        return self._protected or None

    def _skipped(self, p: Part) -> bool:
        # Attachments, forwarded messages (RFC 2046 §5.2.1) and protected subtrees are never body.
        return p.attachment or p.maintype == "message" or _protection(p) is not None

    def _body_children(self, p: Part) -> list[int]:
        """The children of multipart `p` that may hold its body: all of them, except in a multipart/related,
        where only the root is (the rest are what it refers to): the part whose Content-ID the `start`
        parameter names, else the first (RFC 2387 §3.2). Detection and decoration both find their parts
        through targets(), so they agree on the root."""
        if p.subtype != "related":
            return p.children
        start = p.params.get("start", "").strip(" \t<>")
        if start:
            for i in p.children:
                cid = next((f for f in self.parts[i].fields if f.name == b"content-id"), None)
                if cid is not None and _field_text(self.raw, cid).strip(" \t<>") == start:
                    return [i]
        return p.children[:1]

    def _walk_first(self, root: int) -> tuple[int, int]:
        """First text/plain and first text/html under `root`, in document order, body parts only."""
        plain = html = -1
        stack = [root]
        while stack and (plain < 0 or html < 0):
            i = stack.pop()
            p = self.parts[i]
            if self._skipped(p):
                continue
            if p.maintype == "multipart":
                stack.extend(reversed(self._body_children(p)))
            elif p.content_type == "text/plain" and plain < 0:
                plain = i
            elif p.content_type == "text/html" and html < 0:
                html = i
        return plain, html

    def targets(self) -> tuple[int, int]:
        """Indexes of the main text/plain and text/html parts (-1 when absent): the first body text part,
        and, if it sits in a multipart/alternative, the first of the other kind in that alternative."""
        if self._targets is not None:
            return self._targets
        result = (-1, -1)
        first = -1
        stack = [0]
        while stack:
            i = stack.pop()
            p = self.parts[i]
            if self._skipped(p):
                continue
            if p.maintype == "multipart":
                stack.extend(reversed(self._body_children(p)))
            elif p.content_type in ("text/plain", "text/html"):
                first = i
                break
        if first >= 0:
            alt = self.parts[first].parent
            while alt >= 0 and self.parts[alt].content_type != "multipart/alternative":
                alt = self.parts[alt].parent
            if alt >= 0:
                result = self._walk_first(alt)
            elif self.parts[first].subtype == "plain":
                result = (first, -1)
            else:
                result = (-1, first)
        self._targets = result
        return result

    # -- text for detection -------------------------------------------------------------------------------

    def text(self) -> MessageText:
        if self._text is None:
            subject = next(iter(self.header_values("subject")), "")
            plain_i, html_i = self.targets()
            self._text = MessageText(
                subject=subject,
                plain=self._lenient_text(plain_i),
                html=self._lenient_text(html_i),
            )
        return self._text

    def _lenient_text(self, index: int) -> str:
        if index < 0:
            return ""
        p = self.parts[index]
        try:
            try:
                data, strict = self._strict_body(p), True
            except (MimeError, binascii.Error, ValueError):
                # Detection is best effort: what does not decode strictly is read as well as it can be.
                data, strict = _decode_cte(self.raw[p.body_start : p.end], p.cte, strict=False), False
            cs = self._charset(p, data) or UTF8
            if cs.codec == "ascii" and not data.isascii():
                # 8-bit text declared as us-ascii or not at all, as swaks and many scripts send UTF-8:
                # decoration writes such a text part as UTF-8 when it is (_decorate_part), so it is read so.
                cs = UTF8
            if strict:
                try:
                    text = cs.decode(data, "strict")
                except CharsetError:
                    pass
                else:
                    self._decodes_in[p.body_start] = cs.label
                    return text
            return cs.decode(data, "replace")
        except (binascii.Error, ValueError, LookupError):
            # An undecodable body reads as empty, never as an exception.
            return ""

    def _strict_body(self, p: Part) -> bytes:
        """The part's body with its transfer encoding undone strictly; raises MimeError, binascii.Error or
        ValueError when it is not valid."""
        body = self._strict_bodies.get(p.body_start)
        if body is None:
            body = _decode_cte(self.raw[p.body_start : p.end], p.cte, strict=True)
            self._strict_bodies[p.body_start] = body
        return body

    def _charset(self, p: Part, data: bytes) -> Charset | None:
        label = p.params.get("charset", "").strip()
        if label:
            return lookup(label)
        if JIS_ESCAPE_RE.search(data):
            # No charset but JIS escapes: ISO-2022-JP, the way old Japanese mailers sent it (RFC 1468).
            return lookup("iso-2022-jp")
        if p.subtype == "html":
            meta = _META_CHARSET.search(data, 0, 4096)
            if meta:
                return lookup(meta.group(1).decode("ascii"))
        return ASCII

    # -- decoration ---------------------------------------------------------------------------------------

    def decorate(self, footer: Footer) -> bytes:
        """The whole message with `footer` in the main text/plain and text/html parts; raises
        NotDecoratable."""
        kind = self.protected
        if kind is not None:
            raise NotDecoratable(kind)
        if self.malformed:
            raise NotDecoratable("malformed", "broken MIME structure")
        plain_i, html_i = self.targets()
        if plain_i < 0 and html_i < 0:
            raise NotDecoratable("no_body_part")
        edits: list[_Edit] = []
        try:
            if plain_i >= 0:
                edits += self._decorate_part(self.parts[plain_i], footer, html=False)
            if html_i >= 0:
                edits += self._decorate_part(self.parts[html_i], footer, html=True)
        except NotDecoratable:
            raise
        except (ValueError, LookupError, binascii.Error) as exc:
            raise NotDecoratable("malformed", type(exc).__name__) from exc
        edits.sort(key=lambda e: (e.start, e.end))
        return splice(self.raw, [(e.start, e.end, e.data) for e in edits])

    def _decorate_part(self, p: Part, footer: Footer, html: bool) -> list[_Edit]:
        if p.body_start == p.header_end and p.end > p.start:
            # No blank line ends this header (RFC 5322 §2.1, RFC 2046 §5.1.1): the part has no body, and
            # a footer appended to it would land in its last header field.
            raise NotDecoratable("malformed", "no blank line after a header")
        body = self.raw[p.body_start : p.end]
        decoded = self._strict_body(p)
        cs = self._charset(p, decoded)
        if cs is None:
            raise NotDecoratable("charset", "charset we cannot write")
        edits: list[_Edit] = []
        if cs.codec == "ascii" and not html:
            # text/plain in us-ascii (declared or by default): a non-ASCII footer needs a charset that can
            # carry it; UTF-8 is a superset, so the original bytes stay valid.
            body_ascii = decoded.isascii()
            if not body_ascii or not footer.text.isascii():
                try:
                    decoded.decode("utf-8")
                except UnicodeDecodeError:
                    raise NotDecoratable("charset", "8-bit bytes in a us-ascii part") from None
                cs = UTF8
                edits.append(self._charset_edit(p))
        if self._decodes_in.get(p.body_start) != cs.label:
            try:
                cs.decode(decoded, "strict")
            except CharsetError:
                raise NotDecoratable("charset", f"body does not decode as {cs.label}") from None
        content_eol = b"\r\n" if b"\r\n" in decoded or b"\n" not in decoded else b"\n"
        if html:
            new = self._with_html_footer(decoded, cs, footer, content_eol, p)
        else:
            new = self._with_text_footer(decoded, cs, footer, content_eol, p)
        ending = body.endswith(b"\n")
        cte = p.cte
        kept = 0  # leading bytes of the body that stay as they are
        if cte == "base64":
            kept, data = b64_reencode(body, decoded, new, self.eol, ending)
        elif cte == "quoted-printable":
            data = qp_encode(new, self.eol)
        else:
            data = new
            over_long = max(len(line) for line in new.split(b"\n")) > 998
            # RFC 2045 §2.7/§2.8 and RFC 5322 §2.1.1: 7bit is ASCII, and no line of any part may pass 998
            # octets; otherwise the part becomes quoted-printable (its own CTE line only).
            if over_long or (cte != "8bit" and cte != "binary" and not new.isascii()):
                data = qp_encode(new, self.eol)
                edits.append(self._cte_edit(p, "quoted-printable"))
        # A body line that reads as an enclosing delimiter would cut the tree (RFC 2046 §5.1.1); the
        # footer comes from configuration, so refuse rather than pick a new boundary. The plain substring
        # test comes first: a regex that may start at any line cannot skip ahead, and cost ~70 µs on a
        # 10 KB part where bytes.find costs ~1 µs (issue 8 profile).
        a = p.parent
        while a >= 0:
            delim = b"--" + self.parts[a].params.get("boundary", "").encode("ascii", "replace")
            if delim in data:
                line = re.compile(rb"(?:^|\n)" + re.escape(delim) + rb"(?:--)?[ \t]*(?:\r?\n|\Z)")
                if line.search(data):
                    raise NotDecoratable("malformed", "footer would read as a MIME boundary")
            a = self.parts[a].parent
        if edits and p.parent < 0 and not any(f.name == b"mime-version" for f in p.fields):
            # RFC 2045 §4: a reader may ignore Content-Type and Content-Transfer-Encoding fields without
            # MIME-Version, and show the quoted-printable as it stands.
            edits.insert(0, _Edit(p.header_end, p.header_end, b"MIME-Version: 1.0" + self.eol))
        if kept:
            edits.append(_Edit(p.body_start + kept, p.end, data))
        elif data.startswith(body):
            # The footer was only appended (a text part kept in its encoding): insert just that, so that the
            # copy is not scanned again for the body's own bytes (splice).
            edits.append(_Edit(p.end, p.end, data[len(body) :]))
        else:
            edits.append(_Edit(p.body_start, p.end, data))
        return edits

    def _with_text_footer(self, decoded: bytes, cs: Charset, footer: Footer, eol: bytes, p: Part) -> bytes:
        add: list[bytes] = []
        if cs.iso2022:
            # RFC 1468 §3: a line must end in ASCII; the footer must not be read as kanji, kana or JIS-Roman.
            add.append(back_to_ascii(decoded))
        if decoded:
            if not decoded.endswith(b"\n"):
                add.append(eol)
            # An empty line: ends a format=flowed paragraph (RFC 3676 §4.2) so the footer stays apart.
            add.append(eol)
        flowed = p.params.get("format", "").lower() == "flowed"
        for line in footer.text.splitlines():
            line = line.rstrip(" \t")
            if flowed and (line.startswith((" ", ">", "From "))):
                line = " " + line  # RFC 3676 §4.4 space-stuffing
            add.append(cs.encode_text(line) + eol)
        return decoded + b"".join(add)

    def _with_html_footer(self, decoded: bytes, cs: Charset, footer: Footer, eol: bytes, p: Part) -> bytes:
        pos = self._html_positions.get(p.body_start)
        if pos is None:
            view = ascii_mode_view(decoded) if cs.iso2022 else decoded
            pos = self._html_positions[p.body_start] = html_insert_position(view)
        markup = re.sub(r"\r?\n", eol.decode("ascii"), footer.html)
        ins = cs.encode_html(markup)
        # RFC 1468 §3: ASCII before the footer, and before the end of the line it may have to close.
        to_ascii = back_to_ascii(decoded[:pos]) if cs.iso2022 else b""
        if pos < len(decoded):
            # The view only finds </body> in ASCII or JIS-Roman mode: after the footer, the rest of the
            # document reads in the mode it was written in.
            ins = to_ascii + ins + (b"\x1b(J" if to_ascii else b"") + eol
        elif decoded and not decoded.endswith(b"\n"):
            ins = to_ascii + eol + ins
        else:
            ins = to_ascii + ins
        return decoded[:pos] + ins + decoded[pos:]

    def _cte_edit(self, p: Part, cte: str) -> _Edit:
        line = b"Content-Transfer-Encoding: " + cte.encode("ascii") + self.eol
        old = next((f for f in p.fields if f.name == b"content-transfer-encoding"), None)
        if old is None:
            return _Edit(p.header_end, p.header_end, line)
        return _Edit(old.start, old.end, line)

    def _charset_edit(self, p: Part) -> _Edit:
        old = next((f for f in p.fields if f.name == b"content-type"), None)
        if old is None:
            line = b"Content-Type: text/plain; charset=utf-8" + self.eol
            return _Edit(p.header_end, p.header_end, line)
        value = self.raw[old.start : old.end]
        stripped = value.rstrip(b"\r\n")
        # The charset parameter itself, not one whose name ends in "charset" (x-charset=); its RFC 2231 form
        # (charset*=us-ascii'') becomes the plain one, or a second, conflicting charset would be added.
        new, count = re.subn(
            rb"""(;\s*charset)\*?(\s*=\s*)("?)[A-Za-z0-9_.:'%-]+\3""",
            rb"\1\2\3utf-8\3",
            stripped,
            count=1,
            flags=re.I,
        )
        if not count:
            new = stripped + b"; charset=utf-8"
        return _Edit(old.start, old.end, new + value[len(stripped) :])


def _protection(p: Part) -> str | None:
    if p.maintype == "multipart":
        if p.subtype == "signed":
            return _SIGNED
        if p.subtype == "encrypted":
            return _ENCRYPTED
        return None
    if p.maintype == "application" and p.subtype in ("pkcs7-mime", "x-pkcs7-mime"):
        # RFC 8551 §3.2.2: smime-type says whether the opaque blob is signed or enveloped.
        return _SIGNED if "signed" in p.params.get("smime-type", "").lower() else _ENCRYPTED
    return None


def parse(raw: bytes, limits: Limits = Limits()) -> ParsedMessage:
    """Scan `raw`; raises LimitExceeded or MimeError. Never raises anything else for bad input."""
    try:
        parts, malformed = _scan(raw, limits)
    except MimeError:
        raise
    except Exception as exc:  # the contract: bad input never escapes as anything but MimeError
        raise MimeError("malformed", type(exc).__name__) from exc
    return ParsedMessage(raw, parts, malformed)


def splice(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`raw` with the data of each (start, end, data) in `edits` (in order, not overlapping) in place of
    raw[start:end].

    WireReady content stays WireReady when the result still is, which is decided from the new data and the
    junctions alone: every slice of wire-ready content is clean inside, so only a new piece, or a CR, LF or
    dot where two pieces meet, can break it. Each of the scans this saves reads the whole copy (issue 8
    profile: three per decorated 20 KB copy, ~60 µs)."""
    pieces: list[bytes] = []
    pos = 0
    for start, end, data in edits:
        pieces += (raw[pos:start], data)
        pos = end
    pieces.append(raw[pos:])
    joined = b"".join(pieces)
    if type(raw) is WireReady and _joins_clean(pieces):
        return WireReady(joined)
    return joined


def _joins_clean(pieces: list[bytes]) -> bool:
    """Whether `pieces` (wire-ready slices at even indexes, new data at odd ones) join into wire-ready
    content."""
    last = b""  # the last byte so far
    for index, piece in enumerate(pieces):
        if not piece:
            continue
        new_and_unchecked = index % 2 and type(piece) is not CleanLines
        if new_and_unchecked and (starts_a_line_with_dot(piece) or not crlf_only(piece)):
            return False
        first = piece[:1]
        # A CR must be followed by an LF and an LF must follow a CR (RFC 5321 §2.3.8); a line must not
        # start with a dot (§4.5.2).
        if (last == b"\r") != (first == b"\n") or (first == b"." and last in (b"", b"\n")):
            return False
        last = piece[-1:]
    return last == b"\n"


def prepend_headers(raw: bytes, lines: list[bytes]) -> bytes:
    """`lines` (each a complete header line ending in CRLF) before the first original header line."""
    return splice(raw, [(0, 0, b"".join(lines))])


def remove_header_fields(raw: bytes, drop: Callable[[bytes, bytes], bool]) -> bytes:
    """Remove top-level header fields (with their folded continuation lines) for which
    drop(lowercased_name, raw_value_bytes) is true; every other byte unchanged."""
    hend, _body = _header_end(raw, 0, len(raw), len(raw) + 1)
    fields, _broken = _parse_fields(raw, 0, hend)
    return splice(
        raw,
        [(f.start, f.end, b"") for f in fields if drop(f.name, raw[f.value_start : f.end].rstrip(b"\r\n"))],
    )
