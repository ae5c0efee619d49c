"""The operator's commands: version, check-config (exit 2 config, 1 unreachable, 0 ok) and dkim dns."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from cryptography.hazmat.primitives import serialization

from bench.ports import free_port
from conftest import REPO, SettingsFactory
from mailrelay import __version__
from mailrelay.cli import main
from mailrelay.signing import dns_record


class Keys(Protocol):
    """What these tests use of conftest's `keys` fixture."""

    rsa_key: Path
    rsa_txt: str
    ed_key: Path
    ed_txt: str


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port: a real next hop that answers EHLO."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.access(binary, os.X_OK):
        pytest.fail("smtp-sink not found: install Debian's postfix package (scripts/bootstrap does)")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root without -u
    process = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "16"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "smtp-sink did not listen"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=30)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = main(argv)
    return status, capsys.readouterr().out.splitlines()


def test_version_names_mailrelay_python_and_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    status, [line] = run(["version"], capsys)
    assert status == 0
    assert line.startswith(f"mailrelay {__version__} (Python ")
    assert "aiosmtpd " in line and "missing" not in line


def test_check_config_passes_with_reachable_smtp_next_hop(
    make_settings: SettingsFactory, smtp_sink: int, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(smtp_sink)
    status, lines = run(["check-config", "--config", str(settings.source)], capsys)
    assert status == 0, lines
    assert [line.split()[0] for line in lines] == [
        "config:", "rules:", "dkim:", "templates:", "database:", "next_hop:",
    ]  # fmt: skip
    assert all(line.split()[1] == "ok" for line in lines), lines
    assert f"smtp://127.0.0.1:{smtp_sink}" in lines[-1] and "EHLO answered" in lines[-1]


def test_check_config_passes_with_directory_next_hop(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(directory="outbox")
    status, lines = run(["check-config", "--config", str(settings.source)], capsys)
    assert status == 0, lines
    assert lines[-1].split()[:2] == ["next_hop:", "ok"] and "outbox" in lines[-1]


def test_check_config_unreachable_next_hop_exits_1(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(free_port())  # nothing listens there
    status, lines = run(["check-config", "--config", str(settings.source)], capsys)
    assert status == 1, lines
    assert lines[-1].split()[:2] == ["next_hop:", "UNREACHABLE"]
    assert "connect" in lines[-1]


def test_check_config_unreachable_database_exits_1_without_the_password(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://mailrelay:s3cret@127.0.0.1:{free_port()}/mailrelay"
    settings = make_settings(directory="outbox", database_url=url)
    status, lines = run(["check-config", "--config", str(settings.source)], capsys)
    assert status == 1, lines
    [database] = [line for line in lines if line.startswith("database:")]
    assert database.split()[1] == "UNREACHABLE"
    assert "s3cret" not in "\n".join(lines) and "***" in database


def test_check_config_broken_config_exits_2_naming_file_and_key(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_settings(directory="outbox").source
    path.write_text(re.sub(r"(?m)^port = \d+$", "port = 70000", path.read_text(), count=1))
    status, lines = run(["check-config", "--config", str(path)], capsys)
    assert status == 2
    [line] = lines
    assert line.split()[:2] == ["config:", "FAILED"]
    assert f"{path} › next_hop.port: must be between 1 and 65535, not 70000" in line


def test_check_config_broken_rule_file_exits_2(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "broken.toml"
    rules.write_text("[[rule]]\nid = 'x'\n")
    settings = make_settings(directory="outbox", rules=str(rules))
    status, lines = run(["check-config", "--config", str(settings.source)], capsys)
    assert status == 2
    assert lines[-1].split()[:2] == ["rules:", "FAILED"] and str(rules) in lines[-1]


def test_check_config_key_readable_by_others_exits_2(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_settings(directory="outbox").source
    loose = tmp_path / "loose.key"
    text = path.read_text()
    original = text.split('key_file = "', 1)[1].split('"', 1)[0]
    shutil.copy(original, loose)
    loose.chmod(0o644)
    path.write_text(text.replace(original, str(loose)))
    status, lines = run(["check-config", "--config", str(path)], capsys)
    assert status == 2
    assert lines[-1].split()[:2] == ["dkim:", "FAILED"] and "chmod 600" in lines[-1]


def test_dkim_dns_prints_every_key_for_every_tenant_domain(
    make_settings: SettingsFactory, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(ed25519=True)
    status, lines = run(["dkim", "dns", "--config", str(settings.source)], capsys)
    assert status == 0
    rsa_txt, ed_txt = keys.rsa_txt, keys.ed_txt
    records = [line for line in lines if not line.startswith(";")]
    assert records == [
        dns_record("mr1", "acme.co.jp", rsa_txt),
        dns_record("mr1", "acme.example", rsa_txt),
        dns_record("mr2", "acme.co.jp", ed_txt),
        dns_record("mr2", "acme.example", ed_txt),
    ]
    assert lines[0].startswith("; tenant acme")


def _swap_key(path: Path, old: Path, new: Path, algorithm: str | None = None) -> None:
    """Point the key_file `old` of the config at `path` to `new`, and maybe change its algorithm."""
    text = path.read_text().replace(f'key_file = "{old}"', f'key_file = "{new}"')
    if algorithm is not None:
        text = text.replace(f'key_file = "{new}"', f'key_file = "{new}"\nalgorithm = "{algorithm}"', 1)
    path.write_text(text)


@pytest.mark.parametrize("command", [["check-config"], ["dkim", "dns"]])
def test_key_the_service_user_cannot_read_exits_2_naming_tenant_and_key(
    command: list[str],
    make_settings: SettingsFactory,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A root-owned key under User=mailrelay: a config error (systemd's RestartPreventExitStatus=2), not a
    PermissionError traceback. Tests may run as root, whom mode 600 does not stop: the refusal is faked."""
    path = make_settings(directory="outbox").source
    read_bytes = Path.read_bytes

    def refuse_the_key(self: Path) -> bytes:
        if self == keys.rsa_key:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_the_key)
    status = main([*command, "--config", str(path)])
    captured = capsys.readouterr()
    assert status == 2
    expected = f"{path} › tenants[0].dkim[0].key_file: cannot read {keys.rsa_key}: Permission denied"
    assert expected in captured.out + captured.err


def test_demo_key_in_a_directory_the_user_cannot_search_exits_2(
    make_settings: SettingsFactory,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """create_if_missing asks whether the key exists, and exists() raises PermissionError there."""
    path = make_settings(directory="outbox").source
    path.write_text(
        path.read_text().replace(
            f'key_file = "{keys.rsa_key}"', f'key_file = "{keys.rsa_key}"\ncreate_if_missing = true'
        )
    )
    stat = Path.stat

    def refuse_the_key(self: Path, **kwargs: bool) -> os.stat_result:
        if self == keys.rsa_key:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", refuse_the_key)
    status, lines = run(["check-config", "--config", str(path)], capsys)
    assert status == 2
    assert lines[-1].endswith(
        f"{path} › tenants[0].dkim[0].key_file: cannot read {keys.rsa_key}: Permission denied"
    )


def test_serve_refuses_a_key_it_cannot_read_with_exit_2(
    make_settings: SettingsFactory, keys: Keys, tmp_path: Path
) -> None:
    """Any OSError reading a key (here: the path is a directory), on the second key of the tenant."""
    path = make_settings(directory="outbox", ed25519=True).source
    directory = tmp_path / "not-a-key"
    directory.mkdir(mode=0o700)
    _swap_key(path, keys.ed_key, directory)
    result = subprocess.run(
        [sys.executable, "-m", "mailrelay", "serve", "--config", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"mailrelay: {path} › tenants[0].dkim[1].key_file: cannot read {directory}: Is a directory\n"
    )


@pytest.mark.parametrize("command", [["check-config"], ["dkim", "dns"]])
def test_key_of_another_algorithm_exits_2(
    command: list[str], make_settings: SettingsFactory, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Ed25519 key under the default rsa-sha256: `dkim dns` said so in a ValueError traceback."""
    path = make_settings(directory="outbox").source
    _swap_key(path, keys.rsa_key, keys.ed_key)
    status = main([*command, "--config", str(path)])
    captured = capsys.readouterr()
    assert status == 2
    expected = f"{path} › tenants[0].dkim[0].key_file: {keys.ed_key} is not a usable rsa-sha256 key"
    assert expected in captured.out + captured.err
    assert "Traceback" not in captured.err


def test_key_with_a_passphrase_exits_2(
    make_settings: SettingsFactory, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_settings(directory="outbox").source
    private = serialization.load_pem_private_key(keys.rsa_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    encrypted.chmod(0o600)
    _swap_key(path, keys.rsa_key, encrypted)
    status, lines = run(["check-config", "--config", str(path)], capsys)
    assert status == 2
    assert lines[-1].split()[:2] == ["dkim:", "FAILED"]
    assert lines[-1].endswith(
        f"{path} › tenants[0].dkim[0].key_file: {encrypted} is encrypted: mailrelay needs the key without a "
        "passphrase"
    )


def test_report_into_a_missing_directory_says_so_in_one_line(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a FileNotFoundError traceback."""
    path = make_settings(directory="outbox").source
    output = tmp_path / "missing" / "report.csv"
    status = main(["report", "--config", str(path), "--format", "csv", "-o", str(output)])
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert captured.err == f"mailrelay: cannot write {output}: No such file or directory\n"


@pytest.mark.parametrize("days", ["0", "-5", "ten"])
def test_purge_refuses_days_below_one_as_a_usage_error(
    days: str, make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """--days 0 and -5 printed "referral.retention_days is 0: nothing is purged" and exited 0."""
    path = make_settings(directory="outbox").source
    with pytest.raises(SystemExit) as exit_:
        main(["purge", "--config", str(path), "--days", days])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert captured.err.endswith(
        f"mailrelay purge: error: argument --days: must be a whole number of at least 1, not {days!r}\n"
    )


def test_report_refuses_a_from_after_to_as_a_usage_error(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed an empty report with every total 0 and exited 0, as if the company had had no activity."""
    path = make_settings(directory="outbox").source
    status = main(["report", "--config", str(path), "--from", "2026-03-01", "--to", "2026-01-31"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, "")
    assert captured.err == "mailrelay report: --from 2026-03-01 is after --to 2026-01-31\n"
