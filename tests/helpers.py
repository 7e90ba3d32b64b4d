"""What the daemon tests share: a config writer, a daemon factory, drop and read helpers."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dropzone import config as config_module
from dropzone.daemon import Daemon
from tests.conftest import CLIENT_ID, CLIENT_SECRET

ROUTES = """
      - match: "leads_*.csv"
        object: leads
        lookupField: email
        listId: 1234
      - match: "cars_*.tsv"
        object: customobject
        apiName: car_c
      - match: "cars_*.csv"
        object: customobject
        apiName: car_c
        trim_header: true
      - match: "*.ssv"
        object: programmember
        programId: 1044
        programMemberStatus: Registered
"""


def config_text(
    tmp_path: Path, base_url: str, *, extra: str = "", routes: str = ROUTES, resubmit_hold: float = 0.2,
    poll_interval: float = 0.5,
) -> str:
    """The tests' configuration (inbox, outbox, archive and state below ``tmp_path``), as YAML; folders made."""
    for name in ("inbox", "outbox", "archive"):
        (tmp_path / name).mkdir(exist_ok=True)
    return f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
  poll_interval: {poll_interval}
  max_retry_seconds: 5
  resubmit_hold: {resubmit_hold}
state_dir: state
{extra}
inboxes:
  - path: inbox
    outbox: outbox
    archive: archive
    quiet_period: 0.2
    scan_interval: 0.5
    routes:{routes}
"""


def make_config(
    tmp_path: Path, base_url: str, *, extra: str = "", routes: str = ROUTES, resubmit_hold: float = 0.2
) -> config_module.Config:
    text = config_text(tmp_path, base_url, extra=extra, routes=routes, resubmit_hold=resubmit_hold)
    return config_module.parse(text, base_dir=tmp_path, environ={})


def daemons(
    tmp_path: Path, base_url: str, *, poll_interval: float | None = None, max_idle: float | None = None
) -> Iterator[Callable[..., Daemon]]:
    """Yields a factory of started daemons (``make(**make_config kwargs)``); closes them all after."""
    made: list[Daemon] = []

    def make(**kwargs: Any) -> Daemon:
        config = make_config(tmp_path, base_url, **kwargs)
        if poll_interval is not None:
            config = dataclasses.replace(
                config, marketo=dataclasses.replace(config.marketo, poll_interval=poll_interval)
            )
        daemon = Daemon(config) if max_idle is None else Daemon(config, max_idle=max_idle)
        daemon.start()
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()


def drop(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / "inbox" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def status_of(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "outbox" / f"{name}.status.json").read_text())


def archived(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())




def run_until_idle(daemon: Daemon, timeout: float = 60.0) -> None:
    """Run passes until nothing is in flight or waiting, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    daemon.rescan_now()  # burst mode starts from what is on disk now
    while time.monotonic() < deadline:
        busy = daemon.run_once()
        if not busy and daemon.is_idle():
            return
        if not busy:
            daemon.idle()
    raise TimeoutError(f"dropzone was still busy after {timeout} s")
