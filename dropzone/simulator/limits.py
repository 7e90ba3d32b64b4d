"""Call limits of one subscription (pure; time is passed in).

Owns the sliding rate window (606), the daily quota (607, and the day's count
that usage.json reports) and the count of in-flight calls (615). Which calls
count is decided by the caller.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections import deque

# Marketo resets the daily quota at 12:00 AM CST (UTC-6, no daylight saving).
_CST_OFFSET = -6 * 3600


class RateWindow:
    """At most ``limit`` counted calls in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def admit(self, now: float) -> bool:
        """Count a call at ``now`` if the window has room; False means 606."""
        self._prune(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def refund(self, at: float) -> None:
        """Forget a call counted at ``at`` (a later limit refused it)."""
        with contextlib.suppress(ValueError):
            self._times.remove(at)

    def used(self, now: float) -> int:
        self._prune(now)
        return len(self._times)

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()


class DailyQuota:
    """At most ``limit`` counted calls per CST day; ``None`` means unlimited.

    Every call admitted is counted, by API user, whether or not there is a limit:
    usage.json reports the day's count, every integration's.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._day = -1
        self.used = 0
        self.by_user: dict[str, int] = {}

    def admit(self, now: float, user: str = "") -> bool:
        self._roll(now)
        if self.limit is not None and self.used >= self.limit:
            return False
        self.count(now, user)
        return True

    def count(self, now: float, user: str, n: int = 1) -> None:
        """Count ``n`` calls of ``user`` without asking the limit (other integrations' calls)."""
        self._roll(now)
        self.used += n
        self.by_user[user] = self.by_user.get(user, 0) + n

    def today(self, now: float) -> tuple[str, int, dict[str, int]]:
        """The CST date (YYYY-MM-DD), the day's count and its split by API user."""
        self._roll(now)
        date = dt.date(1970, 1, 1) + dt.timedelta(days=self._day)
        return date.isoformat(), self.used, dict(self.by_user)

    def _roll(self, now: float) -> None:
        day = math.floor((now + _CST_OFFSET) / 86400)
        if day != self._day:
            self._day, self.used, self.by_user = day, 0, {}


class InFlight:
    """API calls being served right now; the one past ``limit`` is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        """Always counts the call (it holds a connection); False means answer 615."""
        self.count += 1
        return self.count <= self.limit

    def leave(self) -> None:
        self.count -= 1
