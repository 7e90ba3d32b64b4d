"""The journal's contract (dropzone/store.py).

One verb per transition, each one transaction checked against ``jobs``; one
writer; bytes-safe paths and messages; WAL; schema versions (a version-1
journal is upgraded in place, a newer one is refused).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from dropzone.errors import StoreError
from dropzone.jobs import CHUNK_TRANSITIONS, FILE_TRANSITIONS, ChunkState, FileState, Outcome, TransitionError
from dropzone.kinds import FileFormat, ObjectKind
from dropzone.store import (
    DB_NAME,
    LOCK_NAME,
    RESUBMIT_NOTE,
    SCHEMA_VERSION,
    ChunkRow,
    Counts,
    FileRow,
    NewChunk,
    NewMember,
    Results,
    Store,
)
from dropzone.targets import ImportTarget

WEIRD = os.fsdecode(b"acme/leads_\xff\xfe caf\xe9\n$(x).csv")  # not UTF-8, a newline, shell characters
#: How a message quoting WEIRD reads once stored: valid UTF-8, the undecodable bytes spelled out.
WEIRD_TEXT = "acme/leads_\\xff\\xfe caf\\xe9\n$(x).csv"
LEADS = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email", list_id=1234)
FINISHED_AT = "2024-05-01T10:05:00Z"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def claim(store: Store, tmp_path: Path, relpath: str = "leads_1.csv", *, dev: int = 2049, ino: int = 77) -> int:
    return store.begin_claim(
        inbox=tmp_path / "inbox",
        relpath=relpath,
        processing_path=tmp_path / "inbox" / ".processing" / f"x-{Path(relpath).name}",
        size=42,
        dev=dev,
        ino=ino,
    )


def new_chunks(tmp_path: Path, n: int = 2, stem: str = "leads_1.csv", first: int = 0) -> list[NewChunk]:
    return [
        NewChunk(
            index=i,
            path=tmp_path / "work" / f"{stem}.part{i:04d}",
            first_line=2 + 10 * i,
            last_line=11 + 10 * i,
            rows=10,
            size=100,
        )
        for i in range(first, first + n)
    ]


def split(store: Store, tmp_path: Path, fid: int, n: int = 2, notes: tuple[str, ...] = ()) -> list[int]:
    """Claimed → split with ``n`` chunks; their ids."""
    store.record_split(fid, new_chunks(tmp_path, n), target=LEADS, fmt=FileFormat.CSV, rows=10 * n, notes=notes)
    return [c.id for c in store.chunks_of(fid)]


def journal(store: Store) -> tuple[list[FileRow], list[ChunkRow]]:
    """Every row, to compare before and after a refused call."""
    return store.files(), store.chunks(list(ChunkState))


def raw(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / DB_NAME)


# ---- reaching a state through the verbs ----------------------------------------

_FILE_ORDER = [FileState.CLAIMING, FileState.CLAIMED, FileState.SPLIT, FileState.FINISHING, FileState.DONE]


def file_in(store: Store, tmp_path: Path, state: FileState) -> int:
    fid = claim(store, tmp_path, f"in_{state}.csv")
    if state is FileState.UNPACKED:  # a zip, waiting for its members
        store.confirm_claim(fid)
        store.record_unpack(fid, [])
        return fid
    steps: list[Callable[[], object]] = [
        lambda: store.confirm_claim(fid),
        lambda: split(store, tmp_path, fid),
        lambda: store.settle(fid, Outcome.COMPLETE),
        lambda: store.finish_file(fid, finished_at=FINISHED_AT, archived_to=None),
    ]
    for step in steps[: _FILE_ORDER.index(state)]:
        step()
    assert store.file(fid).state is state
    return fid


def chunk_in(store: Store, tmp_path: Path, state: ChunkState) -> int:
    """A chunk (the first of a split file's two) in ``state``."""
    cid = store.chunks_of(file_in(store, tmp_path, FileState.SPLIT))[0].id
    submit = [
        lambda: store.mark_submitting(cid),
        lambda: store.record_batch(cid, batch_id=1001, status="Queued"),
        lambda: store.finish_batch(cid, status="Complete", message=None, counts=Counts(10, 0, 0)),
        lambda: store.store_results(cid, failures=None, warnings=None),
    ]
    steps = {
        ChunkState.PENDING: [],
        ChunkState.SUBMITTING: submit[:1],
        ChunkState.SUBMITTED: submit[:2],
        ChunkState.FETCHING: submit[:3],
        ChunkState.DONE: submit,
        ChunkState.ERROR: [lambda: store.fail_chunk(cid, "refused")],
    }[state]
    for step in steps:
        step()
    assert store.chunk(cid).state is state
    return cid


# ---- the whole lifecycle ----------------------------------------------------------


class TestLifecycle:
    def test_a_file_and_its_chunks_walk_the_whole_lifecycle(self, store, tmp_path):
        fid = claim(store, tmp_path, dev=2049, ino=77)
        row = store.file(fid)
        assert (row.state, row.relpath, row.size, row.dev, row.ino) == (FileState.CLAIMING, "leads_1.csv", 42, 2049, 77)
        assert row.inbox == tmp_path / "inbox" and row.processing_path.name == "x-leads_1.csv"
        assert row.received_at.endswith("Z") and row.target is None and row.fmt is None and row.notes == []
        assert store.has_files([FileState.CLAIMING]) and not store.has_files([FileState.CLAIMED])

        store.confirm_claim(fid)
        assert store.file(fid).state is FileState.CLAIMED

        store.record_split(
            fid, new_chunks(tmp_path), target=LEADS, fmt=FileFormat.CSV, rows=20, notes=["header trimmed"]
        )
        row = store.file(fid)
        assert (row.state, row.target, row.fmt, row.rows, row.notes) == (
            FileState.SPLIT, LEADS, FileFormat.CSV, 20, ["header trimmed"]
        )
        assert isinstance(row.target, ImportTarget) and isinstance(row.fmt, FileFormat)
        c0, c1 = store.chunks_of(fid)
        assert (c0.index, c0.first_line, c0.last_line, c0.rows, c0.size) == (0, 2, 11, 10, 100)
        assert (c1.index, c1.first_line, c1.last_line) == (1, 12, 21)
        assert c0.path == tmp_path / "work" / "leads_1.csv.part0000"
        assert (c0.state, c0.submits, c0.resubmits, c0.batch_id) == (ChunkState.PENDING, 0, 0, None)
        assert c0.not_before is None
        assert (c0.processed, c0.failed, c0.warned) == (None, None, None)  # unknown until Marketo says

        # Chunk 0: every counter given by Marketo.
        store.mark_submitting(c0.id)
        assert (store.chunk(c0.id).state, store.chunk(c0.id).submits) == (ChunkState.SUBMITTING, 1)
        store.record_batch(c0.id, batch_id=1001, status="Queued")
        got = store.chunk(c0.id)
        assert (got.state, got.batch_id, got.marketo_status) == (ChunkState.SUBMITTED, 1001, "Queued")
        assert got.submitted_at is not None and got.submitted_at.endswith("Z")
        store.record_progress(c0.id, status="Importing", counts=Counts(processed=4))
        got = store.chunk(c0.id)
        assert (got.state, got.marketo_status, got.processed, got.failed, got.warned) == (
            ChunkState.SUBMITTED, "Importing", 4, None, None
        )
        store.finish_batch(c0.id, status="Complete", message="Import completed with errors", counts=Counts(9, 1, 2))
        got = store.chunk(c0.id)
        assert (got.state, got.marketo_status, got.message) == (
            ChunkState.FETCHING, "Complete", "Import completed with errors"
        )
        assert (got.processed, got.failed, got.warned) == (9, 1, 2)
        failures = Path(f"{c0.path}.failures")
        store.store_results(c0.id, failures=failures, warnings=None)  # counts=None: Marketo's stay
        got = store.chunk(c0.id)
        assert (got.state, got.failures_path, got.warnings_path) == (ChunkState.DONE, failures, None)
        assert (got.processed, got.failed, got.warned, got.batch_id, got.submits) == (9, 1, 2, 1001, 1)

        # Chunk 1: Marketo gave no counters; the result files fill them.
        store.mark_submitting(c1.id)
        store.record_batch(c1.id, batch_id=1002, status="Queued")
        store.finish_batch(c1.id, status="Complete", message=None, counts=Counts())
        assert (store.chunk(c1.id).processed, store.chunk(c1.id).failed) == (None, None)
        store.store_results(c1.id, failures=None, warnings=None, counts=Counts(processed=10, failed=0, warned=0))
        got = store.chunk(c1.id)
        assert (got.state, got.processed, got.failed, got.warned) == (ChunkState.DONE, 10, 0, 0)
        assert store.chunks([ChunkState.DONE]) == store.chunks_of(fid)

        store.settle(fid, Outcome.PARTIAL, error="1 row failed")
        row = store.file(fid)
        assert (row.state, row.outcome, row.error, row.error_line) == (
            FileState.FINISHING, Outcome.PARTIAL, "1 row failed", None
        )
        assert isinstance(row.outcome, Outcome)
        store.set_outbox_names(fid, ["leads_1.status.json", "leads_1.failures.csv"])
        assert store.file(fid).outbox_files == ["leads_1.status.json", "leads_1.failures.csv"]
        archive = tmp_path / "archive" / "2024-05-01" / "leads_1.csv"
        store.set_archive_target(fid, archive)
        assert store.file(fid).archived_to == archive
        assert store.file(fid).state is FileState.FINISHING  # neither setter moves the file

        store.finish_file(fid, finished_at=FINISHED_AT, archived_to=archive)
        row = store.file(fid)
        assert (row.state, row.outcome, row.finished_at, row.archived_to) == (
            FileState.DONE, Outcome.PARTIAL, FINISHED_AT, archive
        )
        assert store.counts() == {"Partial": 1}

    def test_a_rejected_file_is_settled_straight_from_claimed(self, store, tmp_path):
        fid = file_in(store, tmp_path, FileState.CLAIMED)
        store.settle(fid, Outcome.REJECTED, error="no route matches", line=1)
        row = store.file(fid)
        assert (row.state, row.outcome, row.error, row.error_line) == (
            FileState.FINISHING, Outcome.REJECTED, "no route matches", 1
        )
        assert row.target is None and store.chunks_of(fid) == []
        store.finish_file(fid, finished_at=FINISHED_AT, archived_to=None)
        assert store.file(fid).state is FileState.DONE and store.file(fid).archived_to is None
        assert store.counts() == {"Rejected": 1}

    def test_a_chunk_marketo_refuses_ends_in_error(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTING)
        store.fail_chunk(cid, "1003: invalid lookupField")
        got = store.chunk(cid)
        assert (got.state, got.error) == (ChunkState.ERROR, "1003: invalid lookupField")
        assert (got.submits, got.batch_id) == (1, None)
        assert [c.id for c in store.chunks([ChunkState.ERROR])] == [cid]

    def test_a_submitted_batch_marketo_lost_ends_in_error(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTED)
        store.fail_chunk(cid, "Marketo no longer knows batch 1001")
        got = store.chunk(cid)
        assert (got.state, got.batch_id, got.error) == (ChunkState.ERROR, 1001, "Marketo no longer knows batch 1001")

    def test_record_split_is_one_transaction(self, store, tmp_path):
        """A chunk that cannot be recorded leaves the file claimed, without target, notes or any chunk."""
        fid = file_in(store, tmp_path, FileState.CLAIMED)
        before = journal(store)
        duplicate = new_chunks(tmp_path, 1) * 2  # (file_id, idx) is unique
        with pytest.raises(sqlite3.IntegrityError):
            store.record_split(fid, duplicate, target=LEADS, fmt=FileFormat.CSV, rows=10, notes=["must not stick"])
        assert journal(store) == before
        row = store.file(fid)
        assert (row.state, row.target, row.rows, row.notes) == (FileState.CLAIMED, None, None, [])

    def test_forget_claim_only_forgets_claims(self, store, tmp_path):
        fid = claim(store, tmp_path)
        other = file_in(store, tmp_path, FileState.CLAIMED)
        store.forget_claim(fid)
        store.forget_claim(other)
        with pytest.raises(KeyError):
            store.file(fid)
        assert store.file(other).state is FileState.CLAIMED
        assert [r.id for r in store.files()] == [other]

    def test_unknown_ids_are_key_errors(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.PENDING)
        before = journal(store)
        for call in (
            lambda: store.file(999),
            lambda: store.chunk(999),
            lambda: store.confirm_claim(999),
            lambda: store.settle(999, Outcome.FAILED),
            lambda: store.mark_submitting(999),
            lambda: store.requeue(999, unknown="x", not_before=1.0),
            lambda: store.fail_chunk(999, "x"),
        ):
            with pytest.raises(KeyError):
                call()
        assert journal(store) == before and store.chunk(cid).state is ChunkState.PENDING

    def test_queries(self, store, tmp_path):
        ids = [claim(store, tmp_path, f"leads_{i}.csv") for i in range(5)]
        for fid in ids[:3]:
            store.confirm_claim(fid)
        store.settle(ids[0], Outcome.REJECTED, error="bad header", line=1)
        store.finish_file(ids[0], finished_at=FINISHED_AT, archived_to=None)
        [c0, c1] = split(store, tmp_path, ids[2])
        store.mark_submitting(c1)
        assert [r.id for r in store.files([FileState.CLAIMED])] == [ids[1]]
        assert [r.id for r in store.files([FileState.CLAIMING, FileState.SPLIT])] == [ids[2], ids[3], ids[4]]
        assert [r.id for r in store.files(limit=2)] == ids[3:]  # the newest two, oldest first
        assert [r.id for r in store.files([FileState.CLAIMING], limit=1)] == [ids[4]]
        assert store.has_files([FileState.DONE]) and not store.has_files([FileState.FINISHING])
        assert [c.id for c in store.chunks([ChunkState.PENDING])] == [c0]
        assert [c.id for c in store.chunks([ChunkState.PENDING, ChunkState.SUBMITTING])] == [c0, c1]
        assert store.chunks([ChunkState.DONE]) == []
        assert store.counts() == {"Rejected": 1, "claimed": 1, "split": 1, "claiming": 2}


# ---- every verb refuses an illegal move, and changes nothing ----------------------

_FILE_VERBS: dict[str, tuple[FileState, Callable[[Store, int, Path], object]]] = {
    "confirm_claim": (FileState.CLAIMED, lambda s, fid, tmp: s.confirm_claim(fid)),
    "record_split": (
        FileState.SPLIT,
        lambda s, fid, tmp: s.record_split(
            fid,
            new_chunks(tmp, 3, "again", first=5),  # indexes the split file does not have yet
            target=LEADS,
            fmt=FileFormat.TSV,
            rows=30,
            notes=["must not stick"],
        ),
    ),
    "record_unpack": (
        FileState.UNPACKED,
        lambda s, fid, tmp: s.record_unpack(fid, [NewMember("x.csv", tmp / "m", 3)], notes=["must not stick"]),
    ),
    "settle": (FileState.FINISHING, lambda s, fid, tmp: s.settle(fid, Outcome.FAILED, error="must not stick", line=9)),
    "finish_file": (
        FileState.DONE,
        lambda s, fid, tmp: s.finish_file(fid, finished_at="2099-01-01T00:00:00Z", archived_to=tmp / "nowhere"),
    ),
}

_CHUNK_VERBS: dict[str, tuple[ChunkState, Callable[[Store, int, Path], object]]] = {
    "mark_submitting": (ChunkState.SUBMITTING, lambda s, cid, tmp: s.mark_submitting(cid)),
    "requeue": (ChunkState.PENDING, lambda s, cid, tmp: s.requeue(cid, unknown="must not stick", not_before=9e9)),
    "record_batch": (ChunkState.SUBMITTED, lambda s, cid, tmp: s.record_batch(cid, batch_id=666, status="Bogus")),
    "finish_batch": (
        ChunkState.FETCHING,
        lambda s, cid, tmp: s.finish_batch(cid, status="Failed", message="must not stick", counts=Counts(0, 99, 99)),
    ),
    "store_results": (
        ChunkState.DONE,
        lambda s, cid, tmp: s.store_results(cid, failures=tmp / "f", warnings=tmp / "w", counts=Counts(0, 99, 99)),
    ),
    "fail_chunk": (ChunkState.ERROR, lambda s, cid, tmp: s.fail_chunk(cid, "must not stick")),
}

#: ``Store._move`` lets a verb "move" a row to the state it is already in, though jobs allows no such
#: transition: a second record_batch replaces the batchId, a second mark_submitting counts a submit
#: nobody made, requeue of a pending chunk counts a resubmit and adds its note. See the report.
#: Verbs that may repeat on purpose: the client may retry an upload it knows was not executed.
_REPEATABLE = {"mark_submitting"}


def _moves(verbs, states, transitions):
    for verb, (target, _call) in verbs.items():
        for start in states:
            marks: list[pytest.MarkDecorator] = []
            legal = target in transitions[start] or (verb in _REPEATABLE and start is target)
            yield pytest.param(verb, start, legal, id=f"{verb}-from-{start}", marks=marks)


class TestTransitions:
    @pytest.mark.parametrize(("verb", "start", "legal"), list(_moves(_FILE_VERBS, FileState, FILE_TRANSITIONS)))
    def test_each_file_verb_moves_only_where_jobs_allows(self, store, tmp_path, verb, start, legal):
        target, call = _FILE_VERBS[verb]
        fid = file_in(store, tmp_path, start)
        before = journal(store)
        if legal:
            call(store, fid, tmp_path)
            assert store.file(fid).state is target
            return
        with pytest.raises(TransitionError):
            call(store, fid, tmp_path)
        assert journal(store) == before  # the other writes of the same call were rolled back too

    @pytest.mark.parametrize(("verb", "start", "legal"), list(_moves(_CHUNK_VERBS, ChunkState, CHUNK_TRANSITIONS)))
    def test_each_chunk_verb_moves_only_where_jobs_allows(self, store, tmp_path, verb, start, legal):
        target, call = _CHUNK_VERBS[verb]
        cid = chunk_in(store, tmp_path, start)
        before = journal(store)
        if legal:
            call(store, cid, tmp_path)
            assert store.chunk(cid).state is target
            return
        with pytest.raises(TransitionError):
            call(store, cid, tmp_path)
        assert journal(store) == before  # counters, notes, batch ids: nothing of the call stuck

    def test_a_refused_move_names_both_states(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.PENDING)
        with pytest.raises(TransitionError, match="pending to submitted"):
            store.record_batch(cid, batch_id=7, status="Queued")


# ---- resubmits and notes ---------------------------------------------------------------


class TestResubmit:
    def test_requeue_of_an_unknown_outcome_counts_holds_and_notes_once(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTING)
        fid = store.chunk(cid).file_id
        notes_before = store.file(fid).notes
        store.requeue(cid, unknown="the reply was lost", not_before=1_700_000_000.5)
        got = store.chunk(cid)
        assert (got.state, got.submits, got.resubmits, got.not_before) == (ChunkState.PENDING, 1, 1, 1_700_000_000.5)
        note = RESUBMIT_NOTE.format(index=0, why="the reply was lost")
        assert store.file(fid).notes == [*notes_before, note]
        assert "chunk 0" in note and "the reply was lost" in note

        # Lost again, for the same reason: counted again, the hold moves, the note is not repeated.
        store.mark_submitting(cid)
        store.requeue(cid, unknown="the reply was lost", not_before=1_700_000_900.0)
        got = store.chunk(cid)
        assert (got.submits, got.resubmits, got.not_before) == (2, 2, 1_700_000_900.0)
        assert store.file(fid).notes == [*notes_before, note]

        # Another reason is another note.
        store.mark_submitting(cid)
        store.requeue(cid, unknown="HTTP 502", not_before=None)
        assert (store.chunk(cid).resubmits, store.chunk(cid).not_before) == (3, None)
        assert store.file(fid).notes == [*notes_before, note, RESUBMIT_NOTE.format(index=0, why="HTTP 502")]

    def test_a_requeue_marketo_did_not_execute_counts_nothing(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTING)
        fid = store.chunk(cid).file_id
        store.requeue(cid)
        got = store.chunk(cid)
        assert (got.state, got.submits, got.resubmits, got.not_before) == (ChunkState.PENDING, 1, 0, None)
        assert store.file(fid).notes == []

    def test_the_hold_survives_a_reopen(self, tmp_path):
        first = Store(tmp_path / "state")
        cid = chunk_in(first, tmp_path, ChunkState.SUBMITTING)
        first.requeue(cid, unknown="dropzone stopped", not_before=1234.25)
        first.close()
        again = Store(tmp_path / "state")
        try:
            assert (again.chunk(cid).not_before, again.chunk(cid).resubmits) == (1234.25, 1)
        finally:
            again.close()

    def test_notes_are_kept_once_in_order(self, store, tmp_path):
        fid = file_in(store, tmp_path, FileState.CLAIMED)
        for note in ("first", "second", "first"):
            store.add_note(fid, note)
        split(store, tmp_path, fid, 1, notes=("second", "third", "third"))
        assert store.file(fid).notes == ["first", "second", "third"]


# ---- bytes that are not UTF-8 ------------------------------------------------------------


class TestBytes:
    def test_names_that_are_not_utf8_round_trip(self, store, tmp_path):
        inbox = Path(os.fsdecode(os.fsencode(tmp_path) + b"/in\xe9box"))
        processing = inbox / ".processing" / f"0123-{Path(WEIRD).name}"
        fid = store.begin_claim(inbox=inbox, relpath=WEIRD, processing_path=processing, size=1, dev=1, ino=2)
        store.confirm_claim(fid)
        store.record_split(
            fid, new_chunks(tmp_path, 1, Path(WEIRD).name), target=LEADS, fmt=FileFormat.CSV, rows=10, notes=()
        )
        [chunk] = store.chunks_of(fid)
        store.mark_submitting(chunk.id)
        store.record_batch(chunk.id, batch_id=5, status="Queued")
        store.finish_batch(chunk.id, status="Complete", message=None, counts=Counts(9, 1, 0))
        store.store_results(chunk.id, failures=Path(f"{chunk.path}.failures"), warnings=None)
        weird_name = Path(WEIRD).name
        store.settle(fid, Outcome.PARTIAL)
        store.set_outbox_names(fid, [f"{weird_name}.status.json", f"{weird_name}.failures.csv"])
        store.finish_file(fid, finished_at=FINISHED_AT, archived_to=tmp_path / "archive" / WEIRD)

        row, chunk = store.file(fid), store.chunk(chunk.id)
        assert row.relpath == WEIRD and os.fsencode(row.relpath) == b"acme/leads_\xff\xfe caf\xe9\n$(x).csv"
        assert row.inbox == inbox and row.processing_path == processing
        assert row.archived_to == tmp_path / "archive" / WEIRD
        assert row.outbox_files == [f"{weird_name}.status.json", f"{weird_name}.failures.csv"]
        assert chunk.path.name == f"{weird_name}.part0000"
        assert os.fsencode(chunk.failures_path).endswith(b"caf\xe9\n$(x).csv.part0000.failures")
        db = raw(tmp_path)
        try:
            assert db.execute("SELECT relpath FROM files").fetchone()[0] == os.fsencode(WEIRD)
        finally:
            db.close()

    def test_messages_that_are_not_utf8_are_stored_readably(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTED)
        other = chunk_in(store, tmp_path, ChunkState.SUBMITTING)
        fid = store.chunk(cid).file_id
        store.finish_batch(cid, status="Failed", message=f"cannot parse {WEIRD}", counts=Counts())
        store.fail_chunk(other, f"cannot read {WEIRD}")
        store.add_note(fid, f"renamed {WEIRD}")
        store.settle(fid, Outcome.FAILED, error=f"bad line in {WEIRD}", line=3)
        assert store.chunk(cid).message == f"cannot parse {WEIRD_TEXT}"
        assert store.chunk(other).error == f"cannot read {WEIRD_TEXT}"
        assert store.file(fid).notes == [f"renamed {WEIRD_TEXT}"]
        assert (store.file(fid).error, store.file(fid).error_line) == (f"bad line in {WEIRD_TEXT}", 3)
        db = raw(tmp_path)
        try:  # what other readers of the journal (sqlite3, status tools) get is valid UTF-8 text
            assert db.execute("SELECT error FROM files WHERE id=?", (fid,)).fetchone()[0] == f"bad line in {WEIRD_TEXT}"
        finally:
            db.close()

    def test_a_resubmit_reason_that_is_not_utf8_is_noted_readably(self, store, tmp_path):
        cid = chunk_in(store, tmp_path, ChunkState.SUBMITTING)
        fid = store.chunk(cid).file_id
        store.requeue(cid, unknown=f"no reply for {WEIRD}", not_before=1.0)
        assert store.file(fid).notes == [RESUBMIT_NOTE.format(index=0, why=f"no reply for {WEIRD_TEXT}")]


# ---- one writer -------------------------------------------------------------------------------


class TestSingleInstance:
    def test_a_second_writer_is_refused_with_the_reason(self, store, tmp_path):
        with pytest.raises(StoreError, match="already running") as info:
            Store(tmp_path / "state")
        assert str(tmp_path / "state" / LOCK_NAME) in str(info.value)
        assert (tmp_path / "state" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        claim(store, tmp_path)  # the refusal did not disturb the owner

    def test_the_lock_goes_with_close(self, store, tmp_path):
        store.close()
        again = Store(tmp_path / "state")
        again.close()

    def test_readers_need_no_lock_and_see_committed_rows(self, store, tmp_path):
        fid = claim(store, tmp_path)
        reader = Store(tmp_path / "state", lock=False)
        try:
            assert reader.file(fid).state is FileState.CLAIMING
            store.confirm_claim(fid)
            assert reader.file(fid).state is FileState.CLAIMED
        finally:
            reader.close()

    def test_an_unusable_state_dir_is_a_store_error(self, tmp_path):
        blocker = tmp_path / "state"
        blocker.write_text("a file, not a folder")
        with pytest.raises(StoreError, match="cannot create state_dir"):
            Store(blocker / "inner")


# ---- the file on disk: WAL, reopen, schema versions --------------------------------------------

#: Schema 1 as dropzone wrote it (before files.dev/ino, chunks.not_before and nullable counters).
V1_DDL = (
    """CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        inbox BLOB NOT NULL,
        relpath BLOB NOT NULL,
        processing_path BLOB NOT NULL,
        state TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        received_at TEXT NOT NULL,
        route TEXT,
        fmt TEXT,
        rows INTEGER,
        outcome TEXT,
        error TEXT,
        error_line INTEGER,
        notes TEXT NOT NULL DEFAULT '[]',
        finished_at TEXT,
        outbox_files TEXT,
        archived_to BLOB
    )""",
    "CREATE INDEX files_state ON files(state)",
    """CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id),
        idx INTEGER NOT NULL,
        path BLOB NOT NULL,
        first_line INTEGER NOT NULL,
        last_line INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        batch_id INTEGER,
        submits INTEGER NOT NULL DEFAULT 0,
        resubmits INTEGER NOT NULL DEFAULT 0,
        marketo_status TEXT,
        message TEXT,
        processed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        failures_path BLOB,
        warnings_path BLOB,
        error TEXT,
        submitted_at TEXT,
        UNIQUE (file_id, idx)
    )""",
    "CREATE INDEX chunks_state ON chunks(state)",
)
V1_ROUTE = '{"object":"leads","format":"csv","lookupField":"email","listId":1234}'


def write_v1_journal(tmp_path: Path, *, chunk_file_id: int = 3) -> None:
    """A version-1 journal: one split file (id 3) with one submitted chunk (id 7)."""
    (tmp_path / "state").mkdir()
    db = raw(tmp_path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in V1_DDL:
            db.execute(statement)
        db.execute(
            "INSERT INTO files (id, inbox, relpath, processing_path, state, size, received_at, route, fmt, rows, notes)"
            " VALUES (3, ?, ?, ?, 'split', 42, '2024-05-01T10:00:00Z', ?, 'csv', 20, ?)",
            (
                os.fsencode(tmp_path / "inbox"),
                os.fsencode(WEIRD),
                os.fsencode(tmp_path / "inbox" / ".processing" / "0003-leads.csv"),
                V1_ROUTE,
                '["from schema 1"]',
            ),
        )
        db.execute(
            "INSERT INTO chunks (id, file_id, idx, path, first_line, last_line, rows, size, state, batch_id, submits,"
            " resubmits, marketo_status, processed, failed, warned, submitted_at)"
            " VALUES (7, ?, 0, ?, 2, 21, 20, 400, 'submitted', 1001, 2, 1, 'Importing', 5, 1, 2,"
            " '2024-05-01T10:01:00Z')",
            (chunk_file_id, os.fsencode(tmp_path / "work" / "leads.csv.part0000")),
        )
        db.execute("PRAGMA user_version=1")
        db.commit()
    finally:
        db.close()


def columns(db: sqlite3.Connection, table: str) -> dict[str, bool]:
    """Column name → NOT NULL."""
    info = db.execute(f"PRAGMA table_info({table})")
    return {name: bool(notnull) for _cid, name, _type, notnull, _default, _pk in info}


class TestJournalFile:
    def test_the_journal_is_in_wal_mode(self, store, tmp_path):
        claim(store, tmp_path)
        db = raw(tmp_path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        finally:
            db.close()
        assert (tmp_path / "state" / f"{DB_NAME}-wal").exists()

    def test_reopen_after_close_keeps_every_row(self, tmp_path):
        first = Store(tmp_path / "state")
        fid = claim(first, tmp_path, WEIRD)
        first.confirm_claim(fid)
        [c0, _c1] = split(first, tmp_path, fid, notes=("a note",))
        first.mark_submitting(c0)
        first.record_batch(c0, batch_id=1001, status="Queued")
        files, chunk_rows = first.files(), first.chunks_of(fid)
        first.close()
        again = Store(tmp_path / "state")
        try:
            assert again.files() == files
            assert again.file(fid).target == LEADS and again.file(fid).fmt is FileFormat.CSV
            assert again.chunks_of(fid) == chunk_rows
            assert [c.batch_id for c in again.chunks([ChunkState.SUBMITTED])] == [1001]
        finally:
            again.close()

    def test_a_journal_from_a_newer_dropzone_is_refused(self, tmp_path):
        Store(tmp_path / "state").close()
        db = raw(tmp_path)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        db.close()
        with pytest.raises(StoreError, match="newer dropzone") as info:
            Store(tmp_path / "state")
        assert f"schema {SCHEMA_VERSION + 1}" in str(info.value)
        db = raw(tmp_path)
        try:  # refused, not touched
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        finally:
            db.close()
        # Refusing must not leave the lock held: after a downgrade of the file, the next start works.
        db = raw(tmp_path)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.close()
        Store(tmp_path / "state").close()

    def test_a_damaged_journal_is_a_store_error_and_frees_the_lock(self, tmp_path):
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / DB_NAME).write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreError, match="unusable"):
            Store(tmp_path / "state")
        (tmp_path / "state" / DB_NAME).unlink()
        Store(tmp_path / "state").close()


class TestMigration:
    def test_a_version_1_journal_is_upgraded_in_place(self, tmp_path):
        write_v1_journal(tmp_path)
        store = Store(tmp_path / "state")
        try:
            row = store.file(3)
            assert row.target == ImportTarget(kind=ObjectKind.LEADS, lookup_field="email", list_id=1234)
            assert (row.state, row.fmt, row.rows, row.notes) == (FileState.SPLIT, FileFormat.CSV, 20, ["from schema 1"])
            assert (row.relpath, row.size, row.dev, row.ino, row.outcome) == (WEIRD, 42, None, None, None)
            assert row.processing_path == tmp_path / "inbox" / ".processing" / "0003-leads.csv"
            [chunk] = store.chunks_of(3)
            assert (chunk.id, chunk.index, chunk.state, chunk.batch_id, chunk.marketo_status) == (
                7, 0, ChunkState.SUBMITTED, 1001, "Importing"
            )
            assert (chunk.submits, chunk.resubmits, chunk.processed, chunk.failed, chunk.warned) == (2, 1, 5, 1, 2)
            assert (chunk.first_line, chunk.last_line, chunk.rows, chunk.size) == (2, 21, 20, 400)
            assert (chunk.submitted_at, chunk.not_before) == ("2024-05-01T10:01:00Z", None)
            assert chunk.path == tmp_path / "work" / "leads.csv.part0000"
            assert store.chunks([ChunkState.SUBMITTED]) == [chunk]

            # The new verbs work on the upgraded rows; the counters may now be unknown.
            store.record_progress(7, status="Importing", counts=Counts(processed=None, failed=None, warned=None))
            assert (store.chunk(7).processed, store.chunk(7).failed, store.chunk(7).warned) == (None, None, None)
            store.finish_batch(7, status="Complete", message=None, counts=Counts())
            store.store_results(7, failures=None, warnings=None, counts=Counts(processed=19, failed=1, warned=0))
            assert (store.chunk(7).state, store.chunk(7).processed, store.chunk(7).failed) == (ChunkState.DONE, 19, 1)
            assert store.chunk(7).instance == "default"  # everything before instances went to the one there was
            store.add_note(3, "upgraded")
            store.settle(3, Outcome.PARTIAL)
            store.finish_file(3, finished_at=FINISHED_AT, archived_to=None)
            assert (store.file(3).state, store.file(3).notes) == (FileState.DONE, ["from schema 1", "upgraded"])

            fid = claim(store, tmp_path, "new.csv", dev=8, ino=9)
            store.confirm_claim(fid)
            new_ids = split(store, tmp_path, fid)
            assert fid > 3 and min(new_ids) > 7
            assert (store.file(fid).dev, store.file(fid).ino) == (8, 9)
            store.mark_submitting(new_ids[0])
            store.requeue(new_ids[0], unknown="lost", not_before=50.0)
            assert store.chunk(new_ids[0]).not_before == 50.0
        finally:
            store.close()

        db = raw(tmp_path)
        try:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            file_columns, chunk_columns = columns(db, "files"), columns(db, "chunks")
            assert "dev" in file_columns and "ino" in file_columns
            assert "not_before" in chunk_columns
            assert not any(chunk_columns[name] for name in ("processed", "failed", "warned"))
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert tables == {"files", "chunks", "instances"}
            assert chunk_columns["instance"] and not chunk_columns["endpoint"]
            named = "SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
            indexes = dict(db.execute(named))
            assert indexes == {
                "files_state": "files", "files_identity": "files", "files_route": "files", "chunks_state": "chunks",
                "chunks_instance_state": "chunks", "chunks_group": "chunks", "files_parent": "files",
            }
            assert "header" in file_columns and {"group_id", "upload_path"} <= set(chunk_columns)
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()

        again = Store(tmp_path / "state")  # an upgraded journal opens as it is
        try:
            assert again.file(3).state is FileState.DONE and again.chunk(7).processed == 19
        finally:
            again.close()

    def test_an_upgrade_that_fails_leaves_the_version_1_journal_as_it_was(self, tmp_path):
        write_v1_journal(tmp_path, chunk_file_id=99)  # a chunk of no file: the rebuilt table refuses it
        with pytest.raises(StoreError, match="unusable"):
            Store(tmp_path / "state")
        db = raw(tmp_path)
        try:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 1
            assert "dev" not in columns(db, "files")
            chunk_columns = columns(db, "chunks")
            assert "not_before" not in chunk_columns and chunk_columns["processed"] is True
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert tables == {"files", "chunks"}
            assert db.execute("SELECT id, state, batch_id FROM chunks").fetchall() == [(7, "submitted", 1001)]
        finally:
            db.close()
        with pytest.raises(StoreError, match="unusable"):  # the lock was freed: the next try gets as far
            Store(tmp_path / "state")


# ---- shared imports (coalescing): one batch, several chunks ------------------------------------------


def pending_chunks(store: Store, tmp_path: Path, n: int) -> list[int]:
    """``n`` split files of one chunk each; their chunk ids, in order of receipt."""
    out = []
    for i in range(n):
        fid = claim(store, tmp_path, f"leads_{i}.csv", ino=100 + i)
        store.confirm_claim(fid)
        store.record_split(fid, new_chunks(tmp_path, 1, stem=f"f{i}"), target=LEADS, fmt=FileFormat.CSV, rows=10,
                           notes=(), header=b"email\n")
        out.append(store.chunks_of(fid)[0].id)
    return out


class TestSharedImports:
    def test_a_group_moves_together_through_every_verb(self, store, tmp_path):
        first, second, third, alone = pending_chunks(store, tmp_path, 4)
        upload = tmp_path / "work" / "import.1.csv"
        store.mark_submitting(first, endpoint="https://x", members=[second, third], upload=upload)
        group = store.group_of(third)
        assert [c.id for c in group] == [first, second, third]
        assert {(c.state, c.group_id, c.upload_path, c.submits, c.endpoint) for c in group} == {
            (ChunkState.SUBMITTING, first, upload, 1, "https://x")
        }
        assert store.chunk(alone).state is ChunkState.PENDING and store.chunk(alone).group_id is None
        assert store.count_batches([ChunkState.SUBMITTING]) == 1
        assert store.count_batches([ChunkState.SUBMITTING, ChunkState.PENDING]) == 2

        store.requeue(second, unknown="the reply was lost", not_before=99.0)  # any member speaks for the group
        group = store.group_of(first)
        assert {(c.state, c.resubmits, c.not_before, c.group_id) for c in group} == {
            (ChunkState.PENDING, 1, 99.0, first)
        }
        assert all(any("the reply was lost" in n for n in store.file(c.file_id).notes) for c in group)
        store.mark_submitting(first, endpoint="https://x")  # the same group, the same bytes
        store.record_batch(first, batch_id=1001, status="Queued")
        store.record_progress(first, status="Importing", counts=Counts(processed=5))
        store.finish_batch(first, status="Complete", message=None, counts=Counts(28, 2, 0))
        assert {(c.state, c.batch_id, c.processed, c.failed) for c in store.group_of(first)} == {
            (ChunkState.FETCHING, 1001, 28, 2)
        }
        with pytest.raises(ValueError, match="results for chunks"):
            store.store_results(first, per_chunk={first: Results(None, None)})  # every member must be given
        per_chunk = {
            first: Results(tmp_path / "a.failures", None, Counts(8, 2, 0)),
            second: Results(None, None, Counts(10, 0, 0)),
            third: Results(None, None, Counts(10, 0, 0)),
        }
        store.store_results(third, per_chunk=per_chunk)
        got = {c.id: (c.state, c.processed, c.failed, c.failures_path) for c in store.group_of(first)}
        assert got == {
            first: (ChunkState.DONE, 8, 2, tmp_path / "a.failures"),
            second: (ChunkState.DONE, 10, 0, None),
            third: (ChunkState.DONE, 10, 0, None),
        }

    def test_a_failure_fails_every_chunk_in_the_import(self, store, tmp_path):
        first, second = pending_chunks(store, tmp_path, 2)
        store.mark_submitting(first, members=[second], upload=tmp_path / "m.csv")
        store.fail_chunk(second, "1003: refused")
        assert {(c.state, c.error) for c in store.group_of(first)} == {(ChunkState.ERROR, "1003: refused")}

    def test_only_pending_chunks_of_no_group_are_merged_and_a_refusal_changes_nothing(self, store, tmp_path):
        first, second, third = pending_chunks(store, tmp_path, 3)
        store.mark_submitting(first, members=[second], upload=tmp_path / "m.csv")
        before = journal(store)
        with pytest.raises(TransitionError, match="merged"):
            store.mark_submitting(third, members=[second], upload=tmp_path / "n.csv")
        assert journal(store) == before

    def test_the_header_is_journalled_only_for_files_that_may_share(self, store, tmp_path):
        [cid] = pending_chunks(store, tmp_path, 1)
        assert store.file(store.chunk(cid).file_id).header == b"email\n"
        fid = file_in(store, tmp_path, FileState.SPLIT)  # split without a header: never merged
        assert store.file(fid).header is None


def write_v3_journal(tmp_path: Path) -> None:
    """A schema-3 journal (as created, then upgraded from 2): a split file with a submitted chunk."""
    from dropzone.journal_schema import DDL, UPGRADES

    (tmp_path / "state").mkdir()
    db = raw(tmp_path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in (*DDL, *UPGRADES[2]):
            db.execute(statement)
        db.execute(
            "INSERT INTO files (id, inbox, relpath, processing_path, state, size, received_at, route, fmt, rows)"
            " VALUES (3, ?, 'leads.csv', ?, 'split', 42, '2024-05-01T10:00:00Z', ?, 'csv', 20)",
            (os.fsencode(tmp_path / "inbox"), os.fsencode(tmp_path / "inbox" / ".processing" / "x"), LEADS.to_json()),
        )
        db.execute(
            "INSERT INTO chunks (id, file_id, idx, path, first_line, last_line, rows, size, state, batch_id,"
            " instance, endpoint) VALUES (7, 3, 0, ?, 2, 21, 20, 400, 'submitted', 1001, 'default', 'https://x')",
            (os.fsencode(tmp_path / "work" / "leads.csv.part0000"),),
        )
        db.execute("PRAGMA user_version=3")
        db.commit()
    finally:
        db.close()


class TestMigrationToShared:
    def test_a_version_3_journal_is_upgraded_in_place(self, tmp_path):
        write_v3_journal(tmp_path)
        store = Store(tmp_path / "state")
        try:
            assert store.file(3).header is None  # split before coalescing: never merged
            chunk = store.chunk(7)
            assert (chunk.state, chunk.batch_id, chunk.group_id, chunk.upload_path) == (
                ChunkState.SUBMITTED, 1001, None, None
            )
            assert chunk.batch_key == 7 and store.group_of(7) == [chunk]
            store.finish_batch(7, status="Complete", message=None, counts=Counts(20, 0, 0))
            store.store_results(7, failures=None, warnings=None)
            assert store.chunk(7).state is ChunkState.DONE
            new = pending_chunks(store, tmp_path, 2)
            store.mark_submitting(new[0], members=[new[1]], upload=tmp_path / "m.csv")
            assert store.count_batches([ChunkState.SUBMITTING]) == 1
        finally:
            store.close()
        db = raw(tmp_path)
        try:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
            assert "header" in columns(db, "files")
            assert {"group_id", "upload_path"} <= set(columns(db, "chunks"))
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
