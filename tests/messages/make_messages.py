"""Writes the MIME hard-case fixtures (one CRLF .eml per case, research report §4) next to this script.

Rerun to regenerate: `.venv/bin/python tests/messages/make_messages.py`. The S/MIME cases need `openssl`.
"""

from __future__ import annotations

import base64
import quopri
import subprocess
import tempfile
from email.header import Header
from pathlib import Path

HERE = Path(__file__).resolve().parent


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def b(text: str) -> bytes:
    return crlf(text).encode("ascii")


def head(
    subject: str,
    content_type: str,
    cte: str | None = "7bit",
    charset: str | None = "iso-2022-jp",
    mid: str = "1",
    sender: str = "Acme 採用担当 <recruit@acme.co.jp>",
) -> bytes:
    subj = Header(subject, charset).encode() if charset and not subject.isascii() else subject
    name, _, addr = sender.partition(" <")
    frm = f"{Header(name, 'iso-2022-jp').encode()} <{addr}" if not name.isascii() else sender
    lines = [
        f"From: {frm}",
        "To: applicant@gmail.example",
        f"Subject: {subj}",
        "Date: Mon, 16 Nov 2026 10:00:00 +0900",
        f"Message-ID: <{mid}@acme.co.jp>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    return b("\n".join(lines) + "\n\n")


def part(content_type: str, body: bytes, cte: str | None = "7bit", extra: str = "") -> bytes:
    lines = [f"Content-Type: {content_type}"]
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    if extra:
        lines.append(extra)
    return b("\n".join(lines) + "\n\n") + body


def multipart(boundary: str, parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for p in parts:
        out += f"--{boundary}\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode() + epilogue


def b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"


def qp(data: bytes) -> bytes:
    return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")


def sjis_to_jis(data: bytes) -> bytes:
    """Shift_JIS (cp932) two-byte characters to JIS X 0208 row/cell bytes, as Outlook's CP50220 does."""
    out = bytearray()
    for i in range(0, len(data), 2):
        s1, s2 = data[i], data[i + 1]
        j1 = (s1 - (0x70 if s1 < 0xA0 else 0xB0)) * 2 - 1
        if s2 >= 0x9F:
            j1 += 1
            j2 = s2 - 0x7E
        else:
            j2 = s2 - 0x1F - (1 if s2 > 0x7F else 0)
        out += bytes((j1, j2))
    return bytes(out)


def jis(text: str) -> bytes:
    return crlf(text).encode("iso2022_jp")


JA = """山田 太郎 様

このたびは株式会社アクメの求人にご応募いただき、誠にありがとうございました。
慎重に選考を重ねました結果、誠に残念ながら、
今回は採用を見送らせていただくことになりました。

ご期待に添えない結果となり申し訳ございません。
今後のご活躍をお祈り申し上げます。

株式会社アクメ 人事部 採用担当
"""

EN = """Dear Alex,

Thank you for taking the time to interview for the Backend Engineer position at Acme.
After careful consideration, we regret to inform you that we have decided to move forward
with other candidates whose experience more closely matches our current needs.

We wish you every success in your job search.

Acme Talent Acquisition
"""

SUBJECT_JA = "選考結果のご連絡（株式会社アクメ）"


def html_doc(body: str, lang: str = "ja", meta: str = "utf-8") -> str:
    paragraphs = "".join(f"<p>{line}</p>\n" for line in body.strip().split("\n") if line)
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="{meta}">\n'
        f"<title>{'Your application' if lang == 'en' else '選考結果'}</title>\n</head>\n"
        f"<body>\n{paragraphs}</body>\n</html>\n"
    )


PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type/Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n" * 40
XLSX = b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 12
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(200))


def cases() -> dict[str, bytes]:
    c: dict[str, bytes] = {}
    plain_jis = "text/plain; charset=iso-2022-jp"

    c["rejection_ja_iso2022.eml"] = head(SUBJECT_JA, plain_jis) + jis(JA)

    outlook = JA.replace("株式会社アクメ 人事部", "㈱アクメ 人事部 髙橋").replace(
        "山田 太郎 様", "山田 太郎 様\n① 書類選考 ② 一次面接"
    )
    pieces = []
    for line in crlf(outlook).split("\r\n"):
        try:
            pieces.append(line.encode("iso2022_jp"))
        except UnicodeEncodeError:
            # Outlook (CP50220): NEC row 13 and IBM extensions as JIS X 0208 cells.
            out = b""
            for ch in line:
                try:
                    out += ch.encode("iso2022_jp")
                except UnicodeEncodeError:
                    out += b"\x1b$B" + sjis_to_jis(ch.encode("cp932")) + b"\x1b(B"
            pieces.append(out)
    c["rejection_ja_iso2022_outlook_chars.eml"] = head(SUBJECT_JA, plain_jis) + b"\r\n".join(pieces)

    kana = (
        jis("山田 太郎 様\n\n")
        + b"\x1b(I"
        + "ｻｲﾖｳｶｲｼｬ".encode("cp932").translate(bytes((i - 0x80) % 256 for i in range(256)))
    )
    kana += b"\x1b(B\r\n" + jis(JA.split("\n", 2)[2])
    c["rejection_ja_iso2022_halfwidth_kana.eml"] = head(SUBJECT_JA, plain_jis) + kana

    body = jis(JA.rstrip("\n")).removesuffix(b"\x1b(B")
    c["iso2022_ends_in_jis_mode.eml"] = head(SUBJECT_JA, plain_jis) + body

    sjis_text = JA.replace("採用担当", "採用担当 表計算ソフト ｶﾀｶﾅ")
    c["rejection_ja_sjis_8bit.eml"] = head(
        SUBJECT_JA, "text/plain; charset=Shift_JIS", "8bit", "shift_jis"
    ) + crlf(sjis_text).encode("shift_jis")

    c["rejection_ja_sjis_base64.eml"] = head(
        SUBJECT_JA, "text/plain; charset=Shift_JIS", "base64", "shift_jis"
    ) + b64(crlf(sjis_text).encode("shift_jis"))

    c["rejection_ja_eucjp_8bit.eml"] = head(
        SUBJECT_JA, "text/plain; charset=EUC-JP", "8bit", "euc-jp"
    ) + crlf(JA).encode("euc_jp")

    # RFC 2045 §6.7 soft break in the middle of a UTF-8 sequence (お = E3 81 8A).
    encoded = qp(crlf(JA).encode("utf-8"))
    assert b"=E3=81=8A" in encoded
    c["qp_utf8_softbreak_in_char.eml"] = head(
        SUBJECT_JA, "text/plain; charset=UTF-8", "quoted-printable", "utf-8"
    ) + encoded.replace(b"=E3=81=8A", b"=E3=81=\r\n=8A", 1)

    c["declared_7bit_has_8bit.eml"] = head(
        "Your application to Acme", "text/plain; charset=utf-8", "7bit", None
    ) + crlf(EN.replace("Dear Alex", "Dear José")).encode("utf-8")

    c["no_charset_jis_escapes.eml"] = head(SUBJECT_JA, "text/plain", "7bit") + jis(JA)

    flowed = (
        "Dear Alex,\n\nThank you for taking the time to interview with us. After careful \n"
        "consideration, we have decided to move forward with other candidates for \n"
        "this role.\n\nBest regards, \nAcme Talent"
    )
    c["flowed_delsp.eml"] = (
        head("Your application", "text/plain; charset=us-ascii; format=flowed; delsp=yes", "7bit", None)
        + b(flowed)
        + b"\r\n"
    )

    en_html = html_doc(EN, "en")
    c["html_only_b64.eml"] = head(
        "Your application to Acme", "text/html; charset=utf-8", "base64", None
    ) + b64(crlf(html_doc(JA)).encode("utf-8"))

    qp_html = qp(crlf(html_doc(JA)).encode("utf-8"))
    qp_html = qp_html.replace(b"</body>", b"</bo=\r\ndy>")
    c["qp_html_body_split.eml"] = (
        head(SUBJECT_JA, "text/html; charset=utf-8", "quoted-printable", "utf-8") + qp_html
    )

    upper = en_html.replace("</body>", "</BODY >").replace("<body>", "<BODY>")
    c["html_upper_body_tag.eml"] = head("Your application", "text/html; charset=us-ascii", "7bit", None) + b(
        upper
    )

    no_body = en_html.replace("<body>\n", "").replace("</body>\n", "")
    c["html_no_body_tag.eml"] = head("Your application", "text/html; charset=us-ascii", "7bit", None) + b(
        no_body
    )

    fragment = "<div>" + EN.replace("\n\n", "</div>\n<div>") + "</div>\n"
    c["html_fragment_no_tags.eml"] = head(
        "Your application", "text/html; charset=us-ascii", "7bit", None
    ) + b(fragment)

    quoted = (
        "<html><body>\n<p>Dear Alex,</p>\n<p>we have decided to move forward with other candidates.</p>\n"
        "<!-- old template: </body> -->\n<script>var s = '</body>';</script>\n"
        "<style>p::after { content: '</body>'; }</style>\n"
        '<blockquote type="cite"><html><body><p>Earlier message: thank you for applying.</p></body></html>'
        "</blockquote>\n<p>Acme Talent</p>\n</body>\n</html>\n"
    )
    c["html_quoted_earlier_body.eml"] = head(
        "Re: Your application", "text/html; charset=utf-8", "7bit", None
    ) + b(quoted)

    c["html_meta_charset_mismatch.eml"] = head(
        SUBJECT_JA, "text/html; charset=UTF-8", "8bit", "utf-8"
    ) + crlf(html_doc(JA, meta="shift_jis")).encode("utf-8")

    c["html_iso2022jp.eml"] = head(SUBJECT_JA, "text/html; charset=ISO-2022-JP", "7bit") + jis(
        html_doc(JA, meta="iso-2022-jp")
    )

    alt = multipart(
        "alt-1",
        [
            part(plain_jis, jis(JA)),
            part("text/html; charset=utf-8", b64(crlf(html_doc(JA)).encode()), "base64"),
        ],
    )
    c["alt_iso2022_text_utf8_b64_html.eml"] = (
        head(SUBJECT_JA, 'multipart/alternative; boundary="alt-1"', None) + alt
    )

    alt_utf8 = multipart(
        "alt-2",
        [
            part("text/plain; charset=utf-8", qp(crlf(JA).encode()), "quoted-printable"),
            part("text/html; charset=utf-8", qp(crlf(html_doc(JA)).encode()), "quoted-printable"),
        ],
    )
    c["mixed_pdf_xlsx.eml"] = head(
        SUBJECT_JA, 'multipart/mixed; boundary="mix-1"', None, "utf-8"
    ) + multipart(
        "mix-1",
        [
            part('multipart/alternative; boundary="alt-2"', alt_utf8, None),
            part(
                f'application/pdf; name="{Header("選考結果.pdf", "utf-8").encode()}"',
                b64(PDF),
                "base64",
                "Content-Disposition: attachment;\n"
                " filename*=UTF-8''%E9%81%B8%E8%80%83%E7%B5%90%E6%9E%9C.pdf",
            ),
            part(
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                b64(XLSX),
                "base64",
                'Content-Disposition: attachment; filename="schedule.xlsx"',
            ),
        ],
        preamble=b"This is a multi-part message in MIME format.\r\n",
    )

    c["text_attachment_first.eml"] = head(
        "Your application", 'multipart/mixed; boundary="mix-2"', None
    ) + multipart(
        "mix-2",
        [
            part(
                'text/plain; charset=us-ascii; name="cv-notes.txt"',
                b("Interview notes: strong Python, weak SQL.\n"),
                "7bit",
                'Content-Disposition: attachment; filename="cv-notes.txt"',
            ),
            part("text/plain; charset=us-ascii", b(EN)),
        ],
    )

    related = multipart(
        "rel-1",
        [
            part(
                "text/html; charset=utf-8",
                qp(crlf(html_doc(JA).replace("<body>\n", '<body>\n<img src="cid:logo@acme">\n')).encode()),
                "quoted-printable",
            ),
            part(
                "image/png",
                b64(PNG),
                "base64",
                "Content-ID: <logo@acme>\nContent-Disposition: inline",
            ),
        ],
    )
    alt3 = multipart(
        "alt-3",
        [
            part("text/plain; charset=utf-8", b64(crlf(JA).encode()), "base64"),
            part('multipart/related; boundary="rel-1"; type="text/html"', related, None),
        ],
    )
    c["mixed_alt_related_cid.eml"] = head(
        SUBJECT_JA, 'multipart/mixed; boundary="mix-3"', None, "utf-8"
    ) + multipart(
        "mix-3",
        [
            part('multipart/alternative; boundary="alt-3"', alt3, None),
            part(
                'application/pdf; name="guide.pdf"',
                b64(PDF),
                "base64",
                'Content-Disposition: attachment; filename="guide.pdf"',
            ),
        ],
    )

    # RFC 2387 §3.2: `start` names the root by its Content-ID, here not the first part (the image comes
    # first, as some mailers write it); the root is what the reader shows, and what gets the footer.
    c["related_start_root_not_first.eml"] = head(
        SUBJECT_JA,
        'multipart/related; boundary="rel-2"; type="text/html";\n start="<body.5@acme.co.jp>"',
        None,
        "utf-8",
    ) + multipart(
        "rel-2",
        [
            part("image/png", b64(PNG), "base64", "Content-ID: <logo@acme>\nContent-Disposition: inline"),
            part(
                "text/html; charset=utf-8",
                qp(crlf(html_doc(JA).replace("<body>\n", '<body>\n<img src="cid:logo@acme">\n')).encode()),
                "quoted-printable",
                "Content-ID: <body.5@acme.co.jp>",
            ),
        ],
    )

    inner = head(SUBJECT_JA, plain_jis, mid="inner") + jis(JA)
    c["forwarded_rfc822_rejection.eml"] = head(
        "Fwd: 選考結果のご連絡", 'multipart/mixed; boundary="mix-4"', None
    ) + multipart(
        "mix-4",
        [
            part(plain_jis, jis("採用チーム各位\n\n先日の候補者への連絡を転送します。\n")),
            part("message/rfc822", inner, None, "Content-Disposition: inline"),
        ],
    )

    ics = b(
        "BEGIN:VCALENDAR\nPRODID:-//Acme//Recruiting//EN\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
        "UID:interview-42@acme.co.jp\nDTSTART:20261201T010000Z\nDTEND:20261201T020000Z\n"
        "SUMMARY:Final interview (we have decided to move forward)\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    c["calendar_invite.eml"] = head(
        "Interview invitation", 'multipart/alternative; boundary="alt-4"', None
    ) + multipart(
        "alt-4",
        [
            part("text/plain; charset=utf-8", b("Please find the interview invitation attached.\n")),
            part("text/calendar; charset=utf-8; method=REQUEST", ics),
        ],
    )

    c["pgp_encrypted.eml"] = head(
        "Your application",
        'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="pgp-1"',
        None,
    ) + multipart(
        "pgp-1",
        [
            part("application/pgp-encrypted", b"Version: 1\r\n", None),
            part(
                'application/octet-stream; name="encrypted.asc"',
                b(
                    "-----BEGIN PGP MESSAGE-----\n\nhQEMA1234567890abcdefghijklmnop\n=abcd\n"
                    "-----END PGP MESSAGE-----\n"
                ),
                None,
            ),
        ],
    )

    tricky = multipart(
        "b-1",
        [
            part(
                "text/plain; charset=us-ascii",
                b(EN + "\n--b-1x is not a delimiter, nor is --b-1-- inside a line\n  --b-1\n"),
            ),
            part(
                'application/octet-stream; name="data.bin"',
                b64(bytes(range(256))),
                "base64",
                'Content-Disposition: attachment; filename="data.bin"',
            ),
        ],
        preamble=b"preamble line 1\r\n--b-1 not at start? no: this line is preamble\r\n\r\n",
        epilogue=b"epilogue text\r\n--b-1\r\n",
    )
    c["preamble_epilogue_boundary_like.eml"] = (
        head("Your application", 'multipart/mixed; boundary="b-1"', None) + tricky
    )

    broken = head("Your application", 'multipart/mixed; boundary="m-9"', None) + (
        b"--m-9\r\n" + part("text/plain; charset=us-ascii", b(EN))
    )
    c["malformed_missing_final_boundary.eml"] = broken

    c["rejection_en.eml"] = head(
        "Your application to Acme", "text/plain; charset=us-ascii", "7bit", None
    ) + b(EN)

    c["rejection_en_ascii_no_charset.eml"] = head("Your application to Acme", "text/plain", None, None) + b(
        EN
    )

    c["html_b64_invalid.eml"] = head("Your application", "text/html; charset=utf-8", "base64", None) + b(
        "PGh0bWw+PGJvZHk+SGVsbG8*!!\nnot base64 at all\n"
    )

    return c


def smime_cases(workdir: Path) -> dict[str, bytes]:
    """Real S/MIME from openssl with a throwaway self-signed key (`-noverify` checks need no CA)."""
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "3650",
            "-subj",
            "/CN=recruit@acme.co.jp",
        ],
        check=True,
        capture_output=True,
    )

    def openssl(args: list[str], data: bytes) -> bytes:
        return subprocess.run(["openssl", "smime", *args], input=data, check=True, capture_output=True).stdout

    alt = multipart(
        "alt-s",
        [
            part("text/plain; charset=utf-8", qp(crlf(JA).encode()), "quoted-printable"),
            part("text/html; charset=utf-8", b64(crlf(html_doc(JA)).encode()), "base64"),
        ],
    )
    content = b'Content-Type: multipart/alternative; boundary="alt-s"\r\n\r\n' + alt
    signed = openssl(["-sign", "-signer", str(cert), "-inkey", str(key), "-crlfeol"], content)
    top_lines = b(
        f"From: {Header('Acme 採用担当', 'iso-2022-jp').encode()} <recruit@acme.co.jp>\n"
        "To: applicant@gmail.example\n"
        f"Subject: {Header(SUBJECT_JA, 'iso-2022-jp').encode()}\nDate: Mon, 16 Nov 2026 10:00:00 +0900\n"
        "Message-ID: <smime@acme.co.jp>\n"
    )
    out: dict[str, bytes] = {}
    out["signed_smime_top.eml"] = top_lines + signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # openssl writes MIME-Version first; the signed entity's own header block begins after it.
    signed_entity = signed.split(b"\n", 1)[1].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    out["signed_nested_in_mixed.eml"] = head(
        SUBJECT_JA, 'multipart/mixed; boundary="mix-s"', None
    ) + multipart(
        "mix-s",
        [
            signed_entity,
            part(
                'text/plain; charset=us-ascii; name="note.txt"',
                b("internal note\n"),
                "7bit",
                'Content-Disposition: attachment; filename="note.txt"',
            ),
        ],
    )
    opaque = openssl(["-sign", "-signer", str(cert), "-inkey", str(key), "-nodetach", "-crlfeol"], content)
    out["pkcs7_mime.eml"] = top_lines + opaque.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out


def main() -> None:
    all_cases = cases()
    with tempfile.TemporaryDirectory() as tmp:
        all_cases.update(smime_cases(Path(tmp)))
    for name, data in sorted(all_cases.items()):
        assert b"\n" not in data.replace(b"\r\n", b""), name
        (HERE / name).write_bytes(data)
    print(f"wrote {len(all_cases)} messages to {HERE}")


if __name__ == "__main__":
    main()
