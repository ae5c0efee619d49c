"""The MIME hard cases (research report §4), one fixture each: changed parts correct, the rest identical."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from messages.checks import FOOTER, LINK, check_decorated, decode_transfer, strict_text

from mailrelay.message import Footer, NotDecoratable, ParsedMessage, parse

MESSAGES = Path(__file__).resolve().parent / "messages"


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()


def decorate(name: str, footer: Footer = FOOTER) -> tuple[bytes, bytes, ParsedMessage]:
    raw = load(name)
    out = parse(raw).decorate(footer)
    return raw, out, check_decorated(raw, out, footer)


def target_text(m: ParsedMessage, out: bytes, kind: str) -> str:
    i = m.targets()[0 if kind == "plain" else 1]
    p = m.parts[i]
    return strict_text(p, decode_transfer(p, out))


DECORATABLE = [
    "rejection_ja_iso2022.eml",
    "rejection_ja_iso2022_outlook_chars.eml",
    "rejection_ja_iso2022_halfwidth_kana.eml",
    "iso2022_ends_in_jis_mode.eml",
    "rejection_ja_sjis_8bit.eml",
    "rejection_ja_sjis_base64.eml",
    "rejection_ja_eucjp_8bit.eml",
    "qp_utf8_softbreak_in_char.eml",
    "declared_7bit_has_8bit.eml",
    "no_charset_jis_escapes.eml",
    "flowed_delsp.eml",
    "html_only_b64.eml",
    "qp_html_body_split.eml",
    "html_upper_body_tag.eml",
    "html_no_body_tag.eml",
    "html_fragment_no_tags.eml",
    "html_quoted_earlier_body.eml",
    "html_meta_charset_mismatch.eml",
    "html_iso2022jp.eml",
    "alt_iso2022_text_utf8_b64_html.eml",
    "mixed_pdf_xlsx.eml",
    "text_attachment_first.eml",
    "mixed_alt_related_cid.eml",
    "related_start_root_not_first.eml",
    "forwarded_rfc822_rejection.eml",
    "calendar_invite.eml",
    "preamble_epilogue_boundary_like.eml",
    "rejection_en.eml",
    "rejection_en_ascii_no_charset.eml",
]


@pytest.mark.parametrize("name", DECORATABLE)
def test_decorated_part_is_correct_and_the_rest_byte_identical(name: str) -> None:
    decorate(name)


@pytest.mark.parametrize("name", DECORATABLE)
def test_fixture_is_crlf(name: str) -> None:
    assert b"\n" not in load(name).replace(b"\r\n", b"")


def test_both_alternatives_get_the_footer_in_their_own_charset() -> None:
    _raw, out, m = decorate("alt_iso2022_text_utf8_b64_html.eml")
    plain, html = m.targets()
    assert m.parts[plain].cte == "7bit" and m.parts[html].cte == "base64"
    body = out[m.parts[plain].body_start : m.parts[plain].end]
    assert body.isascii() and b"\x1b$B" in body
    assert "ご友人に求人をご紹介ください" in target_text(m, out, "plain")
    assert "ご友人に求人をご紹介ください" in target_text(m, out, "html")


def test_iso2022_footer_is_jis_and_part_stays_7bit() -> None:
    raw, out, m = decorate("rejection_ja_iso2022.eml")
    p = m.parts[0]
    assert p.cte == "7bit" and out[p.body_start : p.end].isascii()
    assert out.startswith(raw)  # the original body bytes are a prefix: only appended
    text = out[p.body_start :].decode("iso2022_jp")
    assert text.endswith("Refer a friend: " + LINK + "\r\n")


def test_outlook_nec_and_ibm_chars_survive_byte_for_byte() -> None:
    raw, out, m = decorate("rejection_ja_iso2022_outlook_chars.eml")
    assert out.startswith(raw)
    text = target_text(m, out, "plain")
    for ch in "①②㈱髙":
        assert ch in text


def test_half_width_kana_kept_and_footer_after_ascii_reset() -> None:
    raw, out, m = decorate("rejection_ja_iso2022_halfwidth_kana.eml")
    assert out.startswith(raw)
    assert "ｻｲﾖｳｶｲｼｬ" in target_text(m, out, "plain")


def test_body_ending_in_jis_mode_is_reset_to_ascii_before_footer() -> None:
    raw, out, _m = decorate("iso2022_ends_in_jis_mode.eml")
    added = out[len(raw) :]
    assert added.startswith(b"\x1b(B\r\n\r\n")
    assert out.decode("iso2022_jp").endswith(LINK + "\r\n")


def test_unencodable_footer_chars_fall_back_deterministically_in_jis() -> None:
    footer = Footer(text="①髙橋～ 😀 " + LINK, html="<p>①髙橋～</p>")
    raw = load("rejection_ja_iso2022.eml")
    out = parse(raw).decorate(footer)
    check_decorated(raw, out, footer)
    tail = out[len(raw) :].decode("iso2022_jp")
    assert tail.strip() == "1高橋~  " + LINK  # NFKC, then transliteration, emoji dropped; never "?"
    assert out == parse(raw).decorate(footer)


def test_html_unencodable_chars_become_character_references() -> None:
    footer = Footer(text=LINK, html='<p class="mr-footer">①髙 <a href="' + LINK + '">x</a></p>')
    raw = load("html_iso2022jp.eml")
    out = parse(raw).decorate(footer)
    check_decorated(raw, out, footer)
    assert b"&#9312;&#39641;" in out


def test_sjis_8bit_trail_bytes_untouched_and_footer_in_shift_jis() -> None:
    raw, out, m = decorate("rejection_ja_sjis_8bit.eml")
    assert out.startswith(raw)
    text = out[m.parts[0].body_start :].decode("shift_jis")
    assert "表計算ソフト ｶﾀｶﾅ" in text and text.endswith(LINK + "\r\n")


def test_sjis_base64_reencoded_at_76() -> None:
    _raw, out, m = decorate("rejection_ja_sjis_base64.eml")
    body = out[m.parts[0].body_start :]
    assert all(len(line) == 76 for line in body.split(b"\r\n")[:-2])


def test_qp_soft_break_inside_utf8_char() -> None:
    _raw, out, m = decorate("qp_utf8_softbreak_in_char.eml")
    assert "今後のご活躍をお祈り申し上げます。" in target_text(m, out, "plain")


def test_declared_7bit_with_8bit_bytes_becomes_quoted_printable() -> None:
    _raw, out, m = decorate("declared_7bit_has_8bit.eml")
    assert m.parts[0].cte == "quoted-printable"
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert b"Content-Transfer-Encoding: 7bit" not in out
    assert "Dear José" in target_text(m, out, "plain")


def test_no_charset_jis_escapes_read_as_iso2022jp() -> None:
    raw = load("no_charset_jis_escapes.eml")
    assert "採用を見送らせていただく" in parse(raw).text().plain
    raw, out, _m = decorate("no_charset_jis_escapes.eml")
    assert out.startswith(raw) and out[len(raw) :].isascii()


def test_flowed_parameters_kept_and_footer_is_its_own_paragraph() -> None:
    raw, out, _m = decorate("flowed_delsp.eml", Footer(text="Refer a friend:  \n" + LINK, html=""))
    assert b"format=flowed; delsp=yes" in out
    added = out[len(raw) :]
    assert added.startswith(b"\r\n")  # the empty line ends the last flowed paragraph (RFC 3676 §4.2)
    assert b" \r\n" not in added


def test_html_footer_before_last_real_body_tag() -> None:
    _raw, out, m = decorate("html_quoted_earlier_body.eml")
    text = target_text(m, out, "html")
    footer_at = text.index("mr-footer")
    assert text.index("<p>Acme Talent</p>") < footer_at < text.rindex("</body>")
    assert text.rindex("</body>") > text.rindex("</blockquote>")


def test_html_qp_split_body_tag() -> None:
    _raw, out, m = decorate("qp_html_body_split.eml")
    text = target_text(m, out, "html")
    assert text.index("mr-footer") < text.rindex("</body>")
    assert "</p>\r\n</body>\r\n</html>" in text


def test_html_upper_case_body_tag_with_space() -> None:
    _raw, out, m = decorate("html_upper_body_tag.eml")
    text = target_text(m, out, "html")
    assert text.index("mr-footer") < text.index("</BODY >")


def test_html_without_body_goes_before_html_close() -> None:
    _raw, out, m = decorate("html_no_body_tag.eml")
    text = target_text(m, out, "html")
    assert text.index("mr-footer") < text.rindex("</html>")
    assert text.rstrip().endswith("</html>")


def test_html_fragment_footer_at_end() -> None:
    _raw, out, m = decorate("html_fragment_no_tags.eml")
    assert target_text(m, out, "html").rstrip().endswith("</p>")


def test_html_us_ascii_gets_character_references() -> None:
    _raw, out, _m = decorate("html_upper_body_tag.eml")
    assert b"&#12372;" in out  # ご


def test_meta_charset_mismatch_encodes_per_mime_and_adds_no_meta() -> None:
    _raw, out, m = decorate("html_meta_charset_mismatch.eml")
    text = target_text(m, out, "html")
    assert text.count("<meta") == 1 and "ご友人に" in text


def test_attachments_and_preamble_identical() -> None:
    _raw, out, m = decorate("mixed_pdf_xlsx.eml")
    assert b"This is a multi-part message in MIME format.\r\n" in out
    for p in m.parts:
        if p.maintype == "application":
            assert p.attachment


def test_text_attachment_first_is_not_decorated() -> None:
    _raw, out, m = decorate("text_attachment_first.eml")
    att = m.parts[1]
    assert att.attachment and LINK.encode() not in out[att.start : att.end]
    assert m.targets() == (2, -1)


def test_related_html_and_cid_image() -> None:
    _raw, out, m = decorate("mixed_alt_related_cid.eml")
    _plain, html = m.targets()
    assert m.parts[m.parts[html].parent].content_type == "multipart/related"
    assert out.rstrip().endswith(b"--mix-3--")
    assert "ご友人に" in target_text(m, out, "plain")


def test_related_root_named_by_start_is_read_and_decorated_and_the_image_kept() -> None:
    # RFC 2387 §3.2: the root is the part whose Content-ID `start` names, here the second; the first (the
    # image) was taken for the root, so nothing was read and the rejection went out undecorated.
    raw, out, m = decorate("related_start_root_not_first.eml")
    image, root = m.parts[0].children
    assert m.targets() == (-1, root)
    assert "採用を見送らせていただく" in m.text().html
    assert "ご友人に" in target_text(m, out, "html")
    assert out[: m.parts[image].end] == raw[: m.parts[image].end]


def test_forwarded_message_is_not_decorated() -> None:
    _raw, out, m = decorate("forwarded_rfc822_rejection.eml")
    inner = next(p for p in m.parts if p.content_type == "message/rfc822")
    assert LINK.encode() not in out[inner.start : inner.end]


def test_calendar_is_never_decorated() -> None:
    _raw, out, m = decorate("calendar_invite.eml")
    cal = next(p for p in m.parts if p.content_type == "text/calendar")
    assert LINK.encode() not in out[cal.start : cal.end]


def test_boundary_like_lines_preamble_epilogue_kept() -> None:
    _raw, out, m = decorate("preamble_epilogue_boundary_like.eml")
    assert out.endswith(b"epilogue text\r\n--b-1\r\n")
    assert b"--b-1x is not a delimiter" in out
    assert len(m.parts) == 3


def test_us_ascii_text_is_relabelled_utf8_for_a_japanese_footer() -> None:
    _raw, out, m = decorate("rejection_en.eml")
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in out
    assert "ご友人に" in target_text(m, out, "plain")
    _raw, out, m = decorate("rejection_en_ascii_no_charset.eml")
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in out


def test_ascii_footer_keeps_us_ascii_and_7bit() -> None:
    footer = Footer(text="Refer a friend: " + LINK, html="")
    raw, out, _m = decorate("rejection_en.eml", footer)
    assert out.startswith(raw) and out[len(raw) :] == b"\r\nRefer a friend: " + LINK.encode() + b"\r\n"


def test_long_url_in_7bit_part_switches_to_quoted_printable() -> None:
    link = LINK + "?" + "x" * 1200
    footer = Footer(text="Refer a friend: " + link, html="")
    raw = load("rejection_en.eml")
    out = parse(raw).decorate(footer)
    check_decorated(raw, out, footer, link)
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("signed_smime_top.eml", "signed"),
        ("signed_nested_in_mixed.eml", "signed"),
        ("pkcs7_mime.eml", "signed"),
        ("pgp_encrypted.eml", "encrypted"),
        ("malformed_missing_final_boundary.eml", "malformed"),
        ("html_b64_invalid.eml", "encoding"),
    ],
)
def test_refused(name: str, reason: str) -> None:
    m = parse(load(name))
    if reason in ("signed", "encrypted"):
        assert m.protected == reason
    with pytest.raises(NotDecoratable) as info:
        m.decorate(FOOTER)
    assert info.value.reason == reason
    m.text()  # best effort, never raises


def test_malformed_text_best_effort() -> None:
    m = parse(load("malformed_missing_final_boundary.eml"))
    assert "move forward" in m.text().plain


def _openssl_verify(data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "smime", "-verify", "-noverify", "-out", "/dev/null"], input=data, capture_output=True
    )


def test_smime_fixture_signatures_verify_after_relay_handling(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(MESSAGES))
    try:
        import make_messages
    finally:
        sys.path.remove(str(MESSAGES))
    fresh = make_messages.smime_cases(tmp_path)
    for name in ("signed_smime_top.eml", "pkcs7_mime.eml"):
        for raw in (fresh[name], load(name)):
            m = parse(raw)
            assert m.protected == "signed"
            # What the relay forwards for protected mail: the bytes it received.
            assert _openssl_verify(m.raw).returncode == 0, name


def test_nested_signed_entity_verifies() -> None:
    raw = load("signed_nested_in_mixed.eml")
    m = parse(raw)
    signed = next(p for p in m.parts if p.content_type == "multipart/signed")
    entity = b"MIME-Version: 1.0\r\n" + raw[signed.start : signed.end] + b"\r\n"
    assert _openssl_verify(entity).returncode == 0


def test_detection_text() -> None:
    m = parse(load("rejection_ja_iso2022_outlook_chars.eml"))
    t = m.text()
    assert t.subject == "選考結果のご連絡（株式会社アクメ）"
    assert "㈱アクメ 人事部 髙橋" in t.plain and "採用を見送らせていただく" in t.plain
    assert m.header_values("From") == ["Acme 採用担当 <recruit@acme.co.jp>"]
    m = parse(load("mixed_alt_related_cid.eml"))
    assert "お祈り申し上げます" in m.text().plain and "お祈り申し上げます" in m.text().html
