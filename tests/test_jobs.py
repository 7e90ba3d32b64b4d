"""The pure lifecycle and scheduling rules, with plain values."""

import pytest

from dropzone import jobs
from dropzone.jobs import Candidate, ChunkResult, ChunkState, FileState, Outcome, PollPlan, Slots


class TestTransitions:
    def test_the_happy_path_is_allowed(self):
        for old, new in [
            (ChunkState.PENDING, ChunkState.SUBMITTING),
            (ChunkState.SUBMITTING, ChunkState.SUBMITTED),
            (ChunkState.SUBMITTED, ChunkState.FETCHING),
            (ChunkState.FETCHING, ChunkState.DONE),
        ]:
            jobs.check_chunk_transition(old, new)
        for old, new in [
            (FileState.CLAIMING, FileState.CLAIMED),
            (FileState.CLAIMED, FileState.SPLIT),
            (FileState.SPLIT, FileState.FINISHING),
            (FileState.FINISHING, FileState.DONE),
        ]:
            jobs.check_file_transition(old, new)

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            (ChunkState.PENDING, ChunkState.SUBMITTED),  # a batchId without a recorded intent
            (ChunkState.SUBMITTED, ChunkState.PENDING),  # resubmitting a batch Marketo has
            (ChunkState.DONE, ChunkState.PENDING),
            (ChunkState.ERROR, ChunkState.SUBMITTING),
            (ChunkState.FETCHING, ChunkState.SUBMITTING),
        ],
    )
    def test_dangerous_chunk_moves_are_refused(self, old, new):
        with pytest.raises(jobs.TransitionError):
            jobs.check_chunk_transition(old, new)

    def test_a_done_file_cannot_be_reopened(self):
        with pytest.raises(jobs.TransitionError):
            jobs.check_file_transition(FileState.DONE, FileState.SPLIT)


class TestRecovery:
    def test_only_the_ambiguous_window_resubmits(self):
        """A crash in 'submitting' resubmits; a known batchId is polled, never resubmitted."""
        assert jobs.recovery_action(ChunkState.SUBMITTING) is jobs.RecoveryAction.RESUBMIT
        assert jobs.recovery_action(ChunkState.SUBMITTED) is jobs.RecoveryAction.POLL
        assert jobs.recovery_action(ChunkState.FETCHING) is jobs.RecoveryAction.FETCH
        assert jobs.recovery_action(ChunkState.PENDING) is jobs.RecoveryAction.NONE


def cand(chunk_id, inbox, file_id=1, index=0, list_id=None):
    return Candidate(chunk_id=chunk_id, inbox=inbox, file_id=file_id, index=index, list_id=list_id)


class TestPickNext:
    def test_nothing_when_our_open_batches_fill_the_queue(self):
        assert jobs.pick_next([cand(1, "a")], Slots(open=10, max_open=10)) is None

    def test_oldest_file_and_lowest_chunk_first_within_an_inbox(self):
        picked = jobs.pick_next([cand(3, "a", 2, 0), cand(2, "a", 1, 1), cand(1, "a", 1, 0)], Slots(0, 10))
        assert picked is not None and picked.chunk_id == 1

    def test_round_robin_across_inboxes(self):
        """One partner's 500 files do not starve another's single file."""
        candidates = [cand(i, "busy", file_id=i) for i in range(1, 501)] + [cand(999, "quiet", file_id=999)]
        first = jobs.pick_next(candidates, Slots(0, 10, last_inbox=None))
        second = jobs.pick_next([c for c in candidates if c != first], Slots(1, 10, last_inbox=first.inbox))
        assert {first.inbox, second.inbox} == {"busy", "quiet"}

    def test_one_import_at_a_time_per_list(self):
        """Marketo answers 1019 to a second import into a list that is being imported to."""
        picked = jobs.pick_next([cand(1, "a", list_id=7), cand(2, "a", 2, list_id=8)], Slots(1, 10, frozenset({7})))
        assert picked is not None and picked.chunk_id == 2
        assert jobs.pick_next([cand(1, "a", list_id=7)], Slots(1, 10, frozenset({7}))) is None


class TestPolling:
    def test_only_the_oldest_batches_are_polled(self):
        """FIFO, two at a time: batches further back cannot be finishing yet."""
        plans = [PollPlan(chunk_id=i, batch_id=100 + i, due=0.0, last_polled=0.0) for i in range(6)]
        assert jobs.polls_due(plans, now=1.0) == [0, 1, 2]

    def test_batches_further_back_are_still_polled_now_and_then(self):
        plans = [PollPlan(chunk_id=i, batch_id=100 + i, due=0.0, last_polled=0.0) for i in range(6)]
        assert jobs.polls_due(plans, now=jobs.BACK_POLL_S) == [0, 1, 2, 3, 4, 5]

    def test_next_poll_time_ignores_batches_that_are_not_eligible(self):
        plans = [PollPlan(0, 100, due=5.0, last_polled=0.0), PollPlan(1, 101, due=6.0, last_polled=0.0),
                 PollPlan(2, 102, due=7.0, last_polled=0.0), PollPlan(3, 103, due=1.0, last_polled=0.0)]
        assert jobs.next_poll_at(plans) == 5.0
        assert jobs.next_poll_at([]) is None


def result(rows, processed, failed=0, warned=0, status="Complete", state=ChunkState.DONE):
    return ChunkResult(state, status, rows, processed, failed, warned)


class TestOutcome:
    def test_complete_when_every_row_went_in(self):
        assert jobs.file_outcome([result(10, 10), result(5, 5, warned=2)]) is Outcome.COMPLETE

    def test_partial_when_some_rows_failed(self):
        assert jobs.file_outcome([result(10, 9, failed=1)]) is Outcome.PARTIAL

    def test_partial_when_one_chunk_failed_and_another_went_in(self):
        assert (
            jobs.file_outcome([result(10, 10), result(10, 0, status=None, state=ChunkState.ERROR)])
            is Outcome.PARTIAL
        )

    def test_failed_when_nothing_went_in(self):
        assert jobs.file_outcome([result(10, 0, status="Failed")]) is Outcome.FAILED
        assert jobs.file_outcome([result(3, 0, failed=3)]) is Outcome.FAILED


# ---- the decisions, as tables -------------------------------------------------------

import datetime as _dt  # noqa: E402

from dropzone import errors  # noqa: E402
from dropzone.jobs import ChunkAction, FetchAction, Pause, PollAction, SubmitDecision  # noqa: E402

_SOON = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, SubmitDecision(ChunkAction.RECORD_BATCH)),
        (errors.OutcomeUnknownError("lost", reason="HTTP 502"), SubmitDecision(ChunkAction.REQUEUE_UNKNOWN)),
        (errors.MisconfiguredError("603 Access denied", code="603"),
         SubmitDecision(ChunkAction.REQUEUE, Pause.MISCONFIGURED, stop=True)),
        (errors.AuthError("bad secret"), SubmitDecision(ChunkAction.REQUEUE, Pause.MISCONFIGURED, stop=True)),
        (errors.MisconfiguredError("no such list", code="1013", scope="route"),
         SubmitDecision(ChunkAction.REQUEUE, Pause.TARGET)),
        (errors.RejectedError("identity says no", endpoint="identity"),
         SubmitDecision(ChunkAction.REQUEUE, Pause.MISCONFIGURED, stop=True)),
        (errors.RejectedError("413 too large", code="HTTP 413"), SubmitDecision(ChunkAction.FAIL)),
        (errors.QueueFullError("1016", code="1016"), SubmitDecision(ChunkAction.REQUEUE, Pause.QUEUE_FULL, stop=True)),
        (errors.ListBusyError("1019", code="1019"), SubmitDecision(ChunkAction.REQUEUE, Pause.LIST)),
        (errors.QuotaExceededError("607", resume_at=_SOON), SubmitDecision(ChunkAction.REQUEUE, Pause.API, stop=True)),
        (errors.ThrottledError("606", code="606"), SubmitDecision(ChunkAction.REQUEUE, Pause.SUBMITS, stop=True)),
        (errors.TransientError("604", code="604"), SubmitDecision(ChunkAction.REQUEUE, Pause.SUBMITS, stop=True)),
        (errors.WouldWaitError(3.5), SubmitDecision(ChunkAction.REQUEUE, Pause.WAIT, stop=True)),
        (FileNotFoundError(2, "No such file"), SubmitDecision(ChunkAction.FAIL)),
        (KeyError("a bug"), SubmitDecision(ChunkAction.FAIL)),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, SubmitDecision) else v.action.value,
)
def test_what_a_submit_outcome_does(error, expected):
    """Only Marketo's documented "not executed" answers requeue silently; a lost reply is held and told."""
    assert jobs.after_submit(error) == expected


@pytest.mark.parametrize(
    ("error", "finished", "expected"),
    [
        (None, False, PollAction.WAIT),
        (None, True, PollAction.FINISHED),
        (errors.BatchNotFoundError("1003", code="1003"), False, PollAction.GONE),
        (errors.TransientError("429 page", code="HTTP 429", retry_after=7), False, PollAction.RETRY),
        (errors.TransientError("reply not JSON", code="reply not JSON"), False, PollAction.RETRY),
        (errors.RejectedError("HTTP 404 from a proxy", code="HTTP 404"), False, PollAction.RETRY),
        (errors.QuotaExceededError("607", resume_at=_SOON), False, PollAction.PAUSE_API),
        (errors.AuthError("bad secret"), False, PollAction.PAUSE_API),
        (ValueError("malformed counter"), False, PollAction.RETRY),
        (errors.WouldWaitError(3.5), False, PollAction.WAIT_INSTANCE),
    ],
)
def test_what_a_poll_outcome_does(error, finished, expected):
    """Only Marketo's own "batch not found" ends a batch; a 429 page or a bad body says nothing about it."""
    assert jobs.after_poll(error, finished=finished) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, FetchAction.STORE),
        (errors.BatchNotFoundError("1003", code="1003"), FetchAction.GIVE_UP),
        (errors.TransientError("HTTP 429", code="HTTP 429"), FetchAction.RETRY),
        (OSError("disk"), FetchAction.RETRY),
        (errors.WouldWaitError(3.5), FetchAction.WAIT_INSTANCE),
    ],
)
def test_what_a_fetch_outcome_does(error, expected):
    assert jobs.after_fetch(error) is expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (ChunkState.PENDING, jobs.RecoveryAction.NONE),
        (ChunkState.SUBMITTING, jobs.RecoveryAction.RESUBMIT),
        (ChunkState.SUBMITTED, jobs.RecoveryAction.POLL),
        (ChunkState.FETCHING, jobs.RecoveryAction.FETCH),
        (ChunkState.DONE, jobs.RecoveryAction.NONE),
        (ChunkState.ERROR, jobs.RecoveryAction.NONE),
    ],
)
def test_what_recovery_does_for_each_chunk_state(state, expected):
    assert jobs.recovery_action(state) is expected


def test_what_recovery_does_for_a_half_made_claim():
    assert jobs.recover_claim(True) is jobs.ClaimRecovery.CONFIRM
    assert jobs.recover_claim(False) is jobs.ClaimRecovery.FORGET


@pytest.mark.parametrize(
    ("size", "least", "expected"),
    [
        (100, 120.0, 120.0),  # a small chunk: the least hold
        (9_500_000, 120.0, 475.0),  # a full chunk at a slow 20 kB/s
        (10**12, 120.0, 1800.0),  # capped
        (100, 0.0, 0.005),  # tests set the least hold to 0
    ],
)
def test_a_possibly_created_copy_is_waited_out_by_size(size, least, expected):
    assert jobs.resubmit_hold(size, least=least) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pause", "streak", "expected"),
    [
        (Pause.QUEUE_FULL, 1, 15.0),
        (Pause.QUEUE_FULL, 3, 45.0),
        (Pause.QUEUE_FULL, 50, 120.0),
        (Pause.LIST, 1, 10.0),
        (Pause.MISCONFIGURED, 1, 60.0),
        (Pause.SUBMITS, 1, 30.0),
        (Pause.NONE, 1, 0.0),
    ],
)
def test_pauses_grow_and_are_capped(pause, streak, expected):
    assert jobs.pause_seconds(pause, streak=streak) == expected


def test_quota_pause_lasts_until_the_reset():
    assert jobs.pause_seconds(Pause.API, quota_resets_in=3600.0) == 3600.0
    assert jobs.pause_seconds(Pause.API, quota_resets_in=5.0) == 60.0
    assert jobs.pause_seconds(Pause.WAIT, asked=3.5) == 3.5  # the instance's own wait, no more
    assert jobs.pause_seconds(Pause.WAIT, asked=-1.0) == 0.0


def test_unknown_counters_are_not_zero():
    """Failed rows still unknown once the results are in (a shared batch whose failures could not be told
    apart; a lone batch's are counted from its failure file before this) never make a file Complete."""
    done = ChunkResult(ChunkState.DONE, "Complete", rows=10, processed=None, failed=None, warned=None)
    assert jobs.imported_rows(done) == 10
    assert jobs.file_outcome([done]) is Outcome.PARTIAL
    counted = ChunkResult(ChunkState.DONE, "Complete", rows=10, processed=None, failed=0, warned=None)
    assert jobs.file_outcome([counted]) is Outcome.COMPLETE
    some_failed = ChunkResult(ChunkState.DONE, "Complete", rows=10, processed=None, failed=3, warned=None)
    assert jobs.imported_rows(some_failed) == 7
    assert jobs.file_outcome([some_failed]) is Outcome.PARTIAL


# ---- which instance owns a chunk after the configuration changed -----------------------------

PROD, SANDBOX, OLD = "https://111-aaa-111.mktorest.com", "https://222-bbb-222.mktorest.com", "https://333-ccc-333.mktorest.com"
BOTH = {"default": PROD, "sandbox": SANDBOX}
P, SG, SD, F, D_, E = (
    ChunkState.PENDING, ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING, ChunkState.DONE,
    ChunkState.ERROR,
)
KEEP, RENAMED, ORPHANED = jobs.Ownership.KEEP, jobs.Ownership.RENAMED, jobs.Ownership.ORPHANED


@pytest.mark.parametrize(
    ("state", "instance", "sent_to", "configured", "last_known", "action", "new_name"),
    [
        # Nothing changed.
        (P, "sandbox", None, BOTH, SANDBOX, KEEP, None),
        (SD, "sandbox", SANDBOX, BOTH, SANDBOX, KEEP, None),
        (F, "default", PROD, BOTH, PROD, KEEP, None),
        # Finished chunks are never moved, whatever the configuration says.
        (D_, "gone", OLD, BOTH, OLD, KEEP, None),
        (E, "gone", None, {}, None, KEEP, None),
        # Renamed (same endpoint, another name): everything follows the endpoint.
        (P, "staging", None, BOTH, SANDBOX, RENAMED, "sandbox"),
        (SG, "staging", SANDBOX, BOTH, SANDBOX, RENAMED, "sandbox"),
        (SD, "staging", SANDBOX, BOTH, SANDBOX, RENAMED, "sandbox"),
        (F, "staging", SANDBOX, BOTH, SANDBOX, RENAMED, "sandbox"),
        # A name kept but pointed elsewhere: a batch stays where its bytes went...
        (SD, "default", OLD, BOTH, PROD, ORPHANED, None),
        (SD, "default", SANDBOX, BOTH, PROD, RENAMED, "sandbox"),
        # ...while an unsent chunk follows the name (the operator chose the new endpoint).
        (P, "default", OLD, BOTH, PROD, KEEP, None),
        # Removed: unsent chunks and sent batches are both failed, with different reasons.
        (P, "gone", None, BOTH, OLD, ORPHANED, None),
        (P, "gone", None, BOTH, None, ORPHANED, None),
        (SD, "gone", OLD, BOTH, OLD, ORPHANED, None),
        (SG, "gone", OLD, BOTH, OLD, ORPHANED, None),
        # A journal from before endpoints were recorded: the name is all there is.
        (SD, "default", None, BOTH, None, KEEP, None),
        (SD, "gone", None, BOTH, None, ORPHANED, None),
        (SD, "gone", None, BOTH, SANDBOX, RENAMED, "sandbox"),
    ],
)
def test_chunk_owner(state, instance, sent_to, configured, last_known, action, new_name):
    decision = jobs.chunk_owner(state, instance, sent_to, configured, last_known)
    assert (decision.action, decision.instance) == (action, new_name)
    if action is ORPHANED:
        assert repr(instance) in decision.reason
        assert ("not sent" in decision.reason) == (state is ChunkState.PENDING)
        assert ("unknown" in decision.reason) == (state is not ChunkState.PENDING)


@pytest.mark.parametrize(
    ("said", "since", "now", "gone"),
    [
        (1, 0.0, 0.0, False),  # one "no such batch" for a batch Marketo accepted: asked again
        (3, 0.0, 10.0, False),  # said again at once: not yet believed
        (2, 0.0, 1_000.0, False),  # long ago but only twice
        (3, 0.0, 300.0, True),  # three times over five minutes: the batch is gone
    ],
)
def test_when_marketo_s_no_such_batch_is_believed(said, since, now, gone):
    assert jobs.batch_gone(said, since, now) is gone
