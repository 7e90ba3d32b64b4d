"""Running it for real: a daemon process talking sd_notify to a real datagram socket, serving
/metrics while files flow, reloading on SIGHUP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dropzone.simulator import Simulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET, wait_until

pytestmark = pytest.mark.slow

ROUTES = """
      - match: "leads_*.csv"
        object: leads
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, base_url: str, port: int, routes: str = ROUTES) -> Path:
    for name in ("inbox", "outbox", "inbox2", "outbox2"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "dropzone.yaml"
    path.write_text(
        f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
  poll_interval: 0.5
state_dir: state
http: {{listen: "127.0.0.1:{port}"}}
log: {{format: json}}
inboxes:
  - path: inbox
    outbox: outbox
    quiet_period: 0.1
    scan_interval: 0.5
    routes:{routes}
"""
    )
    return path


class Notifications:
    """The receiving end of sd_notify: a real AF_UNIX datagram socket, as systemd provides."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.seen: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.seen
            self.seen.extend(data.decode().splitlines())

    def wait_for(self, field: str, after: int = 0, timeout: float = 20.0) -> int:
        """Index of the first ``field`` at or after ``after``, waiting for it with a deadline."""
        def found() -> int | None:
            self.drain()
            return next((i for i, f in enumerate(self.seen) if i >= after and f == field), None)

        return int(wait_until(lambda: (i := found()) is not None and str(i), timeout=timeout))

    def close(self) -> None:
        self.sock.close()


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _fill(labels: tuple[tuple[str, str], ...], value: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, v.format(value)) for k, v in labels)


def test_notify_metrics_reload_and_stop(tmp_path, sim_config):
    """READY after the start-up scan, WATCHDOG pings, /metrics matching the simulator,
    RELOADING on SIGHUP, STOPPING on SIGTERM."""
    import dataclasses

    port = free_port()
    notes = Notifications(tmp_path / "notify.sock")
    sim_cfg = dataclasses.replace(sim_config, instant=False, queued_seconds=0.1, import_seconds_per_job=0.3)
    try:
        with Simulator(sim_cfg) as sim:
            config = write_config(tmp_path, sim.base_url, port)
            env = {**os.environ, "NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": "400000"}
            env.pop("WATCHDOG_PID", None)
            with (tmp_path / "daemon.log").open("wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                ready = notes.wait_for("READY=1")
                notes.wait_for("WATCHDOG=1", after=ready)
                files = [f"leads_{i}.csv" for i in range(6)]
                for i, name in enumerate(files):
                    (tmp_path / "inbox" / name).write_text(
                        "email\n" + "".join(f"u{i}x{j}@example.com\n" for j in range(5))
                    )
                # Scrape while files are flowing.
                open_batches = ("dropzone_batches_open", (("instance", "default"),))
                wait_until(lambda: metrics(port).get(open_batches) or None, timeout=20)
                wait_until(lambda: len(list((tmp_path / "outbox").glob("*.status.json"))) == len(files), timeout=30)
                wait_until(
                    lambda: metrics(port)[("dropzone_files_total", (("outcome", "Complete"),))] == len(files), 10
                )
                seen = metrics(port)
                ok_calls = (("code", "ok"), ("endpoint", "{}"), ("instance", "default"))
                imports = [c for c in sim.calls() if c["endpoint"] == "import"]
                statuses = [c for c in sim.calls() if c["endpoint"] == "status"]
                assert seen[("dropzone_api_calls_total", _fill(ok_calls, "import"))] == len(imports)
                assert seen[("dropzone_api_calls_total", _fill(ok_calls, "status"))] == len(statuses)
                assert seen[("dropzone_rows_imported_total", ())] == len(sim.imported_rows()) == 30
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
                probe = subprocess.run([sys.executable, "-m", "dropzone", "health", "--config", str(config)],
                                       capture_output=True, text=True, timeout=30)
                assert probe.returncode == 0, probe.stdout + probe.stderr

                # Reload: a second inbox appears; an invalid file afterwards is refused and the old config kept.
                config.write_text(config.read_text() + f"""
  - path: inbox2
    outbox: outbox2
    quiet_period: 0.1
    routes:{ROUTES}""")
                mark = len(notes.drain())
                proc.send_signal(signal.SIGHUP)
                reloading = notes.wait_for("RELOADING=1", after=mark)
                assert any(f.startswith("MONOTONIC_USEC=") for f in notes.seen[reloading:])
                notes.wait_for("READY=1", after=reloading)
                (tmp_path / "inbox2" / "leads_new.csv").write_text("email\nnew@example.com\n")
                wait_until(lambda: (tmp_path / "outbox2" / "leads_new.csv.status.json").exists(), timeout=20)

                valid = config.read_text()
                config.write_text(valid.replace("object: leads", "object: lead"))
                mark = len(notes.drain())
                proc.send_signal(signal.SIGHUP)
                notes.wait_for("READY=1", after=notes.wait_for("RELOADING=1", after=mark))
                wait_until(lambda: "reload_refused_keeping_old_config" in (tmp_path / "daemon.log").read_text(), 10)
                (tmp_path / "inbox" / "leads_after.csv").write_text("email\nafter@example.com\n")
                wait_until(lambda: (tmp_path / "outbox" / "leads_after.csv.status.json").exists(), timeout=20)
                config.write_text(valid)
            finally:
                mark = len(notes.drain())
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=10) == 0
            notes.wait_for("STOPPING=1", after=mark, timeout=5)
            probe = subprocess.run([sys.executable, "-m", "dropzone", "health", "--config", str(config)],
                                   capture_output=True, text=True, timeout=30)
            assert probe.returncode == 1, "a stopped daemon is not healthy"
    finally:
        notes.close()
