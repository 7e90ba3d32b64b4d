"""Predictive polling (``dropzone.polling``): plain values first, then a tiny discrete-event Marketo.

The simulation is Marketo as its docs and the bundled simulator describe it: one FIFO per
instance, two importing at a time, a job holding its slot for a dwell in Queued and then
``per_job + rows * per_row`` Importing. Its dispatcher drives the predictor the way
``dispatch`` is meant to (see the module docstring of ``dropzone.polling``), so the figures
it asserts are the issue's: polls per batch at realistic job times, and slot utilization
on 16 files of 2 s jobs. The last tests run the same simulation on schedules that must fail
it (today's, a late one, one that never re-plans), so it is known to be able to.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from dropzone import polling
from dropzone.polling import Predictor

# ---- the simulation -------------------------------------------------------------------


@dataclass
class Job:
    rows: int
    submitted_at: float
    duration: float
    reserved_at: float | None = None  # a slot freed for it; it dwells Queued, then imports
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class Marketo:
    """FIFO, ``slots`` at a time; a job holds its slot from reservation to finish."""

    slots: int = 2
    dwell: float = 0.0
    per_job: float = 2.0
    per_row: float = 0.0
    jitter: float = 0.0  # each job's time varies by up to this fraction, either way
    seed: int = 12
    change: tuple[int, float] | None = None  # (n, s): from the n-th job on, per_job is s
    jobs: list[Job] = field(default_factory=list)

    def submit(self, now: float, rows: int) -> int:
        spread = 1.0 + self.jitter * (2.0 * random.Random(self.seed * 100_003 + len(self.jobs)).random() - 1.0)
        per_job = self.per_job
        if self.change is not None and len(self.jobs) >= self.change[0]:
            per_job = self.change[1]
        self.jobs.append(Job(rows, now, (per_job + self.per_row * rows) * spread))
        self._schedule()
        return len(self.jobs) - 1

    def _schedule(self) -> None:
        # Every job's times follow from the submit times alone: replay the FIFO.
        free = [0.0] * self.slots
        for job in self.jobs:
            slot = free.index(min(free))
            job.reserved_at = max(job.submitted_at, free[slot])
            job.started_at = job.reserved_at + self.dwell
            job.finished_at = job.started_at + job.duration
            free[slot] = job.finished_at

    def status(self, batch: int, now: float) -> str:
        job = self.jobs[batch]
        assert job.started_at is not None and job.finished_at is not None
        if now >= job.finished_at:
            return "Complete"
        return "Importing" if now >= job.started_at else "Queued"


@dataclass
class Open:
    """What the dispatcher keeps per open batch."""

    batch: int
    rows: int
    submitted_at: float
    due: float
    head_at: float | None = None
    polls: int = 0  # polls that found it unfinished
    started_at: float | None = None
    last_open_at: float | None = None
    last_queued_at: float | None = None


@dataclass
class Run:
    polls: list[int]  # per batch: every status call made for it
    seen: list[float]  # per batch: when its Complete was seen
    marketo: Marketo

    @property
    def makespan(self) -> float:
        return max(self.seen)

    @property
    def ideal(self) -> float:
        busy = sum(self.marketo.dwell + j.duration for j in self.marketo.jobs)
        return busy / self.marketo.slots

    @property
    def utilization(self) -> float:
        return self.ideal / self.makespan

    @property
    def mean_polls(self) -> float:
        return sum(self.polls) / len(self.polls)


def simulate(
    files: list[tuple[float, int]],
    marketo: Marketo,
    *,
    predictor: Predictor | None = None,
    max_open: int = 10,
    poll_interval: float = 5.0,
    replan: bool = True,
) -> Run:
    """Drive ``predictor`` over ``files`` (arrival time, rows), one batch each."""
    pred = predictor or Predictor(slots=marketo.slots)
    pending = sorted(files)
    open_: list[Open] = []
    polls = [0] * len(files)
    seen = [0.0] * len(files)
    wake: list[tuple[float, int]] = [(at, -1) for at, _ in pending]
    heapq.heapify(wake)
    now = 0.0

    def ahead_of(b: Open) -> list[int]:
        return [o.rows for o in open_ if o.batch < b.batch]

    def submit_ready() -> None:
        while pending and pending[0][0] <= now and len(open_) < max_open:
            _, rows = pending.pop(0)
            batch = marketo.submit(now, rows)
            ahead = [o.rows for o in open_]
            item = Open(batch, rows, now, pred.first_poll(now, rows, ahead, poll_interval=poll_interval))
            if len(ahead) < pred.slots:
                item.head_at = now
            open_.append(item)
            heapq.heappush(wake, (item.due, batch))

    while pending or open_:
        assert wake, "nothing scheduled while work remains"
        now, _ = heapq.heappop(wake)
        freed: list[float] = []  # when the slots of the batches seen finished freed
        for item in [o for o in open_ if o.due <= now]:
            polls[item.batch] += 1
            status = marketo.status(item.batch, now)
            if status == "Complete":
                freed.append(pred.observe(
                    item.rows, item.submitted_at, item.started_at, now,
                    head_at=item.head_at, last_open_at=item.last_open_at, last_queued_at=item.last_queued_at,
                ))
                seen[item.batch] = now
                open_.remove(item)
                continue
            item.polls += 1
            item.last_open_at = now
            if item.head_at is not None:
                pred.observe_open(item.rows, item.head_at, now)
            if status == "Queued":
                item.last_queued_at = now
            elif item.started_at is None:
                item.started_at = now
            item.due = pred.next_poll(
                now, submitted_at=item.submitted_at, rows=item.rows, polls_so_far=item.polls,
                last_status=status, ahead=ahead_of(item), started_at=item.started_at, head_at=item.head_at,
                poll_interval=poll_interval,
            )
            heapq.heappush(wake, (item.due, item.batch))
        if freed:
            freed.sort()
            for position, item in enumerate(open_):
                if position < pred.slots and item.head_at is None:
                    # A slot freed for it when the batch it waited for finished, or earlier
                    # if a poll already saw it Importing.
                    slot = freed.pop(0) if freed else now
                    item.head_at = min(slot, item.started_at or now)
                if replan and item.started_at is None:
                    item.due = pred.first_poll(
                        now, item.rows, ahead_of(item), head_at=item.head_at, poll_interval=poll_interval
                    )
                    heapq.heappush(wake, (item.due, item.batch))
        submit_ready()
    return Run(polls, seen, marketo)


def after_warmup(run: Run, slots: int = 2) -> list[int]:
    """Polls per batch once something was learnt: the first ``slots`` batches ran cold."""
    return run.polls[slots:]


# ---- plain values -----------------------------------------------------------------------


def steady(seconds: float, *, hits: int = 0) -> Predictor:
    """A predictor that has learnt jobs of ``seconds`` (no wait, no per-row time)."""
    return Predictor(wait=0.0, overhead=seconds, per_row=0.0, observed=10, hits=hits)


def measure(pred: Predictor, rows: int, seconds: float, *, at: float = 1000.0, gap: float = 0.2) -> float:
    """A batch at the head from ``at`` that a poll found Importing just before it finished, then Complete."""
    return pred.observe(rows, at, None, at + seconds + gap, last_open_at=at + seconds - gap)


class TestPriors:
    def test_the_priors_are_short_and_documented(self):
        pred = Predictor()
        assert (pred.wait, pred.overhead, pred.per_row) == (
            polling.POLL_PRIOR_WAIT_S, polling.POLL_PRIOR_OVERHEAD_S, polling.POLL_PRIOR_ROW_S,
        )
        assert pred.slot_time(0) == pytest.approx(0.5)
        assert pred.slot_time(100_000) == pytest.approx(1.5)
        assert pred.slots == 2

    def test_a_cold_start_polls_much_as_dropzone_always_did(self):
        """Today 0.5, 1, 2, 4 s, then poll_interval: nothing learnt yet, little lost."""
        pred, now, times = Predictor(), 0.0, []
        due = pred.first_poll(now, 20, ())
        for polls in range(1, 7):
            times.append(round(due, 2))
            pred.observe_open(20, 0.0, due)
            due = pred.next_poll(
                due, submitted_at=0.0, rows=20, polls_so_far=polls, last_status="Importing",
                ahead=(), started_at=times[0], head_at=0.0, poll_interval=5.0,
            )
        assert times == [0.5, 1.0, 1.75, 2.88, 4.56, 7.09]


class TestQueueModel:
    @pytest.mark.parametrize(
        ("ahead", "start"),
        [((), 0.0), ((20,), 0.0), ((20, 20), 10.0), ((20, 20, 20), 10.0), ((20,) * 4, 20.0), ((20,) * 9, 40.0)],
    )
    def test_two_slots_first_in_first_out(self, ahead, start):
        assert steady(10.0).start_at(0.0, ahead) == start

    def test_larger_batches_ahead_take_longer(self):
        pred = Predictor(wait=0.0, overhead=1.0, per_row=0.001)
        # 2 s and 10 s ahead: a 20-row batch takes the first slot to free, at 2 s, until 3.02 s.
        assert pred.start_at(0.0, (1000, 9000)) == pytest.approx(2.0)
        assert pred.start_at(0.0, (1000, 9000, 20)) == pytest.approx(3.02)
        assert pred.finish_at(0.0, 5000, (1000, 9000)) == pytest.approx(2.0 + 6.0)


class TestFirstPoll:
    def test_just_after_the_predicted_finish(self):
        assert steady(30.0).first_poll(100.0, 20, ()) == pytest.approx(100.0 + 31.8 - 0.5)

    def test_a_job_of_seconds_gets_two_polls_a_floor_apart_around_its_finish(self):
        pred = steady(2.0)
        first = pred.first_poll(0.0, 20, ())
        second = first + again(pred, "Importing", now=first, started_at=first, head_at=0.0)
        assert first < 2.0 < second
        assert second - first == pytest.approx(polling.POLL_FLOOR_S)

    def test_at_the_head_it_counts_from_when_the_slot_freed(self):
        pred = steady(30.0)
        assert pred.first_poll(120.0, 20, (20, 20, 20), head_at=110.0) == pytest.approx(110.0 + 31.8 - 0.5)
        # Predicted finished already: poll now, but not sooner than the floor.
        assert pred.first_poll(200.0, 20, (), head_at=110.0) == pytest.approx(200.0 + polling.POLL_FLOOR_S)

    def test_behind_our_own_batches_it_waits_for_them(self):
        pred = steady(30.0)
        assert pred.first_poll(0.0, 20, (20,) * 4) == pytest.approx(60.0 + 31.8 - 0.5)
        # A short prediction still leaves it alone for a while: the batches ahead will say.
        assert steady(1.0).first_poll(0.0, 20, (20,) * 4) == polling.POLL_BEHIND_S

    def test_never_sooner_than_the_floor(self):
        assert Predictor(wait=0.0, overhead=0.05, per_row=0.0).first_poll(7.0, 1, ()) == 7.5

    @pytest.mark.parametrize(
        ("seconds", "poll_interval", "early"), [(2.0, 5.0, 1.0), (120.0, 5.0, 60.0), (120.0, 30.0, 60.0)]
    )
    def test_after_a_run_of_batches_finished_by_their_first_poll_it_probes(self, seconds, poll_interval, early):
        """Earlier by half the time, however long: a probe that finds the batch unfinished
        costs one poll more, and one that finds it done halves an estimate left long by a slow spell."""
        normal = steady(seconds).first_poll(0.0, 20, (), poll_interval=poll_interval)
        probing = steady(seconds, hits=polling.POLL_PROBE_AFTER).first_poll(0.0, 20, (), poll_interval=poll_interval)
        assert normal - probing == pytest.approx(early)


def again(pred: Predictor, status: str, *, now: float = 50.0, polls: int = 1, ahead=(), **kw) -> float:
    kw.setdefault("poll_interval", 30.0)
    return pred.next_poll(
        now, submitted_at=0.0, rows=20, polls_so_far=polls, last_status=status, ahead=ahead, **kw
    ) - now


class TestNextPoll:
    def test_importing_near_its_predicted_finish(self):
        # At the head since 0, 40 s jobs: predicted to finish at 42.4 (with the margin).
        assert again(steady(40.0), "Importing", now=30.0, started_at=30.0, head_at=0.0) == pytest.approx(12.4)

    def test_importing_past_its_prediction_waits_a_tenth_of_a_job(self):
        assert again(steady(40.0), "Importing", now=45.0, started_at=10.0) == pytest.approx(4.0)

    def test_queued_at_the_head_has_all_of_its_import_to_come(self):
        assert again(steady(20.0), "Queued", ahead=(20,)) == pytest.approx(20.0)

    def test_queued_behind_our_batches_waits_for_them(self):
        assert again(steady(20.0), "Queued", ahead=(20,) * 5) == pytest.approx(2 * 20.0 + 20.0)
        assert again(steady(1.0), "Queued", ahead=(20,) * 5) == polling.POLL_BEHIND_S

    @pytest.mark.parametrize("status", ["Queued", "Importing", "Unknown"])
    def test_capped_at_poll_interval_for_a_batch_that_may_be_finishing(self, status):
        assert again(steady(600.0), status, poll_interval=30.0, started_at=50.0) == 30.0
        assert again(steady(600.0), status, poll_interval=5.0, started_at=50.0) == 5.0

    @pytest.mark.parametrize("status", ["Queued", "Importing"])
    def test_never_sooner_than_the_floor(self, status):
        assert again(steady(0.1), status, started_at=0.0) == polling.POLL_FLOOR_S

    @pytest.mark.parametrize(
        ("polls", "gap"), [(1, 0.5), (2, 0.75), (3, 1.125), (5, 2.53125), (9, 0.5 * 1.5**8), (14, 30.0)]
    )
    def test_wrong_again_and_again_it_backs_off(self, polls, gap):
        assert again(steady(1.0), "Importing", polls=polls, started_at=0.0) == pytest.approx(gap, rel=1e-3)

    @pytest.mark.parametrize(("believed", "actual", "poll_interval"), [(2.0, 3600.0, 30.0), (30.0, 7200.0, 5.0)])
    def test_a_wrong_prediction_costs_a_bounded_number_of_polls(self, believed, actual, poll_interval):
        pred, now, polls = steady(believed), 0.0, 0
        now = pred.first_poll(0.0, 20, (), poll_interval=poll_interval)
        while now < actual:
            polls += 1
            now = pred.next_poll(
                now, submitted_at=0.0, rows=20, polls_so_far=polls, last_status="Importing", ahead=(),
                started_at=1.0, poll_interval=poll_interval,
            )
        bound = actual / poll_interval + math.log(poll_interval / polling.POLL_FLOOR_S, polling.POLL_BACKOFF) + 2
        assert polls + 1 <= bound


class TestObserve:
    def test_learning_converges_on_a_steady_job_time(self):
        pred = Predictor()
        for n in range(12):
            measure(pred, 20, 45.0, at=n * 100.0)
        assert pred.slot_time(20) == pytest.approx(45.0, rel=0.02)

    def test_it_learns_the_per_job_and_the_per_row_time_apart(self):
        pred = Predictor()
        for n in range(60):
            rows = (10, 50_000, 1_000, 20_000)[n % 4]
            measure(pred, rows, 5.0 + 0.001 * rows, at=n * 100.0)
        assert pred.overhead == pytest.approx(5.0, rel=0.05)
        assert pred.per_row == pytest.approx(0.001, rel=0.05)

    def test_batches_of_one_size_do_not_invent_a_per_row_time(self):
        pred = Predictor()
        for n in range(20):
            measure(pred, 20, 60.0, at=n * 100.0)
        assert pred.per_row < 0.0001
        assert pred.slot_time(50_000) < 65.0

    def test_a_measured_batch_frees_its_slot_when_it_was_seen(self):
        """The successor counts from the later look (see ``observe``)."""
        assert measure(Predictor(), 20, 45.0, at=100.0) == pytest.approx(145.2)

    def test_finished_by_its_first_poll_the_estimate_shrinks_a_little(self):
        pred = steady(30.0)
        freed = pred.observe(20, 100.0, None, 131.8)
        assert freed == 130.0  # the prediction stands for the finish
        assert pred.slot_time(20) == pytest.approx(30.0 * (1 - polling.POLL_HIT_SHRINK))
        assert pred.hits == 1

    def test_two_batches_seen_finished_by_one_poll_round_count_once(self):
        pred = steady(30.0)
        pred.observe(20, 100.0, None, 131.8)
        assert pred.observe(20, 100.0, None, 131.8) == pytest.approx(130.0, rel=0.03)
        assert pred.slot_time(20) == pytest.approx(30.0 * (1 - polling.POLL_HIT_SHRINK))
        assert pred.hits == 1

    def test_a_probe_that_finds_it_done_at_most_halves_the_estimate(self):
        pred = steady(100.0, hits=polling.POLL_PROBE_AFTER)
        pred.observe(20, 0.0, None, 3.0)
        assert pred.slot_time(20) == pytest.approx(50.0, rel=1e-3)

    def test_a_measured_batch_ends_the_run_of_first_poll_finishes(self):
        pred = steady(30.0, hits=5)
        measure(pred, 20, 31.0)
        assert pred.hits == 0

    @pytest.mark.parametrize(("seconds", "most"), [(3000.0, 1 + polling.POLL_LEARN_RATE * 2), (0.3, 2 / 3)])
    def test_an_outlier_moves_the_estimate_it_does_not_wreck_it(self, seconds, most):
        """Once warm, a batch counts as at most 3x (or a third of) the prediction."""
        pred = steady(30.0)
        measure(pred, 20, seconds, gap=0.01)
        factor = pred.slot_time(20) / 30.0
        assert factor == pytest.approx(most, rel=0.01)

    def test_the_first_batch_mostly_replaces_the_prior(self):
        pred = Predictor()
        measure(pred, 20, 90.0)
        assert pred.slot_time(20) == pytest.approx(0.5 + (90.0 - 0.5) * 2 / 3, rel=0.01)

    @pytest.mark.parametrize(("seconds", "rows"), [(1e9, 10_000_000), (1e-9, 0), (1e9, 0)])
    def test_estimates_stay_within_bounds(self, seconds, rows):
        pred = Predictor()
        for n in range(30):
            at = n * 1e10
            pred.observe(rows, at, at + seconds / 2, at + seconds, last_open_at=at + seconds / 2)
        assert polling.POLL_OVERHEAD_MIN_S <= pred.overhead <= polling.POLL_OVERHEAD_MAX_S
        assert 0.0 <= pred.per_row <= polling.POLL_ROW_MAX_S
        assert 0.0 <= pred.wait <= polling.POLL_WAIT_MAX_S
        assert all(math.isfinite(v) for v in (pred.overhead, pred.per_row, pred.wait))

    def test_the_wait_is_learnt_from_what_the_polls_saw(self):
        """Queued at 8 s and Importing at 10 s after its slot freed: it waited 8 to 10 s."""
        pred = steady(30.0)
        for n in range(10):
            at = n * 100.0
            pred.observe(20, at, at + 10.0, at + 40.2, last_open_at=at + 39.8, last_queued_at=at + 8.0)
        assert 7.9 <= pred.wait <= 10.0
        assert pred.slot_time(20) == pytest.approx(40.0, rel=0.02)

    def test_a_clock_that_went_backwards_teaches_nothing(self):
        pred = steady(30.0)
        assert pred.observe(20, 100.0, None, 90.0) == 90.0
        assert pred == steady(30.0)


class TestObserveOpen:
    def test_while_warming_up_a_batch_still_open_raises_the_estimate(self):
        pred = Predictor()
        pred.observe_open(20, 0.0, 9.0)
        assert pred.slot_time(20) == pytest.approx(9.0)
        pred.observe_open(20, 0.0, 4.0)  # says less than what is known
        assert pred.slot_time(20) == pytest.approx(9.0)

    def test_once_warm_only_finished_batches_count(self):
        pred = steady(30.0)
        pred.observe_open(20, 0.0, 300.0)
        assert pred == steady(30.0)


# ---- the simulation's figures --------------------------------------------------------------


@pytest.mark.parametrize("dwell", [0.0, 0.5])
def test_16_files_of_2_s_jobs_keep_both_slots_busy(dwell):
    """Issue 12: 16 files, 2 s jobs, 2 importing, 10 open: at least 0.95 of the ideal."""
    run = simulate([(0.0, 20)] * 16, Marketo(dwell=dwell, per_job=2.0), max_open=10)
    assert run.utilization >= 0.95
    assert run.mean_polls <= 3.0  # jobs of seconds get two polls around their finish, by design


@pytest.mark.parametrize("seconds", [30.0, 120.0])
@pytest.mark.parametrize("poll_interval", [5.0, 30.0])
@pytest.mark.parametrize("arrivals", ["backlog", "steady", "sparse"])
def test_realistic_jobs_cost_one_or_two_polls(seconds, poll_interval, arrivals):
    """Issue 12: calls per file <= 3 for single-batch files, the submit being one of them.

    A backlog keeps 10 open; "steady" files come faster than one slot clears them,
    "sparse" ones one at a time. The first two batches run cold (polled as today).
    """
    files = {
        "backlog": [(0.0, 20)] * 40,
        "steady": [(n * seconds * 0.6, 20) for n in range(40)],
        "sparse": [(n * seconds * 1.5, 20) for n in range(20)],
    }[arrivals]
    run = simulate(files, Marketo(dwell=0.5, per_job=seconds), poll_interval=poll_interval)
    warm = after_warmup(run)
    assert sum(warm) / len(warm) <= 2.0
    assert max(warm) <= 4
    cold = math.ceil(seconds / poll_interval) + math.log(poll_interval / polling.POLL_FLOOR_S, polling.POLL_BACKOFF) + 2
    assert max(run.polls[:2]) <= cold


@pytest.mark.parametrize("seconds", [30.0, 120.0])
def test_noisy_jobs_stay_cheap(seconds):
    """Each job 20 % longer or shorter than the last, at random."""
    run = simulate([(0.0, 20)] * 40, Marketo(dwell=0.5, per_job=seconds, jitter=0.2, seed=3))
    warm = after_warmup(run)
    assert sum(warm) / len(warm) <= 2.0
    assert run.utilization >= 0.95


def test_it_notices_when_imports_get_much_faster():
    """After 20 jobs of 30 s, jobs of 3 s: a batch found finished by its first poll says only
    "no later", so probes find out; by the last ten the finish is seen within a second."""
    marketo = Marketo(dwell=0.5, per_job=30.0, change=(20, 3.0))
    files = [(n * 100.0, 20) for n in range(20)] + [(2000.0 + n * 10.0, 20) for n in range(30)]
    run = simulate(files, marketo)
    late = [run.seen[n] - marketo.jobs[n].finished_at for n in range(40, 50)]
    assert max(late) < 1.0
    assert sum(run.polls[20:]) / 30 <= 2.0


@pytest.mark.parametrize("seconds", [30.0, 120.0])
def test_it_follows_imports_that_get_slower(seconds):
    marketo = Marketo(dwell=0.5, per_job=seconds, change=(20, seconds * 4))
    files = [(n * seconds * 3, 20) for n in range(40)]
    run = simulate(files, marketo, poll_interval=30.0)
    late = [run.seen[n] - marketo.jobs[n].finished_at for n in range(30, 40)]
    assert max(late) < 0.15 * seconds * 4
    assert sum(run.polls[25:]) / 15 <= 2.0


def test_batches_of_many_sizes():
    rnd = random.Random(7)
    files = [(n * 30.0, rnd.choice([10, 500, 5_000, 20_000, 80_000])) for n in range(60)]
    pred = Predictor()
    run = simulate(files, Marketo(dwell=0.5, per_job=20.0, per_row=0.0005), predictor=pred)
    warm = run.polls[10:]
    assert sum(warm) / len(warm) <= 1.5
    assert pred.per_row == pytest.approx(0.0005, rel=0.3)


# ---- the simulation can fail ---------------------------------------------------------------


class Today(Predictor):
    """The schedule before the predictor: 0.5, 1, 2, 4 s, then poll_interval, whatever was learnt."""

    def first_poll(self, now, rows, ahead, *, head_at=None, poll_interval=5.0):
        return now + 0.5

    def next_poll(self, now, *, polls_so_far, poll_interval=5.0, **_):
        return now + min(poll_interval, 0.5 * 2.0**polls_so_far)


class Late(Predictor):
    """Polls a third after the predicted finish."""

    def first_poll(self, now, rows, ahead, *, head_at=None, poll_interval=5.0):
        due = super().first_poll(now, rows, ahead, head_at=head_at, poll_interval=poll_interval)
        return due + self.slot_time(rows) / 3


def test_todays_schedule_fails_both_goals():
    """As measured on main: 0.79 of the ideal (0.80 here), calls per file well over 3."""
    assert simulate([(0.0, 20)] * 16, Marketo(per_job=2.0), predictor=Today(), replan=False).utilization < 0.85
    assert simulate([(0.0, 20)] * 16, Marketo(per_job=30.0), predictor=Today(), replan=False).mean_polls > 3


def test_a_late_schedule_fails_utilization():
    assert simulate([(0.0, 20)] * 16, Marketo(per_job=2.0), predictor=Late()).utilization < 0.95


def test_without_re_planning_at_the_head_the_slots_go_idle():
    """Why dispatch must call ``first_poll`` again when a batch ahead is seen finished."""
    assert simulate([(0.0, 20)] * 16, Marketo(per_job=2.0), replan=False).utilization < 0.5
