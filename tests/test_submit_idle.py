"""When a submit look may be skipped (pure): only while nothing it depended on has changed."""

from __future__ import annotations

import math

import pytest

from dropzone.submit_idle import Facts, IdleMark, SubmitIdle, mark

CONFIG = ("settings", False, 10_000_000)


def facts(changes: int = 5, config: tuple[object, ...] = CONFIG, now: float = 100.0, wall: float = 1000.0,
          usage_due: bool = False) -> Facts:
    return Facts(changes, config, now, wall, usage_due)


class TestMark:
    @pytest.mark.parametrize(
        ("pauses_until", "held_until", "until", "until_wall"),
        [
            ([], [], math.inf, math.inf),
            ([90.0, 130.0, 120.0], [], 120.0, math.inf),  # the earliest pause still running
            ([], [None, 900.0, 1500.0, 1200.0], math.inf, 1200.0),  # held chunks, on the wall clock
            ([100.0], [1000.0], math.inf, math.inf),  # ending now: over already, no reason to look again
        ],
    )
    def test_the_earliest_hold_still_running(self, pauses_until, held_until, until, until_wall):
        made = mark(facts(), pauses_until=pauses_until, held_until=held_until, waiting=False)
        assert (made.until, made.until_wall) == (until, until_wall)


class TestHolds:
    @pytest.mark.parametrize(
        ("now_facts", "holds"),
        [
            (facts(), True),  # nothing changed
            (facts(now=119.9, wall=1199.9), True),  # before either hold ends
            (facts(changes=6), False),  # the journal committed something
            (facts(config=("other settings", False, 10_000_000)), False),  # a reload changed the settings
            (facts(config=("settings", True, 10_000_000)), False),  # the stage drains now
            (facts(config=("settings", False, 5_000_000)), False),  # another merged-import limit
            (facts(now=120.0), False),  # a list or target pause ended
            (facts(wall=1200.0), False),  # a resubmit hold ended (a clock step counts too)
            (facts(usage_due=True), False),  # usage.json due while chunks wait
        ],
    )
    def test_a_mark_holds_until_something_it_depended_on_changes(self, now_facts, holds):
        made = IdleMark(5, CONFIG, until=120.0, until_wall=1200.0, waiting=True)
        assert made.holds(now_facts) is holds

    def test_usage_json_is_no_reason_to_look_when_nothing_waits(self):
        assert IdleMark(5, CONFIG, waiting=False).holds(facts(usage_due=True))


class TestSubmitIdle:
    def test_nothing_is_skipped_before_a_look_or_after_a_clear(self):
        idle = SubmitIdle()
        assert not idle.holds(facts())
        idle.found_nothing(facts(), pauses_until=[], held_until=[], waiting=True)
        assert idle.holds(facts(now=1e9))
        idle.clear()  # a call's answer came back
        assert not idle.holds(facts())
