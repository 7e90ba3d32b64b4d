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
