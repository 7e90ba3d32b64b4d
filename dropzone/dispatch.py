"""Dispatch: send pending chunks within Marketo's queue, poll their batches, fetch the result files.

Each pass (``run_once``):

* **admission and submit**: pending chunks go to Marketo while fewer than
  ``max_open_imports`` of ours are open, one open import per static list,
  round-robin across inboxes (``jobs.pick_next``); what each answer does to
  the chunk and to further submissions is ``jobs.after_submit``'s decision;
* **poll**: the batches Marketo can be finishing, on ``jobs.poll_delay``'s
  schedule; what each answer does is ``jobs.after_poll``'s decision;
* **fetch**: the failure and warning files of finished batches, into the
  work area (``jobs.after_fetch``).

Every state is journalled before the action it enables: ``submitting``
right before the upload's bytes go out, the batchId right after. One
chunk's trouble is that chunk's: an error on one item is logged and the
pass goes on.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dropzone import health, jobs, outbox
from dropzone.config import MarketoSettings
from dropzone.errors import Interrupted, MarketoError, QuotaExceededError, StoreError
from dropzone.jobs import ChunkAction, ChunkState, FetchAction, FileState, Pause, PollAction
from dropzone.marketo import BatchStatus, MarketoClient
from dropzone.store import ChunkRow, Counts, FileRow, Store

log = structlog.get_logger("dropzone.dispatch")


@dataclass
class _Poll:
    batch_id: int
    due: float
    last_polled: float
    polls: int = 0


@dataclass
class Pauses:
    """Marketo said "not now": until when each kind of call waits (monotonic seconds)."""

    submits_until: float = 0.0
    api_until: float = 0.0
    lists_until: dict[int, float] = field(default_factory=dict)
    targets_until: dict[str, float] = field(default_factory=dict)  # by serialised import target
    queue_full_streak: int = 0
    misconfigured: str | None = None  # why, while the integration itself is refused


@dataclass
class Dispatch:
    """The dispatch stage.

    Args:
        store: the journal.
        client: the Marketo client (the daemon rebuilds it on reload).
        settings: the instance's settings (queue size, poll interval, resubmit hold).
        metrics: batches, polls, readiness.
        heartbeat: called per item.
        wall: wall-clock seconds (resubmit holds survive restarts).
    """

    store: Store
    client: MarketoClient
    settings: MarketoSettings
    metrics: health.Metrics
    heartbeat: Callable[[], None] = lambda: None
    wall: Callable[[], float] = time.time
    #: How long each pause lasts (tests pass a quicker one).
    pause_for: Callable[..., float] = jobs.pause_seconds
    pauses: Pauses = field(default_factory=Pauses)
    _polls: dict[int, _Poll] = field(default_factory=dict)
    #: Journal writes a brief journal error kept from being made, in order: made before anything else.
    _unsaved: list[Callable[[], None]] = field(default_factory=list)
    _last_inbox: str | None = None

    def run_once(self, now: float) -> bool:
        if not self._save_unsaved():
            return False  # the journal is still unavailable: nothing else until it takes our writes
        busy = self._submit(now)
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

    # ---- recovery -------------------------------------------------------------

    def recover(self, now: float) -> None:
        """Put chunks a crash interrupted back on their way (``jobs.recovery_action``)."""
        for chunk in self.store.chunks([ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING]):
            match jobs.recovery_action(chunk.state):
                case jobs.RecoveryAction.RESUBMIT:
                    why = "dropzone stopped between the upload and its answer"
                    self.store.requeue(chunk.id, unknown=why, not_before=self.wall() + self._hold(chunk))
                    log.warning("chunk_resubmitting_after_crash", file_id=chunk.file_id, chunk=chunk.index)
                case jobs.RecoveryAction.POLL:
                    self._polls[chunk.id] = _Poll(batch_id=int(chunk.batch_id or 0), due=now, last_polled=now)
                case jobs.RecoveryAction.FETCH | jobs.RecoveryAction.NONE:
                    pass  # fetching chunks are picked up by the fetch step as they are

    def _hold(self, chunk: ChunkRow) -> float:
        return jobs.resubmit_hold(chunk.size, least=self.settings.resubmit_hold)

    # ---- introspection ----------------------------------------------------------

    def open_batches(self) -> int:
        return len(self._polls)

    def next_due(self) -> float | None:
        """When a poll is next due (monotonic), for the loop's idle wait."""
        return jobs.next_poll_at(jobs.PollPlan(c, p.batch_id, p.due, p.last_polled) for c, p in self._polls.items())

    # ---- submit -----------------------------------------------------------------

    def _submit(self, now: float) -> bool:
        if now < max(self.pauses.submits_until, self.pauses.api_until):
            return False
        pending = self.store.chunks([ChunkState.PENDING])
        if not pending:
            return False
        wall = self.wall()
        files = {row.id: row for row in self.store.files([FileState.SPLIT])}
        open_chunks = self.store.chunks(jobs.CHUNK_OPEN)
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
        while candidates:
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
                decision = self._submit_one(self.store.chunk(pick.chunk_id), row, now)
            if decision.action is ChunkAction.RECORD_BATCH:
                n_open += 1
                if pick.list_id is not None:
                    busy_lists.add(pick.list_id)
            if decision.stop:
                break
        return busy

    @staticmethod
    def _target_key(row: FileRow) -> str:
        return row.target.to_json() if row.target is not None else ""

    @staticmethod
    def _list_of(row: FileRow | None) -> int | None:
        return row.target.list_id if row is not None and row.target is not None else None

    def _submit_one(self, chunk: ChunkRow, row: FileRow, now: float) -> jobs.SubmitDecision:
        if row.target is None or row.fmt is None:
            self.store.fail_chunk(chunk.id, "the journal lost this chunk's import target; please report this")
            return jobs.SubmitDecision(ChunkAction.FAIL)
        error: BaseException | None = None
        batch = None
        try:
            batch = self.client.submit(
                row.target,
                chunk.path,
                fmt=row.fmt,
                before_send=lambda: self.store.mark_submitting(chunk.id),
                not_executed=lambda: self.store.requeue(chunk.id),
            )
        except Interrupted:
            # Shutdown: the journal already says where the chunk is. ``submitting`` (bytes may be
            # out) is resubmitted after a hold at the next start; ``pending`` was never sent.
            raise
        except Exception as exc:  # noqa: BLE001 - jobs.after_submit decides; nothing escapes one chunk
            error = exc
        decision = jobs.after_submit(error)
        try:
            self._apply_submit(decision, chunk, batch, error, now)
        except (sqlite3.Error, StoreError) as exc:
            # The journal is briefly unavailable: keep what must be written and write it first next pass.
            log.error("journal_write_failed_will_retry", error=str(exc))
            self._unsaved.append(lambda: self._apply_submit(decision, chunk, batch, error, now))
        if decision.pause is not Pause.NONE and error is not None:
            self._pause(decision.pause, error, row, now)
        return decision

    def _apply_submit(
        self, decision: jobs.SubmitDecision, chunk: ChunkRow, batch: BatchStatus | None, error: BaseException | None,
        now: float,
    ) -> None:
        match decision.action:
            case ChunkAction.RECORD_BATCH if batch is not None:
                self.pauses.queue_full_streak = 0
                self.store.record_batch(chunk.id, batch_id=batch.batch_id, status=batch.status)
                self._polls[chunk.id] = _Poll(
                    batch_id=batch.batch_id, due=now + jobs.poll_delay(0, self.settings.poll_interval), last_polled=now
                )
                self._cleared_misconfiguration()
                log.info("import_submitted", batchId=batch.batch_id, rows=chunk.rows, bytes=chunk.size)
            case ChunkAction.REQUEUE_UNKNOWN:
                why = getattr(error, "reason", None) or str(error)
                hold = self._hold(chunk)
                self.store.requeue(chunk.id, unknown=why, not_before=self.wall() + hold)
                log.warning("submit_outcome_unknown", error=str(error), hold_s=round(hold))
            case ChunkAction.REQUEUE:
                self._requeue_quietly(chunk.id)
            case ChunkAction.FAIL:
                message = str(error) if not isinstance(error, OSError) else (
                    f"chunk {chunk.index} could not be read from the work area: {error.strerror or error}"
                )
                self._fail(chunk.id, message or type(error).__name__)
                if not isinstance(error, MarketoError):
                    log.error("submit_failed_internal_error", error=repr(error))
                else:
                    log.warning("submit_rejected", code=error.code, error=str(error))

    def _requeue_quietly(self, chunk_id: int) -> None:
        if self.store.chunk(chunk_id).state is not ChunkState.PENDING:
            self.store.requeue(chunk_id)

    def _fail(self, chunk_id: int, message: str) -> None:
        if self.store.chunk(chunk_id).state in (ChunkState.SUBMITTING, ChunkState.PENDING):
            self.store.fail_chunk(chunk_id, message)

    def _pause(self, pause: Pause, error: BaseException, row: FileRow | None, now: float) -> None:
        resets_in = 0.0
        if isinstance(error, QuotaExceededError):
            resets_in = (error.resume_at - dt.datetime.now(dt.UTC)).total_seconds()
        if pause is Pause.QUEUE_FULL:
            self.pauses.queue_full_streak += 1
        seconds = self.pause_for(pause, streak=self.pauses.queue_full_streak, quota_resets_in=resets_in)
        match pause:
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
        if len(self._polls) < self.store.count_chunks([ChunkState.SUBMITTED]):
            # A batch the journal has and this stage lost (an interrupted step): poll it again.
            for chunk in self.store.chunks([ChunkState.SUBMITTED]):
                self._polls.setdefault(chunk.id, _Poll(batch_id=int(chunk.batch_id or 0), due=now, last_polled=now))
        busy = False
        plans = [jobs.PollPlan(cid, p.batch_id, p.due, p.last_polled) for cid, p in self._polls.items()]
        for chunk_id in jobs.polls_due(plans, now):
            self._polls[chunk_id].last_polled = now
            chunk = self.store.chunk(chunk_id)
            if chunk.state is not ChunkState.SUBMITTED:
                self._polls.pop(chunk_id, None)
                continue
            row = self.store.file(chunk.file_id)
            busy = True
            self.heartbeat()
            with structlog.contextvars.bound_contextvars(
                inbox=str(row.inbox), file=row.relpath, chunk=chunk.index, batchId=chunk.batch_id
            ):
                self._poll_one(chunk, row, now)
        return busy

    def _poll_one(self, chunk: ChunkRow, row: FileRow, now: float) -> None:
        poll = self._polls[chunk.id]
        error: BaseException | None = None
        status = None
        try:
            if row.target is None:
                raise ValueError("no import target in the journal")
            # No retries inside the call: the poll schedule retries, and the loop is not held meanwhile.
            status = self.client.status(row.target, int(chunk.batch_id or 0), retry_for=0.0)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - jobs.after_poll decides
            error = exc
        action = jobs.after_poll(error, finished=status is not None and status.is_finished)
        match action:
            case PollAction.WAIT if status is not None:
                poll.polls += 1
                self.metrics.poll_succeeded()
                poll.due = now + jobs.poll_delay(poll.polls, self.settings.poll_interval)
                self.store.record_progress(chunk.id, status=status.status, counts=_counts(status))
            case PollAction.FINISHED if status is not None:
                self.metrics.poll_succeeded()
                # Forgotten only once the journal has it: a journal error leaves it polled again.
                self.store.finish_batch(chunk.id, status=status.status, message=status.message, counts=_counts(status))
                self._polls.pop(chunk.id, None)
                log.info("import_finished", status=status.status, processed=status.processed, failed=status.failed)
            case PollAction.GONE:
                self.store.fail_chunk(chunk.id, f"Marketo no longer knows batch {chunk.batch_id}: {error}")
                self._polls.pop(chunk.id, None)
                log.warning("batch_gone", error=str(error))
            case PollAction.PAUSE_API:
                poll.due = now + self.settings.poll_interval
                if error is not None:
                    self._pause(Pause.API, error, row, now)
            case _:
                retry_after = getattr(error, "retry_after", None)
                poll.due = now + max(self.settings.poll_interval, float(retry_after or 0.0))
                log.info("poll_retry_later", error=str(error) or type(error).__name__)

    # ---- fetch ------------------------------------------------------------------

    def _fetch(self, now: float) -> bool:
        if now < self.pauses.api_until:
            return False
        busy = False
        for chunk in self.store.chunks([ChunkState.FETCHING]):
            busy = True
            self.heartbeat()
            row = self.store.file(chunk.file_id)
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=chunk.index):
                try:
                    self._fetch_one(chunk, row)
                except Interrupted:
                    raise
                except Exception as exc:  # noqa: BLE001 - one chunk's trouble stays its own
                    log.warning("fetch_failed_will_retry", error=str(exc) or type(exc).__name__)
        return busy

    def _fetch_one(self, chunk: ChunkRow, row: FileRow) -> None:
        unknown = chunk.processed is None or chunk.failed is None or chunk.warned is None
        found: dict[str, Path | None] = {"failures": None, "warnings": None}
        rows: dict[str, int] = {"failures": 0, "warnings": 0}
        fetchers = (("failures", chunk.failed, self.client.failures), ("warnings", chunk.warned, self.client.warnings))
        for kind, count, fetch in fetchers:
            # Unknown counters (program members may omit them): the files tell.
            if row.target is None or (count is not None and count <= 0):
                continue
            error: BaseException | None = None
            body = None
            try:
                body = fetch(row.target, int(chunk.batch_id or 0), retry_for=0.0)
            except Interrupted:
                raise
            except Exception as exc:  # noqa: BLE001 - jobs.after_fetch decides
                error = exc
            match jobs.after_fetch(error):
                case FetchAction.RETRY:
                    log.info("result_file_retry_later", kind=kind, error=str(error))
                    return
                case FetchAction.GIVE_UP:
                    log.warning("result_file_unavailable", kind=kind, error=str(error))
                case FetchAction.STORE if body:
                    path = chunk.path.with_name(f"{chunk.path.name}.{kind}")
                    outbox.atomic_write(path, body)
                    found[kind] = path
                    rows[kind] = outbox.count_rows(body, fmt=row.fmt or "csv")
        counts = None
        if unknown and chunk.marketo_status == "Complete":
            failed = chunk.failed if chunk.failed is not None else rows["failures"]
            counts = Counts(
                processed=chunk.processed if chunk.processed is not None else max(chunk.rows - failed, 0),
                failed=failed,
                warned=chunk.warned if chunk.warned is not None else rows["warnings"],
            )
            self.store.add_note(
                row.id,
                f"Marketo's status for batch {chunk.batch_id} had no row counts; they were counted "
                "from its failure and warning files",
            )
        self.store.store_results(chunk.id, failures=found["failures"], warnings=found["warnings"], counts=counts)


def _counts(status: BatchStatus) -> Counts:
    return Counts(processed=status.processed, failed=status.failed, warned=status.warned)
