"""Writes the end-to-end fixture messages (CRLF .eml files) next to this script; rerun to regenerate."""

from __future__ import annotations

import base64
from email.header import Header
from pathlib import Path

HERE = Path(__file__).resolve().parent


def header(name: str, value: str, charset: str | None = None) -> bytes:
    if charset is None:
        return f"{name}: {value}\r\n".encode("ascii")
    encoded = Header(value, charset).encode(linesep="\r\n")  # folded with CRLF, like the rest
    return f"{name}: {encoded}\r\n".encode("ascii")


def common(subject: str, charset: str | None, to: str = "applicant@gmail.example", mid: str = "1") -> bytes:
    return b"".join(
        [
            header("From", "Acme Recruiting <recruit@acme.co.jp>"),
            header("To", to),
            header("Subject", subject, charset),
            header("Date", "Mon, 16 Nov 2026 10:00:00 +0900"),
            header("Message-ID", f"<e2e-{mid}@acme.co.jp>"),
            header("MIME-Version", "1.0"),
        ]
    )


def crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


JA_REJECTION = """山田 太郎 様

このたびは株式会社アクメの求人にご応募いただき、誠にありがとうございました。
慎重に選考を重ねました結果、誠に残念ではございますが、
今回は採用を見送らせていただくことになりました。

ご期待に添えない結果となり申し訳ございません。
末筆ながら、山田様の今後のご活躍を心よりお祈り申し上げます。

株式会社アクメ 人事部 採用担当
"""

EN_REJECTION = """Dear Alex,

Thank you for taking the time to interview for the Backend Engineer position at Acme.
After careful consideration, we regret to inform you that we have decided to move forward
with other candidates whose experience more closely matches our current needs.

We wish you every success in your job search.

Acme Talent Acquisition
"""

JA_INTERVIEW = """佐藤 花子 様

このたびはご応募いただきありがとうございます。
書類選考の結果、ぜひ一次面接にお越しいただきたくご連絡いたしました。
面接日程のご案内をお送りしますので、ご都合のよい日時をお知らせください。

貴殿の益々のご活躍をお祈り申し上げます。
株式会社アクメ 人事部
"""

JA_OFFER = """鈴木 一郎 様

先日は最終面接にお越しいただき、ありがとうございました。
厳正なる選考の結果、鈴木様を採用させていただくことに決定いたしました。
ここに内定のご連絡を申し上げます。

株式会社アクメ 人事部
"""

JA_INTERNAL = """人事部各位

本日の一次面接の候補者について共有します。
今回は見送らせていただく方向で、本人へは来週連絡します。
"""


def write(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)


def main() -> None:
    body = crlf(JA_REJECTION).encode("iso2022_jp")
    write(
        "rejection_ja_iso2022.eml",
        common("選考結果のご連絡", "iso-2022-jp", mid="ja-iso")
        + b'Content-Type: text/plain; charset="ISO-2022-JP"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
        + body,
    )

    html = crlf(
        '<html><head><meta charset="utf-8"></head><body>\n'
        + "".join(f"<p>{line}</p>\n" for line in JA_REJECTION.strip().splitlines() if line)
        + "</body></html>\n"
    )
    b64 = base64.encodebytes(html.encode("utf-8")).decode("ascii").replace("\n", "\r\n")
    write(
        "rejection_ja_utf8_alternative.eml",
        common("【株式会社アクメ】選考結果のご連絡", "utf-8", mid="ja-alt")
        + b'Content-Type: multipart/alternative; boundary="==alt-1"\r\n\r\n'
        + b'--==alt-1\r\nContent-Type: text/plain; charset="UTF-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
        + crlf(JA_REJECTION).encode("utf-8")
        + b'\r\n--==alt-1\r\nContent-Type: text/html; charset="UTF-8"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + b64.encode("ascii")
        + b"\r\n--==alt-1--\r\n",
    )

    write(
        "rejection_en.eml",
        common("Your application to Acme", None, mid="en")
        + b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + crlf(EN_REJECTION).encode("ascii"),
    )

    write(
        "rejection_ja_bcc_batch.eml",
        common("選考結果のご連絡", "iso-2022-jp", to="undisclosed-recipients:;", mid="bcc")
        + b'Content-Type: text/plain; charset="ISO-2022-JP"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
        + crlf(JA_REJECTION.replace("山田 太郎 様", "応募者各位").replace("山田様の", "皆様の")).encode(
            "iso2022_jp"
        ),
    )

    for name, text, subject in (
        ("interview_invitation_ja.eml", JA_INTERVIEW, "一次面接のご案内"),
        ("offer_ja.eml", JA_OFFER, "内定のご連絡"),
    ):
        write(
            name,
            common(subject, "iso-2022-jp", mid=name)
            + b'Content-Type: text/plain; charset="ISO-2022-JP"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
            + crlf(text).encode("iso2022_jp"),
        )

    write(
        "internal_ja.eml",
        common("候補者の件", "utf-8", to="hr-team@acme.co.jp", mid="internal")
        + b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + crlf(JA_INTERNAL).encode("utf-8"),
    )


if __name__ == "__main__":
    main()
