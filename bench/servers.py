"""The contestants and the next hop: start, wait until they greet, stop; each in processes of its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.ablation import ABLATE
from bench.ports import free_port, free_ports

REPO = Path(__file__).resolve().parent.parent


def wait_for_banner(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing greeted on port {port} within {timeout} s")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    root_pid: int = 0  # the process whose tree is measured
    stop_command: list[str] = field(default_factory=list)
    queue_dir: Path | None = None  # Postfix: where to look for mail not yet delivered
    metrics_ports: list[int] = field(default_factory=list)  # mailrelay: worker i's /metrics

    def stop(self) -> None:
        if self.stop_command:
            subprocess.run(self.stop_command, capture_output=True, check=False, timeout=60)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{self.root_pid}").exists():
                time.sleep(0.1)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def queued(self) -> int:
        """Messages Postfix holds that the sink has not got yet (0 for the proxies: they have no queue)."""
        if self.queue_dir is None:
            return 0
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dir, _subdirs, files in os.walk(self.queue_dir / sub):
                count += len(files)
        return count


def start_sink(workdir: Path) -> Server:
    """Postfix's smtp-sink as the next hop for every contestant: C, one process, answers 250 at once."""
    port = free_port()
    command = ["smtp-sink"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root
    command += [f"127.0.0.1:{port}", "1024"]
    with (workdir / "sink.log").open("wb") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    wait_for_banner(port, proc=proc)
    return Server("smtp-sink", port, proc, proc.pid)


def start_floor(workdir: Path, sink_port: int, workers: int) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--port", str(port), "--next-hop-port", str(sink_port)]
    command += ["--workers", str(workers)]
    with (workdir / "floor.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wait_for_banner(port, proc=proc)
    return Server("floor", port, proc, proc.pid)


MAILRELAY_CONFIG = """
state_dir = "{state}"

[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.bench"
client_networks = ["127.0.0.0/8"]

[next_hop]
host = "127.0.0.1"
port = {sink_port}
starttls = "off"
directory = ""

[database]
url = ""

[metrics]
listen = {metrics_listen}

[rules]
paths = ["{rules}/*.toml"]

[referral]
base_url = "https://careerrelay.jp/r/"

[footers.ja]
text = \"\"\"
――――――――――――――――――――
{{company}}より、今後のご活躍を応援する転職支援サービスのご案内です。
あなたに合う求人を無料でご紹介します（登録は任意です）。
{{link}}
\"\"\"
html = \"\"\"<hr><p style="font-size:small">{{company}}より、転職支援サービスのご案内です。<br>
<a href="{{link}}">{{link}}</a></p>\"\"\"

[footers.en]
text = "\\n--\\n{{company}} would like to help you find your next role: {{link}}\\n"
html = \"\"\"<hr><p>{{company}} would like to help you find your next role:
<a href="{{link}}">{{link}}</a></p>\"\"\"

[[tenants]]
id = "example"
name = "Example株式会社"
domains = ["example.co.jp", "example.com"]

[[tenants.dkim]]
selector = "bench"
key_file = "dkim/example.bench.key"
algorithm = "rsa-sha256"
create_if_missing = true
"""


def mailrelay_config(
    workdir: Path, port: int, sink_port: int, metrics_port: int = 0, state: Path | None = None
) -> Path:
    """A config in `workdir` for a relay whose state directory (event store, journal, DKIM key) is
    `state`, by default in `workdir` too."""
    state = state if state is not None else workdir / "mailrelay"
    state.mkdir(parents=True, exist_ok=True)
    path = workdir / "mailrelay.toml"
    metrics_listen = f'"127.0.0.1:{metrics_port}"' if metrics_port else '""'
    path.write_text(
        MAILRELAY_CONFIG.format(
            state=state, port=port, sink_port=sink_port, rules=REPO / "rules", metrics_listen=metrics_listen
        ),
        encoding="utf-8",
    )
    return path


# mailrelay's histograms that split one message's time (docs/metrics.md), by what the report calls them.
HISTOGRAMS = {
    "processing": "mailrelay_processing_duration_seconds",
    "forwarding": "mailrelay_forwarding_duration_seconds",
    "recording": "mailrelay_recording_duration_seconds",
}


# A bucket bound of each of HISTOGRAMS (docs/metrics.md): a stage over it is in a paced run's tail.
SLOW_STAGE_SECONDS = 0.01


def _histogram_samples(ports: list[int], suffixes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """For each of `suffixes`, each of HISTOGRAMS' sample so named (its name follows the histogram's), added
    over the workers' /metrics: one scrape of each worker."""
    values = {suffix: dict.fromkeys(HISTOGRAMS, 0.0) for suffix in suffixes}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            for key, name in HISTOGRAMS.items():
                for suffix in suffixes:
                    if line.startswith(f"{name}{suffix} "):
                        values[suffix][key] += float(line.split()[-1])
    return values


def histogram_sums(ports: list[int]) -> dict[str, float]:
    """Each of HISTOGRAMS' _sum in seconds, added over the workers' /metrics."""
    return _histogram_samples(ports, ("_sum",))["_sum"]


_SLOW_BUCKET = f'_bucket{{le="{SLOW_STAGE_SECONDS}"}}'


def histogram_sums_and_slow(ports: list[int]) -> tuple[dict[str, float], dict[str, float]]:
    """From one scrape: each of HISTOGRAMS' _sum in seconds, and how many messages so far took longer than
    SLOW_STAGE_SECONDS in that stage (its _count less its bucket at that bound), added over the workers."""
    samples = _histogram_samples(ports, ("_sum", "_count", _SLOW_BUCKET))
    counts, within = samples["_count"], samples[_SLOW_BUCKET]
    return samples["_sum"], {key: counts[key] - within[key] for key in HISTOGRAMS}


def start_mailrelay(
    workdir: Path,
    sink_port: int,
    workers: int,
    log_level: str,
    without: tuple[str, ...] = (),
    state: Path | None = None,
) -> Server:
    """mailrelay serve on a generated config; `without` names stages taken out (bench/ablation.py);
    `state` is its state directory, if not in `workdir`."""
    port = free_port()
    metrics_port = free_ports(workers)
    config = mailrelay_config(workdir, port, sink_port, metrics_port, state)
    module = "bench.ablation" if without else "mailrelay"
    command = [sys.executable, "-m", module, "serve", "--config", str(config), "--log-level", log_level]
    if workers > 1:
        command += ["--workers", str(workers)]
    env = {**os.environ, ABLATE: ",".join(without)}
    with (workdir / "mailrelay.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        wait_for_banner(port, proc=proc)
    except BaseException:
        Server("mailrelay", port, proc, proc.pid).stop()  # one that never greeted must not outlive the run
        raise
    if workers > 1:
        # Every worker must be listening before load starts, or the first seconds go to one core only.
        deadline = time.monotonic() + 30
        from bench.procs import tree

        while len(tree(proc.pid)) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    return Server("mailrelay", port, proc, proc.pid, metrics_ports=[metrics_port + i for i in range(workers)])


POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtp_dns_support_level = disabled
smtputf8_enable = no
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
"""

# The Debian master.cf services a relay uses, chroot off (the temp dir has no chroot set-up), and a smtpd on
# a high port of our own.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
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


# Memory-backed storage for the control relay (bench/__main__.py, _start_tmpfs_control): its fsyncs
# return at once, so what the disk adds to a message's time can be told from the rest.
TMPFS = Path("/dev/shm")


def tmpfs_unavailable() -> str | None:
    """Why the control relay cannot run here, or None: TMPFS must be a tmpfs mount one can write to."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError as exc:
        return f"/proc/mounts could not be read ({exc.strerror})"
    if not any(line.split()[1:3] == [str(TMPFS), "tmpfs"] for line in mounts):
        return f"{TMPFS} is not a tmpfs mount"
    if not os.access(TMPFS, os.W_OK):
        return f"{TMPFS} is not writable"
    return None


def postfix_unavailable() -> str | None:
    """Why Postfix cannot be a contestant here, or None."""
    if shutil.which("postfix") is None:
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a Postfix instance must be started as root (its daemons drop to the postfix user)"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


def start_postfix(workdir: Path, sink_port: int) -> Server:
    """A throwaway Postfix instance: `postfix -c DIR start` with everything (queue, data, log) in DIR."""
    import pwd

    base = workdir / "postfix"
    for sub in ("conf", "queue", "data"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # the postfix user must reach its queue below it
    os.chmod(base, 0o755)
    os.chown(base / "data", pwd.getpwnam("postfix").pw_uid, -1)
    port = free_port()
    (base / "conf" / "main.cf").write_text(POSTFIX_MAIN_CF.format(dir=base, sink_port=sink_port))
    (base / "conf" / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port))
    # Postfix's commands log to syslog only; there is no /dev/log in a container, so a failure is silent.
    # `script` gives them a terminal, where they also write errors to stderr.
    done = subprocess.run(
        ["script", "-qec", f"postfix -c {base / 'conf'} start", "/dev/null"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"postfix start failed: {done.stdout.strip()} {done.stderr.strip()}")
    wait_for_banner(port)
    pid = int((base / "queue" / "pid" / "master.pid").read_text().split()[0])
    return Server(
        "postfix",
        port,
        None,
        pid,
        stop_command=["postfix", "-c", str(base / "conf"), "stop"],
        queue_dir=base / "queue",
    )
