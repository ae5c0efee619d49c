"""`serve --workers N`: the parent process that starts the workers and waits for them (mailrelay.app)."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
from typing import Any

import pytest

from conftest import SettingsFactory
from mailrelay import app


class ExitingWorker:
    """A worker that is running at the parent's first look and gone (reaped) at the next, as when it exits
    between two looks: each read of a real Process's exitcode polls waitpid and may reap it."""

    def __init__(self, **_kwargs: Any) -> None:
        self.looks = 0
        self.pid: int | None = None
        read, write = os.pipe()
        os.close(write)  # its process has exited: the sentinel reads as ready
        self.sentinel = read

    def start(self) -> None:
        self.pid = 2**22 + 1  # above pid_max: no process is ever signalled

    @property
    def exitcode(self) -> int | None:
        self.looks += 1
        return None if self.looks == 1 else 0

    def join(self) -> None:
        os.close(self.sentinel)


class SpawnContext:
    def Process(self, **kwargs: Any) -> ExitingWorker:  # multiprocessing's name
        return ExitingWorker(**kwargs)


def test_the_parent_exits_when_a_worker_exits_between_two_looks(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    waited: list[list[Any]] = []

    def wait(objects: list[Any], timeout: float | None = None) -> list[Any]:
        # An empty list would block for ever (no timeout): the parent then never exits after SIGTERM.
        assert objects, "waiting on no worker at all"
        waited.append(objects)
        return list(objects)

    monkeypatch.setattr(multiprocessing.connection, "wait", wait)
    monkeypatch.setattr(app.multiprocessing, "get_context", lambda _method: SpawnContext())
    monkeypatch.setattr(signal, "signal", lambda *_args: None)  # the test process keeps its own handlers
    assert app.serve_workers(make_settings(), 1, None) == 0
    assert len(waited) == 1
