"""A real daemon process: SIGTERM drains, secrets never printed, one instance per state_dir.

The SIGKILL loop lives in ``tests/bench/crash_campaign.py`` and runs small in ``test_campaigns.py``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import pytest

from dropzone.simulator import Simulator
from tests.bench._campaign import CLIENT_SECRET, start_daemon, started_count, write_config
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def sim_config(sim_config):
    # The campaign helpers' configuration names their own client; the simulator must know it.
    from tests.bench._campaign import CLIENT_ID

    return dataclasses.replace(sim_config, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


def test_sigterm_drains_and_exits_zero(tmp_path, sim_config):
    """SIGTERM while batches are open: exit 0 within 10 s; the next start finishes the work without resubmitting."""
    sim_cfg = dataclasses.replace(sim_config, instant=False, import_seconds_per_job=1.0)
    with Simulator(sim_cfg) as sim:
        config = write_config(tmp_path, sim.base_url)
        (tmp_path / "inbox" / "leads_t.csv").write_text("email\nann@example.com\n")
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        # Open: Marketo has the batch and the journal its batchId (the simulator records a submission
        # before it answers, so a signal right after that would land in the upload, another case).
        wait_until(lambda: started_count(log) >= 1 and b"import_submitted" in log.read_bytes(), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc = start_daemon(config, log)
        wait_until(lambda: started_count(log) >= 2, timeout=20)
        try:
            wait_until(lambda: (tmp_path / "outbox" / "leads_t.csv.status.json").exists(), timeout=20)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert len(sim.submissions()) == 1


def test_no_secret_or_token_in_the_logs(tmp_path, sim_config):
    """An end-to-end run at debug level, with retries and a token refresh: neither secret nor token is printed."""
    with Simulator(sim_config) as sim:
        config = write_config(tmp_path, sim.base_url, log_level="debug")
        sim.inject("602", endpoint="status")
        sim.inject("http503", endpoint="import")
        (tmp_path / "inbox" / "leads_s.csv").write_text("email\nann@example.com\n")
        log = tmp_path / "daemon.log"
        proc = start_daemon(config, log)
        try:
            wait_until(lambda: started_count(log) >= 1, timeout=20)
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
        first = start_daemon(config, log)
        try:
            wait_until(lambda: started_count(log) >= 1, timeout=20)
            second = subprocess.run(
                [sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                capture_output=True, text=True, timeout=20, env={**os.environ, "CAMPAIGN_SECRET": CLIENT_SECRET},
            )
            assert second.returncode != 0
            assert "already running" in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=10) == 0
