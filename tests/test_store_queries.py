"""The journal's bounded queries: what a pass loads is what it can work on, never the whole backlog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dropzone import store_queries
from dropzone.jobs import CHUNK_OPEN, FileState, Outcome
from dropzone.kinds import FileFormat, ObjectKind
from dropzone.store import Counts, NewClaim, Store
from dropzone.targets import ImportTarget
from tests.test_store import FINISHED_AT, LEADS, claim, new_chunks

CARS = ImportTarget(kind=ObjectKind.CUSTOM_OBJECT, api_name="car_c")


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def split_file(store: Store, tmp_path: Path, name: str, *, inbox: str = "a", target: ImportTarget = LEADS,
               chunks: int = 1, header: bytes | None = None) -> int:
    fid = store.begin_claim(inbox=tmp_path / inbox, relpath=name, processing_path=tmp_path / inbox / name,
                            size=1, dev=1, ino=hash(name) & 0xFFFFFF)
    store.confirm_claim(fid)
    store.record_split(fid, new_chunks(tmp_path, chunks, stem=name), target=target, fmt=FileFormat.CSV,
                       rows=chunks, notes=(), header=header)
    return fid


def finish(store: Store, chunk_id: int) -> None:
    store.mark_submitting(chunk_id)
    store.fail_chunk(chunk_id, "refused")


class TestPendingHeads:
    def test_the_oldest_of_each_inbox_and_route_in_order_of_receipt(self, store, tmp_path):
        for i in range(5):
            split_file(store, tmp_path, f"a{i}.csv")
        late_car = split_file(store, tmp_path, "car.csv", target=CARS)
        late_b = split_file(store, tmp_path, "b0.csv", inbox="b")
        heads = store.pending_heads("default", per_route=2)
        names = [store.file(c.file_id).relpath for c in heads]
        assert names == ["a0.csv", "a1.csv", "car.csv", "b0.csv"]  # one partner's backlog hides no other's file
        assert [c.file_id for c in heads][-2:] == [late_car, late_b]

    def test_only_pending_chunks_of_split_files_of_that_instance(self, store, tmp_path):
        sent = split_file(store, tmp_path, "sent.csv")
        store.mark_submitting(store.chunks_of(sent)[0].id)
        other = split_file(store, tmp_path, "other.csv")
        store.reassign(store.chunks_of(other)[0].id, "sandbox")
        two = split_file(store, tmp_path, "two.csv", chunks=2)
        assert [(c.file_id, c.index) for c in store.pending_heads("default", per_route=5)] == [(two, 0), (two, 1)]
        assert [c.file_id for c in store.pending_heads("sandbox", per_route=5)] == [other]


    def test_files_that_share_imports_are_read_up_to_one_merged_import(self, store, tmp_path):
        """Coalescing merges what waits: a pass reads enough pending chunks to fill one import (new_chunks
        are 100 bytes each), not merely the few it could send alone."""
        shared = [split_file(store, tmp_path, f"s{i}.csv", header=b"email\n") for i in range(8)]
        alone = [split_file(store, tmp_path, f"n{i}.csv", target=CARS) for i in range(8)]
        heads = store.pending_heads("default", per_route=2, budget=450)
        assert [c.file_id for c in heads] == [*shared[:5], *alone[:2]]

    def test_held_chunks_and_members_of_a_shared_import_do_not_count(self, store, tmp_path):
        held, member, free1, free2, later = (split_file(store, tmp_path, f"f{i}.csv") for i in range(5))
        store.mark_submitting(store.chunks_of(held)[0].id)
        store.requeue(store.chunks_of(held)[0].id, unknown="HTTP 502", not_before=2000.0)
        leader = store.chunks_of(free1)[0].id
        store.mark_submitting(leader, members=[store.chunks_of(member)[0].id])
        store.requeue(leader)
        heads = store.pending_heads("default", per_route=2, wall=1000.0)
        # held (until 2000) and member (rides with free1's import) come along; free1 and free2 are the two.
        assert [c.file_id for c in heads] == [held, member, free1, free2]
        assert later not in {c.file_id for c in store.pending_heads("default", per_route=2, wall=3000.0)}

    @pytest.mark.parametrize(
        ("rows", "per_route", "budget", "taken"),
        [
            ([], 2, 0, 0),
            ([(1, None, None, 10, 0), (2, None, None, 10, 0), (3, None, None, 10, 0)], 2, 0, 2),  # per_route
            ([(i, None, None, 10, 1) for i in range(1, 6)], 2, 35, 4),  # sharing: until the budget is reached
            ([(i, None, None, 10, 1) for i in range(1, 6)], 2, 5, 2),  # ... never fewer than per_route
            ([(1, None, 9.0, 10, 0), (2, None, None, 10, 0), (3, None, None, 10, 0)], 2, 0, 3),  # held: no count
            ([(1, None, 4.0, 10, 0), (2, None, None, 10, 0), (3, None, None, 10, 0)], 2, 0, 2),  # hold over
            ([(1, 5, None, 10, 0), (2, None, None, 10, 0), (3, None, None, 10, 0)], 2, 0, 3),  # member: no count
        ],
    )
    def test_take_heads(self, rows, per_route, budget, taken):
        """Rows are (id, group_id, not_before, size, shares); the wall clock is 5.0."""
        named = [dict(zip(("id", "group_id", "not_before", "size", "shares"), row, strict=True)) for row in rows]
        assert store_queries.take_heads(named, per_route, budget=budget, wall=5.0) == named[:taken]


class TestImports:
    def test_one_row_per_import_however_many_files_it_carries(self, store, tmp_path):
        ids = [split_file(store, tmp_path, f"f{i}.csv") for i in range(4)]
        first, *rest = (store.chunks_of(fid)[0].id for fid in ids[:3])
        store.mark_submitting(first, members=rest)
        store.mark_submitting(store.chunks_of(ids[3])[0].id, endpoint="https://a.example")
        assert [c.id for c in store.imports(CHUNK_OPEN, instance="default")] == [first, store.chunks_of(ids[3])[0].id]
        assert [c.id for c in store.imports(CHUNK_OPEN, instance="default", endpoint="https://b.example")] == [first]
        assert store.imports(CHUNK_OPEN, instance="sandbox") == []
        assert store.group_totals(first) == (3, 30)  # files, rows: what a status file says of a shared batch
        assert not store.has_pending("default") and not store.has_pending("sandbox")


class TestFilesToSettle:
    def test_first_every_settled_split_file_then_only_those_a_chunk_of_which_changed(self, store, tmp_path):
        done = split_file(store, tmp_path, "done.csv")
        finish(store, store.chunks_of(done)[0].id)
        busy = split_file(store, tmp_path, "busy.csv", chunks=2)
        assert [r.id for r in store.files_to_settle()] == [done]  # after a start: a full look
        assert [r.id for r in store.files_to_settle()] == [done]  # not settled yet: named again
        store.settle(done, Outcome.FAILED)
        assert store.files_to_settle() == []
        first, second = (c.id for c in store.chunks_of(busy))
        finish(store, first)
        assert store.files_to_settle() == []  # one chunk of two is final
        finish(store, second)
        assert [r.id for r in store.files_to_settle()] == [busy]

    def test_every_file_of_a_shared_import_is_named_when_the_import_ends(self, store, tmp_path):
        ids = [split_file(store, tmp_path, f"f{i}.csv") for i in range(3)]
        assert store.files_to_settle() == []
        first, *rest = (store.chunks_of(fid)[0].id for fid in ids)
        store.mark_submitting(first, members=rest)
        store.record_batch(first, batch_id=7, status="Queued")
        store.finish_batch(first, status="Complete", message=None, counts=Counts(3, 0, 0))
        assert store.files_to_settle() == []
        store.store_results(first)  # one verb, the whole import: each member's file changed
        assert [r.id for r in store.files_to_settle()] == ids

    def test_a_file_split_into_no_chunk_is_settled_at_once(self, store, tmp_path):
        assert store.files_to_settle() == []
        fid = claim(store, tmp_path)
        store.confirm_claim(fid)
        store.record_split(fid, [], target=LEADS, fmt=FileFormat.CSV, rows=0, notes=())
        assert [r.id for r in store.files_to_settle()] == [fid]


class TestBatchesAndBounds:
    def test_a_batch_of_claims_is_one_transaction(self, store, tmp_path):
        before = store.changes
        ids = store.begin_claims([
            NewClaim(tmp_path / "in", f"f{i}.csv", tmp_path / "in" / ".processing" / str(i), 1, 1, 100 + i)
            for i in range(3)
        ])
        store.confirm_claim(*ids)
        assert store.changes == before + 2
        assert [r.relpath for r in store.files([FileState.CLAIMED])] == ["f0.csv", "f1.csv", "f2.csv"]
        assert store.holds(1, 101) and not store.holds(1, 999)

    def test_first_and_with_ids(self, store, tmp_path):
        ids = [split_file(store, tmp_path, f"f{i}.csv") for i in range(4)]
        assert [r.id for r in store.files([FileState.SPLIT], first=2)] == ids[:2]
        assert [r.id for r in store.files([FileState.SPLIT], limit=2)] == ids[2:]
        store.settle(ids[1], Outcome.FAILED)
        assert [r.id for r in store.files_with_ids([ids[3], ids[1], ids[0]], [FileState.SPLIT])] == [ids[0], ids[3]]
        store.finish_file(ids[1], finished_at=FINISHED_AT, archived_to=None)

    def test_the_queries_of_a_pass_use_indexes(self, store, tmp_path):
        """No pass scans the files table: its history grows without bound."""
        split_file(store, tmp_path, "f.csv")
        db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
        held = "EXPLAIN QUERY PLAN SELECT 1 FROM files WHERE dev=1 AND ino=2 AND state!='done'"
        try:
            plan = " ".join(row[3] for row in db.execute(held))
        finally:
            db.close()
        assert "files_identity" in plan
