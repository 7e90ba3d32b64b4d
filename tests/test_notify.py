"""sd_notify against real AF_UNIX datagram sockets: one on disk, one abstract."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dropzone import notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def _receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_reaches_a_socket_on_disk(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert notify.ready(env=env) is True
    assert _receive(sock) == ["READY=1"]


def test_fields_travel_in_one_datagram(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert notify.notify("READY=1", "STATUS=scanning", env=env)
    assert notify.stopping(env=env)
    assert _receive(sock) == ["READY=1", "STATUS=scanning"]
    assert _receive(sock) == ["STOPPING=1"]


def test_abstract_socket() -> None:
    name = f"dropzone-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify.watchdog(env={"NOTIFY_SOCKET": "@" + name})
        assert _receive(sock) == ["WATCHDOG=1"]


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading(env=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _receive(sock)
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_one_line(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert notify.status("3 files waiting\n1 import open", env=env)
    assert _receive(sock) == ["STATUS=3 files waiting 1 import open"]


def test_unset_socket_is_a_no_op() -> None:
    assert notify.ready(env={}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False


def test_a_missing_socket_does_not_raise(tmp_path: Path) -> None:
    assert notify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_os_environ_is_the_default(
    listener: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify.ready()
    assert _receive(sock) == ["READY=1"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert notify.watchdog_interval(env) == expected


def test_watchdog_pings_every_half_interval(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    dog = notify.Watchdog.from_env({**env, "WATCHDOG_USEC": "10000000"})
    assert dog.interval == 10.0
    sent = [t for t in (100.0, 101.0, 104.9, 105.0, 106.0, 110.0) if dog.maybe_ping(t)]
    assert sent == [100.0, 105.0, 110.0]
    assert [_receive(sock) for _ in sent] == [["WATCHDOG=1"]] * 3


def test_no_watchdog_no_ping(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    dog = notify.Watchdog.from_env(env)
    assert dog.interval is None
    assert dog.maybe_ping(0.0) is False
    sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
