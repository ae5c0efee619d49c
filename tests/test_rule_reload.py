"""Issue 4: SIGHUP reloads the rules atomically; a bad reload keeps the old rules, logs why and counts it."""

from __future__ import annotations

import base64
import gc
import json
import shutil
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from test_store import referral

from conftest import REPO, SettingsFactory
from mailrelay.app import build, reload_rules, settle_heap, start_tracking
from mailrelay.config import Listen, load_settings
from mailrelay.detection import DetectionInput
from mailrelay.errors import ConfigError
from mailrelay.tracking import sign
from mailrelay.tracking.http import WEBHOOK_PATH


@pytest.fixture(autouse=True)
def _heap_unfrozen_afterwards() -> Iterator[None]:
    """A reload freezes the heap (settle_heap), as a worker's is: not this test process's, after the test."""
    yield
    gc.unfreeze()


SHADOW_RULE = """
[[rule]]
id = "en-new-wording"
description = "A wording HR wants to watch before it acts"
mode = "shadow"
language = "en"
footer = "en"
require = [["we have filled the position"]]
"""


def _verdict(components, text: str):  # type: ignore[no-untyped-def]
    return components.relay.rules.evaluate(
        DetectionInput(
            subject="", plain=text, html="", header=lambda _n: [], sender="hr@acme.co.jp", tenant="acme"
        )
    )


def test_reload_swaps_in_new_rules_and_a_broken_file_keeps_the_old(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("*.md"))
    components = build(make_settings(rules=str(rules / "*.toml")))
    text = "Thank you for your application. We have filled the position with another applicant."
    assert _verdict(components, text).shadow == ()

    (rules / "zz-new.toml").write_text(SHADOW_RULE, encoding="utf-8")
    assert reload_rules(components) is True
    assert _verdict(components, text).shadow == ("en-new-wording",)

    (rules / "zz-new.toml").write_text(
        SHADOW_RULE.replace('mode = "shadow"', 'mode = "loud"'), encoding="utf-8"
    )
    before = components.relay.rules
    assert reload_rules(components) is False
    assert components.relay.rules is before  # the old set, whole
    metrics = components.metrics.registry
    assert metrics.get_sample_value("mailrelay_rule_reloads_total", {"result": "success"}) == 1
    assert metrics.get_sample_value("mailrelay_rule_reloads_total", {"result": "failure"}) == 1
    components.store.close()


def test_reload_also_takes_new_footer_templates_and_keys(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    from mailrelay.signing import make_key_pair

    settings = make_settings()
    components = build(settings)
    text = settings.source.read_text(encoding="utf-8")
    new_key = tmp_path / "new.key"
    make_key_pair(new_key, "rsa-sha256")
    text = text.replace("転職支援サービスのご案内です。", "新しいご案内です。").replace(
        str(settings.tenants[0].dkim[0].key_file), str(new_key)
    )
    settings.source.write_text(
        text.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:2525"'), encoding="utf-8"
    )
    assert reload_rules(components) is True
    tenant = components.relay.settings.tenants[0]
    assert "新しいご案内です。" in tenant.footers["ja"].text
    assert components.signer.keys["acme"][0].private == new_key.read_bytes()
    # The listener is bound: a changed listen address is kept as it was until a restart.
    assert components.relay.settings.smtp.listen == settings.smtp.listen
    components.store.close()


# Acme gets a footer of its own; a second tenant, globex, has only the shared ones (ja, en).
SECOND_TENANT = """
[tenants.footers.vip]
text = "VIP {{link}}"
html = "VIP {{link}}"

[[tenants]]
id = "globex"
domains = ["globex.example"]

[[tenants.dkim]]
selector = "mr1"
key_file = "{key}"
"""

SCOPED_RULE = """
[[rule]]
id = "vip-rejection"
description = "Acme's own footer for its rejections"
mode = "decorate"
footer = "{footer}"
{scope}
require = [["見送らせていただ"]]
"""


@pytest.mark.parametrize(
    ("footer", "scope", "problem"),
    [
        ("ja", 'tenants = ["acmee"]', "tenants: unknown tenant 'acmee' (defined: acme, globex)"),
        ("vip", "", "footer: tenant 'globex' has no footer 'vip' (it has: en, ja; a rule without tenants"),
    ],
)
def test_rules_are_checked_against_each_tenant_at_start_and_on_reload(
    make_settings: SettingsFactory, tmp_path: Path, footer: str, scope: str, problem: str
) -> None:
    """A rule scoped to a tenant id with a typo never fired; one selecting a footer that only some of the
    tenants it applies to have failed open for the others (`failed-open:footer:KeyError`; review 09)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(
        SCOPED_RULE.format(footer="vip", scope='tenants = ["acme"]'), encoding="utf-8"
    )
    settings = make_settings(rules=str(rules / "*.toml"))
    with settings.source.open("a", encoding="utf-8") as config:
        config.write(SECOND_TENANT.format(key=settings.tenants[0].dkim[0].key_file))
    components = build(load_settings(settings.source))
    assert components.relay.rules.ids == ("vip-rejection",)

    (rules / "a.toml").write_text(SCOPED_RULE.format(footer=footer, scope=scope), encoding="utf-8")
    before = components.relay.rules
    assert reload_rules(components) is False
    assert components.relay.rules is before
    with pytest.raises(ConfigError) as caught:
        build(load_settings(settings.source))
    assert str(caught.value).startswith(f"{rules / 'a.toml'} › vip-rejection › {problem}")
    components.store.close()


OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()
TOKEN = "AbCdEfGhIjKlMnOpQrStUv"


async def _deliver(http: aiohttp.ClientSession, url: str, secret: str, msg_id: str) -> tuple[int, str]:
    """One registration delivery as the referral service signs it: (HTTP status, answer)."""
    body = json.dumps({"type": "registration.created", "data": {"token": TOKEN}}).encode()
    stamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
        "Content-Type": "application/json",
    }
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def test_a_reload_rotates_the_webhook_secrets_of_the_running_http_server(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/webhook.md's rotation: add the new secret, reload, switch the sender, remove the old one, reload.
    The HTTP server kept the secrets it started with, so the new one got 401 until a restart (review 11)."""
    settings = make_settings()
    config = settings.source.read_text(encoding="utf-8")

    def write(secrets: list[str], listen: str = "127.0.0.1:0") -> None:
        http = f'\n[http]\nlisten = "{listen}"\nwebhook_secrets = {json.dumps(secrets)}\n'
        settings.source.write_text(config + http, encoding="utf-8")

    write([OLD_SECRET])
    components = build(load_settings(settings.source))
    await components.store.record([referral(TOKEN, "a" * 64)], mark_delivered=False)
    tracking = await start_tracking(components)
    assert tracking is not None
    url = f"http://127.0.0.1:{tracking.addresses[0][1]}{WEBHOOK_PATH}"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await _deliver(http, url, NEW_SECRET, "msg_1"))[0] == 401
            write([OLD_SECRET, NEW_SECRET])
            assert reload_rules(components) is True
            assert await _deliver(http, url, NEW_SECRET, "msg_2") == (200, '{"status": "recorded"}')
            assert await _deliver(http, url, OLD_SECRET, "msg_3") == (200, '{"status": "duplicate"}')

            # The old secret removed, and the listen address changed: that one is bound, kept until a restart.
            write([NEW_SECRET], listen="127.0.0.1:2526")
            assert reload_rules(components) is True
            assert components.settings.http.listen == Listen("127.0.0.1", 0)
            assert "reload: http.listen changed; that takes a restart (kept as before)" in caplog.messages
            assert (await _deliver(http, url, OLD_SECRET, "msg_4"))[0] == 401
            assert (await _deliver(http, url, NEW_SECRET, "msg_5"))[0] == 200
    finally:
        await tracking.cleanup()
        components.store.close()


class _Node:
    cycle: object = None


def test_a_worker_freezes_what_it_starts_with_and_a_reload_lets_the_old_go(
    make_settings: SettingsFactory,
) -> None:
    """Issue 8 (closed-loop p99): full collections do not walk the objects a worker starts with; a reload
    unfreezes them first, so what it replaced (cycles included) can still be collected."""
    components = build(make_settings())
    node = _Node()
    node.cycle = node
    old = weakref.ref(node)
    settle_heap()
    del node
    gc.collect()
    assert old() is not None  # frozen: out of the collector's sight
    assert gc.get_freeze_count() > 0
    assert reload_rules(components) is True
    assert old() is None
    assert gc.get_freeze_count() > 0
    components.store.close()
