"""A real daemon process, killed with SIGKILL at random moments and restarted: nothing lost, nothing half done."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dropzone.simulator import Simulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET, wait_until

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, base_url: str) -> Path:
    for name in ("inbox", "outbox", "archive"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "dropzone.yaml"
    path.write_text(
        f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: ${{TEST_SECRET}}
  poll_interval: 0.3
  max_retry_seconds: 5
state_dir: state
split_max_bytes: 3000
log: {{format: json, level: debug}}
inboxes:
  - path: inbox
    outbox: outbox
    archive: archive
    quiet_period: 0.1
    scan_interval: 0.5
    routes:
      - match: "leads_*.csv"
        object: leads
      - match: "cars_*.tsv"
        object: customobject
        apiName: car_c
      - match: "*.ssv"
        object: programmember
        programId: 1044
        programMemberStatus: Registered
"""
    )
    return path


def make_files(count: int) -> dict[str, str]:
    files = {}
    for n in range(count):
        kind = n % 3
        rows = 40 + 7 * n
        if kind == 0:
            body = "".join(f'f{n}r{i}@example.com,"First\n{i}",Last{i}\n' for i in range(rows))
            files[f"leads_{n}.csv"] = "email,firstName,lastName\n" + body
        elif kind == 1:
            body = "".join(f"c{n}\tmake\tmodel\tVIN{n}X{i}\n" for i in range(rows))
            files[f"cars_{n}.tsv"] = "color\tmake\tmodel\tvin\n" + body
        else:
            body = "".join(f"m{n}r{i}@example.com;Name{i}\n" for i in range(rows))
            files[f"members_{n}.ssv"] = "email;firstName\n" + body
    return files


def rows_in(name: str) -> int:
    return 40 + 7 * int(name.split("_")[1].split(".")[0])


def row_key(kind: str, row: dict) -> str:
    return row.get("vin") if kind == "customobject" else row.get("email")  # type: ignore[return-value]


def expected_keys(files: dict[str, str]) -> Counter:
    keys: Counter = Counter()
    for text in files.values():
        for line in text.split("\n")[1:]:
            for token in line.replace(";", ",").replace("\t", ",").split(","):
                if "@example.com" in token or token.startswith("VIN"):
                    keys[token] += 1
    return keys


def start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TEST_SECRET": CLIENT_SECRET}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dropzone", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def started(log: Path, times: int) -> bool:
    """The daemon logged its start ``times`` times: its signal handlers are in place."""
    return log.exists() and log.read_text().count('"daemon_started"') >= times


def test_sigkill_at_random_moments_loses_nothing(tmp_path, sim_config):
    """Six SIGKILLs while files flow: every row reaches Marketo, every file has one final status, duplicates only after a resubmit."""
    rng = random.Random(20261122)
    files = make_files(9)
    sim_cfg = dataclasses.replace(
        sim_config, instant=False, queued_seconds=0.05, import_seconds_per_job=0.3, import_seconds_per_row=0.0
    )
    with Simulator(sim_cfg) as sim:
        config = write_config(tmp_path, sim.base_url)
        for name, text in files.items():
            (tmp_path / "inbox" / name).write_text(text)
        log = tmp_path / "daemon.log"
        for _ in range(6):
            proc = start(config, log)
            time.sleep(rng.uniform(0.3, 1.6))  # the random moment is the point of this test
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        before = log.read_text().count('"daemon_started"')
        proc = start(config, log)
        wait_until(lambda: started(log, before + 1), timeout=20)
        try:
            outbox = tmp_path / "outbox"
            wait_until(
                lambda: len([p for p in outbox.iterdir() if p.name.endswith(".status.json")]) >= len(files),
                timeout=90,
                interval=0.2,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0

        statuses = {p.name: json.loads(p.read_text()) for p in (tmp_path / "outbox").glob("*.status.json")}
        assert sorted(statuses) == sorted(f"{name}.status.json" for name in files), "one final status per file"
        assert {s["status"] for s in statuses.values()} == {"Complete"}
        for name, status in statuses.items():
            assert status["rowsTotal"] == status["rowsProcessed"] == rows_in(name.removesuffix(".status.json"))

        imported: Counter = Counter(row_key(r["kind"], r["row"]) for r in sim.imported_rows())
        wanted = expected_keys(files)
        missing = set(wanted) - set(imported)
        assert not missing, f"{len(missing)} rows never reached Marketo"
        duplicated = sum(imported[k] - 1 for k in wanted if imported[k] > 1)
        resubmitted_rows = sum(
            b["rows"] * b.get("resubmitted", 0) for s in statuses.values() for b in s["batches"]
        )
        assert duplicated <= resubmitted_rows, "a row was imported twice without a recorded resubmission"

        assert not [p for p in (tmp_path / "inbox").rglob("*") if p.is_file()], "nothing left behind in the inbox"
        originals = {p.name: p.read_text() for p in (tmp_path / "archive").rglob("*") if p.is_file()}
        assert originals == files


def test_sigterm_drains_and_exits_zero(tmp_path, sim_config):
    """SIGTERM while batches are open: exit 0 within 10 s; the next start finishes the work without resubmitting."""
    sim_cfg = dataclasses.replace(sim_config, instant=False, import_seconds_per_job=1.0)
    with Simulator(sim_cfg) as sim:
        config = write_config(tmp_path, sim.base_url)
        (tmp_path / "inbox" / "leads_t.csv").write_text("email\nann@example.com\n")
        log = tmp_path / "daemon.log"
        proc = start(config, log)
        wait_until(lambda: started(log, 1) and sim.submissions(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc = start(config, log)
        wait_until(lambda: started(log, 2), timeout=20)
        try:
            wait_until(lambda: (tmp_path / "outbox" / "leads_t.csv.status.json").exists(), timeout=20)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert len(sim.submissions()) == 1


def test_no_secret_or_token_in_the_logs(tmp_path, sim_config):
    """An end-to-end run at debug level, with retries and a token refresh: neither secret nor token is printed."""
    with Simulator(sim_config) as sim:
        config = write_config(tmp_path, sim.base_url)
        sim.inject("602", endpoint="status")
        sim.inject("http503", endpoint="import")
        (tmp_path / "inbox" / "leads_s.csv").write_text("email\nann@example.com\n")
        log = tmp_path / "daemon.log"
        proc = start(config, log)
        try:
            wait_until(lambda: started(log, 1), timeout=20)
            wait_until(lambda: (tmp_path / "outbox" / "leads_s.csv.status.json").exists(), timeout=20)
            token = sim.current_token()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        output = log.read_text()
        assert "marketo_call" in output  # debug lines were written
        assert CLIENT_SECRET not in output
        assert token and token not in output
        for name in os.listdir(tmp_path / "outbox"):
            text = (tmp_path / "outbox" / name).read_text()
            assert CLIENT_SECRET not in text and token not in text


def test_second_instance_refuses(tmp_path, sim_config):
    """Two daemons on one state_dir: the second exits non-zero and says why."""
    with Simulator(sim_config) as sim:
        config = write_config(tmp_path, sim.base_url)
        log = tmp_path / "daemon.log"
        first = start(config, log)
        try:
            wait_until(lambda: started(log, 1), timeout=20)
            second = subprocess.run(
                [sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                capture_output=True, text=True, timeout=20, env={**os.environ, "TEST_SECRET": CLIENT_SECRET},
            )
            assert second.returncode != 0
            assert "already running" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=10) == 0
