"""Shared fixtures: a real simulator on 127.0.0.1, a clean environment, deadline waits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from dropzone import config as config_module
from dropzone.daemon import Daemon
from dropzone.simulator import SimConfig, Simulator

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cr3t-never-logged"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy may capture loopback traffic."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts must be gone when it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        extra[0].join(deadline - time.monotonic())
    extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not extra, f"threads left running: {extra}"


@pytest.fixture
def sim_config() -> SimConfig:
    """Instant jobs, the default limits; tests override fields with dataclasses.replace."""
    return SimConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, instant=True)


@pytest.fixture
def simulator(sim_config: SimConfig) -> Iterator[Simulator]:
    with Simulator(sim_config) as sim:
        yield sim


@pytest.fixture
def make_api() -> Iterator[Callable[..., Any]]:
    """Factory: a started simulator (knobs as keywords, ``clock=`` optional) and a plain session on it."""
    from tests.test_simulator import CID, SECRET, Api

    opened: list[tuple[Simulator, Any]] = []

    def make(clock: Callable[[], float] | None = None, **knobs: Any) -> Any:
        knobs.setdefault("instant", True)
        sim = Simulator(SimConfig(client_id=CID, client_secret=SECRET, **knobs), clock=clock).start()
        api = Api(sim)
        opened.append((sim, api))
        return api

    yield make
    for sim, api in opened:
        api.close()
        sim.stop()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def sims() -> Iterator[Callable[..., Simulator]]:
    """Factory of started simulators: ``sims(client_id, client_secret, **SimConfig knobs)``; instant by default."""
    started: list[Simulator] = []

    def make(client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET, **knobs: Any) -> Simulator:
        knobs.setdefault("instant", True)
        sim = Simulator(SimConfig(client_id=client_id, client_secret=client_secret, **knobs)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


class Daemons:
    """Starts in-process daemons on a configuration file (reloadable from it) and closes them all at the end."""

    def __init__(self) -> None:
        self.running: list[Daemon] = []

    def start(self, path: Path) -> Daemon:
        daemon = Daemon(config_module.load(path), reload_config=lambda: config_module.load(path), max_idle=0.05)
        daemon.start()
        self.running.append(daemon)
        return daemon

    def crash(self, daemon: Daemon) -> None:
        """Drop a daemon mid-work. ``close`` only releases the journal and sockets: every state it relies
        on was journalled before the action it enables, so the next start sees what a SIGKILL leaves."""
        self.running.remove(daemon)
        daemon.close()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    made = Daemons()
    yield made
    for daemon in made.running:
        daemon.close()
