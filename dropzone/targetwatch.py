"""The daemon's target checks: at start-up, on reload and hourly, each instance on its own threads.

A wrong target (a deleted static list, a status the program's channel lacks, a partition that does
not exist) would turn every file of its route into a failed import. So while Marketo says a
target is wrong, the route's files are **held**: kept claimed, neither submitted nor rejected
(``held``); ``/readyz`` is not ready, naming the key, and the log says it once. Fixing the
configuration (a reload) or Marketo (the next check) releases them. A check that cannot be
answered (no answer, 603) holds nothing and warns once; a target Marketo called wrong stays held
until an answer says otherwise. Until the first answer after start-up or a reload, a route's files
wait for it, at most ``first_wait`` seconds (``waiting``).

The checks (``targetcheck.check``) run on the instance's executor with its own client; only the
loop's thread calls in here.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import structlog

from dropzone import calls, health, targetcheck
from dropzone import defaults as D
from dropzone.calls import Attempt
from dropzone.config import Config
from dropzone.schemas import Stage
from dropzone.targetcheck import Finding, Need
from dropzone.targets import ImportTarget

log = structlog.get_logger("dropzone.targetwatch")


@dataclass
class _Instance:
    needs: list[Need]
    configured_at: float
    next_at: float
    answered: bool = False
    future: Future[Attempt[list[Finding]]] | None = None
    said: set[str] = field(default_factory=set)  # unanswered checks already warned about


class TargetWatch:
    """Checks every route's import target against its instance, and holds the routes Marketo says are wrong.

    Args:
        stage: an instance's stage by name (its client and executor), None when it has none.
        metrics: readiness (``Metrics.set_wrong_targets``).
        wake: called from a check's thread when it ends.
    """

    def __init__(
        self,
        stage: Callable[[str], Stage | None],
        metrics: health.Metrics,
        *,
        wake: Callable[[], None] = lambda: None,
        interval: float = D.TARGET_CHECK_INTERVAL_S,
        retry: float = D.TARGET_RETRY_S,
        first_wait: float = D.TARGET_FIRST_WAIT_S,
    ) -> None:
        self._stage, self._metrics, self._wake = stage, metrics, wake
        self.interval, self.retry, self.first_wait = interval, retry, first_wait
        self._instances: dict[str, _Instance] = {}
        #: What Marketo last said is wrong, by need.
        self._wrong: dict[Need, str] = {}

    def configure(self, config: Config, now: float) -> None:
        """Start-up or reload: check every instance's targets now; forget those no longer configured."""
        wanted = targetcheck.needs_of(config)
        for name in [n for n in self._instances if n not in wanted]:
            del self._instances[name]
        for name, needs in wanted.items():
            current = self._instances.get(name)
            if current is None or current.needs != needs:
                self._instances[name] = _Instance(needs, configured_at=now, next_at=now)
            else:
                current.next_at = now  # the same targets: asked again, files not held back meanwhile
        every = {need for state in self._instances.values() for need in state.needs}
        for need in [n for n in self._wrong if n not in every]:
            log.info("import_target_no_longer_configured", problem=self._wrong.pop(need))
        self._publish()

    def held(self, target: ImportTarget) -> str | None:
        """Why files of ``target`` are held (Marketo says the target is wrong), or None."""
        return next((problem for need, problem in self._wrong.items() if need.target == target), None)

    def waiting(self, target: ImportTarget, now: float) -> bool:
        """Whether files of ``target`` wait for the first answer about it (bounded by ``first_wait``)."""
        state = self._instances.get(target.instance)
        if state is None or state.answered or now >= state.configured_at + self.first_wait:
            return False
        return any(need.target == target for need in state.needs)

    def run_once(self, now: float) -> bool:
        """Collect finished checks (True when one was) and start those due."""
        busy = False
        for name, state in self._instances.items():
            busy |= self._collect(name, state, now)
            if state.future is None and state.needs and now >= state.next_at:
                stage = self._stage(name)
                if stage is None:
                    continue
                state.future = calls.start(stage.calls, partial(targetcheck.check, stage.client, list(state.needs)))
                state.future.add_done_callback(lambda _f: self._wake())
                state.next_at = now + self.interval
                self._collect(name, state, now)  # an inline executor has answered already
        return busy

    def _collect(self, name: str, state: _Instance, now: float) -> bool:
        future = state.future
        if future is None or not future.done():
            return False
        state.future = None
        self._apply(name, state, future, now)
        return True

    def _apply(self, name: str, state: _Instance, future: Future[Attempt[list[Finding]]], now: float) -> None:
        attempt = future.result()  # Interrupted (a shutdown) is raised here, on the loop's thread
        if attempt.error is not None or attempt.value is None:
            log.error("target_check_failed_internal_error", instance=name, error=repr(attempt.error))
            state.next_at = now + self.retry
            return
        state.answered = True
        passing = False
        for finding in attempt.value:
            need = finding.need
            if finding.wrong is not None:
                if self._wrong.get(need) != finding.wrong:
                    log.error("import_target_wrong_files_held", problem=finding.wrong)
                self._wrong[need] = finding.wrong
            elif finding.unknown is None and need in self._wrong:
                log.info("import_target_fixed_files_released", was=self._wrong.pop(need))
            passing |= finding.passing
        said = set(targetcheck.unknowns(attempt.value))
        for text in said - state.said:
            log.warning("import_target_not_checked", instance=name, problem=text)
        state.said = said
        state.next_at = now + (self.retry if passing else self.interval)
        self._publish()

    def _publish(self) -> None:
        self._metrics.set_wrong_targets(sorted(set(self._wrong.values())))


__all__ = ["TargetWatch"]
