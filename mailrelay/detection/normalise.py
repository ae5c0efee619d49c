"""Text normalisation shared by rule phrases (at load) and messages (once per message)."""

from __future__ import annotations

import re
import unicodedata

# Characters of scripts written without spaces. A line break or space between two of them is layout (a
# hard-wrapped line, a <br>, a full-width space for indentation), never a word boundary, so it is removed.
_CJK = (
    "\u3000-\u303f"  # CJK symbols and punctuation (、。「」)
    "\u3040-\u309f"  # hiragana
    "\u30a0-\u30ff"  # katakana (half-width kana are folded here by NFKC first)
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff01-\uff60"  # full-width forms that survive NFKC
)
# A space between two such characters, once whitespace runs are single spaces. The pattern starts with the
# space so that re skips from space to space; a leading lookbehind would be tried at every character, which
# cost ~85 µs on 2,000 characters of Japanese (issue 8).
_CJK_SPACE = re.compile(f" (?<=[{_CJK}] )(?=[{_CJK}])")
# Typographic quotes and dashes that NFKC keeps: "won’t" must match a rule written as "won't".
_FOLD = str.maketrans({"‘": "'", "’": "'", "‚": "'", "′": "'", "“": '"', "”": '"', "‐": "-", "‑": "-"})
# str.translate with a dict costs ~70 ns per character of Japanese text (140 µs for 2,000); most messages
# have none of these characters, and a regex finds that in a few µs (issue 8).
_FOLDABLE = re.compile("[‘’‚′“”‐‑]")
# Invisible characters that split a phrase without being seen: zero-width space/joiners, word joiner, BOM,
# soft hyphen; C0 controls other than whitespace (NUL is also our subject/body separator).
_INVISIBLE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff\x00-\x08\x0b\x0e-\x1f\x7f]")
# Either kind above. Most messages have neither, and one search says so: a search or a sub over 3,000
# characters of Japanese costs ~15 µs each, so one search replaces two passes (issue 8).
_INVISIBLE_OR_FOLDABLE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff\x00-\x08\x0b\x0e-\x1f\x7f‘’‚′“”‐‑]")

# Where quoted reply history starts: what follows is an earlier message, not what this one says.
_HISTORY = tuple(
    re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    for pattern in (
        r"^\s*-{2,}\s*(?:original message|元のメッセージ|オリジナルメッセージ)\s*-{2,}\s*$",
        r"^\s*on\b.{0,300}\bwrote:\s*$",
        # Gmail wraps a long attribution as "On … <addr>" / "wrote:" on two lines.
        r"^\s*on\b.{0,300}\n\s*.{0,80}\bwrote:\s*$",
        # Japanese Gmail: "2026年11月16日(月) 10:00 山田 <yamada@example.com>:".
        r"^\s*\d{4}年\s*\d{1,2}月\s*\d{1,2}日.{0,200}(?:<[^<>\s]+@[^<>\s]+>\s*[:：]|wrote:|書きました[:：]?)\s*$",
        r"^\s*\d{4}/\d{1,2}/\d{1,2}.{0,200}(?:wrote:|書きました[:：]?)\s*$",
        # Outlook's header block of the message replied to.
        r"^\s*(?:from|差出人)\s*[:：].*\n\s*(?:sent|date|送信日時|日時)\s*[:：]",
    )
)
# Each history pattern needs one of these (case as clients write them).
_HISTORY_CUES = (
    "wrote",
    "Wrote",
    "WROTE",
    "-----",
    "書きました",
    "差出人",
    "From:",
    "FROM:",
    "from:",
    ":\n",
    ":\r",
    "：\n",
    "：\r",
)
# One regex pass instead of one `in` per cue: half the time on 3,000 characters (issue 8 profile).
_HISTORY_CUE = re.compile("|".join(map(re.escape, _HISTORY_CUES)))
_QUOTED_LINE = re.compile(r"^[ \t]*[>＞].*$\n?", re.MULTILINE)


def normalise(text: str) -> str:
    """NFKC (full/half width folded), case-folded, typographic quotes folded, invisible characters dropped,
    whitespace between CJK characters removed and every other whitespace run collapsed to one space."""
    text = unicodedata.normalize("NFKC", text)
    if _INVISIBLE_OR_FOLDABLE.search(text):
        text = _INVISIBLE.sub("", text)
        if _FOLDABLE.search(text):
            text = text.translate(_FOLD)
    # str.split() splits on exactly re's \s (both are Py_UNICODE_ISSPACE), in C: runs collapse, ends strip.
    text = " ".join(text.casefold().split())
    return _CJK_SPACE.sub("", text) if " " in text else text


# Whitespace to str.split() that normalise() drops as invisible instead of making it a space (VT, FS-US).
# Five `in` tests, not a regex: re searches 2,800 characters of Japanese in ~30 µs, `in` in ~0.3.
_DROPPED_WHITESPACE = "\x0b\x1c\x1d\x1e\x1f"


def same_normalised(first: str, second: str) -> bool:
    """True only if normalise(first) == normalise(second) is certain without computing either: the same
    words in the same order, apart from which whitespace separates them. normalise() keeps no trace of
    which (every whitespace character is one in NFKC too and composes with nothing), except for the ones
    it drops, so texts holding those are not judged here. A False says nothing."""
    return first.split() == second.split() and not any(
        char in first or char in second for char in _DROPPED_WHITESPACE
    )


def strip_quoted(text: str) -> str:
    """The text without quoted reply history: "> " lines, and everything after an attribution line
    ("On … wrote:", "-----Original Message-----", an Outlook From:/Sent: block) is dropped."""
    cut = len(text)
    # The patterns scan every line start; most messages have no history, so look for a cue first.
    if _HISTORY_CUE.search(text) is None:
        return _QUOTED_LINE.sub("", text) if any(c in text for c in ">＞") else text
    for pattern in _HISTORY:
        found = pattern.search(text)
        if found:
            cut = min(cut, found.start())
    return _QUOTED_LINE.sub("", text[:cut])
