"""Import jobs and the subscription's one FIFO queue (pure; time is passed in).

Owns the lifecycle Queued → Importing → Complete | Failed, the 2-importing /
10-open limits, dwell times, counters that grow while Importing, and batchId
retention. The queue is a discrete-event model: ``advance(now)`` replays
every start and finish due by ``now`` at the exact time it happened, so the
answer never depends on how often anyone looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .rows import RowOutcome


class JobStatus(StrEnum):
    QUEUED = "Queued"
    IMPORTING = "Importing"
    COMPLETE = "Complete"
    FAILED = "Failed"


OPEN = frozenset({JobStatus.QUEUED, JobStatus.IMPORTING})

# Kinds as the public API names them; "background" jobs belong to other integrations.
KINDS = ("leads", "customobject", "programmember", "background")


@dataclass
class Job:
    """One import job. ``outcomes`` are decided at submit and revealed as the job runs."""

    batch_id: int
    kind: str
    submitted_at: float
    queued_dwell: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)
    param_sources: dict[str, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    outcomes: list[RowOutcome] = field(default_factory=list)
    delimiter: str = ","
    nbytes: int = 0
    filename: str | None = None
    fail_message: str | None = None
    status: JobStatus = JobStatus.QUEUED
    reserved_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    history: list[tuple[str, float]] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.kind == "background"

    @property
    def start_at(self) -> float:
        assert self.reserved_at is not None
        return self.reserved_at + self.queued_dwell

    @property
    def end_at(self) -> float:
        assert self.started_at is not None
        return self.started_at + self.duration

    def counts(self, now: float) -> tuple[int, int, int]:
        """(processed, failed, with warning) as a status call at ``now`` reports them.

        Counters are "so far" (swagger): while Importing they cover the rows
        already done, in file order.
        """
        if self.status is JobStatus.QUEUED or self.status is JobStatus.FAILED:
            return 0, 0, 0
        seen = self.outcomes
        if self.status is JobStatus.IMPORTING:
            done = 1.0 if self.duration <= 0 else max(0.0, min(1.0, (now - (self.started_at or now)) / self.duration))
            seen = self.outcomes[: math.floor(done * len(self.outcomes))]
        processed = sum(1 for o in seen if o.imported)
        failed = sum(1 for o in seen if o.failure is not None and not o.dropped)
        warned = sum(1 for o in seen if o.imported and o.warning is not None)
        return processed, failed, warned

    def import_seconds(self, now: float) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else now
        return max(0, round(end - self.started_at))


class JobQueue:
    """All jobs of the subscription, in submission order."""

    def __init__(self, *, max_importing: int, max_open: int, retention: float, first_batch_id: int) -> None:
        self.max_open = max_open
        self._retention = retention
        self._next_id = first_batch_id
        self._jobs: dict[int, Job] = {}
        self._waiting: list[Job] = []
        self._active: list[Job] = []
        # One entry per free import slot: the time it became free.
        self._free_slots: list[float] = [-math.inf] * max_importing

    def next_batch_id(self) -> int:
        batch_id = self._next_id
        self._next_id += 1
        return batch_id

    def open_jobs(self) -> list[Job]:
        return [job for job in self._jobs.values() if job.status in OPEN]

    def is_full(self) -> bool:
        return len(self.open_jobs()) >= self.max_open

    def is_idle(self) -> bool:
        return not self._waiting and not self._active

    def submit(self, job: Job) -> None:
        """Append ``job`` to the FIFO; call ``advance(job.submitted_at)`` first."""
        job.history.append((JobStatus.QUEUED.value, job.submitted_at))
        self._jobs[job.batch_id] = job
        self._waiting.append(job)

    def get(self, batch_id: int, now: float) -> Job | None:
        """The job, or None once unknown or past retention."""
        job = self._jobs.get(batch_id)
        if job is None or now - job.submitted_at > self._retention:
            return None
        return job

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def advance(self, now: float) -> list[Job]:
        """Apply every transition due by ``now``; returns the jobs that finished."""
        finished: list[Job] = []
        while True:
            event = self._next_event()
            if event is None or event[0] > now:
                break
            at, step, job = event
            if step == 0:
                self._finish(job, at)
                finished.append(job)
            elif step == 1:
                job.status = JobStatus.IMPORTING
                job.started_at = at
                job.history.append((JobStatus.IMPORTING.value, at))
            else:
                self._reserve(job, at)
        self._forget_expired(now)
        return finished

    def _next_event(self) -> tuple[float, int, Job] | None:
        # Ties: a finish frees its slot before a start or a reservation at the same instant.
        events: list[tuple[float, int, int, Job]] = []
        for job in self._active:
            if job.status is JobStatus.QUEUED:
                events.append((job.start_at, 1, job.batch_id, job))
            else:
                events.append((job.end_at, 0, job.batch_id, job))
        if self._free_slots and self._waiting:
            head = self._waiting[0]
            events.append((max(head.submitted_at, min(self._free_slots)), 2, head.batch_id, head))
        if not events:
            return None
        at, step, _, job = min(events, key=lambda e: (e[0], e[1], e[2]))
        return at, step, job

    def _reserve(self, job: Job, at: float) -> None:
        # The head job holds its slot while it dwells in Queued, as one that is about to start.
        self._free_slots.remove(min(self._free_slots))
        self._waiting.pop(0)
        job.reserved_at = at
        self._active.append(job)

    def _finish(self, job: Job, at: float) -> None:
        self._active.remove(job)
        self._free_slots.append(at)
        job.finished_at = at
        job.status = JobStatus.FAILED if job.fail_message else JobStatus.COMPLETE
        job.history.append((job.status.value, at))

    def _forget_expired(self, now: float) -> None:
        expired = [
            bid
            for bid, job in self._jobs.items()
            if job.status not in OPEN and now - job.submitted_at > self._retention
        ]
        for bid in expired:
            del self._jobs[bid]
