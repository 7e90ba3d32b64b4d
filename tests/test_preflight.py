"""Pre-flight end to end (issue 11): headers checked against Marketo's describe, import targets checked.

The real simulator over HTTP on 127.0.0.1 serves Describe Lead2, Describe Custom Object, Describe
Program Member, Get List, Get Program, Get Channel by Name and Get Lead Partitions, from the same
catalogue its imports enforce; the daemon runs in-process with its configuration in a real file
(reloadable), the CLI through ``cli.main``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest

from dropzone import cli, gate, schemas, targetcheck
from dropzone import config as config_module
from dropzone import defaults as D
from dropzone.calls import Inline
from dropzone.daemon import Daemon
from dropzone.errors import ConfigError, WouldWaitError
from dropzone.health import Metrics
from dropzone.instances import MarketoSettings
from dropzone.jobs import FileState
from dropzone.kinds import ObjectKind
from dropzone.marketo import MarketoClient
from dropzone.simulator import Simulator
from dropzone.targets import ImportTarget
from dropzone.targetwatch import TargetWatch
from tests.conftest import CLIENT_ID, CLIENT_SECRET, Daemons, wait_until
from tests.helpers import archived, config_text, drop, run_until_idle, status_of

LEADS_ROUTE = """
      - match: "leads_*.csv"
        object: leads
        listId: {list_id}
"""
OTHER_ROUTES = """
      - match: "cars_*.tsv"
        object: customobject
        apiName: car_c
      - match: "*.ssv"
        object: programmember
        programId: 1044
        programMemberStatus: Registered
"""


def write_config(tmp_path: Path, sim: Simulator, routes: str, *, extra: str = "") -> Path:
    path = tmp_path / "dropzone.yaml"
    path.write_text(config_text(tmp_path, sim.base_url, routes=routes, extra=extra, poll_interval=0.2))
    return path


@pytest.fixture
def start(tmp_path: Path, simulator: Simulator, daemons: Daemons) -> Callable[..., Daemon]:
    def make(routes: str = LEADS_ROUTE.format(list_id=1234) + OTHER_ROUTES) -> Daemon:
        return daemons.start(write_config(tmp_path, simulator, routes))

    return make


def describe_calls(sim: Simulator, path: str) -> int:
    return sum(1 for c in sim.calls() if c.get("path", "").endswith(path))


class TestHeaders:
    def test_a_typo_is_rejected_with_its_suggestion_and_never_reaches_marketo(
        self, tmp_path: Path, simulator: Simulator, start: Callable[..., Daemon]
    ) -> None:
        daemon = start()
        drop(tmp_path, "leads_typo.csv", "email,firstNme\nann@example.com,Ann\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_typo.csv")
        assert status["status"] == "Rejected"
        assert status["error"]["line"] == 1
        said = status["error"]["message"]
        assert 'line 1, column 2: "firstNme" is not a lead field; did you mean "firstName"?' in said
        assert simulator.submissions() == []
        assert [p.name for p in archived(tmp_path)] == ["leads_typo.csv"]
        assert "failed" in archived(tmp_path)[0].parts

    def test_names_match_case_insensitively_and_are_sent_as_marketo_spells_them(
        self, tmp_path: Path, simulator: Simulator, start: Callable[..., Daemon]
    ) -> None:
        daemon = start()
        # The seeds' own example header.
        drop(tmp_path, "leads_seed.csv", "FirstName,LastName,Email,Company\nAnn,Lee,ann@example.com,Acme\n")
        drop(tmp_path, "members.ssv", "Email;firstName\nbob@example.com;Bob\n")
        run_until_idle(daemon)
        lead = status_of(tmp_path, "leads_seed.csv")
        assert lead["status"] == "Complete", lead
        assert 'header names were sent as Marketo spells them: "FirstName" as "firstName"' in " ".join(lead["notes"])
        assert status_of(tmp_path, "members.ssv")["status"] == "Complete"
        headers = {s["kind"]: s["header"] for s in simulator.submissions()}
        assert headers["leads"] == ["firstName", "lastName", "email", "company"]
        assert headers["programmember"][0] == "email"
        # One describe per object, cached: the second object shares nothing but the client.
        assert describe_calls(simulator, "/leads/describe2.json") == 2  # leads, then program members' lead fields

    def test_a_custom_object_file_without_its_dedupe_field_is_rejected(
        self, tmp_path: Path, simulator: Simulator, start: Callable[..., Daemon]
    ) -> None:
        daemon = start()
        drop(tmp_path, "cars_1.tsv", "color\tmake\nred\tbmw\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "cars_1.tsv")
        assert status["status"] == "Rejected"
        assert 'lacks the dedupe field(s) "vin" of custom object car_c' in status["error"]["message"]
        assert simulator.submissions() == []

    def test_an_unknown_column_asks_marketo_again_before_the_file_is_rejected(
        self, tmp_path: Path, simulator: Simulator, start: Callable[..., Daemon]
    ) -> None:
        """An admin may just have added the field: a describe older than recheck_after is fetched again first."""
        daemon = start()
        drop(tmp_path, "leads_ok.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        assert describe_calls(simulator, "/leads/describe2.json") == 1
        cache = daemon.prepare.preflight.schemas("default") if daemon.prepare.preflight else None
        assert cache is not None
        cache.recheck_after = 0.0
        drop(tmp_path, "leads_new.csv", "email,partnerTier_c\nbob@example.com,gold\n")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_new.csv")["status"] == "Rejected"
        assert describe_calls(simulator, "/leads/describe2.json") == 2  # asked once more, then rejected

    def test_preflight_false_sends_the_header_as_it_is(
        self, tmp_path: Path, simulator: Simulator, start: Callable[..., Daemon]
    ) -> None:
        daemon = start('\n      - match: "*.csv"\n        object: leads\n        preflight: false\n')
        drop(tmp_path, "x.csv", "Email,firstNme\nann@example.com,Ann\n")
        run_until_idle(daemon)
        assert describe_calls(simulator, "describe2.json") == 0
        status = status_of(tmp_path, "x.csv")  # Marketo's own verdict, at the submit
        assert status["status"] == "Failed" and "Field 'firstNme' not found" in status["error"]["message"]


class TestDescribeUnavailable:
    def test_a_denied_describe_lets_files_go_ahead_unchecked_with_a_note(
        self, tmp_path: Path, sims: Callable[..., Simulator], daemons: Daemons
    ) -> None:
        sim = sims(denied_endpoints=("describe_leads",))
        daemon = daemons.start(write_config(tmp_path, sim, LEADS_ROUTE.format(list_id=1234)))
        drop(tmp_path, "leads_1.csv", "email,firstName\nann@example.com,Ann\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_1.csv")
        assert status["status"] == "Complete"
        [note] = [n for n in status["notes"] if "not checked" in n]
        assert "603" in note and "'Read-Only Lead'" in note
        assert len(sim.submissions()) == 1

    def test_a_hostile_describe_is_unavailable_never_a_rejection(
        self, tmp_path: Path, sims: Callable[..., Simulator], daemons: Daemons
    ) -> None:
        """A field name with a NUL byte: the describe is not trusted, and a good file still goes."""
        sim = sims(lead_fields={"email": "email", "first\x00Name": "string"})
        daemon = daemons.start(write_config(tmp_path, sim, LEADS_ROUTE.format(list_id=1234)))
        drop(tmp_path, "leads_1.csv", "email\nann@example.com\n")
        run_until_idle(daemon)
        status = status_of(tmp_path, "leads_1.csv")
        assert status["status"] == "Complete"
        assert any("not checked" in n and "control characters" in n for n in status["notes"])


class _Stage:
    """An instance's stage as the pre-flight sees it: a client and where its calls run."""

    def __init__(self, client: MarketoClient, calls: Executor | None = None) -> None:
        self.client, self.calls = client, calls or Inline()


def client_of(sim: Simulator, **settings: Any) -> MarketoClient:
    return MarketoClient(MarketoSettings(endpoint=sim.base_url, client_id=sim.config.client_id,
                                         client_secret=sim.config.client_secret, **settings))


LEAD_TARGET = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email")
MEMBER_TARGET = ImportTarget(kind=ObjectKind.PROGRAM_MEMBER, program_id=1044, program_member_status="Registered")


class TestSchemaCache:
    def test_pending_then_known_then_refreshed_once_stale(self, simulator: Simulator) -> None:
        client = client_of(simulator)
        cache = schemas.Schemas("default", lambda: client, Inline(), refresh_after=100.0)
        assert cache.lookup(LEAD_TARGET, 0.0).schema is not None  # inline: fetched at once
        assert cache.lookup(LEAD_TARGET, 50.0).schema is not None
        assert describe_calls(simulator, "describe2.json") == 1
        cache.lookup(LEAD_TARGET, 101.0)
        assert describe_calls(simulator, "describe2.json") == 2
        client.close()

    def test_a_field_an_admin_just_added_is_found_by_the_recheck(self, sims: Callable[..., Simulator]) -> None:
        """Marketo before and after the admin's change: two simulators, one client at a time."""
        before = sims()
        after = sims(lead_fields={"email": "email", "partnerTier_c": "string"})
        clients = [client_of(before), client_of(after)]
        cache = schemas.Schemas("default", lambda: clients[0], Inline(), recheck_after=300.0)
        known = cache.lookup(LEAD_TARGET, 0.0).schema
        assert known is not None and "partnerTier_c" not in known.fields
        assert cache.recheck(LEAD_TARGET, 10.0) is False  # 10 s old: the file is rejected now
        clients.reverse()
        assert cache.recheck(LEAD_TARGET, 400.0) is True  # the file waits for the fresh describe
        fresh = cache.lookup(LEAD_TARGET, 400.0).schema
        assert fresh is not None and "partnerTier_c" in fresh.fields
        assert cache.recheck(LEAD_TARGET, 401.0) is False  # confirmed just now
        for c in clients:
            c.close()

    def test_no_answer_holds_files_until_the_deadline_then_they_go_unchecked(self, simulator: Simulator) -> None:
        simulator.inject("http503", times=100, endpoint="describe_leads")
        client = client_of(simulator)
        cache = schemas.Schemas("default", lambda: client, Inline(), deadline=30.0, retry_after=600.0)
        assert cache.lookup(LEAD_TARGET, 0.0).pending
        assert cache.lookup(LEAD_TARGET, 20.0).pending
        found = cache.lookup(LEAD_TARGET, 40.0)
        assert found.unavailable == "Marketo answered HTTP 503" and not found.pending
        simulator.clear_faults()
        assert cache.lookup(LEAD_TARGET, 100.0).unavailable  # not asked again before retry_after
        assert cache.lookup(LEAD_TARGET, 700.0).schema is not None
        client.close()

    def test_a_rate_window_only_delays_the_describe(self, simulator: Simulator) -> None:
        """The daemon's clients never wait (WouldWaitError): the describe is tried again, never given up."""
        now = [0.0]

        def no_waiting(seconds: float) -> None:
            raise WouldWaitError(seconds)

        client = MarketoClient(MarketoSettings(endpoint=simulator.base_url, client_id=CLIENT_ID,
                                               client_secret=CLIENT_SECRET, calls_per_20s=2),
                               sleep=no_waiting, clock=lambda: now[0])
        cache = schemas.Schemas("default", lambda: client, Inline(), deadline=1.0)
        assert cache.lookup(LEAD_TARGET, 0.0).schema is not None  # the window's first call
        assert cache.lookup(MEMBER_TARGET, 0.0).pending  # describe2 takes the second; the window is full
        assert cache.lookup(MEMBER_TARGET, 5.0).pending  # not tried again before the window rolls over
        now[0] = 21.0
        assert cache.lookup(MEMBER_TARGET, 21.0).schema is not None
        client.close()


class TestTargets:
    def test_a_wrong_list_holds_the_route_until_a_reload_fixes_it(
        self, tmp_path: Path, simulator: Simulator, daemons: Daemons
    ) -> None:
        path = write_config(tmp_path, simulator, LEADS_ROUTE.format(list_id=999) + OTHER_ROUTES)
        daemon = daemons.start(path)
        # More held files than a pass prepares, claimed before the other route's: they must not starve it.
        leads = [f"leads_{i}.csv" for i in range(1, 2 * D.PREPARES_PER_PASS + 2)]
        for name in leads:
            drop(tmp_path, name, "email\nann@example.com\n")
        wait_until(lambda: daemon.run_once() or len(daemon.store.files([FileState.CLAIMED])) == len(leads), timeout=15)
        drop(tmp_path, "cars_1.tsv", "color\tvin\nred\tWBA1\n")
        problem = 'inboxes[0].routes[0].listId: static list 999 does not exist in Marketo instance "default"'

        def held() -> bool:
            daemon.run_once()
            checks = {c.name: c for c in daemon.metrics.readiness()}
            claimed = sorted(r.relpath for r in daemon.store.files([FileState.CLAIMED]))
            return "targets" in checks and claimed == sorted(leads) and (tmp_path / "outbox/cars_1.tsv.status.json"
                                                                         ).exists()

        wait_until(held, timeout=15)
        [check] = [c for c in daemon.metrics.readiness() if c.name == "targets"]
        assert not check.ok and check.detail == problem
        assert [s["kind"] for s in simulator.submissions()] == ["customobject"]  # the other routes flow
        assert not (tmp_path / "outbox/leads_1.csv.status.json").exists()  # held, not rejected
        path.write_text(path.read_text().replace("listId: 999", "listId: 1234"))
        daemon.reload()
        run_until_idle(daemon)
        assert [status_of(tmp_path, name)["status"] for name in leads] == ["Complete"] * len(leads)
        assert all(c.ok for c in daemon.metrics.readiness())

    def test_a_target_fixed_in_marketo_is_released_by_the_next_check(self, sims: Callable[..., Simulator]) -> None:
        """Marketo before and after an admin created the list: the next check releases the route."""
        before, after = sims(), sims(lists=[1234, 4321])
        config = config_module.parse(f"""
marketo: {{endpoint: {before.base_url}, client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
state_dir: /tmp/unused
inboxes: [{{path: /tmp/in, outbox: /tmp/out, routes: [{{match: "*.csv", object: leads, listId: 4321}}]}}]
""", environ={})
        stages = [_Stage(client_of(before)), _Stage(client_of(after))]
        metrics = Metrics()
        watch = TargetWatch(lambda name: stages[0], metrics, interval=3600.0)
        watch.configure(config, 0.0)
        target = config.inboxes[0].routes[0].target()
        assert watch.waiting(target, 0.0)
        watch.run_once(0.0)
        assert watch.held(target) == 'inboxes[0].routes[0].listId: static list 4321 does not exist in Marketo ' \
                                     'instance "default"'
        stages.reverse()
        watch.run_once(1800.0)  # not due yet
        assert watch.held(target) is not None
        watch.run_once(3600.0)
        assert watch.held(target) is None
        assert not any(c.name == "targets" for c in metrics.readiness())
        for s in stages:
            s.client.close()

    def test_an_unanswered_check_holds_nothing(self, sims: Callable[..., Simulator]) -> None:
        sim = sims(denied_endpoints=("list",))
        config = config_module.parse(f"""
marketo: {{endpoint: {sim.base_url}, client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
state_dir: /tmp/unused
inboxes: [{{path: /tmp/in, outbox: /tmp/out, routes: [{{match: "*.csv", object: leads, listId: 999}}]}}]
""", environ={})
        stage = _Stage(client_of(sim))
        preflight = gate.Preflight(lambda name: stage, TargetWatch(lambda name: stage, Metrics()))
        assert preflight.targets is not None
        preflight.targets.configure(config, 0.0)
        preflight.run_once(0.0)
        decision = preflight.gate(config.inboxes[0].routes[0], 0.0)
        assert decision.go and decision.held is None
        partition, finding = targetcheck.check(stage.client, targetcheck.needs_of(config)["default"])
        assert partition.wrong is None and partition.unknown is None
        assert finding.code == "603" and "'Read-Only Lead'" in (finding.unknown or "") and finding.wrong is None
        stage.client.close()


def check_cli(tmp_path: Path, sim: Simulator, routes: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["check", "--config", str(write_config(tmp_path, sim, routes))])
    out = capsys.readouterr()
    return code, out.out + out.err


class TestDropzoneCheck:
    def test_every_wrong_target_is_named_by_its_key(
        self, tmp_path: Path, sims: Callable[..., Simulator], capsys: pytest.CaptureFixture[str]
    ) -> None:
        sim = sims(partitions=["Default", "Europe"])
        routes = """
      - {match: "a_*.csv", object: leads, listId: 999, partitionName: Default}
      - {match: "b_*.csv", object: leads, partitionName: Europa}
      - {match: "c_*.csv", object: leads}
      - {match: "*.tsv", object: customobject, apiName: boat_c}
      - {match: "x_*.ssv", object: programmember, programId: 777, programMemberStatus: Registered}
      - {match: "*.ssv", object: programmember, programId: 1044, programMemberStatus: Registerd}
"""
        code, said = check_cli(tmp_path, sim, routes, capsys)
        assert code == 1
        r = "problem: inboxes[0].routes"
        assert f'{r}[0].listId: static list 999 does not exist in Marketo instance "default"' in said
        assert f'{r}[1].partitionName: lead partition "Europa" does not exist in Marketo instance "default" ' \
               '(its partitions: "Default", "Europe"); did you mean "Europe"?' in said
        assert f"{r}[2].partitionName: is required: Marketo instance \"default\" has several lead partitions" in said
        assert f"{r}[3].apiName: custom object 'boat_c' does not exist in Marketo instance \"default\"" in said
        assert f'{r}[4].programId: program 777 does not exist in Marketo instance "default"' in said
        assert f'{r}[5].programMemberStatus: "Registerd" is not a member status of program 1044' in said
        assert 'did you mean "Registered"?' in said
        assert said.count("problem:") == 6
        assert CLIENT_SECRET not in said

    def test_good_targets_pass(self, tmp_path: Path, simulator: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
        code, said = check_cli(tmp_path, simulator, LEADS_ROUTE.format(list_id=1234) + OTHER_ROUTES, capsys)
        assert code == 0, said
        assert "pre-flight can read the lead fields" in said
        assert "5 of 5 import target checks passed" in said
        assert "configuration OK" in said

    @pytest.mark.parametrize(
        ("denied", "code", "says"),
        [
            (("describe_leads",), 1, "imports of leads need 'Read-Write Lead'"),
            (("describe_customobject",), 1, "imports of custom objects need 'Read-Write Custom Object'"),
            (("program", "channel"), 0, "the API user's role needs 'Read-Only Assets'"),
        ],
    )
    def test_a_missing_permission_names_the_feature_it_breaks(
        self, tmp_path: Path, sims: Callable[..., Simulator], capsys: pytest.CaptureFixture[str],
        denied: tuple[str, ...], code: int, says: str,
    ) -> None:
        sim = sims(denied_endpoints=denied)
        got, said = check_cli(tmp_path, sim, LEADS_ROUTE.format(list_id=1234) + OTHER_ROUTES, capsys)
        assert got == code, said
        assert says in said and "603" in said


def test_not_in_program_is_never_a_valid_status() -> None:
    with pytest.raises(ConfigError, match=r'programMemberStatus: "Not in Program" is never a valid status'):
        config_module.parse("""
marketo: {endpoint: "https://x.mktorest.com", client_id: a, client_secret: b}
state_dir: /tmp/s
inboxes: [{path: /tmp/i, outbox: /tmp/o, routes: [{match: "*.ssv", object: programmember, programId: 1,
           programMemberStatus: not in program}]}]
""", environ={})


def test_the_route_key_defaults_to_true() -> None:
    config = config_module.parse("""
marketo: {endpoint: "https://x.mktorest.com", client_id: a, client_secret: b}
state_dir: /tmp/s
inboxes: [{path: /tmp/i, outbox: /tmp/o, routes: [{match: "*.csv", object: leads}, {match: "*.tsv", object: leads,
           preflight: false}]}]
""", environ={})
    assert [r.preflight for r in config.inboxes[0].routes] == [True, False]
    assert config.redacted()["inboxes"][0]["routes"][0]["preflight"] is True

