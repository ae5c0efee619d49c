"""HTML → the text a reader sees, for matching rules against HTML mail.

Regular expressions rather than html.parser: html.parser costs ~1 ms for a 6 KB mail (a Python call per
tag), over the whole detection budget; these substitutions run in C and take a tenth of that. Detection
needs the words a reader sees, not a DOM, and every miss here only lowers recall of one phrase.
"""

from __future__ import annotations

import html
import re

_FLAGS = re.IGNORECASE | re.DOTALL
# A comment ends at "-->" or "--!>", or at once for "<!-->" and "<!--->", which are whole, empty comments
# (HTML §13.2.5.43-44, .52); read to the next "-->", they hid the text between.
_COMMENT = re.compile(r"<!--(?:-?>|.*?--!?>|.*)|<!\[CDATA\[.*?\]\]>|<![^>]*>|<\?[^>]*>", re.DOTALL)
# Never rendered in the body. <title> is left out too: it is often a template name, not content. Not <head>
# as a whole: its end tag may be left out (HTML §13.2.6.4.4, the first body content closes it), and read to
# a </head> that never comes it took the whole mail with it; what it may hold is these elements or tags
# without text (meta, link, base).
_INVISIBLE = re.compile(r"<(title|script|style|template|noscript|xml)\b[^>]*>.*?(?:</\1\s*>|$)", _FLAGS)
# Quoted reply history: every client wraps it in <blockquote> (removed innermost first, so nesting works).
_BLOCKQUOTE = re.compile(r"<blockquote\b[^>]*>(?:(?!<blockquote\b).)*?(?:</blockquote\s*>|$)", _FLAGS)
# Gmail, Thunderbird and Yahoo mark the quoted part; it runs to the end of the message.
_QUOTE_START = re.compile(
    r"<(?:div|span)\b[^>]*class\s*=\s*[\"']?[^\"'>]*(?:gmail_quote|moz-cite-prefix|yahoo_quoted).*", _FLAGS
)
# Pre-header text hidden with CSS is not something the applicant reads. The element runs to its own end
# tag, not to the first one of its name: a hidden <div> that holds a <div> ended at the inner </div>, and
# the hidden text after it was read (found by review). _drop_hidden counts the nesting.
_HIDDEN = re.compile(r"<([a-zA-Z][^\s/>]*+)[^>]*style\s*=\s*[\"'][^\"']*display\s*:\s*none[^>]*>", _FLAGS)
# From a tag to the next tag of the same name, start or end tag (group 2; group 3 is "/" for an end tag).
# The backreference compares case-insensitively, as tag names are; one match is one C scan.
_NEXT_SAME_NAME = re.compile(r"</?([a-zA-Z][^\s/>]*+)[^>]*>.*?(<(/?)\1(?=[\s/>])[^>]*>)", _FLAGS)
# A start tag of one of these closes an open element of the same name (HTML §13.2.6.4.7): they do not nest,
# and counting them, a hidden "<p>…<p>…</p>" would hide the rest of the mail. They end at the first end tag.
_NOT_NESTING = frozenset(
    {"a", "button", "dd", "dt", "form", "li", "nobr", "option", "optgroup", "p", "rb", "rp", "rt", "rtc"}
    | {"tbody", "td", "tfoot", "th", "thead", "tr"}
)
# Void elements have no content and no end tag (HTML §13.1.2): a hidden one is its tag alone. Read to an end
# tag that never comes, a hidden tracking pixel (<img style="display:none">) hid the rest of the mail.
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track"}
    | {"wbr"}
)
_BLOCK = re.compile(
    r"</?(?:address|article|aside|blockquote|br|dd|div|dl|dt|fieldset|figure|footer|form|h[1-6]|header|hr|"
    r"li|main|nav|ol|p|pre|section|table|tbody|td|tfoot|th|thead|tr|ul)\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>",
    re.IGNORECASE,
)
_TAG = re.compile(r"</?[a-zA-Z][^\s/>]*(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")


def html_to_text(source: str) -> str:
    """Visible text of `source`: entities decoded, block elements and <br> as line breaks; head, title,
    script, style, comments, hidden elements and quoted history (<blockquote>, Gmail's quote) left out."""
    text = _COMMENT.sub("", source)
    text = _INVISIBLE.sub("", text)
    while True:
        shorter = _BLOCKQUOTE.sub("\n", text)
        if shorter == text:
            break
        text = shorter
    text = _QUOTE_START.sub("", text)
    text = _drop_hidden(text)
    text = _BLOCK.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def _drop_hidden(text: str) -> str:
    """`text` without its display:none elements, each up to its own end tag (or the end, if it has none)."""
    found = _HIDDEN.search(text)
    if found is None:
        return text
    kept: list[str] = []
    pos = 0
    while found is not None:
        kept.append(text[pos : found.start()])
        name = found.group(1).lower()
        if name in _VOID:
            pos = found.end()
            found = _HIDDEN.search(text, pos)
            continue
        nests = name not in _NOT_NESTING
        depth = 1
        at = found.start()
        pos = len(text)  # never closed: hidden to the end, as a browser shows it
        while (step := _NEXT_SAME_NAME.match(text, at)) is not None:
            at = step.start(2)
            if step.group(3):
                depth -= 1
                if not depth:
                    pos = step.end()
                    break
            elif nests:
                depth += 1
        found = _HIDDEN.search(text, pos)
    kept.append(text[pos:])
    return "".join(kept)
