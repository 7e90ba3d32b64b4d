"""Predictive polling: when to ask Marketo about a batch (pure; every time is a parameter).

A status call costs one call of a budget shared with every other integration
(and of the daily quota), while a finish seen late can leave one of Marketo's
import slots idle. So a batch is polled first around its predicted finish, then
adaptively, from what a per-instance ``Predictor`` learnt of earlier ones.

The model: Marketo imports an instance's batches first in, first out,
``slots`` (2) at a time. A batch holds its slot for ``wait`` (Queued although
a slot is free: Marketo's own dispatch, other integrations' jobs) plus
``overhead + per_row * rows`` Importing. A batch with fewer than ``slots`` of
ours ahead has a slot now (it is at the head); one further back gets one when
a batch ahead finishes, which ``start_at`` plays out, taking each batch ahead
at its whole time (late for one half done: it is planned again, for free,
when one ahead is seen finished).

Use from dispatch (one ``Predictor`` per instance; ``ahead``: the rows of our
open batches submitted before this one, oldest first; a batch is at the head
once fewer than ``slots`` are ahead; times are monotonic)::

    submitted:         due = pred.first_poll(now, rows, ahead, poll_interval=...)
    Queued/Importing:  pred.observe_open(rows, head_at, now)     # if at the head
                       due = pred.next_poll(now, submitted_at=..., rows=..., polls_so_far=...,
                                            last_status=..., ahead=..., started_at=...,
                                            head_at=..., poll_interval=...)
    Complete:          freed = pred.observe(rows, submitted_at, started_at, now, head_at=...,
                                            last_open_at=..., last_queued_at=...)
      then, oldest first, a batch that reached the head gets head_at = min(freed, started_at or now)
      (one freed time per batch seen finished), and each batch no poll has seen Importing:
                       due = pred.first_poll(now, rows, ahead, head_at=head_at, poll_interval=...)

The ``POLL_*`` constants are the tunables, named to move into ``dropzone.defaults`` as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dropzone import defaults as D

# --- Priors: what is assumed before the first batch finishes ------------------------
# Short on purpose (real Marketo takes 30 s and more): a poll too early costs one call and the
# back-off finds a slow instance in a few (a cold start polls at 0.5, 1, 1.75, 2.9, 4.6, 7.1 s,
# then every poll_interval, much as dropzone always did), while an estimate too long is slow
# to correct (a batch found finished says only "no later than that") and idles slots meanwhile.
POLL_PRIOR_WAIT_S = 0.0
"""Queued once a slot is free for it."""
POLL_PRIOR_OVERHEAD_S = 0.5
"""Importing time of an empty job."""
POLL_PRIOR_ROW_S = 0.00001
"""Importing time per row (100,000 rows/s)."""

# --- Learning ------------------------------------------------------------------------
POLL_LEARN_RATE = 0.5
"""Weight of a measured batch (one that finished between two polls) once warmed up."""
POLL_PRIOR_WEIGHT = 0.5
"""The prior counts as half a batch: the first measured one has weight 2/3."""
POLL_WARMUP = 3
"""Batches observed before outliers are clamped; until then the prior may be far off, and a
batch still open past its prediction raises the estimate (``observe_open``)."""
POLL_OUTLIER_RATIO = 3.0
"""Once warm, a batch counts as at most this many times (or this fraction of) the prediction:
a job stuck behind another integration's moves the estimate, it does not wreck it."""
POLL_HIT_SHRINK = 0.02
"""A batch found finished by its first poll only says "no later than that": the estimate
shrinks by this fraction, so that first polls keep landing just after the finish."""
POLL_PROBE_AFTER = 8
"""After this many batches in a row found finished by their first poll, first polls come earlier
(a probe): imports may have got much faster, which the shrink above takes long to notice."""
POLL_PROBE_AT = 0.5
"""A probe comes at this fraction of the predicted time: if the batch is not finished, it costs
one poll more (the next comes at the predicted finish), however early it came. Not capped: after
a slow spell (jobs of 120 s, then of 2 s) a probe only one ``poll_interval`` earlier left the
first polls ~110 s late for 8 batches and 43 s late on average over 40; uncapped, 14 s, at the
same polls per batch on steady 2, 60 and 300 s jobs (``tests/bench/bench_predictor.py``)."""
POLL_BRACKET_AT = 0.25
"""A batch found finished after a look found it open is taken to have finished this far into
the gap between the two looks: an estimate a little short costs one poll, which measures again;
one too long lets first polls land ever later, and only a poll that comes too early undoes it."""
POLL_ROW_PIVOT = 10_000
"""Rows at which an error is put equally on the per-job and the per-row time: a 20-row batch
says nothing of the per-row time, and batches of one size cannot tell the two apart."""
POLL_WAIT_MAX_S = 600.0
POLL_OVERHEAD_MIN_S = 0.05
POLL_OVERHEAD_MAX_S = 1_800.0
POLL_ROW_MAX_S = 0.05
"""Bounds on the estimates (20 rows/s is slower than anything Marketo documents)."""

# --- Scheduling ----------------------------------------------------------------------
POLL_MARGIN = 0.06
"""Polls come this fraction of the predicted time after the predicted finish: a poll just too
early costs another call, one a little late a little latency."""
POLL_MISS_GAP = 0.1
"""After a poll found a batch still Importing past its predicted finish, the next waits at
least this fraction of its predicted Importing time (up to the cap)."""
POLL_FLOOR_S = 0.5
"""Least wait between two polls of one batch."""
POLL_EARLY_S = 0.5
"""A first poll comes this much before the margin above would put it: for a job of seconds the
margin is smaller than the floor, and this makes two polls, a floor apart, that straddle the
finish (a short job seen late is a slot idle for a large share of a job); for longer jobs it
changes nothing that matters."""
POLL_BACKOFF = 1.5
"""Each poll that finds a batch unfinished multiplies the least wait by this (from the floor, up
to the cap): a prediction that keeps being wrong costs a logarithmic number of calls, and the
looks that measure a new instance stay close together."""
POLL_BEHIND_S = 60.0
"""A batch with ``slots`` of ours ahead cannot start before one of them finishes, and their own
polls will tell (then it is planned again): it is polled at its predicted finish but never
sooner than this (``jobs.BACK_POLL_S``), which covers Marketo not keeping to its order."""
QUEUED = "Queued"


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@dataclass
class Predictor:
    """How long one Marketo instance's imports take, learnt from our finished batches."""

    slots: int = D.MARKETO_IMPORTING
    wait: float = POLL_PRIOR_WAIT_S
    overhead: float = POLL_PRIOR_OVERHEAD_S
    per_row: float = POLL_PRIOR_ROW_S
    observed: int = 0
    #: Batches in a row found finished by their first poll; those seen by one poll round count
    #: once (two batches that started together say the same thing).
    hits: int = 0
    hit_at: float | None = None

    def run_time(self, rows: int) -> float:
        """Predicted time Importing."""
        return self.overhead + self.per_row * max(rows, 0)

    def slot_time(self, rows: int) -> float:
        """Predicted time a batch holds an import slot."""
        return self.wait + self.run_time(rows)

    def start_at(self, now: float, ahead: Sequence[int]) -> float:
        """When a slot frees for a batch behind ``ahead`` (their rows, oldest first)."""
        free = [now] * self.slots
        for rows in ahead:
            first = free.index(min(free))
            free[first] += self.slot_time(rows)
        return min(free)

    def finish_at(self, now: float, rows: int, ahead: Sequence[int]) -> float:
        return self.start_at(now, ahead) + self.slot_time(rows)

    def first_poll(
        self,
        now: float,
        rows: int,
        ahead: Sequence[int],
        *,
        head_at: float | None = None,
        poll_interval: float = D.POLL_INTERVAL_S,
    ) -> float:
        """When to poll a batch no poll has seen Importing: around its predicted finish.

        Free to call again whenever the batches ahead or the estimates
        change. ``head_at``: when a slot freed for it, once it is at the head
        (then ``ahead`` no longer matters). A batch behind ``slots`` of ours
        is left alone at least POLL_BEHIND_S: it is planned again when one of
        them finishes.
        """
        slot = self.slot_time(rows)
        margin = POLL_MARGIN * slot - POLL_EARLY_S
        if self.hits >= POLL_PROBE_AFTER:
            margin -= (1.0 - POLL_PROBE_AT) * slot
        if head_at is not None:
            return max(head_at + slot + margin, now + POLL_FLOOR_S)
        least = POLL_BEHIND_S if len(ahead) >= self.slots else POLL_FLOOR_S
        return max(self.finish_at(now, rows, ahead) + margin, now + least)

    def next_poll(
        self,
        now: float,
        *,
        submitted_at: float,
        rows: int,
        polls_so_far: int,
        last_status: str,
        ahead: Sequence[int],
        started_at: float | None = None,
        head_at: float | None = None,
        poll_interval: float = D.POLL_INTERVAL_S,
    ) -> float:
        """When to poll again a batch that the poll at ``now`` found unfinished.

        ``polls_so_far``: polls that found it unfinished, this one included;
        ``started_at``: the first poll that saw it Importing; ``head_at`` as
        for ``first_poll`` (None: it was at the head when submitted).
        """
        least = POLL_FLOOR_S * POLL_BACKOFF ** min(max(polls_so_far - 1, 0), 64)
        run = self.run_time(rows)
        if last_status == QUEUED and len(ahead) >= self.slots:
            # Behind our own batches: planned again when one of them finishes.
            return max(self.finish_at(now, rows, ahead), now + POLL_BEHIND_S)
        if last_status == QUEUED:
            due = now + run  # not started: all of its import is still to come
        else:
            start = (submitted_at if head_at is None else head_at) + self.wait
            if started_at is not None:
                start = min(start, started_at)
            due = start + run * (1.0 + POLL_MARGIN)
            least = max(least, POLL_MISS_GAP * run)
        return now + min(max(due - now, least, POLL_FLOOR_S), poll_interval)

    def observe(
        self,
        rows: int,
        submitted_at: float,
        started_at: float | None,
        finished_at: float,
        *,
        head_at: float | None = None,
        last_open_at: float | None = None,
        last_queued_at: float | None = None,
    ) -> float:
        """Learn from a batch the poll at ``finished_at`` found Complete; returns when it likely finished.

        ``last_open_at``: the last poll that found it unfinished (None: none
        did); ``last_queued_at``: the last that found it Queued. The batch
        that takes its slot counts from the time returned, not from when we
        looked, so that late sightings do not add up along the queue. Not for
        Failed batches: they may stop early.
        """
        head = submitted_at if head_at is None else head_at
        if finished_at <= head:
            return finished_at
        predicted = self.slot_time(rows)
        expected = head + predicted
        rate = 1.0
        if last_open_at is not None and last_open_at > head:
            self.hits = 0
            # Finished between two looks (POLL_BRACKET_AT says where). Its successor counts from
            # the later look: counted from a little late, it learns a little short and is polled
            # a little early, which its next look measures; counted from too early, it would
            # learn long, which only a poll that comes too early undoes.
            total = last_open_at + POLL_BRACKET_AT * (finished_at - last_open_at) - head
            finished = finished_at
            rate = max(POLL_LEARN_RATE, 1.0 / (self.observed + 1 + POLL_PRIOR_WEIGHT))
        else:
            # Finished by its first look, which only says "no later than that": the
            # prediction stands for the finish, and the estimate shrinks a little.
            finished = min(expected, finished_at)
            if self.hit_at == finished_at:
                return finished
            self.hits += 1
            self.hit_at = finished_at
            # A probe that finds it done may be catching up on a queue that ran unwatched
            # (the head counted from a late sighting): at most halve per batch.
            total = max((finished - head) * (1.0 - POLL_HIT_SHRINK), predicted * POLL_PROBE_AT)
        if self.observed >= POLL_WARMUP:
            total = _clamp(total, predicted / POLL_OUTLIER_RATIO, predicted * POLL_OUTLIER_RATIO)
        # Only polls tell the wait from the import: Queued at q means it waited at least
        # q - head, Importing at i at most i - head. Without them the wait stands.
        low = max(last_queued_at - head, 0.0) if last_queued_at is not None else 0.0
        high = min(started_at - head, total) if started_at is not None else total
        wait = _clamp(self.wait, min(low, high), high)
        self.wait = _clamp(self.wait + rate * (wait - self.wait), 0.0, POLL_WAIT_MAX_S)
        self._learn_run(rows, total - wait, rate)
        self.observed += 1
        return finished

    def observe_open(self, rows: int, head_at: float, now: float) -> None:
        """Learn from a poll at ``now`` that found a batch at the head since ``head_at`` unfinished.

        Only while warming up: then it is all there is to go on, and it keeps
        the batches behind from being polled on a prior already proven short.
        """
        if self.observed < POLL_WARMUP and now - head_at > self.slot_time(rows):
            self._learn_run(rows, now - head_at - self.wait, 1.0)

    def _learn_run(self, rows: int, run: float, rate: float) -> None:
        # A least-squares step (Kaczmarz) on (overhead, per_row * POLL_ROW_PIVOT): small batches
        # correct the per-job time, large ones mostly the per-row time, and batches of several
        # sizes converge on both. At rate 1 the step fits this batch exactly.
        error = rate * (run - self.run_time(rows))
        x = max(rows, 0) / POLL_ROW_PIVOT
        step = error / (1.0 + x * x)
        self.overhead = _clamp(self.overhead + step, POLL_OVERHEAD_MIN_S, POLL_OVERHEAD_MAX_S)
        self.per_row = _clamp(self.per_row + step * x / POLL_ROW_PIVOT, 0.0, POLL_ROW_MAX_S)


# ---- the open batches of one instance, as dispatch plans their polls ------------------------------


@dataclass
class OpenBatch:
    """What the predictor needs to know of one open batch (monotonic times)."""

    batch_id: int
    due: float
    last_polled: float
    rows: int  # a shared batch's: every chunk's
    submitted_at: float
    polls: int = 0  # polls that found it unfinished
    head_at: float | None = None  # when an import slot freed for it (None: at the head when submitted)
    started_at: float | None = None  # the first poll that saw it Importing
    last_open_at: float | None = None
    last_queued_at: float | None = None
    learn: bool = True  # False for a batch found in the journal: its times are not ours to learn from
    gone_since: float | None = None  # the first of Marketo's "no such batch" answers in a row
    gone_said: int = 0  # how many in a row

    @classmethod
    def found(cls, batch_id: int, rows: int, now: float) -> OpenBatch:
        """A batch found in the journal (a restart, a renamed instance): poll it now, learn nothing from it."""
        return cls(batch_id=batch_id, due=now, last_polled=now, rows=rows, submitted_at=now, learn=False)


def rows_ahead(batches: Iterable[OpenBatch], batch_id: int) -> list[int]:
    """The rows of our open batches Marketo took before this one, oldest first (its FIFO)."""
    return [b.rows for b in sorted(batches, key=lambda b: b.batch_id) if b.batch_id < batch_id]


def still_open(
    pred: Predictor, batch: OpenBatch, status: str, now: float, batches: Iterable[OpenBatch], *, poll_interval: float
) -> None:
    """A poll found ``batch`` Queued or Importing: learn from it, and plan its next poll."""
    batch.polls += 1
    batch.last_open_at = now
    if status == QUEUED:
        batch.last_queued_at = now
    elif batch.started_at is None:
        batch.started_at = now
    if batch.head_at is not None:
        pred.observe_open(batch.rows, batch.head_at, now)
    batch.due = pred.next_poll(
        now, submitted_at=batch.submitted_at, rows=batch.rows, polls_so_far=batch.polls, last_status=status,
        ahead=rows_ahead(batches, batch.batch_id), started_at=batch.started_at, head_at=batch.head_at,
        poll_interval=poll_interval,
    )


def replan(pred: Predictor, batches: Iterable[OpenBatch], now: float, freed: float, *, poll_interval: float) -> None:
    """A batch of ours finished: the next one in Marketo's queue has its slot (since ``freed``), and
    every batch not yet seen Importing is planned again around its new predicted finish."""
    ahead: list[int] = []
    for batch in sorted(batches, key=lambda b: b.batch_id):
        if batch.head_at is None and len(ahead) < pred.slots:
            batch.head_at = min(freed, batch.started_at or now)
            freed = now  # one slot freed: the next batch to reach the head counts from our look
        if batch.started_at is None:
            batch.due = pred.first_poll(now, batch.rows, ahead, head_at=batch.head_at, poll_interval=poll_interval)
        ahead.append(batch.rows)
