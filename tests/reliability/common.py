"""Shared pieces of the reliability run: figures, relay config, the relay and sink processes, messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "tests" / "e2e"
PYTHON = sys.executable
SENDER = "recruit@acme.co.jp"
REJECTION = (E2E / "rejection_ja_utf8_alternative.eml").read_bytes()
ORDINARY = (E2E / "offer_ja.eml").read_bytes()
BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass
class Figure:
    """One measured figure with its target; ok=None means "reported, no target"."""

    name: str
    value: str
    target: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "–" if self.ok is None else ("PASS" if self.ok else "**FAIL**")


@dataclass
class Section:
    """One part of the run: its figures for the summary, and the detail (markdown) behind them."""

    key: str
    title: str
    promise: str
    how: str
    figures: list[Figure] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def figure(self, name: str, value: object, target: str, ok: bool | None) -> None:
        self.figures.append(Figure(name, str(value), target, ok))


@dataclass(frozen=True)
class Scale:
    """How big each part of the run is: full (the default), quick (CI) or smoke (the test suite)."""

    name: str
    messages: int
    kills: int
    sessions: int
    flood: int
    db_messages: int
    db_outage: float
    big_attachment: int
    mime_parts: int
    nesting: int
    to_addresses: int
    header_line: int


FULL = Scale("full", 10_000, 3, 50, 1_000, 600, 12.0, 20 * 2**20, 100_000, 1_000, 8_000, 2**20)
QUICK = Scale("quick", 2_000, 3, 50, 1_000, 300, 12.0, 20 * 2**20, 100_000, 1_000, 8_000, 2**20)
SMOKE = Scale("smoke", 150, 1, 10, 120, 40, 8.0, 2**20, 5_000, 200, 800, 100_000)


# ---- config -----------------------------------------------------------------------------------------

CONFIG = """
state_dir = "{state_dir}"

[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.reliability.test"
client_networks = {client_networks}
max_connections_per_client = {per_client}

[next_hop]
host = "127.0.0.1"
port = {next_hop_port}
starttls = "off"
timeout = {timeout}
transaction_timeout = {transaction_timeout}
directory = ""

[database]
url = "{database_url}"

[metrics]
listen = ""

[http]
listen = ""

[rules]
paths = ["{rules}"]

[referral]
base_url = "https://careerrelay.jp/r/"

[log]
level = "INFO"

[footers.ja]
text = "――――\\n{{company}}より転職支援サービスのご案内です。\\n{{link}}\\n"
html = '<p>{{company}}より転職支援サービスのご案内です。<br><a href="{{link}}">{{link}}</a></p>'

[footers.en]
text = "--\\n{{company}} would like to help you find your next role:\\n{{link}}\\n"
html = '<p>{{company}} would like to help you find your next role: <a href="{{link}}">{{link}}</a></p>'

[[tenants]]
id = "acme"
name = "Acme株式会社"
domains = ["acme.co.jp", "acme.example"]

[[tenants.dkim]]
selector = "rel"
key_file = "dkim/acme.rel.key"
create_if_missing = true
"""


def write_config(
    directory: Path,
    *,
    port: int,
    next_hop_port: int,
    client_networks: str = '["127.0.0.0/8"]',
    per_client: int = 50,
    timeout: float = 10,
    transaction_timeout: float = 20,
    database_url: str = "",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(
        CONFIG.format(
            state_dir=directory / "var",
            port=port,
            client_networks=client_networks,
            per_client=per_client,
            next_hop_port=next_hop_port,
            timeout=timeout,
            transaction_timeout=transaction_timeout,
            database_url=database_url,
            rules=REPO / "rules" / "*.toml",
        ),
        encoding="utf-8",
    )
    return path


# ---- ports and processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory for one part; RELIABILITY_KEEP=1 keeps it (configs, relay logs, sink files)."""
    if os.environ.get("RELIABILITY_KEEP"):
        path = Path(tempfile.mkdtemp(prefix=prefix))
        print(f"reliability: keeping {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc: a probe connection would be a session
    (and count against the per-client cap)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
                return True
    return False


async def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")
        await asyncio.sleep(0.02)


class RelayProcess:
    """A real `mailrelay serve` subprocess on a fixed port, so that it can be killed and started again."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> float:
        """Start and wait until it listens; returns the seconds that took."""
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "mailrelay", "serve", "--config", str(self.config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        try:
            await wait_listening(self.port, self.process, "mailrelay serve")
        except (RuntimeError, TimeoutError) as exc:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; its log ends:\n{tail}") from None
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, sockets are torn down by the kernel."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class SinkProcess:
    """tests/reliability/sink.py as a subprocess: the next hop of the load runs, on its own CPU."""

    def __init__(self, port: int, journal: Path) -> None:
        self.port = port
        self.journal = journal
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Self:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "tests.reliability.sink", str(self.port), str(self.journal)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        await wait_listening(self.port, self.process, "the sink")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    def deliveries(self) -> list[tuple[str, str, bool]]:
        """(Message-ID, recipient, decorated) for every message the sink answered 250, in order."""
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            message_id, recipient, decorated = line.split("\t")
            out.append((message_id, recipient, decorated == "1"))
        return out


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward `wanted` (a flood needs a descriptor per connection)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# ---- messages ---------------------------------------------------------------------------------------


def message(kind: str, message_id: str, recipient: str) -> bytes:
    """A rejection (decorated, signed, recorded) or an ordinary mail (passed through byte for byte) with its
    own Message-ID and To:."""
    template = REJECTION if kind == "rejection" else ORDINARY
    content = re.sub(rb"(?m)^Message-ID: <[^>]*>", f"Message-ID: <{message_id}>".encode(), template, count=1)
    return re.sub(rb"(?m)^To: [^\r\n]*", f"To: {recipient}".encode(), content, count=1)


MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*<([^>]*)>")


def message_id_of(content: bytes) -> str:
    head = content.split(b"\r\n\r\n", 1)[0]
    match = MESSAGE_ID.search(head)
    return match.group(1).decode("ascii", "replace") if match else ""


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    uname = os.uname()
    python = ".".join(str(v) for v in sys.version_info[:3])
    return f"{cpus} CPUs ({model or 'unknown'}), {uname.sysname} {uname.release}, Python {python}"
