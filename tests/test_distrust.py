"""Trust nothing, end to end: two partners who are strangers on one machine, and a Marketo that
does not always answer as its docs say. Real folders, the real daemon in-process, the simulator
over loopback with the matching fault armed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dropzone import config as config_module
from dropzone.daemon import Daemon
from dropzone.simulator import Fault, Simulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.helpers import daemons, drop, run_until_idle, status_of

GOOD = b"email,firstName\nann@example.com,Ann\nbob@example.com,Bob\n"


# ---- two partners ---------------------------------------------------------------------------


def two_partner_config(root: Path, base_url: str) -> config_module.Config:
    for who in ("acme", "bob"):
        for name in ("inbox", "outbox", "archive"):
            (root / who / name).mkdir(parents=True, exist_ok=True)
    inbox = """
  - path: {who}/inbox
    outbox: {who}/outbox
    archive: {who}/archive
    quiet_period: 0.1
    scan_interval: 0.2
    routes:
      - match: "leads_*.csv"
        object: leads
"""
    text = f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
  poll_interval: 0.05
  max_retry_seconds: 5
  resubmit_hold: 0.2
state_dir: state
inboxes:{inbox.format(who="acme")}{inbox.format(who="bob")}"""
    return config_module.parse(text, base_dir=root, environ={})


@pytest.fixture
def partners(tmp_path: Path, simulator: Simulator) -> Iterator[Daemon]:
    daemon = Daemon(two_partner_config(tmp_path, simulator.base_url), max_idle=0.05)
    daemon.start()
    yield daemon
    daemon.close()


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below ``root``, never following a symlink: kind, inode, content hash or link target."""
    out: dict[str, tuple[str, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path.relative_to(root))] = ("link", st.st_ino, os.readlink(path))
            elif path.is_dir():
                out[str(path.relative_to(root))] = ("dir", st.st_ino, "")
            else:
                out[str(path.relative_to(root))] = ("file", st.st_ino, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def bob_rows(simulator: Simulator) -> list[str]:
    return [r["row"]["email"] for r in simulator.imported_rows() if r["row"].get("email", "").startswith("bob-")]


class TestTwoPartners:
    @staticmethod
    def _passes(daemon: Daemon, n: int = 20) -> None:
        for _ in range(n):
            daemon.run_once()
            daemon.idle()

    def test_a_symlinked_outbox_folder_never_carries_results_to_the_other_partner(self, tmp_path, simulator, partners):
        """Attack 1: ``acme/outbox/x -> bob/inbox``, then an upload to ``acme/inbox/x/``."""
        acme, bob = tmp_path / "acme", tmp_path / "bob"
        (acme / "outbox" / "x").symlink_to(Path("../../bob/inbox"))
        before = tree(bob)
        (acme / "inbox" / "x").mkdir()
        (acme / "inbox" / "x" / "leads_evil.csv").write_bytes(GOOD)
        run_until_idle(partners, timeout=20)
        assert tree(bob) == before
        kept = list((tmp_path / "state" / "undeliverable").rglob("leads_evil.csv.status.json"))
        assert len(kept) == 1 and json.loads(kept[0].read_text())["status"] == "Complete"

    def test_a_folder_swapped_for_a_link_to_the_other_partners_archive_moves_nothing(
        self, tmp_path, simulator, partners
    ):
        """Attack 2: acme parks a decoy in ``inbox/s/``, then swaps ``s`` for a link to bob's archive."""
        acme, bob = tmp_path / "acme", tmp_path / "bob"
        drop_into = bob / "inbox" / "leads_bob.csv"
        drop_into.write_bytes(b"email\nbob-1@example.com\n")
        run_until_idle(partners, timeout=20)
        [archived] = [p for p in (bob / "archive").rglob("*") if p.is_file()]
        assert bob_rows(simulator) == ["bob-1@example.com"]
        (acme / "inbox" / "s").mkdir()
        (acme / "inbox" / "s" / "leads_bob.csv").write_bytes(b"")
        partners.run_once()  # the decoy is seen: its quiet period starts
        (acme / "inbox" / "s" / "leads_bob.csv").unlink()
        (acme / "inbox" / "s").rmdir()
        (acme / "inbox" / "s").symlink_to(archived.parent)
        before = tree(bob)
        run_until_idle(partners, timeout=20)
        assert tree(bob) == before
        assert bob_rows(simulator) == ["bob-1@example.com"]  # never imported again

    def test_a_planted_processing_link_never_moves_a_file_into_the_other_partners_inbox(
        self, tmp_path, simulator, partners
    ):
        """Attack 3: ``acme/inbox/.processing -> bob/inbox`` before any claim."""
        acme, bob = tmp_path / "acme", tmp_path / "bob"
        (acme / "inbox" / ".processing").symlink_to(Path("../../bob/inbox"))
        before = tree(bob)
        (acme / "inbox" / "leads_a.csv").write_bytes(GOOD)
        with capture_logs() as logs:
            self._passes(partners)  # a negative: passes over many quiet periods, acme's claim refused each time
        assert tree(bob) == before
        assert (acme / "inbox" / "leads_a.csv").read_bytes() == GOOD
        assert simulator.submissions() == []
        refusals = [e for e in logs if e["event"] == "intake_item_failed" and e["log_level"] == "warning"]
        assert len(refusals) == 1 and "symbolic link" in refusals[0]["error"]  # told once, not every pass
        # bob is not held up by acme's trap.
        (bob / "inbox" / "leads_b.csv").write_bytes(b"email\nbob-2@example.com\n")
        partners.idle()
        for _ in range(200):
            partners.run_once()
            if (bob / "outbox" / "leads_b.csv.status.json").exists():
                break
            partners.idle()
        assert json.loads((bob / "outbox" / "leads_b.csv.status.json").read_text())["status"] == "Complete"

    def test_a_link_planted_at_a_result_name_is_replaced_never_followed(self, tmp_path, simulator, partners):
        """acme plants ``outbox/leads_a.csv.status.json -> bob/outbox/forged.json``."""
        acme, bob = tmp_path / "acme", tmp_path / "bob"
        (acme / "outbox" / "leads_a.csv.status.json").symlink_to(bob / "outbox" / "forged.json")
        (bob / "outbox" / "leads_old.csv.status.json").write_text("{}")
        before = tree(bob)
        (acme / "inbox" / "leads_a.csv").write_bytes(GOOD)
        run_until_idle(partners, timeout=20)
        assert tree(bob) == before
        results = list((acme / "outbox").iterdir())
        assert all(not p.is_symlink() for p in results)
        statuses = [json.loads(p.read_text()) for p in results if p.name.endswith(".status.json")]
        assert [s["status"] for s in statuses] == ["Complete"]


# ---- a Marketo that does not answer as documented -------------------------------------------


@pytest.fixture
def slow_sim(sim_config) -> Iterator[Simulator]:
    """Jobs that take a while, so two copies of one import could overlap if the daemon let them."""
    with Simulator(dataclasses.replace(sim_config, instant=False, import_seconds_per_job=0.3)) as sim:
        yield sim


@pytest.fixture
def make(tmp_path, slow_sim) -> Iterator[Callable[..., Daemon]]:
    yield from daemons(tmp_path, slow_sim.base_url, poll_interval=0.05, max_idle=0.05)


def _times(sim: Simulator, batch_id: int, status: str) -> float:
    return next(h["t"] for h in sim.job(batch_id)["history"] if h["status"] == status)


class TestMarketoAnswers:
    @pytest.mark.parametrize("reply", ["502", "503", "not_json", "truncated"])
    def test_a_job_created_then_answered_badly_is_resubmitted_after_it_finished_and_told(
        self, tmp_path, slow_sim, make, reply
    ):
        """Item 3: the POST created the job, the reply says otherwise. The chunk waits the copy out (as long
        as such a job takes: 0.5 s queued and 0.3 s importing here), is sent again, and the status file says
        so; the two copies never import at the same time. A custom object: no list lock (1019) to help."""
        daemon = make(resubmit_hold=1.5)
        slow_sim.arm(Fault("create_then", reply=reply, times=1))
        drop(tmp_path, "cars_c.tsv", "vin\tcolor\n1\tred\n")
        run_until_idle(daemon, timeout=30)
        status = status_of(tmp_path, "cars_c.tsv")
        assert status["status"] == "Complete"
        assert status["batches"][0]["resubmitted"] == 1
        assert any("submitted again" in n for n in status["notes"])
        first, second = [s["batchId"] for s in slow_sim.submissions()]
        assert _times(slow_sim, second, "Queued") >= _times(slow_sim, first, "Complete")

    def test_a_429_page_on_the_first_poll_never_fails_a_complete_import(self, tmp_path, slow_sim, make):
        """Item 4: a proxy's HTML 429 (with Retry-After) on a status poll says nothing about the batch."""
        daemon = make()
        slow_sim.arm(Fault("http429", endpoint="status", times=1, retry_after=1))
        drop(tmp_path, "leads_p.csv", GOOD)
        run_until_idle(daemon, timeout=30)
        assert status_of(tmp_path, "leads_p.csv")["status"] == "Complete"
        assert len(slow_sim.submissions()) == 1

    @pytest.mark.parametrize("shape", ["failed_string", "processed_null", "errors_dict"])
    def test_a_malformed_status_is_one_calls_problem(self, tmp_path, slow_sim, make, shape):
        """Item 8: ``numOfRowsFailed: "n/a"``, a null counter, ``errors`` as a dict: polled again, Complete."""
        daemon = make()
        slow_sim.arm(Fault("malformed_status", shape=shape, times=1))
        drop(tmp_path, "leads_m.csv", GOOD)
        run_until_idle(daemon, timeout=30)
        assert status_of(tmp_path, "leads_m.csv")["status"] == "Complete"

    def test_access_denied_for_a_while_pauses_and_fails_nothing(self, tmp_path, slow_sim, make):
        """Item 5: 603 means the integration is misconfigured, not the file: paused, not ready, then Complete."""
        daemon = make()
        daemon.dispatch.pause_for = lambda pause, **_: 0.3
        slow_sim.arm(Fault("refuse", endpoint="import", times=3, flavour="ip_allowlist"))
        drop(tmp_path, "leads_d.csv", GOOD)
        refused_seen = False
        for _ in range(400):
            daemon.run_once()
            checks = {c.name: c.ok for c in daemon.metrics.readiness()}
            refused_seen |= checks.get("marketo_access") is False
            if (tmp_path / "outbox" / "leads_d.csv.status.json").exists():
                break
            daemon.idle()
        assert refused_seen
        assert status_of(tmp_path, "leads_d.csv")["status"] == "Complete"
        assert all(c.ok for c in daemon.metrics.readiness() if c.name == "marketo_access")

    def test_program_member_status_without_counters_is_not_zero(self, tmp_path, slow_sim, make):
        """Item 6: the swagger schema's bare status (batchId, importId, status): counted from the files."""
        daemon = make()
        slow_sim.arm(Fault("bare_status", times=None))
        drop(tmp_path, "members.ssv", "email;firstName\nann@example.com;Ann\nbob@example.com;Bob\n")
        run_until_idle(daemon, timeout=30)
        status = status_of(tmp_path, "members.ssv")
        assert status["status"] == "Complete"
        assert status["rowsProcessed"] == 2
        assert any("no row counts" in n for n in status["notes"])

