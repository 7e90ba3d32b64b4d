"""Dispatch: send pending chunks within Marketo's queue, poll their batches, fetch the result files.

One ``Dispatch`` per Marketo instance: its own client (token, rate window,
concurrency), queue admission and pauses, over the chunks the journal gives
its instance, so trouble on one instance never slows another. Each pass
(``run_once``):

* **collect**: the calls that finished since the last pass have their
  results applied to the journal (``jobs.after_submit``, ``after_poll``,
  ``after_fetch`` decide what each means);
* **admission and submit**: pending chunks go to Marketo while fewer than
  ``max_open_imports`` of ours are open, one open import per static list,
  round-robin across inboxes (``jobs.pick_next``);
* **poll**: the batches Marketo can be finishing, around the finish the
  instance's ``polling.Predictor`` expects from the batches it saw before;
* **fetch**: the failure and warning files of finished batches, into the
  work area.

Calls run on ``calls`` (``calls.py``): the daemon gives each instance a few
threads, so a slow upload or a sick instance never holds the loop; tests
run them inline. Only the loop's thread writes the journal: a chunk is
``submitting`` before its upload is handed over, the batchId is saved when
the answer is collected. One chunk's trouble is that chunk's.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from dropzone import calls as calls_module
from dropzone import health, jobs, polling
from dropzone.calls import Attempt, Downloaded, Inline
from dropzone.defaults import MARKETO_MAX_OPEN_IMPORTS
from dropzone.errors import Interrupted, MarketoError, QuotaExceededError, StoreError, WouldWaitError
from dropzone.instances import MarketoSettings
from dropzone.jobs import ChunkAction, ChunkState, FileState, Pause, PollAction
from dropzone.marketo import BatchStatus, MarketoClient
from dropzone.store import ChunkRow, Counts, FileRow, Store

log = structlog.get_logger("dropzone.dispatch")

#: States in which a chunk's bytes may be at Marketo and its batch is not finished with.
SENT = (ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING)
#: Pending chunks a submit pass looks at per inbox and import target: more than it can send in a
#: pass (one per free slot, one per list), with room for chunks held back after an unknown outcome.
PENDING_HEADS = 4 * MARKETO_MAX_OPEN_IMPORTS


@dataclass
class _Poll:
    """What the predictor needs to know of one open batch (monotonic times)."""

    batch_id: int
    due: float
    last_polled: float
    rows: int
    submitted_at: float
    polls: int = 0  # polls that found it unfinished
    head_at: float | None = None  # when an import slot freed for it (None: at the head when submitted)
    started_at: float | None = None  # the first poll that saw it Importing
    last_open_at: float | None = None
    last_queued_at: float | None = None
    learn: bool = True  # False for a batch found in the journal: its times are not ours to learn from


@dataclass
class _Call:
    """A call handed to ``calls``; ``apply`` writes its result on the loop's thread."""

    future: Future[Attempt[Any]]
    apply: Callable[[Any, Exception | None, float], None]
    kind: str


@dataclass
class Pauses:
    """Marketo said "not now": until when each kind of call waits (monotonic seconds)."""

    submits_until: float = 0.0
    api_until: float = 0.0
    lists_until: dict[int, float] = field(default_factory=dict)
    targets_until: dict[str, float] = field(default_factory=dict)  # by serialised import target
    queue_full_streak: int = 0
    transient_streak: int = 0
    misconfigured: str | None = None  # why, while the integration itself is refused


@dataclass
class Dispatch:
    """The dispatch stage of one Marketo instance.

    Args:
        store: the journal.
        client: the instance's Marketo client (``replace_client`` on reload).
        settings: the instance's settings (name, queue size, poll interval, resubmit hold).
        metrics: the instance's batches, polls, readiness.
        heartbeat: called per item.
        wall: wall-clock seconds (resubmit holds survive restarts).
        calls: where calls run (``Inline``: in ``run_once`` itself).
        wake: called from a call's thread when it finishes, to end the loop's idle wait.
    """

    store: Store
    client: MarketoClient
    settings: MarketoSettings
    metrics: health.InstanceMetrics
    heartbeat: Callable[[], None] = lambda: None
    wall: Callable[[], float] = time.time
    calls: Executor = field(default_factory=Inline)
    wake: Callable[[], None] = lambda: None
    #: How long each pause lasts (tests pass a quicker one).
    pause_for: Callable[..., float] = jobs.pause_seconds
    pauses: Pauses = field(default_factory=Pauses)
    #: How long this instance's imports take, learnt from the batches it finished.
    predictor: polling.Predictor = field(default_factory=polling.Predictor)
    #: Removed from the configuration by a reload: finishes the batches it has open, sends nothing new.
    draining: bool = False
    _polls: dict[int, _Poll] = field(default_factory=dict)
    _running: dict[int, _Call] = field(default_factory=dict)  # by chunk id: one call per chunk at a time
    _old_clients: list[MarketoClient] = field(default_factory=list)
    #: Journal writes a brief journal error kept from being made, in order: made before anything else.
    _unsaved: list[Callable[[], None]] = field(default_factory=list)
    _last_inbox: str | None = None
    #: (journal changes, settings, until when) as of a submit pass that found nothing to send.
    _idle_mark: tuple[int, MarketoSettings, float] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def run_once(self, now: float) -> bool:
        if not self._save_unsaved():
            return False  # the journal is still unavailable: nothing else until it takes our writes
        busy = self._collect(now)
        if not self.draining:
            busy |= self._submit(now)
        busy |= self._poll(now)
        busy |= self._fetch(now)
        return busy

    def _save_unsaved(self) -> bool:
        while self._unsaved:
            try:
                self._unsaved[0]()
            except (sqlite3.Error, StoreError) as exc:
                log.error("journal_write_failed_will_retry", error=str(exc))
                return False
            self._unsaved.pop(0)
        return True

    # ---- calls ------------------------------------------------------------------

    def _start(self, chunk_id: int, kind: str, call: Callable[[], Any], apply: Callable[..., None], now: float) -> None:
        future = calls_module.start(self.calls, call)
        self._running[chunk_id] = _Call(future, apply, kind)
        future.add_done_callback(lambda _f: self.wake())
        if future.done():
            self._finish(chunk_id, now)  # inline: applied in this pass, as if the call were ours

    def _collect(self, now: float) -> bool:
        finished = [chunk_id for chunk_id, call in self._running.items() if call.future.done()]
        for chunk_id in finished:
            self._finish(chunk_id, now)
        if not self._running:
            while self._old_clients:
                self._old_clients.pop().close()
        return bool(finished)

    def _finish(self, chunk_id: int, now: float) -> None:
        call = self._running.pop(chunk_id)
        attempt = call.future.result()  # Interrupted (shutdown) is raised here, on the loop's thread
        try:
            call.apply(attempt.value, attempt.error, now)
        except (sqlite3.Error, StoreError) as exc:
            # The journal is briefly unavailable: keep what must be written and write it first next pass.
            log.error("journal_write_failed_will_retry", error=str(exc))
            self._unsaved.append(partial(call.apply, attempt.value, attempt.error, now))

    def _count(self, kind: str) -> int:
        return sum(1 for call in self._running.values() if call.kind == kind)

    def replace_client(self, client: MarketoClient, settings: MarketoSettings) -> None:
        """New settings (a reload): calls still running finish on the old client, closed after them."""
        self._old_clients.append(self.client)
        self.client, self.settings = client, settings

    def close(self) -> None:
        """Wait for running calls (a shutdown interrupts them within a second), close the clients."""
        self.calls.shutdown(wait=True, cancel_futures=True)
        for client in [self.client, *self._old_clients]:
            client.close()

    # ---- recovery -------------------------------------------------------------

    def recover(self, now: float) -> None:
        """Put chunks a crash interrupted back on their way (``jobs.recovery_action``)."""
        for chunk in self.store.chunks(SENT, instance=self.name):
            match jobs.recovery_action(chunk.state):
                case jobs.RecoveryAction.RESUBMIT:
                    why = "dropzone stopped between the upload and its answer"
                    self.store.requeue(chunk.id, unknown=why, not_before=self.wall() + self._hold(chunk))
                    log.warning("chunk_resubmitting_after_crash", file_id=chunk.file_id, chunk=chunk.index)
                case jobs.RecoveryAction.POLL:
                    self._polls[chunk.id] = _lost_poll(chunk, now)
                case jobs.RecoveryAction.FETCH | jobs.RecoveryAction.NONE:
                    pass  # fetching chunks are picked up by the fetch step as they are

    def _hold(self, chunk: ChunkRow) -> float:
        return jobs.resubmit_hold(chunk.size, least=self.settings.resubmit_hold)

    # ---- introspection ----------------------------------------------------------

    def open_batches(self) -> int:
        return len(self._polls)

    def has_open(self) -> bool:
        """Whether any chunk of this instance is sent and not finished (a draining stage is done without)."""
        return bool(self._running) or self.store.count_chunks(SENT, instance=self.name) > 0

    def next_due(self) -> float | None:
        """When a poll is next due (monotonic), for the loop's idle wait; never inside a pause."""
        due = jobs.next_poll_at(
            jobs.PollPlan(c, p.batch_id, p.due, p.last_polled) for c, p in self._polls.items() if c not in self._running
        )
        return None if due is None else max(due, self.pauses.api_until)

    # ---- submit -----------------------------------------------------------------

    def _submit(self, now: float) -> bool:
        if self._submits_paused(now):
            return False
        # Leave a thread for polls: an upload may take minutes.
        most = max(1, self.settings.max_concurrent_calls - 1)
        if self._count("submit") >= most or self._nothing_new(now):
            return False
        open_chunks = self.store.chunks(jobs.CHUNK_OPEN, instance=self.name)
        pending = [] if len(open_chunks) >= self.settings.max_open_imports else [
            c for c in self.store.pending_heads(self.name, per_route=PENDING_HEADS) if c.id not in self._running
        ]
        if not pending:
            self._found_nothing(now, pending)
            return False
        wall = self.wall()
        files = {
            row.id: row
            for row in self.store.files_with_ids({c.file_id for c in [*pending, *open_chunks]}, [FileState.SPLIT])
        }
        busy_lists = {self._list_of(files.get(c.file_id)) for c in open_chunks}
        busy_lists |= {lid for lid, until in self.pauses.lists_until.items() if until > now}
        candidates = [
            jobs.Candidate(
                chunk_id=c.id,
                inbox=str(files[c.file_id].inbox),
                file_id=c.file_id,
                index=c.index,
                list_id=self._list_of(files[c.file_id]),
            )
            for c in pending
            if c.file_id in files
            and (c.not_before is None or c.not_before <= wall)
            and self.pauses.targets_until.get(self._target_key(files[c.file_id]), 0.0) <= now
        ]
        busy = False
        n_open = len(open_chunks)
        while candidates and self._count("submit") < most and not self._submits_paused(now):
            slots = jobs.Slots(
                open=n_open,
                max_open=self.settings.max_open_imports,
                busy_lists=frozenset(x for x in busy_lists if x is not None),
                last_inbox=self._last_inbox,
            )
            pick = jobs.pick_next(candidates, slots)
            if pick is None:
                break
            candidates.remove(pick)
            self._last_inbox = pick.inbox
            busy = True
            self.heartbeat()
            row = files[pick.file_id]
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=pick.index):
                if self._submit_one(self.store.chunk(pick.chunk_id), row, now):
                    n_open += 1  # submitting counts as open until its answer says otherwise
                    if pick.list_id is not None:
                        busy_lists.add(pick.list_id)
        if not busy:
            self._found_nothing(now, pending)
        return busy

    def _nothing_new(self, now: float) -> bool:
        """The last look found nothing to send, and neither the journal nor a hold has changed since."""
        mark = self._idle_mark
        return mark is not None and mark[:2] == (self.store.changes, self.settings) and now < mark[2]

    def _found_nothing(self, now: float, pending: list[ChunkRow]) -> None:
        """Nothing could be sent: skip the journal's queries until it changes or a hold ends."""
        wall = self.wall()
        ends = [t for t in (*self.pauses.lists_until.values(), *self.pauses.targets_until.values()) if t > now]
        ends += [now + c.not_before - wall for c in pending if c.not_before is not None and c.not_before > wall]
        self._idle_mark = (self.store.changes, self.settings, min(ends, default=math.inf))

    def _submits_paused(self, now: float) -> bool:
        return now < max(self.pauses.submits_until, self.pauses.api_until)

    @staticmethod
    def _target_key(row: FileRow) -> str:
        return row.target.to_json() if row.target is not None else ""

    @staticmethod
    def _list_of(row: FileRow | None) -> int | None:
        return row.target.list_id if row is not None and row.target is not None else None

    def _submit_one(self, chunk: ChunkRow, row: FileRow, now: float) -> bool:
        """Hand the chunk's upload over; False when it was not (nothing to send, or the journal failed)."""
        if row.target is None or row.fmt is None:
            self.store.fail_chunk(chunk.id, "the journal lost this chunk's import target; please report this")
            return False
        try:
            # Saved before the bytes can leave: a crash from here on is the one ambiguous window.
            self.store.mark_submitting(chunk.id, endpoint=self.settings.subscription)
        except (sqlite3.Error, StoreError) as exc:
            log.error("journal_write_failed_will_retry", error=str(exc))
            self._pause(Pause.SUBMITS, exc, row, now)
            return False
        call = partial(self.client.submit, row.target, chunk.path, fmt=row.fmt, retry_for=0.0)
        self._start(chunk.id, "submit", call, partial(self._submitted, chunk, row), now)
        return True

    def _submitted(self, chunk: ChunkRow, row: FileRow, batch: BatchStatus | None, error: Exception | None,
                   now: float) -> None:
        decision = jobs.after_submit(error)
        with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=chunk.index):
            self._apply_submit(decision, chunk, batch, error, now)
            if decision.pause is not Pause.NONE and error is not None:
                self._pause(decision.pause, error, row, now)

    def _apply_submit(
        self, decision: jobs.SubmitDecision, chunk: ChunkRow, batch: BatchStatus | None, error: Exception | None,
        now: float,
    ) -> None:
        match decision.action:
            case ChunkAction.RECORD_BATCH if batch is not None:
                self.pauses.queue_full_streak = self.pauses.transient_streak = 0
                self.store.record_batch(chunk.id, batch_id=batch.batch_id, status=batch.status)
                ahead = self._ahead(batch.batch_id)
                head_at = now if len(ahead) < self.predictor.slots else None
                due = self.predictor.first_poll(now, chunk.rows, ahead, poll_interval=self.settings.poll_interval)
                self._polls[chunk.id] = _Poll(
                    batch_id=batch.batch_id, due=due, last_polled=now, rows=chunk.rows, submitted_at=now,
                    head_at=head_at,
                )
                self._cleared_misconfiguration()
                log.info("import_submitted", batchId=batch.batch_id, rows=chunk.rows, bytes=chunk.size)
            case ChunkAction.REQUEUE_UNKNOWN:
                why = getattr(error, "reason", None) or str(error)
                hold = self._hold(chunk)
                self.store.requeue(chunk.id, unknown=why, not_before=self.wall() + hold)
                log.warning("submit_outcome_unknown", error=str(error), hold_s=round(hold))
            case ChunkAction.REQUEUE:
                if self.store.chunk(chunk.id).state is not ChunkState.PENDING:
                    self.store.requeue(chunk.id)
            case ChunkAction.FAIL:
                message = str(error) if not isinstance(error, OSError) else (
                    f"chunk {chunk.index} could not be read from the work area: {error.strerror or error}"
                )
                if self.store.chunk(chunk.id).state in (ChunkState.SUBMITTING, ChunkState.PENDING):
                    self.store.fail_chunk(chunk.id, message or type(error).__name__)
                if not isinstance(error, MarketoError):
                    log.error("submit_failed_internal_error", error=repr(error))
                else:
                    log.warning("submit_rejected", code=error.code, error=str(error))

    def _pause(self, pause: Pause, error: BaseException, row: FileRow | None, now: float) -> None:
        resets_in = 0.0
        if isinstance(error, QuotaExceededError):
            resets_in = (error.resume_at - dt.datetime.now(dt.UTC)).total_seconds()
        if pause is Pause.QUEUE_FULL:
            self.pauses.queue_full_streak += 1
        if pause is Pause.SUBMITS:
            self.pauses.transient_streak += 1
        streak = self.pauses.queue_full_streak if pause is Pause.QUEUE_FULL else self.pauses.transient_streak
        asked = float(getattr(error, "retry_after", None) or 0.0)
        seconds = self.pause_for(pause, streak=streak, quota_resets_in=resets_in, asked=asked)
        match pause:
            case Pause.WAIT:
                # Routine under load (the rate window is full): not worth a warning.
                self.pauses.api_until = max(self.pauses.api_until, now + seconds)
                log.debug("marketo_wait", seconds=round(seconds, 2))
                return
            case Pause.LIST:
                list_id = self._list_of(row)
                if list_id is not None:
                    self.pauses.lists_until[list_id] = now + seconds
            case Pause.API:
                self.pauses.api_until = now + seconds
            case Pause.TARGET if row is not None:
                self.pauses.targets_until[self._target_key(row)] = now + seconds
                self._refused(error, seconds)
            case Pause.MISCONFIGURED:
                self.pauses.submits_until = now + seconds
                self._refused(error, seconds)
            case _:
                self.pauses.submits_until = now + seconds
        code = getattr(error, "code", None)
        log.warning("marketo_pause", pause=pause.value, code=code, error=str(error), seconds=round(seconds, 1))

    def _refused(self, error: BaseException, seconds: float) -> None:
        """Marketo refuses the integration (or a route's target): told once, shown in /readyz."""
        if self.pauses.misconfigured is None:
            log.error("marketo_refuses_this_integration", error=str(error), retry_in_s=seconds)
        self.pauses.misconfigured = str(error)
        self.metrics.set_misconfigured(str(error))

    def _cleared_misconfiguration(self) -> None:
        if self.pauses.misconfigured is not None:
            log.info("marketo_accepts_this_integration_again")
            self.pauses.misconfigured = None
            self.metrics.set_misconfigured(None)

    # ---- poll -------------------------------------------------------------------

    def _poll(self, now: float) -> bool:
        if now < self.pauses.api_until:
            return False
        if len(self._polls) < self.store.count_chunks([ChunkState.SUBMITTED], instance=self.name):
            # A batch the journal has and this stage lost (an interrupted step, a renamed instance).
            for chunk in self.store.chunks([ChunkState.SUBMITTED], instance=self.name):
                self._polls.setdefault(chunk.id, _lost_poll(chunk, now))
        busy = False
        plans = [
            jobs.PollPlan(cid, p.batch_id, p.due, p.last_polled) for cid, p in self._polls.items()
            if cid not in self._running
        ]
        for chunk_id in jobs.polls_due(plans, now):
            if now < self.pauses.api_until:
                break  # the instance asked to wait (``WouldWaitError``): the other polls too
            self._polls[chunk_id].last_polled = now
            chunk = self.store.chunk(chunk_id)
            if chunk.state is not ChunkState.SUBMITTED or chunk.instance != self.name or chunk.batch_id is None:
                self._polls.pop(chunk_id, None)
                continue
            row = self.store.file(chunk.file_id)
            busy = True
            self.heartbeat()
            if row.target is None:
                self.store.fail_chunk(chunk.id, "the journal lost this chunk's import target; please report this")
                self._polls.pop(chunk_id, None)
                continue
            with structlog.contextvars.bound_contextvars(
                inbox=str(row.inbox), file=row.relpath, chunk=chunk.index, batchId=chunk.batch_id
            ):
                # No retries inside the call: the poll schedule retries.
                call = partial(self.client.status, row.target, chunk.batch_id, retry_for=0.0)
                self._start(chunk.id, "poll", call, partial(self._polled, chunk, row), now)
        return busy

    def _polled(self, chunk: ChunkRow, row: FileRow, status: BatchStatus | None, error: Exception | None,
                now: float) -> None:
        poll = self._polls.get(chunk.id)
        if poll is None or self.store.chunk(chunk.id).state is not ChunkState.SUBMITTED:
            return  # finished or failed meanwhile (a reload moved it)
        action = jobs.after_poll(error, finished=status is not None and status.is_finished)
        with structlog.contextvars.bound_contextvars(
            inbox=str(row.inbox), file=row.relpath, chunk=chunk.index, batchId=chunk.batch_id
        ):
            match action:
                case PollAction.WAIT if status is not None:
                    self.metrics.poll_succeeded()
                    self.store.record_progress(chunk.id, status=status.status, counts=_counts(status))
                    self._still_open(poll, status.status, now)
                case PollAction.FINISHED if status is not None:
                    self.metrics.poll_succeeded()
                    # Forgotten only once the journal has it: a journal error leaves it polled again.
                    self.store.finish_batch(
                        chunk.id, status=status.status, message=status.message, counts=_counts(status)
                    )
                    self._polls.pop(chunk.id, None)
                    freed = now
                    if status.status == "Complete" and poll.learn:  # a Failed batch may stop early
                        freed = self.predictor.observe(
                            poll.rows, poll.submitted_at, poll.started_at, now, head_at=poll.head_at,
                            last_open_at=poll.last_open_at, last_queued_at=poll.last_queued_at,
                        )
                    self._replan(now, freed)
                    log.info("import_finished", status=status.status, processed=status.processed,
                             failed=status.failed)
                case PollAction.GONE:
                    self.store.fail_chunk(chunk.id, f"Marketo no longer knows batch {chunk.batch_id}: {error}")
                    self._polls.pop(chunk.id, None)
                    self._replan(now, now)
                    log.warning("batch_gone", error=str(error))
                case PollAction.PAUSE_API if error is not None:
                    poll.due = now + self.settings.poll_interval
                    self._pause(Pause.API, error, row, now)
                case PollAction.WAIT_INSTANCE if error is not None:
                    self._pause(Pause.WAIT, error, row, now)
                    poll.due = self.pauses.api_until
                case _:
                    retry_after = getattr(error, "retry_after", None)
                    poll.due = now + max(self.settings.poll_interval, float(retry_after or 0.0))
                    log.info("poll_retry_later", error=str(error) or type(error).__name__)

    def _ahead(self, batch_id: int) -> list[int]:
        """The rows of our open batches Marketo took before this one, oldest first (its FIFO)."""
        return [p.rows for p in sorted(self._polls.values(), key=lambda p: p.batch_id) if p.batch_id < batch_id]

    def _still_open(self, poll: _Poll, status: str, now: float) -> None:
        poll.polls += 1
        poll.last_open_at = now
        if status == polling.QUEUED:
            poll.last_queued_at = now
        elif poll.started_at is None:
            poll.started_at = now
        if poll.head_at is not None:
            self.predictor.observe_open(poll.rows, poll.head_at, now)
        poll.due = self.predictor.next_poll(
            now, submitted_at=poll.submitted_at, rows=poll.rows, polls_so_far=poll.polls, last_status=status,
            ahead=self._ahead(poll.batch_id), started_at=poll.started_at, head_at=poll.head_at,
            poll_interval=self.settings.poll_interval,
        )

    def _replan(self, now: float, freed: float) -> None:
        """A batch of ours finished: the next one in Marketo's queue has its slot (since ``freed``), and
        every batch not yet seen Importing is planned again around its new predicted finish."""
        ahead: list[int] = []
        for poll in sorted(self._polls.values(), key=lambda p: p.batch_id):
            if poll.head_at is None and len(ahead) < self.predictor.slots:
                poll.head_at = min(freed, poll.started_at or now)
                freed = now  # one slot freed: the next batch to reach the head counts from our look
            if poll.started_at is None:
                poll.due = self.predictor.first_poll(
                    now, poll.rows, ahead, head_at=poll.head_at, poll_interval=self.settings.poll_interval
                )
            ahead.append(poll.rows)

    # ---- fetch ------------------------------------------------------------------

    def _fetch(self, now: float) -> bool:
        if now < self.pauses.api_until:
            return False
        busy = False
        for chunk in self.store.chunks([ChunkState.FETCHING], instance=self.name):
            if now < self.pauses.api_until:
                break
            if chunk.id in self._running:
                continue
            busy = True
            self.heartbeat()
            row = self.store.file(chunk.file_id)
            if row.target is None or row.fmt is None:
                self.store.store_results(chunk.id, failures=None, warnings=None)
                continue
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=chunk.index):
                call = partial(
                    calls_module.download_results, self.client, row.target, int(chunk.batch_id or 0), chunk.path,
                    row.fmt, failed=chunk.failed, warned=chunk.warned,
                )
                self._start(chunk.id, "fetch", call, partial(self._fetched, chunk, row), now)
        return busy

    def _fetched(self, chunk: ChunkRow, row: FileRow, got: Downloaded | None, error: Exception | None,
                 now: float) -> None:
        with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=chunk.index):
            if got is None or got.retry is not None:
                why = error or (got.retry if got is not None else None)
                if isinstance(why, WouldWaitError):
                    self._pause(Pause.WAIT, why, row, now)
                else:
                    # Tried again next pass (the file writes in the work area are idempotent).
                    log.info("result_file_retry_later", error=str(why) or type(why).__name__)
                return
            for kind, why_not in got.gave_up.items():
                log.warning("result_file_unavailable", kind=kind, error=why_not)
            self._store_results(chunk, row, got)

    def _store_results(self, chunk: ChunkRow, row: FileRow, got: Downloaded) -> None:
        counts = None
        unknown = chunk.processed is None or chunk.failed is None or chunk.warned is None
        if unknown and chunk.marketo_status == "Complete":
            failed = chunk.failed if chunk.failed is not None else got.rows["failures"]
            counts = Counts(
                processed=chunk.processed if chunk.processed is not None else max(chunk.rows - failed, 0),
                failed=failed,
                warned=chunk.warned if chunk.warned is not None else got.rows["warnings"],
            )
            self.store.add_note(
                row.id,
                f"Marketo's status for batch {chunk.batch_id} had no row counts; they were counted "
                "from its failure and warning files",
            )
        self.store.store_results(chunk.id, failures=got.found["failures"], warnings=got.found["warnings"],
                                 counts=counts)


def _lost_poll(chunk: ChunkRow, now: float) -> _Poll:
    """A batch found in the journal (a restart, a renamed instance): poll it now, learn nothing from it."""
    return _Poll(
        batch_id=int(chunk.batch_id or 0), due=now, last_polled=now, rows=chunk.rows, submitted_at=now, learn=False
    )


def _counts(status: BatchStatus) -> Counts:
    return Counts(processed=status.processed, failed=status.failed, warned=status.warned)


__all__ = ["SENT", "Dispatch", "Interrupted", "Pauses"]
