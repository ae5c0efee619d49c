"""The benchmark's messages: three shapes, each as a non-matching mail and as a rejection of the same size."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from email.header import Header
from pathlib import Path

SENDER = "recruit@example.co.jp"  # a tenant domain in the bench config, so rejections are decorated
RECIPIENT = "applicant@gmail.example"  # outside the tenant: an applicant

REJECTION = (
    "山田 太郎 様\n\n"
    "このたびは株式会社エグザンプルの求人にご応募いただき、誠にありがとうございました。\n"
    "慎重に選考を重ねました結果、誠に残念ではございますが、\n"
    "今回は採用を見送らせていただくことになりました。\n"
    "ご希望に添えない結果となり申し訳ございません。\n"
    "末筆ではございますが、山田様の今後のご活躍を心よりお祈り申し上げます。\n"
)
INVITATION = (
    "山田 太郎 様\n\n"
    "このたびは株式会社エグザンプルの求人にご応募いただき、誠にありがとうございました。\n"
    "書類選考の結果、ぜひ一度お会いしたく、一次面接にお越しいただきたくご連絡いたしました。\n"
    "つきましては、下記の候補日時からご都合のよい日時をお知らせください。\n"
    "当日は履歴書と筆記用具をお持ちください。\n"
    "お会いできることを楽しみにしております。\n"
)
# Company boilerplate that brings every message to its size; the same in both variants, so the two differ
# only in the sentences detection looks at.
FILLER = (
    "株式会社エグザンプル 人事部 採用担当\n"
    "〒100-0001 東京都千代田区千代田1-1 エグザンプルビル 12階\n"
    "電話: 03-0000-0000 受付時間: 平日 9:00〜18:00\n"
    "本メールは送信専用アドレスから配信しております。ご返信いただいてもお答えできませんのでご了承ください。\n"
    "個人情報の取り扱いについては当社ウェブサイトのプライバシーポリシーをご覧ください。\n"
)


@dataclass(frozen=True)
class Shape:
    name: str  # "plain-5k", "multipart-ja-20k", "attachment-50k"
    size: int  # approximate size in bytes


SHAPES = (Shape("plain-5k", 5_000), Shape("multipart-ja-20k", 20_000), Shape("attachment-50k", 50_000))


def _padded(body: str, target: int) -> str:
    out = body + "\n"
    while len(out.encode("utf-8")) < target:
        out += FILLER
    return out


def _qp_free_utf8(text: str) -> str:
    """base64 lines of 76 characters: safe for any transport and never a line starting with a dot."""
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return "\n".join(data[i : i + 76] for i in range(0, len(data), 76))


def _headers(subject: str, mid: str, content_type: str, extra: str = "") -> str:
    return (
        "From: =?UTF-8?B?44Ko44Kw44K244Oz44OX44Or5o6h55So5ouF5b2T?= <recruit@example.co.jp>\n"
        f"To: {RECIPIENT}\n"
        f"Subject: {Header(subject, 'utf-8').encode()}\n"
        "Date: Mon, 16 Nov 2026 10:00:00 +0900\n"
        f"Message-ID: <bench-{mid}@example.co.jp>\n"
        "MIME-Version: 1.0\n"
        f"Content-Type: {content_type}\n"
        f"{extra}"
    )


def build(shape: Shape, rejection: bool) -> str:
    """The message as LF-terminated lines: smtp-source -F (and the latency client) end each with CRLF."""
    body = REJECTION if rejection else INVITATION
    subject = "選考結果のご連絡" if rejection else "一次面接のご案内"
    mid = f"{shape.name}-{'rej' if rejection else 'inv'}"
    if shape.name == "plain-5k":
        head = _headers(subject, mid, "text/plain; charset=UTF-8", "Content-Transfer-Encoding: 8bit\n")
        return head + "\n" + _padded(body, shape.size - len(head))
    if shape.name == "multipart-ja-20k":
        text = _padded(body, shape.size // 3)
        html = "<html><body><p>" + text.replace("\n", "<br>\n") + "</p></body></html>\n"
        iso = base64.b64encode(text.encode("iso-2022-jp")).decode()
        iso_lines = "\n".join(iso[i : i + 76] for i in range(0, len(iso), 76))
        return (
            _headers(subject, mid, 'multipart/alternative; boundary="=_alt_bench"')
            + "\n--=_alt_bench\nContent-Type: text/plain; charset=ISO-2022-JP\n"
            + "Content-Transfer-Encoding: base64\n\n"
            + iso_lines
            + "\n--=_alt_bench\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n"
            + _qp_free_utf8(html)
            + "\n--=_alt_bench--\n"
        )
    text = _padded(body, 3_000)
    # Deterministic pseudo-random bytes: incompressible like a real PDF, the same on every run.
    blob = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(shape.size * 3 // 4 // 32 - 150))
    attachment = base64.b64encode(b"%PDF-1.4\n" + blob).decode()
    return (
        _headers(subject, mid, 'multipart/mixed; boundary="=_mix_bench"')
        + "\n--=_mix_bench\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n"
        + text
        + '\n--=_mix_bench\nContent-Type: application/pdf; name="job-description.pdf"\n'
        + 'Content-Disposition: attachment; filename="job-description.pdf"\n'
        + "Content-Transfer-Encoding: base64\n\n"
        + "\n".join(attachment[i : i + 76] for i in range(0, len(attachment), 76))
        + "\n--=_mix_bench--\n"
    )


def write_all(directory: Path) -> dict[tuple[str, bool], Path]:
    """Writes every message file; keys are (shape name, rejection)."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, bool], Path] = {}
    for shape in SHAPES:
        for rejection in (False, True):
            path = directory / f"{shape.name}-{'rejection' if rejection else 'other'}.eml"
            path.write_bytes(build(shape, rejection).encode("utf-8"))
            files[shape.name, rejection] = path
    return files


def wire_bytes(path: Path) -> bytes:
    """The file as sent after DATA: CRLF lines (none starts with a dot), then the final dot."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines) + b".\r\n"
