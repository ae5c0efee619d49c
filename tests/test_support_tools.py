"""The test tools prove themselves before any relay test relies on them: the Perl DKIM verifier, the recording
sink's faults, Postfix's smtp-sink and smtp-source, swaks and the raw SMTP client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import dkim
import pytest

from support.dkim import make_ed25519_key, make_rsa_key, verify_dkim
from support.sinks import (
    PostfixSmtpSink,
    RecordingSink,
    ToolMissing,
    require_tool,
    run_smtp_source,
    send_raw_smtp,
    swaks,
    swaks_sync,
)

MESSAGE = (
    b"From: HR <hr@acme.example>\r\n"
    b"To: Applicant <applicant@mail.example>\r\n"
    b"Subject: =?UTF-8?B?6YG46ICD57WQ5p6c?=\r\n"
    b"Date: Mon, 01 Jan 2024 09:00:00 +0900\r\n"
    b"Message-ID: <tools-1@acme.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Thank you for applying.\r\n"
    b".a line that starts with a dot\r\n"
    b"\xe4\xbb\x8a\xe5\xbe\x8c\xe3\x81\xae\xe3\x81\x94\xe6\xb4\xbb\xe8\xba\x8d\r\n"
)

# RFC 8463 Appendix A.3: a message signed with both ed25519-sha256 and rsa-sha256, and the keys of A.2.
RFC8463_SIGNED = (
    "\r\n".join(
        [
            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;",
            " d=football.example.com; i=@football.example.com;",
            " q=dns/txt; s=brisbane; t=1528637909; h=from : to :",
            " subject : date : message-id : from : subject : date;",
            " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
            " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus",
            " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==",
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;",
            " d=football.example.com; i=@football.example.com;",
            " q=dns/txt; s=test; t=1528637909; h=from : to : subject :",
            " date : message-id : from : subject : date;",
            " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
            " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3",
            " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz",
            " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=",
            "From: Joe SixPack <joe@football.example.com>",
            "To: Suzie Q <suzie@shopping.example.net>",
            "Subject: Is dinner ready?",
            "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
            "Message-ID: <20030712040037.46341.5F8J@football.example.com>",
            "",
            "Hi.",
            "",
            "We lost the game.  Are you hungry yet?",
            "",
            "Joe.",
            "",
        ]
    )
).encode()
RFC8463_KEYS = {
    "brisbane._domainkey.football.example.com": (
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    ),
    "test._domainkey.football.example.com": (
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6"
        "wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5Qj"
        "vHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
    ),
}


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    base = tmp_path_factory.mktemp("dkim")
    return {"rsa": make_rsa_key(base), "ed25519": make_ed25519_key(base)}


def dkimpy_sign(message: bytes, selector: str, key: Path, algorithm: str) -> bytes:
    header = dkim.sign(
        message,
        selector.encode(),
        b"acme.example",
        key.read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm.encode(),
    )
    return bytes(header) + message


def dns_for(signing_keys: dict[str, tuple[Path, str]]) -> dict[str, str]:
    return {f"{name}._domainkey.acme.example": txt for name, (_, txt) in signing_keys.items()}


# --- DKIM verifier ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "algorithm"), [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")])
def test_dkimpy_signature_verifies_with_mail_dkim(
    signing_keys: dict[str, tuple[Path, str]], selector: str, algorithm: str
) -> None:
    signed = dkimpy_sign(MESSAGE, selector, signing_keys[selector][0], algorithm)
    result = verify_dkim(signed, dns_for(signing_keys), require_domain="acme.example")
    assert result.passed, result
    assert [(s["domain"], s["selector"], s["algorithm"], s["result"]) for s in result.signatures] == [
        ("acme.example", selector, algorithm, "pass")
    ]


def test_rfc8463_example_verifies_both_signatures() -> None:
    result = verify_dkim(RFC8463_SIGNED, RFC8463_KEYS, require_domain="football.example.com")
    assert result.passed, result
    assert sorted(s["algorithm"] for s in result.signatures) == ["ed25519-sha256", "rsa-sha256"]


@pytest.mark.parametrize("selector", ["rsa", "ed25519"])
def test_tampered_body_fails(signing_keys: dict[str, tuple[Path, str]], selector: str) -> None:
    algorithm = "rsa-sha256" if selector == "rsa" else "ed25519-sha256"
    signed = dkimpy_sign(MESSAGE, selector, signing_keys[selector][0], algorithm)
    result = verify_dkim(signed.replace(b"Thank you", b"Thank You"), dns_for(signing_keys))
    assert not result.passed
    assert result.signatures[0]["result"] == "fail"
    assert "body has been altered" in result.signatures[0]["detail"]


def test_tampered_signed_header_fails(signing_keys: dict[str, tuple[Path, str]]) -> None:
    signed = dkimpy_sign(MESSAGE, "ed25519", signing_keys["ed25519"][0], "ed25519-sha256")
    result = verify_dkim(signed.replace(b"From: HR", b"From: CEO"), dns_for(signing_keys))
    assert not result.passed
    assert result.signatures[0]["result"] == "fail"


def test_unsigned_message_is_not_passed(signing_keys: dict[str, tuple[Path, str]]) -> None:
    result = verify_dkim(MESSAGE, dns_for(signing_keys))
    assert not result.passed
    assert result.signatures == []
    assert result.summary["result"] == "none"


def test_one_failing_signature_fails_the_message(signing_keys: dict[str, tuple[Path, str]]) -> None:
    signed = dkimpy_sign(MESSAGE, "rsa", signing_keys["rsa"][0], "rsa-sha256")
    bogus = signed.replace(b"s=rsa;", b"s=ed25519;", 1)  # the RSA signature checked against the Ed25519 key
    result = verify_dkim(bogus, dns_for(signing_keys))
    assert not result.passed
    assert "does not match" in result.signatures[0]["detail"]


def test_require_domain_needs_a_passing_signature_by_that_domain(
    signing_keys: dict[str, tuple[Path, str]],
) -> None:
    signed = dkimpy_sign(MESSAGE, "rsa", signing_keys["rsa"][0], "rsa-sha256")
    assert verify_dkim(signed, dns_for(signing_keys)).passed
    result = verify_dkim(signed, dns_for(signing_keys), require_domain="other.example")
    assert not result.passed
    assert result.summary["result"] == "fail"


def test_dns_is_answered_only_from_the_given_keys(signing_keys: dict[str, tuple[Path, str]]) -> None:
    signed = dkimpy_sign(MESSAGE, "rsa", signing_keys["rsa"][0], "rsa-sha256")
    result = verify_dkim(signed, {})
    assert not result.passed
    assert result.signatures[0]["result"] == "invalid"
    assert "public key" in result.signatures[0]["detail"]


# --- RecordingSink ----------------------------------------------------------------------------------


async def send(
    sink: RecordingSink, recipients: list[str], timeout: float = 5
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    return await aiosmtplib.send(
        MESSAGE,
        sender="hr@acme.example",
        recipients=recipients,
        hostname=sink.host,
        port=sink.port,
        timeout=timeout,
        start_tls=False,
    )


async def test_recording_sink_records_the_exact_bytes_aiosmtplib_sent() -> None:
    async with RecordingSink() as sink:
        await send(sink, ["applicant@mail.example", "second@mail.example"])
    [delivered] = sink.messages
    assert delivered.mail_from == "hr@acme.example"
    assert delivered.rcpt_tos == ["applicant@mail.example", "second@mail.example"]
    assert delivered.content == MESSAGE
    assert [kind for kind, _ in sink.events] == ["MAIL", "RCPT", "RCPT", "DATA"]


async def test_refused_recipient_gets_its_own_reply() -> None:
    async with RecordingSink(refuse_recipients={"gone@mail.example": "550 5.1.1 No such user"}) as sink:
        errors, _ = await send(sink, ["gone@mail.example", "applicant@mail.example"])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send(sink, ["gone@mail.example"])
    assert errors == {"gone@mail.example": aiosmtplib.SMTPResponse(550, "5.1.1 No such user")}
    assert [m.rcpt_tos for m in sink.messages] == [["applicant@mail.example"]]


@pytest.mark.parametrize("reply", ["451 4.3.0 Try again later", "550 5.7.1 Rejected"])
async def test_final_dot_reply(reply: str) -> None:
    async with RecordingSink(replies={".": reply}) as sink:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await send(sink, ["applicant@mail.example"])
    assert info.value.code == int(reply[:3])
    assert sink.messages == []
    assert [m.content for m in sink.rejected] == [MESSAGE]


async def test_reply_to_the_data_command() -> None:
    async with RecordingSink(replies={"DATA": "451 4.3.0 Not now"}) as sink:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await send(sink, ["applicant@mail.example"])
    assert info.value.code == 451
    assert sink.rejected == []


async def test_hang_up_after_data() -> None:
    async with RecordingSink(hang_up={"."}) as sink:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await send(sink, ["applicant@mail.example"])
    assert sink.messages == []
    assert [m.content for m in sink.rejected] == [MESSAGE]


async def test_stall_at_final_dot_times_out() -> None:
    async with RecordingSink(stall={"."}) as sink:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await send(sink, ["applicant@mail.example"], timeout=0.5)
    assert sink.messages == []


async def test_421_greeting() -> None:
    async with RecordingSink(replies={"CONNECT": "421 4.3.2 Not now"}) as sink:
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
            await send(sink, ["applicant@mail.example"])
    assert info.value.code == 421


async def test_421_to_mail() -> None:
    async with RecordingSink(replies={"MAIL": "421 4.3.2 Shutting down"}) as sink:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await send(sink, ["applicant@mail.example"])
    assert info.value.code == 421


@pytest.mark.parametrize("advertise", [True, False])
async def test_smtputf8_and_8bitmime_advertising(advertise: bool) -> None:
    async with RecordingSink(smtputf8=advertise, eightbitmime=advertise) as sink:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=5, start_tls=False)
        async with client:
            await client.ehlo()
            assert client.supports_extension("smtputf8") is advertise
            assert client.supports_extension("8bitmime") is advertise


async def test_send_raw_smtp_keeps_bare_lf_and_collects_replies() -> None:
    async with RecordingSink() as sink:
        replies = await send_raw_smtp(
            sink.host,
            sink.port,
            [
                b"EHLO raw.test\r\n",
                b"MAIL FROM:<a@raw.test>\r\n",
                b"RCPT TO:<b@raw.test>\r\n",
                b"DATA\r\n",
                b"Subject: lf\n\nline1\nline2\r\n.\r\n",
                b"QUIT\r\n",
            ],
        )
    codes = [line[:4] for line in replies if line[3:4] == b" "]
    assert codes == [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 ", b"221 "]
    assert [m.content for m in sink.messages] == [b"Subject: lf\n\nline1\nline2\r\n"]


async def test_swaks_delivers_to_the_recording_sink() -> None:
    async with RecordingSink() as sink:
        proc = await swaks(
            "--server", f"{sink.host}:{sink.port}", "--from", "hr@acme.example", "--to", "a@mail.example",
            "--header", "Subject: swaks", "--body", "hello",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert b"Subject: swaks" in sink.messages[0].content


async def test_smtp_source_into_the_recording_sink() -> None:
    async with RecordingSink() as sink:
        proc = await run_smtp_source(sink.host, sink.port, messages=6, sessions=3, size=2000, timeout=20)
        assert proc.returncode == 0, proc.stderr.decode()
        await sink.wait_for_messages(6, timeout=5)
    assert len(sink.messages) == 6
    assert all(len(m.content) > 2000 for m in sink.messages)


# --- Postfix smtp-sink and smtp-source --------------------------------------------------------------


def test_smtp_sink_receives_from_swaks() -> None:
    with PostfixSmtpSink() as sink:
        proc = swaks_sync(
            "--server", f"{sink.host}:{sink.port}", "--from", "hr@acme.example", "--to", "a@mail.example",
            "--header", "Subject: via smtp-sink", "--body", "hello sink",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        [dump] = sink.wait_for_messages(1)
    assert dump.mail_from == "hr@acme.example"
    assert dump.rcpt_tos == ["a@mail.example"]
    assert b"Subject: via smtp-sink\n" in dump.content
    assert b"\n\nhello sink\n" in dump.content  # the dump has LF line ends


def test_smtp_source_into_smtp_sink() -> None:
    with PostfixSmtpSink() as sink:
        proc = asyncio.run(
            run_smtp_source(sink.host, sink.port, messages=20, sessions=4, size=1000, timeout=20)
        )
        assert proc.returncode == 0, proc.stderr.decode()
        dumps = sink.wait_for_messages(20)
    assert len(dumps) == 20
    assert {d.mail_from for d in dumps} == {"source@smtp-source.test"}


@pytest.mark.parametrize(
    ("options", "error", "code"),
    [
        (("-r", "."), aiosmtplib.SMTPDataError, 450),
        (("-f", "."), aiosmtplib.SMTPDataError, 500),
        (("-Q", "MAIL"), aiosmtplib.SMTPSenderRefused, 421),
        (("-f", "RCPT"), aiosmtplib.SMTPRecipientsRefused, None),
        (("-q", "."), aiosmtplib.SMTPServerDisconnected, None),
    ],
)
async def test_smtp_sink_fault_options(
    options: tuple[str, str], error: type[Exception], code: int | None
) -> None:
    async with PostfixSmtpSink(*options, dump=False) as sink:
        with pytest.raises(error) as info:
            await aiosmtplib.send(
                MESSAGE, sender="hr@acme.example", recipients=["a@mail.example"],
                hostname=sink.host, port=sink.port, timeout=5, start_tls=False,
            )  # fmt: skip
    if code is not None:
        assert getattr(info.value, "code", None) == code


def test_a_missing_tool_fails_naming_its_debian_package() -> None:
    with pytest.raises(ToolMissing, match="Debian package postfix"):
        require_tool("/nonexistent/smtp-sink", "postfix")
