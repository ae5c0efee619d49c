"""Writes the labelled detection corpus (CRLF .eml files) under rejection/ and other/; rerun to regenerate.

Deterministic: no clock, no randomness. Each message says what it is in its file name; the structure and
charset rotate so that every phrase is seen through several encodings (ISO-2022-JP, Shift_JIS, UTF-8 in
7bit/8bit/base64/quoted-printable, HTML-only, multipart/alternative, with attachments).
"""

# ruff: noqa: E501  (the corpus is prose: sentences stay on one line so that they read like the mail)
from __future__ import annotations

import base64
import html
import quopri
import shutil
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Mail:
    name: str
    subject: str
    body: str  # plain text; "\n" line ends
    sender: str
    to: str = "applicant@example.net"
    layout: str = ""  # "" rotates; otherwise one of LAYOUTS_JA / LAYOUTS_EN
    html_body: str | None = None  # an HTML part written by hand instead of one made from `body`


LAYOUTS_JA = (
    "utf8-8bit",
    "iso2022",
    "sjis-8bit",
    "sjis-b64",
    "utf8-b64",
    "utf8-qp",
    "html-only",
    "alternative",
    "alternative-iso2022",
    "mixed-attachment",
)
LAYOUTS_EN = ("7bit", "utf8-qp", "utf8-b64", "html-only", "alternative", "mixed-attachment")


def encoded_word(text: str, charset: str) -> str:
    """RFC 2047 B-encoded words, each self-contained (ISO-2022-JP chunks end in ASCII), folded."""
    codec = {"ISO-2022-JP": "iso2022_jp", "Shift_JIS": "shift_jis", "UTF-8": "utf-8"}[charset]
    chunks = [text[i : i + 12] for i in range(0, len(text), 12)]
    words = [f"=?{charset}?B?{base64.b64encode(c.encode(codec)).decode()}?=" for c in chunks]
    return "\r\n ".join(words)


def leaf(ctype: str, text: str, charset: str, cte: str) -> bytes:
    codec = {"iso-2022-jp": "iso2022_jp", "shift_jis": "shift_jis", "utf-8": "utf-8", "us-ascii": "ascii"}
    data = text.replace("\r\n", "\n").encode(codec[charset])
    if cte == "base64":
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif cte == "quoted-printable":
        body = quopri.encodestring(data).replace(b"\n", b"\r\n")
    else:
        body = data.replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    head = f"Content-Type: {ctype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode("ascii") + body


def to_html(text: str, title: str) -> str:
    paragraphs = [p for p in text.strip("\n").split("\n\n")]
    inner = "\n".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in p.split("\n")) + "</p>" for p in paragraphs
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>p { margin: 0 0 1em; font-family: sans-serif; }</style></head>\n"
        f'<body>\n<div style="font-size:14px">\n{inner}\n</div>\n</body></html>\n'
    )


def multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    out.append(b"This is a multi-part message in MIME format.\r\n")
    for part in parts:
        out.append(f"--{boundary}\r\n".encode() + part)
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def attachment(name: str) -> bytes:
    data = b"%PDF-1.4\n% corpus fixture, not a real document\n" * 8
    return (
        f'Content-Type: application/pdf; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode() + base64.encodebytes(data).replace(b"\n", b"\r\n")


def render(mail: Mail, layout: str, number: int) -> bytes:
    japanese = not mail.body.isascii()
    html_source = mail.html_body if mail.html_body is not None else to_html(mail.body, mail.subject)
    if layout == "iso2022":
        subject_cs, body = "ISO-2022-JP", leaf("text/plain", mail.body, "iso-2022-jp", "7bit")
    elif layout == "sjis-8bit":
        subject_cs, body = "Shift_JIS", leaf("text/plain", mail.body, "shift_jis", "8bit")
    elif layout == "sjis-b64":
        subject_cs, body = "ISO-2022-JP", leaf("text/plain", mail.body, "shift_jis", "base64")
    elif layout in ("utf8-8bit",):
        subject_cs, body = "UTF-8", leaf("text/plain", mail.body, "utf-8", "8bit")
    elif layout == "utf8-b64":
        subject_cs, body = "UTF-8", leaf("text/plain", mail.body, "utf-8", "base64")
    elif layout == "utf8-qp":
        subject_cs, body = "UTF-8", leaf("text/plain", mail.body, "utf-8", "quoted-printable")
    elif layout == "7bit":
        subject_cs, body = "", leaf("text/plain", mail.body, "us-ascii", "7bit")
    elif layout == "html-only":
        subject_cs, body = "UTF-8", leaf("text/html", html_source, "utf-8", "quoted-printable")
    elif layout == "alternative":
        subject_cs = "UTF-8"
        body = multipart(
            "alternative",
            f"alt-{number:03d}",
            [
                leaf("text/plain", mail.body, "utf-8", "quoted-printable" if japanese else "7bit"),
                leaf("text/html", html_source, "utf-8", "base64" if japanese else "quoted-printable"),
            ],
        )
    elif layout == "alternative-iso2022":
        subject_cs = "ISO-2022-JP"
        body = multipart(
            "alternative",
            f"alt-{number:03d}",
            [
                leaf("text/plain", mail.body, "iso-2022-jp", "7bit"),
                leaf("text/html", html_source, "utf-8", "quoted-printable"),
            ],
        )
    elif layout == "mixed-attachment":
        subject_cs = "UTF-8"
        alternative = multipart(
            "alternative",
            f"alt-{number:03d}",
            [
                leaf("text/plain", mail.body, "utf-8", "base64" if japanese else "7bit"),
                leaf("text/html", html_source, "utf-8", "base64"),
            ],
        )
        body = multipart("mixed", f"mix-{number:03d}", [alternative, attachment("document.pdf")])
    else:
        raise ValueError(layout)
    if subject_cs == "" and not mail.subject.isascii():
        subject_cs = "UTF-8"
    subject = (
        encoded_word(mail.subject, subject_cs) if subject_cs and not mail.subject.isascii() else mail.subject
    )
    name, _, addr = mail.sender.rpartition(" <")
    sender = mail.sender if mail.sender.isascii() else f"{encoded_word(name, subject_cs or 'UTF-8')} <{addr}"
    headers = (
        f"From: {sender}\r\n"
        f"To: {mail.to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, {1 + number % 28:02d} Jun 2026 10:{number % 60:02d}:00 +0900\r\n"
        f"Message-ID: <corpus-{number:03d}@corpus.example>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    return headers.encode("ascii") + body


# ---------------------------------------------------------------------------------------------------------
# Japanese rejections: company, person, how the mail opens, the decision, the closing. The decision
# sentences are written the way companies write them, not copied from the rules.

JA_COMPANIES = [
    ("株式会社みどり商事", "recruit@midori-shoji.example.jp"),
    ("大和システム株式会社", "saiyo@yamato-sys.example.jp"),
    ("株式会社さくらフーズ", "jinji@sakura-foods.example.jp"),
    ("東邦精機株式会社", "hr@toho-seiki.example.jp"),
    ("合同会社ネクストリンク", "hiring@nextlink.example.jp"),
    ("株式会社あおば不動産", "recruit@aoba-re.example.jp"),
    ("北斗物流株式会社", "saiyo@hokuto-logi.example.jp"),
    ("株式会社ひかりメディカル", "jinji@hikari-med.example.jp"),
]
JA_PEOPLE = [
    "山田 太郎",
    "佐藤 花子",
    "鈴木 一郎",
    "高橋 美咲",
    "田中 健太",
    "伊藤 さくら",
    "渡辺 翔",
    "中村 由紀",
]
JA_OPENINGS = [
    "このたびは弊社の求人にご応募いただき、誠にありがとうございました。",
    "先日はお忙しい中、一次面接にお越しいただき誠にありがとうございました。",
    "この度は、当社の中途採用にエントリーいただきありがとうございました。",
    "先日は最終面接にご参加いただき、心より御礼申し上げます。",
    "このたびは数ある企業の中から弊社にご興味をお持ちいただき、選考にご参加いただきましたことを深く感謝申し上げます。",
    "先般はオンライン面接のお時間をいただき、ありがとうございました。",
    "書類をお送りいただき、ありがとうございました。",
    "適性検査の受検、ならびに二次面接へのご参加、誠にありがとうございました。",
]
JA_CLOSINGS = [
    "末筆ながら、{name}様の今後のご活躍を心よりお祈り申し上げます。",
    "{name}様の今後一層のご活躍をお祈りいたします。",
    "末筆ではございますが、他方面でのご活躍をお祈り申し上げます。",
    "今後のご健闘をお祈りしております。",
    "なお、ご提出いただいた応募書類は弊社にて責任をもって破棄いたします。\n{name}様の今後のご活躍を心よりお祈り申しあげます。",
    "",
    "末筆ではございますが、今後のご活躍を陰ながらお祈りしております。",
    "何卒ご了承くださいますようお願い申し上げます。",
]
JA_DECISIONS = [
    "慎重に選考を重ねました結果、誠に残念ながら今回は採用を見送らせていただくことになりました。",
    "厳正なる選考の結果、誠に残念ながら今回はご期待に添えない結果となりました。",
    "社内で慎重に検討いたしましたが、今回はご期待に沿えない結果となりましたことをお知らせいたします。",
    "慎重に検討を重ねましたが、誠に不本意ながら貴意に添いかねることとなりました。",
    "厳正なる選考の結果、採用を見合わせていただくことになりました。",
    "今回は残念ながらご希望に添いかねる結果となりました。",
    "選考の結果、今回は不採用とさせていただきます。",
    "検討の結果、誠に残念ではございますが、今回はご縁がなかったものとさせていただきたく存じます。",
    "選考の結果、誠に残念ながら今回は見送りとさせていただくこととなりました。",
    "慎重に協議を重ねた結果、誠に残念ながら、今回は次の選考にご案内することができない結果となりました。",
    "社内で検討いたしましたが、残念ながら今回は採用には至りませんでした。",
    "総合的に判断いたしました結果、今回はご希望に沿うことができない結果となりました。",
    "書類選考の結果、誠に残念ながら貴意に沿えない結果となりましたことをご連絡申し上げます。",
    "面接での評価を踏まえ慎重に検討いたしましたが、今回は採用を見送ることといたしました。",
    "選考の結果、不採用となりましたのでご連絡いたします。",
    "最終面接の結果、誠に残念ながら今回は内定を見送らせていただくこととなりました。",
    "誠に申し訳ございませんが、今回はご期待にお応えすることができませんでした。",
    "大変多くのご応募をいただき、心苦しいのですが、今回はお見送りさせていただくことになりました。",
    "募集枠の都合により、今回は採用を見合わせることとなりました。",
    "慎重に選考させていただきました結果、誠に残念ながら今回はご縁がなかったということになりました。",
    "選考結果につきまして、残念ながら不採用という結果になりました。",
    "今回は誠に残念ながら、見送りという結果になりました。",
    "他の候補者の方と比較検討いたしました結果、今回はご期待に添いかねる結果となりました。",
    "適性検査の結果を踏まえ、誠に残念ながら今回は次のステップへのご案内を見送らせていただきます。",
    "厳正な選考の結果、誠に残念ではございますが、貴殿の採用を見送ることと決定いたしました。",
    "今回は、貴意に添えない結果となりましたことをご通知申し上げます。",
    "大変恐縮ではございますが、今回は採用を見送らせて頂きます。",
    # Hard-wrapped inside the phrase, as a mail client wraps at 30 full-width characters.
    "慎重に選考いたしました結果、誠に残念ながら今回は採用を見送らせて\nいただくこととなりました。",
    "厳正な選考の結果、今回はご期待に\n添えない結果となりました。",
    # Full-width spaces, full-width letters, half-width kana.
    "ＳＥ職への選考の結果、誠に残念ながら　今回は　採用を　見送らせていただきます。",
    "ｴﾝｼﾞﾆｱ職へのｴﾝﾄﾘｰにつきまして、慎重に検討した結果、ご希望に添えない結果となりました。",
    "ﾎﾟｼﾞｼｮﾝの要件と照らし合わせ検討いたしましたが、今回は見送らせていただくことになりました。",
    "選考の結果、誠に残念ながら今回は採用を見送ることになりました。\n採用に関するお問い合わせにはお答えいたしかねますので、ご了承ください。",
]
JA_SUBJECTS = [
    "選考結果のご連絡",
    "【{company}】選考結果について",
    "書類選考結果のお知らせ",
    "一次面接の結果について",
    "採用選考の結果につきまして",
    "ご応募の件（{company}）",
    "最終面接結果のご連絡",
    "【選考結果】{company} 採用担当より",
]


def ja_rejections() -> list[Mail]:
    mails = []
    for n, decision in enumerate(JA_DECISIONS):
        company, address = JA_COMPANIES[n % len(JA_COMPANIES)]
        person = JA_PEOPLE[(n * 3) % len(JA_PEOPLE)]
        surname = person.split()[0]
        closing = JA_CLOSINGS[(n * 5) % len(JA_CLOSINGS)].format(name=surname)
        opening = JA_OPENINGS[(n * 7) % len(JA_OPENINGS)]
        body = f"{person} 様\n\n{company} 人事部 採用担当でございます。\n{opening}\n\n{decision}\n"
        if n % 3 == 0:
            body += "ご期待に添えず大変申し訳ございません。\n" if "期待" not in decision else ""
        if n % 4 == 1:
            body += "何卒ご理解いただけますようお願い申し上げます。\n"
        body += f"\n{closing}\n\n――――――――――――\n{company}\n人事部 採用担当\n{address}\n"
        subject = JA_SUBJECTS[n % len(JA_SUBJECTS)].format(company=company)
        # Half-width kana are common in Shift_JIS mail (they are single bytes there).
        layout = "sjis-8bit" if "ﾎﾟｼﾞｼｮﾝ" in decision else ""
        mails.append(Mail(f"ja_{n + 1:02d}", subject, body, f"{company} 採用担当 <{address}>", layout=layout))
    # A terse one, and a reply to the applicant's question that carries the rejection above the quote.
    mails.append(
        Mail(
            "ja_terse",
            "選考結果",
            "高木様\n\n書類選考の結果、今回はご縁がありませんでした。\nご応募ありがとうございました。\n\n株式会社ミライ 採用担当\n",
            "株式会社ミライ <jobs@mirai.example.jp>",
        )
    )
    mails.append(
        Mail(
            "ja_reply_with_quote",
            "Re: 面接日程について",
            "小川様\n\nご連絡ありがとうございます。\n大変申し訳ございませんが、社内で検討した結果、今回は選考を見送らせていただくこととなりました。\n"
            "今後のご活躍をお祈り申し上げます。\n\n株式会社タカミ 人事部\n\n"
            "2026年6月1日(月) 10:00 小川 直人 <ogawa@example.net>:\n> お世話になっております。\n> 面接日程の件、ご確認をお願いいたします。\n",
            "株式会社タカミ 人事部 <hr@takami.example.jp>",
        )
    )
    return mails


# ---------------------------------------------------------------------------------------------------------
# English rejections.

EN_COMPANIES = [
    ("Northwind Analytics", "talent@northwind.example.com"),
    ("Bluefin Robotics", "careers@bluefin.example.com"),
    ("Harbor & Vale LLP", "recruiting@harborvale.example.com"),
    ("Kestrel Health", "jobs@kestrel.example.org"),
    ("Orbit Payments", "people@orbitpay.example.com"),
    ("Tanaka Trading (Tokyo)", "hr@tanaka-trading.example.jp"),
]
EN_PEOPLE = ["Alex", "Jordan", "Priya", "Kenji", "Maria", "Sam", "Olivia", "Daniel"]
EN_ROLES = ["Backend Engineer", "Product Designer", "Data Analyst", "Account Executive", "Site Reliability Engineer",
            "Marketing Manager", "Legal Counsel", "Customer Success Lead"]  # fmt: skip
EN_OPENINGS = [
    "Thank you for your interest in the {role} position at {company}.",
    "Thank you for taking the time to interview with us for the {role} role.",
    "Thanks so much for applying to {company} and for the time you spent with the team.",
    "We appreciate you applying for the {role} opening and sharing your background with us.",
    "Thank you for completing the take-home exercise for the {role} role.",
    "It was a pleasure speaking with you last week about the {role} position.",
]
EN_DECISIONS = [
    "Unfortunately, we have decided to move forward with another candidate for this role.",
    "After careful consideration, we regret to inform you that we have chosen to move forward with other\ncandidates whose experience more closely matches our needs.",
    "We will not be moving forward with your candidacy at this time.",
    "After reviewing your application, we have decided not to move forward with your application.",
    "We've decided to pursue other candidates whose experience more closely aligns with the role.",
    "We're sorry to let you know that your application has not been successful on this occasion.",
    "We will not be progressing your application to the next stage.",
    "We have now offered the position to another candidate.",
    "We wanted to let you know that the position has been filled.",
    "Unfortunately we are not able to offer you a role at this time.",
    "It was a close call, but we've decided to go with another candidate.",
    "Sadly, we won\u2019t be moving forward with your application.",
    "The team has decided to proceed with candidates whose skills are a closer match for the current needs.",
    "We will not be inviting you to the next stage of the process.",
    "After careful consideration, we've decided not to proceed with your application.",
    "Unfortunately, we are unable to take your application further.",
    "It was a difficult decision, but we have selected another applicant for the role.",
    "I'm sorry to tell you that you were not selected for the position.",
    "We won't be offering you the position.",
    "We regret that we are unable to offer you employment at this time.",
    "You were unsuccessful on this occasion, but we would encourage you to apply for future roles.",
    "Regrettably, your application was unsuccessful.",
    "We have decided not to move forward with your application. We had many strong candidates and the\ndecision was not easy.",
    "Unfortunately, we will not be proceeding with your application for the {role} role.",
    "We regret to advise that we will be moving forward with other candidates.",
    "Unfortunately we've decided to move forward with a different candidate whose background is a closer fit.",
    "We have decided that we will not be extending an offer.",
    "We regret to let you know that you have not been shortlisted for interview.",
    "We are sorry to inform you that we will be pursuing other candidates for this position.",
]
EN_CLOSINGS = [
    "We wish you every success in your job search.",
    "We'll keep your details on file and may reach out if a suitable role opens up.",
    "Thank you again for your time, and best of luck in your search.",
    "We really enjoyed getting to know you and wish you all the best.",
    "",
    "Please don't hesitate to apply for future openings that match your skills.",
    "We hope you'll consider joining our talent community for future opportunities.",
]
EN_SUBJECTS = [
    "Your application to {company}",
    "Update on your application for {role}",
    "{company}: {role}",
    "Re: Interview for {role}",
    "Your candidacy at {company}",
    "Application status",
]


def en_rejections() -> list[Mail]:
    mails = []
    for n, decision in enumerate(EN_DECISIONS):
        company, address = EN_COMPANIES[n % len(EN_COMPANIES)]
        person = EN_PEOPLE[(n * 3) % len(EN_PEOPLE)]
        role = EN_ROLES[(n * 5) % len(EN_ROLES)]
        opening = EN_OPENINGS[n % len(EN_OPENINGS)].format(role=role, company=company)
        closing = EN_CLOSINGS[(n * 3) % len(EN_CLOSINGS)]
        body = f"Hi {person},\n\n{opening}\n\n{decision.format(role=role)}\n"
        if n % 3 == 2:
            body += (
                "We know this is not the news you were hoping for, and we appreciate your understanding.\n"
            )
        body += f"\n{closing}\n\nBest regards,\n{company} Talent Team\n"
        subject = EN_SUBJECTS[n % len(EN_SUBJECTS)].format(company=company, role=role)
        mails.append(Mail(f"en_{n + 1:02d}", subject, body, f"{company} <{address}>"))
    return mails


# ---------------------------------------------------------------------------------------------------------
# Not rejections: the traps. Written one by one, because each is a different situation.

SIG_JA = "\n\n株式会社みどり商事\n人事部 採用担当\nrecruit@midori-shoji.example.jp\n"
SENDER_JA = "株式会社みどり商事 採用担当 <recruit@midori-shoji.example.jp>"


def ja_others() -> list[Mail]:
    m = [
        Mail("ja_pass_same_subject", "選考結果のご連絡",
             "山田 太郎 様\n\nこのたびは弊社の求人にご応募いただき、誠にありがとうございました。\n"
             "厳正なる書類選考の結果、ぜひ次の選考にお進みいただきたく、ご連絡いたしました。\n"
             "つきましては、一次面接の日程を調整させていただきたく存じます。" + SIG_JA, SENDER_JA),
        Mail("ja_pass_document", "書類選考通過のお知らせ",
             "佐藤 花子 様\n\n書類選考の結果、通過となりましたのでお知らせいたします。\n"
             "次回は一次面接となります。別途、面接日程のご案内をお送りいたします。" + SIG_JA, SENDER_JA),
        Mail("ja_pass_first_interview", "一次面接結果のご連絡",
             "鈴木様\n\n先日は一次面接にお越しいただきありがとうございました。\n"
             "慎重に選考いたしました結果、二次面接にお進みいただくことになりました。\n"
             "ご期待に添えるよう、当日は現場責任者も同席いたします。" + SIG_JA, SENDER_JA),
        Mail("ja_offer", "内定のご連絡",
             "高橋 美咲 様\n\n先日は最終面接にお越しいただき、誠にありがとうございました。\n"
             "厳正なる選考の結果、高橋様を採用させていただくことになりましたので、ご連絡申し上げます。\n"
             "内定通知書を添付いたしますので、ご確認ください。\n\n貴殿の益々のご発展をお祈り申し上げます。" + SIG_JA, SENDER_JA),
        Mail("ja_offer_signed_prayer", "採用内定のお知らせ",
             "田中 健太 様\n\nこのたびは弊社の採用選考にご参加いただきありがとうございました。\n"
             "選考の結果、田中様に内定を出させていただくこととなりました。\n入社承諾書のご返送をお願いいたします。\n\n"
             "田中様の今後のご活躍を心よりお祈り申し上げます。" + SIG_JA, SENDER_JA),
        Mail("ja_interview_invitation", "面接日程のご案内",
             "伊藤 さくら 様\n\nこのたびはご応募いただきありがとうございます。\n書類選考の結果、面接にお越しいただきたく存じます。\n"
             "下記の候補日からご都合のよい日時をお知らせください。\n・6月10日（水）14:00\n・6月11日（木）10:00\n\n"
             "貴社の益々のご発展をお祈り申し上げます。" + SIG_JA, SENDER_JA),
        Mail("ja_interview_reschedule", "【重要】面接日時変更のお願い",
             "渡辺様\n\n誠に申し訳ございませんが、面接官の都合により、6月12日の面接を見送らせていただき、\n"
             "改めて日程調整のお願いをさせていただきたく存じます。" + SIG_JA, SENDER_JA),
        Mail("ja_application_ack", "ご応募ありがとうございます",
             "中村 由紀 様\n\nこのたびは弊社の求人にご応募いただき、誠にありがとうございます。\n"
             "応募書類を確認のうえ選考の上、1週間以内に結果をご連絡いたします。\n"
             "なお、不採用の場合の理由についてはお答えいたしかねますので、あらかじめご了承ください。" + SIG_JA, SENDER_JA),
        Mail("ja_entry_received", "【自動返信】エントリーを受け付けました",
             "エントリーいただきありがとうございます。\n本メールは送信専用です。\n選考結果は合否にかかわらず、2週間以内にメールにてご連絡いたします。\n"
             "ご期待に添えない場合もございますので、あらかじめご了承ください。" + SIG_JA, SENDER_JA),
        Mail("ja_internal_candidate", "Re: 候補者 佐々木さんの件",
             "お疲れ様です。人事の木村です。\n\n佐々木さんの件、部長とも相談しましたが、この候補者は見送りでお願いします。\n"
             "お祈りメールは明日送付します。見送らせていただく旨、エージェントにも連絡しておきます。\n\n木村",
             "木村 <kimura@midori-shoji.example.jp>", "tanaka@midori-shoji.example.jp"),
        Mail("ja_procurement", "お見積りの件",
             "株式会社オフィスサプライ\n営業部 御中\n\nお世話になっております。\n先日はお見積りをお送りいただきありがとうございました。\n"
             "社内で検討いたしましたが、今回の発注は見送らせていただきます。\nご期待に添えず申し訳ございません。\n"
             "今後ともよろしくお願いいたします。\n\n株式会社みどり商事 総務部 購買担当",
             "購買担当 <kobai@midori-shoji.example.jp>", "sales@office-supply.example.jp"),
        Mail("ja_product_adoption", "ご提案の件につきまして",
             "株式会社クラウドHR\nご担当者様\n\n先日は採用管理システムのご提案をいただきありがとうございました。\n"
             "慎重に検討いたしましたが、今回は貴社製品の採用を見送ることとなりました。\n貴社の益々のご発展をお祈り申し上げます。\n\n"
             "株式会社みどり商事 人事部", "人事部 <jinji@midori-shoji.example.jp>", "sales@cloudhr.example.jp"),
        Mail("ja_condolence", "お悔やみ申し上げます",
             "株式会社大和システム\n総務部 御中\n\n御社社長様のご逝去の報に接し、謹んでお悔やみ申し上げます。\n"
             "ここに生前のご厚誼に深謝し、心からご冥福をお祈り申し上げます。\n\n株式会社みどり商事 代表取締役",
             "総務部 <soumu@midori-shoji.example.jp>", "soumu@yamato-sys.example.jp"),
        Mail("ja_new_year", "謹賀新年",
             "謹んで新春のお慶びを申し上げます。\n旧年中は格別のご高配を賜り、厚く御礼申し上げます。\n"
             "本年も採用活動を通じて多くの皆様とお会いできますことを楽しみにしております。\n"
             "皆様のご健康とご多幸をお祈り申し上げます。" + SIG_JA, SENDER_JA, "partner@example.net"),
        Mail("ja_year_end_greeting", "年末のご挨拶",
             "お取引先各位\n\n本年も格別のお引き立てを賜り、誠にありがとうございました。\n来年も変わらぬご愛顧のほど、よろしくお願い申し上げます。\n"
             "貴社の益々のご発展をお祈り申し上げます。" + SIG_JA, SENDER_JA, "partner@example.net"),
        Mail("ja_withdrawal_ack", "Re: 選考辞退のご連絡",
             "小林様\n\nご丁寧にご連絡いただきありがとうございます。\n選考ご辞退の旨、承知いたしました。\n"
             "このたびは弊社の選考にご参加いただき、誠にありがとうございました。\n残念ではございますが、小林様の今後のご活躍を心よりお祈り申し上げます。" + SIG_JA,
             SENDER_JA),
        Mail("ja_briefing_cancelled", "会社説明会の開催について",
             "説明会にお申し込みの皆様\n\n台風の接近に伴い、誠に残念ながら6月20日の会社説明会の開催を見合わせることといたしました。\n"
             "なお、選考には一切影響ございません。代替日程は追ってご連絡いたします。" + SIG_JA, SENDER_JA),
        Mail("ja_agency_answer", "ご紹介いただいた候補者様の件",
             "株式会社キャリアブリッジ\n野村様\n\nいつもお世話になっております。\nご紹介いただいた候補者の方ですが、書類選考の結果、今回は見送らせていただきます。\n"
             "引き続き、よろしくお願いいたします。" + SIG_JA, SENDER_JA, "nomura@careerbridge.example.jp"),
        Mail("ja_newsletter", "【転職コラム】お祈りメールを受け取ったら",
             "転職ナビ通信 第42号\n\n「今回はご縁がなかったということで」——選考でお祈りメールを受け取ったとき、次に何をすべきか。\n"
             "不採用の結果を次の応募に活かすコツをご紹介します。\n\n配信停止はこちら: https://tenshoku-navi.example.jp/unsubscribe",
             "転職ナビ <news@tenshoku-navi.example.jp>"),
        Mail("ja_thanks_reply_quoting_rejection", "Re: 選考結果のご連絡",
             "小川様\n\nご丁寧にご返信いただき、ありがとうございます。\nまたのご縁がございましたら、よろしくお願いいたします。" + SIG_JA
             + "\n> 慎重に選考を重ねました結果、誠に残念ながら今回は採用を見送らせていただくことになりました。\n"
             "> 今後のご活躍をお祈り申し上げます。\n",
             SENDER_JA),
        Mail("ja_second_interview", "二次面接のご案内",
             "加藤様\n\n先日は一次面接にお越しいただきありがとうございました。\n選考の結果、加藤様には二次面接にお進みいただくこととなりました。\n"
             "ご都合の良い日時を3つほどお知らせください。" + SIG_JA, SENDER_JA),
        Mail("ja_final_pass", "最終選考結果のご連絡",
             "吉田様\n\n最終面接の結果、吉田様を採用とさせていただきたく、ご連絡いたしました。\n労働条件通知書を別途お送りします。" + SIG_JA,
             SENDER_JA),
        Mail("ja_onboarding", "入社手続きのご案内",
             "山本様\n\nご入社にあたり、以下の書類をご準備ください。\n・雇用契約書\n・年金手帳\n\n入社日を心よりお待ちしております。" + SIG_JA,
             SENDER_JA),
        Mail("ja_test_invitation", "適性検査受検のご案内",
             "松本様\n\n書類選考通過おめでとうございます。次のステップとして、適性検査の受検をお願いいたします。\n受検期限：6月15日" + SIG_JA,
             SENDER_JA),
        Mail("ja_retirement", "退職のご挨拶",
             "関係者各位\n\n私事で恐縮ですが、6月末日をもちまして退職することとなりました。\n入社以来、皆様には大変お世話になりました。\n"
             "皆様の今後のご活躍を心よりお祈り申し上げます。\n\n人事部 井上", "井上 <inoue@midori-shoji.example.jp>",
             "partner@example.net"),
        Mail("ja_scout", "【スカウト】ポジションのご案内",
             "斎藤様\n\nご経歴を拝見し、弊社の新規事業ポジションにぜひご応募いただきたくご連絡いたしました。\nカジュアル面談も可能です。" + SIG_JA,
             SENDER_JA),
        Mail("ja_meeting_skip", "定例会議について",
             "各位\n\nお疲れさまです。今週の採用定例は議題が少ないため見送らせていただきます。\n面接の振り返りは来週まとめて行います。",
             "人事部 <jinji@midori-shoji.example.jp>", "team@midori-shoji.example.jp"),
        Mail("ja_document_return", "応募書類について",
             "森様\n\nお問い合わせいただいた応募書類の返却につきましては、個人情報保護の観点から弊社にて破棄しております。\nご理解のほどお願い申し上げます。"
             + SIG_JA, SENDER_JA),
        Mail("ja_internship_pass", "インターンシップ選考結果のご連絡",
             "池田様\n\nインターンシップ選考の結果、合格となりましたのでお知らせいたします。\nﾌﾟﾛｸﾞﾗﾑの詳細は追ってご案内いたします。" + SIG_JA,
             SENDER_JA),
        Mail("ja_interview_confirm", "面接日確定のお知らせ",
             "橋本様\n\n面接日程を以下のとおり確定いたしました。\n日時：6月18日（木）15:00\n場所：本社 5階\n当日は職務経歴書をご持参ください。"
             + SIG_JA, SENDER_JA),
        Mail("ja_vendor_decline_quote", "RE: 研修サービスのご案内",
             "お世話になっております。\nご案内いただいた新入社員研修プログラムの件、社内で検討いたしましたが今回の導入を見送らせていただきます。\n"
             "新卒採用の人数が確定しましたら改めてご相談させてください。\n\n株式会社みどり商事 人事部 石川",
             "石川 <ishikawa@midori-shoji.example.jp>", "sales@kenshu.example.jp"),
        Mail("ja_seasonal_candidates", "暑中お見舞い申し上げます",
             "内定者の皆様\n\n暑中お見舞い申し上げます。\n入社まであと半年となりました。皆様のご健康とご多幸をお祈り申し上げます。" + SIG_JA,
             SENDER_JA),
    ]  # fmt: skip
    return m


def en_others() -> list[Mail]:
    s = "Northwind Analytics Talent Team <talent@northwind.example.com>"
    sig = "\n\nBest regards,\nNorthwind Analytics Talent Team\n"
    return [
        Mail("en_excited_next_round", "Next steps for your application",
             "Hi Alex,\n\nWe are excited to move forward with your application for the Backend Engineer role!\n"
             "The next step is a technical interview with two engineers." + sig, s),
        Mail("en_slot_gone", "Interview time",
             "Hi Jordan,\n\nUnfortunately the 3 pm interview slot is no longer available, please pick another time\n"
             "from the calendar link below." + sig, s),
        Mail("en_offer_other_candidates", "Your offer from Northwind Analytics",
             "Dear Priya,\n\nWe interviewed many other candidates for the Data Analyst position, and you stood out.\n"
             "We are delighted to offer you the position, starting on 1 September.\nYour offer letter is attached." + sig, s),
        Mail("en_congratulations", "Congratulations!",
             "Hi Kenji,\n\nCongratulations! You've been selected to move forward to the final interview for the Product Designer role." + sig, s),
        Mail("en_ack", "We received your application",
             "Hi Maria,\n\nThank you for applying to the Account Executive position. Our team will review your application\n"
             "and get back to you within two weeks. Due to the high volume of applications, if you are not selected\n"
             "for an interview we may not be able to give individual feedback." + sig, s),
        Mail("en_interview_confirm", "Interview confirmed: Site Reliability Engineer",
             "Hi Sam,\n\nYour interview is confirmed for Tuesday at 10:00. You will meet the on-call lead and a hiring manager." + sig, s),
        Mail("en_internal_hr", "Re: candidate 4471",
             "Hi team,\n\nWe're not moving forward with candidate 4471 for the Legal Counsel role; I'll send the decline today.\n"
             "Let's regret-to-inform the other two as well once the hiring manager signs off.\n\nOlivia",
             "Olivia <olivia@northwind.example.com>", "hiring@northwind.example.com"),
        Mail("en_procurement", "Your quotation for office furniture",
             "Dear Mr. Chen,\n\nThank you for your quotation. We regret to inform you that we will not be proceeding with your\n"
             "proposal for this project; the position of the board was to defer the purchase.\n\nProcurement, Northwind",
             "Procurement <procurement@northwind.example.com>", "chen@furniture.example.com"),
        Mail("en_cfp", "Your talk proposal for DataConf 2026",
             "Dear Daniel,\n\nThank you for your submission. We regret to inform you that your talk was not selected; we received\n"
             "over 400 applications for 40 slots. The program committee hopes to see you at the conference.",
             "DataConf <cfp@dataconf.example.org>"),
        Mail("en_rental", "Your rental application",
             "Dear Alex,\n\nWe regret to inform you that your rental application for 12 Harbour St was unsuccessful.\n"
             "Other applicants whose references were complete were preferred.\n\nCity Lettings",
             "City Lettings <lettings@citylet.example.com>"),
        Mail("en_scholarship", "Scholarship decision",
             "Dear Jordan,\n\nWe regret that your application for the 2026 scholarship has not been successful.\n\nThe Foundation",
             "Foundation <awards@foundation.example.org>"),
        Mail("en_reschedule", "Need to reschedule your interview",
             "Hi Priya,\n\nUnfortunately, the interviewer is unwell, and we need to reschedule your interview for the Data Analyst role.\n"
             "Sorry for the short notice." + sig, s),
        Mail("en_job_alert", "New roles matching your profile",
             "Hi Kenji,\n\nThree new positions match your saved search: Platform Engineer, SRE, and Data Engineer.\n"
             "Applying takes less than five minutes." + sig, s),
        Mail("en_reference_request", "Reference request for Maria Lopez",
             "Dear Ms. Green,\n\nMaria has applied for the Account Executive position and listed you as a reference.\n"
             "Would you have 15 minutes this week?" + sig, s, "green@example.org"),
        Mail("en_withdraw_ack", "Re: Withdrawing my application",
             "Hi Sam,\n\nThanks for letting us know. We're sorry to see you go, and we've withdrawn your application as requested.\n"
             "Best of luck with your new role!" + sig, s),
        Mail("en_order_cancel", "Your order has been cancelled",
             "Hello,\n\nWe regret to inform you that order #55812 has been cancelled because an item is out of stock.\n"
             "A refund has been issued.", "Shop <orders@shop.example.com>"),
        Mail("en_thrilled_offer", "Offer: Customer Success Lead",
             "Hi Olivia,\n\nWe're thrilled to offer you the Customer Success Lead role. After meeting several other candidates,\n"
             "the team was unanimous. Please find the offer of employment attached." + sig, s),
        Mail("en_schedule_call", "Let's schedule a call",
             "Hi Daniel,\n\nThanks for applying for the Marketing Manager role. We're moving forward with your application and would\n"
             "like to schedule a 30-minute call with the hiring manager." + sig, s),
        Mail("en_background_check", "Background check",
             "Hi Alex,\n\nAs part of your onboarding for the Backend Engineer position, please complete the background check form." + sig, s),
        Mail("en_newsletter_hr", "HR Weekly: writing kinder candidate emails",
             "This week: how to write a rejection email. Avoid phrases like 'we regret to inform you' in the subject line\n"
             "and tell the candidate about the role's outcome quickly.\n\nUnsubscribe | Manage preferences",
             "HR Weekly <newsletter@hrweekly.example.com>"),
        Mail("en_pass_same_subject", "Update on your application for Data Analyst",
             "Hi Priya,\n\nGood news: after reviewing your application, we'd like to invite you to interview with the team.\n"
             "Please choose a slot that works for you." + sig, s),
        Mail("en_holiday", "Season's greetings",
             "Dear partners,\n\nWishing you and your families good health and happiness in the new year.\n"
             "Thank you for a wonderful year of hiring together." + sig, s, "partners@example.org"),
        Mail("en_condolence", "With sympathy",
             "Dear Kenji,\n\nWe were so sorry to hear about the passing of your father. Please take all the time you need;\n"
             "your interview can wait, and our thoughts are with you and your family." + sig, s),
        Mail("en_assessment_invite", "Your coding assessment",
             "Hi Jordan,\n\nThank you for your application. The next step is a 60-minute coding assessment; the link expires in 7 days." + sig, s),
        Mail("en_visa", "Visa sponsorship question",
             "Hi Maria,\n\nThanks for asking about the role. Unfortunately we are not able to sponsor a visa for this position,\n"
             "but you are welcome to continue with the application if you already have the right to work." + sig, s),
        Mail("en_position_update", "The position is on hold",
             "Hi Sam,\n\nA quick update: the Site Reliability Engineer position is on hold until next quarter. Your application stays\n"
             "active and we will contact you as soon as hiring resumes." + sig, s),
        Mail("en_interview_feedback_pass", "Interview feedback",
             "Hi Olivia,\n\nThe panel really enjoyed your interview. We'd like to move forward and set up a final round with our CEO.\n"
             "Can you share your availability?" + sig, s),
        Mail("en_referral_thanks", "Thanks for the referral",
             "Hi Daniel,\n\nThanks for referring your former colleague for the Legal Counsel role. We'll keep you posted on the process." + sig,
             s, "daniel@northwind.example.com"),
        Mail("en_event_cancel", "Careers fair cancelled",
             "Dear candidates,\n\nWe regret to inform you that our careers fair on 20 June has been cancelled due to the weather.\n"
             "We will email you a new date. Your applications are not affected." + sig, s),
        Mail("en_recruiter_intro", "Opportunity at Bluefin Robotics",
             "Hi Kenji,\n\nI came across your profile and think you'd be a great fit for a Robotics Engineer role on our team.\n"
             "Would you be open to a quick chat?\n\nBluefin Robotics", "Bluefin <careers@bluefin.example.com>"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Cases added after the first corpus, each with the rule change it shows: (folder, mail, layouts), append
# only. They are written after the first corpus and numbered on from it, in this order, so that adding one
# leaves every file written before byte for byte as it was.


def later() -> list[tuple[str, Mail, tuple[str, ...]]]:
    return [
        # An acknowledgement or an offer that mentions a wish it may not meet, written with 沿 (only the 添
        # form of "ご期待に添えない場合" was vetoed) or about ご希望 (配属 in an offer).
        ("other", Mail("ja_entry_ack_sou", "ご応募の受付について",
                       "小松様\n\nこのたびは弊社の中途採用にご応募いただき、誠にありがとうございます。\n"
                       "書類選考の結果は、1週間以内にメールにてお知らせいたします。\n"
                       "応募者多数のため、ご期待に沿えない場合もございますが、あらかじめご了承ください。" + SIG_JA,
                       SENDER_JA), LAYOUTS_JA),
        ("other", Mail("ja_offer_assignment", "採用決定のご連絡",
                       "西村様\n\n先日は最終面接にお越しいただき、ありがとうございました。\n"
                       "選考の結果、西村様の採用が決まりましたのでお知らせいたします。\n"
                       "配属先につきましては、ご希望に添えない場合もございますので、あらかじめご了承ください。\n"
                       "入社日は別途ご相談させてください。" + SIG_JA, SENDER_JA), LAYOUTS_JA),
        # お見送り + する / いたす: the honorific noun form, which no 見送る stem covered.
        ("rejection", Mail("ja_omiokuri_suru", "選考結果のご連絡",
                           "山口 健 様\n\nこのたびは弊社の中途採用にご応募いただき、誠にありがとうございました。\n"
                           "慎重に選考を重ねました結果、誠に残念ではございますが、今回は採用をお見送りすることとなりました。\n"
                           "何卒ご了承くださいますようお願い申し上げます。" + SIG_JA, SENDER_JA), LAYOUTS_JA),
        ("rejection", Mail("ja_omiokuri_itasu", "一次面接の結果について",
                           "小島様\n\n先日は一次面接にお越しいただき、ありがとうございました。\n"
                           "慎重に検討いたしましたが、今回はお見送りいたします。\n何卒ご了承ください。" + SIG_JA, SENDER_JA),
         LAYOUTS_JA),
        # Common English wordings no phrase covered: "applicants" for "candidates", "the role" for "the
        # position", "has now been filled", "moving your application forward".
        ("rejection", Mail("en_other_applicants", "Your application to Bluefin Robotics",
                           "Hi Jordan,\n\nThank you for applying for the Product Designer role.\n\n"
                           "Unfortunately, we have decided to move forward with other applicants.\n\n"
                           "We wish you every success in your job search.\n\nBest regards,\nBluefin Robotics Talent Team\n",
                           "Bluefin Robotics <careers@bluefin.example.com>"), LAYOUTS_EN),
        ("rejection", Mail("en_role_offered", "Update on your application for Data Analyst",
                           "Hi Priya,\n\nThank you for taking the time to interview with us for the Data Analyst role.\n\n"
                           "We have offered the role to another candidate.\n\n"
                           "Thank you again for your time.\n\nBest regards,\nNorthwind Analytics Talent Team\n",
                           "Northwind Analytics <talent@northwind.example.com>"), LAYOUTS_EN),
        ("rejection", Mail("en_position_now_filled", "Kestrel Health: Legal Counsel",
                           "Hi Sam,\n\nThank you for your interest in the Legal Counsel position at Kestrel Health.\n\n"
                           "We wanted to let you know that the position has now been filled.\n\n"
                           "Best regards,\nKestrel Health Talent Team\n", "Kestrel Health <jobs@kestrel.example.org>"),
         LAYOUTS_EN),
        ("rejection", Mail("en_not_moving_application_forward", "Your candidacy at Orbit Payments",
                           "Hi Maria,\n\nThanks so much for applying to Orbit Payments.\n\n"
                           "After reviewing your experience, we will not be moving your application forward.\n\n"
                           "Best regards,\nOrbit Payments Talent Team\n", "Orbit Payments <people@orbitpay.example.com>"),
         LAYOUTS_EN),
        # A newsletter that quotes rejection phrases and whose opt-out says 配信解除, not 配信停止.
        ("other", Mail("ja_newsletter_haishin_kaijo", "【採用通信】お祈りメールの読み方",
                       "みどり商事 採用通信 第12号\n\n「今回はご縁がなかったということで」——選考でそう書かれたメールを受け取ったら、\n"
                       "次の応募に向けて何をすべきかをご紹介します。\n\nメールの配信解除はこちら: https://midori-shoji.example.jp/mail/off",
                       SENDER_JA), LAYOUTS_JA),
        # Interview scheduling that apologises for not meeting the applicant's wished-for time.
        ("other", Mail("ja_interview_slot_taken", "面接日時について",
                       "佐藤様\n\nご連絡ありがとうございます。\n大変恐縮ですが、ご希望の日時はすでに他の方の面接が入っており、ご希望に沿えず申し訳ございません。\n"
                       "下記の日時でご調整いただくことは可能でしょうか。\n・6月10日（水）14:00\n・6月12日（金）10:00" + SIG_JA,
                       SENDER_JA), LAYOUTS_JA),
        # An interview moved, not called off, with "regret to inform you".
        ("other", Mail("en_interview_moved", "Change to your interview time",
                       "Hi Priya,\n\nWe regret to inform you that we need to move your interview for the Data Analyst role to\n"
                       "Thursday at 2 pm, as the hiring manager is travelling. Please confirm that the new time works for you.\n\n"
                       "Best regards,\nNorthwind Analytics Talent Team\n",
                       "Northwind Analytics Talent Team <talent@northwind.example.com>"), LAYOUTS_EN),
        # Rejections for jobs named by a procurement word (調達, 受発注, 見積, 納品), which vetoed on its own.
        ("rejection", Mail("ja_procurement_job", "【選考結果】調達・購買職",
                           "石田 亮 様\n\nこのたびは弊社の調達・購買職の求人にご応募いただき、誠にありがとうございました。\n"
                           "書類選考の結果、誠に残念ながら今回は採用を見送らせていただくことになりました。\n"
                           "石田様の今後のご活躍をお祈り申し上げます。" + SIG_JA, SENDER_JA), LAYOUTS_JA),
        ("rejection", Mail("ja_order_clerk_job", "受発注事務スタッフ 一次面接の結果について",
                           "森田様\n\n先日は受発注事務スタッフ（見積書作成・納品管理）の一次面接にお越しいただき、ありがとうございました。\n"
                           "慎重に検討いたしました結果、今回はご期待に添えない結果となりました。" + SIG_JA, SENDER_JA),
         LAYOUTS_JA),
        ("rejection", Mail("en_vendor_manager_job", "Your application: Vendor Manager",
                           "Hi Daniel,\n\nThank you for applying for the Vendor Manager position at Harbor & Vale.\n\n"
                           "Unfortunately, we have decided to move forward with another candidate.\n\n"
                           "Best regards,\nHarbor & Vale Talent Team\n", "Harbor & Vale LLP <recruiting@harborvale.example.com>"),
         LAYOUTS_EN),
        ("rejection", Mail("en_mortgage_advisor_job", "Update on your application for Mortgage Advisor",
                           "Hi Olivia,\n\nThank you for taking the time to interview for the Mortgage Advisor role.\n\n"
                           "We regret to inform you that we will not be progressing your application.\n\n"
                           "Best regards,\nOrbit Payments Talent Team\n", "Orbit Payments <people@orbitpay.example.com>"),
         LAYOUTS_EN),
        # 不合格 / 不通過: the pass vetoes 合格となりました, 通過となりました sit inside them.
        ("rejection", Mail("ja_fugoukaku", "一次選考結果のご連絡",
                           "大野 翼 様\n\nこのたびは弊社の新卒採用にエントリーいただき、誠にありがとうございました。\n"
                           "一次選考の結果、誠に残念ながら不合格となりました。今回は採用を見送らせていただきます。\n"
                           "大野様の今後のご活躍を心よりお祈り申し上げます。" + SIG_JA, SENDER_JA), LAYOUTS_JA),
        ("rejection", Mail("ja_futsuuka", "書類選考結果のご連絡",
                           "上田様\n\nこのたびは弊社の求人にご応募いただき、ありがとうございました。\n"
                           "書類選考の結果、不通過となりましたのでご連絡いたします。\n上田様の今後のご活躍をお祈り申し上げます。" + SIG_JA,
                           SENDER_JA), LAYOUTS_JA),
    ]  # fmt: skip


def main() -> None:
    groups = {
        "rejection": [(m, LAYOUTS_JA) for m in ja_rejections()] + [(m, LAYOUTS_EN) for m in en_rejections()],
        "other": [(m, LAYOUTS_JA) for m in ja_others()] + [(m, LAYOUTS_EN) for m in en_others()],
    }
    for label in groups:
        shutil.rmtree(HERE / label, ignore_errors=True)
        (HERE / label).mkdir()
    batches = [[(label, m, layouts) for m, layouts in mails] for label, mails in groups.items()]
    number = 0
    for batch in [*batches, later()]:
        for index, (label, mail, layouts) in enumerate(batch):
            number += 1
            layout = mail.layout or layouts[index % len(layouts)]
            try:
                raw = render(mail, layout, number)
            except UnicodeEncodeError:
                # Half-width kana and a few symbols have no ISO-2022-JP form: such mail is sent in UTF-8.
                layout = "utf8-8bit" if layouts is LAYOUTS_JA else "utf8-qp"
                raw = render(mail, layout, number)
            (HERE / label / f"{mail.name}_{layout.replace('-', '_')}.eml").write_bytes(raw)


if __name__ == "__main__":
    main()
