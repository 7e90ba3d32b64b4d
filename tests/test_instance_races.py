"""Reloads, shutdowns and journal trouble while Marketo calls run on the instances' threads.

Each test is an attack that once worked (a hostile review of the instances change): a reload that
renamed or moved an instance while its upload ran, a stop that threw away answers already in, a
journal locked during a reload, worker threads that kept /livez green while the loop was stuck,
a removed instance whose Marketo never answered again.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from dropzone import defaults as D
from dropzone.jobs import ChunkState
from dropzone.marketo import MarketoClient
from dropzone.simulator import Fault
from tests.test_instances import (
    ACME,
    RENAMED,
    SANDBOX_ID,
    SANDBOX_SECRET,
    chunk_states,
    drop,
    inbox_yaml,
    prod_and_sandbox,
    run_until,
    status,
    status_path,
    write_config,
)

UPLOAD_S = 1.5  # an upload Marketo answers this late: long enough for a reload to land inside it


def slow_uploads(sim: Any, seconds: float = UPLOAD_S) -> None:
    sim.arm(Fault(f"slow:{seconds}", endpoint="import", times=None))


def until_running(daemon: Any, instance: str) -> None:
    """Passes until the instance's stage has an upload on its threads (the journal says submitting)."""
    run_until(daemon, lambda: chunk_states(daemon, instance) == [ChunkState.SUBMITTING]
              and daemon.dispatches[instance].running(), what="an upload running")


class TestReloadWhileCallsRun:
    def test_a_rename_during_an_upload_holds_nothing_and_loses_nothing(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        slow_uploads(sandbox)
        drop(tmp_path, "acme", "test_r.csv", ["r@acme.example"])
        until_running(daemon, "sandbox")
        write_config(tmp_path, prod, {"staging": sandbox}, [inbox_yaml("acme", RENAMED)])
        started = time.monotonic()
        daemon.reload()
        assert time.monotonic() - started < UPLOAD_S / 2, "the reload waited for the upload"
        # The loop goes on serving the other instance meanwhile.
        drop(tmp_path, "acme", "leads_p.csv", ["p@acme.example"])
        run_until(daemon, lambda: status_path(tmp_path, "acme", "leads_p.csv").exists(), timeout=UPLOAD_S,
                  what="the default instance's file while the sandbox upload runs")
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_r.csv").exists() and not daemon.draining,
                  what="the renamed instance's file")
        doc = status(tmp_path, "acme", "test_r.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "staging")
        assert len(sandbox.submissions()) == 1 and "notes" not in doc
        run_until(daemon, daemon.is_idle, timeout=5, what="idle")

    def test_an_endpoint_moved_during_an_upload_finishes_there_and_the_loop_never_stalls(
        self, tmp_path, sims, daemons
    ):
        prod, sandbox = prod_and_sandbox(sims)
        elsewhere = sims(SANDBOX_ID, SANDBOX_SECRET, first_batch_id=9001)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        slow_uploads(sandbox)
        drop(tmp_path, "acme", "test_m.csv", ["m@acme.example"])
        until_running(daemon, "sandbox")
        write_config(tmp_path, prod, {"sandbox": elsewhere}, [inbox_yaml("acme", ACME)])
        daemon.reload()
        drop(tmp_path, "acme", "test_after.csv", ["a@acme.example"])
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_m.csv").exists()
                  and status_path(tmp_path, "acme", "test_after.csv").exists() and not daemon.draining,
                  what="both files")
        moved, after = status(tmp_path, "acme", "test_m.csv"), status(tmp_path, "acme", "test_after.csv")
        # The batch the old endpoint accepted is finished there, not declared unknown.
        assert moved["status"] == "Complete" and moved["batches"][0]["batchId"] == 5001
        assert after["status"] == "Complete" and after["batches"][0]["batchId"] == 9001
        assert len(sandbox.submissions()) == 1 and len(elsewhere.submissions()) == 1

    def test_a_journal_locked_during_a_reload_is_settled_next_pass(self, tmp_path, sims, daemons, monkeypatch):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        real, failures = daemon.store.remember_instances, [sqlite3.OperationalError("database is locked")]

        def locked(*args: Any, **kwargs: Any) -> None:
            if failures:
                raise failures.pop()
            real(*args, **kwargs)

        monkeypatch.setattr(daemon.store, "remember_instances", locked)
        write_config(tmp_path, prod, {"staging": sandbox}, [inbox_yaml("acme", RENAMED)])
        daemon.reload()  # does not raise: the owners are settled at the next pass
        assert daemon._owners_unsettled
        drop(tmp_path, "acme", "test_l.csv", ["l@acme.example"])
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_l.csv").exists(), what="the status")
        assert not daemon._owners_unsettled
        assert status(tmp_path, "acme", "test_l.csv")["instance"] == "staging"


class TestStopAndLiveness:
    def test_answers_already_in_are_recorded_at_close_never_resent(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims, instant=False, import_seconds_per_job=30.0)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        slow_uploads(sandbox, 0.5)
        drop(tmp_path, "acme", "test_c.csv", ["c@acme.example"])
        until_running(daemon, "sandbox")
        [call] = daemon.dispatches["sandbox"]._running.values()
        assert call.future.result(timeout=10).value is not None  # the answer is in; no pass has taken it
        daemons.crash(daemon)  # close() before any pass collected the answer
        again = daemons.start(path)
        assert [c.batch_id for c in again.store.chunks(list(ChunkState), instance="sandbox")] == [5001]
        assert chunk_states(again, "sandbox") == [ChunkState.SUBMITTED]

    def test_a_call_on_a_worker_thread_is_no_heartbeat(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        slow_uploads(sandbox, 1.0)
        drop(tmp_path, "acme", "test_h.csv", ["h@acme.example"])
        until_running(daemon, "sandbox")
        last = daemon.last_tick
        future = next(iter(daemon.dispatches["sandbox"]._running.values())).future
        future.result(timeout=10)  # the upload ends, ticking on its thread all along; the loop did nothing
        assert daemon.last_tick == last


class TestDrainDeadline:
    def test_a_removed_instance_whose_marketo_is_gone_reports_its_file_after_the_deadline(
        self, tmp_path, sims, daemons, monkeypatch
    ):
        monkeypatch.setattr(D, "DRAIN_DEADLINE_S", 1.0)
        prod, sandbox = prod_and_sandbox(sims, instant=False, import_seconds_per_job=60.0)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_d.csv", ["d@acme.example"])
        run_until(daemon, lambda: chunk_states(daemon, "sandbox") == [ChunkState.SUBMITTED], what="submitted")
        sandbox.stop()
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon.reload()
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_d.csv").exists(), what="the status")
        doc = status(tmp_path, "acme", "test_d.csv")
        assert doc["status"] == "Failed" and "unknown" in doc["error"]["message"]
        assert not daemon.draining


def test_advice_names_the_instances_own_keys(sims):
    """A refused secret on the sandbox says instances.sandbox.client_id, not marketo.client_id."""
    from dropzone.errors import AuthError
    from dropzone.instances import MarketoSettings

    sandbox = sims(SANDBOX_ID, SANDBOX_SECRET)
    settings = MarketoSettings(
        name="sandbox", endpoint=sandbox.base_url, client_id=SANDBOX_ID, client_secret="wrong", max_retry_seconds=0
    )
    client = MarketoClient(settings)
    try:
        with pytest.raises(AuthError) as info:
            client.check_credentials()
    finally:
        client.close()
    assert "instances.sandbox.client_id" in str(info.value) and "marketo." not in str(info.value)
