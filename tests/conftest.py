"""Shared fixtures: settings with real keys in a temporary state dir, and a relay served on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest

from mailrelay.app import Components, build
from mailrelay.config import Settings, load_settings
from mailrelay.signing import make_key_pair
from mailrelay.smtp.server import start_smtp_server

REPO = Path(__file__).resolve().parent.parent
MESSAGES = Path(__file__).resolve().parent / "messages"

CONFIG_TEMPLATE = """
state_dir = "{state_dir}"

[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
client_networks = {client_networks}
max_recipients = {max_recipients}

[next_hop]
host = "127.0.0.1"
port = {next_hop_port}
starttls = "{starttls}"
timeout = {timeout}
transaction_timeout = {transaction_timeout}
directory = "{directory}"

[database]
url = "{database_url}"

[metrics]
listen = ""

[processing]
time_budget = {time_budget}

[rules]
paths = ["{rules}"]

[referral]
base_url = "https://careerrelay.jp/r/"
store_recipient = "{store_recipient}"

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
selector = "mr1"
key_file = "{rsa_key}"
{ed25519}
"""

ED25519_BLOCK = """
[[tenants.dkim]]
selector = "mr2"
key_file = "{ed_key}"
algorithm = "ed25519-sha256"
"""


@dataclass
class KeyPairs:
    rsa_key: Path
    rsa_txt: str
    ed_key: Path
    ed_txt: str

    def dns(self, domain: str = "acme.co.jp") -> dict[str, str]:
        return {f"mr1._domainkey.{domain}": self.rsa_txt, f"mr2._domainkey.{domain}": self.ed_txt}


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPairs:
    base = tmp_path_factory.mktemp("keys")
    rsa_txt = make_key_pair(base / "rsa.key", "rsa-sha256")
    ed_txt = make_key_pair(base / "ed.key", "ed25519-sha256")
    return KeyPairs(base / "rsa.key", rsa_txt, base / "ed.key", ed_txt)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, keys: KeyPairs) -> SettingsFactory:
    def factory(
        next_hop_port: int = 25,
        *,
        directory: str = "",
        client_networks: str = '["127.0.0.0/8"]',
        max_recipients: int = 1000,
        timeout: float = 5,
        transaction_timeout: float = 10,
        time_budget: float = 5,
        database_url: str = "",
        store_recipient: str = "hash",
        ed25519: bool = False,
        rules: str = str(REPO / "rules" / "*.toml"),
        starttls: str = "off",
    ) -> Settings:
        text = CONFIG_TEMPLATE.format(
            state_dir=tmp_path / "var",
            client_networks=client_networks,
            max_recipients=max_recipients,
            next_hop_port=next_hop_port,
            timeout=timeout,
            transaction_timeout=transaction_timeout,
            directory=directory,
            database_url=database_url,
            time_budget=time_budget,
            rules=rules,
            store_recipient=store_recipient,
            starttls=starttls,
            rsa_key=keys.rsa_key,
            ed25519=ED25519_BLOCK.format(ed_key=keys.ed_key) if ed25519 else "",
        )
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path)

    return factory


@dataclass
class RunningRelay:
    host: str
    port: int
    components: Components

    async def send(self, sender: str, recipients: list[str], content: bytes) -> tuple[dict[str, object], str]:
        """Send like an MTA would; raises aiosmtplib exceptions for refusals."""
        result = await aiosmtplib.send(
            content, sender=sender, recipients=recipients, hostname=self.host, port=self.port, timeout=30
        )
        return result  # type: ignore[return-value]


@pytest.fixture
async def start_relay() -> AsyncIterator[Callable[[Settings], asyncio.Future[RunningRelay]]]:
    servers: list[tuple[asyncio.Server, Components]] = []

    async def starter(settings: Settings) -> RunningRelay:
        components = build(settings)
        server = await start_smtp_server(settings, components.handler, components.metrics, port=0)
        servers.append((server, components))
        port = server.sockets[0].getsockname()[1]
        return RunningRelay("127.0.0.1", port, components)

    yield starter  # type: ignore[misc]
    for server, components in servers:
        server.close()
        await server.wait_closed()
        # Every write a transaction announced to the group commit was handed in or withdrawn, whatever
        # became of its mail: a leaked one would hold each later commit (issue 8). A transaction that
        # outlived its client may still be finishing: it gets a moment.
        for _ in range(100):
            if not components.store._expected:
                break
            await asyncio.sleep(0.05)
        assert components.store._expected == 0
        components.relay.journal.close()
        components.store.close()


def read_message(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()
