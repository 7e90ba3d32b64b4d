"""The journal's contract (dropzone/store.py): checked transitions, one writer, bytes-safe paths, WAL, durability."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from dropzone.errors import StoreError
from dropzone.jobs import ChunkState, FileState, TransitionError
from dropzone.store import DB_NAME, LOCK_NAME, SCHEMA_VERSION, NewChunk, Store

WEIRD = os.fsdecode(b"acme/leads_\xff\xfe caf\xe9\n$(x).csv")  # not UTF-8, a newline, shell characters


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def claim(store: Store, tmp_path: Path, relpath: str = "leads_1.csv") -> int:
    return store.begin_claim(
        inbox=tmp_path / "inbox",
        relpath=relpath,
        processing_path=tmp_path / "inbox" / ".processing" / f"x-{Path(relpath).name}",
        size=42,
        received_at="2024-05-01T10:00:00Z",
    )


def chunks(tmp_path: Path, n: int = 2, stem: str = "leads_1.csv") -> list[NewChunk]:
    return [
        NewChunk(index=i, path=tmp_path / "work" / f"{stem}.part{i:04d}", first_line=2 + 10 * i,
                 last_line=11 + 10 * i, rows=10, size=100)
        for i in range(n)
    ]


class TestTransitions:
    def test_a_file_walks_its_lifecycle(self, store, tmp_path):
        fid = claim(store, tmp_path)
        assert store.file(fid).state is FileState.CLAIMING
        store.set_file(fid, FileState.CLAIMED)
        store.add_chunks(fid, chunks(tmp_path), route={"object": "leads"}, fmt="csv", rows=20)
        row = store.file(fid)
        assert (row.state, row.route, row.fmt, row.rows) == (FileState.SPLIT, {"object": "leads"}, "csv", 20)
        assert [c.state for c in store.chunks_of(fid)] == [ChunkState.PENDING, ChunkState.PENDING]
        store.set_file(fid, FileState.FINISHING, outcome="Complete")
        store.set_file(fid, FileState.DONE, finished_at="2024-05-01T10:05:00Z")
        assert store.file(fid).state is FileState.DONE and store.file(fid).outcome == "Complete"

    @pytest.mark.parametrize(
        ("path", "bad"),
        [
            ([], FileState.SPLIT),  # claiming -> split: skips the claim
            ([FileState.CLAIMED], FileState.DONE),  # claimed -> done: no outcome written
            ([FileState.CLAIMED, FileState.FINISHING, FileState.DONE], FileState.CLAIMED),  # done is final
        ],
    )
    def test_a_forbidden_file_move_raises_and_changes_nothing(self, store, tmp_path, path, bad):
        fid = claim(store, tmp_path)
        for state in path:
            store.set_file(fid, state)
        before = store.file(fid)
        with pytest.raises(TransitionError):
            store.set_file(fid, bad, outcome="Complete", error="must not stick")
        assert store.file(fid) == before  # the other fields of the same call were rolled back too

    def test_a_forbidden_chunk_move_raises_and_changes_nothing(self, store, tmp_path):
        fid = claim(store, tmp_path)
        store.set_file(fid, FileState.CLAIMED)
        store.add_chunks(fid, chunks(tmp_path, 1))
        [chunk] = store.chunks_of(fid)
        with pytest.raises(TransitionError):
            store.set_chunk(chunk.id, ChunkState.SUBMITTED, batch_id=7)  # pending -> submitted skips submitting
        assert store.chunk(chunk.id) == chunk
        store.set_chunk(chunk.id, ChunkState.SUBMITTING, submits=1)
        store.set_chunk(chunk.id, ChunkState.SUBMITTED, batch_id=7)
        store.set_chunk(chunk.id, ChunkState.FETCHING, processed=10)
        store.set_chunk(chunk.id, ChunkState.DONE)
        with pytest.raises(TransitionError):
            store.set_chunk(chunk.id, ChunkState.PENDING)
        done = store.chunk(chunk.id)
        assert (done.state, done.batch_id, done.submits, done.processed) == (ChunkState.DONE, 7, 1, 10)

    def test_same_state_updates_fields_only(self, store, tmp_path):
        fid = claim(store, tmp_path)
        store.set_file(fid, FileState.CLAIMING, size=43)
        assert store.file(fid).size == 43

    def test_add_chunks_is_one_transaction(self, store, tmp_path):
        """A chunk that cannot be recorded leaves the file claimed and no chunk behind."""
        fid = claim(store, tmp_path)
        store.set_file(fid, FileState.CLAIMED)
        duplicate = chunks(tmp_path, 1) * 2  # (file_id, idx) is unique
        with pytest.raises(sqlite3.IntegrityError):
            store.add_chunks(fid, duplicate, rows=10)
        assert store.file(fid).state is FileState.CLAIMED and store.file(fid).rows is None
        assert store.chunks_of(fid) == []

    def test_forget_claim_only_forgets_claims(self, store, tmp_path):
        fid = claim(store, tmp_path)
        other = claim(store, tmp_path, "leads_2.csv")
        store.set_file(other, FileState.CLAIMED)
        store.forget_claim(fid)
        store.forget_claim(other)
        with pytest.raises(KeyError):
            store.file(fid)
        assert store.file(other).state is FileState.CLAIMED

    def test_notes_are_kept_once_in_order(self, store, tmp_path):
        fid = claim(store, tmp_path)
        for note in ("first", "second", "first"):
            store.add_note(fid, note)
        assert store.file(fid).notes == ["first", "second"]

    def test_queries(self, store, tmp_path):
        ids = [claim(store, tmp_path, f"leads_{i}.csv") for i in range(5)]
        for fid in ids[:3]:
            store.set_file(fid, FileState.CLAIMED)
        store.set_file(ids[0], FileState.FINISHING, outcome="Rejected")
        store.set_file(ids[0], FileState.DONE)
        assert [r.id for r in store.files([FileState.CLAIMED])] == ids[1:3]
        assert [r.id for r in store.files(limit=2)] == ids[3:]
        assert store.counts() == {"Rejected": 1, "claimed": 2, "claiming": 2}


class TestSingleInstance:
    def test_a_second_writer_is_refused_with_the_reason(self, store, tmp_path):
        with pytest.raises(StoreError, match="already running") as info:
            Store(tmp_path / "state")
        assert LOCK_NAME in str(info.value)
        assert (tmp_path / "state" / LOCK_NAME).read_text() == f"{os.getpid()}\n"

    def test_the_lock_goes_with_close(self, store, tmp_path):
        store.close()
        again = Store(tmp_path / "state")
        again.close()

    def test_readers_need_no_lock_and_see_committed_rows(self, store, tmp_path):
        fid = claim(store, tmp_path)
        reader = Store(tmp_path / "state", lock=False)
        try:
            assert reader.file(fid).state is FileState.CLAIMING
            store.set_file(fid, FileState.CLAIMED)
            assert reader.file(fid).state is FileState.CLAIMED
        finally:
            reader.close()

    def test_an_unusable_state_dir_is_a_store_error(self, tmp_path):
        blocker = tmp_path / "state"
        blocker.write_text("a file, not a folder")
        with pytest.raises(StoreError, match="cannot create state_dir"):
            Store(blocker / "inner")


class TestBytesPaths:
    def test_names_that_are_not_utf8_round_trip(self, store, tmp_path):
        inbox = Path(os.fsdecode(os.fsencode(tmp_path) + b"/in\xe9box"))
        processing = inbox / ".processing" / f"0123-{Path(WEIRD).name}"
        fid = store.begin_claim(inbox=inbox, relpath=WEIRD, processing_path=processing, size=1,
                                received_at="2024-05-01T10:00:00Z")
        store.set_file(fid, FileState.CLAIMED, archived_to=tmp_path / "archive" / WEIRD)
        store.add_chunks(fid, chunks(tmp_path, 1, Path(WEIRD).name))
        [chunk] = store.chunks_of(fid)
        store.set_chunk(chunk.id, failures_path=Path(f"{chunk.path}.failures"))
        row, chunk = store.file(fid), store.chunk(chunk.id)
        assert row.relpath == WEIRD and os.fsencode(row.relpath) == b"acme/leads_\xff\xfe caf\xe9\n$(x).csv"
        assert row.inbox == inbox and row.processing_path == processing
        assert row.archived_to == tmp_path / "archive" / WEIRD
        assert chunk.path.name == f"{Path(WEIRD).name}.part0000"
        assert os.fsencode(chunk.failures_path).endswith(b"caf\xe9\n$(x).csv.part0000.failures")
        raw = sqlite3.connect(tmp_path / "state" / DB_NAME)
        try:
            assert raw.execute("SELECT relpath FROM files").fetchone()[0] == os.fsencode(WEIRD)
        finally:
            raw.close()


class TestDurability:
    def test_the_journal_is_in_wal_mode(self, store, tmp_path):
        claim(store, tmp_path)
        raw = sqlite3.connect(tmp_path / "state" / DB_NAME)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            raw.close()
        assert (tmp_path / "state" / f"{DB_NAME}-wal").exists()

    def test_reopen_after_close_keeps_every_row(self, tmp_path):
        first = Store(tmp_path / "state")
        fid = claim(first, tmp_path, WEIRD)
        first.set_file(fid, FileState.CLAIMED)
        first.add_chunks(fid, chunks(tmp_path), route={"object": "leads", "listId": 1}, fmt="csv", rows=20,
                         notes=["a note"])
        [c0, _c1] = first.chunks_of(fid)
        first.set_chunk(c0.id, ChunkState.SUBMITTING, submits=1)
        first.set_chunk(c0.id, ChunkState.SUBMITTED, batch_id=1001, submitted_at="2024-05-01T10:01:00Z")
        files, chunk_rows = first.files(), first.chunks_of(fid)
        first.close()
        again = Store(tmp_path / "state")
        try:
            assert again.files() == files
            assert again.chunks_of(fid) == chunk_rows
            assert [c.batch_id for c in again.chunks([ChunkState.SUBMITTED])] == [1001]
        finally:
            again.close()

    def test_a_journal_from_a_newer_dropzone_is_refused(self, tmp_path):
        Store(tmp_path / "state").close()
        raw = sqlite3.connect(tmp_path / "state" / DB_NAME)
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        raw.close()
        with pytest.raises(StoreError, match="newer dropzone") as info:
            Store(tmp_path / "state")
        assert f"schema {SCHEMA_VERSION + 1}" in str(info.value)
        # Refusing must not leave the lock held: after a downgrade of the file, the next start works.
        raw = sqlite3.connect(tmp_path / "state" / DB_NAME)
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        raw.close()
        Store(tmp_path / "state").close()

    def test_a_damaged_journal_is_a_store_error_and_frees_the_lock(self, tmp_path):
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / DB_NAME).write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreError, match="unusable"):
            Store(tmp_path / "state")
        (tmp_path / "state" / DB_NAME).unlink()
        Store(tmp_path / "state").close()
