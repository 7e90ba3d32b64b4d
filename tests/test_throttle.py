"""The pure limit arithmetic: rate window, backoff, quota day."""

import datetime as dt

import pytest

from dropzone import throttle


class TestRateWindow:
    def test_calls_under_the_limit_go_at_once(self):
        """Until the window holds `limit` calls, no call waits."""
        window = throttle.RateWindow(limit=3, window=20.0)
        for t in (0.0, 1.0, 2.0):
            assert window.delay(t) == 0
            window.record(t)

    def test_the_call_over_the_limit_waits_for_the_oldest_to_leave(self):
        """The (limit+1)th call waits until the first one is 20 s old: a sliding, not a fixed, window."""
        window = throttle.RateWindow(limit=3, window=20.0)
        for t in (0.0, 5.0, 10.0):
            window.record(t)
        assert window.delay(12.0) == pytest.approx(8.0)
        assert window.delay(20.0) == 0

    def test_no_window_of_20_seconds_ever_holds_more_than_the_limit(self):
        """Driving the window greedily never lets limit+1 calls into any 20 s span."""
        window = throttle.RateWindow(limit=5, window=20.0)
        now, sent = 0.0, []
        while len(sent) < 40:
            wait = window.delay(now)
            now += wait
            window.record(now)
            sent.append(now)
        for i, start in enumerate(sent):
            assert sum(1 for t in sent[i:] if t < start + 20.0) <= 5

    def test_block_holds_every_call_back(self):
        """After a 606 from Marketo, even an empty window waits out the block."""
        window = throttle.RateWindow(limit=80)
        window.block(100.0, 20.0)
        assert window.delay(105.0) == pytest.approx(15.0)
        assert window.delay(120.0) == 0

    @pytest.mark.parametrize("limit", [0, 101])
    def test_limits_outside_marketos_are_refused(self, limit):
        """More than Marketo's 100 per 20 s would guarantee 606s."""
        with pytest.raises(ValueError, match="between 1 and 100"):
            throttle.RateWindow(limit=limit)


class TestBackoff:
    def test_grows_exponentially_and_is_capped(self):
        """With the random part at its maximum, delays double until the cap."""
        delays = [throttle.backoff(n, base=1.0, cap=10.0, rand=lambda: 1.0) for n in range(6)]
        assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    def test_never_retries_immediately(self):
        """Half of the delay is fixed, so jitter cannot make it zero."""
        assert throttle.backoff(0, base=2.0, rand=lambda: 0.0) == 1.0

    def test_huge_attempt_numbers_do_not_overflow(self):
        """A daemon up for months may count many attempts."""
        assert throttle.backoff(10_000, cap=60.0, rand=lambda: 0.5) == pytest.approx(45.0)


class TestQuotaReset:
    def test_next_midnight_central_in_winter(self):
        """CST is UTC-6: midnight in Chicago is 06:00 UTC."""
        now = dt.datetime(2026, 1, 15, 20, 0, tzinfo=dt.UTC)
        assert throttle.next_quota_reset(now) == dt.datetime(2026, 1, 16, 6, 0, tzinfo=dt.UTC)

    def test_next_midnight_central_in_summer(self):
        """CDT is UTC-5: midnight in Chicago is 05:00 UTC."""
        now = dt.datetime(2026, 7, 1, 3, 0, tzinfo=dt.UTC)  # still June 30 in Chicago
        assert throttle.next_quota_reset(now) == dt.datetime(2026, 7, 1, 5, 0, tzinfo=dt.UTC)


class TestDefaults:
    def test_the_numbers_come_from_defaults(self):
        """One source for every limit: the window and backoff use dropzone.defaults when not told otherwise."""
        from dropzone import defaults as D

        window = throttle.RateWindow()
        assert (window.limit, window.window) == (D.CALLS_PER_20S, D.RATE_WINDOW_S)
        assert throttle.backoff(1000, rand=lambda: 1.0) == D.BACKOFF_CAP_S
        assert throttle.backoff(0, rand=lambda: 1.0) == D.BACKOFF_BASE_S
        assert [n for n in vars(throttle) if n.isupper() and n != "D"] == [], "no constants of its own"


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


class TestQuotaDay:
    """Marketo's "12:00AM CST": Chicago time (CDT in summer) or plain CST all year; the safe reading of each."""

    @pytest.mark.parametrize(
        ("now", "start", "rolls"),
        [
            # Winter: both readings agree, midnight is 06:00 UTC.
            (utc(2026, 1, 15, 20, 0), utc(2026, 1, 15, 6), utc(2026, 1, 16, 6)),
            (utc(2026, 1, 16, 5, 59), utc(2026, 1, 15, 6), utc(2026, 1, 16, 6)),
            (utc(2026, 1, 16, 6, 0), utc(2026, 1, 16, 6), utc(2026, 1, 17, 6)),
            # Summer: Chicago's midnight is 05:00 UTC, plain CST's 06:00. Before 05:00 the day began at the
            # earlier one; between the two, yesterday still counts (CST has not reset); after 06:00 the day
            # is counted from 05:00, so the hour between is in both days.
            (utc(2026, 7, 1, 4, 59), utc(2026, 6, 30, 5), utc(2026, 7, 1, 5)),
            (utc(2026, 7, 1, 5, 30), utc(2026, 6, 30, 6), utc(2026, 7, 1, 6)),
            (utc(2026, 7, 1, 6, 30), utc(2026, 7, 1, 5), utc(2026, 7, 2, 5)),
            # Spring forward (March 8): the day after is the first with the summer pattern.
            (utc(2026, 3, 8, 12, 0), utc(2026, 3, 8, 6), utc(2026, 3, 9, 6)),
            (utc(2026, 3, 9, 5, 30), utc(2026, 3, 8, 6), utc(2026, 3, 9, 6)),
            # Fall back (November 1): Chicago's day is 25 hours, from 05:00 to 06:00 the next day.
            (utc(2026, 11, 1, 5, 30), utc(2026, 10, 31, 6), utc(2026, 11, 1, 6)),
            (utc(2026, 11, 2, 5, 30), utc(2026, 11, 1, 5), utc(2026, 11, 2, 6)),
            (utc(2026, 11, 2, 6, 0), utc(2026, 11, 2, 6), utc(2026, 11, 3, 6)),
        ],
    )
    def test_the_day_starts_at_the_earlier_midnight_and_rolls_when_that_one_passes(self, now, start, rolls):
        assert throttle.quota_day_start(now) == start
        assert throttle.quota_day_rolls(now) == rolls
        assert throttle.quota_day_start(rolls) > start  # the count may fall there, not before
        assert throttle.quota_day_start(rolls - dt.timedelta(seconds=1)) == start

    @pytest.mark.parametrize(
        ("endpoint", "outcome", "sent", "counts"),
        [
            ("import", "ok", True, True),
            ("status", "ok", True, True),
            ("failures", "ok", True, True),
            ("usage", "ok", True, True),  # asking usage.json is a call too
            ("identity", "ok", True, False),  # Identity calls do not count
            ("identity", "HTTP 401", True, False),
            *[("status", code, True, False) for code in ("601", "602", "604", "605", "608", "611")],  # Adobe's `*`
            # Not documented as exempt: counted, since counting one too many only pauses us early.
            *[("import", code, True, True) for code in ("600", "603", "606", "607", "615", "1016", "1019")],
            ("status", "HTTP 503", True, True),
            ("import", "reply not JSON", True, True),
            ("status", "Interrupted", True, True),
            ("status", "not sent", False, False),  # no connection was made: Marketo never saw it
            ("import", "not sent", False, False),
        ],
    )
    def test_which_outcomes_count_toward_the_quota(self, endpoint, outcome, sent, counts):
        assert throttle.counts_toward_quota(endpoint, outcome, sent=sent) is counts

    @pytest.mark.parametrize(
        ("used", "quota", "reserve", "paused"),
        [
            (0, 50_000, 10_000, False),
            (39_999, 50_000, 10_000, False),  # 10,001 left
            (40_000, 50_000, 10_000, True),  # exactly the reserve left: the rest is the others'
            (60_000, 50_000, 10_000, True),  # over the quota (usage.json counts everyone)
            (49_999, 50_000, 0, False),  # 0 turns the pause off
            (50_000, 50_000, 0, False),
            (9, 20, 10, False),
            (10, 20, 10, True),
        ],
    )
    def test_new_imports_pause_when_only_the_reserve_is_left(self, used, quota, reserve, paused):
        assert throttle.reserve_reached(used, quota=quota, reserve=reserve) is paused


class TestDailyCalls:
    def test_a_winter_day_counts_from_06_00_utc(self):
        calls = throttle.DailyCalls()
        for minute in (0, 1, 2):
            calls.record(utc(2026, 1, 15, 20, minute))
        assert calls.ours(utc(2026, 1, 16, 5, 59)) == 3
        assert calls.ours(utc(2026, 1, 16, 6, 0)) == 0
        assert calls.total == 3

    def test_in_summer_a_call_of_the_hour_between_the_midnights_counts_in_both_days(self):
        calls = throttle.DailyCalls()
        calls.record(utc(2026, 7, 1, 4, 30))
        calls.record(utc(2026, 7, 1, 5, 30))
        assert calls.ours(utc(2026, 7, 1, 5, 45)) == 2  # plain CST: still June 30's day
        calls.record(utc(2026, 7, 1, 6, 30))
        assert calls.ours(utc(2026, 7, 1, 6, 45)) == 2  # Chicago: July 1 since 05:00
        assert calls.ours(utc(2026, 7, 2, 5, 30)) == 1  # plain CST's July 1 (since 06:00)
        assert calls.ours(utc(2026, 7, 2, 6, 30)) == 0

    def test_usage_json_plus_our_calls_since_it_was_asked(self):
        calls = throttle.DailyCalls()
        t = utc(2026, 1, 15, 12, 0)
        for _ in range(3):
            calls.record(t)
        calls.observe_usage(1000, taken_at=t, ours_then=calls.total)
        for _ in range(5):
            calls.record(t)
        today = calls.today(t)
        assert (today.ours, today.instance, today.used) == (8, 1000, 1005)
        assert today.rolls_at == utc(2026, 1, 16, 6)

    def test_our_own_count_wins_when_it_is_higher(self):
        calls = throttle.DailyCalls()
        t = utc(2026, 1, 15, 12, 0)
        for _ in range(10):
            calls.record(t)
        calls.observe_usage(2, taken_at=t, ours_then=calls.total)  # a lagging (or partial) answer
        assert calls.used(t) == 10

    def test_a_usage_answer_of_another_day_is_forgotten_at_the_reset(self):
        calls = throttle.DailyCalls()
        calls.observe_usage(45_000, taken_at=utc(2026, 1, 16, 5, 50), ours_then=0)
        assert calls.instance(utc(2026, 1, 16, 5, 59)) == 45_000
        assert calls.instance(utc(2026, 1, 16, 6, 0)) is None
        assert calls.used(utc(2026, 1, 16, 6, 0)) == 0

    def test_a_summer_answer_from_the_hour_between_is_kept_until_both_days_have_begun(self):
        calls = throttle.DailyCalls()
        calls.observe_usage(45_000, taken_at=utc(2026, 7, 1, 5, 30), ours_then=0)  # Marketo may not have reset
        assert calls.instance(utc(2026, 7, 1, 6, 30)) == 45_000
        assert calls.instance(utc(2026, 7, 2, 4, 59)) == 45_000
        assert calls.instance(utc(2026, 7, 2, 5, 0)) is None

    def test_memory_stays_flat_however_many_days_it_counts(self):
        calls = throttle.DailyCalls()
        start = utc(2026, 1, 1)
        for minute in range(0, 5 * 24 * 60, 7):
            calls.record(start + dt.timedelta(minutes=minute))
        assert len(calls._hours) <= 50
        last = start + dt.timedelta(minutes=5 * 24 * 60)
        day = throttle.quota_day_start(last)
        assert calls.ours(last) == sum(
            1 for m in range(0, 5 * 24 * 60, 7) if start + dt.timedelta(minutes=m) >= day
        )
