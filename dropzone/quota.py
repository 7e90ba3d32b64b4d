"""The daily quota of one Marketo instance: when to ask usage.json, and whether new imports wait.

Marketo's daily quota (typically 50,000 calls, reset at midnight US Central)
is the whole instance's, shared with every integration of the customer's. The
client counts our calls and keeps what ``/rest/v1/stats/usage.json`` last said
(``MarketoClient.quota_today``). ``QuotaGuard`` decides, for the instance's
dispatch stage:

* when to ask usage.json again: at most every ``every`` seconds, one call at a
  time, and only while chunks wait to be sent (an idle daemon spends nothing);
  never again once it was refused with 603 (the API user may not read usage:
  our own count is then all we know, and it is said once in the log);
* whether new imports wait: when the calls known spent today leave
  ``daily_reserve`` or fewer of ``daily_quota`` (``throttle.reserve_reached``),
  until the count falls at the reset. Polls and fetches of imports already
  sent are not held: they finish what is open, a few calls each, and a file
  half sent would otherwise wait a day for its last chunk's results.

The pause is told once in the log, shown in /readyz (``marketo_quota``, never
failing: it is deliberate) and in /metrics with the day's counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from dropzone import defaults as D
from dropzone import health, throttle
from dropzone.errors import MisconfiguredError, WouldWaitError
from dropzone.instances import MarketoSettings
from dropzone.throttle import QuotaToday

log = structlog.get_logger("dropzone.quota")

#: Marketo's "Access denied": the API user's role may not read usage (or the IP allow-list refuses it).
_DENIED = "603"


@dataclass
class QuotaGuard:
    """One instance's daily-quota pause and usage.json schedule (monotonic seconds)."""

    every: float = D.USAGE_REFRESH_S
    retry: float = D.USAGE_RETRY_S
    #: usage.json answered 603: our own count only until it is asked again, an hour later (a 603 may
    #: be a passing IP allow-list refusal, not a role without the permission).
    denied: bool = False
    #: A usage.json call is running.
    asking: bool = False
    #: Whether any usage.json call has ended (answered or failed): until then new imports wait for it.
    _tried: bool = False
    _next_at: float = 0.0
    _paused: bool = False
    #: When the first usage.json call started (None: not yet).
    _first_asked_at: float | None = None

    def due(self, now: float) -> bool:
        return not self.asking and now >= self._next_at

    def started(self, now: float) -> None:
        self.asking = True
        if self._first_asked_at is None:
            self._first_asked_at = now

    def answered(self, error: Exception | None, now: float) -> None:
        """The usage.json call ended: ``error`` is what it raised (None: the client keeps the count)."""
        self.asking, self._tried = False, True
        if error is None:
            self._next_at = now + self.every
            if self.denied:
                log.info("usage_permitted_again")
            self.denied = False
            return
        if isinstance(error, MisconfiguredError) and error.code == _DENIED:
            self._next_at = now + D.USAGE_DENIED_RETRY_S
            if not self.denied:
                log.warning("usage_not_permitted_counting_our_calls_only", error=str(error),
                            asked_again_in_s=D.USAGE_DENIED_RETRY_S)
            self.denied = True
            return
        asked = error.retry_after if isinstance(error, WouldWaitError) else 0.0
        self._next_at = now + max(self.retry, asked)
        log.info("usage_unavailable_will_retry", error=str(error) or type(error).__name__,
                 retry_in_s=round(self._next_at - now, 1))

    def holds(self, today: QuotaToday, settings: MarketoSettings, metrics: health.InstanceMetrics, now: float) -> bool:
        """Whether new imports wait now: for the daily quota's reset, or a moment for the first usage.json answer."""
        paused = throttle.reserve_reached(today.used, quota=settings.daily_quota, reserve=settings.daily_reserve)
        why = _why(today, settings) if paused else None
        if paused and not self._paused:
            log.warning(
                "daily_quota_reserve_reached_pausing_new_imports", used=today.used, ours=today.ours,
                instance=today.instance, daily_quota=settings.daily_quota, daily_reserve=settings.daily_reserve,
                next_reset=today.rolls_at.isoformat(),
            )
        elif self._paused and not paused:
            log.info("daily_quota_pause_over", used=today.used, ours=today.ours, instance=today.instance)
        self._paused = paused
        metrics.set_quota(ours=today.ours, instance=today.instance, paused=why)
        # Before the first answer, the other integrations' calls are unknown: a moment's wait, not a pause.
        first = self._first_asked_at
        return paused or (self.asking and not self._tried and first is not None and now < first + D.USAGE_FIRST_WAIT_S)


def _why(today: QuotaToday, settings: MarketoSettings) -> str:
    seen = "ours" if today.instance is None else f"ours {today.ours}, the instance's {today.instance} at usage.json"
    return (
        f"new imports wait for the daily quota's reset (next at {today.rolls_at:%Y-%m-%d %H:%M} UTC): "
        f"{today.used} of {settings.daily_quota} calls spent today ({seen}); daily_reserve keeps "
        f"{settings.daily_reserve} for the other integrations. Open imports still finish."
    )


__all__ = ["QuotaGuard"]
