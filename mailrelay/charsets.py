"""MIME charset names → strict decoders and footer encoders, with a CP50221-compatible ISO-2022-JP decoder."""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

ESC = 0x1B

# ISO-2022-JP escape sequences (RFC 1468 §2, plus the CP50221 half-width kana set ESC ( I and the
# JIS X 0208-1990 announcer ESC & @, which only precedes ESC $ B and changes nothing).
_ESCAPES: dict[bytes, str] = {
    b"\x1b(B": "ascii",
    b"\x1b(J": "roman",
    b"\x1b(I": "kana",
    b"\x1b$@": "jis",
    b"\x1b$B": "jis",
    b"\x1b&@": "",
}
_ESCAPE_RE = re.compile(rb"\x1b(?:\(B|\(J|\(I|\$@|\$B|&@)")
JIS_ESCAPE_RE = re.compile(rb"\x1b(?:\$[@B]|\([BJI])")

# cp932 maps six JIS X 0208 cells to "Windows" code points; ISO-2022-JP (RFC 1468, and Python's
# iso2022_jp) maps them to the JIS ones. We decode to the JIS ones so that text we encoded with
# iso2022_jp reads back identically, whichever decoder path ran.
_CP932_TO_JIS = str.maketrans(
    {0xFF5E: 0x301C, 0x2225: 0x2016, 0xFF0D: 0x2212, 0xFFE0: 0x00A2, 0xFFE1: 0x00A3, 0xFFE2: 0x00AC}
)
_ROMAN = str.maketrans({0x5C: 0x00A5, 0x7E: 0x203E})


class CharsetError(ValueError):
    """Bytes that do not decode strictly in the charset."""


def _jis_pairs_to_sjis(seg: bytes) -> bytes:
    # JIS X 0208 row/cell → Shift_JIS lead/trail, the arithmetic of JIS X 0208:1997 Annex 1; cp932
    # then supplies NEC row 13 (①, ㈱) and the NEC-selected IBM extensions in rows 89–92 (髙).
    out = bytearray()
    for i in range(0, len(seg), 2):
        j1, j2 = seg[i], seg[i + 1]
        s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
        if j1 & 1:
            s2 = j2 + 0x1F
            if s2 >= 0x7F:
                s2 += 1
        else:
            s2 = j2 + 0x7E
        out += bytes((s1, s2))
    return bytes(out)


def _decode_jis_segment(seg: bytes, errors: str) -> str:
    text: list[str] = []
    start = 0
    # Line breaks inside a two-byte run are tolerated (Python's iso2022_jp does the same), but each
    # run between them must hold whole 0x21–0x7E pairs.
    for m in re.finditer(rb"\r?\n|\r", seg):
        text.append(_decode_pairs(seg[start : m.start()], errors))
        text.append(m.group().decode("ascii"))
        start = m.end()
    text.append(_decode_pairs(seg[start:], errors))
    return "".join(text)


def _decode_pairs(run: bytes, errors: str) -> str:
    if not run:
        return ""
    bad = len(run) % 2 or re.search(rb"[^\x21-\x7e]", run)
    if bad:
        if errors == "strict":
            raise CharsetError("invalid JIS X 0208 sequence")
        return "\ufffd" * ((len(run) + 1) // 2)
    try:
        return (b"\x1b$B" + run + b"\x1b(B").decode("iso2022_jp")
    except UnicodeDecodeError:
        pass
    try:
        return _jis_pairs_to_sjis(run).decode("cp932").translate(_CP932_TO_JIS)
    except UnicodeDecodeError:
        if errors == "strict":
            raise CharsetError("JIS X 0208 cell outside cp932") from None
    out: list[str] = []
    for i in range(0, len(run), 2):
        try:
            out.append(_jis_pairs_to_sjis(run[i : i + 2]).decode("cp932").translate(_CP932_TO_JIS))
        except UnicodeDecodeError:
            out.append("\ufffd")
    return "".join(out)


def decode_iso2022jp(data: bytes, errors: str = "strict") -> str:
    """ISO-2022-JP as Outlook and Windows write it (CP50220/CP50221): JIS X 0208 with NEC row 13 and
    IBM extensions, half-width kana via ESC ( I or SO/SI. `errors` is "strict" or "replace"."""
    if b"\x1b(I" not in data and b"\x0e" not in data:
        try:
            return data.decode("iso2022_jp")
        except UnicodeDecodeError:
            pass
    out: list[str] = []
    mode = "ascii"
    shifted = False
    pos = 0
    n = len(data)
    while pos < n:
        esc = data.find(b"\x1b", pos)
        end = n if esc < 0 else esc
        if end > pos:
            out.append(_decode_run(data[pos:end], mode, shifted, errors))
            last_so = data.rfind(b"\x0e", pos, end)
            last_si = data.rfind(b"\x0f", pos, end)
            if last_so > last_si:
                shifted = True
            elif last_si > last_so:
                shifted = False
        if esc < 0:
            break
        m = _ESCAPE_RE.match(data, esc)
        if m is None:
            if errors == "strict":
                raise CharsetError("unknown ISO-2022-JP escape sequence")
            out.append("\ufffd")
            pos = esc + 1
            continue
        new = _ESCAPES[m.group()]
        if new:
            mode = new
        pos = m.end()
    return "".join(out)


def _decode_run(run: bytes, mode: str, shifted: bool, errors: str) -> str:
    if mode == "jis":
        return _decode_jis_segment(run, errors)
    out: list[str] = []
    kana = mode == "kana"
    for piece in re.split(rb"([\x0e\x0f])", run):
        if piece == b"\x0e":
            shifted = True
            continue
        if piece == b"\x0f":
            shifted = False
            continue
        if not piece:
            continue
        if re.search(rb"[\x80-\xff]", piece):
            if errors == "strict":
                raise CharsetError("8-bit byte in ISO-2022-JP")
            piece = bytes(b if b < 0x80 else 0x3F for b in piece)
        if kana or shifted:
            # CP50221: kana cells 0x21–0x5F are the JIS X 0201 katakana 0xA1–0xDF; cp932 holds them.
            text = []
            for line in re.split(rb"(\r?\n|\r)", piece):
                if line in (b"\r\n", b"\n", b"\r"):
                    text.append(line.decode("ascii"))
                elif re.search(rb"[^\x21-\x5f]", line):
                    if errors == "strict":
                        raise CharsetError("invalid half-width kana")
                    text.append("\ufffd" * len(line))
                else:
                    text.append(bytes(b + 0x80 for b in line).decode("cp932"))
            out.append("".join(text))
        elif mode == "roman":
            out.append(piece.decode("ascii").translate(_ROMAN))
        else:
            out.append(piece.decode("ascii"))
    return "".join(out)


def _last_escape(data: bytes) -> bytes | None:
    """The last ISO-2022-JP escape sequence of `data`, or None."""
    # Every escape starts with ESC and holds no other, so the last match is at the last ESC that starts
    # one: look back from the end instead of scanning a whole part (~35 µs per 10 KB, issue 8 profile).
    # Many stray ESC bytes are left to the regex, which skips them in C.
    last: bytes | None = None
    end = len(data)
    for _try in range(16):
        esc = data.rfind(b"\x1b", 0, end)
        if esc < 0:
            break
        m = JIS_ESCAPE_RE.match(data, esc)
        if m is not None:
            return m.group()
        end = esc
    else:
        for m in JIS_ESCAPE_RE.finditer(data, 0, end):
            last = m.group()
    return last


def _shifted_out(data: bytes) -> bool:
    """Whether `data` ends inside an SO … SI run of half-width kana (CP50221)."""
    return data.rfind(b"\x0e") > data.rfind(b"\x0f")


def back_to_ascii(data: bytes) -> bytes:
    """What to write after ISO-2022-JP `data` so that ASCII follows it: SI if an SO run of half-width kana
    is open (an escape does not end it), then ESC ( B unless ASCII is already designated. JIS-Roman is not
    enough for text we add: it reads "~" as an overline and "\\" as a yen sign (RFC 1468 §3, JIS X 0201)."""
    shift_in = b"\x0f" if _shifted_out(data) else b""
    return shift_in + (b"" if _last_escape(data) in (None, b"\x1b(B") else b"\x1b(B")


def ascii_mode_view(data: bytes) -> bytes:
    """`data` with every byte outside ASCII/JIS-Roman mode replaced by NUL, same length: searching it for
    `</body>` cannot match inside a two-byte run (RFC 1468: only ASCII-mode bytes are ASCII)."""
    if b"\x1b" not in data and b"\x0e" not in data:
        return data
    view = bytearray(data)
    mode_ascii = True
    pos = 0
    n = len(data)
    while pos < n:
        esc = data.find(b"\x1b", pos)
        end = n if esc < 0 else esc
        if not mode_ascii:
            view[pos:end] = bytes(end - pos)
        if esc < 0:
            break
        m = _ESCAPE_RE.match(data, esc)
        if m is None:
            view[esc] = 0
            pos = esc + 1
            continue
        kind = _ESCAPES[m.group()]
        if kind:
            mode_ascii = kind in ("ascii", "roman")
        view[esc : m.end()] = bytes(m.end() - esc)
        pos = m.end()
    # SO … SI kana: mask too.
    for m in re.finditer(rb"\x0e[^\x0f]*\x0f?", bytes(view)):
        view[m.start() : m.end()] = bytes(m.end() - m.start())
    return bytes(view)


# Characters that NFKC leaves unencodable in the JIS charsets, with the nearest JIS X 0208 form.
TRANSLIT: dict[str, str] = {
    "髙": "高",
    "﨑": "崎",
    "德": "徳",
    "瀨": "瀬",
    "塚": "塚",
    "～": "〜",
    "−": "－",
    "‖": "∥",
    "¦": "|",
    "—": "―",
    "–": "-",
    "‘": "'",
    "’": "'",
    "“": '"',
    "”": '"',
    "…": "...",
    "€": "EUR",
    "©": "(C)",
    "®": "(R)",
    "™": "TM",
    "•": "・",
    "\u00a0": " ",
}


@dataclass(frozen=True)
class Charset:
    """How one MIME charset is read and written."""

    label: str  # the lower-cased MIME name as declared
    codec: str  # the Python codec the footer is encoded with
    iso2022: bool  # only ASCII-mode segments may be searched as bytes
    decoder: Callable[[bytes, str], str]

    def decode(self, data: bytes, errors: str = "strict") -> str:
        """Decode; errors="strict" raises CharsetError, "replace" never raises."""
        try:
            return self.decoder(data, errors)
        except (UnicodeDecodeError, CharsetError) as exc:
            if errors == "strict":
                raise CharsetError(str(exc)) from None
            return data.decode("latin-1")

    def can_encode(self, text: str) -> bool:
        try:
            text.encode(self.codec)
        except UnicodeEncodeError:
            return False
        return True

    def encode_text(self, text: str) -> bytes:
        """Plain text: each character as is, else its NFKC form, else TRANSLIT, else dropped (issue 3:
        never `?`, never mojibake)."""
        if self.can_encode(text):
            return text.encode(self.codec)
        out: list[str] = []
        for ch in text:
            if self.can_encode(ch):
                out.append(ch)
                continue
            for alt in (unicodedata.normalize("NFKC", ch), TRANSLIT.get(ch, "")):
                if alt and self.can_encode(alt):
                    out.append(alt)
                    break
        return "".join(out).encode(self.codec)

    def encode_html(self, markup: str) -> bytes:
        """HTML markup: unencodable characters become numeric character references."""
        return markup.encode(self.codec, "xmlcharrefreplace")


def _codec_decoder(name: str) -> Callable[[bytes, str], str]:
    def decode(data: bytes, errors: str) -> str:
        return data.decode(name, errors)

    return decode


def _euc_decoder(data: bytes, errors: str) -> str:
    # euc_jp first (what most senders mean); euc_jis_2004 holds row 13 and JIS X 0213 extras.
    try:
        return data.decode("euc_jp")
    except UnicodeDecodeError:
        return data.decode("euc_jis_2004", errors)


def _iso2022_decoder(data: bytes, errors: str) -> str:
    return decode_iso2022jp(data, errors)


_ALIASES: dict[str, str] = {
    "shift_jis": "sjis",
    "shift-jis": "sjis",
    "sjis": "sjis",
    "x-sjis": "sjis",
    "ms_kanji": "sjis",
    "csshiftjis": "sjis",
    "windows-31j": "cp932",
    "cp932": "cp932",
    "ms932": "cp932",
    "euc-jp": "euc",
    "eucjp": "euc",
    "x-euc-jp": "euc",
    "cseucpkdfmtjapanese": "euc",
    "iso-2022-jp": "jis",
    "csiso2022jp": "jis",
    "iso-2022-jp-1": "jis",
    "gb2312": "gbk",
    "ks_c_5601-1987": "cp949",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "ansi_x3.4-1968": "ascii",
}

# Charsets whose encoded form is not ASCII-transparent: byte search is unsafe and appending is unsafe.
_UNSAFE = {"utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le", "utf_7"}


def lookup(label: str) -> Charset | None:
    """The Charset for a MIME charset label, or None if we cannot handle it safely."""
    key = label.strip().strip('"').lower()
    kind = _ALIASES.get(key)
    if kind == "jis":
        return Charset(key, "iso2022_jp", True, _iso2022_decoder)
    if kind == "sjis":
        # Decode as cp932 (a superset senders really use); write the footer in strict Shift_JIS so that
        # every Shift_JIS reader can read it too.
        return Charset(key, "shift_jis", False, _codec_decoder("cp932"))
    if kind == "cp932":
        return Charset(key, "cp932", False, _codec_decoder("cp932"))
    if kind == "euc":
        return Charset(key, "euc_jp", False, _euc_decoder)
    if kind is not None:
        return Charset(key, kind, False, _codec_decoder(kind))
    try:
        info = codecs.lookup(key)
    except (LookupError, ValueError):
        return None
    if info.name in _UNSAFE or info.name.startswith("iso2022") or not _ascii_transparent(info.name):
        return None
    return Charset(key, info.name, False, _codec_decoder(info.name))


def _ascii_transparent(codec: str) -> bool:
    probe = bytes(range(0x20, 0x7F))
    try:
        return probe.decode(codec) == probe.decode("ascii") and "<a>".encode(codec) == b"<a>"
    except (UnicodeError, LookupError):
        return False


def _must(label: str) -> Charset:
    found = lookup(label)
    assert found is not None
    return found


ASCII = _must("us-ascii")
UTF8 = _must("utf-8")
