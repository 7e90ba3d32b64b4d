"""The daily quota: usage.json read with distrust, the pause decision, the simulator's count, and
the daemon end to end (real simulator over HTTP, real journal): new imports wait at the reserve,
open ones finish, other integrations' calls bring the pause earlier, a 603 on usage.json leaves
our own count."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from dropzone import config as config_module
from dropzone import defaults as D
from dropzone import errors, health, throttle
from dropzone.daemon import Daemon
from dropzone.instances import MarketoSettings
from dropzone.jobs import ChunkState
from dropzone.marketo import MarketoClient
from dropzone.quota import QuotaGuard
from dropzone.replies import Endpoint, Where, interpret, parse_usage
from dropzone.simulator import SimConfig, Simulator
from dropzone.simulator.cli import build_parser, config_from_args
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.helpers import ROUTES, drop, make_config, status_of
from tests.test_marketo import FakeMarketo, reply

USAGE = Where(Endpoint.USAGE, "GET", "/rest/v1/stats/usage.json")
NOW = dt.datetime(2026, 11, 30, 18, 0, tzinfo=dt.UTC)


def envelope(*result: object) -> dict[str, Any]:
    return {"requestId": "a#b", "success": True, "result": list(result)}


def day(date: str = "2026-11-30", total: object = 1234, **extra: object) -> dict[str, Any]:
    return {"date": date, "total": total, "users": [{"userId": "api@example.com", "count": total}], **extra}


# ---- reading usage.json ---------------------------------------------------------------------


class TestParseUsage:
    @pytest.mark.parametrize(
        ("data", "total"),
        [
            (envelope(day()), 1234),
            (envelope(day(total="1234")), 1234),  # a quoted count, as Marketo quotes codes
            (envelope(), 0),  # a day without calls
            (envelope(day("2026-11-29", 40_000), day("2026-11-30", 12)), 12),  # the latest day is today
            (envelope(day(users="not a list")), 1234),  # the split by user is not ours to trust or need
        ],
    )
    def test_the_instance_total_of_the_latest_day(self, data, total):
        assert parse_usage(data, USAGE) == total

    @pytest.mark.parametrize(
        "data",
        [
            {"success": True},  # no result
            envelope("2026-11-30"),
            envelope(day(total=None)),
            envelope(day(total=-5)),
            envelope(day(total="n/a")),
            envelope(day(total=True)),
            envelope(day(total=12.5)),
            envelope({"total": 5}),  # no date
            envelope(day(date="30/11/2026")),
            envelope(day(date=20261130)),
        ],
    )
    def test_anything_else_is_an_error_never_a_guess(self, data):
        with pytest.raises(errors.TransientError, match="reply malformed"):
            parse_usage(data, USAGE)

    @pytest.mark.parametrize(
        ("status", "body", "error", "code"),
        [
            (200, b"<html>502</html>", errors.TransientError, "reply not JSON"),
            (200, b"[1, 2]", errors.TransientError, "reply malformed"),
            (503, b"busy", errors.TransientError, "HTTP 503"),
            (200, json.dumps({"success": False, "errors": [{"code": "603", "message": "Access denied"}]}).encode(),
             errors.MisconfiguredError, "603"),
            (200, json.dumps({"success": False, "errors": [{"code": "1003", "message": "?"}]}).encode(),
             errors.TransientError, "1003"),  # a batch's "not found" means nothing here
        ],
    )
    def test_the_envelope_is_read_like_any_other_reply(self, status, body, error, code):
        with pytest.raises(error) as caught:
            interpret(USAGE, status, {}, body, file=False, now_utc=NOW, scrub=lambda s: s)
        assert type(caught.value) is error and caught.value.code == code


# ---- the client -------------------------------------------------------------------------------


def settings(endpoint: str, **overrides: Any) -> MarketoSettings:
    base = MarketoSettings(endpoint=endpoint, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, max_retry_seconds=0)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def clients() -> Iterator[Callable[..., MarketoClient]]:
    made: list[MarketoClient] = []

    def make(endpoint: str, **kwargs: Any) -> MarketoClient:
        client = MarketoClient(settings(endpoint), **kwargs)  # no retries: each test sees every answer
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def scripted() -> Iterator[FakeMarketo]:
    """Marketo answering usage.json as a test scripts it (on its "status" steps: every GET that is no file)."""
    server = FakeMarketo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join()


class TestClient:
    def test_usage_today_counts_every_integration_and_our_count_matches_the_simulators(self, simulator, clients):
        client = clients(simulator.base_url)
        simulator.add_foreign_calls(40)
        assert client.usage_today() == 41  # the call itself counts, as it does at Marketo
        with pytest.raises(errors.BatchNotFoundError):
            client.status(throttle_target(), 99)
        today = client.quota_today()
        # Identity is not counted, usage.json and the status call are. Known spent: usage.json's answer plus
        # our calls since it was asked, the usage call among them (the answer may or may not include it).
        assert (today.ours, today.instance, today.used) == (2, 41, 43)
        assert client.calls_today() == 2
        assert simulator.calls_today() == 42

    def test_exempt_answers_and_calls_never_sent_are_not_counted(self, simulator, clients):
        records: list[Any] = []
        client = clients(simulator.base_url, on_call=records.append)
        simulator.inject("608", endpoint="usage")  # "API Temporarily Unavailable": exempt
        with pytest.raises(errors.TransientError):
            client.usage_today(retry_for=0)
        simulator.inject("606", endpoint="usage")  # not exempt: counted, to be safe
        with pytest.raises(errors.ThrottledError):
            client.usage_today(retry_for=0)
        assert [(r.outcome, r.counted) for r in records if r.endpoint == "usage"] == [("608", False), ("606", True)]
        assert client.calls_today() == 1

        # A token from the simulator, then an endpoint nothing listens on: no connection, no call.
        refused = MarketoClient(
            settings("http://127.0.0.1:9", identity=simulator.identity_url), on_call=records.append
        )
        try:
            with pytest.raises(errors.TransientError):
                refused.usage_today(retry_for=0)
            assert refused.calls_today() == 0
        finally:
            refused.close()
        assert (records[-1].endpoint, records[-1].outcome, records[-1].counted) == ("usage", "not sent", False)

    def test_a_603_on_usage_is_access_denied(self, clients):
        with Simulator(SimConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, usage_denied=True)) as sim:
            client = clients(sim.base_url)
            with pytest.raises(errors.MisconfiguredError) as caught:
                client.usage_today()
            assert caught.value.code == "603"
            assert client.quota_today().instance is None
            assert client.calls_today() == 1  # a 603 is not among the exempt answers

    def test_a_malformed_usage_reply_is_an_error_and_leaves_the_last_good_one(self, scripted, clients):
        client = clients(scripted.url)
        scripted.answer("status", reply(body=envelope(day(total=700))), reply(body=envelope(day(total="lots"))),
                    reply(200, "<html>oops</html>", content_type="text/html"))
        assert client.usage_today() == 700
        for _ in range(2):
            with pytest.raises(errors.TransientError):
                client.usage_today()
        today = client.quota_today()
        assert today.instance == 700 and today.used == 700 + 3  # plus our three calls since it was asked
        assert scripted.requests[-1]["path"] == "/rest/v1/stats/usage.json"

    def test_a_reload_keeps_the_days_count(self, simulator, clients):
        old = clients(simulator.base_url)
        old.usage_today()
        new = clients(simulator.base_url)
        new.share_quota(old)
        new.usage_today()
        assert (old.calls_today(), new.calls_today()) == (2, 2)


def throttle_target() -> Any:
    from dropzone.kinds import ObjectKind
    from dropzone.targets import ImportTarget

    return ImportTarget(kind=ObjectKind.LEADS, lookup_field="email")


# ---- the guard ----------------------------------------------------------------------------------


ROLLS = dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC)


def today(used: int, *, ours: int | None = None, instance: int | None = None) -> throttle.QuotaToday:
    return throttle.QuotaToday(ours=used if ours is None else ours, instance=instance, used=used, rolls_at=ROLLS)


class TestGuard:
    SETTINGS = settings("http://127.0.0.1:1", daily_quota=100, daily_reserve=20)

    def test_new_imports_wait_at_the_reserve_told_once_shown_not_failing(self):
        metrics = health.Metrics()
        view = metrics.instance("default")
        guard = QuotaGuard()
        with structlog.testing.capture_logs() as logs:
            assert not guard.holds(today(79), self.SETTINGS, view, 1.0)
            for used in (80, 81, 85):
                assert guard.holds(today(used, ours=5, instance=used - 1), self.SETTINGS, view, 1.0)
            assert not guard.holds(today(3), self.SETTINGS, view, 1.0)  # the reset: the count fell
        events = [e["event"] for e in logs]
        assert events == ["daily_quota_reserve_reached_pausing_new_imports", "daily_quota_pause_over"]
        assert metrics.registry.get_sample_value("dropzone_api_calls_today", {"instance": "default"}) == 3

        guard.holds(today(90, ours=10, instance=89), self.SETTINGS, view, 1.0)
        checks = {c.name: c for c in metrics.readiness()}
        assert checks["marketo_quota"].ok  # a deliberate pause, not a fault
        detail = checks["marketo_quota"].detail
        assert "90 of 100 calls" in detail and "2026-12-01 06:00 UTC" in detail and "keeps 20" in detail
        assert metrics.registry.get_sample_value("dropzone_instance_calls_today", {"instance": "default"}) == 89
        guard.holds(today(1), self.SETTINGS, view, 1.0)
        assert "marketo_quota" not in {c.name for c in metrics.readiness()}
        nan = metrics.registry.get_sample_value("dropzone_instance_calls_today", {"instance": "default"})
        assert nan is not None and math.isnan(nan)

    def test_a_zero_reserve_never_pauses(self):
        view = health.Metrics().instance("default")
        zero = dataclasses.replace(self.SETTINGS, daily_reserve=0)
        assert not QuotaGuard().holds(today(10_000), zero, view, 1.0)

    def test_usage_is_asked_every_interval_one_at_a_time_and_waited_for_once(self):
        view = health.Metrics().instance("default")
        guard = QuotaGuard(every=600, retry=60)
        assert guard.due(0.0)
        guard.started(0.0)
        assert not guard.due(1.0)  # one at a time
        assert guard.holds(today(0), self.SETTINGS, view, 1.0)  # the first answer is waited for
        assert not guard.holds(today(0), self.SETTINGS, view, D.USAGE_FIRST_WAIT_S)  # a moment only
        guard.answered(None, 2.0)
        assert not guard.holds(today(0), self.SETTINGS, view, 1.0)
        assert not guard.due(601.0) and guard.due(602.0)
        guard.started(0.0)
        assert not guard.holds(today(0), self.SETTINGS, view, 1.0)  # later ones are not
        guard.answered(errors.TransientError("HTTP 503", code="HTTP 503"), 700.0)
        assert not guard.due(759.0) and guard.due(760.0)
        guard.started(0.0)
        guard.answered(errors.WouldWaitError(120.0), 800.0)
        assert not guard.due(919.0) and guard.due(920.0)

    def test_a_603_is_asked_again_an_hour_later_and_told_once(self):
        """A 603 may be a passing IP allow-list refusal: never taken as "not permitted" for good."""
        guard = QuotaGuard(every=1, retry=1)
        denied = errors.MisconfiguredError("Marketo denied access (603)", code="603")
        with structlog.testing.capture_logs() as logs:
            guard.started(0.0)
            guard.answered(denied, 0.0)
            assert guard.denied and not guard.due(D.USAGE_DENIED_RETRY_S - 1) and guard.due(D.USAGE_DENIED_RETRY_S)
            guard.started(0.0)
            guard.answered(denied, D.USAGE_DENIED_RETRY_S)
            guard.started(0.0)
            guard.answered(None, 2 * D.USAGE_DENIED_RETRY_S)
        assert not guard.denied
        assert [e["event"] for e in logs] == ["usage_not_permitted_counting_our_calls_only", "usage_permitted_again"]

    def test_other_refusals_are_asked_again(self):
        guard = QuotaGuard(every=1, retry=1)
        guard.started(0.0)
        guard.answered(errors.MisconfiguredError("no such resource (610)", code="610"), 0.0)
        assert not guard.denied and guard.due(1.0)


# ---- the simulator ------------------------------------------------------------------------------


class TestSimulatorUsage:
    def usage(self, sim: Simulator, session: requests.Session) -> dict[str, Any]:
        token = session.get(sim.identity_url + "/oauth/token", params={
            "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        }).json()["access_token"]
        got = session.get(sim.base_url + "/rest/v1/stats/usage.json", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200
        return got.json()  # type: ignore[no-any-return]

    def test_usage_reports_the_days_counted_calls_by_user(self, simulator):
        with requests.Session() as session:
            session.trust_env = False
            simulator.add_foreign_calls(7, user="crm@example.com")
            first = self.usage(simulator, session)
            [entry] = first["result"]
            assert first["success"] is True and entry["total"] == 8  # identity is not counted; this call is
            assert dt.date.fromisoformat(entry["date"])
            assert sorted((u["userId"], u["count"]) for u in entry["users"]) == [
                ("apiuser@dropzone.invalid", 1), ("crm@example.com", 7),
            ]
            assert self.usage(simulator, session)["result"][0]["total"] == 9
            assert simulator.calls_today() == 9

    def test_foreign_calls_bring_607_sooner(self):
        cfg = SimConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, instant=True, daily_quota=5)
        with Simulator(cfg) as sim, requests.Session() as session:
            session.trust_env = False
            sim.add_foreign_calls(4)
            assert self.usage(sim, session)["result"][0]["total"] == 5
            token = session.get(sim.identity_url + "/oauth/token", params={
                "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            }).json()["access_token"]
            got = session.get(sim.base_url + "/rest/v1/stats/usage.json",
                              headers={"Authorization": f"Bearer {token}"}).json()
            assert got["errors"][0]["code"] == "607"

    def test_usage_denied_answers_603_and_the_flag_sets_it(self):
        args = build_parser().parse_args(["--client-id", CLIENT_ID, "--usage-denied"])
        cfg = config_from_args(args, environ={"DROPZONE_SIM_CLIENT_SECRET": CLIENT_SECRET})
        assert cfg.usage_denied is True
        with Simulator(cfg) as sim, requests.Session() as session:
            session.trust_env = False
            token = session.get(sim.identity_url + "/oauth/token", params={
                "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            }).json()["access_token"]
            got = session.get(sim.base_url + "/rest/v1/stats/usage.json",
                              headers={"Authorization": f"Bearer {token}"}).json()
            assert (got["success"], got["errors"][0]["code"]) == (False, "603")
            assert [c["endpoint"] for c in sim.calls()] == ["identity", "usage"]


# ---- end to end -----------------------------------------------------------------------------------


@pytest.fixture
def quota_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: a started daemon on ``sim`` with the given daily_quota and daily_reserve."""
    made: list[Daemon] = []

    def make(sim: Simulator, *, quota: int, reserve: int) -> Daemon:
        # One import per file (no coalescing): the calls each file costs are what these tests count.
        solo = ROUTES.replace("        listId: 1234\n", "        listId: 1234\n        coalesce: false\n", 1)
        config = make_config(tmp_path, sim.base_url, routes=solo)
        marketo = dataclasses.replace(config.marketo, daily_quota=quota, daily_reserve=reserve, poll_interval=0.2)
        daemon = Daemon(dataclasses.replace(config, marketo=marketo))
        daemon.start()
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()


def run_until(daemon: Daemon, done: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    daemon.rescan_now()
    while not done():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {timeout} s")
        if not daemon.run_once():
            daemon.idle()


def passes(daemon: Daemon, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not daemon.run_once():
            daemon.idle()


def states(daemon: Daemon) -> list[ChunkState]:
    return [c.state for c in daemon.store.chunks(list(ChunkState))]


def gauge(daemon: Daemon, name: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, {"instance": "default"})


def quota_check(daemon: Daemon) -> health.Check | None:
    return next((c for c in daemon.metrics.readiness() if c.name == "marketo_quota"), None)


def leads(n: int) -> list[str]:
    return [f"leads_{i:02d}.csv" for i in range(n)]


class TestEndToEnd:
    def test_at_the_reserve_new_files_wait_pending_and_open_imports_finish(self, tmp_path, simulator, quota_daemon):
        """One import per listId at a time: files go one after another, each a submit and its polls,
        until only the reserve is left; the import then open still finishes, the rest wait unsent."""
        daemon = quota_daemon(simulator, quota=40, reserve=30)
        names = leads(8)
        for i, name in enumerate(names):
            drop(tmp_path, name, f"email\nq{i}@example.com\n")
        run_until(daemon, lambda: quota_check(daemon) is not None and not any(
            s in (ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING) for s in states(daemon)))
        sent = len(simulator.submissions())
        passes(daemon, 1.5)  # nothing more goes, however long it runs
        assert len(simulator.submissions()) == sent
        assert 1 <= sent < len(names)

        done = [n for n in names if (tmp_path / "outbox" / f"{n}.status.json").exists()]
        assert len(done) == sent  # every import sent finished and was reported
        assert all(status_of(tmp_path, n)["status"] == "Complete" for n in done)
        waiting = [s for s in states(daemon) if s is ChunkState.PENDING]
        assert len(waiting) == len(names) - sent and ChunkState.ERROR not in states(daemon)

        ours = daemon.client.calls_today()
        assert daemon.client.quota_today().used >= 10  # the reserve was reached (usage.json saw no one else)
        assert ours == simulator.calls_today()  # counted as Marketo counts, no more, no less
        assert gauge(daemon, "dropzone_api_calls_today") == ours
        assert gauge(daemon, "dropzone_instance_calls_today") is not None
        check = quota_check(daemon)
        assert check is not None and check.ok and "new imports wait" in check.detail
        assert all(c.ok for c in daemon.metrics.readiness())
        assert [c["endpoint"] for c in simulator.calls()].count("usage") == 1  # 10 minutes apart

    def test_other_integrations_calls_bring_the_pause_earlier(self, tmp_path, simulator, quota_daemon):
        """usage.json counts everyone: with the instance already near its quota, nothing is sent at all."""
        simulator.add_foreign_calls(900)
        daemon = quota_daemon(simulator, quota=1000, reserve=100)
        for i, name in enumerate(leads(3)):
            drop(tmp_path, name, f"email\nf{i}@example.com\n")
        run_until(daemon, lambda: quota_check(daemon) is not None)
        passes(daemon, 1.0)
        assert simulator.submissions() == []
        assert states(daemon) == [ChunkState.PENDING] * 3
        # Ours: the pre-flight's reads (the route's target, the lead describe), then usage.json itself.
        ours = gauge(daemon, "dropzone_api_calls_today")
        assert ours == daemon.client.calls_today() and ours is not None and ours >= 1
        assert [c["endpoint"] for c in simulator.calls()][-1] == "usage"
        assert gauge(daemon, "dropzone_instance_calls_today") == 900 + ours
        check = quota_check(daemon)
        assert check is not None and f"the instance's {900 + int(ours)} at usage.json" in check.detail

        # The reserve given back (a reload with a larger quota): the waiting files go.
        raised = dataclasses.replace(daemon.config.marketo, daily_quota=2000)
        daemon.dispatch.replace_client(daemon._client(raised), raised)
        run_until(daemon, lambda: all((tmp_path / "outbox" / f"{n}.status.json").exists() for n in leads(3)))
        assert quota_check(daemon) is None
        assert daemon.client.calls_today() > 1  # the count survived the new client

    def test_a_slow_usage_json_holds_new_imports_a_moment_only(self, tmp_path, simulator, quota_daemon, monkeypatch):
        """Marketo answering usage.json slowly (its timeout is a minute) must not hold every import
        for it: after USAGE_FIRST_WAIT_S they go on our own count while the call still runs."""
        monkeypatch.setattr(D, "USAGE_FIRST_WAIT_S", 0.3)
        simulator.inject("slow:3", endpoint="usage")
        daemon = quota_daemon(simulator, quota=1000, reserve=100)
        drop(tmp_path, "leads_00.csv", "email\ns@example.com\n")
        run_until(daemon, lambda: simulator.submissions(), timeout=10.0)
        assert daemon.dispatch.quota.asking  # sent before usage.json answered
        assert [c["endpoint"] for c in simulator.calls()].count("usage") == 0  # still unanswered

    def test_a_603_on_usage_leaves_our_own_count(self, tmp_path, quota_daemon):
        """The API user may not read usage: asked once, told once, never again; no file waits or fails
        for it and the integration is not reported refused; other integrations' calls go unseen."""
        cfg = SimConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, instant=True, usage_denied=True)
        with Simulator(cfg) as sim:
            sim.add_foreign_calls(950)
            daemon = quota_daemon(sim, quota=1000, reserve=100)
            daemon.dispatch.quota.every = daemon.dispatch.quota.retry = 0.05
            names = leads(3)
            with structlog.testing.capture_logs() as logs:
                for i, name in enumerate(names):
                    drop(tmp_path, name, f"email\nd{i}@example.com\n")
                run_until(daemon, lambda: all((tmp_path / "outbox" / f"{n}.status.json").exists() for n in names))
            assert [status_of(tmp_path, n)["status"] for n in names] == ["Complete"] * 3
            assert [c["endpoint"] for c in sim.calls()].count("usage") == 1
            assert [e["event"] for e in logs].count("usage_not_permitted_counting_our_calls_only") == 1
            instance = gauge(daemon, "dropzone_instance_calls_today")
            assert instance is not None and math.isnan(instance)
            assert gauge(daemon, "dropzone_api_calls_today") == daemon.client.calls_today() >= 4
            assert all(c.ok for c in daemon.metrics.readiness())


class TestConfiguration:
    def parse(self, tmp_path: Path, **marketo: object) -> config_module.Config:
        extra = "".join(f"\n  {key}: {value}" for key, value in marketo.items())
        text = f"""
marketo:
  endpoint: http://127.0.0.1:8788
  client_id: x
  client_secret: y{extra}
state_dir: state
inboxes:
  - path: inbox
    outbox: outbox
    routes: [{{match: "*.csv", object: leads}}]
"""
        for name in ("inbox", "outbox"):
            (tmp_path / name).mkdir(exist_ok=True)
        return config_module.parse(text, base_dir=tmp_path, environ={})

    def test_defaults_and_values(self, tmp_path):
        cfg = self.parse(tmp_path)
        assert (cfg.marketo.daily_quota, cfg.marketo.daily_reserve) == (50_000, 10_000)
        cfg = self.parse(tmp_path, daily_quota=10_000, daily_reserve=0)
        assert (cfg.marketo.daily_quota, cfg.marketo.daily_reserve) == (10_000, 0)
        assert cfg.redacted()["marketo"]["daily_reserve"] == 0

    @pytest.mark.parametrize(
        ("keys", "message"),
        [
            ({"daily_quota": 0}, "marketo.daily_quota: must be at least 1"),
            ({"daily_reserve": -1}, "marketo.daily_reserve: must be at least 0"),
            ({"daily_quota": 1000, "daily_reserve": 1000}, "marketo.daily_reserve: must be less than daily_quota"),
            ({"daily_reserve": 50_000}, "must be less than daily_quota (50000)"),
            ({"daily_quota": "lots"}, "marketo.daily_quota: expected an integer"),
        ],
    )
    def test_errors_name_the_key(self, tmp_path, keys, message):
        with pytest.raises(errors.ConfigError) as caught:
            self.parse(tmp_path, **keys)
        assert message in str(caught.value)
