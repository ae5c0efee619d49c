"""Detection unit tests: normalisation, HTML reduction, quoted history, rule validation, and evaluation."""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailrelay.detection import (
    DetectionInput,
    RuleSet,
    html_to_text,
    load_rules,
    message_texts,
    normalise,
    strip_quoted,
)
from mailrelay.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def item(
    plain: str = "",
    *,
    subject: str = "",
    html: str = "",
    headers: dict[str, list[str]] | None = None,
    sender: str = "recruit@acme.example.jp",
    tenant: str | None = "acme",
) -> DetectionInput:
    found = {k.lower(): v for k, v in (headers or {}).items()}
    return DetectionInput(subject, plain, html, lambda name: found.get(name.lower(), []), sender, tenant)


def rules_from(
    tmp_path: Path, text: str, name: str = "rules.toml", tenants: dict[str, set[str]] | None = None
) -> RuleSet:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_rules([path], tenants)


BASIC = """
[[rule]]
id = "ja-basic"
description = "basic"
mode = "decorate"
footer = "ja"
require = [["見送らせていただ"], ["選考"]]
exclude = ["内定"]
"""

# -- normalisation -------------------------------------------------------------------------------------------


def test_normalise_folds_width_and_case() -> None:
    assert normalise("ＳＥ職　Regret  TO\tinform") == "se職 regret to inform"


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(
            ["‘", "’", "‚", "′", "“", "”", "‐", "‑", "'", "-", "Ａ", "ｶﾞ", " ", "\n", "山", "a", "\u200b"]
        )
    )
)
def test_normalise_folds_quotes_and_dashes_as_the_plain_translation(pieces: list[str]) -> None:
    """normalise() translates only when a foldable character is present (issue 8); same result as always."""
    module = importlib.import_module("mailrelay.detection.normalise")
    text = "".join(pieces)
    folded = module._INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(module._FOLD).casefold()
    folded = SPACES.sub(" ", CJK_GAP.sub("", folded)).strip()
    assert normalise(text) == folded
    assert set(module._FOLD) == {ord(c) for c in re.findall(".", module._FOLDABLE.pattern[1:-1])}


# The whitespace steps as first written (issue 3), before issue 8 made them cheaper.
CJK = importlib.import_module("mailrelay.detection.normalise")._CJK
CJK_GAP = re.compile(f"(?<=[{CJK}])\\s+(?=[{CJK}])")
SPACES = re.compile(r"\s+")
EVERY_SPACE = [chr(c) for c in range(0x110000) if re.match(r"\s", chr(c))]


@settings(max_examples=1000)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(EVERY_SPACE),
            st.sampled_from(["山", "見", "あ", "ア", "ｶ", "、", "Ａ", "a", "B", "1", "\u200b", "\x00", "’"]),
            st.characters(),
        )
    )
)
def test_normalise_collapses_whitespace_as_the_regular_expressions_did(pieces: list[str]) -> None:
    """Every whitespace character re knows, between CJK, Latin and anything else (issue 8)."""
    module = importlib.import_module("mailrelay.detection.normalise")
    text = "".join(pieces)
    folded = module._INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(module._FOLD).casefold()
    assert normalise(text) == SPACES.sub(" ", CJK_GAP.sub("", folded)).strip()


# Characters that test what normalise() does around whitespace: CJK, combining marks (NFKC composes),
# characters NFKC maps to a space plus a mark, invisible ones, and the whitespace it drops (VT, FS-US).
AROUND_SPACES = [
    "山",
    "あ",
    "ｶ",
    "ﾞ",
    "a",
    "e",
    "\u0301",
    "\u0308",
    "\u00a8",
    "\u200b",
    "\x00",
    "\x1c",
    "\x0b",
    "’",
]
WORDS = st.lists(st.one_of(st.sampled_from(AROUND_SPACES), st.characters()), max_size=6).map("".join)
GAPS = st.lists(st.sampled_from(EVERY_SPACE), min_size=1, max_size=3).map("".join)


@settings(max_examples=1000)
@example([("a", "\x1c", " "), ("b", " ", "\n")], "", "")
@example([("採用", "\u3000", "\r\n"), ("\u0301見送り", "\n", " "), ("\u00a8", "\t", "\x85")], " ", "")
@given(st.lists(st.tuples(WORDS, GAPS, GAPS), max_size=8), GAPS, GAPS)
def test_texts_judged_alike_before_normalising_normalise_alike(
    pieces: list[tuple[str, str, str]], lead: str, trail: str
) -> None:
    """Issue 8: the HTML twin of a plain part is recognised before it is normalised. Two texts of the same
    words with different whitespace between them: whenever they are judged alike, they normalise alike."""
    module = importlib.import_module("mailrelay.detection.normalise")
    first = "".join(word + gap for word, gap, _other in pieces)
    second = lead + "".join(word + other for word, _gap, other in pieces) + trail
    if module.same_normalised(first, second):
        assert normalise(first) == normalise(second)
    dropped = set(module._DROPPED_WHITESPACE)
    if not any(dropped & set(word) for word, _gap, _other in pieces):
        assert module.same_normalised(first, second) is not bool(dropped & set(first + second))


@settings(max_examples=500)
@given(WORDS, WORDS)
def test_different_texts_judged_alike_normalise_alike(first: str, second: str) -> None:
    module = importlib.import_module("mailrelay.detection.normalise")
    if module.same_normalised(first, second):
        assert normalise(first) == normalise(second)


def test_normalise_folds_half_width_kana_with_voiced_marks() -> None:
    assert normalise("ｴﾝｼﾞﾆｱのﾎﾟｼﾞｼｮﾝ") == "エンジニアのポジション"


def test_normalise_joins_a_hard_wrapped_japanese_phrase() -> None:
    assert normalise("採用を見送らせて\r\n  いただく") == "採用を見送らせていただく"
    assert normalise("今回は　採用を　見送らせていただきます") == "今回は採用を見送らせていただきます"


def test_normalise_keeps_one_space_between_latin_words_and_across_scripts() -> None:
    assert normalise("regret to\ninform you") == "regret to inform you"
    assert normalise("SE 職") == "se 職"


def test_normalise_drops_invisible_characters_and_folds_typographic_quotes() -> None:
    assert normalise("見送\u200bらせて") == "見送らせて"
    assert normalise("We won\u2019t be") == "we won't be"


def test_html_line_breaks_inside_a_japanese_phrase_still_match() -> None:
    texts = message_texts(item(html="<p>採用を見送らせて<br>いただきます。</p>"))
    assert "採用を見送らせていただきます" in texts.body


def test_alternative_parts_that_say_the_same_are_searched_once() -> None:
    """Issue 8: the HTML twin of the plain part adds nothing to search; a different HTML part is kept."""
    same = message_texts(
        item(plain="採用を見送らせて\nいただきます。", html="<p>採用を見送らせて<br>いただきます。</p>")
    )
    assert same.body == "採用を見送らせていただきます。"
    other = message_texts(
        item(plain="ご応募ありがとうございました。", html="<p>採用を見送らせていただきます。</p>")
    )
    assert other.body == "ご応募ありがとうございました。\x00採用を見送らせていただきます。"


def test_html_to_text_keeps_only_what_a_reader_sees() -> None:
    source = (
        "<html><head><title>Template 7</title><style>p {color: red}</style></head><body>"
        '<span style="display: none">preheader</span><script>var x = "hidden";</script>'
        "<p>Tom &amp; Jerry&nbsp;&#x3042;</p><!-- a comment --><div>next</div></body></html>"
    )
    text = html_to_text(source)
    assert "Tom & Jerry\xa0あ" in text
    assert "next" in text
    for hidden in ("Template 7", "color", "preheader", "hidden", "comment"):
        assert hidden not in text


@pytest.mark.parametrize(
    "hidden",
    [
        '<div style="display:none"><div>preheader</div> 内定のお知らせ</div>',
        '<div style="display: none; max-height: 0"><div><div>a</div>b</div> 内定のお知らせ</div>',
        '<DIV style="display:none"><div>a</DIV> 内定のお知らせ</Div>',
        '<table style="display:none"><tr><td><table><tr><td>a</table> 内定のお知らせ</td></tr></table>',
    ],
)
def test_html_hidden_element_is_left_out_up_to_its_own_end_tag(hidden: str) -> None:
    # Text hidden with CSS is not something the applicant reads: the element ends at its own end tag, not at
    # the end tag of an element of the same name nested in it (the text after that was read).
    source = f"<p>山田様</p>{hidden}<p>誠に残念ながら、今回は採用を見送らせていただきます。</p>"
    text = normalise(html_to_text(source))
    assert text == "山田様誠に残念ながら、今回は採用を見送らせていただきます。"


def test_a_nested_hidden_phrase_does_not_decide(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC)
    html = (
        '<div style="display:none"><div>選考結果のご連絡</div>内定のお知らせ</div>'
        "<p>選考の結果、誠に残念ながら見送らせていただきます。</p>"
    )
    assert rules.evaluate(item(html=html)).rejection


@pytest.mark.parametrize(
    ("hidden", "shown"),
    [
        # A <p> start tag closes an open <p> (HTML §13.2.6.4.7): paragraphs never nest, so the hidden one
        # ends at the first </p> as before, and the later paragraphs are read.
        ('<p style="display:none">preheader<p>Dear Alex,</p>', "we regret"),
        ('<li style="display:none">preheader<li>one</li>', "we regret"),
        # Never closed: hidden to the end, as before.
        ('<div style="display:none"><div>preheader</div>', ""),
    ],
)
def test_html_hidden_element_that_cannot_nest_or_is_not_closed(hidden: str, shown: str) -> None:
    assert normalise(html_to_text(f"{hidden}<p>We regret</p>")) == shown


@pytest.mark.parametrize(
    "pixel",
    [
        '<img src="https://ats.example/o.gif" width="1" height="1" style="display:none">',
        '<IMG style="display: none" src="o.gif" />',
        '<input type="hidden" style="display:none">',
        '<br style="display:none">',
    ],
)
def test_a_hidden_void_element_hides_only_its_tag(pixel: str) -> None:
    # A void element has no end tag (HTML §13.1.2): a hidden tracking pixel hid the rest of the mail.
    assert normalise(html_to_text(f"<p>Dear Alex,</p>{pixel}<p>We regret</p>")) == "dear alex, we regret"


def test_html_head_without_its_end_tag_does_not_hide_the_body() -> None:
    # HTML §13.2.6.4.4: </head> may be left out; the first content that cannot stand in <head> closes it.
    # Only its title, style, script and the like hold text, and those are left out one by one.
    source = (
        "<html><head><meta charset=utf-8><title>選考結果</title><style>p {color: red}</style>"
        "<body><p>誠に残念ながら、今回は採用を見送らせていただきます。</p></body></html>\n"
    )
    text = normalise(html_to_text(source))
    assert text == "誠に残念ながら、今回は採用を見送らせていただきます。"


@pytest.mark.parametrize("comment", ["<!-->", "<!--->", "<!-- note --!>"])
def test_html_text_after_a_closed_comment_is_read(comment: str) -> None:
    # HTML §13.2.5.43-44, .52: "<!-->" and "<!--->" are whole, empty comments and "--!>" closes one; the text
    # after them is shown, up to any later comment.
    source = f"<p>山田様</p>{comment}<p>誠に残念ながら、今回は採用を見送らせていただきます。</p><!-- end -->"
    text = normalise(html_to_text(source))
    assert text == "山田様誠に残念ながら、今回は採用を見送らせていただきます。"


def test_html_quoted_history_is_left_out() -> None:
    source = "<p>Thanks!</p><blockquote>old<blockquote>older</blockquote>still old</blockquote><p>bye</p>"
    assert normalise(html_to_text(source)) == "thanks! bye"
    gmail = '<div>Thanks!</div><div class="gmail_quote">On Mon, Alex wrote:<div>regret</div></div>'
    assert normalise(html_to_text(gmail)) == "thanks!"


@pytest.mark.parametrize(
    "history",
    [
        "> 採用を見送らせていただきます\n> 以上\n",
        "On Mon, 1 Jun 2026 at 10:00, Acme <hr@acme.example> wrote:\nWe regret to inform you\n",
        "On Mon, 1 Jun 2026 at 10:00, Acme Recruiting\n<hr@acme.example> wrote:\nWe regret\n",
        "-----Original Message-----\nFrom: hr@acme.example\nWe regret to inform you\n",
        "2026年6月1日(月) 10:00 山田 <yamada@example.com>:\n採用を見送らせていただきます\n",
        "差出人: 人事部\n送信日時: 2026年6月1日 10:00\n採用を見送らせていただきます\n",
    ],
)
def test_quoted_reply_history_is_ignored(history: str) -> None:
    assert strip_quoted("ありがとうございます。\n" + history).strip() == "ありがとうございます。"


def test_a_date_line_in_the_body_is_not_taken_for_history() -> None:
    text = "2026年6月1日付の応募書類について：\n採用を見送らせていただきます\n"
    assert strip_quoted(text) == text


# -- validation ----------------------------------------------------------------------------------------------

GOOD = 'id = "r1"\ndescription = "d"\nmode = "decorate"\nfooter = "ja"\nrequire = [["a"]]\n'


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("[[rule]]\n" + GOOD + "colour = 1\n", "r1 › colour", "unknown key (allowed: "),
        ('[[rule]]\nid = 3\ndescription = "d"\n', "rule #1 › id", "must be a string, not an integer"),
        ('[[rule]]\nid = "Bad Id"\n', "Bad Id › id", "use 1-64 characters a-z, 0-9, '.', '_', '-'"),
        (
            "[[rule]]\n" + GOOD.replace('mode = "decorate"', 'mode = "loud"'),
            "r1 › mode",
            "unknown mode 'loud'",
        ),
        (
            "[[rule]]\n" + GOOD.replace('mode = "decorate"\n', ""),
            "r1 › mode",
            'missing ("decorate" or "shadow")',
        ),
        ("[[rule]]\n" + GOOD.replace('[["a"]]', "[]"), "r1 › require", "must not be an empty list"),
        ("[[rule]]\n" + GOOD.replace('[["a"]]', '[["a"], []]'), "r1 › require", "group 2 is empty"),
        (
            "[[rule]]\n" + GOOD.replace('[["a"]]', '[["a", " "]]'),
            "r1 › require",
            "group 1 contains an empty string",
        ),
        ("[[rule]]\n" + GOOD.replace('[["a"]]', '["a"]'), "r1 › require", "must be a list of phrase lists"),
        ("[[rule]]\n" + GOOD.replace('[["a"]]', '[["\u200b"]]'), "r1 › require", "is empty once normalised"),
        ("[[rule]]\n" + GOOD + "exclude = []\n", "r1 › exclude", "must not be an empty list"),
        ("[[rule]]\n" + GOOD + 'exclude = ["x", ""]\n', "r1 › exclude", "contains an empty string"),
        ("[[rule]]\n" + GOOD + 'look_in = ["subject", "footer"]\n', "r1 › look_in", "unknown place 'footer'"),
        ("[[rule]]\n" + GOOD + 'senders = ["hr"]\n', "r1 › senders", "'hr' is not an address or an @domain"),
        (
            "[[rule]]\n" + GOOD + "tenants = [1]\n",
            "r1 › tenants",
            "must be a list of strings, found an integer",
        ),
        ("[[rule]]\n" + GOOD + '[rule.header]\nname = "X-ATS"\n', "r1 › header.values", "missing"),
        (
            "[[rule]]\n" + GOOD + '[rule.header]\nname = "X ATS"\nvalues = ["r"]\n',
            "r1 › header.name",
            "not a header",
        ),
        (
            "[[rule]]\n" + GOOD + '[rule.header]\nname = "X-ATS"\nvalues = []\n',
            "r1 › header.values",
            "must not be",
        ),
        (
            "[[rule]]\n" + GOOD.replace('require = [["a"]]\n', ""),
            "r1 › require",
            "missing (a rule needs phrase",
        ),
        ("[[rule]]\n" + GOOD.replace('description = "d"\n', ""), "r1 › description", "missing (say what"),
        ("[defaults]\nvoice = 1\n[[rule]]\n" + GOOD, "defaults › voice", "unknown key (allowed: "),
        # A value in [defaults] is checked, and named, there, not as the first rule's (review 16).
        (
            '[defaults]\nlook_in = "subject"\n[[rule]]\n' + GOOD,
            "defaults › look_in",
            "must be a list of strings, not a string",
        ),
        ('[defaults]\nmode = "loud"\n[[rule]]\n' + GOOD, "defaults › mode", "unknown mode 'loud'"),
        # `$` matches before a final newline: these passed and the rule was never used (review 16).
        ("[[rule]]\n" + GOOD.replace('"r1"', '"r1\\n"'), "'r1\\n' › id", "use 1-64 characters"),
        (
            "[[rule]]\n" + GOOD + '[rule.header]\nname = "X-ATS-Status\\n"\nvalues = ["r"]\n',
            "r1 › header.name",
            "'X-ATS-Status\\n' is not a header field name",
        ),
        ("rules = 1\n", "rules", "unknown key (expected [[rule]] tables"),
    ],
)
def test_validation_errors_name_file_rule_and_field(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'rules.toml'} › {where}: "), message
    assert problem in message


def test_validation_error_exact_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, "[[rule]]\n" + GOOD.replace('mode = "decorate"', 'mode = "loud"'))
    assert (
        str(caught.value)
        == f'{tmp_path / "rules.toml"} › r1 › mode: unknown mode \'loud\' (use "decorate" or "shadow")'
    )


def test_unknown_footer_is_an_error_when_footers_are_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, "[[rule]]\n" + GOOD, tenants={"acme": {"en"}})
    assert str(caught.value) == f"{tmp_path / 'rules.toml'} › r1 › footer: unknown footer 'ja' (defined: en)"
    assert rules_from(tmp_path, "[[rule]]\n" + GOOD).ids == ("r1",)


def test_a_rule_naming_an_unknown_tenant_is_an_error(tmp_path: Path) -> None:
    """A typo in `tenants` would scope the rule to no tenant at all: it would never fire (review 09)."""
    tenants = {"a": {"ja"}, "b": {"ja"}}
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, "[[rule]]\n" + GOOD + 'tenants = ["a", "aa"]\n', tenants=tenants)
    assert (
        str(caught.value) == f"{tmp_path / 'rules.toml'} › r1 › tenants: unknown tenant 'aa' (defined: a, b)"
    )
    assert rules_from(tmp_path, "[[rule]]\n" + GOOD + 'tenants = ["a"]\n', tenants=tenants).ids == ("r1",)


@pytest.mark.parametrize(
    ("scope", "problem"),
    [
        ("", "tenant 'b' has no footer 'vip' (it has: ja; a rule without tenants applies to all)"),
        (
            'tenants = ["a", "b"]\n',
            "tenant 'b' has no footer 'vip' (it has: ja; listed in this rule's tenants)",
        ),
    ],
)
def test_a_footer_must_exist_for_every_tenant_the_rule_applies_to(
    tmp_path: Path, scope: str, problem: str
) -> None:
    """Checked per tenant, not against all tenants' footers together: tenant b's rejections would fail
    open at the footer stage (review 09)."""
    tenants = {"a": {"ja", "vip"}, "b": {"ja"}}
    rule = "[[rule]]\n" + GOOD.replace('footer = "ja"', 'footer = "vip"')
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, rule + scope, tenants=tenants)
    assert str(caught.value) == f"{tmp_path / 'rules.toml'} › r1 › footer: {problem}"
    assert rules_from(tmp_path, rule + 'tenants = ["a"]\n', tenants=tenants).ids == ("r1",)
    # A default footer only some tenants have is fine for rules scoped to them; one no tenant has is not.
    scoped = '[defaults]\nfooter = "vip"\n[[rule]]\n' + GOOD.replace('footer = "ja"\n', 'tenants = ["a"]\n')
    assert rules_from(tmp_path, scoped, tenants=tenants).ids == ("r1",)
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, scoped.replace('"vip"', '"gold"', 1), tenants=tenants)
    assert str(caught.value) == (
        f"{tmp_path / 'rules.toml'} › defaults › footer: unknown footer 'gold' (defined: ja, vip)"
    )


def test_toml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, '[[rule]]\nid = "r1"\ndescription "no equals sign"\n')
    assert str(caught.value).startswith(f"{tmp_path / 'rules.toml'} › line 3: invalid TOML: ")
    assert "(column" in str(caught.value)


def test_duplicate_id_across_files_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[[rule]]\n" + GOOD, encoding="utf-8")
    (tmp_path / "b.toml").write_text("[[rule]]\n" + GOOD, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path / "b.toml", tmp_path / "a.toml"])
    assert (
        str(caught.value)
        == f"{tmp_path / 'b.toml'} › r1 › id: duplicate id (first defined in {tmp_path / 'a.toml'})"
    )


def test_a_file_without_rules_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(tmp_path, "# nothing yet\n")
    assert str(caught.value) == f"{tmp_path / 'rules.toml'}: no [[rule]] table"


def test_shipped_rules_load_with_the_shipped_footers() -> None:
    rules = load_rules(sorted((REPO / "rules").glob("*.toml")), {"acme": {"ja", "en"}})
    assert "ja-rejection" in rules.ids and "en-rejection" in rules.ids


# -- evaluation ----------------------------------------------------------------------------------------------


def test_every_group_must_hit_and_fired_lists_phrases_as_written(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC)
    verdict = rules.evaluate(item("選考の結果、採用を見送らせて\nいただきます。"))
    assert verdict.rejection and verdict.rule == "ja-basic" and verdict.footer == "ja"
    assert verdict.fired == ("見送らせていただ", "選考")
    assert not rules.evaluate(item("今回の発注は見送らせていただきます。")).rejection


def test_a_veto_anywhere_stops_the_rule_and_is_reported(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC)
    verdict = rules.evaluate(
        item("選考の結果、見送らせていただきます。", subject="内定のご連絡"), explain=True
    )
    assert not verdict.rejection
    assert verdict.vetoed == (("ja-basic", "内定"),)
    assert any("vetoed by “内定”" in line for line in verdict.details)


def test_defaults_exclude_adds_to_each_rule(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, '[defaults]\nexclude = ["お疲れ様です"]\n' + BASIC)
    verdict = rules.evaluate(item("お疲れ様です。選考の件、見送らせていただきます。"))
    assert verdict.vetoed == (("ja-basic", "お疲れ様です"),)


def test_look_in_subject_only(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC.replace('footer = "ja"', 'footer = "ja"\nlook_in = ["subject"]'))
    assert not rules.evaluate(item("選考の結果、見送らせていただきます。")).rejection
    assert rules.evaluate(item("", subject="選考 見送らせていただきます")).rejection


def test_shadow_rules_are_counted_never_acted_on(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC.replace('mode = "decorate"', 'mode = "shadow"'))
    verdict = rules.evaluate(item("選考の結果、見送らせていただきます。"), explain=True)
    assert not verdict.rejection and verdict.rule is None and verdict.footer is None
    assert verdict.shadow == ("ja-basic",)
    assert any("shadow: counted, not acted on" in line for line in verdict.details)


def test_first_decorate_rule_in_file_name_order_wins(tmp_path: Path) -> None:
    second = BASIC.replace('id = "ja-basic"', 'id = "zz"').replace('footer = "ja"', 'footer = "en"')
    (tmp_path / "b.toml").write_text(second, encoding="utf-8")
    (tmp_path / "a.toml").write_text(BASIC, encoding="utf-8")
    rules = load_rules([tmp_path / "b.toml", tmp_path / "a.toml"])
    assert rules.ids == ("ja-basic", "zz")
    verdict = rules.evaluate(item("選考の結果、見送らせていただきます。"), explain=True)
    assert (verdict.rule, verdict.footer) == ("ja-basic", "ja")
    assert any("zz [decorate]: matched" in line and "earlier rule" in line for line in verdict.details)


def test_senders_scope_a_rule_to_addresses_and_domains(tmp_path: Path) -> None:
    rules = rules_from(
        tmp_path,
        BASIC.replace('footer = "ja"', 'footer = "ja"\nsenders = ["@acme.example.jp", "Boss@Other.example"]'),
    )
    text = "選考の結果、見送らせていただきます。"
    assert rules.evaluate(item(text, sender="recruit@acme.example.jp")).rejection
    assert rules.evaluate(item(text, sender="<noreply@hr.acme.example.jp>")).rejection
    assert rules.evaluate(item(text, sender="boss@other.example")).rejection
    assert rules.evaluate(item(text, sender="Acme 採用 <recruit@acme.example.jp>")).rejection
    outside = rules.evaluate(item(text, sender="x@notacme.example.jp"), explain=True)
    assert not outside.rejection
    assert any("outside its scope" in line for line in outside.details)
    assert not rules.evaluate(item(text, sender="")).rejection


def test_tenants_scope_a_rule(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC.replace('footer = "ja"', 'footer = "ja"\ntenants = ["acme"]'))
    text = "選考の結果、見送らせていただきます。"
    assert rules.evaluate(item(text, tenant="acme")).rejection
    assert not rules.evaluate(item(text, tenant="other")).rejection
    assert not rules.evaluate(item(text, tenant=None)).rejection


HEADER_RULE = BASIC + '[rule.header]\nname = "X-ATS-Status"\nvalues = ["Rejected", "不採用"]\n'


def test_ats_header_decides_alone_and_is_not_vetoed(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, HEADER_RULE)
    verdict = rules.evaluate(item("内定", headers={"x-ats-status": [" rejected "]}))
    assert verdict.rejection and verdict.fired == ("X-ATS-Status: rejected",)
    assert rules.evaluate(item("", headers={"X-ATS-Status": ["不採用"]})).rejection


def test_ats_header_with_another_value_falls_back_to_phrases(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, HEADER_RULE)
    assert not rules.evaluate(item("", headers={"X-ATS-Status": ["offer"]})).rejection
    assert rules.evaluate(item("選考: 見送らせていただきます", headers={"X-ATS-Status": ["offer"]})).rejection


def test_details_explain_the_verdict_and_near_misses(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC)
    hit = rules.evaluate(item("選考の結果、見送らせていただきます。"), explain=True)
    assert hit.details[0] == "verdict: rejection, rule ja-basic (basic), footer 'ja'"
    assert hit.details[1] == "rule ja-basic [decorate]: matched “見送らせていただ”, “選考” → footer 'ja'"
    near = rules.evaluate(item("見送らせていただきます。"), explain=True)
    assert near.details == (
        "verdict: not a rejection",
        "rule ja-basic [decorate]: no match, group 2 missing (選考)",
    )
    assert rules.evaluate(item("こんにちは"), explain=True).details == (
        "verdict: not a rejection (no rule matched)",
    )
    assert hit.details and not rules.evaluate(item("選考の結果、見送らせていただきます。")).details


def test_plain_and_html_are_both_read(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, BASIC)
    verdict = rules.evaluate(item("見送らせていただきます。", html="<p>選考のご案内</p>"))
    assert verdict.rejection
    # ... but a phrase never spans the seam between the two.
    assert not rules.evaluate(item("選考 見送らせて", html="<p>いただきます</p>")).rejection


def test_an_empty_rule_set_decides_nothing() -> None:
    assert RuleSet().evaluate(item("選考 見送らせていただきます")).rejection is False


# -- phrase lookup (issue 8: a pivot seen at few places is followed to them) ---------------------------------

_LOOKUP_ALPHABET = "採用見送残念選考不合格ごおのにをてはaeiouxyz -"
_lookup_keys = st.sets(st.text(_LOOKUP_ALPHABET, min_size=1, max_size=5), min_size=1, max_size=25)


@settings(max_examples=400, deadline=None)
@given(
    _lookup_keys, st.lists(st.one_of(st.text(_LOOKUP_ALPHABET, max_size=6), st.just("採用見送")), max_size=30)
)
def test_phrase_lookup_finds_exactly_the_keys_in_the_text(keys: set[str], pieces: list[str]) -> None:
    from mailrelay.detection.matcher import _by_pivot, _present

    text = "".join(pieces)
    assert _present(_by_pivot(keys), text) == {key for key in keys if key in text}


# One kanji, so every key that holds it shares it as pivot: one large group, looked up by its windows.
_WINDOW_ALPHABET = "採ごおのをa x"


@settings(max_examples=400, deadline=None)
@given(
    st.sets(st.text(_WINDOW_ALPHABET, min_size=1, max_size=6).filter(lambda key: "採" in key), min_size=4),
    st.lists(st.text(_WINDOW_ALPHABET, max_size=8), min_size=3, max_size=80),
)
def test_a_large_group_whose_pivot_stands_at_many_places_is_found_by_the_text_around_them(
    keys: set[str], pieces: list[str]
) -> None:
    from mailrelay.detection.matcher import _by_pivot, _present

    # The pivot at every seam, so at three places or more, and at the very start or end when a piece is empty.
    text = "採".join(pieces)
    pivoted = _by_pivot(keys)
    assert "採" in pivoted.windows
    assert _present(pivoted, text) == {key for key in keys if key in text}


def test_phrase_lookup_with_the_shipped_rules_finds_exactly_the_keys_in_the_text() -> None:
    from mailrelay.detection.matcher import _by_pivot, _present

    keys = {
        p.key
        for rule in load_rules(sorted((REPO / "rules").glob("*.toml"))).rules
        for group in rule.require
        for p in group
    }
    ordered = sorted(keys)
    # Each key once, twice or three times (a pivot at one, two or more places), in a Japanese sentence.
    for times in (1, 2, 3):
        text = "。".join(f"本日は{key}について{key * times}です" for key in ordered[::7])
        assert _present(_by_pivot(keys), text) == {key for key in keys if key in text}
