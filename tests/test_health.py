"""Health endpoint and metrics: real HTTP on 127.0.0.1, an injected clock, the Prometheus text parsed back."""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dropzone import health, healthserver
from dropzone.config import MarketoSettings
from dropzone.health import Metrics
from dropzone.healthserver import HealthServer
from dropzone.marketo import MarketoClient
from dropzone.simulator import Simulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics(clock=clock, live_within=60.0, marketo_grace=120.0)


@pytest.fixture
def server(metrics: Metrics) -> Iterator[HealthServer]:
    with HealthServer(metrics, "127.0.0.1", 0) as srv:
        yield srv


def _all_ready(metrics: Metrics) -> None:
    metrics.set_ready_inputs(config_loaded=True, state_writable=True, watchers_alive=True)


def get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def scrape(server: HealthServer) -> dict[str, float]:
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            samples[key] = s.value
    return samples


# ---- /livez -------------------------------------------------------------------


def test_livez_goes_stale_without_ticks(server: HealthServer, metrics: Metrics, clock: FakeClock) -> None:
    assert server.port != 0
    status, ctype, body = get(server.url + "/livez")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"

    clock.now += 61
    status, _, body = get(server.url + "/livez")
    doc = json.loads(body)
    assert status == 503
    assert doc["failed"] == ["loop"]
    assert "61.0 s ago" in doc["checks"]["loop"]["detail"]

    metrics.tick()
    assert get(server.url + "/livez")[0] == 200


# ---- /readyz ------------------------------------------------------------------


def test_readyz_is_not_ready_before_start_up(server: HealthServer) -> None:
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert json.loads(body)["failed"] == ["config", "state", "watchers"]


def test_readyz_ready_when_every_input_is(server: HealthServer, metrics: Metrics) -> None:
    _all_ready(metrics)
    status, _, body = get(server.url + "/readyz")
    doc = json.loads(body)
    assert status == 200, doc
    assert doc["failed"] == []
    assert set(doc["checks"]) == {"loop", "config", "state", "watchers", "marketo"}
    assert doc["checks"]["marketo"]["detail"] == "no call yet"


@pytest.mark.parametrize("name", ["config_loaded", "state_writable", "watchers_alive"])
def test_readyz_fails_on_each_input(server: HealthServer, metrics: Metrics, name: str) -> None:
    _all_ready(metrics)
    metrics.set_ready_inputs(**{name: False})
    status, _, body = get(server.url + "/readyz")
    expected = {"config_loaded": "config", "state_writable": "state", "watchers_alive": "watchers"}[name]
    assert (status, json.loads(body)["failed"]) == (503, [expected])


def test_readyz_fails_when_the_loop_stalls(server: HealthServer, metrics: Metrics, clock: FakeClock) -> None:
    _all_ready(metrics)
    clock.now += 61
    status, _, body = get(server.url + "/readyz")
    assert (status, json.loads(body)["failed"]) == (503, ["loop"])


def test_readyz_marketo_unreachable_past_the_grace(server: HealthServer, metrics: Metrics, clock: FakeClock) -> None:
    _all_ready(metrics)
    metrics.instance("default").api_call("status", "ok")
    clock.now += 500  # idle for a long time: still ready, an idle daemon makes no calls
    metrics.tick()
    assert get(server.url + "/readyz")[0] == 200

    metrics.instance("default").api_call("status", "ConnectionError")
    clock.now += 119
    metrics.tick()
    metrics.instance("default").api_call("status", "HTTP 503")  # a later failure does not restart the grace
    assert get(server.url + "/readyz")[0] == 200

    clock.now += 2
    metrics.tick()
    status, _, body = get(server.url + "/readyz")
    doc = json.loads(body)
    assert (status, doc["failed"]) == (503, ["marketo"])
    assert "failing for 121 s" in doc["checks"]["marketo"]["detail"]
    assert "last answered 621 s ago" in doc["checks"]["marketo"]["detail"]

    metrics.instance("default").api_call("import", "1016")  # "queue full" is an answer: Marketo is there
    assert get(server.url + "/readyz")[0] == 200


def test_readyz_marketo_never_answered(server: HealthServer, metrics: Metrics, clock: FakeClock) -> None:
    _all_ready(metrics)
    metrics.instance("default").api_call("identity", "HTTP 401")
    clock.now += 120
    metrics.tick()
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert "never answered" in json.loads(body)["checks"]["marketo"]["detail"]


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert get(server.url + "/nope")[0] == 404


# ---- /metrics -----------------------------------------------------------------


def test_metrics_report_what_was_fed(server: HealthServer, metrics: Metrics, clock: FakeClock) -> None:
    fresh = scrape(server)
    assert fresh["dropzone_files_total{outcome=Partial}"] == 0
    assert math.isnan(fresh["dropzone_seconds_since_last_successful_poll{instance=default}"])
    assert fresh["dropzone_oldest_waiting_file_age_seconds"] == 0

    metrics.file_finished("Complete", rows_processed=10, rows_failed=0, rows_warned=2)
    metrics.file_finished("Partial", rows_processed=7, rows_failed=3, rows_warned=0)
    metrics.file_finished("Complete", rows_processed=1, rows_failed=0, rows_warned=0)
    metrics.file_split(3)
    metrics.file_split(1)
    metrics.instance("default").api_call("identity", "ok")
    metrics.instance("default").api_call("import", "ok")
    metrics.instance("default").api_call("import", "1016")
    metrics.instance("default").api_call("import", "1016")
    metrics.instance("default").set_batches(open=4, queued=2)
    metrics.set_waiting(5, oldest_since=clock.now - 30)
    metrics.instance("default").poll_succeeded()
    clock.now += 12.5

    got = scrape(server)
    assert got["dropzone_files_total{outcome=Complete}"] == 2
    assert got["dropzone_files_total{outcome=Partial}"] == 1
    assert got["dropzone_files_total{outcome=Rejected}"] == 0
    assert got["dropzone_rows_imported_total"] == 18
    assert got["dropzone_rows_failed_total"] == 3
    assert got["dropzone_rows_warned_total"] == 2
    assert got["dropzone_chunks_split_total"] == 3
    assert got["dropzone_api_calls_total{code=ok,endpoint=identity,instance=default}"] == 1
    assert got["dropzone_api_calls_total{code=ok,endpoint=import,instance=default}"] == 1
    assert got["dropzone_api_calls_total{code=1016,endpoint=import,instance=default}"] == 2
    assert got["dropzone_token_refreshes_total{instance=default}"] == 1
    assert got["dropzone_batches_open{instance=default}"] == 4
    assert got["dropzone_batches_queued{instance=default}"] == 2
    assert got["dropzone_files_waiting"] == 5
    assert got["dropzone_oldest_waiting_file_age_seconds"] == 42.5
    assert got["dropzone_seconds_since_last_successful_poll{instance=default}"] == 12.5
    assert got["dropzone_seconds_since_last_tick"] == 12.5

    metrics.set_waiting(0, oldest_since=None)
    assert scrape(server)["dropzone_oldest_waiting_file_age_seconds"] == 0


def test_every_metric_is_documented(metrics: Metrics) -> None:
    families = list(metrics.registry.collect())
    assert len(families) == 16
    for family in families:
        assert family.name.startswith("dropzone_"), family.name
        assert family.documentation, family.name


def test_a_refused_integration_is_not_ready_until_it_clears(metrics: Metrics) -> None:
    """603 and friends: /readyz says why, the gauge says 1; cleared, both go back."""
    _all_ready(metrics)
    metrics.instance("default").set_misconfigured("603 Access denied: check the API role's permissions")
    [refused] = [c for c in metrics.readiness() if c.name == "marketo_access"]
    assert not refused.ok and "603" in refused.detail
    assert _refused(metrics, "default") == 1
    metrics.instance("default").set_misconfigured(None)
    assert all(c.ok for c in metrics.readiness())
    assert _refused(metrics, "default") == 0


def test_two_daemons_do_not_share_counters(clock: FakeClock) -> None:
    a, b = Metrics(clock=clock), Metrics(clock=clock)
    a.instance("default").api_call("identity", "ok")
    assert a.registry.get_sample_value("dropzone_token_refreshes_total", {"instance": "default"}) == 1
    assert b.registry.get_sample_value("dropzone_token_refreshes_total", {"instance": "default"}) == 0


def test_on_call_counts_a_real_client(simulator: Simulator, metrics: Metrics) -> None:
    client = MarketoClient(
        MarketoSettings(endpoint=simulator.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
        on_call=metrics.instance("default").on_call,
    )
    try:
        client.check_credentials()
    finally:
        client.close()
    r = metrics.registry
    assert r.get_sample_value(
        "dropzone_api_calls_total", {"endpoint": "identity", "code": "ok", "instance": "default"}
    ) == 1
    assert r.get_sample_value("dropzone_token_refreshes_total", {"instance": "default"}) == 1


def _refused(metrics: Metrics, instance: str) -> float | None:
    return metrics.registry.get_sample_value("dropzone_marketo_integration_refused", {"instance": instance})


# ---- several Marketo instances ----------------------------------------------------


MARKETO_METRICS = (  # families, as _series names them
    "dropzone_api_calls",
    "dropzone_token_refreshes",
    "dropzone_batches_open",
    "dropzone_batches_queued",
    "dropzone_marketo_integration_refused",
    "dropzone_seconds_since_last_successful_poll",
    "dropzone_api_calls_today",
    "dropzone_instance_calls_today",
)


def _series(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the registry as /metrics serves it (the text parsed back), by family name
    (a counter's ``_created`` family, separate in this format, named as its counter)."""
    text = generate_latest(metrics.registry).decode()
    return [
        (f.name.removesuffix("_created"), s.labels, s.value)
        for f in text_string_to_metric_families(text) for s in f.samples
    ]


def test_every_marketo_metric_has_an_instance_label_and_file_metrics_do_not(metrics: Metrics) -> None:
    sandbox = metrics.instance("sandbox")
    sandbox.api_call("identity", "ok")
    sandbox.api_call("import", "1016")
    sandbox.poll_succeeded()
    sandbox.set_batches(open=3, queued=1)
    sandbox.set_misconfigured("603 Access denied")
    metrics.instance("default").api_call("status", "ok")
    metrics.file_finished("Complete", rows_processed=1, rows_failed=0, rows_warned=0)

    series = _series(metrics)
    for name in MARKETO_METRICS:
        labelled = [labels for n, labels, _ in series if n == name]
        assert labelled, name
        assert all("instance" in labels for labels in labelled), (name, labelled)
        assert {labels["instance"] for labels in labelled} == {"default", "sandbox"}, name
    for name, labels, _ in series:
        if name not in MARKETO_METRICS:
            assert "instance" not in labels, name

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("dropzone_api_calls_total", endpoint="import", code="1016", instance="sandbox") == 1
    assert value("dropzone_api_calls_total", endpoint="import", code="1016", instance="default") is None
    assert value("dropzone_api_calls_total", endpoint="status", code="ok", instance="default") == 1
    assert value("dropzone_token_refreshes_total", instance="sandbox") == 1
    assert value("dropzone_token_refreshes_total", instance="default") == 0
    assert value("dropzone_batches_open", instance="sandbox") == 3
    assert value("dropzone_batches_queued", instance="sandbox") == 1
    assert value("dropzone_batches_open", instance="default") == 0
    assert _refused(metrics, "sandbox") == 1
    assert _refused(metrics, "default") == 0


def test_instance_is_cached_and_default_is_the_compatibility_methods(metrics: Metrics) -> None:
    assert metrics.instance("sandbox") is metrics.instance("sandbox")
    assert metrics.instance("sandbox").name == "sandbox"
    assert metrics.instance(health.DEFAULT_INSTANCE).name == "default"
    assert metrics.instance_names() == ["default", "sandbox"]
    metrics.instance(health.DEFAULT_INSTANCE).set_misconfigured("bad credentials")
    assert not next(c for c in metrics.readiness() if c.name == "marketo_access").ok


def test_each_instance_has_its_own_readiness_checks(metrics: Metrics, clock: FakeClock) -> None:
    _all_ready(metrics)
    a, b = metrics.instance("agency_a"), metrics.instance("agency_b")
    a.set_misconfigured("603 Access denied")
    b.api_call("import", "ok")
    checks = {c.name: c for c in metrics.readiness()}
    assert [c.name for c in metrics.readiness()] == [
        "loop", "config", "state", "watchers", "marketo",
        "marketo_access:agency_a", "marketo:agency_a", "marketo:agency_b",
    ]
    assert not checks["marketo_access:agency_a"].ok
    refused = checks["marketo_access:agency_a"].detail
    assert refused == "instance agency_a: Marketo refuses this integration: 603 Access denied"
    assert checks["marketo:agency_a"].ok and checks["marketo:agency_a"].detail == "instance agency_a: no call yet"
    assert checks["marketo:agency_b"].ok and checks["marketo:agency_b"].detail.startswith("instance agency_b: ")
    assert checks["marketo"].ok and checks["marketo"].detail == "no call yet"  # the default is untouched
    assert "marketo_access:agency_b" not in checks

    # Failing calls on B past the grace fail B only; A's refusal clears on its own.
    a.set_misconfigured(None)
    b.api_call("status", "ConnectionError")
    clock.now += 121
    metrics.tick()
    failed = [c for c in metrics.readiness() if not c.ok]
    assert [c.name for c in failed] == ["marketo:agency_b"]
    assert failed[0].detail.startswith("instance agency_b: calls failing for 121 s (grace 120 s)")


def test_readyz_names_the_failing_instance(server: HealthServer, metrics: Metrics) -> None:
    _all_ready(metrics)
    metrics.instance("sandbox").set_misconfigured("IP not allowed")
    status, _, body = get(server.url + "/readyz")
    doc = json.loads(body)
    assert (status, doc["failed"]) == (503, ["marketo_access:sandbox"])
    assert doc["checks"]["marketo:sandbox"]["ok"]


def test_forget_instance_removes_its_series_and_checks(metrics: Metrics) -> None:
    _all_ready(metrics)
    sandbox = metrics.instance("sandbox")
    sandbox.api_call("identity", "ok")
    sandbox.api_call("import", "HTTP 503")
    sandbox.poll_succeeded()
    sandbox.set_batches(open=2, queued=5)
    sandbox.set_misconfigured("603 Access denied")
    metrics.instance("default").api_call("import", "ok")
    assert any(labels.get("instance") == "sandbox" for _, labels, _ in _series(metrics))

    metrics.forget_instance("sandbox")
    metrics.forget_instance("never_configured")  # unknown: nothing to do
    series = _series(metrics)
    assert not any(labels.get("instance") == "sandbox" for _, labels, _ in series)
    assert ("dropzone_api_calls", {"endpoint": "import", "code": "ok", "instance": "default"}, 1.0) in series
    assert not any(c.name.endswith(":sandbox") for c in metrics.readiness())
    assert all(c.ok for c in metrics.readiness())  # its refusal went with it
    assert metrics.instance_names() == ["default"]

    # A late call from the removed instance's client brings nothing back.
    sandbox.api_call("status", "ok")
    sandbox.set_batches(open=1, queued=1)
    sandbox.set_misconfigured("late")
    sandbox.poll_succeeded()
    assert not any(labels.get("instance") == "sandbox" for _, labels, _ in _series(metrics))
    assert metrics.instance_names() == ["default"]

    # Configured again (a reload): a fresh start, at 0.
    again = metrics.instance("sandbox")
    assert again is not sandbox
    assert metrics.registry.get_sample_value("dropzone_token_refreshes_total", {"instance": "sandbox"}) == 0
    assert metrics.registry.get_sample_value(
        "dropzone_api_calls_total", {"endpoint": "identity", "code": "ok", "instance": "sandbox"}
    ) is None
    assert {c.name: c.detail for c in metrics.readiness()}["marketo:sandbox"] == "instance sandbox: no call yet"


def test_seconds_since_last_successful_poll_is_per_instance(
    server: HealthServer, metrics: Metrics, clock: FakeClock
) -> None:
    metrics.instance("default").poll_succeeded()
    clock.now += 10
    metrics.instance("sandbox").poll_succeeded()
    metrics.instance("idle")
    clock.now += 5
    got = scrape(server)
    assert got["dropzone_seconds_since_last_successful_poll{instance=default}"] == 15
    assert got["dropzone_seconds_since_last_successful_poll{instance=sandbox}"] == 5
    assert math.isnan(got["dropzone_seconds_since_last_successful_poll{instance=idle}"])
    clock.now += 1  # computed at scrape time: it grows while nothing polls
    assert scrape(server)["dropzone_seconds_since_last_successful_poll{instance=sandbox}"] == 6
    metrics.forget_instance("idle")
    assert "dropzone_seconds_since_last_successful_poll{instance=idle}" not in scrape(server)


# ---- probe_writable -------------------------------------------------------------


def test_probe_writable(tmp_path: Path) -> None:
    assert health.probe_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe cleans up
    assert not health.probe_writable(tmp_path / "missing")
    if os.geteuid() != 0:  # root writes through mode bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert not health.probe_writable(ro)


# ---- dropzone health (check) ------------------------------------------------------


def test_check_ok(server: HealthServer, metrics: Metrics) -> None:
    _all_ready(metrics)
    assert healthserver.check(server.url, timeout=5) == (0, "livez: ok\nreadyz: ok")


def test_check_names_what_failed(server: HealthServer, metrics: Metrics) -> None:
    _all_ready(metrics)
    metrics.set_ready_inputs(watchers_alive=False)
    code, message = healthserver.check(server.url + "/", timeout=5)
    assert code == 1
    assert message.splitlines()[0] == "livez: ok"
    assert message.splitlines()[1].startswith("readyz: HTTP 503; watchers: an inbox watcher is dead")


def test_check_when_nothing_listens(metrics: Metrics) -> None:
    with HealthServer(metrics, "127.0.0.1", 0) as srv:
        url = srv.url
    code, message = healthserver.check(url, timeout=2)
    assert code == 1
    assert message.startswith(f"livez: cannot reach {url}/livez")


def test_check_ignores_proxy_settings(
    server: HealthServer, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    _all_ready(metrics)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: nothing answers there
    assert healthserver.check(server.url, timeout=5)[0] == 0


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 9108, "http://127.0.0.1:9108"),
        ("0.0.0.0", 9108, "http://127.0.0.1:9108"),
        ("::", 9108, "http://[::1]:9108"),
        ("::1", 80, "http://[::1]:80"),
        ("metrics.internal", 9108, "http://metrics.internal:9108"),
    ],
)
def test_base_url(host: str, port: int, url: str) -> None:
    assert healthserver.base_url(host, port) == url
