"""Marketo's limits as pure arithmetic: the call-rate window, backoff, the quota day.

Owns the numbers; owns no clock, no thread, no socket. Callers pass ``now``
(a monotonic reading, or an aware datetime for the quota day), so every rule
here is tested with plain values.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dropzone import defaults as D


class RateWindow:
    """A sliding window: at most ``limit`` calls in any ``window`` seconds.

    Marketo counts calls in a sliding 20 s window (606 "Max rate limit '100'
    exceeded with in '20' secs"), so a fixed-bucket limiter would let 2x the
    limit through around a bucket edge.
    """

    def __init__(self, limit: int = D.CALLS_PER_20S, window: float = D.RATE_WINDOW_S) -> None:
        # More than Marketo's own ceiling would guarantee 606s.
        if not 1 <= limit <= D.MARKETO_CALLS_PER_WINDOW:
            raise ValueError(f"calls per window must be between 1 and {D.MARKETO_CALLS_PER_WINDOW}, got {limit}")
        self.limit = limit
        self.window = window
        self._calls: collections.deque[float] = collections.deque()
        self._blocked_until = 0.0

    def _expire(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - self.window:
            self._calls.popleft()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next call may go out (0 when it may go now)."""
        self._expire(now)
        wait = max(0.0, self._blocked_until - now)
        if len(self._calls) >= self.limit:
            wait = max(wait, self._calls[0] + self.window - now)
        return wait

    def record(self, now: float) -> None:
        self._expire(now)
        self._calls.append(now)

    def block(self, now: float, seconds: float = D.RATE_WINDOW_S) -> None:
        """Hold every call back for ``seconds``: Marketo said 606, so others are using the window."""
        self._blocked_until = max(self._blocked_until, now + seconds)

    def __len__(self) -> int:
        return len(self._calls)


def backoff(
    attempt: int,
    *,
    base: float = D.BACKOFF_BASE_S,
    cap: float = D.BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, with jitter.

    Half the delay is fixed and half is random ("equal jitter"), so retries
    from several daemons spread out but none retries immediately.
    """
    ceiling = min(cap, base * (2.0 ** min(attempt, 32)))
    return ceiling / 2 + rand() * ceiling / 2


def _marketo_zone() -> dt.tzinfo:
    # Marketo resets the daily quota at "12:00 AM CST"; America/Chicago follows
    # daylight saving, which matches what Marketo's own instances do. Slim
    # containers may lack tzdata, so fall back to plain CST.
    try:
        return ZoneInfo("America/Chicago")
    except ZoneInfoNotFoundError:
        return dt.timezone(dt.timedelta(hours=-6), "CST")


def next_quota_reset(now: dt.datetime) -> dt.datetime:
    """The next midnight in US Central time after ``now`` (an aware datetime), as UTC."""
    zone = _marketo_zone()
    local = now.astimezone(zone)
    tomorrow = (local + dt.timedelta(days=1)).date()
    midnight = dt.datetime.combine(tomorrow, dt.time(0, 0), tzinfo=zone)
    return midnight.astimezone(dt.UTC)
