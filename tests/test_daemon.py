"""The daemon end to end, in-process: real folders, the simulator over loopback, the real journal."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import time

import pytest

from dropzone.daemon import Daemon
from dropzone.jobs import ChunkState, FileState
from dropzone.simulator import Simulator
from tests.conftest import wait_until
from tests.helpers import archived, daemons, drop, make_config, run_until_idle, status_of


@pytest.fixture
def daemon_factory(tmp_path, simulator):
    yield from daemons(tmp_path, simulator.base_url)


class TestImports:
    def test_leads_file_is_imported_and_reported(self, tmp_path, simulator, daemon_factory):
        """A leads file goes in whole, with its route's parameters; the status says Complete;
        the original is archived."""
        daemon = daemon_factory()
        text = 'email,firstName\nann@example.com,Ann\nbob@example.com,"Bob\nJr."\n'
        drop(tmp_path, "leads_1.csv", text)
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_1.csv")
        assert status["status"] == "Complete"
        assert (status["rowsTotal"], status["rowsProcessed"], status["rowsFailed"]) == (2, 2, 0)
        assert status["route"]["object"] == "leads" and status["route"]["listId"] == 1234
        assert status["batches"][0]["batchId"] == simulator.submissions()[0]["batchId"]
        assert [r["row"]["firstName"] for r in simulator.imported_rows()] == ["Ann", "Bob\nJr."]
        [original] = archived(tmp_path)
        assert original.name == "leads_1.csv" and original.read_text() == text
        assert not (tmp_path / "inbox" / "leads_1.csv").exists()
        assert not (tmp_path / "outbox" / "leads_1.csv.failures.csv").exists()

    def test_failures_file_maps_rows_to_source_lines(self, tmp_path, simulator, daemon_factory):
        """Rows Marketo failed come back with its reason and their line in the partner's file
        (quoted newlines counted)."""
        daemon = daemon_factory()
        text = 'email,firstName\nann@example.com,"Ann\nMarie"\n,NoEmail\nbob@example.com,Bob\n'
        drop(tmp_path, "leads_2.csv", text)
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_2.csv")
        assert status["status"] == "Partial"
        assert (status["rowsProcessed"], status["rowsFailed"]) == (2, 1)
        rows = list(csv.reader(io.StringIO((tmp_path / "outbox" / "leads_2.csv.failures.csv").read_text())))
        assert rows[0] == ["email", "firstName", "Import Failure Reason", "Source Line"]
        assert rows[1] == ["", "NoEmail", "Value for lookup field 'email' not found", "4"]
        assert status["failuresFile"] == "leads_2.csv.failures.csv"

    def test_program_member_warnings_file(self, tmp_path, simulator, daemon_factory):
        """An invalid email is a warning: the row is imported and reported in the warnings file."""
        daemon = daemon_factory()
        drop(tmp_path, "members.ssv", "email;firstName\nann@example.com;Ann\nnope;Bob\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "members.ssv")
        assert status["status"] == "Complete"
        assert (status["rowsProcessed"], status["rowsWithWarning"]) == (2, 1)
        lines = (tmp_path / "outbox" / "members.ssv.warnings.ssv").read_text().splitlines()
        assert lines == ["email;firstName;Import Warning Reason;Source Line", "nope;Bob;Invalid email address;3"]
        assert simulator.submissions()[0]["params"]["programMemberStatus"] == "Registered"

    def test_custom_objects_tsv(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "cars_1.tsv", "color\tmake\tmodel\tvin\nred\tbmw\t2002\tWBA4R7C55HK895912\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "cars_1.tsv")["status"] == "Complete"
        assert simulator.submissions()[0]["kind"] == "customobject"

    def test_large_file_is_split_and_imported_in_order(self, tmp_path, simulator, daemon_factory):
        """A file over the chunk limit becomes several batches; every row arrives once, in order."""
        daemon = daemon_factory(extra="split_max_bytes: 4000")
        rows = [f'u{i}@example.com,"Name {i}\nline two"' for i in range(400)]
        drop(tmp_path, "leads_big.csv", "email,firstName\n" + "\n".join(rows) + "\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_big.csv")
        assert status["status"] == "Complete"
        assert len(status["batches"]) == len(simulator.submissions()) > 3
        assert all(job["bytes"] <= 4000 for job in simulator.submissions())
        emails = [r["row"]["email"] for r in sorted(simulator.imported_rows(), key=lambda r: r["batchId"])]
        assert emails == [f"u{i}@example.com" for i in range(400)]
        lines = [b["sourceLines"] for b in status["batches"]]
        assert lines[0][0] == 2 and lines[-1][1] == 801
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(lines))

    def test_files_in_subfolders_keep_their_relative_path(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "acme/leads_3.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "acme/leads_3.csv")["status"] == "Complete"


class TestRejections:
    def test_no_route_is_rejected_and_kept(self, tmp_path, simulator, daemon_factory):
        """A file no route takes gets a Rejected status naming the globs tried; nothing is sent;
        the original is kept."""
        daemon = daemon_factory()
        drop(tmp_path, "report.xlsx", b"PK\x03\x04binary")
        run_until_idle(daemon)
        status = status_of(tmp_path, "report.xlsx")
        assert status["status"] == "Rejected"
        assert "leads_*.csv" in status["error"]["message"]
        assert simulator.submissions() == []
        [kept] = archived(tmp_path)
        assert "failed" in kept.parts and kept.read_bytes() == b"PK\x03\x04binary"

    @pytest.mark.parametrize(
        ("name", "data", "words", "line"),
        [
            ("leads_empty.csv", "email\n", "header", None),
            ("leads_quote.csv", 'email,firstName\nann@example.com,"Ann\n', "quote", 2),
            ("leads_bad.csv", b"email\nann@example.com\n\xff\xfe@x.com\n", "UTF-8", 3),
            ("cars_pad.tsv", "color\tmake\tmodel\t vin\nred\tbmw\t2002\tX\n", "spaces", 1),
            ("leads_dup.csv", "email,email\na@x.com,b@x.com\n", "twice", 1),
            ("members.ssv", "firstName;lastName\nAnn;Lee\n", "email", 1),
        ],
    )
    def test_bad_input_gets_a_clear_status(self, tmp_path, simulator, daemon_factory, name, data, words, line):
        """Each bad file is refused before it costs a Marketo queue slot, with a reason and a line number."""
        daemon = daemon_factory()
        original = data.encode() if isinstance(data, str) else data
        drop(tmp_path, name, original)
        run_until_idle(daemon)
        status = status_of(tmp_path, name)
        assert status["status"] == "Rejected"
        assert words.lower() in status["error"]["message"].lower()
        if line is not None:
            assert status["error"]["line"] == line
        assert simulator.submissions() == []
        [kept] = archived(tmp_path)
        assert kept.read_bytes() == original

    def test_trim_header_fixes_padded_names(self, tmp_path, simulator, daemon_factory):
        """With trim_header, the seeds' ' vin' header is sent as 'vin' and the rows import."""
        daemon = daemon_factory()
        drop(tmp_path, "cars_2.csv", "color, make,model, vin\nred,bmw,2002,WBA4R7C55HK895912\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "cars_2.csv")
        assert status["status"] == "Complete"
        assert simulator.submissions()[0]["header"] == ["color", "make", "model", "vin"]

    def test_bom_is_stripped(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "leads_bom.csv", "\ufeffemail\nann@example.com\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_bom.csv")["status"] == "Complete"
        assert simulator.submissions()[0]["header"] == ["email"]


class TestOutbox:
    def test_redrop_never_overwrites_uncollected_results(self, tmp_path, simulator, daemon_factory):
        """The second file of the same name gets stamped result names; the first results stay as they were."""
        daemon = daemon_factory()
        drop(tmp_path, "leads_r.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        first = (tmp_path / "outbox" / "leads_r.csv.status.json").read_bytes()
        drop(tmp_path, "leads_r.csv", "email\nbob@example.com\ncid@example.com\n")
        run_until_idle(daemon)
        assert (tmp_path / "outbox" / "leads_r.csv.status.json").read_bytes() == first
        stamped = [
            p for p in (tmp_path / "outbox").iterdir()
            if p.name.endswith(".status.json") and p.name != "leads_r.csv.status.json"
        ]
        assert len(stamped) == 1
        assert json.loads(stamped[0].read_text())["rowsTotal"] == 2
        assert len(archived(tmp_path)) == 2

    def test_no_temporary_files_are_left_in_the_outbox(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "leads_t.csv", "email\n,\n")
        run_until_idle(daemon)
        assert not [p for p in (tmp_path / "outbox").iterdir() if p.name.startswith(".")]


class TestReadiness:
    def test_hidden_and_temporary_names_are_ignored(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "leads_x.csv.filepart", "email\nann@example.com\n")
        drop(tmp_path, ".leads_y.csv", "email\nann@example.com\n")
        for _ in range(5):
            daemon.run_once()
        assert simulator.submissions() == []
        assert (tmp_path / "inbox" / "leads_x.csv.filepart").exists()

    def test_rename_after_upload_is_picked_up(self, tmp_path, simulator, daemon_factory):
        """WinSCP convention: upload to NAME.filepart, then rename to NAME."""
        daemon = daemon_factory()
        part = drop(tmp_path, "leads_w.csv.filepart", "email\nann@example.com\n")
        daemon.run_once()
        part.rename(part.with_name("leads_w.csv"))
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_w.csv")["status"] == "Complete"

    def test_a_growing_file_is_not_taken(self, tmp_path, simulator, daemon_factory):
        """A file that keeps changing (a stalled in-place upload resuming) waits until it has been quiet."""
        daemon = daemon_factory()
        path = drop(tmp_path, "leads_g.csv", "email\n")
        with open(path, "a") as handle:
            for i in range(10):
                handle.write(f"u{i}@example.com\n")
                handle.flush()
                os.utime(path)
                daemon.run_once()
                assert simulator.submissions() == []
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_g.csv")["rowsTotal"] == 10


class TestMarketoTrouble:
    def test_queue_full_from_other_integrations_is_waited_out(self, tmp_path, sim_config):
        """1016 because others filled Marketo's queue: the daemon backs off and the file still completes."""
        with Simulator(dataclasses.replace(sim_config, instant=False, background_job_seconds=1.5,
                                           queued_seconds=0.0, import_seconds_per_job=0.05)) as sim:
            sim.add_background_jobs(10)
            daemon = Daemon(make_config(tmp_path, sim.base_url))
            daemon.dispatch.pause_for = lambda pause, **_: 0.2  # Marketo's real pauses are 15 s and up
            daemon.start()
            try:
                drop(tmp_path, "leads_q.csv", "email\nann@example.com\n")
                run_until_idle(daemon, timeout=30)
            finally:
                daemon.close()
            assert status_of(tmp_path, "leads_q.csv")["status"] == "Complete"
            assert any(c["code"] == "1016" for c in sim.calls())

    def test_transient_faults_are_survived(self, tmp_path, simulator, daemon_factory):
        """606, 615, 5xx and a 602 along the way: the file completes, imported once."""
        daemon = daemon_factory()
        simulator.inject("615", endpoint="import")
        simulator.inject("http503", endpoint="status")
        simulator.inject("608", endpoint="status")
        simulator.expire_token()
        drop(tmp_path, "leads_f.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_f.csv")["status"] == "Complete"
        assert len(simulator.submissions()) == 1

    def test_lost_reply_is_resubmitted_and_said(self, tmp_path, simulator, daemon_factory):
        """A submit whose reply is lost is sent again, and the status file says so."""
        daemon = daemon_factory()
        simulator.inject("reset", endpoint="import")
        drop(tmp_path, "leads_l.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_l.csv")
        assert status["status"] == "Complete"
        assert len(simulator.submissions()) == 2
        assert any("submitted again" in n for n in status["notes"])


class TestRecovery:
    def test_crash_between_post_and_batch_id_resubmits(self, tmp_path, simulator, daemon_factory):
        """A chunk left in 'submitting' by a crash is submitted again at start-up, and the status says so."""
        daemon = daemon_factory()
        drop(tmp_path, "leads_c.csv", "email\nann@example.com\n")
        # Drive intake and preparation only, so the chunk is recorded but not yet sent.
        [intake] = daemon.intakes.values()
        wait_until(lambda: intake.run_once(daemon.clock()) or daemon.store.files([FileState.CLAIMED]), timeout=10)
        # Prepare waits for Marketo's first answers (the route's target, the lead describe), on their threads.
        wait_until(lambda: [daemon.prepare.run_once(daemon.clock())] and daemon.store.chunks([ChunkState.PENDING]))
        [chunk] = daemon.store.chunks([ChunkState.PENDING])
        daemon.store.mark_submitting(chunk.id)
        daemon.close()
        again = daemon_factory()
        run_until_idle(again)
        status = status_of(tmp_path, "leads_c.csv")
        assert status["status"] == "Complete"
        assert status["batches"][0]["resubmitted"] == 1

    def test_polling_resumes_from_the_journal(self, tmp_path, sim_config):
        """A batch submitted before a restart is polled, not submitted again."""
        with Simulator(dataclasses.replace(sim_config, instant=False, import_seconds_per_job=0.5)) as sim:
            daemon = Daemon(make_config(tmp_path, sim.base_url))
            daemon.start()
            drop(tmp_path, "leads_p.csv", "email\nann@example.com\n")
            wait_until(lambda: daemon.run_once() or daemon.store.chunks([ChunkState.SUBMITTED]), timeout=10)
            daemon.close()
            again = Daemon(make_config(tmp_path, sim.base_url))
            again.start()
            try:
                run_until_idle(again)
            finally:
                again.close()
            assert status_of(tmp_path, "leads_p.csv")["status"] == "Complete"
            assert len(sim.submissions()) == 1

    def test_second_instance_refuses_to_start(self, tmp_path, simulator, daemon_factory):
        from dropzone.errors import StoreError

        daemon_factory()
        with pytest.raises(StoreError, match="already running"):
            Daemon(make_config(tmp_path, simulator.base_url))

    def test_journal_records_final_state(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        drop(tmp_path, "leads_j.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        [row] = daemon.store.files()
        assert row.state is FileState.DONE and row.outcome == "Complete"


class TestHostileInbox:
    def test_a_file_held_open_for_writing_waits(self, tmp_path, simulator, daemon_factory):
        """A writer that stalls mid-upload with the file open: not taken, however long it is quiet;
        taken once closed."""
        daemon = daemon_factory()
        path = tmp_path / "inbox" / "leads_open.csv"
        handle = open(path, "w")  # noqa: SIM115 - held open on purpose
        try:
            handle.write("email\nann@example.com\n")
            handle.flush()
            stat_before = path.stat()
            # Five quiet periods with the file unchanged but still open: a negative, so it takes time to observe.
            end = time.monotonic() + 5 * 0.2
            while time.monotonic() < end:
                daemon.run_once()
                daemon.idle()
            assert simulator.submissions() == []
            assert path.stat().st_ino == stat_before.st_ino
        finally:
            handle.close()
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_open.csv")["status"] == "Complete"

    def test_symlinks_and_fifos_are_never_followed_and_the_daemon_goes_on(self, tmp_path, simulator, daemon_factory):
        """A symlink to a file outside the inbox and a FIFO stay untouched; a good file dropped next goes through."""
        daemon = daemon_factory()
        secret = tmp_path / "outside.csv"
        secret.write_text("email\nsecret@example.com\n")
        (tmp_path / "inbox" / "leads_link.csv").symlink_to(secret)
        os.mkfifo(tmp_path / "inbox" / "leads_fifo.csv")
        (tmp_path / "inbox" / "leads_dir.csv").mkdir()
        drop(tmp_path, "leads_ok.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_ok.csv")["status"] == "Complete"
        assert [r["row"]["email"] for r in simulator.imported_rows()] == ["ann@example.com"]
        assert (tmp_path / "inbox" / "leads_link.csv").is_symlink()
        assert secret.read_text() == "email\nsecret@example.com\n"

    def test_a_file_deleted_before_its_claim_is_forgotten(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        path = drop(tmp_path, "leads_gone.csv", "email\nann@example.com\n")
        daemon.run_once()
        path.unlink()
        drop(tmp_path, "leads_next.csv", "email\nbob@example.com\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_next.csv")["status"] == "Complete"
        assert not (tmp_path / "outbox" / "leads_gone.csv.status.json").exists()

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
    def test_unwritable_outbox_keeps_the_file_and_retries(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        (tmp_path / "outbox").chmod(0o500)
        try:
            drop(tmp_path, "leads_ro.csv", "email\nann@example.com\n")
            with pytest.raises(TimeoutError):
                run_until_idle(daemon, timeout=3)
        finally:
            (tmp_path / "outbox").chmod(0o700)
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_ro.csv")["status"] == "Complete"

    def test_outbox_replaced_by_a_file_keeps_the_original_and_recovers(self, tmp_path, simulator, daemon_factory):
        """The outbox cannot be written (here: it is a file): the result waits, the daemon stays up, then delivers."""
        daemon = daemon_factory()
        (tmp_path / "outbox").rmdir()
        (tmp_path / "outbox").write_text("not a folder")
        drop(tmp_path, "leads_ob.csv", "email\nann@example.com\n")
        with pytest.raises(TimeoutError):
            run_until_idle(daemon, timeout=3)
        [row] = daemon.store.files()
        assert row.state is FileState.FINISHING and row.processing_path.exists()
        (tmp_path / "outbox").unlink()
        (tmp_path / "outbox").mkdir()
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_ob.csv")["status"] == "Complete"


class TestBigFile:
    def test_30_mb_with_quoted_line_breaks_is_split_and_imported_row_for_row(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory()
        rows = 480_000
        lines = [f'big{i}@example.com,"Line one {i}\nline two, ""quoted""",X{i % 7}\n' for i in range(rows)]
        drop(tmp_path, "leads_30mb.csv", "email,firstName,lastName\n" + "".join(lines))
        assert (tmp_path / "inbox" / "leads_30mb.csv").stat().st_size > 10_000_000
        run_until_idle(daemon, timeout=120)
        status = status_of(tmp_path, "leads_30mb.csv")
        assert status["status"] == "Complete" and status["rowsProcessed"] == rows
        assert len(status["batches"]) >= 2
        imported = sorted(simulator.imported_rows(), key=lambda r: r["batchId"])
        assert [r["row"]["email"] for r in imported] == [f"big{i}@example.com" for i in range(rows)]
        assert imported[1]["row"]["firstName"] == 'Line one 1\nline two, "quoted"'


class TestReload:
    def test_a_reload_rebuilds_the_intake_so_every_setting_takes(self, tmp_path, simulator):
        """A route that gains ``marker: true`` on reload: the new intake waits for markers (the old one
        patched by hand missed marker suffixes and ``watch:``)."""
        marked = '\n      - match: "leads_*.csv"\n        object: leads\n        marker: true\n'
        daemon = Daemon(
            make_config(tmp_path, simulator.base_url),
            reload_config=lambda: make_config(tmp_path, simulator.base_url, routes=marked),
            max_idle=0.05,
        )
        daemon.start()
        try:
            before = daemon.intakes[tmp_path / "inbox"]
            daemon.reload()
            after = daemon.intakes[tmp_path / "inbox"]
            assert after is not before and after.inbox.marker_suffixes == (".done",)
            drop(tmp_path, "leads_m.csv", "email\nann@example.com\n")
            with pytest.raises(TimeoutError):
                run_until_idle(daemon, timeout=1.5)  # waits for its marker
            assert simulator.submissions() == []
            drop(tmp_path, "leads_m.csv.done", "")
            run_until_idle(daemon, timeout=20)
            assert status_of(tmp_path, "leads_m.csv")["status"] == "Complete"
        finally:
            daemon.close()
