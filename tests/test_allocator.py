"""The relay's processes cap glibc's malloc arenas (mailrelay.allocator; issue 8, flat RSS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench.ports import free_port
from conftest import SettingsFactory
from mailrelay import allocator

# Eight threads allocate and stay alive together; glibc's malloc_stats then lists the arenas (on stderr).
THREADS = """
import ctypes, sys, threading
from mailrelay.allocator import arena_cap, limit_malloc_arenas
if sys.argv[1:] == ["cap"]:
    limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
together = threading.Barrier(9)
def allocate():
    libc.malloc(1000)
    together.wait()
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
together.wait()
libc.malloc_stats()
together.wait()
for thread in threads:
    thread.join()
print(arena_cap())
"""


def without_arena_settings() -> dict[str, str]:
    """This environment less any arena cap of its own (a CI machine's, say)."""
    return {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}


def run_threads(*args: str, **env: str) -> tuple[int, str]:
    """How many arenas eight threads used, and what the process said caps them."""
    clean = without_arena_settings()
    command = [sys.executable, "-c", THREADS, *args]
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    arenas = sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))
    return arenas, done.stdout.strip()


def test_capped_threads_share_two_arenas() -> None:
    # Without the cap glibc gives each thread an arena of its own (up to 8 per core): the test can tell.
    arenas, cap = run_threads()
    assert arenas > 2 and cap == "libc default"
    arenas, cap = run_threads("cap")
    assert arenas == 2 and cap == "2"


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"MALLOC_ARENA_MAX": "3"}, "MALLOC_ARENA_MAX=3"),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=3"}, "glibc.malloc.arena_max=3"),
    ],
)
def test_a_cap_set_in_the_environment_is_left_as_the_admin_set_it(env: dict[str, str], said: str) -> None:
    arenas, cap = run_threads("cap", **env)
    assert arenas == 3 and cap == said


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_glibc(name: str) -> str:
        raise ValueError(f"unrecognized configuration name: {name}")  # as musl's Python answers

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(allocator.os, "confstr", not_glibc)
    # Another test in this process may have run `serve` (cli.main), which capped the arenas and said so.
    monkeypatch.setattr(allocator, "_capped_here", None)
    allocator.limit_malloc_arenas()
    assert allocator.arena_cap() == "libc default"


def test_every_serving_process_says_its_cap(make_settings: SettingsFactory) -> None:
    """`serve` and each worker of `serve --workers 2` cap their arenas before they start a thread, and say
    so in their startup line."""
    settings = make_settings()
    config = settings.source.read_text(encoding="utf-8")
    settings.source.write_text(
        config.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port()}"'), encoding="utf-8"
    )
    for workers in ("1", "2"):
        serve = ["serve", "--config", str(settings.source), "--workers", workers]
        process = subprocess.Popen(
            [sys.executable, "-m", "mailrelay", *serve],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**without_arena_settings(), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert process.stdout is not None
        said = []
        deadline = time.monotonic() + 30
        try:
            while len(said) < int(workers) and time.monotonic() < deadline:
                line = process.stdout.readline().decode()
                assert line, "serve exited before it listened"
                if "listening on" in line:
                    said.append(line)
        finally:
            process.send_signal(signal.SIGTERM)
            output = "".join(said) + process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        assert len(said) == int(workers), output
        assert all("malloc arenas 2" in line for line in said), said
