"""File and chunk lifecycles, and the pure decisions the daemon takes on them.

Owns: the states, the transitions allowed between them, and every decision
taken on them: what a submit's outcome does to a chunk (``after_submit``),
what a poll's outcome does (``after_poll``), what start-up does with each
state a crash left (``recovery_action``, ``recover_claim``), how long a
possibly-created copy is waited out (``resubmit_hold``), which pending chunk
goes to Marketo next (``pick_next``), which open batches are polled
(``polls_due``; when, is ``polling``'s), which instance owns a chunk after the configuration
changed (``chunk_owner``) and a file's outcome once its chunks are done
(``file_outcome``). Owns no I/O: the store persists these states, the stages
act on them; every rule here is table-tested with plain values.

A file::

    claiming ──► claimed ──► split ──► finishing ──► done
                    │                     ▲
                    ├──── (rejected) ─────┤
                    └──► unpacked ────────┘ (a zip: once every member it holds is done)

A zip's members are files of their own (``parent_id``: the zip), born ``claimed`` (or already
refused) in the one transaction that moves the zip to ``unpacked``.

A chunk (its own Marketo batch, or one batch shared with other files' chunks:
``coalescing``; the chunks of a shared batch move together, one verb each)::

    pending ──► submitting ──► submitted ──► fetching ──► done
       ▲            │                           │
       └────────────┘ (try later / lost reply)  └──► (Failed batch) done
                    └──► error (Marketo refused the request)

Each state is saved before the action it enables: ``submitting`` before the
POST, ``submitted`` with the batchId right after it. A crash in
``submitting`` is the one ambiguous window: no Marketo endpoint lists
batches, so the chunk is submitted again (imports are upserts) and the status
file says so.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dropzone import defaults as D
from dropzone import errors


class FileState(enum.StrEnum):
    CLAIMING = "claiming"  # row written, rename into the processing area not yet confirmed
    CLAIMED = "claimed"  # the original is in the processing area
    SPLIT = "split"  # chunks recorded; they move on their own
    UNPACKED = "unpacked"  # a zip whose members were taken out: it waits for them
    FINISHING = "finishing"  # outcome known; outbox and archive being written
    DONE = "done"


class ChunkState(enum.StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FETCHING = "fetching"  # batch finished; failure/warning files being fetched
    DONE = "done"
    ERROR = "error"


class Outcome(enum.StrEnum):
    COMPLETE = "Complete"
    PARTIAL = "Partial"
    FAILED = "Failed"
    REJECTED = "Rejected"


FILE_TRANSITIONS: dict[FileState, frozenset[FileState]] = {
    FileState.CLAIMING: frozenset({FileState.CLAIMED, FileState.DONE}),
    FileState.CLAIMED: frozenset({FileState.SPLIT, FileState.FINISHING, FileState.UNPACKED}),
    FileState.SPLIT: frozenset({FileState.FINISHING}),
    FileState.UNPACKED: frozenset({FileState.FINISHING}),
    FileState.FINISHING: frozenset({FileState.DONE}),
    FileState.DONE: frozenset(),
}

CHUNK_TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.PENDING: frozenset({ChunkState.SUBMITTING, ChunkState.ERROR}),
    ChunkState.SUBMITTING: frozenset({ChunkState.SUBMITTED, ChunkState.PENDING, ChunkState.ERROR}),
    ChunkState.SUBMITTED: frozenset({ChunkState.FETCHING, ChunkState.ERROR}),
    ChunkState.FETCHING: frozenset({ChunkState.DONE}),
    ChunkState.DONE: frozenset(),
    ChunkState.ERROR: frozenset(),
}

CHUNK_FINAL = frozenset({ChunkState.DONE, ChunkState.ERROR})
#: Chunks that hold (or may hold) a slot in Marketo's import queue.
CHUNK_OPEN = frozenset({ChunkState.SUBMITTING, ChunkState.SUBMITTED})


class TransitionError(Exception):
    """A programming error: the code asked for a move the lifecycle forbids."""


def check_file_transition(old: FileState, new: FileState) -> None:
    if new not in FILE_TRANSITIONS[old]:
        raise TransitionError(f"file cannot go from {old} to {new}")


def check_chunk_transition(old: ChunkState, new: ChunkState) -> None:
    if new not in CHUNK_TRANSITIONS[old]:
        raise TransitionError(f"chunk cannot go from {old} to {new}")


class RecoveryAction(enum.StrEnum):
    NONE = "none"
    RESUBMIT = "resubmit"  # crashed between the POST and the batchId: send again, note it
    POLL = "poll"  # a batchId is known: poll it, never resubmit
    FETCH = "fetch"  # fetch failure/warning files again


def recovery_action(state: ChunkState) -> RecoveryAction:
    """What start-up does with a chunk a crash left in ``state``."""
    return {
        ChunkState.SUBMITTING: RecoveryAction.RESUBMIT,
        ChunkState.SUBMITTED: RecoveryAction.POLL,
        ChunkState.FETCHING: RecoveryAction.FETCH,
    }.get(state, RecoveryAction.NONE)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pending chunk as the scheduler sees it."""

    chunk_id: int
    inbox: str
    file_id: int
    index: int
    list_id: int | None = None


@dataclass(frozen=True, slots=True)
class Slots:
    """Marketo's import queue as this daemon sees it."""

    open: int  # our chunks submitting or submitted and not finished
    max_open: int
    busy_lists: frozenset[int] = frozenset()
    last_inbox: str | None = None  # the inbox served last, for round-robin


def pick_next(candidates: Sequence[Candidate], slots: Slots) -> Candidate | None:
    """The pending chunk to submit now, or None.

    * Never more than ``max_open`` of our batches open, so this daemon alone
      never provokes 1016 (Marketo allows 10, two importing).
    * One open import per ``listId`` (Marketo answers 1019 otherwise).
    * Round-robin across inboxes, oldest file and lowest chunk first within an
      inbox: one partner's 500 files do not starve another's one file.
    """
    if slots.open >= slots.max_open:
        return None
    eligible = [c for c in candidates if c.list_id is None or c.list_id not in slots.busy_lists]
    if not eligible:
        return None
    inboxes = sorted({c.inbox for c in eligible})
    if slots.last_inbox is not None:
        later = [i for i in inboxes if i > slots.last_inbox]
        inboxes = later + [i for i in inboxes if i <= slots.last_inbox]
    chosen_inbox = inboxes[0]
    return min((c for c in eligible if c.inbox == chosen_inbox), key=lambda c: (c.file_id, c.index))


#: Marketo imports an instance's batches first in, first out, two at a time:
#: only our oldest few open batches can be finishing, so only they are polled
#: on the short schedule. The API budget (100 calls / 20 s, shared) goes further.
HEAD_POLLS = 3
#: Batches further back are still looked at this often (another integration's
#: jobs, or a batch Marketo failed early, can change the order).
BACK_POLL_S = 60.0


@dataclass(frozen=True, slots=True)
class PollPlan:
    chunk_id: int
    batch_id: int  # Marketo numbers batches in submission order: FIFO position
    due: float
    last_polled: float


def polls_due(plans: Iterable[PollPlan], now: float, *, head: int = HEAD_POLLS, back: float = BACK_POLL_S) -> list[int]:
    """The chunks whose batch should be polled now, oldest batch first."""
    due = []
    for position, plan in enumerate(sorted(plans, key=lambda p: p.batch_id)):
        if plan.due > now:
            continue
        if position < head or now - plan.last_polled >= back:
            due.append(plan.chunk_id)
    return due


def next_poll_at(plans: Iterable[PollPlan], *, head: int = HEAD_POLLS, back: float = BACK_POLL_S) -> float | None:
    """When ``polls_due`` will next return something (None when nothing is open)."""
    times = [
        plan.due if position < head else max(plan.due, plan.last_polled + back)
        for position, plan in enumerate(sorted(plans, key=lambda p: p.batch_id))
    ]
    return min(times, default=None)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    state: ChunkState
    marketo_status: str | None  # Complete / Failed, None when never accepted
    rows: int
    processed: int | None  # None: Marketo did not say (program members may omit counters)
    failed: int | None
    warned: int | None


def imported_rows(r: ChunkResult) -> int:
    """Rows a chunk put into Marketo; unknown counters of a Complete batch count what its failure file did not list."""
    if r.state is not ChunkState.DONE or r.marketo_status != "Complete":
        return 0
    if r.processed is not None:
        return r.processed
    return max(r.rows - (r.failed or 0), 0)


def file_outcome(chunks: Iterable[ChunkResult]) -> Outcome:
    """Complete when every row went in; Failed when none did; Partial in between.

    Rows with warnings were imported (Marketo's own rule), so they do not
    make a file Partial: they are reported in the warnings file. Failed rows
    not known (a shared batch whose failures could not all be told apart)
    are never taken for none: such a file is at best Partial.
    """
    results = list(chunks)
    if not results:
        return Outcome.FAILED
    total = sum(r.rows for r in results)
    imported = sum(imported_rows(r) for r in results)
    clean = all(
        r.state is ChunkState.DONE and r.marketo_status == "Complete" and r.failed == 0 for r in results
    )
    if clean and imported >= total:
        return Outcome.COMPLETE
    if imported == 0:
        return Outcome.FAILED
    return Outcome.PARTIAL


# ---- what an event does to a chunk -----------------------------------------------


class ChunkAction(enum.StrEnum):
    RECORD_BATCH = "record_batch"  # accepted: the batchId is known
    REQUEUE = "requeue"  # not executed: send again later, nothing to tell the partner
    REQUEUE_UNKNOWN = "requeue_unknown"  # may have been created: wait it out, resubmit, say so
    FAIL = "fail"  # Marketo refused this chunk (or it cannot be read): the file's problem


class Pause(enum.StrEnum):
    NONE = "none"
    SUBMITS = "submits"  # transient trouble: every submit waits
    QUEUE_FULL = "queue_full"  # 1016: every submit waits, longer each time in a row
    LIST = "list"  # 1019: imports into that list wait
    API = "api"  # daily quota: every call waits
    MISCONFIGURED = "misconfigured"  # 603, bad credentials: every submit waits; /readyz says why
    TARGET = "target"  # a route's target is refused (no such list, program, partition): its imports wait
    WAIT = "wait"  # the instance's rate window or a retry's backoff: every call waits as long as asked


@dataclass(frozen=True, slots=True)
class SubmitDecision:
    action: ChunkAction
    pause: Pause = Pause.NONE
    #: End this pass's submissions (the next chunk would meet the same answer).
    stop: bool = False


def after_submit(error: BaseException | None) -> SubmitDecision:
    """What a submit's outcome does: to the chunk, to further submissions.

    ``error`` is what ``MarketoClient.submit`` raised (None: accepted). Only
    the answers Marketo documents as "not executed" requeue silently; a lost
    reply, a gateway 5xx or a body that is not JSON may have created the job.
    """
    match error:
        case None:
            return SubmitDecision(ChunkAction.RECORD_BATCH)
        case sqlite3.Error() | errors.StoreError():
            # The journal failed us around the upload (before it, or recording "not executed"):
            # the chunk is not the problem. Try again later; never fail the file for it.
            return SubmitDecision(ChunkAction.REQUEUE, Pause.SUBMITS, stop=True)
        case errors.OutcomeUnknownError():
            return SubmitDecision(ChunkAction.REQUEUE_UNKNOWN)
        case errors.WouldWaitError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.WAIT, stop=True)
        case errors.MisconfiguredError(scope="route"):
            return SubmitDecision(ChunkAction.REQUEUE, Pause.TARGET)
        case errors.MisconfiguredError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.MISCONFIGURED, stop=True)
        case errors.RejectedError() if error.endpoint == "identity":
            return SubmitDecision(ChunkAction.REQUEUE, Pause.MISCONFIGURED, stop=True)
        case errors.RejectedError():
            return SubmitDecision(ChunkAction.FAIL)
        case errors.QueueFullError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.QUEUE_FULL, stop=True)
        case errors.ListBusyError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.LIST)
        case errors.QuotaExceededError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.API, stop=True)
        case errors.MarketoError():
            return SubmitDecision(ChunkAction.REQUEUE, Pause.SUBMITS, stop=True)
        case OSError():
            # The chunk in state_dir could not be read: nothing was sent.
            return SubmitDecision(ChunkAction.FAIL)
        case _:
            # A bug of ours on this one chunk: failing it (original kept) beats
            # retrying it first in every pass forever.
            return SubmitDecision(ChunkAction.FAIL)


def pause_seconds(pause: Pause, *, streak: int = 1, quota_resets_in: float = 0.0, asked: float = 0.0) -> float:
    """How long a pause lasts.

    ``streak`` counts the same trouble in a row (1016s, transient errors); ``asked`` is what the
    error asked for (``WouldWaitError``, or the client's retry delay for a transient error).
    """
    match pause:
        case Pause.NONE:
            return 0.0
        case Pause.WAIT:
            return max(asked, 0.0)
        case Pause.QUEUE_FULL:
            return min(D.QUEUE_FULL_PAUSE_S * max(streak, 1), D.QUEUE_FULL_PAUSE_MAX_S)
        case Pause.LIST:
            return D.LIST_BUSY_PAUSE_S
        case Pause.API:
            return max(D.QUOTA_PAUSE_MIN_S, quota_resets_in)
        case Pause.MISCONFIGURED | Pause.TARGET:
            return D.MISCONFIGURED_PAUSE_S
        case Pause.SUBMITS if asked > 0:
            # The client's own retry delay (a backoff, the 20 s window after a 606), longer each time in a row.
            return min(asked * 2.0 ** max(streak - 1, 0), max(asked, D.BACKOFF_CAP_S))
        case Pause.SUBMITS:
            return D.TRANSIENT_PAUSE_S


def resubmit_hold(size_bytes: int, *, least: float = D.RESUBMIT_HOLD_S) -> float:
    """Seconds to wait before resending a chunk whose first submit may have created a job.

    Two copies of one import must never run at once (concurrent upserts can
    create duplicate records): the copy Marketo may hold is given as long as
    a slow import of that size takes.
    """
    return min(max(least, size_bytes / D.RESUBMIT_HOLD_BYTES_PER_S), max(least, D.RESUBMIT_HOLD_MAX_S))


class PollAction(enum.StrEnum):
    WAIT = "wait"  # not finished: poll again on the schedule
    RETRY = "retry"  # the call failed; says nothing about the batch: poll again later
    FINISHED = "finished"  # Complete or Failed: fetch the result files
    GONE = "gone"  # Marketo's own "batch not found": the batch is lost
    PAUSE_API = "pause_api"  # quota or credentials: every call waits
    WAIT_INSTANCE = "wait_instance"  # not sent: the instance's calls wait as long as asked (``WouldWaitError``)


def after_poll(error: BaseException | None, *, finished: bool = False) -> PollAction:
    """What a status poll's outcome does to a submitted chunk.

    Only Marketo's own answer for an unknown batch ends one; a 429 page, a
    5xx or a body that cannot be parsed says nothing about the batch.
    """
    match error:
        case None:
            return PollAction.FINISHED if finished else PollAction.WAIT
        case errors.BatchNotFoundError():
            return PollAction.GONE
        case errors.QuotaExceededError() | errors.MisconfiguredError():
            return PollAction.PAUSE_API
        case errors.WouldWaitError():
            return PollAction.WAIT_INSTANCE
        case _:
            return PollAction.RETRY


def batch_gone(said: int, since: float, now: float) -> bool:
    """Whether Marketo's "no such batch", said ``said`` times in a row since ``since``, is final."""
    return said >= D.GONE_ANSWERS and now - since >= D.GONE_AFTER_S


class FetchAction(enum.StrEnum):
    STORE = "store"  # the file (or "no rows") is in hand
    GIVE_UP = "give_up"  # Marketo says it has no such file for this batch: report without it
    RETRY = "retry"  # try again later
    WAIT_INSTANCE = "wait_instance"  # not sent: the instance's calls wait as long as asked (``WouldWaitError``)


def after_fetch(error: BaseException | None) -> FetchAction:
    match error:
        case None:
            return FetchAction.STORE
        case errors.WouldWaitError():
            return FetchAction.WAIT_INSTANCE
        case errors.BatchNotFoundError() | errors.RejectedError():
            return FetchAction.GIVE_UP
        case _:
            return FetchAction.RETRY


class ClaimRecovery(enum.StrEnum):
    CONFIRM = "confirm"  # the rename happened: the file is ours
    FORGET = "forget"  # it never happened: the file is still in the inbox (found again) or gone


def recover_claim(in_processing_area: bool) -> ClaimRecovery:
    """What start-up does with a file a crash left in ``claiming``."""
    return ClaimRecovery.CONFIRM if in_processing_area else ClaimRecovery.FORGET


class Ownership(enum.StrEnum):
    KEEP = "keep"  # the configured instance of that name is where the chunk's batch is
    RENAMED = "renamed"  # the endpoint it went to is configured under another name: follow it
    ORPHANED = "orphaned"  # no configured instance can finish it: fail it, with why


@dataclass(frozen=True, slots=True)
class OwnerDecision:
    action: Ownership
    instance: str | None = None  # the new name (RENAMED)
    reason: str = ""  # for the status file (ORPHANED)


def chunk_owner(
    state: ChunkState,
    instance: str,
    sent_to: str | None,
    configured: Mapping[str, str],
    last_known: str | None = None,
    *,
    maybe_sent: bool = False,
) -> OwnerDecision:
    """Which configured instance finishes a chunk journalled under ``instance``.

    Args:
        state: the chunk's state.
        instance: the instance name the journal has for it.
        sent_to: the endpoint its bytes went to (None: not sent, or sent before
            endpoints were journalled).
        configured: each configured instance's name and endpoint
            (``MarketoSettings.subscription``).
        last_known: the endpoint ``instance`` had when the journal last saw it.
        maybe_sent: a pending chunk whose earlier submission's answer was lost: it may be imported.

    A batch lives where its bytes went, whatever its instance is called now; a
    chunk not sent yet keeps its instance's name if that is still configured
    (a changed endpoint is the operator's choice), else follows the name's
    last endpoint. Unfinished work no instance can reach is failed with the
    reason, so its file is reported, never left stuck.
    """
    if state in (ChunkState.DONE, ChunkState.ERROR):
        return OwnerDecision(Ownership.KEEP)
    if state is ChunkState.PENDING or sent_to is None:
        if instance in configured:
            return OwnerDecision(Ownership.KEEP)
        where = sent_to or last_known
    else:
        if configured.get(instance) == sent_to:
            return OwnerDecision(Ownership.KEEP)
        where = sent_to
    for name, endpoint in configured.items():
        if where is not None and endpoint == where:
            return OwnerDecision(Ownership.RENAMED, instance=name)
    if state is ChunkState.PENDING and not maybe_sent:
        why = f"the Marketo instance {instance!r} is no longer configured; this chunk was not sent"
    else:
        at = f" ({where})" if where else ""
        why = (
            f"this chunk was sent to the Marketo instance {instance!r}{at}, which is no longer configured: "
            "whether its rows were imported is unknown"
        )
    return OwnerDecision(Ownership.ORPHANED, reason=why)
