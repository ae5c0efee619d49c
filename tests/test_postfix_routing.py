"""Issue 7: the README's Postfix routing recipe, run as written against a real Postfix on loopback.

client → Postfix smtpd → queue → content_filter (mailrelay transport) → mailrelay → Postfix re-injection
smtpd → queue → relayhost → RecordingSink. The master.cf and main.cf lines of the recipe are read from
README.md itself, so the documentation cannot drift from what this test proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.ports import free_port
from conftest import REPO, KeyPairs, RunningRelay, SettingsFactory
from mailrelay.config import Settings
from support.dkim import verify_dkim
from support.sinks import RecordingSink, require_tool

E2E = Path(__file__).resolve().parent / "e2e"
LINK_PREFIX = b"https://careerrelay.jp/r/"
SENDER = "recruit@acme.co.jp"
APPLICANT = "applicant@gmail.example"
# The README's example ports, replaced by free ones here.
README_RELAY = "[127.0.0.1]:10025"
README_REINJECT = "127.0.0.1:10026"

# Everything but the recipe: a throwaway instance in a temp dir, as in bench/servers.py. The outbound
# relayhost stands for "the Internet" (here the sink); mydestination is empty so nothing is delivered locally.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog

# What Debian's postinst appends when ssl-cert's snakeoil key exists (/usr/share/postfix/main.cf.tls): every
# smtpd offers STARTTLS with a self-signed certificate, the re-injection listener included.
smtpd_tls_cert_file = {dir}/snakeoil.pem
smtpd_tls_key_file = {dir}/snakeoil.key
smtpd_tls_security_level = may
smtp_tls_CApath = /etc/ssl/certs
smtp_tls_security_level = may
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
"""

# Debian's master.cf services that relaying needs, chroot off (the temp dir has no chroot set-up), and the
# smtpd HR mail arrives on (port 25 in production).
MASTER_CF = """\
127.0.0.1:{submit_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def readme_recipe() -> tuple[str, str]:
    """The content_filter recipe's master.cf block and main.cf block, from README.md as published."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Routing Postfix through mailrelay\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Routing Postfix through mailrelay' section"
    # Markdown indented code blocks: runs of lines indented by 4 spaces (blank lines inside allowed).
    blocks = re.findall(r"(?:^(?: {4}.*)?\n)+", match.group(1), re.MULTILINE)
    blocks = [
        "\n".join(line[4:] for line in block.splitlines()).strip("\n") + "\n"
        for block in blocks
        if block.strip()
    ]
    master = [b for b in blocks if "mailrelay unix" in b]
    main = [b for b in blocks if b.startswith("content_filter")]
    assert len(master) == 1 and len(main) == 1, f"cannot find the master.cf and main.cf blocks in {blocks}"
    return master[0], main[0]


def with_port(text: str, readme_address: str, address: str) -> str:
    # Exactly one occurrence: if the README's addresses change, this test must be changed with it.
    assert text.count(readme_address) == 1, f"{readme_address} is not in the recipe exactly once:\n{text}"
    return text.replace(readme_address, address)


async def run(*args: str, timeout: float = 20) -> tuple[int, str]:
    """A command off the event loop (mailrelay serves in this loop while Postfix talks to it)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


@dataclass
class Postfix:
    base: Path
    submit_port: int

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        return None

    def maillog(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "maillog").read_text(encoding="utf-8", errors="replace")
        return "(no maillog)"

    async def diagnostics(self) -> str:
        _, queue = await run("postqueue", "-c", str(self.conf), "-p")
        return f"postqueue -p:\n{queue}\nmaillog:\n{self.maillog()[-6000:]}"


def process_tree(root: int) -> dict[int, str]:
    """root and its descendants, each with its start time (so a reused pid is never killed)."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (field 2) may hold spaces: the fields after its ")" are ppid (4th) … starttime
            # (22nd).
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid], started[pid] = int(fields[1]), fields[19]
    tree = {root} if root in started else set()
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return {pid: started[pid] for pid in tree}


def write_snakeoil(base: Path) -> None:
    """A self-signed certificate like ssl-cert's snakeoil one: CN = the host name, trusted by nobody."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postfix.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (base / "snakeoil.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = base / "snakeoil.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    require_tool("/usr/sbin/postfix", "postfix")
    require_tool("script", "bsdutils")
    if os.geteuid() != 0:
        # Not a skip: CI runs as root, and a run that cannot prove the recipe must say so.
        pytest.fail("a Postfix instance must be started as root (its daemons drop to the postfix user)")
    # Not pytest's tmp_path: it lies below a 0700 directory the postfix user cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="mailrelay-postfix-"))
    try:
        os.chmod(base, 0o755)
        for sub in ("conf", "queue", "data"):
            (base / sub).mkdir()
        os.chown(base / "data", pwd.getpwnam("postfix").pw_uid, -1)
        write_snakeoil(base)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def postfix_instance(
    base: Path, main_cf: str, master_cf: str, submit_port: int
) -> AsyncIterator[Postfix]:
    """`postfix -c DIR start` with everything (queue, data, log) in DIR; stopped on the way out."""
    postfix = Postfix(base, submit_port)
    (postfix.conf / "main.cf").write_text(main_cf)
    (postfix.conf / "master.cf").write_text(master_cf)
    try:
        # Postfix's commands log to syslog only, and a container has no /dev/log: under `script` they have
        # a terminal and write their errors to it as well.
        code, out = await run("script", "-qec", f"postfix -c {postfix.conf} start", "/dev/null", timeout=30)
        assert code == 0, f"postfix start failed ({code}): {out}\n{postfix.maillog()}"
        await wait_for_greeting(submit_port, postfix)
        yield postfix
    finally:
        await stop(postfix)


async def wait_for_greeting(port: int, postfix: Postfix, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220"):
                    return
            finally:
                writer.close()
        if loop.time() > deadline:
            raise AssertionError(f"Postfix did not greet on port {port}:\n{postfix.maillog()}")
        await asyncio.sleep(0.05)


async def stop(postfix: Postfix) -> None:
    """`postfix stop`; then SIGKILL for whatever of this instance outlived it by 10 s."""
    pid = postfix.master_pid()
    # Taken before the stop: once master exits, its children belong to init and cannot be told apart.
    tree = process_tree(pid) if pid is not None else {}
    with contextlib.suppress(TimeoutError):
        await run("postfix", "-c", str(postfix.conf), "stop", timeout=15)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline and any(alive(p, start) for p, start in tree.items()):
        await asyncio.sleep(0.05)
    for leftover, start in tree.items():
        if alive(leftover, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


def alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    # A zombie is dead already; only its parent can reap it.
    return fields[19] == start and fields[0] != "Z"


def body(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[1]


def message_id(content: bytes) -> bytes:
    head = content.split(b"\r\n\r\n", 1)[0]
    match = re.search(rb"^Message-ID: (.*)$", head, re.MULTILINE | re.IGNORECASE)
    assert match, head
    return match.group(1).rstrip(b"\r")


def has_header(content: bytes, name: bytes) -> bool:
    head = content.split(b"\r\n\r\n", 1)[0]
    return any(line.lower().startswith(name.lower() + b":") for line in head.split(b"\r\n"))


async def test_postfix_content_filter_recipe_decorates_rejections_and_passes_offers(
    make_settings: SettingsFactory,
    start_relay: Callable[[Settings], Awaitable[RunningRelay]],
    keys: KeyPairs,
    postfix_dir: Path,
) -> None:
    rejection = (E2E / "rejection_ja_iso2022.eml").read_bytes()
    offer = (E2E / "offer_ja.eml").read_bytes()
    async with RecordingSink() as sink:
        reinject_port, submit_port = free_port(), free_port()
        # The README sets only host, port and directory: next_hop.starttls stays at the shipped default, which
        # meets Debian's snakeoil STARTTLS on the re-injection listener unless the recipe turns it off there.
        relay = await start_relay(make_settings(reinject_port, starttls="opportunistic"))
        master_recipe, main_recipe = readme_recipe()
        master_cf = MASTER_CF.format(submit_port=submit_port) + with_port(
            master_recipe, README_REINJECT, f"127.0.0.1:{reinject_port}"
        )
        main_cf = MAIN_CF.format(dir=postfix_dir, sink_port=sink.port) + with_port(
            main_recipe, README_RELAY, f"[127.0.0.1]:{relay.port}"
        )
        async with postfix_instance(postfix_dir, main_cf, master_cf, submit_port) as postfix:
            for content in (rejection, offer):
                # Plain SMTP: how HR's mail reaches Postfix is not what this test is about.
                await aiosmtplib.send(
                    content,
                    sender=SENDER,
                    recipients=[APPLICANT],
                    hostname="127.0.0.1",
                    port=submit_port,
                    start_tls=False,
                )
            try:
                delivered = await sink.wait_for_messages(2, timeout=30)
            except TimeoutError:
                pytest.fail(f"the sink got {len(sink.messages)} of 2 messages\n{await postfix.diagnostics()}")

    by_id = {message_id(m.content): m for m in delivered}
    assert set(by_id) == {b"<e2e-ja-iso@acme.co.jp>", b"<e2e-offer_ja.eml@acme.co.jp>"}, by_id
    decorated, passed = by_id[b"<e2e-ja-iso@acme.co.jp>"], by_id[b"<e2e-offer_ja.eml@acme.co.jp>"]
    for message in (decorated, passed):
        assert (message.mail_from, message.rcpt_tos) == (SENDER, [APPLICANT])

    assert LINK_PREFIX in decorated.content
    assert has_header(decorated.content, b"X-Mailrelay-Decorated")
    # The re-injection smtpd put its Received: above our signature; Received is not signed, so it holds.
    result = verify_dkim(decorated.content, keys.dns(), require_domain="acme.co.jp")
    assert result.passed, result

    assert body(passed.content) == body(offer)
    assert not has_header(passed.content, b"X-Mailrelay-Decorated")
    assert not has_header(passed.content, b"DKIM-Signature")
    # Both went through mailrelay, not around it.
    assert relay.components.metrics.registry.get_sample_value("mailrelay_messages_received_total") == 2
