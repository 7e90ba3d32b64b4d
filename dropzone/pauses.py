"""One instance's pauses: Marketo said "not now", and until when each kind of call waits.

Owns the pause state of one dispatch stage and what each ``jobs.Pause``
does to it; how long is ``jobs.pause_seconds``'s decision (or a test's
quicker rule). A refusal of the integration itself, or of a route's
target, is told once and shown in ``/readyz`` until Marketo accepts again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from dropzone import health
from dropzone.errors import QuotaExceededError
from dropzone.jobs import Pause

log = structlog.get_logger("dropzone.dispatch")


@dataclass
class Pauses:
    """Until when each kind of call waits (monotonic seconds)."""

    submits_until: float = 0.0
    api_until: float = 0.0
    lists_until: dict[int, float] = field(default_factory=dict)
    targets_until: dict[str, float] = field(default_factory=dict)  # by serialised import target
    queue_full_streak: int = 0
    transient_streak: int = 0
    misconfigured: str | None = None  # why, while the integration itself is refused

    def submits_paused(self, now: float) -> bool:
        return now < max(self.submits_until, self.api_until)

    def apply(
        self,
        pause: Pause,
        error: BaseException,
        now: float,
        *,
        pause_for: Callable[..., float],
        metrics: health.InstanceMetrics,
        list_id: int | None = None,
        target_key: str | None = None,
    ) -> None:
        """Pause what ``pause`` says, for as long as ``pause_for`` decides."""
        resets_in = 0.0
        if isinstance(error, QuotaExceededError):
            resets_in = (error.resume_at - dt.datetime.now(dt.UTC)).total_seconds()
        if pause is Pause.QUEUE_FULL:
            self.queue_full_streak += 1
        if pause is Pause.SUBMITS:
            self.transient_streak += 1
        streak = self.queue_full_streak if pause is Pause.QUEUE_FULL else self.transient_streak
        asked = float(getattr(error, "retry_after", None) or 0.0)
        seconds = pause_for(pause, streak=streak, quota_resets_in=resets_in, asked=asked)
        match pause:
            case Pause.WAIT:
                # Routine under load (the rate window is full): not worth a warning.
                self.api_until = max(self.api_until, now + seconds)
                log.debug("marketo_wait", seconds=round(seconds, 2))
                return
            case Pause.LIST:
                if list_id is not None:
                    self.lists_until[list_id] = now + seconds
            case Pause.API:
                self.api_until = now + seconds
            case Pause.TARGET if target_key is not None:
                self.targets_until[target_key] = now + seconds
                self._refused(error, seconds, metrics)
            case Pause.MISCONFIGURED:
                self.submits_until = now + seconds
                self._refused(error, seconds, metrics)
            case _:
                self.submits_until = now + seconds
        code = getattr(error, "code", None)
        log.warning("marketo_pause", pause=pause.value, code=code, error=str(error), seconds=round(seconds, 1))

    def accepted(self, metrics: health.InstanceMetrics) -> None:
        """Marketo took an import: the streaks end, a refusal is over."""
        self.queue_full_streak = self.transient_streak = 0
        if self.misconfigured is not None:
            log.info("marketo_accepts_this_integration_again")
            self.misconfigured = None
            metrics.set_misconfigured(None)

    def _refused(self, error: BaseException, seconds: float, metrics: health.InstanceMetrics) -> None:
        if self.misconfigured is None:
            log.error("marketo_refuses_this_integration", error=str(error), retry_in_s=seconds)
        self.misconfigured = str(error)
        metrics.set_misconfigured(str(error))


__all__ = ["Pauses"]
