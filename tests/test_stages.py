"""Each stage on its own: real folders and the real journal, a fake clock, plain values; no daemon."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dropzone import errors, health, safefs, throttle
from dropzone import intake as intake_module
from dropzone.config import Config, Inbox
from dropzone.dispatch import Dispatch
from dropzone.intake import Intake
from dropzone.jobs import ChunkState, FileState, Outcome
from dropzone.marketo import BatchStatus
from dropzone.prepare import Prepare, work_dir
from dropzone.report import Report
from dropzone.store import Store
from dropzone.targets import ImportTarget
from tests.helpers import make_config

QUIET = 0.2  # make_config's quiet period


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, "http://127.0.0.1:9")  # nothing answers there: no stage here calls Marketo


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    s = Store(config.state_dir)
    yield s
    s.close()


@pytest.fixture
def inbox(config: Config) -> Inbox:
    return config.inboxes[0]


def intake_of(inbox: Inbox, store: Store) -> Intake:
    # Scan-only: the stage is driven by its scans here, not by watchdog's events.
    inbox = dataclasses.replace(inbox, watch=inbox.watch.POLLING)
    return Intake(inbox, store, queue.Queue())


def claim(inbox: Inbox, store: Store, name: str, data: bytes) -> int:
    """Drop a file and run intake until it is claimed; returns the file id."""
    (inbox.path / name).write_bytes(data)
    return claim_with(intake_of(inbox, store), store, name)


def claim_with(intake: Intake, store: Store, name: str) -> int:
    assert intake.run_once(0.0) is False  # first sight: the quiet period starts
    intake.rescan_now()
    assert intake.run_once(QUIET + 0.01) is True
    [row] = [r for r in store.files([FileState.CLAIMED]) if r.relpath == name]
    return row.id


class TestIntake:
    def test_a_file_is_claimed_only_after_its_quiet_period(self, inbox, store):
        (inbox.path / "leads_a.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        assert intake.run_once(0.0) is False
        assert intake.run_once(QUIET / 2) is False
        assert intake.run_once(QUIET + 0.01) is True
        [row] = store.files([FileState.CLAIMED])
        assert row.relpath == "leads_a.csv"
        assert not (inbox.path / "leads_a.csv").exists()
        assert row.processing_path.read_bytes() == b"email\na@example.com\n"

    def test_a_symlinked_folder_is_never_walked(self, tmp_path, inbox, store):
        """acme links bob's inbox into its own: nothing of bob's is claimed."""
        bob = tmp_path / "bob"
        bob.mkdir()
        (bob / "leads_bob.csv").write_bytes(b"email\nbob@example.com\n")
        (inbox.path / "x").symlink_to(bob)
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        intake.rescan_now()
        assert intake.run_once(QUIET + 0.01) is False
        assert store.files() == []
        assert (bob / "leads_bob.csv").read_bytes() == b"email\nbob@example.com\n"

    def test_a_planted_processing_symlink_is_refused(self, tmp_path, inbox, store):
        """``.processing -> bob's inbox``: the claim is refused, the file stays where the partner put it."""
        bob = tmp_path / "bob"
        bob.mkdir()
        (inbox.path / ".processing").symlink_to(bob)
        (inbox.path / "leads_a.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        intake.rescan_now()
        assert intake.run_once(QUIET + 0.01) is False
        assert list(bob.iterdir()) == []
        assert (inbox.path / "leads_a.csv").exists()
        assert store.files() == []

    def test_the_marker_is_consumed_with_its_file(self, tmp_path, store):
        cfg = make_config(
            tmp_path,
            "http://127.0.0.1:9",
            routes='\n      - match: "*.csv"\n        object: leads\n        marker: true\n',
        )
        inbox = cfg.inboxes[0]
        (inbox.path / "a.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        intake.rescan_now()
        assert intake.run_once(QUIET + 0.01) is False  # no marker yet
        (inbox.path / "a.csv.done").write_bytes(b"")
        intake.rescan_now()
        assert intake.run_once(QUIET + 0.02) is True
        assert not (inbox.path / "a.csv.done").exists()
        # A later upload under the same name waits for a new marker.
        (inbox.path / "a.csv").write_bytes(b"email\nb@example.com\n")
        intake.rescan_now()
        intake.run_once(1.0)
        intake.rescan_now()
        assert intake.run_once(2.0) is False

    def test_temporary_names_are_only_looked_at_by_scans(self, inbox, store):
        for i in range(50):
            (inbox.path / f"leads_{i}.csv.filepart").write_bytes(b"email\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        assert intake.waiting(0.0)[0] == 0  # never-ready names do not count as waiting
        assert intake.run_once(QUIET + 0.01) is False


class TestIntakeCost:
    """A pass costs what changed: never a look at every file tracked."""

    def marker_inbox(self, tmp_path: Path) -> Inbox:
        routes = '\n      - match: "*.csv"\n        object: leads\n        marker: true\n'
        return make_config(tmp_path, "http://127.0.0.1:9", routes=routes).inboxes[0]

    def test_a_pass_with_nothing_new_looks_at_nothing(self, tmp_path, store, monkeypatch):
        inbox = self.marker_inbox(tmp_path)
        for i in range(20):
            (inbox.path / f"f{i}.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)  # the scan: first sight of each
        assert intake.next_due() == QUIET
        assert intake.run_once(QUIET + 0.01) is False  # each looked at once more: no marker
        assert intake.next_due() is None
        looked: list[str] = []
        real = safefs.Root.stat
        monkeypatch.setattr(safefs.Root, "stat", lambda root, rel: looked.append(rel) or real(root, rel))
        for now in (0.3, 0.4, 0.49):  # before the next scan (scan_interval 0.5)
            assert intake.run_once(now) is False
        assert looked == []
        assert intake.waiting(0.49) == (20, 0.0)

    def test_a_marker_that_arrives_brings_its_file_along(self, tmp_path, store):
        inbox = self.marker_inbox(tmp_path)
        (inbox.path / "a.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        assert intake.run_once(QUIET + 0.01) is False
        (inbox.path / "a.csv.done").write_bytes(b"")
        intake.hint("a.csv.done")  # only the marker's event: no scan
        assert intake.run_once(QUIET + 0.02) is True
        assert [r.relpath for r in store.files([FileState.CLAIMED])] == ["a.csv"]

    def test_ready_files_beyond_a_pass_are_claimed_in_the_next(self, inbox, store, monkeypatch):
        monkeypatch.setattr(intake_module.D, "CLAIMS_PER_PASS", 3)
        for i in range(5):
            (inbox.path / f"leads_{i}.csv").write_bytes(b"email\na@example.com\n")
        intake = intake_of(inbox, store)
        intake.run_once(0.0)
        assert intake.run_once(QUIET + 0.01) is True
        assert len(store.files([FileState.CLAIMED])) == 3
        assert intake.run_once(QUIET + 0.02) is True
        assert len(store.files([FileState.CLAIMED])) == 5
        assert sorted(p.name for p in inbox.path.iterdir()) == [".processing"]


class TestPrepare:
    def prepare(self, config: Config, store: Store) -> Prepare:
        return Prepare(store, {config.inboxes[0].path: config.inboxes[0]}.get, config.state_dir,
                       config.split_max_bytes, health.Metrics())

    def test_a_claimed_file_is_split_with_its_target(self, config, inbox, store):
        file_id = claim(inbox, store, "leads_a.csv", b"email\na@example.com\n")
        assert self.prepare(config, store).run_once(1.0) is True
        row = store.file(file_id)
        assert row.state is FileState.SPLIT
        assert row.target == ImportTarget(kind=row.target.kind, lookup_field="email", list_id=1234)
        [chunk] = store.chunks_of(file_id)
        assert chunk.path.read_bytes() == b"email\na@example.com\n"

    def test_a_bad_header_is_refused_before_any_chunk_is_written(self, config, inbox, store):
        big = b" email \n" + b"a@example.com\n" * 200_000  # 2.8 MB
        file_id = claim(inbox, store, "leads_big.csv", big)
        assert self.prepare(config, store).run_once(1.0) is True
        row = store.file(file_id)
        assert (row.state, row.outcome, row.error_line) == (FileState.FINISHING, Outcome.REJECTED, 1)
        assert "spaces around them" in (row.error or "")
        assert not work_dir(config.state_dir, file_id).exists()

    def test_trimmed_header_is_written_by_the_splitter(self, config, inbox, store):
        file_id = claim(inbox, store, "cars_a.csv", b" vin , color\n1,red\n")
        self.prepare(config, store).run_once(1.0)
        [chunk] = store.chunks_of(file_id)
        assert chunk.path.read_bytes() == b"vin,color\n1,red\n"
        assert any("trim_header" in n for n in store.file(file_id).notes)

    def test_an_empty_file_is_rejected_not_tracked_for_a_day(self, config, inbox, store):
        file_id = claim(inbox, store, "leads_empty.csv", b"")
        self.prepare(config, store).run_once(1.0)
        row = store.file(file_id)
        assert row.outcome is Outcome.REJECTED
        assert "empty" in (row.error or "")


class FakeClient:
    """Answers as scripted: each call pops the next answer (an exception is raised)."""

    def __init__(self, *, submit: list[object] = (), status: list[object] = ()) -> None:  # type: ignore[assignment]
        self.submit_answers, self.status_answers = list(submit), list(status)
        self.submits = 0

    def submit(self, target, path, *, fmt, retry_for=None):
        self.submits += 1
        answer = self.submit_answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def status(self, target, batch_id, retry_for=None):
        answer = self.status_answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def failures(self, target, batch_id, retry_for=None):
        return None

    def warnings(self, target, batch_id, retry_for=None):
        return None

    def usage_today(self, retry_for=None):
        return 0

    def quota_today(self) -> throttle.QuotaToday:
        return throttle.QuotaToday(ours=0, instance=0, used=0, rolls_at=dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC))

    def close(self) -> None:
        pass


class TestDispatch:
    def split_file(self, config, inbox, store) -> int:
        file_id = claim(inbox, store, "leads_a.csv", b"email\na@example.com\n")
        TestPrepare().prepare(config, store).run_once(1.0)
        return file_id

    def dispatch(self, config, store, client, wall=lambda: 1000.0) -> Dispatch:
        self.metrics = health.Metrics()
        return Dispatch(store, client, config.marketo, self.metrics.instance("default"), wall=wall)  # type: ignore[arg-type]

    def test_a_lost_reply_is_held_then_resubmitted_with_a_note(self, config, inbox, store):
        file_id = self.split_file(config, inbox, store)
        now = [1000.0]
        client = FakeClient(submit=[errors.OutcomeUnknownError("502 page", reason="HTTP 502"),
                                    BatchStatus(batch_id=7, status="Queued")])
        dispatch = self.dispatch(config, store, client, wall=lambda: now[0])
        dispatch.run_once(10.0)
        [chunk] = store.chunks_of(file_id)
        assert chunk.state is ChunkState.PENDING and chunk.resubmits == 1
        assert chunk.not_before is not None and chunk.not_before > now[0]
        assert any("HTTP 502" in n for n in store.file(file_id).notes)
        dispatch.run_once(11.0)
        assert client.submits == 1  # held: the first copy may still be importing
        now[0] = chunk.not_before + 0.01
        dispatch.run_once(12.0)
        assert client.submits == 2
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTED

    def test_access_denied_pauses_and_fails_no_file(self, config, inbox, store):
        file_id = self.split_file(config, inbox, store)
        client = FakeClient(submit=[errors.MisconfiguredError("Access denied", code="603")])
        dispatch = self.dispatch(config, store, client)
        dispatch.run_once(10.0)
        [chunk] = store.chunks_of(file_id)
        assert chunk.state is ChunkState.PENDING and chunk.error is None
        assert dispatch.pauses.misconfigured and "Access denied" in dispatch.pauses.misconfigured
        assert not next(c for c in self.metrics.readiness() if c.name == "marketo_access").ok
        dispatch.run_once(20.0)
        assert client.submits == 1  # paused

    def test_a_429_page_on_a_poll_says_nothing_about_the_batch(self, config, inbox, store):
        file_id = self.split_file(config, inbox, store)
        client = FakeClient(
            submit=[BatchStatus(batch_id=7, status="Queued")],
            status=[errors.TransientError("HTTP 429", code="HTTP 429", retry_after=3),
                    BatchStatus(batch_id=7, status="Complete", processed=1, failed=0, warned=0)],
        )
        dispatch = self.dispatch(config, store, client)
        dispatch.run_once(10.0)
        dispatch.run_once(20.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTED
        dispatch.run_once(40.0)
        [chunk] = store.chunks_of(file_id)
        assert (chunk.state, chunk.marketo_status, chunk.processed) == (ChunkState.DONE, "Complete", 1)

    def test_one_no_such_batch_answer_is_asked_again_three_over_five_minutes_give_up(self, config, inbox, store):
        """Giving a batch up fails every file in it: Marketo's 1003 is believed only when it keeps saying it."""
        file_id = self.split_file(config, inbox, store)
        gone = errors.BatchNotFoundError("no such batch", code="1003")
        done = BatchStatus(batch_id=7, status="Complete", processed=1, failed=0, warned=0)
        client = FakeClient(submit=[BatchStatus(batch_id=7, status="Queued")], status=[gone, done])
        dispatch = self.dispatch(config, store, client)
        for now in (10.0, 20.0, 400.0, 800.0):
            dispatch.run_once(now)
        [chunk] = store.chunks_of(file_id)
        assert (chunk.state, chunk.processed) == (ChunkState.DONE, 1)

        file_id = claim(inbox, store, "leads_b.csv", b"email\nb@example.com\n")
        TestPrepare().prepare(config, store).run_once(1000.0)
        client = FakeClient(submit=[BatchStatus(batch_id=8, status="Queued")], status=[gone, gone, gone])
        dispatch = self.dispatch(config, store, client)
        for now in (1010.0, 1020.0, 1200.0, 1400.0):
            dispatch.run_once(now)
        [chunk] = store.chunks_of(file_id)
        assert chunk.state is ChunkState.ERROR and "unknown" in (chunk.error or "")

    def test_missing_counters_are_counted_from_the_result_files(self, config, inbox, store):
        file_id = self.split_file(config, inbox, store)
        client = FakeClient(
            submit=[BatchStatus(batch_id=7, status="Queued")],
            status=[BatchStatus(batch_id=7, status="Complete", processed=None, failed=None, warned=None)],
        )
        dispatch = self.dispatch(config, store, client)
        dispatch.run_once(10.0)
        dispatch.run_once(20.0)
        dispatch.run_once(21.0)
        [chunk] = store.chunks_of(file_id)
        assert (chunk.state, chunk.processed, chunk.failed, chunk.warned) == (ChunkState.DONE, 1, 0, 0)
        assert any("no row counts" in n for n in store.file(file_id).notes)


class SlowUsageClient(FakeClient):
    """usage.json answers only once told to: its call is still running while passes go by."""

    def __init__(self, **answers: list[object]) -> None:
        super().__init__(**answers)
        self.answer = threading.Event()

    def usage_today(self, retry_for=None):
        assert self.answer.wait(10)
        return 0


def counting(real: Callable[..., Any], name: str, calls: list[str]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    return counted


class TestDispatchCost:
    """A submit look that found nothing is not made again until something it depended on changed."""

    def test_nothing_new_no_query_then_a_new_chunk_goes(self, config, inbox, store, monkeypatch):
        client = FakeClient(submit=[BatchStatus(batch_id=7, status="Queued")])
        dispatch = TestDispatch().dispatch(config, store, client)
        assert dispatch.run_once(10.0) is False  # nothing pending: a look, then the mark
        looks: list[str] = []
        for name in ("imports", "pending_heads", "has_pending"):
            monkeypatch.setattr(store, name, counting(getattr(store, name), name, looks))
        for now in (11.0, 12.0, 13.0):
            assert dispatch.run_once(now) is False
        assert "pending_heads" not in looks and looks.count("imports") == 3  # only the fetch step's own look
        file_id = TestDispatch().split_file(config, inbox, store)  # the journal changed
        dispatch.run_once(14.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTED

    def test_an_answer_collected_wakes_the_submit_look(self, config, inbox, store):
        """usage.json's first answer is waited for; it changes nothing in the journal, yet ends the wait."""
        file_id = TestDispatch().split_file(config, inbox, store)
        client = SlowUsageClient(submit=[BatchStatus(batch_id=7, status="Queued")])
        woken = threading.Event()
        with ThreadPoolExecutor(2) as calls:
            metrics = health.Metrics()
            dispatch = Dispatch(store, client, config.marketo, metrics.instance("default"),  # type: ignore[arg-type]
                                wall=lambda: 1000.0, calls=calls, wake=woken.set)
            dispatch.run_once(10.0)  # usage.json asked: new imports wait for its first answer
            dispatch.run_once(11.0)
            assert client.submits == 0
            client.answer.set()
            assert woken.wait(5)
            woken.clear()
            dispatch.run_once(12.0)  # the answer is collected, the look made, the upload handed over
            assert woken.wait(5)
            dispatch.run_once(13.0)
            assert (client.submits, store.chunks_of(file_id)[0].state) == (1, ChunkState.SUBMITTED)
            dispatch.close(14.0)


class TestReport:
    def test_results_never_leave_the_partners_own_outbox(self, tmp_path, config, store):
        """``outbox/x -> bob's inbox``: a result for ``x/NAME`` is kept aside, bob's folder is untouched."""
        inbox = config.inboxes[0]
        bob = tmp_path / "bob_inbox"
        bob.mkdir()
        (inbox.outbox / "x").symlink_to(bob)
        (inbox.path / "x").mkdir()
        file_id = claim(inbox, store, "x/leads_evil.csv", b"email\n")
        Prepare(store, {inbox.path: inbox}.get, config.state_dir, config.split_max_bytes, health.Metrics()).run_once(1)
        assert store.file(file_id).outcome is Outcome.REJECTED  # header only
        report = Report(store, {inbox.path: inbox}.get, config.state_dir, health.Metrics())
        assert report.run_once(2.0) is True
        assert list(bob.iterdir()) == []
        kept = config.state_dir / "undeliverable" / str(file_id) / "x"
        doc = json.loads((kept / "leads_evil.csv.status.json").read_text())
        assert doc["status"] == "Rejected"
        assert store.file(file_id).state is FileState.DONE


class TestOneItemNeverStopsTheRest:
    def test_temporary_names_never_crowd_out_a_real_file(self, inbox, store):
        """More ``*.filepart`` names than tracking allows: the real file is still taken."""
        for i in range(30):
            (inbox.path / f"a_{i:03d}.csv.filepart").write_bytes(b"email\n")
        (inbox.path / "zz_leads.csv").write_bytes(b"email\na@example.com\n")
        intake = dataclasses.replace(intake_of(inbox, store), max_tracked=10)
        intake.run_once(0.0)
        intake.rescan_now()
        assert intake.run_once(QUIET + 0.01) is True
        assert [r.relpath for r in store.files()] == ["zz_leads.csv"]

    def test_a_name_too_long_for_its_marker_is_refused_not_waited_for(self, tmp_path, store):
        routes = '\n      - match: "*.csv"\n        object: leads\n        marker: true\n'
        inbox = make_config(tmp_path, "http://127.0.0.1:9", routes=routes).inboxes[0]
        name = "l" * 250 + ".csv"  # 254 bytes: NAME.done would be 259
        file_id = claim(inbox, store, name, b"email\na@example.com\n")
        prepare = Prepare(store, {inbox.path: inbox}.get, tmp_path / "state", 9_500_000, health.Metrics())
        prepare.run_once(1.0)
        row = store.file(file_id)
        assert row.outcome is Outcome.REJECTED and "too long for its marker" in (row.error or "")

    def test_the_same_long_name_twice_a_day_is_archived_twice(self, tmp_path, config, inbox, store):
        """A 255-byte name, rejected twice: both originals archived (the second under a shortened name)."""
        name = "l" * 251 + ".csv"
        lookup = {inbox.path: inbox}.get
        prepare = Prepare(store, lookup, config.state_dir, config.split_max_bytes, health.Metrics())
        report = Report(store, lookup, config.state_dir, health.Metrics())
        for _ in range(2):
            claim(inbox, store, name, b"email\n")  # header only: Rejected
            prepare.run_once(1.0)
            report.run_once(2.0)
        assert [r.state for r in store.files()] == [FileState.DONE, FileState.DONE]
        archived = sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())
        assert len(archived) == 2 and all(p.read_bytes() == b"email\n" for p in archived)

    def test_a_journal_error_around_an_upload_never_fails_the_file(self, config, inbox, store):
        file_id = TestDispatch().split_file(config, inbox, store)
        client = FakeClient(submit=[sqlite3.OperationalError("database is locked"),
                                    BatchStatus(batch_id=7, status="Queued")])
        dispatch = TestDispatch().dispatch(config, store, client)
        dispatch.pause_for = lambda pause, **_: 0.0
        dispatch.run_once(10.0)
        [chunk] = store.chunks_of(file_id)
        assert chunk.state is ChunkState.PENDING and chunk.error is None
        dispatch.run_once(11.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTED

    def test_a_journal_write_that_failed_is_made_before_anything_else(self, config, inbox, store):
        file_id = TestDispatch().split_file(config, inbox, store)
        real = store.record_batch
        failures = [sqlite3.OperationalError("database is locked")]

        def flaky(*args, **kwargs):
            if failures:
                raise failures.pop()
            return real(*args, **kwargs)

        store.record_batch = flaky  # type: ignore[method-assign]
        client = FakeClient(submit=[BatchStatus(batch_id=7, status="Queued")])
        dispatch = TestDispatch().dispatch(config, store, client)
        dispatch.run_once(10.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTING  # the batchId is not saved yet
        dispatch.run_once(11.0)
        [chunk] = store.chunks_of(file_id)
        assert (chunk.state, chunk.batch_id, client.submits) == (ChunkState.SUBMITTED, 7, 1)


class TestSecondRound:
    """What a second hostile review found, each its own regression test."""

    def test_rows_written_after_the_claim_are_waited_for_not_lost(self, config, inbox, store):
        """A writer we cannot see keeps its handle and writes after the claim: split only once it stops."""
        path = inbox.path / "leads_grow.csv"
        handle = open(path, "ab")  # noqa: SIM115 - held across the claim on purpose
        try:
            handle.write(b"email\nr1@example.com\n")
            handle.flush()
            intake = intake_of(inbox, store)
            intake.open_for_writing = lambda path: None  # as in a container: other processes are invisible
            file_id = claim_with(intake, store, "leads_grow.csv")
            handle.write(b"r2@example.com\n")
            handle.flush()
            prepare = TestPrepare().prepare(config, store)
            assert prepare.run_once(1.0) is False  # changed since the claim: waits
            assert store.file(file_id).state is FileState.CLAIMED
            handle.write(b"r3@example.com\n")
            handle.flush()
            assert prepare.run_once(1.0 + QUIET + 0.01) is False  # changed again: waits again
        finally:
            handle.close()
        last_seen_changed = 1.0 + QUIET + 0.01
        assert prepare.run_once(last_seen_changed + QUIET / 2) is False  # its new quiet period is not over
        assert prepare.run_once(last_seen_changed + QUIET + 0.01) is True
        row = store.file(file_id)
        assert (row.state, row.rows) == (FileState.SPLIT, 3)
        assert any("changed after it was claimed" in n for n in row.notes)

    def test_a_renamed_processing_area_is_never_claimed_again(self, config, inbox, store):
        file_id = claim(inbox, store, "leads_a.csv", b"email\na@example.com\n")
        (inbox.path / ".processing").rename(inbox.path / "stolen")
        intake = intake_of(inbox, store)
        intake.run_once(5.0)
        intake.rescan_now()
        assert intake.run_once(5.0 + QUIET + 0.01) is False
        assert [r.id for r in store.files()] == [file_id]

    def test_a_removed_processing_area_ends_in_one_report_not_a_retry_loop(self, config, inbox, store):
        file_id = claim(inbox, store, "leads_a.csv", b"email\n")  # header only: Rejected
        TestPrepare().prepare(config, store).run_once(1.0)
        for entry in (inbox.path / ".processing").iterdir():
            entry.unlink()
        (inbox.path / ".processing").rmdir()
        report = Report(store, {inbox.path: inbox}.get, config.state_dir, health.Metrics())
        assert report.run_once(2.0) is True
        assert store.file(file_id).state is FileState.DONE
        assert json.loads((inbox.outbox / "leads_a.csv.status.json").read_text())["status"] == "Rejected"

    def test_an_outbox_swapped_after_start_is_never_written(self, tmp_path, config, inbox, store):
        """Whoever can write the outbox's parent swaps it for a link to bob's: results kept aside."""
        pins = {inbox.outbox: os.path.realpath(inbox.outbox)}
        file_id = claim(inbox, store, "leads_a.csv", b"email\n")
        TestPrepare().prepare(config, store).run_once(1.0)
        bob = tmp_path / "bob_outbox"
        bob.mkdir()
        inbox.outbox.rename(tmp_path / "outbox.orig")
        inbox.outbox.symlink_to(bob)
        report = Report(store, {inbox.path: inbox}.get, config.state_dir, health.Metrics(), pins=pins)
        report.run_once(2.0)
        assert list(bob.iterdir()) == []
        assert (config.state_dir / "undeliverable" / str(file_id) / "leads_a.csv.status.json").exists()

    def test_a_finished_batch_the_journal_could_not_record_is_recorded_next_pass(self, config, inbox, store):
        """The answer is kept and written first in the next pass: not lost, and not asked for again."""
        file_id = TestDispatch().split_file(config, inbox, store)
        done = BatchStatus(batch_id=7, status="Complete", processed=1, failed=0, warned=0)
        client = FakeClient(submit=[BatchStatus(batch_id=7, status="Queued")], status=[done, done])
        dispatch = TestDispatch().dispatch(config, store, client)
        dispatch.run_once(10.0)
        real, failures = store.finish_batch, [sqlite3.OperationalError("database is locked")]

        def flaky(*args, **kwargs):
            if failures:
                raise failures.pop()
            return real(*args, **kwargs)

        store.finish_batch = flaky  # type: ignore[method-assign]
        dispatch.run_once(20.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.SUBMITTED
        dispatch.run_once(40.0)
        assert store.chunks_of(file_id)[0].state is ChunkState.DONE
        assert len(client.status_answers) == 1  # polled once
