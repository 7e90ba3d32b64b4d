"""The crash and fault campaigns of ``tests/bench/``, run small: the same checks as the large runs."""

from __future__ import annotations

import pytest

from tests.bench import crash_campaign, fault_campaign

pytestmark = pytest.mark.slow


def test_crash_campaign_small(tmp_path):
    """Four rounds of three files, SIGKILL at seeded random moments: no row lost, one Complete status per file."""
    result = crash_campaign.run_campaign(rounds=4, files_per_round=3, seed=3, work_dir=tmp_path, drain_timeout=60)
    assert result["failures"] == []
    assert result["kills"] == 4
    assert result["files"] == 12
    assert result["rows_lost"] == 0
    assert result["duplicate_rows"] <= result["resubmitted_rows"]


def test_fault_campaign_small(tmp_path):
    """Twelve files through random faults, a full queue and short-lived tokens, then expires_in 0: all complete."""
    # 606 costs a 20 s wait each; the large run draws it. Here: the other faults, at twice the rate.
    rates = {kind: 2 * p for kind, p in fault_campaign.DEFAULT_FAULT_RATES.items() if kind != "606"}
    result = fault_campaign.run_campaign(
        files=12, zero_files=3, seed=4, fault_rates=rates, burst_every=60.0, work_dir=tmp_path, drain_timeout=90
    )
    assert result["failures"] == []
    faults, zero = result["phases"]
    assert (faults["files"], zero["files"]) == (12, 3)
    assert faults["rows_lost"] == zero["rows_lost"] == 0
    assert "1016" in faults["by_answer"], "the other integrations' burst never filled the queue"
    assert set(faults["by_answer"]) - {"ok", "1016"}, "no random fault was drawn: the campaign tested nothing"
    assert zero["token_wait_seconds"] > 0, "the expires_in 0 token was never waited out"
