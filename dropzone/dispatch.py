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
  round-robin across inboxes (``jobs.pick_next``), and none once the daily
  quota is down to its reserve (``quota.QuotaGuard``; polls and fetches go
  on); other small chunks already waiting for the same import ride along in
  one merged upload (``coalescing.gather``, ``merging.write_merged``);
* **poll**: the batches Marketo can be finishing, around the finish the
  instance's ``polling.Predictor`` expects from the batches it saw before;
* **fetch**: the failure and warning files of finished batches, into the
  work area.

Calls run on ``calls`` (``calls.py``): the daemon gives each instance a few
threads, so a slow upload or a sick instance never holds the loop; tests
run them inline. Only the loop's thread writes the journal: a chunk is
``submitting`` before its upload is handed over, the batchId is saved when
the answer is collected. Polls and fetches are per batch: a shared batch is
known by its first chunk's id, and every journal verb moves all its chunks.
One import's trouble is that import's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from dropzone import calls as calls_module
from dropzone import coalescing, health, jobs, merging, polling, results, submit_idle
from dropzone import defaults as D
from dropzone.calls import Attempt, Downloaded, Inline
from dropzone.errors import Interrupted, MarketoError, StoreError, WouldWaitError
from dropzone.instances import MarketoSettings
from dropzone.jobs import ChunkAction, ChunkState, FileState, Pause, PollAction
from dropzone.marketo import BatchStatus, MarketoClient
from dropzone.pauses import Pauses
from dropzone.quota import QuotaGuard
from dropzone.store import ChunkRow, Counts, FileRow, Store

log = structlog.get_logger("dropzone.dispatch")

#: States in which a chunk's bytes may be at Marketo and its batch is not finished with.
SENT = (ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING)
_USAGE = -1  # the usage.json call's key in ``Dispatch._running``, where chunk ids are positive
#: Pending chunks a submit pass looks at per inbox and import target: more than it can send in a
#: pass (one per free slot, one per list), with room for chunks held back after an unknown outcome.
PENDING_HEADS = 4 * D.MARKETO_MAX_OPEN_IMPORTS


@dataclass
class _Call:
    """A call handed to ``calls``; ``apply`` writes its result on the loop's thread."""

    future: Future[Attempt[Any]]
    apply: Callable[[Any, Exception | None, float], None]
    kind: str
    client: MarketoClient  # closed, if a reload replaced it, once its last call is collected


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
    #: Removed from the configuration by a reload: finishes the batches it has open, sends nothing new,
    #: until ``drain_until`` (monotonic) at the latest.
    draining: bool = False
    drain_until: float = 0.0
    #: The largest import (a merged one included): the configuration's ``split_max_bytes``.
    split_max_bytes: int = D.SPLIT_MAX_BYTES
    _polls: dict[int, polling.OpenBatch] = field(default_factory=dict)
    _running: dict[int, _Call] = field(default_factory=dict)  # by import (its first chunk): one call at a time
    _old_clients: list[MarketoClient] = field(default_factory=list)
    #: Journal writes a brief journal error kept from being made, in order: made before anything else.
    _unsaved: list[Callable[[], None]] = field(default_factory=list)
    _last_inbox: str | None = None
    #: The daily quota: when to ask usage.json, whether new imports wait for its reset.
    quota: QuotaGuard = field(default_factory=QuotaGuard)
    #: The last submit look, if it sent nothing: skipped until something it depended on changes.
    _idle: submit_idle.SubmitIdle = field(default_factory=submit_idle.SubmitIdle)

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
        self._running[chunk_id] = _Call(future, apply, kind, self.client)
        future.add_done_callback(lambda _f: self.wake())
        if future.done():
            self._finish(chunk_id, now)  # inline: applied in this pass, as if the call were ours

    def _collect(self, now: float) -> bool:
        finished = [chunk_id for chunk_id, call in self._running.items() if call.future.done()]
        for chunk_id in finished:
            self._finish(chunk_id, now)
        in_use = {id(call.client) for call in self._running.values()}
        for client in [c for c in self._old_clients if id(c) not in in_use]:
            self._old_clients.remove(client)
            client.close()
        return bool(finished)

    def _finish(self, chunk_id: int, now: float) -> None:
        call = self._running.pop(chunk_id)
        self._idle.clear()  # an answer may free a thread, end a wait, pause a target: look again
        attempt = call.future.result()  # Interrupted (shutdown) is raised here, on the loop's thread
        try:
            call.apply(attempt.value, attempt.error, now)
        except (sqlite3.Error, StoreError) as exc:
            # The journal is briefly unavailable: keep what must be written and write it first next pass.
            log.error("journal_write_failed_will_retry", error=str(exc))
            self._unsaved.append(partial(call.apply, attempt.value, attempt.error, now))
        except Exception:  # one result's trouble must not end the pass for the others
            log.exception("applying_a_result_failed", chunk_id=chunk_id, kind=call.kind)

    def running(self) -> set[int]:
        """The chunks with a call running: nothing else may move them meanwhile (``owners``)."""
        return set(self._running)

    def _count(self, kind: str) -> int:
        return sum(1 for call in self._running.values() if call.kind == kind)

    def replace_client(self, client: MarketoClient, settings: MarketoSettings) -> None:
        """New settings (a reload): calls still running finish on the old client, closed after them."""
        self._old_clients.append(self.client)
        client.share_quota(self.client)  # the day's calls stay counted
        self.client, self.settings = client, settings

    def close(self, now: float) -> None:
        """Wait for running calls (a shutdown interrupts them within a second), record the answers
        that came meanwhile (a batchId received is never thrown away), close the clients."""
        self.calls.shutdown(wait=True, cancel_futures=True)
        for chunk_id, call in list(self._running.items()):
            if call.future.cancelled() or isinstance(call.future.exception(), Interrupted):
                self._running.pop(chunk_id)  # the journal says where it stands: recovery takes it from there
        try:
            self._collect(now)
        except (sqlite3.Error, StoreError) as exc:
            log.error("journal_write_failed_at_shutdown", error=str(exc))
        for client in {id(c): c for c in [self.client, *self._old_clients]}.values():
            client.close()

    # ---- recovery -------------------------------------------------------------

    def recover(self, now: float) -> None:
        """Put chunks a crash interrupted back on their way (``jobs.recovery_action``)."""
        for chunk in self._imports(list(SENT)):
            match jobs.recovery_action(chunk.state):
                case jobs.RecoveryAction.RESUBMIT:
                    why = "dropzone stopped between the upload and its answer"
                    self.store.requeue(chunk.id, unknown=why, not_before=self.wall() + self._hold(chunk))
                    log.warning("chunk_resubmitting_after_crash", file_id=chunk.file_id, chunk=chunk.index,
                                shared=chunk.group_id is not None)
                case jobs.RecoveryAction.POLL:
                    self._polls[chunk.id] = polling.OpenBatch.found(int(chunk.batch_id or 0), self._rows(chunk), now)
                case jobs.RecoveryAction.FETCH | jobs.RecoveryAction.NONE:
                    pass  # fetching chunks are picked up by the fetch step as they are

    def _hold(self, chunk: ChunkRow) -> float:
        size = sum(c.size for c in self.store.group_of(chunk.id)) if chunk.group_id is not None else chunk.size
        return jobs.resubmit_hold(size, least=self.settings.resubmit_hold)

    def _rows(self, chunk: ChunkRow) -> int:
        """The rows of the chunk's whole import (a shared one's: every member's)."""
        return sum(c.rows for c in self.store.group_of(chunk.id)) if chunk.group_id is not None else chunk.rows

    def _imports(self, states: list[ChunkState]) -> list[ChunkRow]:
        """This instance's sent imports in these states, each once, as its first chunk (the one verbs are
        given): only what went to this stage's endpoint (a moved instance's old stage has the rest)."""
        return self.store.imports(states, instance=self.name, endpoint=self._endpoint)

    # ---- introspection ----------------------------------------------------------

    def open_batches(self) -> int:
        return len(self._polls)

    def has_open(self) -> bool:
        """Whether any chunk of this instance is sent and not finished (a draining stage is done without)."""
        return bool(self._running) or self.store.count_chunks(SENT, instance=self.name, endpoint=self._endpoint) > 0

    @property
    def _endpoint(self) -> str:
        return self.settings.subscription

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
        if self._count("submit") >= most or self._idle.holds(self._facts(now)):
            return False
        opened = self.store.imports(jobs.CHUNK_OPEN, instance=self.name, endpoint=self._endpoint)
        full, wall = len(opened) >= self.settings.max_open_imports, self.wall()
        # Every slot taken: nothing can go, so no pending chunk is loaded (a backlog's passes are mostly these).
        heads = [] if full else self.store.pending_heads(
            self.name, per_route=PENDING_HEADS, budget=self.split_max_bytes, wall=wall
        )
        pending = [c for c in heads if c.id not in self._running]
        waiting = bool(pending) or (full and self.store.has_pending(self.name))
        if waiting:
            self._ask_usage(now)  # while chunks wait, as if every pass looked
        if not pending:
            self._found_nothing(now, [], waiting=waiting)
            return False
        loaded = self.store.files_with_ids({c.file_id for c in [*pending, *opened]}, [FileState.SPLIT])
        files = {row.id: row for row in loaded}
        busy_lists = {self._list_of(files.get(c.file_id)) for c in opened}
        busy_lists |= {lid for lid, until in self.pauses.lists_until.items() if until > now}
        # A chunk already in a shared import moves with it: only that import's first chunk is a candidate.
        ready = [
            c for c in pending
            if c.file_id in files and c.batch_key == c.id
            and (c.not_before is None or c.not_before <= wall)
            and self.pauses.targets_until.get(self._target_key(files[c.file_id]), 0.0) <= now
        ]
        parts = {c.id: coalescing.part_of(c, files[c.file_id]) for c in ready}
        candidates = [
            jobs.Candidate(
                chunk_id=c.id, inbox=str(files[c.file_id].inbox), file_id=c.file_id, index=c.index,
                list_id=self._list_of(files[c.file_id]),
            )
            for c in ready
        ]
        busy = False
        n_open = len(opened)
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
            group = coalescing.gather(parts.pop(pick.chunk_id), parts.values(), limit=self.split_max_bytes, wall=wall)
            members = [p.chunk_id for p in group[1:]]
            for member in members:
                del parts[member]
            candidates = [c for c in candidates if c.chunk_id != pick.chunk_id and c.chunk_id not in members]
            self._last_inbox = pick.inbox
            busy = True
            self.heartbeat()
            row = files[pick.file_id]
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=pick.index):
                if self._submit_one(self.store.chunk(pick.chunk_id), row, members, now):
                    n_open += 1  # submitting counts as open until its answer says otherwise
                    if pick.list_id is not None:
                        busy_lists.add(pick.list_id)
        if not busy and not self._submits_paused(now):  # a pause is checked at every pass: no mark for it
            self._found_nothing(now, pending, waiting=True)
        return busy

    def _facts(self, now: float) -> submit_idle.Facts:
        config = (self.settings, self.draining, self.split_max_bytes)
        return submit_idle.Facts(self.store.changes, config, now, self.wall(), usage_due=self.quota.due(now))

    def _found_nothing(self, now: float, pending: list[ChunkRow], *, waiting: bool) -> None:
        holds = [*self.pauses.lists_until.values(), *self.pauses.targets_until.values()]
        self._idle.found_nothing(self._facts(now), pauses_until=holds, held_until=[c.not_before for c in pending],
                                 waiting=waiting)

    def _submits_paused(self, now: float) -> bool:
        paused = self.pauses.submits_paused(now)
        return paused or self.quota.holds(self.client.quota_today(), self.settings, self.metrics, now)

    def _ask_usage(self, now: float) -> None:
        if self.quota.due(now) and now >= self.pauses.api_until:  # every integration's calls today
            self.quota.started(now)
            self._start(_USAGE, "usage", partial(self.client.usage_today, retry_for=0.0),
                        lambda _total, error, at: self.quota.answered(error, at), now)

    @staticmethod
    def _target_key(row: FileRow) -> str:
        return row.target.to_json() if row.target is not None else ""

    @staticmethod
    def _list_of(row: FileRow | None) -> int | None:
        return row.target.list_id if row is not None and row.target is not None else None

    def _submit_one(self, chunk: ChunkRow, row: FileRow, members: list[int], now: float) -> bool:
        """Hand the import's upload over; False when it was not (nothing to send, or the journal failed)."""
        if row.target is None or row.fmt is None:
            self.store.fail_chunk(chunk.id, "the journal lost this chunk's import target; please report this")
            return False
        upload = chunk.upload_path
        if members:
            upload = self._merge(chunk, row, members)
            if upload is None:
                members = []
        try:
            # Saved before the bytes can leave: a crash from here on is the one ambiguous window.
            self.store.mark_submitting(chunk.id, endpoint=self.settings.subscription, members=members, upload=upload)
        except (sqlite3.Error, StoreError) as exc:
            log.error("journal_write_failed_will_retry", error=str(exc))
            self._pause(Pause.SUBMITS, exc, row, now)
            return False
        chunk = self.store.chunk(chunk.id)
        call = partial(self.client.submit, row.target, upload or chunk.path, fmt=row.fmt, retry_for=0.0)
        self._start(chunk.id, "submit", call, partial(self._submitted, chunk, row), now)
        return True

    def _merge(self, chunk: ChunkRow, row: FileRow, members: list[int]) -> Path | None:
        """Write the merged upload of ``chunk`` and ``members``, beside the first; None: send it alone."""
        parts = [chunk, *(self.store.chunk(m) for m in members)]
        out = chunk.path.with_name(f"import.{chunk.id}.{row.fmt.value if row.fmt else 'csv'}")
        try:
            size = merging.write_merged([p.path for p in parts], row.header or b"", out)
        except (OSError, ValueError) as exc:
            # The work area failed us (or a chunk changed under us): nothing is lost by sending it alone.
            log.warning("merge_failed_sending_alone", error=str(exc))
            return None
        log.info("imports_merged", chunks=len(parts), files=len({p.file_id for p in parts}), bytes=size)
        return out

    def _submitted(self, chunk: ChunkRow, row: FileRow, batch: BatchStatus | None, error: Exception | None,
                   now: float) -> None:
        current = self.store.chunk(chunk.id)
        if current.state is not ChunkState.SUBMITTING:
            # Moved meanwhile (a reload failed it): the answer is only told, never applied over it.
            if batch is not None:
                self.store.add_note(
                    chunk.file_id,
                    f"chunk {chunk.index} was accepted by Marketo as batch {batch.batch_id} after it had been "
                    "given up here; that batch may have imported its rows",
                )
            log.warning("late_answer_not_applied", chunk_id=chunk.id, state=current.state.value)
            return
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
                self.pauses.accepted(self.metrics)
                self.store.record_batch(chunk.id, batch_id=batch.batch_id, status=batch.status)
                ahead = polling.rows_ahead(self._polls.values(), batch.batch_id)
                head_at = now if len(ahead) < self.predictor.slots else None
                rows = self._rows(chunk)
                due = self.predictor.first_poll(now, rows, ahead, poll_interval=self.settings.poll_interval)
                self._polls[chunk.id] = polling.OpenBatch(
                    batch_id=batch.batch_id, due=due, last_polled=now, rows=rows, submitted_at=now, head_at=head_at,
                )
                log.info("import_submitted", batchId=batch.batch_id, rows=rows, shared=chunk.group_id is not None)
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
        self.pauses.apply(
            pause, error, now, pause_for=self.pause_for, metrics=self.metrics, list_id=self._list_of(row),
            target_key=self._target_key(row) if row is not None else None,
        )

    # ---- poll -------------------------------------------------------------------

    def _poll(self, now: float) -> bool:
        if now < self.pauses.api_until:
            return False
        if len(self._polls) < self.store.count_batches([ChunkState.SUBMITTED], instance=self.name,
                                                       endpoint=self._endpoint):
            # A batch the journal has and this stage lost (an interrupted step, a renamed instance).
            for chunk in self._imports([ChunkState.SUBMITTED]):
                if chunk.id not in self._polls:
                    self._polls[chunk.id] = polling.OpenBatch.found(int(chunk.batch_id or 0), self._rows(chunk), now)
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
                    poll.gone_since, poll.gone_said = None, 0
                    self.store.record_progress(chunk.id, status=status.status, counts=_counts(status))
                    polling.still_open(self.predictor, poll, status.status, now, self._polls.values(),
                                       poll_interval=self.settings.poll_interval)
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
                    poll.gone_since = now if poll.gone_since is None else poll.gone_since
                    poll.gone_said += 1
                    if not jobs.batch_gone(poll.gone_said, poll.gone_since, now):
                        poll.due = now + max(self.settings.poll_interval, D.GONE_AFTER_S / D.GONE_ANSWERS)
                        log.warning("batch_not_found_asking_again", error=str(error), times=poll.gone_said)
                        return
                    self.store.fail_chunk(
                        chunk.id,
                        f"Marketo answered {poll.gone_said} times over {round((now - poll.gone_since) / 60)} min "
                        f"that it does not know batch {chunk.batch_id}, which it had accepted ({error}): whether "
                        "its rows were imported is unknown",
                    )
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

    def _replan(self, now: float, freed: float) -> None:
        polling.replan(self.predictor, self._polls.values(), now, freed, poll_interval=self.settings.poll_interval)

    # ---- fetch ------------------------------------------------------------------

    def _fetch(self, now: float) -> bool:
        if now < self.pauses.api_until:
            return False
        busy = False
        for chunk in self._imports([ChunkState.FETCHING]):
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
                batch_id, counts = int(chunk.batch_id or 0), {"failed": chunk.failed, "warned": chunk.warned}
                if chunk.upload_path is not None and chunk.group_id is not None:
                    # One download per batch, split back per chunk on the call's thread.
                    members = [merging.Member(c.id, c.path) for c in self.store.group_of(chunk.id)]
                    call = partial(calls_module.download_shared_results, self.client, row.target, batch_id,
                                   chunk.upload_path, members, row.fmt, **counts)
                else:
                    call = partial(calls_module.download_results, self.client, row.target, batch_id, chunk.path,
                                   row.fmt, **counts)
                self._start(chunk.id, "fetch", call, partial(self._fetched, chunk, row), now)
        return busy

    def _fetched(self, chunk: ChunkRow, row: FileRow, got: Downloaded | None, error: Exception | None,
                 now: float) -> None:
        if self.store.chunk(chunk.id).state is not ChunkState.FETCHING:
            return  # finished meanwhile (a reload settled it)
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
            results.store_results(self.store, chunk, row, got)


def _counts(status: BatchStatus) -> Counts:
    return Counts(processed=status.processed, failed=status.failed, warned=status.warned)


__all__ = ["SENT", "Dispatch", "Interrupted"]
