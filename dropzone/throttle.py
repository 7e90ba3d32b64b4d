"""Marketo's limits as pure arithmetic: the call-rate window, backoff, the quota day.

Owns the numbers; owns no clock, no thread, no socket. Callers pass ``now``
(a monotonic reading, or an aware datetime for the quota day), so every rule
here is tested with plain values.

The daily quota resets "at 12:00AM CST"; whether Marketo means Chicago time
(CDT, UTC-5, in summer) or plain CST (UTC-6) all year is not documented. Both
readings are kept, and each rule takes the one that spends less of the
customer's quota: the day counted from the earlier possible midnight, a call
of the hour between them counted in both days.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
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


def _plain_cst() -> dt.tzinfo:
    return dt.timezone(dt.timedelta(hours=-6), "CST")


def _readings() -> tuple[dt.tzinfo, ...]:
    return (_marketo_zone(), _plain_cst())


def _midnights(now: dt.datetime, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The midnights in ``zone`` just before (or at) and just after ``now``, as UTC."""
    day = now.astimezone(zone).date()
    last = dt.datetime.combine(day, dt.time(0, 0), tzinfo=zone)
    following = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0), tzinfo=zone)
    return last.astimezone(dt.UTC), following.astimezone(dt.UTC)


def quota_day_start(now: dt.datetime) -> dt.datetime:
    """Since when calls count toward today's quota, on the reading that makes today longest (UTC).

    In summer, between 05:00 and 06:00 UTC Chicago's day has begun and plain CST's
    has not: yesterday's calls still count. After 06:00 the calls of that hour count
    toward today too. A count from here is never lower than Marketo's, on either reading.
    """
    return min(_midnights(now, zone)[0] for zone in _readings())


def quota_day_rolls(now: dt.datetime) -> dt.datetime:
    """The next moment ``quota_day_start`` moves on, and a count from it may fall (UTC)."""
    bounds = [_midnights(now, zone) for zone in _readings()]
    start = min(last for last, _ in bounds)
    # Readings that began the day together must all have moved on before it does.
    return max(following for last, following in bounds if last == start)


def counts_toward_quota(endpoint: str, outcome: str, *, sent: bool = True) -> bool:
    """Whether one exchange may have spent a call of the instance's daily quota.

    Identity calls, requests that never left, and the answers Adobe exempts
    (``D.QUOTA_EXEMPT_CODES``) do not. Everything else does: Marketo's refusals
    (606, 607, 615, 603, 1016), HTTP errors and lost replies alike. Whether those
    count is not documented, and counting one too many can only pause us early.
    """
    return sent and endpoint != "identity" and outcome not in D.QUOTA_EXEMPT_CODES


def reserve_reached(used: int, *, quota: int, reserve: int) -> bool:
    """Whether new imports wait: ``used`` calls of the day's ``quota`` leave ``reserve`` or fewer (0: never)."""
    return reserve > 0 and quota - used <= reserve


@dataclass(frozen=True, slots=True)
class QuotaToday:
    """The instance's daily quota as far as we know it, at one moment."""

    ours: int  # our calls since the quota day began
    instance: int | None  # every integration's, as usage.json last said (None: unknown)
    used: int  # the calls known spent (``DailyCalls.used``)
    rolls_at: dt.datetime  # when the count may next fall (``quota_day_rolls``)


class DailyCalls:
    """Our calls per quota day, and the instance's calls today as usage.json last told them.

    Calls are kept per UTC hour for two days: both readings of Marketo's midnight
    fall on a whole UTC hour, so a count since either is exact, and memory stays
    flat however many calls a day brings.
    """

    def __init__(self) -> None:
        self._hours: dict[int, int] = {}
        #: Every call ever recorded: our calls between two instants, whatever the day.
        self.total = 0
        self._usage: tuple[int, dt.datetime, int] | None = None  # (instance total, taken at, self.total then)

    def record(self, now: dt.datetime) -> None:
        hour = _hour(now)
        self._hours[hour] = self._hours.get(hour, 0) + 1
        self.total += 1
        if len(self._hours) > 49:
            for old in [h for h in self._hours if h < hour - 48]:
                del self._hours[old]

    def ours(self, now: dt.datetime) -> int:
        """Our calls of the quota day holding ``now`` (``quota_day_start``)."""
        start = _hour(quota_day_start(now))
        return sum(n for hour, n in self._hours.items() if hour >= start)

    def observe_usage(self, instance_total: int, *, taken_at: dt.datetime, ours_then: int) -> None:
        """usage.json said ``instance_total`` calls today; ``ours_then`` is ``total`` before it was asked."""
        self._usage = (instance_total, taken_at, ours_then)

    def instance(self, now: dt.datetime) -> int | None:
        """The instance's calls today as last answered; None once that answer may be of another day."""
        if self._usage is None or self._usage[1] < quota_day_start(now):
            return None
        return self._usage[0]

    def used(self, now: dt.datetime) -> int:
        """The calls of today's quota known to be spent: ours, or the instance's last total plus our calls
        since it was asked (Marketo's count has grown by at least those), whichever is more."""
        ours = self.ours(now)
        instance = self.instance(now)
        if instance is None or self._usage is None:
            return ours
        return max(ours, instance + max(0, self.total - self._usage[2]))


    def today(self, now: dt.datetime) -> QuotaToday:
        return QuotaToday(self.ours(now), self.instance(now), self.used(now), quota_day_rolls(now))


def _hour(now: dt.datetime) -> int:
    return int(now.timestamp()) // 3600


def next_quota_reset(now: dt.datetime) -> dt.datetime:
    """The next midnight in US Central time after ``now`` (an aware datetime), as UTC."""
    zone = _marketo_zone()
    local = now.astimezone(zone)
    tomorrow = (local + dt.timedelta(days=1)).date()
    midnight = dt.datetime.combine(tomorrow, dt.time(0, 0), tzinfo=zone)
    return midnight.astimezone(dt.UTC)
