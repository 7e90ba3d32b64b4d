"""File and chunk lifecycles, and the pure decisions the daemon takes on them.

Owns: the states, the transitions allowed between them, what a crash in each
state means (``recovery_action``), which pending chunk goes to Marketo next
(``pick_next``), when a batch is polled again (``poll_delay``) and what a file's
outcome is once its chunks are done (``file_outcome``). Owns no I/O: the store
persists these states, the daemon acts on them.

A file::

    claiming ──► claimed ──► split ──► finishing ──► done
                    │                     ▲
                    └──── (rejected) ─────┘

A chunk (each one its own Marketo batch)::

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class FileState(enum.StrEnum):
    CLAIMING = "claiming"  # row written, rename into the processing area not yet confirmed
    CLAIMED = "claimed"  # the original is in the processing area
    SPLIT = "split"  # chunks recorded; they move on their own
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
    FileState.CLAIMED: frozenset({FileState.SPLIT, FileState.FINISHING}),
    FileState.SPLIT: frozenset({FileState.FINISHING}),
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


#: First poll soon after the submit, so small jobs finish fast.
FIRST_POLL_S = 0.5


def poll_delay(polls_so_far: int, poll_interval: float) -> float:
    """Wait before the next status call: 0.5, 1, 2, 4 … seconds, capped at ``poll_interval``."""
    return min(poll_interval, FIRST_POLL_S * (2 ** min(polls_so_far, 20)))


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
    processed: int
    failed: int
    warned: int


def file_outcome(chunks: Iterable[ChunkResult]) -> Outcome:
    """Complete when every row went in; Failed when none did; Partial in between.

    Rows with warnings were imported (Marketo's own rule), so they do not
    make a file Partial: they are reported in the warnings file.
    """
    results = list(chunks)
    if not results:
        return Outcome.FAILED
    total = sum(r.rows for r in results)
    imported = sum(r.processed for r in results if r.state is ChunkState.DONE and r.marketo_status == "Complete")
    clean = all(
        r.state is ChunkState.DONE and r.marketo_status == "Complete" and r.failed == 0 for r in results
    )
    if clean and imported >= total:
        return Outcome.COMPLETE
    if imported == 0:
        return Outcome.FAILED
    return Outcome.PARTIAL
