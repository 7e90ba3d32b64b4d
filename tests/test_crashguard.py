"""A file the daemon died on while preparing it, again and again, is Rejected instead of a crash loop."""

from __future__ import annotations

import json

import pytest

from dropzone import defaults as D
from dropzone.crashguard import CrashGuard
from tests.helpers import archived, daemons, drop, run_until_idle, status_of


def died_on(state_dir, file_id: int) -> None:
    """What a process killed while preparing ``file_id`` leaves (``begin`` without ``end``)."""
    CrashGuard(state_dir).begin(file_id)


class TestGuard:
    def test_each_death_on_a_file_is_counted_at_the_next_start(self, tmp_path):
        for times in range(1, D.PREPARE_CRASHES + 1):
            died_on(tmp_path, 7)
            guard = CrashGuard(tmp_path)
            assert guard.counts == {7: times}
            assert (guard.poison(7) is None) == (times < D.PREPARE_CRASHES)
        assert "stopped 2 times while preparing this file" in (CrashGuard(tmp_path).poison(7) or "")

    def test_a_file_prepared_to_the_end_is_forgotten(self, tmp_path):
        died_on(tmp_path, 7)
        guard = CrashGuard(tmp_path)
        guard.begin(7)
        guard.end(7)
        assert CrashGuard(tmp_path).counts == {}

    def test_a_damaged_count_file_counts_nothing(self, tmp_path):
        (tmp_path / "work").mkdir()
        (tmp_path / "work" / "crashes.json").write_text("[1, 2")
        assert CrashGuard(tmp_path).counts == {}


@pytest.fixture
def daemon_factory(tmp_path, simulator):
    yield from daemons(tmp_path, simulator.base_url)


def test_the_daemon_rejects_a_file_it_died_on_too_often_and_goes_on(tmp_path, daemon_factory):
    state = tmp_path / "state"
    for _ in range(D.PREPARE_CRASHES):
        died_on(state, 1)  # the last death is found by the daemon's own start
    daemon = daemon_factory()
    drop(tmp_path, "leads_1.csv", "email\na@example.com\n")
    run_until_idle(daemon)
    drop(tmp_path, "leads_2.csv", "email\nb@example.com\n")
    run_until_idle(daemon)
    first = status_of(tmp_path, "leads_1.csv")
    assert first["status"] == "Rejected" and "stopped 2 times while preparing" in first["error"]["message"]
    assert status_of(tmp_path, "leads_2.csv")["status"] == "Complete"
    assert "leads_1.csv" in [p.name for p in archived(tmp_path)]  # the original kept
    assert json.loads((state / "work" / "crashes.json").read_text()) == {}
