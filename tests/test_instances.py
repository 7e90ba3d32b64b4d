"""Several Marketo instances from one daemon (issue 13): configuration, routing, isolation, recovery, reload.

Two (sometimes three) simulators with different credentials play the instances; the daemon runs
in-process over loopback with its configuration in a real YAML file, so a reload reads it again as
SIGHUP would. The sandbox simulator numbers its batches from 5001 and the production one from 1001:
a status poll sent to the wrong instance would ask about a batch that instance never had.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from dropzone import config as config_module
from dropzone import defaults as D
from dropzone.daemon import Daemon
from dropzone.errors import ConfigError, Interrupted
from dropzone.jobs import ChunkState
from dropzone.simulator import Fault, Simulator
from dropzone.store import Store
from tests.conftest import CLIENT_ID, CLIENT_SECRET

SANDBOX_ID, SANDBOX_SECRET = "sandbox-client", "sandbox-s3cr3t-never-logged"
STAGING_ID, STAGING_SECRET = "staging-client", "staging-s3cr3t-never-logged"
SECRETS = (CLIENT_SECRET, SANDBOX_SECRET, STAGING_SECRET)

#: Routes of the issue's worked example: acme's test files to the sandbox, the rest to production.
ACME = (("test_*.csv", "sandbox"), ("*.csv", None))
#: The same, after the sandbox instance was renamed ``staging`` (its endpoint unchanged).
RENAMED = (("test_*.csv", "staging"), ("*.csv", None))


# ---- the world: simulators, a configuration file, daemons -----------------------------------


def prod_and_sandbox(sims: Callable[..., Simulator], **knobs: Any) -> tuple[Simulator, Simulator]:
    return sims(**knobs), sims(SANDBOX_ID, SANDBOX_SECRET, first_batch_id=5001, **knobs)


def instance_yaml(sim: Simulator, *, secret: str | None = None, **settings: object) -> str:
    """The keys of one instance (``marketo:`` or under ``instances:``), indented for its place."""
    values: dict[str, object] = {
        "endpoint": sim.base_url,
        "client_id": sim.config.client_id,
        "client_secret": secret if secret is not None else sim.config.client_secret,
        "poll_interval": 0.2,
        "max_retry_seconds": 5,
        "resubmit_hold": 0.2,
        **settings,
    }
    return "".join(f"    {k}: {v}\n" for k, v in values.items())


def inbox_yaml(who: str, routes: Sequence[tuple[str, str | None]], instance: str | None = None) -> str:
    """An inbox ``WHO/inbox`` (outbox and archive beside it) whose routes import leads; ``(match, instance)``."""
    text = (
        f"  - path: {who}/inbox\n"
        f"    outbox: {who}/outbox\n"
        f"    archive: {who}/archive\n"
        "    quiet_period: 0.1\n"
        "    scan_interval: 0.2\n"
    )
    if instance is not None:
        text += f"    instance: {instance}\n"
    text += "    routes:\n"
    for match, route_instance in routes:
        text += f'      - match: "{match}"\n        object: leads\n'
        if route_instance is not None:
            text += f"        instance: {route_instance}\n"
    return text


def write_config(
    root: Path,
    default: Simulator,
    others: Mapping[str, Simulator],
    inboxes: Sequence[str],
    *,
    secrets: Mapping[str, str] | None = None,
    settings: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """``root/dropzone.yaml``: ``marketo:`` on ``default``, ``instances:`` on ``others`` (by name), the inboxes.

    ``secrets`` / ``settings``: per instance name (``default`` for ``marketo:``), a secret or keys to override.
    """
    secrets, settings = secrets or {}, settings or {}
    text = "marketo:\n" + instance_yaml(
        default, secret=secrets.get(D.DEFAULT_INSTANCE), **settings.get(D.DEFAULT_INSTANCE, {})
    )
    if others:
        text += "instances:\n"
        for name, sim in others.items():
            text += f"  {name}:\n" + "".join(
                "  " + line + "\n"
                for line in instance_yaml(sim, secret=secrets.get(name), **settings.get(name, {})).splitlines()
            )
    text += "state_dir: state\ninboxes:\n" + "".join(inboxes)
    for inbox in inboxes:
        who = re.search(r"path: (\S+)/inbox", inbox)
        assert who is not None
        for folder in ("inbox", "outbox", "archive"):
            (root / who.group(1) / folder).mkdir(parents=True, exist_ok=True)
    path = root / "dropzone.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def drop(root: Path, who: str, name: str, emails: Sequence[str]) -> None:
    (root / who / "inbox" / name).write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")


def status_path(root: Path, who: str, name: str) -> Path:
    return root / who / "outbox" / f"{name}.status.json"


def status(root: Path, who: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(status_path(root, who, name).read_text(encoding="utf-8"))
    return doc


def run_until(daemon: Daemon, done: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Run passes until ``done()`` is truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    daemon.rescan_now()
    while True:
        busy = daemon.run_once()
        if done():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        if not busy:
            daemon.idle()


def emails(sim: Simulator) -> list[str]:
    return sorted(r["row"]["email"] for r in sim.imported_rows())


def codes(sim: Simulator, code: str) -> int:
    return sum(1 for c in sim.calls() if c["code"] == code)


def polled_batches(sim: Simulator) -> set[int]:
    """The batchIds a simulator was asked the status of."""
    found = (re.search(r"/batch/(\d+)", c["path"]) for c in sim.calls() if c["endpoint"] == "status")
    return {int(m.group(1)) for m in found if m}


def checks(daemon: Daemon) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in daemon.metrics.readiness()}


def check_names(instance: str) -> tuple[str, str]:
    """The /readyz checks of an instance: plain for the default, ``:NAME`` for the others."""
    suffix = "" if instance == D.DEFAULT_INSTANCE else f":{instance}"
    return f"marketo{suffix}", f"marketo_access{suffix}"


def chunk_states(daemon: Daemon, instance: str) -> list[ChunkState]:
    return [c.state for c in daemon.store.chunks(list(ChunkState), instance=instance)]


def passes(daemon: Daemon, seconds: float) -> None:
    """Run the loop for ``seconds`` (a stretch in which something must NOT happen, or must go on)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not daemon.run_once():
            daemon.idle()


@contextlib.contextmanager
def watchdog(daemon: Daemon, seconds: float, what: str) -> Iterator[None]:
    """Bound a stretch of passes: after ``seconds`` the daemon is asked to stop, so a pass held in a
    client's wait ends (``Interrupted``) instead of running on; that is reported as the failure it is."""
    timer = threading.Timer(seconds, daemon.stop.set)
    timer.start()
    try:
        yield
    except Interrupted:
        raise AssertionError(f"{what}: the loop was held in one pass for over {seconds} s") from None
    finally:
        timer.cancel()
        timer.join()
        daemon.stop.clear()


def fast_pauses(daemon: Daemon, instance: str, seconds: float = 0.3) -> None:
    """Marketo's real pauses (15 s for a 1016 and up) shortened for one instance's stage."""
    daemon.dispatches[instance].pause_for = lambda pause, **_: seconds


# ---- 1. configuration ---------------------------------------------------------------------------

PROD_URL, SANDBOX_URL, STAGING_URL = "http://127.0.0.1:8788", "http://127.0.0.1:8789", "http://127.0.0.1:8790"


def config_text(instances: str = "", inboxes: str | None = None) -> str:
    default_inboxes = inbox_yaml("acme", ACME) + inbox_yaml("globex", [("*.csv", None)], instance="sandbox")
    return (
        "marketo:\n"
        f"  endpoint: {PROD_URL}\n"
        f"  client_id: {CLIENT_ID}\n"
        f"  client_secret: {CLIENT_SECRET}\n"
        + (instances if instances else (
            "instances:\n"
            "  sandbox:\n"
            f"    endpoint: {SANDBOX_URL}\n"
            f"    client_id: {SANDBOX_ID}\n"
            f"    client_secret: {SANDBOX_SECRET}\n"
        ))
        + "state_dir: state\ninboxes:\n"
        + (default_inboxes if inboxes is None else inboxes)
    )


def parse(text: str, tmp_path: Path) -> config_module.Config:
    return config_module.parse(text, base_dir=tmp_path, environ={})


def refused(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return str(info.value)


class TestConfig:
    def test_a_route_takes_its_own_instance_else_its_inboxes_else_the_default(self, tmp_path):
        inboxes = (
            inbox_yaml("acme", ACME)
            + inbox_yaml("globex", [("prod_*.csv", "default"), ("*.csv", None)], instance="sandbox")
        )
        cfg = parse(config_text(inboxes=inboxes), tmp_path)
        acme, globex = cfg.inboxes
        assert (acme.instance, globex.instance) == (None, "sandbox")
        assert [r.instance for r in acme.routes] == ["sandbox", "default"]
        assert [r.instance for r in globex.routes] == ["default", "sandbox"]
        assert [r.target().instance for r in (*acme.routes, *globex.routes)] == [
            "sandbox", "default", "default", "sandbox"
        ]
        # The instance is no Marketo parameter: it never reaches the import's query.
        assert "instance" not in acme.routes[0].target().params()

    def test_every_instance_has_its_name_and_the_default_comes_first(self, tmp_path):
        cfg = parse(config_text(), tmp_path)
        everything = cfg.all_instances()
        assert list(everything) == ["default", "sandbox"]
        assert [s.name for s in everything.values()] == ["default", "sandbox"]
        assert everything["sandbox"].endpoint == SANDBOX_URL
        assert everything["sandbox"].client_id == SANDBOX_ID
        assert everything["sandbox"].client_secret == SANDBOX_SECRET
        assert list(cfg.instances) == ["sandbox"]  # marketo: is not repeated under instances

    @pytest.mark.parametrize(
        ("inboxes", "key"),
        [
            (inbox_yaml("acme", [("*.csv", None), ("x_*.csv", "prod")]), "inboxes[0].routes[1].instance"),
            (inbox_yaml("acme", [("*.csv", None)], instance="prod"), "inboxes[0].instance"),
        ],
        ids=["route", "inbox"],
    )
    def test_an_unknown_instance_names_the_key_and_the_configured_instances(self, tmp_path, inboxes, key):
        message = refused(config_text(inboxes=inboxes), tmp_path)
        assert f"{key}: 'prod' is not a configured instance" in message
        assert "default, sandbox" in message

    @pytest.mark.parametrize(
        ("first", "twin"),
        [
            (PROD_URL, PROD_URL),
            (PROD_URL, PROD_URL + "/"),
            (PROD_URL, "HTTP://127.0.0.1:8788"),
            ("https://123-abc-456.mktorest.com", "https://123-ABC-456.MktoRest.com/"),
            ("https://123-abc-456.mktorest.com", "https://123-abc-456.mktorest.com:443"),
            ("https://123-abc-456.mktorest.com", "https://123-abc-456.mktorest.com./"),
        ],
        ids=["same", "trailing-slash", "scheme-case", "host-case-and-slash", "default-port", "trailing-dot"],
    )
    def test_one_endpoint_under_two_names_is_refused(self, tmp_path, first, twin):
        instances = (
            "instances:\n"
            "  sandbox:\n"
            f"    endpoint: {twin}\n"
            f"    client_id: {SANDBOX_ID}\n"
            f"    client_secret: {SANDBOX_SECRET}\n"
        )
        message = refused(config_text(instances=instances).replace(PROD_URL, first, 1), tmp_path)
        assert "instances.sandbox.endpoint" in message and "already marketo.endpoint" in message

    def test_one_endpoint_under_two_other_names_is_refused(self, tmp_path):
        instances = "instances:\n" + "".join(
            f"  {name}:\n    endpoint: {SANDBOX_URL}{slash}\n    client_id: x\n    client_secret: y\n"
            for name, slash in (("sandbox", ""), ("staging", "/"))
        )
        message = refused(config_text(instances=instances), tmp_path)
        assert "instances.staging.endpoint" in message and "already instances.sandbox.endpoint" in message

    def test_an_instance_named_default_is_refused(self, tmp_path):
        instances = (
            f"instances:\n  default:\n    endpoint: {SANDBOX_URL}\n    client_id: x\n    client_secret: y\n"
        )
        message = refused(config_text(instances=instances, inboxes=inbox_yaml("acme", [("*.csv", None)])), tmp_path)
        assert "instances.default" in message and "choose another" in message

    @pytest.mark.parametrize("name", ["-sandbox", ".sandbox", "sand box", "sand/box", "sändbox", "x" * 64, "42"])
    def test_a_bad_instance_name_is_refused(self, tmp_path, name):
        instances = f"instances:\n  {name}:\n    endpoint: {SANDBOX_URL}\n    client_id: x\n    client_secret: y\n"
        message = refused(config_text(instances=instances, inboxes=inbox_yaml("acme", [("*.csv", None)])), tmp_path)
        assert "instances." in message and "a name is letters, digits" in message

    def test_a_name_of_63_plain_characters_is_accepted(self, tmp_path):
        name = "Sandbox_2.eu-" + "x" * 50
        instances = f"instances:\n  {name}:\n    endpoint: {SANDBOX_URL}\n    client_id: x\n    client_secret: y\n"
        cfg = parse(config_text(instances=instances, inboxes=inbox_yaml("acme", [("*.csv", name)])), tmp_path)
        assert cfg.inboxes[0].routes[0].instance == name

    def test_an_instance_is_checked_like_marketo(self, tmp_path):
        """Its keys are marketo:'s, checked the same way, and errors name its key path."""
        missing = "instances:\n  sandbox:\n    endpoint: " + SANDBOX_URL + "\n    client_id: x\n"
        assert "instances.sandbox.client_secret: is required" in refused(config_text(instances=missing), tmp_path)
        typo = "instances:\n  sandbox:\n    endpont: " + SANDBOX_URL + "\n    client_id: x\n    client_secret: y\n"
        assert "instances.sandbox.endpont: unknown key" in refused(config_text(instances=typo), tmp_path)
        listed = "instances:\n  - sandbox\n"
        assert "instances: expected a mapping" in refused(
            config_text(instances=listed, inboxes=inbox_yaml("acme", [("*.csv", None)])), tmp_path
        )

    def test_redacted_masks_every_instances_secret(self, tmp_path):
        secret_file = tmp_path / "staging_secret"
        secret_file.write_text(STAGING_SECRET + "\n")
        instances = (
            "instances:\n"
            f"  sandbox:\n    endpoint: {SANDBOX_URL}\n    client_id: {SANDBOX_ID}\n"
            f"    client_secret: {SANDBOX_SECRET}\n"
            f"  staging:\n    endpoint: {STAGING_URL}\n    client_id: {STAGING_ID}\n"
            f"    client_secret_file: {secret_file}\n"
        )
        cfg = parse(config_text(instances=instances), tmp_path)
        assert cfg.instances["staging"].client_secret == STAGING_SECRET
        shown = cfg.redacted()
        text = json.dumps(shown, default=str)
        for secret in SECRETS:
            assert secret not in text
            assert secret not in repr(cfg)
        assert shown["marketo"]["client_secret"] == D.SECRET_MASK
        assert {name: i["client_secret"] for name, i in shown["instances"].items()} == {
            "sandbox": D.SECRET_MASK, "staging": D.SECRET_MASK
        }
        assert shown["instances"]["staging"]["client_secret_file"] == str(secret_file)
        assert [r["instance"] for r in shown["inboxes"][0]["routes"]] == ["sandbox", "default"]


# ---- 2. routing ---------------------------------------------------------------------------------


class TestRouting:
    def test_each_file_reaches_only_its_own_instance_and_its_status_names_it(self, tmp_path, sims, daemons):
        """The issue's worked example: acme's test_*.csv to the sandbox, its other files to production;
        all of globex to the sandbox but for a route that says ``instance: default``."""
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [
            inbox_yaml("acme", ACME),
            inbox_yaml("globex", [("prod_*.csv", "default"), ("*.csv", None)], instance="sandbox"),
        ])
        daemon = daemons.start(path)
        files = {
            ("acme", "test_1.csv"): (["t1@acme.example", "t2@acme.example"], "sandbox", sandbox),
            ("acme", "leads_1.csv"): (["l1@acme.example", "l2@acme.example", "l3@acme.example"], "default", prod),
            ("globex", "g.csv"): (["g1@globex.example"], "sandbox", sandbox),
            ("globex", "prod_g.csv"): (["p1@globex.example", "p2@globex.example"], "default", prod),
        }
        for (who, name), (rows, _, _) in files.items():
            drop(tmp_path, who, name, rows)
        run_until(daemon, lambda: all(status_path(tmp_path, w, n).exists() for w, n in files), what="every status")
        for (who, name), (rows, instance, sim) in files.items():
            doc = status(tmp_path, who, name)
            assert (doc["status"], doc["instance"], doc["rowsProcessed"]) == ("Complete", instance, len(rows)), name
            assert doc["batches"][0]["batchId"] in {s["batchId"] for s in sim.submissions()}
            text = status_path(tmp_path, who, name).read_text()
            assert all(secret not in text for secret in SECRETS)
        assert emails(sandbox) == sorted(e for rows, inst, _ in files.values() if inst == "sandbox" for e in rows)
        assert emails(prod) == sorted(e for rows, inst, _ in files.values() if inst == "default" for e in rows)
        assert (len(prod.submissions()), len(sandbox.submissions())) == (2, 2)
        # Each batch was polled on the instance that has it, and only there.
        assert polled_batches(prod) == {s["batchId"] for s in prod.submissions()}
        assert polled_batches(sandbox) == {s["batchId"] for s in sandbox.submissions()}
        assert list(daemon.dispatches) == ["default", "sandbox"]
        assert daemon.dispatch is daemon.dispatches["default"]

    def test_metrics_and_readiness_show_each_instance(self, tmp_path, sims, daemons):
        """/metrics carries an ``instance`` label on Marketo metrics; /readyz has a check per instance."""
        prod, sandbox = prod_and_sandbox(sims)
        daemon = daemons.start(write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)]))
        sandbox.arm(Fault("1016", endpoint="import", times=1))
        fast_pauses(daemon, "sandbox")
        drop(tmp_path, "acme", "test_m.csv", ["m1@acme.example"])
        drop(tmp_path, "acme", "leads_m.csv", ["m2@acme.example"])
        run_until(
            daemon,
            lambda: status_path(tmp_path, "acme", "test_m.csv").exists()
            and status_path(tmp_path, "acme", "leads_m.csv").exists(),
            what="both statuses",
        )
        value = daemon.metrics.registry.get_sample_value
        assert value("dropzone_api_calls_total", {"endpoint": "import", "code": "ok", "instance": "sandbox"}) == 1
        assert value("dropzone_api_calls_total", {"endpoint": "import", "code": "ok", "instance": "default"}) == 1
        assert value("dropzone_api_calls_total", {"endpoint": "import", "code": "1016", "instance": "sandbox"}) == 1
        assert value("dropzone_api_calls_total", {"endpoint": "import", "code": "1016", "instance": "default"}) is None
        assert value("dropzone_token_refreshes_total", {"instance": "sandbox"}) == 1
        assert value("dropzone_token_refreshes_total", {"instance": "default"}) == 1
        exposition = generate_latest(daemon.metrics.registry).decode()
        for line in exposition.splitlines():
            if line.startswith(("dropzone_api_calls_total{", "dropzone_batches_open{", "dropzone_batches_queued{")):
                assert re.search(r'instance="(default|sandbox)"', line), line
        assert 'instance="sandbox"' in exposition and 'instance="default"' in exposition
        got = checks(daemon)
        for name in (*check_names("default")[:1], *check_names("sandbox")[:1]):
            assert got[name][0] is True, got[name]
        assert "instance sandbox" in got["marketo:sandbox"][1]
        for secret in SECRETS:
            assert secret not in exposition


# ---- 3. isolation -------------------------------------------------------------------------------

FAULTS = {
    "1016": Fault("1016", endpoint="import", times=None),  # the instance's import queue is full
    "607": Fault("607", times=None),  # its daily quota is spent: every call
    "601": Fault("601", times=None),  # its credentials are revoked: every token is refused
    "606": Fault("606", endpoint="import", times=None),  # its 20 s rate window is spent (by other integrations)
}


class TestIsolation:
    @pytest.mark.parametrize(
        ("kind", "sick"),
        [("1016", "sandbox"), ("607", "sandbox"), ("601", "sandbox"), ("606", "sandbox"), ("1016", "default"),
         ("601", "default")],
    )
    def test_a_fault_on_one_instance_costs_the_other_nothing_and_fails_nothing(
        self, tmp_path, sims, daemons, kind, sick
    ):
        """A persistent fault on one instance (a 1016 storm, a spent daily quota, revoked credentials: every
        token refused, a 606): the other's files complete promptly and the loop is never held; the sick
        instance's file waits (pending, not failed, not sent) and completes once the fault is gone. Only
        the refusal makes the sick instance not ready: a 1016, 607 or 606 is Marketo answering."""
        prod, sandbox = prod_and_sandbox(sims)
        healthy = "default" if sick == "sandbox" else "sandbox"
        sims_by_name = {"default": prod, "sandbox": sandbox}
        sick_sim, healthy_sim = sims_by_name[sick], sims_by_name[healthy]
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [
            inbox_yaml("a", [("*.csv", None)], instance=sick),
            inbox_yaml("b", [("*.csv", None)], instance=healthy),
        ])
        daemon = daemons.start(path)
        fast_pauses(daemon, sick)
        fault = sick_sim.arm(FAULTS[kind])
        drop(tmp_path, "a", "stuck.csv", ["s1@a.example", "s2@a.example"])
        run_until(daemon, lambda: codes(sick_sim, kind) >= 1, what=f"a {kind} on {sick}")

        b_files = [f"b{i}.csv" for i in range(3)]
        with watchdog(daemon, 8.0, f"{healthy}'s files while {sick} had a {kind}"):
            # A second of the sick instance trying again (its pause is 0.3 s) and meeting the fault again,
            # or, after a 606, its client rightly keeping off Marketo for the rest of the 20 s window.
            passes(daemon, 1.0)
            assert codes(sick_sim, kind) >= (1 if kind == "606" else 2)
            started = time.monotonic()
            for i, name in enumerate(b_files):
                drop(tmp_path, "b", name, [f"b{i}@b.example"])
            run_until(
                daemon, lambda: all(status_path(tmp_path, "b", n).exists() for n in b_files), timeout=6,
                what=f"{healthy}'s files",
            )
        took = time.monotonic() - started
        # Instant jobs, 0.1 s quiet period, 0.2 s polls: about a second; 6 s is a generous bound.
        assert took < 6.0, f"{healthy}'s three files took {took:.1f} s while {sick} had a {kind}"
        for name in b_files:
            doc = status(tmp_path, "b", name)
            assert (doc["status"], doc["instance"]) == ("Complete", healthy)
        # Files dropped together may share an import (coalescing): each row sent once, in at most three.
        assert 1 <= len(healthy_sim.submissions()) <= 3
        assert sum(s["rows"] for s in healthy_sim.submissions()) == 3
        assert codes(healthy_sim, kind) == 0

        # The sick instance's file waits, unsent and not failed (pending, or out for another try on its
        # instance's thread that Marketo refuses again).
        assert not status_path(tmp_path, "a", "stuck.csv").exists()
        assert chunk_states(daemon, sick) in ([ChunkState.PENDING], [ChunkState.SUBMITTING])
        assert sick_sim.submissions() == []
        got = checks(daemon)
        access_check = check_names(sick)[1]
        healthy_marketo, healthy_access = check_names(healthy)
        assert got[healthy_marketo][0] is True and got.get(healthy_access, (True, ""))[0] is True, got
        if kind == "601":
            assert got[access_check][0] is False, got
            if sick != "default":
                assert f"instance {sick}" in got[access_check][1]

        if kind == "606":
            return  # its window ends 20 s after the 606: the file completing then is the other faults' story
        sick_sim.disarm(fault)
        run_until(daemon, lambda: status_path(tmp_path, "a", "stuck.csv").exists(), timeout=15, what="the sick file")
        doc = status(tmp_path, "a", "stuck.csv")
        assert (doc["status"], doc["instance"], doc["rowsProcessed"]) == ("Complete", sick, 2)
        assert emails(sick_sim) == ["s1@a.example", "s2@a.example"]
        assert len(sick_sim.submissions()) == 1
        assert all(ok for name, (ok, _) in checks(daemon).items() if name.startswith("marketo"))


# ---- 4. crash and restart with batches open on both instances ----------------------------------


def rows_sent(sim: Simulator) -> int:
    """Rows of every import the simulator accepted (files dropped together may share one)."""
    return sum(s["rows"] for s in sim.submissions())


def slow_pair(sims: Callable[..., Simulator], seconds: float = 1.5) -> tuple[Simulator, Simulator]:
    return prod_and_sandbox(sims, instant=False, queued_seconds=0.1, import_seconds_per_job=seconds)


class TestCrashAndRestart:
    def test_batches_open_on_both_instances_finish_after_a_restart_each_polled_where_it_lives(
        self, tmp_path, sims, daemons
    ):
        prod, sandbox = slow_pair(sims, seconds=2.0)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [
            inbox_yaml("acme", ACME), inbox_yaml("globex", [("*.csv", None)], instance="sandbox"),
        ])
        daemon = daemons.start(path)
        files = {
            ("acme", "test_c.csv"): ("sandbox", sandbox),
            ("acme", "leads_c.csv"): ("default", prod),
            ("globex", "g_c.csv"): ("sandbox", sandbox),
            ("globex", "h_c.csv"): ("sandbox", sandbox),
        }
        for i, (who, name) in enumerate(files):
            drop(tmp_path, who, name, [f"c{i}@{who}.example"])
        run_until(
            daemon, lambda: daemon.store.count_chunks([ChunkState.SUBMITTED]) == len(files), timeout=15,
            what="every chunk submitted",
        )
        for sim in (prod, sandbox):  # batches open on both instances at the crash
            assert any(s["status"] in ("Queued", "Importing") for s in sim.submissions())
        daemons.crash(daemon)

        again = daemons.start(path)
        run_until(again, lambda: all(status_path(tmp_path, w, n).exists() for w, n in files), timeout=30,
                  what="every status after the restart")
        for (who, name), (instance, sim) in files.items():
            doc = status(tmp_path, who, name)
            assert (doc["status"], doc["instance"]) == ("Complete", instance), name
            assert "resubmitted" not in doc["batches"][0]
            assert doc["batches"][0]["batchId"] in {s["batchId"] for s in sim.submissions()}
        # Nothing sent twice (globex's two files may share one import: coalescing).
        assert (rows_sent(prod), rows_sent(sandbox)) == (1, 3)
        assert polled_batches(prod) == {s["batchId"] for s in prod.submissions()}
        assert polled_batches(sandbox) == {s["batchId"] for s in sandbox.submissions()}
        assert len(emails(prod)) == 1 and len(emails(sandbox)) == 3
        run_until(again, again.is_idle, timeout=5, what="idle")

    @pytest.mark.slow
    def test_sigkill_with_batches_open_on_both_instances(self, tmp_path, sims):
        """A real ``dropzone run`` killed with SIGKILL while both instances have batches open; the next
        process finishes every file where its batch lives, sending nothing twice."""
        from tests.bench._campaign import started_count

        prod, sandbox = slow_pair(sims, seconds=2.0)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        with path.open("a") as fh:
            fh.write("log: {format: json, level: info}\n")
        names = {"test_k1.csv": sandbox, "test_k2.csv": sandbox, "leads_k1.csv": prod, "leads_k2.csv": prod}
        for i, name in enumerate(names):
            drop(tmp_path, "acme", name, [f"k{i}@acme.example"])
        log = tmp_path / "daemon.log"

        def start() -> subprocess.Popen[bytes]:
            with log.open("ab") as out:
                return subprocess.Popen(
                    [sys.executable, "-m", "dropzone", "run", "--config", str(path)], stdout=out,
                    stderr=subprocess.STDOUT,
                )

        def submitted() -> int:
            store = Store(tmp_path / "state", lock=False)
            try:
                return store.count_chunks([ChunkState.SUBMITTED])
            finally:
                store.close()

        proc = start()
        try:
            deadline = time.monotonic() + 20
            while submitted() < len(names) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert submitted() == len(names), log.read_text()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert not any(status_path(tmp_path, "acme", n).exists() for n in names)
            proc = start()
            deadline = time.monotonic() + 30
            while not all(status_path(tmp_path, "acme", n).exists() for n in names):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
        assert started_count(log) == 2
        for name, sim in names.items():
            doc = status(tmp_path, "acme", name)
            assert (doc["status"], doc["instance"]) == ("Complete", "sandbox" if sim is sandbox else "default")
            assert "resubmitted" not in doc["batches"][0]
        assert (rows_sent(prod), rows_sent(sandbox)) == (2, 2)  # nothing sent twice, shared imports or not
        assert polled_batches(prod) == {s["batchId"] for s in prod.submissions()}
        assert polled_batches(sandbox) == {s["batchId"] for s in sandbox.submissions()}
        output = log.read_text()
        assert all(secret not in output for secret in SECRETS)


# ---- 5. reload ----------------------------------------------------------------------------------


class TestReload:
    def test_an_added_instance_and_its_route_take_the_next_file(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon = daemons.start(path)
        assert list(daemon.dispatches) == ["default"]
        write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon.reload()
        assert list(daemon.dispatches) == ["default", "sandbox"]
        assert "marketo:sandbox" in checks(daemon)
        drop(tmp_path, "acme", "test_new.csv", ["n1@acme.example"])
        drop(tmp_path, "acme", "leads_new.csv", ["n2@acme.example"])
        run_until(
            daemon,
            lambda: status_path(tmp_path, "acme", "test_new.csv").exists()
            and status_path(tmp_path, "acme", "leads_new.csv").exists(),
            what="both statuses",
        )
        assert status(tmp_path, "acme", "test_new.csv")["instance"] == "sandbox"
        assert status(tmp_path, "acme", "leads_new.csv")["instance"] == "default"
        assert (emails(sandbox), emails(prod)) == (["n1@acme.example"], ["n2@acme.example"])

    def test_a_reload_naming_an_unknown_instance_keeps_the_old_configuration(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", ACME)])  # the route still says sandbox
        daemon.reload()
        assert list(daemon.dispatches) == ["default", "sandbox"]
        assert not any(d.draining for d in daemon.dispatches.values())
        drop(tmp_path, "acme", "test_k.csv", ["k@acme.example"])
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_k.csv").exists(), what="the status")
        assert status(tmp_path, "acme", "test_k.csv")["instance"] == "sandbox"

    def test_a_removed_instance_finishes_its_open_batch_then_leaves(self, tmp_path, sims, daemons):
        prod, sandbox = slow_pair(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_open.csv", ["o1@acme.example"])
        run_until(daemon, lambda: chunk_states(daemon, "sandbox") == [ChunkState.SUBMITTED], what="submitted")
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon.reload()
        assert "sandbox" not in daemon.dispatches and [d.name for d in daemon.draining] == ["sandbox"]
        # A new test_ file goes by the new routes: to production, never to the instance on its way out.
        drop(tmp_path, "acme", "test_after.csv", ["a1@acme.example"])
        run_until(
            daemon,
            lambda: status_path(tmp_path, "acme", "test_open.csv").exists()
            and status_path(tmp_path, "acme", "test_after.csv").exists()
            and not daemon.draining,
            what="the open batch finished and the instance retired",
        )
        doc = status(tmp_path, "acme", "test_open.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "sandbox")
        assert doc["batches"][0]["batchId"] == sandbox.submissions()[0]["batchId"]
        assert status(tmp_path, "acme", "test_after.csv")["instance"] == "default"
        assert (emails(sandbox), emails(prod)) == (["o1@acme.example"], ["a1@acme.example"])
        assert not any(name.endswith(":sandbox") for name in checks(daemon))
        assert daemon.metrics.registry.get_sample_value("dropzone_batches_open", {"instance": "sandbox"}) is None
        run_until(daemon, daemon.is_idle, timeout=5, what="idle")

    def test_a_removed_instance_fails_its_unsent_chunk_with_a_reason_naming_it(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        fast_pauses(daemon, "sandbox", 30.0)  # the 1016 keeps it pending for the test's length
        sandbox.arm(Fault("1016", endpoint="import", times=None))
        drop(tmp_path, "acme", "test_pending.csv", ["p1@acme.example"])
        # The simulator logs a call before its answer is read: wait for the answer to be applied too.
        run_until(daemon, lambda: codes(sandbox, "1016") >= 1
                  and chunk_states(daemon, "sandbox") == [ChunkState.PENDING], what="a 1016")
        assert chunk_states(daemon, "sandbox") == [ChunkState.PENDING]
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon.reload()
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_pending.csv").exists(), what="the status")
        doc = status(tmp_path, "acme", "test_pending.csv")
        assert (doc["status"], doc["instance"]) == ("Failed", "sandbox")
        assert "'sandbox'" in doc["error"]["message"] and "no longer configured" in doc["error"]["message"]
        assert doc["batches"][0]["batchId"] is None
        assert sandbox.submissions() == [] and prod.submissions() == []
        run_until(daemon, lambda: not daemon.draining and daemon.is_idle(), timeout=5, what="retired")

    def test_a_renamed_instance_finishes_its_open_batch_under_the_new_name(self, tmp_path, sims, daemons):
        prod, sandbox = slow_pair(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_r.csv", ["r1@acme.example"])
        run_until(daemon, lambda: chunk_states(daemon, "sandbox") == [ChunkState.SUBMITTED], what="submitted")
        write_config(tmp_path, prod, {"staging": sandbox}, [inbox_yaml("acme", RENAMED)])
        daemon.reload()
        assert list(daemon.dispatches) == ["default", "staging"]
        # Handed over at once, or once a poll running on the old name's stage is answered.
        run_until(daemon, lambda: chunk_states(daemon, "staging") == [ChunkState.SUBMITTED] or
                  status_path(tmp_path, "acme", "test_r.csv").exists(), what="handed over")
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_r.csv").exists(), what="the status")
        doc = status(tmp_path, "acme", "test_r.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "staging")
        assert "resubmitted" not in doc["batches"][0]
        assert len(sandbox.submissions()) == 1 and prod.submissions() == []
        assert emails(sandbox) == ["r1@acme.example"]

    def test_a_renamed_instance_takes_over_its_pending_chunk(self, tmp_path, sims, daemons):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        fast_pauses(daemon, "sandbox", 30.0)
        fault = sandbox.arm(Fault("1016", endpoint="import", times=None))
        drop(tmp_path, "acme", "test_rp.csv", ["rp@acme.example"])
        run_until(daemon, lambda: codes(sandbox, "1016") >= 1
                  and chunk_states(daemon, "sandbox") == [ChunkState.PENDING], what="a 1016 applied")
        write_config(tmp_path, prod, {"staging": sandbox}, [inbox_yaml("acme", RENAMED)])
        daemon.reload()
        assert chunk_states(daemon, "staging") == [ChunkState.PENDING]
        sandbox.disarm(fault)
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_rp.csv").exists(), what="the status")
        doc = status(tmp_path, "acme", "test_rp.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "staging")
        assert emails(sandbox) == ["rp@acme.example"]

    def test_two_removed_instances_each_finish_their_open_batch(self, tmp_path, sims, daemons):
        """Both leave at once with a batch open; the quicker one retiring must not orphan the other's batch."""
        prod = sims()
        sandbox = sims(SANDBOX_ID, SANDBOX_SECRET, first_batch_id=5001, instant=False, queued_seconds=0.1,
                       import_seconds_per_job=0.5)
        staging = sims(STAGING_ID, STAGING_SECRET, first_batch_id=7001, instant=False, queued_seconds=0.1,
                       import_seconds_per_job=2.5)
        path = write_config(tmp_path, prod, {"sandbox": sandbox, "staging": staging}, [
            inbox_yaml("acme", [("test_*.csv", "sandbox"), ("stage_*.csv", "staging"), ("*.csv", None)]),
        ])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_two.csv", ["t@acme.example"])
        drop(tmp_path, "acme", "stage_two.csv", ["s@acme.example"])
        run_until(
            daemon,
            lambda: chunk_states(daemon, "sandbox") == chunk_states(daemon, "staging") == [ChunkState.SUBMITTED],
            what="both submitted",
        )
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon.reload()
        run_until(
            daemon,
            lambda: status_path(tmp_path, "acme", "test_two.csv").exists()
            and status_path(tmp_path, "acme", "stage_two.csv").exists(),
            what="both statuses",
        )
        assert status(tmp_path, "acme", "test_two.csv")["status"] == "Complete"
        doc = status(tmp_path, "acme", "stage_two.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "staging"), doc.get("error")
        assert emails(staging) == ["s@acme.example"]

    def test_a_removed_instance_never_calls_a_possibly_sent_chunk_unsent(self, tmp_path, sims, daemons):
        """A chunk whose upload's answer was lost waits (the resubmit hold) in ``pending``; its instance
        is removed meanwhile. Marketo may have its rows (here it has them): the reason must not say
        the chunk was not sent."""
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(
            tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)],
            settings={"sandbox": {"resubmit_hold": 60}},
        )
        daemon = daemons.start(path)
        sandbox.arm(Fault("create_then", reply="502", times=1))
        drop(tmp_path, "acme", "test_lost.csv", ["lost@acme.example"])
        run_until(
            daemon, lambda: [c.resubmits for c in daemon.store.chunks([ChunkState.PENDING], instance="sandbox")] == [1],
            what="the chunk waiting out its possible copy",
        )
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        daemon.reload()
        run_until(daemon, lambda: status_path(tmp_path, "acme", "test_lost.csv").exists(), what="the status")
        sandbox.wait_idle(5)
        assert emails(sandbox) == ["lost@acme.example"]  # the first copy was imported
        doc = status(tmp_path, "acme", "test_lost.csv")
        assert doc["status"] == "Failed" and "'sandbox'" in doc["error"]["message"]
        assert "not sent" not in doc["error"]["message"], doc["error"]["message"]
        assert "unknown" in doc["error"]["message"], doc["error"]["message"]


# ---- 6. restart after an instance left the configuration ----------------------------------------


def dropzone_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    return subprocess.run(
        [sys.executable, "-m", "dropzone", *args], capture_output=True, text=True, timeout=60, env=env
    )


class TestRestartAfterRemoval:
    def test_an_open_batch_of_an_instance_gone_at_restart_is_reported_failed_not_stuck(
        self, tmp_path, sims, daemons
    ):
        prod, sandbox = slow_pair(sims, seconds=3.0)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_gone.csv", ["g@acme.example"])
        drop(tmp_path, "acme", "leads_stay.csv", ["s@acme.example"])
        run_until(
            daemon, lambda: daemon.store.count_chunks([ChunkState.SUBMITTED]) == 2, what="both submitted"
        )
        daemons.crash(daemon)

        # `dropzone status` reads the journal: one line per instance, one no longer configured.
        write_config(tmp_path, prod, {}, [inbox_yaml("acme", [("*.csv", None)])])
        shown = dropzone_cli("status", "--config", str(path))
        assert shown.returncode == 0, shown.stderr
        lines = [line for line in shown.stdout.splitlines() if line.startswith("instance ")]
        assert lines == [
            "instance default: 0 chunk(s) waiting, 1 sent and not finished",
            "instance sandbox (not configured): 0 chunk(s) waiting, 1 sent and not finished",
        ]

        again = daemons.start(path)
        run_until(
            again,
            lambda: status_path(tmp_path, "acme", "test_gone.csv").exists()
            and status_path(tmp_path, "acme", "leads_stay.csv").exists(),
            timeout=20, what="both statuses",
        )
        doc = status(tmp_path, "acme", "test_gone.csv")
        assert (doc["status"], doc["instance"]) == ("Failed", "sandbox")
        message = doc["error"]["message"]
        assert "'sandbox'" in message and "no longer configured" in message and "unknown" in message
        assert status(tmp_path, "acme", "leads_stay.csv")["status"] == "Complete"
        assert list(again.dispatches) == ["default"]
        assert len(sandbox.submissions()) == 1 and len(prod.submissions()) == 1
        run_until(again, again.is_idle, timeout=5, what="idle")

    def test_an_open_batch_of_an_instance_renamed_at_restart_is_polled_under_the_new_name(
        self, tmp_path, sims, daemons
    ):
        prod, sandbox = slow_pair(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        daemon = daemons.start(path)
        drop(tmp_path, "acme", "test_ren.csv", ["ren@acme.example"])
        run_until(daemon, lambda: chunk_states(daemon, "sandbox") == [ChunkState.SUBMITTED], what="submitted")
        daemons.crash(daemon)
        write_config(tmp_path, prod, {"staging": sandbox}, [inbox_yaml("acme", RENAMED)])
        again = daemons.start(path)
        assert chunk_states(again, "staging") == [ChunkState.SUBMITTED]
        run_until(again, lambda: status_path(tmp_path, "acme", "test_ren.csv").exists(), what="the status")
        doc = status(tmp_path, "acme", "test_ren.csv")
        assert (doc["status"], doc["instance"]) == ("Complete", "staging")
        assert len(sandbox.submissions()) == 1


# ---- 7. dropzone check ----------------------------------------------------------------------------


class TestCheckCommand:
    def test_check_authenticates_every_instance(self, tmp_path, sims):
        prod, sandbox = prod_and_sandbox(sims)
        path = write_config(tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)])
        result = dropzone_cli("check", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "marketo instance default: credentials accepted by Identity" in result.stdout
        assert "marketo instance sandbox: credentials accepted by Identity" in result.stdout
        assert "configuration OK" in result.stdout
        for sim in (prod, sandbox):  # one Identity call each, with that instance's own client id, then reads only
            endpoints = [c["endpoint"] for c in sim.calls()]
            assert endpoints.count("identity") == 1 and endpoints[0] == "identity"
            assert {"describe_leads", "partitions"} <= set(endpoints) <= {"identity", "describe_leads", "partitions"}
        assert all(secret not in result.stdout + result.stderr for secret in SECRETS)

    def test_a_wrong_secret_on_one_instance_fails_the_check_naming_it_and_never_prints_a_secret(
        self, tmp_path, sims
    ):
        prod, sandbox = prod_and_sandbox(sims)
        wrong = "wrong-s3cr3t-also-never-printed"
        path = write_config(
            tmp_path, prod, {"sandbox": sandbox}, [inbox_yaml("acme", ACME)], secrets={"sandbox": wrong}
        )
        result = dropzone_cli("check", "--config", str(path))
        assert result.returncode == 1
        assert "marketo instance default: credentials accepted by Identity" in result.stdout
        problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
        assert len(problems) == 1 and problems[0].startswith("problem: marketo instance sandbox:"), result.stderr
        assert SANDBOX_ID in problems[0]
        assert "configuration OK" not in result.stdout
        output = result.stdout + result.stderr
        for secret in (*SECRETS, wrong):
            assert secret not in output
        shown = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
        assert shown["instances"]["sandbox"]["client_secret"] == D.SECRET_MASK
