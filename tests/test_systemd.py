"""The systemd units: their hardening score, and the daemon started the way the units start it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from bench.ports import free_port
from conftest import REPO
from mailrelay import sdnotify

UNIT = REPO / "systemd" / "mailrelay.service"
SOCKET_UNIT = REPO / "systemd" / "mailrelay.socket"
MAX_EXPOSURE = 1.5
# A deadline for things that must happen, never a measured duration.
DEADLINE = 60.0

CONFIG = """
state_dir = "{state_dir}"

[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "relay.test"

[next_hop]
directory = "outbox"

[metrics]
listen = "{metrics}"

[rules]
paths = ["{rules}"]

[referral]
base_url = "https://careerrelay.jp/r/"

[footers.ja]
text = "――――\\n{{company}}より転職支援サービスのご案内です。\\n{{link}}\\n"
html = '<p>{{company}}より転職支援サービスのご案内です。<br><a href="{{link}}">{{link}}</a></p>'

[footers.en]
text = "--\\n{{company}} would like to help you find your next role:\\n{{link}}\\n"
html = '<p>{{company}} would like to help you find your next role: <a href="{{link}}">{{link}}</a></p>'

[[tenants]]
id = "acme"
name = "Acme株式会社"
domains = ["acme.co.jp"]

[[tenants.dkim]]
selector = "mr1"
key_file = "{key_file}"
"""


class Keys(Protocol):
    """What these tests use of conftest's `keys` fixture."""

    rsa_key: Path


def write_config(tmp_path: Path, keys: Keys, *, smtp_port: int, metrics_port: int | None) -> Path:
    """A production-shaped config.toml in tmp_path (the unit's /etc/mailrelay/config.toml)."""
    path = tmp_path / "config.toml"
    path.write_text(
        CONFIG.format(
            state_dir=tmp_path / "var",
            smtp_port=smtp_port,
            metrics=f"127.0.0.1:{metrics_port}" if metrics_port else "",
            rules=REPO / "rules" / "*.toml",
            key_file=keys.rsa_key,
        ),
        encoding="utf-8",
    )
    return path


def unit_command(config: Path) -> list[str]:
    """ExecStart= of mailrelay.service with this checkout's interpreter and a test config."""
    exec_start = re.search(r"^ExecStart=(.+)$", UNIT.read_text(), re.MULTILINE)
    assert exec_start, "mailrelay.service has no ExecStart="
    program, *args = shlex.split(exec_start.group(1))
    assert program.endswith("/mailrelay") and "--config" in args
    args[args.index("--config") + 1] = str(config)
    return [sys.executable, "-m", "mailrelay", *args]


@dataclass
class Notifications:
    """The receiving end of $NOTIFY_SOCKET, as systemd holds it."""

    sock: socket.socket
    address: str  # the value for $NOTIFY_SOCKET
    received: list[str]

    def wait_for(self, wanted: str, process: subprocess.Popen[bytes]) -> str:
        """The next message that contains the assignment `wanted` (e.g. READY=1)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                if process.poll() is not None:
                    raise AssertionError(
                        f"mailrelay exited with {process.returncode} before {wanted}"
                    ) from None
                continue
            self.received.append(message)
            if wanted in message.split("\n"):
                return message
        raise AssertionError(f"no {wanted} within {DEADLINE} s; received {self.received}")


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Notifications]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"mailrelay-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        # A short directory: AF_UNIX paths are limited to 107 bytes.
        address = str(tmp_path_factory.mktemp("n") / "notify")
        sock.bind(address)
    sock.settimeout(0.5)
    with sock:
        yield Notifications(sock, address, [])


def accepts_smtp(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.recv(512).startswith(b"220 ")


def serves_metrics(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.status == 200 and b"mailrelay_build_info" in response.read()


def stop(process: subprocess.Popen[bytes], log: Path) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return log.read_text(errors="replace")


def test_service_unit_exposure_is_at_most_1_5() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (scripts/bootstrap does)")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_COLORS": "0"},
    )  # fmt: skip
    found = re.search(r"Overall exposure level for mailrelay\.service: (\d+\.\d+)", result.stdout)
    assert found, f"systemd-analyze security gave no score (exit {result.returncode}):\n{result.stderr}"
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_units_declare_notify_reload_and_no_capability() -> None:
    service = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=mailrelay",
        "ConfigurationDirectory=mailrelay",
        "Restart=on-failure",
        "User=mailrelay",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
    ):
        assert re.search(f"^{re.escape(line)}$", service, re.MULTILINE), line
    listen = re.findall(r"^ListenStream=(.+)$", SOCKET_UNIT.read_text(), re.MULTILINE)
    assert listen == ["0.0.0.0:25"], "mailrelay takes exactly one socket"


def test_ready_only_once_smtp_and_metrics_accept(
    tmp_path: Path, keys: Keys, notify_socket: Notifications
) -> None:
    smtp_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, keys, smtp_port=smtp_port, metrics_port=metrics_port)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"}
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        process = subprocess.Popen(unit_command(config), env=env, cwd=tmp_path, stdout=err, stderr=err)
    try:
        ready = notify_socket.wait_for("READY=1", process)
        # The moment READY=1 is sent, both listeners must already take connections.
        assert accepts_smtp(smtp_port)
        assert serves_metrics(metrics_port)
        assert f"STATUS=listening on 127.0.0.1:{smtp_port}" in ready
        assert all("READY=1" not in m.split("\n") for m in notify_socket.received[:-1])
        notify_socket.wait_for("WATCHDOG=1", process)

        process.send_signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING=1", process)
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.MULTILINE)
        notify_socket.wait_for("READY=1", process)

        process.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", process)
    finally:
        output = stop(process, log)
    assert process.returncode == 0, output


WRAPPER = """
import fcntl, os, sys
# What systemd does for socket activation: the sockets from fd 3 on, LISTEN_FDS their number, LISTEN_PID the
# pid that then execs mailrelay. Moved out of the way first, so that no passed socket overwrites another.
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(",")]
for fd in sys.argv[1].split(","):
    os.close(int(fd))
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(high)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="mailrelay.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_on_the_passed_socket(
    tmp_path: Path, keys: Keys, notify_socket: Notifications, workers: int
) -> None:
    """With `--workers 2` the parent takes the socket and shares it with the workers, each of which reports
    readiness (the unit's NotifyAccess=all)."""
    configured_port = free_port()
    config = write_config(tmp_path, keys, smtp_port=configured_port, metrics_port=None)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    passed_port = listener.getsockname()[1]
    log = tmp_path / "stderr.log"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address}
    with listener, log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(listener.fileno()), *unit_command(config),
             "--workers", str(workers)],
            env=env, cwd=tmp_path, stdout=err, stderr=err, pass_fds=[listener.fileno()],
        )  # fmt: skip
    try:
        for _ in range(workers):
            ready = notify_socket.wait_for("READY=1", process)
            assert f"STATUS=listening on 127.0.0.1:{passed_port}" in ready
        assert accepts_smtp(passed_port)
        # The configured [smtp] listen is not opened: the socket from systemd replaces it.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", configured_port), timeout=10).close()
    finally:
        output = stop(process, log)
    assert process.returncode == 0, output


def test_systemd_socket_activate_starts_the_relay_on_first_connection(tmp_path: Path, keys: Keys) -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.fail(
            "systemd-socket-activate not found: install Debian's systemd package (scripts/bootstrap does)"
        )
    port = free_port()
    config = write_config(tmp_path, keys, smtp_port=free_port(), metrics_port=None)
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [activate, "--listen", f"127.0.0.1:{port}", *unit_command(config)],
            cwd=tmp_path, stdout=err, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE
        while "Listening on" not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        # The first client waits in the socket's backlog while mailrelay starts, then gets the greeting.
        assert accepts_smtp(port)
    finally:
        output = stop(process, log)
    assert process.returncode == 0, output


def test_two_passed_sockets_are_refused_with_a_config_error(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path, keys, smtp_port=free_port(), metrics_port=None)
    first, second = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with first, second:
        first.bind(("127.0.0.1", 0))
        first.listen(1)
        second.bind(("127.0.0.1", 0))
        result = subprocess.run(
            [sys.executable, "-c", WRAPPER, f"{first.fileno()},{second.fileno()}", *unit_command(config)],
            cwd=tmp_path, capture_output=True, text=True, pass_fds=[first.fileno(), second.fileno()],
            timeout=DEADLINE,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "mailrelay.socket › ListenStream: systemd passed 2 socket(s)" in result.stderr


def test_notify_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_notify_survives_a_vanished_service_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    # Logged, never raised: a relay must not stop because systemd cannot be told something.
    assert sdnotify.notify("READY=1") is False


def test_sockets_meant_for_another_process_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert sdnotify.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ


def test_watchdog_interval_is_for_the_main_pid_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
