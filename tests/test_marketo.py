"""The Marketo client, over real HTTP on 127.0.0.1.

The normal paths run against the simulator. What Marketo (or whatever stands
in front of it) may do that the simulator does not do yet runs against
``FakeMarketo``, a scripted server in this file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import io
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import structlog

from dropzone import defaults as D
from dropzone import errors, logs, transport
from dropzone.config import MarketoSettings
from dropzone.kinds import FileFormat, ObjectKind
from dropzone.marketo import BatchStatus, CallRecord, MarketoClient, ReplyLimits, make_session
from dropzone.simulator import Fault
from dropzone.targets import ImportTarget
from tests.conftest import CLIENT_ID, CLIENT_SECRET, wait_until

LEADS = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email")
CARS = ImportTarget(kind=ObjectKind.CUSTOM_OBJECT, api_name="car_c")
MEMBERS = ImportTarget(kind=ObjectKind.PROGRAM_MEMBER, program_id=1044, program_member_status="On List")
CSV, TSV, SSV = FileFormat.CSV, FileFormat.TSV, FileFormat.SSV


class FakeTime:
    """A monotonic clock that only moves when the client sleeps: backoff costs no wall time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def calls() -> list[CallRecord]:
    return []


def settings_for(endpoint: str, **overrides: Any) -> MarketoSettings:
    base = MarketoSettings(
        endpoint=endpoint, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, connect_timeout=2.0, read_timeout=5.0
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def make_client(simulator, fake_time, calls):
    made: list[MarketoClient] = []

    def make(**overrides) -> MarketoClient:
        client = MarketoClient(
            settings_for(simulator.base_url, **overrides), sleep=fake_time.sleep, clock=fake_time.clock,
            on_call=calls.append,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client) -> MarketoClient:
    return make_client()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def finished(client: MarketoClient, target: ImportTarget, batch_id: int) -> BatchStatus:
    return wait_until(lambda: (s := client.status(target, batch_id)).is_finished and s)  # type: ignore[return-value]


LEADS_CSV = "email,firstName,lastName\nann@example.com,Ann,Lee\nbob@example.com,Bob,\"Ray, Jr.\"\n"


# ---- a scripted Marketo -----------------------------------------------------------

TOKEN = "0c7d0b4e-1111-4222-8333-944455556666:ab"
Step = Callable[["_Handler"], None]


def reply(
    status: int = 200,
    body: bytes | str | dict[str, Any] | list[Any] = b"",
    *,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
    length: bool = True,
) -> Step:
    """An answer; ``length=False`` leaves Content-Length out (the body ends when the connection does)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body

    def step(h: _Handler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        if length:
            h.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)

    return step


def trickle(body: bytes, every: float, *, headers_too: bool = False) -> Step:
    """One byte every ``every`` seconds: of the body, or of the whole reply from its status line on."""

    def step(h: _Handler) -> None:
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        data = head + body if headers_too else body
        if not headers_too:
            h.wfile.write(head)
        for i in range(len(data)):
            if h.server.stop.wait(every):
                return
            try:
                h.wfile.write(data[i : i + 1])
            except OSError:
                return  # the client gave up: that is the point

    return step


def ok_batch(batch_id: int = 7, status: str = "Queued", **extra: Any) -> Step:
    result = [{"batchId": batch_id, "status": status, **extra}]
    return reply(body={"requestId": "a#b", "success": True, "result": result})


def marketo_error(code: str, message: str = "") -> Step:
    return reply(body={"requestId": "a#b", "success": False, "errors": [{"code": code, "message": message}]})


HTML = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"


class FakeMarketo(ThreadingHTTPServer):
    """Marketo as badly as a test needs: each endpoint answers its scripted steps in order, the last one for ever."""

    daemon_threads = False  # server_close joins the handlers

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._script: dict[str, list[Step]] = {
            "identity": [
                reply(body={"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600, "scope": "a@b"})
            ]
        }
        self.requests: list[dict[str, Any]] = []
        self.stall_uploads = False
        #: Called (on the handler's thread) when an upload arrives that ``stall_uploads`` will never read.
        self.on_stall: Callable[[], None] | None = None
        #: Seconds an upload waits, unread, before it is read and answered.
        self.hold_uploads = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, endpoint: str, *steps: Step) -> None:
        with self._lock:
            self._script[endpoint] = list(steps)

    def next_step(self, endpoint: str) -> Step:
        with self._lock:
            steps = self._script.get(endpoint) or [reply(500, "not scripted", content_type="text/plain")]
            return steps.pop(0) if len(steps) > 1 else steps[0]

    def hits(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["endpoint"] == endpoint)


class _Handler(BaseHTTPRequestHandler):
    server: FakeMarketo

    def do_GET(self) -> None:
        if self.command == "POST" and self.server.stall_uploads:
            if self.server.on_stall is not None:
                self.server.on_stall()
            self.server.stop.wait(30)  # never read the upload: the client's sends block
            return
        if self.command == "POST" and self.server.hold_uploads:
            self.server.stop.wait(self.server.hold_uploads)  # the client's sends block meanwhile
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""  # read the upload whole before answering
        path = urlsplit(self.path).path
        if path.startswith("/identity/"):
            endpoint = "identity"
        elif self.command == "POST":
            endpoint = "import"
        elif path.endswith(("/failures.json", "/warnings.json")):
            endpoint = path.rsplit("/", 1)[-1].removesuffix(".json")
        else:
            endpoint = "status"
        with self.server._lock:
            self.server.requests.append(
                {"endpoint": endpoint, "method": self.command, "path": self.path, "headers": dict(self.headers),
                 "body": body}
            )
        self.server.next_step(endpoint)(self)
        self.close_connection = True

    do_POST = do_GET  # noqa: N815 - http.server's spelling

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeMarketo]:
    server = FakeMarketo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake_client(fake, fake_time, calls):
    made: list[MarketoClient] = []

    def make(
        *, limits: ReplyLimits | None = None, tick: Callable[[], None] = transport.no_tick, **overrides: Any
    ) -> MarketoClient:
        overrides.setdefault("max_retry_seconds", 30.0)
        client = MarketoClient(
            settings_for(fake.url, **overrides), sleep=fake_time.sleep, clock=fake_time.clock, on_call=calls.append,
            limits=limits or ReplyLimits(), tick=tick,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class Hooks:
    """The journal hooks of a submit, as a list of what happened."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def kwargs(self) -> dict[str, Callable[[], None]]:
        return {
            "before_send": lambda: self.events.append("send"),
            "not_executed": lambda: self.events.append("not executed"),
        }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the normal paths, against the simulator ----------------------------------------


class TestSubmitAndPoll:
    def test_leads_with_all_parameters(self, simulator, client, tmp_path):
        """A leads file with lookupField, listId and partitionName reaches Marketo whole, with its parameters."""
        target = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email", list_id=1234, partition_name="EMEA")
        submitted = client.submit(target, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        assert submitted.status in ("Queued", "Importing")
        done = finished(client, target, submitted.batch_id)
        assert (done.status, done.processed, done.failed, done.warned) == ("Complete", 2, 0, 0)
        [job] = simulator.submissions()
        assert job["kind"] == "leads"
        assert job["params"]["lookupField"] == "email"
        assert str(job["params"]["listId"]) == "1234"
        assert job["params"]["partitionName"] == "EMEA"
        assert job["params"]["format"] == "csv"
        rows = [r["row"] for r in simulator.imported_rows()]
        assert rows == [
            {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"},
            {"email": "bob@example.com", "firstName": "Bob", "lastName": "Ray, Jr."},
        ]

    def test_custom_objects_report_objects_processed(self, simulator, client, tmp_path):
        """Custom-object status uses numOfObjectsProcessed, which the client reads as processed."""
        text = "color\tmake\tmodel\tvin\nred\tbmw\t2002\tWBA4R7C55HK895912\n"
        submitted = client.submit(CARS, write(tmp_path, "cars.tsv", text), fmt=TSV)
        done = finished(client, CARS, submitted.batch_id)
        assert (done.status, done.processed, done.failed) == ("Complete", 1, 0)
        assert simulator.submissions()[0]["params"]["format"] == "tsv"

    def test_custom_object_header_with_a_space_fails_every_row(self, client, tmp_path):
        """The seeds' ' vin' example: the failure file echoes the header verbatim with the reason column."""
        text = (
            "color,make,model, vin\n"
            "red,bmw,2002,WBA4R7C55HK895912\n"
            "yellow,bmw,320i,WBA4R7C30HK896061\n"
            "blue,bmw,325i,WBS3U9C52HP970604\n"
        )
        submitted = client.submit(CARS, write(tmp_path, "cars.csv", text), fmt=CSV)
        done = finished(client, CARS, submitted.batch_id)
        assert (done.processed, done.failed) == (0, 3)
        body = client.failures(CARS, submitted.batch_id)
        assert body is not None
        lines = body.decode("utf-8").splitlines()
        assert lines[0] == "color,make,model, vin,Import Failure Reason"
        assert lines[1] == "red,bmw,2002,WBA4R7C55HK895912,missing.dedupe.fields"
        assert len(lines) == 4
        assert client.warnings(CARS, submitted.batch_id) is None

    def test_program_members_status_with_a_space_and_a_warning(self, simulator, client, tmp_path):
        """programMemberStatus is URL-encoded; an invalid email warns and the row is still imported."""
        text = "email;firstName\nann@example.com;Ann\nnot-an-email;Bob\n"
        submitted = client.submit(MEMBERS, write(tmp_path, "members.ssv", text), fmt=SSV)
        done = finished(client, MEMBERS, submitted.batch_id)
        assert (done.status, done.processed, done.failed, done.warned) == ("Complete", 2, 0, 1)
        assert simulator.submissions()[0]["params"]["programMemberStatus"] == "On List"
        warnings = client.warnings(MEMBERS, submitted.batch_id)
        assert warnings is not None
        assert warnings.decode("utf-8").splitlines() == [
            "email;firstName;Import Warning Reason",
            "not-an-email;Bob;Invalid email address",
        ]
        assert client.failures(MEMBERS, submitted.batch_id) is None

    def test_lead_with_empty_lookup_value_fails(self, client, tmp_path):
        """Marketo's own failure text names the lookup field."""
        text = "firstName,lastName,email\nBenji,Nordstrom,\nAnn,Lee,ann@example.com\n"
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", text), fmt=CSV)
        done = finished(client, LEADS, submitted.batch_id)
        assert (done.processed, done.failed) == (1, 1)
        body = client.failures(LEADS, submitted.batch_id)
        assert body is not None
        assert "Value for lookup field 'email' not found" in body.decode("utf-8")

    def test_failures_is_none_when_there_are_none(self, client, tmp_path):
        """A 404 on failures.json means no failure rows, not an error (documented for custom objects)."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        finished(client, LEADS, submitted.batch_id)
        assert client.failures(LEADS, submitted.batch_id) is None

    def test_empty_200_on_failures_also_means_none(self, sim_config, tmp_path, fake_time):
        """Some clients' Marketo answered 200 with an empty body instead of 404."""
        from dropzone.simulator import Simulator

        with Simulator(dataclasses.replace(sim_config, failures_404=False)) as sim:
            client = MarketoClient(settings_for(sim.base_url), sleep=fake_time.sleep, clock=fake_time.clock)
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
            finished(client, LEADS, submitted.batch_id)
            assert client.failures(LEADS, submitted.batch_id) is None
            client.close()

    def test_the_file_is_streamed_from_disk_not_loaded(self, client, tmp_path):
        """A 5 MB upload goes through the streaming encoder intact (rows counted by the simulator)."""
        rows = 60_000
        text = "email,firstName\n" + "".join(f"u{i}@example.com,N{i}\n" for i in range(rows))
        path = write(tmp_path, "big.csv", text)
        assert path.stat().st_size > 1_000_000
        submitted = client.submit(LEADS, path, fmt=CSV)
        done = finished(client, LEADS, submitted.batch_id)
        assert done.processed == rows

    def test_format_must_be_a_file_format(self, client, tmp_path):
        """The vocabulary is FileFormat: a bare string is a caller's bug, refused before anything is sent."""
        with pytest.raises(TypeError):
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")  # type: ignore[arg-type]

    def test_unknown_batch_is_batch_not_found(self, client):
        """Marketo's own 'no such batch' answer (1003) is the one thing that ends a batch."""
        with pytest.raises(errors.BatchNotFoundError) as caught:
            client.status(LEADS, 424242)
        assert caught.value.code == "1003"
        assert isinstance(caught.value, errors.RejectedError)


class TestTokens:
    def test_token_goes_only_in_the_bearer_header(self, simulator, client, tmp_path):
        """No call carries access_token in the query string or a form field."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        client.status(LEADS, submitted.batch_id)
        api_calls = [c for c in simulator.calls() if not c["path"].startswith("/identity")]
        assert api_calls
        assert {c["auth"] for c in api_calls} == {"bearer"}

    def test_the_token_is_cached(self, simulator, client, tmp_path):
        """Ten calls cost one Identity call."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        for _ in range(9):
            client.status(LEADS, submitted.batch_id)
        assert len([c for c in simulator.calls() if c["path"].startswith("/identity")]) == 1

    def test_the_token_is_renewed_a_minute_before_an_upload(self, simulator, client, tmp_path, fake_time):
        """With 59 s left a status call still uses the token; an upload (which may take that long) asks again."""
        path = write(tmp_path, "leads.csv", LEADS_CSV)
        submitted = client.submit(LEADS, path, fmt=CSV)

        def identity_calls() -> int:
            return len([c for c in simulator.calls() if c["path"].startswith("/identity")])

        expires_at = client._token_expires_at
        fake_time.now = expires_at - 61
        client.submit(LEADS, path, fmt=CSV)
        assert identity_calls() == 1
        fake_time.now = expires_at - 59
        client.status(LEADS, submitted.batch_id)
        assert identity_calls() == 1
        client.submit(LEADS, path, fmt=CSV)
        assert identity_calls() == 2

    def test_expired_token_602_then_refresh(self, simulator, client, tmp_path, calls):
        """A token that expires server-side gets 602; the client re-authenticates and the call succeeds."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.expire_token()
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id
        outcomes = [c.outcome for c in calls if c.endpoint == "status"]
        assert outcomes == ["602", "ok"]
        assert client.token_refreshes == 2

    def test_invalid_token_601_then_refresh(self, simulator, client, tmp_path, calls):
        """601 (token invalid) is handled like 602: a new token, the same call again."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject("601", endpoint="status")
        client.status(LEADS, submitted.batch_id)
        assert [c.outcome for c in calls if c.endpoint == "status"] == ["601", "ok"]

    def test_602_then_601_sequence_from_a_stale_token(self, simulator):
        """The simulator's documented sequence, seen by a raw client: 602 on first use after expiry, then 601."""
        identity = requests.get(
            simulator.identity_url + "/oauth/token",
            params={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            timeout=5,
        ).json()
        simulator.expire_token()
        headers = {"Authorization": f"Bearer {identity['access_token']}"}
        codes = [
            requests.get(simulator.base_url + "/bulk/v1/leads/batch/1.json", headers=headers, timeout=5).json()[
                "errors"
            ][0]["code"]
            for _ in range(2)
        ]
        assert codes == ["602", "601"]

    def test_expires_in_zero_is_waited_out(self, sim_config, tmp_path):
        """Identity answering expires_in 0 makes the client wait for the token to die, not loop on Identity."""
        from dropzone.simulator import Simulator

        real_sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            # The token really has to expire on the simulator's (real) clock.
            real_sleeps.append(seconds)
            time.sleep(min(seconds, 2.0))

        with Simulator(dataclasses.replace(sim_config, zero_expires_in=True)) as sim:
            client = MarketoClient(settings_for(sim.base_url), sleep=sleep)
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
            assert submitted.batch_id
            identity_calls = [c for c in sim.calls() if c["path"].startswith("/identity")]
            assert 1 < len(identity_calls) <= 7
            assert real_sleeps and all(s >= 0.5 for s in real_sleeps)
            client.close()

    def test_bad_credentials_are_misconfiguration_naming_the_client_not_the_secret(self, simulator, fake_time):
        """HTTP 401 invalid_client: AuthError, a MisconfiguredError (pause, do not fail files); never the secret."""
        wrong = "wrong-secret-value"
        client = MarketoClient(
            settings_for(simulator.base_url, client_secret=wrong), sleep=fake_time.sleep, clock=fake_time.clock
        )
        with pytest.raises(errors.AuthError) as caught:
            client.check_credentials()
        assert isinstance(caught.value, errors.MisconfiguredError)
        assert not isinstance(caught.value, errors.RejectedError)
        assert CLIENT_ID in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in repr(caught.value)
        assert caught.value.__cause__ is None and caught.value.__context__ is None
        assert wrong not in repr(client) and wrong not in repr(client.settings)
        client.close()

    def test_no_secret_or_token_in_logs_or_errors(self, simulator, make_client, tmp_path):
        """Across calls, retries and errors, neither the secret nor the token appears in any log event or message."""
        client = make_client()
        simulator.inject("http503", endpoint="status")
        simulator.inject("1003", endpoint="import")
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(errors.RejectedError) as caught:
                client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
            client.status(LEADS, submitted.batch_id)
        token = client._token
        assert token
        blob = repr(logs) + str(caught.value) + repr(caught.value)
        assert CLIENT_SECRET not in blob
        assert token not in blob


class TestRetries:
    @pytest.mark.parametrize("code", ["502", "604", "608", "611", "614", "615", "713", "719", "http500", "http503"])
    def test_transient_errors_on_status_are_retried(self, simulator, client, tmp_path, code):
        """A GET can be repeated: each transient answer is retried with backoff and the call then succeeds."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject(code, times=2, endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id
        status_calls = [c for c in simulator.calls() if "/batch/" in c["path"]]
        assert len(status_calls) == 3, "two faults, then the answer"

    @pytest.mark.parametrize("code", ["604", "608", "611", "614", "615", "606"])
    def test_not_executed_answers_to_a_submit_are_sent_again(self, simulator, client, tmp_path, code):
        """6xx: 'the entire request failed and was not executed', so the import is sent again, once."""
        simulator.inject(code, times=1, endpoint="import")
        hooks = Hooks()
        client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert len(simulator.submissions()) == 1
        assert hooks.events == ["send", "not executed", "send"]

    @pytest.mark.parametrize(
        ("code", "reason"),
        [
            ("502", "Marketo error 502"),
            ("713", "Marketo error 713"),
            ("719", "Marketo error 719"),
            ("http500", "HTTP 500"),
            ("http502", "HTTP 502"),
            ("http503", "HTTP 503"),
            ("http504", "HTTP 504"),
        ],
    )
    def test_ambiguous_answers_to_a_submit_are_outcome_unknown(self, simulator, client, tmp_path, calls, code, reason):
        """Not a 6xx: the job may exist. Sent once, never again from the client, the intent left in place."""
        simulator.inject(code, times=5, endpoint="import")
        hooks = Hooks()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert caught.value.reason == reason
        assert len([c for c in calls if c.endpoint == "import"]) == 1
        assert hooks.events == ["send"]

    def test_606_waits_out_the_whole_window(self, simulator, client, tmp_path, fake_time):
        """Max rate limit: the client holds back for at least the 20 s window before trying again."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject("606", endpoint="status")
        fake_time.sleeps.clear()
        client.status(LEADS, submitted.batch_id)
        assert sum(fake_time.sleeps) >= 20.0

    def test_retries_stop_at_the_deadline(self, simulator, make_client):
        """A fault that never clears surfaces as TransientError once max_retry_seconds is spent."""
        client = make_client(max_retry_seconds=30.0)
        simulator.inject("608", times=1000, endpoint="status")
        with pytest.raises(errors.TransientError) as caught:
            client.status(LEADS, 1)
        assert caught.value.code == "608"
        assert "608" in str(caught.value)

    def test_lost_reply_to_a_submit_is_outcome_unknown(self, simulator, client, tmp_path):
        """The connection drops after Marketo created the job: never resent, reported as outcome unknown."""
        simulator.inject("reset", endpoint="import")
        hooks = Hooks()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert caught.value.reason == "connection lost after sending"
        assert len(simulator.submissions()) == 1
        assert hooks.events == ["send"]

    def test_lost_reply_to_a_get_is_retried(self, simulator, client, tmp_path):
        """GETs are idempotent, so a reset is just retried."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject("reset", endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id

    def test_read_timeout_on_submit_is_outcome_unknown(self, simulator, make_client, tmp_path):
        """A submit that times out reading the reply may have created a job."""
        client = make_client(read_timeout=0.3)
        simulator.inject("slow:1.5", endpoint="import")
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.reason == "read timed out"

    def test_read_timeout_on_a_get_is_retried(self, simulator, make_client, tmp_path):
        """A slow status answer times out and the next attempt succeeds."""
        client = make_client(read_timeout=0.3)
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject("slow:1.5", endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id

    def test_nothing_listening_is_transient_not_unknown(self, fake_time):
        """Connection refused means nothing was sent: a plain TransientError."""
        client = MarketoClient(
            settings_for(f"http://127.0.0.1:{closed_port()}", max_retry_seconds=1.0),
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )
        with pytest.raises(errors.TransientError) as caught:
            client.check_credentials()
        assert CLIENT_SECRET not in str(caught.value)
        assert caught.value.__context__ is None
        client.close()



class TestClassification:
    def test_queue_full_1016(self, simulator, client, tmp_path):
        """Other integrations' jobs fill the 10 slots: 1016 is its own 'try later' class."""
        simulator.add_background_jobs(10)
        with pytest.raises(errors.QueueFullError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.code == "1016"
        assert isinstance(caught.value, errors.TryLaterError)

    def test_list_busy_1019(self, simulator, client, tmp_path):
        simulator.inject("1019", endpoint="import")
        with pytest.raises(errors.ListBusyError):
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)

    def test_daily_quota_607_says_when_to_resume(self, simulator, client, tmp_path):
        """607 is not retried: the quota comes back at midnight US Central."""
        simulator.inject("607", endpoint="import")
        with pytest.raises(errors.QuotaExceededError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        now = dt.datetime.now(dt.UTC)
        assert now < caught.value.resume_at <= now + dt.timedelta(hours=25)

    @pytest.mark.parametrize("code", ["609", "612", "613", "1003", "1006", "http413"])
    def test_refusals_of_the_request_are_rejected_without_retry(self, simulator, client, tmp_path, code, calls):
        """Retrying a request Marketo refused cannot help: one attempt, RejectedError with the code."""
        simulator.inject(code, endpoint="import")
        with pytest.raises(errors.RejectedError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        assert len([c for c in calls if c.endpoint == "import"]) == 1
        assert caught.value.code == ("HTTP 413" if code == "http413" else code)

    @pytest.mark.parametrize(
        ("code", "advice"),
        [("603", "Read-Write Lead"), ("603", "IP Restrictions"), ("610", "marketo.endpoint"), ("1026", "apiName")],
    )
    def test_configuration_errors_are_misconfigured_not_rejected(self, simulator, client, tmp_path, code, advice):
        """603 (role or IP allow-list), 610, 1026 say the integration is wrong, not the file: pause, never fail it."""
        simulator.inject(code, endpoint="import")
        hooks = Hooks()
        with pytest.raises(errors.MisconfiguredError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert not isinstance(caught.value, errors.RejectedError)
        assert (caught.value.code, caught.value.scope) == (code, "instance")
        assert advice in str(caught.value)
        assert hooks.events == ["send", "not executed"]

    @pytest.mark.parametrize("code", ["1008", "1009", "1013", "1025"])
    def test_route_parameter_errors_are_misconfigured_for_the_route(self, simulator, client, tmp_path, code):
        """Partition, list, program or status that Marketo does not accept: the route's configuration."""
        simulator.inject(code, endpoint="import")
        with pytest.raises(errors.MisconfiguredError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.scope == "route"

    def test_603_on_a_poll_is_misconfigured_too(self, simulator, client, tmp_path):
        """A role changed mid-flight: the poll pauses, the batch is not ended."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        simulator.inject("603", endpoint="status")
        with pytest.raises(errors.MisconfiguredError):
            client.status(LEADS, submitted.batch_id)

    def test_real_413_for_a_file_over_the_limit(self, sim_config, fake_time, tmp_path):
        """The simulator's size limit produces a real HTTP 413, reported as RejectedError."""
        from dropzone.simulator import Simulator

        with Simulator(dataclasses.replace(sim_config, max_file_bytes=1000)) as sim:
            client = MarketoClient(settings_for(sim.base_url), sleep=fake_time.sleep, clock=fake_time.clock)
            text = "email\n" + "".join(f"user{i}@example.com\n" for i in range(100))
            with pytest.raises(errors.RejectedError) as caught:
                client.submit(LEADS, write(tmp_path, "big.csv", text), fmt=CSV)
            assert caught.value.code == "HTTP 413"
            assert sim.submissions() == []
            client.close()


class TestLimiter:
    def test_calls_per_window_are_respected(self, simulator, make_client, tmp_path, fake_time):
        """With 5 calls per 20 s, 16 calls spread over at least 60 s of the client's clock."""
        client = make_client(calls_per_20s=5)
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt=CSV)
        start = fake_time.now
        for _ in range(15):
            client.status(LEADS, submitted.batch_id)
        assert fake_time.now - start >= 60.0
        assert len([c for c in simulator.calls() if c["code"] == "606"]) == 0


class TestSimulatorFaults:
    """The misbehaviours the simulator plays, seen through the client."""

    @pytest.mark.parametrize(("reply_kind", "reason"), [
        ("502", "HTTP 502"), ("503", "HTTP 503"), ("504", "HTTP 504"),
        ("not_json", "reply not JSON"), ("truncated", "reply not JSON"),
    ])
    def test_created_then_a_bad_reply_is_outcome_unknown(self, simulator, client, tmp_path, calls, reply_kind, reason):
        """The job exists; the client says it does not know, and does not send a second copy."""
        simulator.arm(Fault("create_then", reply=reply_kind))
        hooks = Hooks()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert caught.value.reason == reason
        assert len(simulator.submissions()) == 1
        assert len([c for c in calls if c.endpoint == "import"]) == 1
        assert hooks.events == ["send"]

    def test_429_pages_on_polls_are_waited_out(self, simulator, client, tmp_path, fake_time):
        submitted = client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        simulator.arm(Fault("http429", endpoint="status", times=2, retry_after=9))
        fake_time.sleeps.clear()
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id
        assert len(fake_time.sleeps) == 2 and min(fake_time.sleeps) >= 9.0

    @pytest.mark.parametrize("flavour", ["access_denied", "ip_allowlist", "permission"])
    def test_603_refusals_are_misconfigured(self, simulator, client, tmp_path, flavour):
        simulator.arm(Fault("refuse", endpoint="import", times=1, flavour=flavour))
        with pytest.raises(errors.MisconfiguredError) as caught:
            client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.code == "603"
        assert simulator.submissions() == []

    @pytest.mark.parametrize("shape", ["failed_string", "errors_dict"])
    def test_malformed_status_is_transient(self, simulator, make_client, tmp_path, shape):
        client = make_client(max_retry_seconds=0.0)
        submitted = client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        simulator.arm(Fault("malformed_status", shape=shape))
        with pytest.raises(errors.TransientError):
            client.status(LEADS, submitted.batch_id)
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id

    def test_a_null_counter_is_unknown(self, simulator, client, tmp_path):
        """null is 'not given', like a missing key: None, never 0."""
        submitted = client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        finished(client, LEADS, submitted.batch_id)
        simulator.arm(Fault("malformed_status", shape="processed_null"))
        assert client.status(LEADS, submitted.batch_id).processed is None

    def test_bare_program_member_status(self, simulator, client, tmp_path):
        submitted = client.submit(MEMBERS, write(tmp_path, "m.csv", "email\nann@example.com\n"), fmt=CSV)
        finished(client, MEMBERS, submitted.batch_id)
        simulator.arm(Fault("bare_status"))
        status = client.status(MEMBERS, submitted.batch_id)
        assert (status.status, status.processed, status.failed, status.warned) == ("Complete", None, None, None)

    def test_trickle_ends_at_the_deadline(self, simulator, sim_config, fake_time, tmp_path):
        client = MarketoClient(settings_for(simulator.base_url, max_retry_seconds=0.0), sleep=fake_time.sleep,
                               clock=fake_time.clock, limits=ReplyLimits(call_deadline=1.0))
        submitted = client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        simulator.arm(Fault("trickle", endpoint="status", bytes_per_second=5.0))
        started = time.monotonic()
        with pytest.raises(errors.TransientError, match="deadline passed"):
            client.status(LEADS, submitted.batch_id)
        assert time.monotonic() - started < 2.5
        client.close()

    def test_oversize_is_refused(self, simulator, make_client, tmp_path):
        client = make_client(max_retry_seconds=0.0)
        submitted = client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        simulator.arm(Fault("oversize", endpoint="status"))
        with pytest.raises(errors.TransientError, match="reply too large"):
            client.status(LEADS, submitted.batch_id)


# ---- what the simulator does not do (yet): a scripted Marketo ------------------------


class TestUntrustedSubmits:
    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_a_5xx_is_outcome_unknown_and_sent_once(self, fake, fake_client, tmp_path, status):
        """A gateway 5xx may come after Marketo created the job: neither the client nor urllib3 sends it again."""
        fake.answer("import", reply(status, HTML, content_type="text/html", headers=(("Retry-After", "0"),)))
        hooks = Hooks()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            fake_client().submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert caught.value.reason == f"HTTP {status}"
        assert fake.hits("import") == 1
        assert hooks.events == ["send"]

    @pytest.mark.parametrize(
        ("step", "reason"),
        [
            (reply(200, HTML, content_type="text/html"), "reply not JSON"),
            (reply(200, b"\xff\xfe{", content_type="application/json"), "reply not JSON"),
            (reply(200, {"success": True, "result": []}), "no batchId in reply"),
            (reply(200, {"success": True, "result": [{"status": "Queued"}]}), "no batchId in reply"),
            (reply(200, {"success": True, "result": [{"batchId": "abc", "status": "Queued"}]}), "no batchId in reply"),
            (reply(200, {"success": True, "result": {"batchId": 7}}), "no batchId in reply"),
            (reply(200, {"success": False, "errors": {"code": "1016"}}), "reply malformed"),
            (reply(200, {"success": "yes"}), "reply malformed"),
            (reply(200, [1, 2]), "reply malformed"),
        ],
    )
    def test_a_reply_without_a_usable_batch_is_outcome_unknown(self, fake, fake_client, tmp_path, step, reason):
        """A 200 that is not JSON, or has no batchId, may still be a created job."""
        fake.answer("import", step)
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            fake_client().submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.reason == reason
        assert fake.hits("import") == 1

    def test_a_refused_connection_is_not_executed(self, fake, fake_time, tmp_path):
        """Nothing was sent: retried, each attempt's intent cleared, and never reported as outcome unknown."""
        settings = settings_for(f"http://127.0.0.1:{closed_port()}", identity=fake.url + "/identity",
                                max_retry_seconds=5.0)
        client = MarketoClient(settings, sleep=fake_time.sleep, clock=fake_time.clock)
        hooks = Hooks()
        with pytest.raises(errors.TransientError) as caught:
            client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert not isinstance(caught.value, errors.OutcomeUnknownError)
        assert len(hooks.events) >= 4
        assert hooks.events == ["send", "not executed"] * (len(hooks.events) // 2)
        client.close()

    def test_a_429_is_throttled_and_sent_again_after_retry_after(self, fake, fake_client, fake_time, tmp_path):
        """A rate limiter refused it before it ran: wait what it asks, send again."""
        fake.answer("import", reply(429, HTML, content_type="text/html", headers=(("Retry-After", "7"),)), ok_batch(9))
        hooks = Hooks()
        batch = fake_client().submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV, **hooks.kwargs())
        assert batch.batch_id == 9
        assert hooks.events == ["send", "not executed", "send"]
        assert max(fake_time.sleeps) >= 7.0

    def test_a_404_before_marketo_is_misconfigured(self, fake, fake_client, tmp_path):
        """An HTML 404 on the import path: the endpoint is wrong (Marketo answers 610 in JSON)."""
        fake.answer("import", reply(404, HTML, content_type="text/html"))
        with pytest.raises(errors.MisconfiguredError, match=r"marketo\.endpoint"):
            fake_client().submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)

    def test_the_session_never_resends(self):
        """urllib3 may not retry anything: no count is left, and POST is not a method it may repeat."""
        session = make_session(settings_for("http://127.0.0.1:1"))
        retries = session.get_adapter("http://127.0.0.1:1").max_retries
        assert (retries.total, retries.connect, retries.read, retries.status) == (0, 0, False, 0)
        assert "POST" not in retries.allowed_methods
        assert not retries.is_retry("POST", 503, has_retry_after=True)
        assert not retries.is_retry("GET", 503, has_retry_after=True)
        session.close()


class TestUntrustedPolls:
    @pytest.mark.parametrize(
        "step",
        [
            reply(404, HTML, content_type="text/html"),
            reply(429, HTML, content_type="text/html"),
            reply(500, HTML, content_type="text/html"),
            reply(503, b"", content_type="text/plain"),
            reply(200, HTML, content_type="text/html"),
            reply(401, {"error": "nope"}),
        ],
    )
    def test_http_errors_and_pages_are_transient(self, fake, fake_client, step):
        """They say nothing about the batch: retried, then TransientError, never RejectedError."""
        fake.answer("status", step)
        with pytest.raises(errors.TransientError):
            fake_client().status(LEADS, 7)
        assert fake.hits("status") > 1

    def test_a_429_page_then_the_answer(self, fake, fake_client, fake_time):
        """Retry-After is honoured, then the poll gets its answer."""
        fake.answer("status", reply(429, HTML, content_type="text/html", headers=(("Retry-After", "7"),)),
                    ok_batch(7, "Importing"))
        assert fake_client().status(LEADS, 7).status == "Importing"
        assert max(fake_time.sleeps) >= 7.0

    def test_retry_after_beyond_the_budget_is_raised_with_it(self, fake, fake_client):
        """The client does not sleep past max_retry_seconds: the daemon gets retry_after and decides."""
        when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120), usegmt=True)
        fake.answer("status", reply(503, HTML, content_type="text/html", headers=(("Retry-After", when),)))
        with pytest.raises(errors.TransientError) as caught:
            fake_client(max_retry_seconds=30.0).status(LEADS, 7)
        assert caught.value.retry_after == pytest.approx(120, abs=5)
        assert fake.hits("status") == 1

    def test_program_member_status_without_counters_is_unknown_not_zero(self, fake, fake_client):
        """The swagger's ImportProgramMemberResponse has only batchId, importId, status."""
        bare = {"batchId": 7, "importId": "7", "status": "Complete"}
        fake.answer("status", reply(body={"success": True, "result": [bare]}))
        status = fake_client().status(MEMBERS, 7)
        assert (status.status, status.processed, status.failed, status.warned) == ("Complete", None, None, None)
        assert status.is_finished

    def test_counters_are_read_as_given(self, fake, fake_client):
        """Leads' numOfLeadsProcessed, and a counter given as digits."""
        counters = {"numOfLeadsProcessed": 2, "numOfRowsFailed": "1", "numOfRowsWithWarning": 0}
        fake.answer("status", ok_batch(7, "Complete", **counters))
        status = fake_client().status(LEADS, 7)
        assert (status.processed, status.failed, status.warned) == (2, 1, 0)

    @pytest.mark.parametrize(
        "body",
        [
            {"success": True, "result": [{"batchId": 7, "status": "Complete", "numOfRowsFailed": "n/a"}]},
            {"success": True, "result": [{"batchId": 7, "status": "Complete", "numOfLeadsProcessed": -1}]},
            {"success": True, "result": [{"batchId": 7, "status": "Complete", "numOfRowsWithWarning": True}]},
            {"success": True, "result": [{"batchId": 7, "status": "Complete", "numOfLeadsProcessed": 2.5}]},
            {"success": True, "result": [{"batchId": 7, "status": "Complete", "numOfRowsFailed": {"n": 1}}]},
            {"success": True, "result": [{"status": "Complete"}]},
            {"success": True, "result": [{"batchId": 8, "status": "Complete"}]},
            {"success": True, "result": [{"batchId": 7, "status": 3}]},
            {"success": True, "result": [{"batchId": 7}]},
            {"success": True, "result": ["7"]},
            {"success": True, "result": {"batchId": 7}},
            {"success": False, "errors": {"code": "1003"}},
            {"success": False, "errors": [{"code": None}]},
            {"success": False, "errors": ["1003"]},
            {"success": False},
            {"success": 1},
            [],
            None,
            "Complete",
        ],
    )
    def test_a_malformed_status_is_only_a_transient_error(self, fake, fake_client, body):
        """Nothing but a TransientError of that one call leaves the client: no KeyError, TypeError, ValueError."""
        fake.answer("status", reply(body=json.dumps(body)))
        with pytest.raises(errors.TransientError):
            fake_client(max_retry_seconds=0.0).status(LEADS, 7)
        assert fake.hits("status") == 1

    def test_failure_file_errors_are_transient_and_404_is_no_rows(self, fake, fake_client):
        """404 is Marketo's documented 'no file'; a 5xx or an HTML page is not an answer."""
        client = fake_client(max_retry_seconds=0.0)
        fake.answer("failures", reply(404, "Not Found", content_type="text/plain"))
        assert client.failures(LEADS, 7) is None
        fake.answer("failures", reply(500, HTML, content_type="text/html"))
        with pytest.raises(errors.TransientError):
            client.failures(LEADS, 7)
        fake.answer("failures", reply(200, HTML, content_type="text/html"))
        with pytest.raises(errors.TransientError, match="HTML"):
            client.failures(LEADS, 7)
        fake.answer("warnings", reply(200, "email,Import Warning Reason\nx,Invalid email address\n",
                                      content_type="application/json"))
        assert client.warnings(LEADS, 7) == b"email,Import Warning Reason\nx,Invalid email address\n"

    def test_batch_not_found_on_a_result_file(self, fake, fake_client):
        """The envelope Marketo sends instead of a file, for a batch it does not know."""
        fake.answer("failures", marketo_error("1003", "Batch not found: 7"))
        with pytest.raises(errors.BatchNotFoundError):
            fake_client().failures(LEADS, 7)


class TestBoundedReplies:
    @pytest.mark.parametrize("headers_too", [False, True], ids=["body", "status-line"])
    def test_a_trickled_status_reply_ends_at_the_deadline(self, fake, fake_client, headers_too):
        """One byte every 0.1 s never trips a read timeout; the 1 s deadline ends it anyway."""
        body = json.dumps({"success": True, "result": [{"batchId": 7, "status": "Queued"}]}).encode()
        fake.answer("status", trickle(body, 0.1, headers_too=headers_too))
        client = fake_client(limits=ReplyLimits(call_deadline=1.0), max_retry_seconds=0.0)
        client.check_credentials()
        started = time.monotonic()
        with pytest.raises(errors.TransientError, match="deadline passed"):
            client.status(LEADS, 7)
        assert time.monotonic() - started < 2.5

    def test_a_trickled_submit_reply_is_outcome_unknown(self, fake, fake_client, tmp_path):
        """The upload went out; the reply never finished: the job may exist."""
        fake.answer("import", trickle(b'{"success":true,"result":[{"batchId":7,"status":"Queued"}]}', 0.1))
        client = fake_client(limits=ReplyLimits(transfer_deadline=1.0))
        started = time.monotonic()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.reason == "deadline passed"
        assert time.monotonic() - started < 2.5
        assert fake.hits("import") == 1

    def test_an_upload_nobody_reads_ends_at_the_deadline(self, fake, fake_client, tmp_path):
        """Sends wait at most what is left of the deadline, not a fresh timeout per block."""
        fake.stall_uploads = True
        path = tmp_path / "big.csv"
        path.write_bytes(b"email\n" + b"someone@example.com\n" * 1_000_000)  # 20 MB: more than socket buffers hold
        client = fake_client(limits=ReplyLimits(transfer_deadline=1.0), connect_timeout=10.0, read_timeout=10.0)
        client.check_credentials()
        started = time.monotonic()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, path, fmt=CSV)
        assert caught.value.reason == "deadline passed"
        assert time.monotonic() - started < 3.0

    @pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
    def test_an_oversized_reply_is_refused(self, fake, fake_client, length):
        """Counted as it streams, whether or not Content-Length announced it."""
        big = json.dumps({"success": True, "result": [{"batchId": 7, "status": "Queued", "pad": "x" * 50_000}]})
        fake.answer("status", reply(body=big, length=length))
        with pytest.raises(errors.TransientError, match="reply too large"):
            fake_client(limits=ReplyLimits(max_reply_bytes=10_000), max_retry_seconds=0.0).status(LEADS, 7)

    def test_an_oversized_failure_file_is_refused(self, fake, fake_client):
        fake.answer("failures", reply(body="a,Import Failure Reason\n" + "x,bad\n" * 2000, content_type="text/csv",
                                      length=False))
        with pytest.raises(errors.TransientError, match="reply too large"):
            fake_client(limits=ReplyLimits(max_file_bytes=1000), max_retry_seconds=0.0).failures(LEADS, 7)

    def test_an_oversized_submit_reply_is_outcome_unknown(self, fake, fake_client, tmp_path):
        fake.answer("import", reply(body={"success": True, "result": [{"batchId": 7, "pad": "x" * 50_000}]}))
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            fake_client(limits=ReplyLimits(max_reply_bytes=10_000)).submit(
                LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV
            )
        assert caught.value.reason == "reply too large"

    def test_deadline_bounds_the_socket_not_just_the_loop(self):
        """Outside an exchange nothing is bounded; inside, a passed deadline refuses the next send."""
        with transport.deadline(time.monotonic() - 1), pytest.raises(TimeoutError):
            transport._arm(None, None)
        transport._arm(None, None)


class StopSwitch:
    """The daemon's stop flag as the client sees it: ``tick`` notes the time and raises Interrupted once set."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self.set_at: float | None = None
        self.ticks: list[float] = []

    def set(self) -> None:
        self.set_at = time.monotonic()
        self.flag.set()

    def tick(self) -> None:
        self.ticks.append(time.monotonic())
        if self.flag.is_set():
            raise errors.Interrupted


def longest_gap(ticks: list[float], start: float, end: float) -> float:
    """The longest time without a tick between ``start`` and ``end``."""
    points = [start, *(t for t in ticks if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def big_upload(tmp_path: Path) -> Path:
    path = tmp_path / "big.csv"
    path.write_bytes(b"email\n" + b"someone@example.com\n" * 1_000_000)  # 20 MB: more than socket buffers hold
    return path


def head(length: int, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def trickle_then_stop(
    body: bytes, switch: StopSwitch, hung_up: threading.Event, *, after: int, headers_too: bool = False
) -> Step:
    """The head at once (or trickled too), then a byte a second; after ``after`` bytes the server goes quiet, sets the
    switch half a second later (the client is waiting in a read: only a tick between slices can notice
    now), and waits up to 5 s to see the client hang up."""

    def step(h: _Handler) -> None:
        data = head(len(body)) + body if headers_too else body
        if not headers_too:
            h.wfile.write(head(len(body)))
        for i in range(after):
            if h.server.stop.wait(1.0):
                return
            h.wfile.write(data[i : i + 1])
        if h.server.stop.wait(0.5):
            return
        switch.set()
        h.connection.settimeout(5.0)
        try:
            if h.connection.recv(1) == b"":
                hung_up.set()
        except ConnectionResetError:
            hung_up.set()
        except TimeoutError:
            pass

    return step


class TestTicksAndRateFloor:
    """The client's ``tick`` runs through every transfer (the daemon's heartbeat and SIGTERM), and a transfer
    slower than the floor ends well before its deadline."""

    @pytest.mark.parametrize("headers_too", [False, True], ids=["body", "status-line"])
    def test_a_stop_during_a_trickled_status_reply_interrupts_the_call(self, fake, fake_client, calls, headers_too):
        """Status trickled at 1 byte/s, then a stop: Interrupted itself leaves the client within about a second,
        not at the deadline, not wrapped in a MarketoError; the connection is shut and the call recorded."""
        switch, hung_up = StopSwitch(), threading.Event()
        body = json.dumps({"success": True, "result": [{"batchId": 7, "status": "Queued"}]}).encode()
        fake.answer("status", trickle_then_stop(body, switch, hung_up, after=3, headers_too=headers_too))
        client = fake_client(limits=ReplyLimits(call_deadline=10.0), tick=switch.tick, max_retry_seconds=0.0)
        with pytest.raises(errors.Interrupted) as caught:
            client.status(LEADS, 7)
        raised_at = time.monotonic()
        assert type(caught.value) is errors.Interrupted
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        assert switch.set_at is not None and raised_at - switch.set_at < 2.0
        assert hung_up.wait(2.0), "the server never saw the client hang up"
        assert [c.outcome for c in calls if c.endpoint == "status"] == ["Interrupted"]

    def test_a_stop_during_an_upload_nobody_reads_interrupts_it(self, fake, fake_client, tmp_path):
        """Blocked sends tick too. The journal keeps 'submitting': before_send ran, not_executed did not."""
        switch = StopSwitch()

        def stop_once_blocked() -> None:
            if not fake.stop.wait(0.5):  # the client's sends have filled the socket buffers by then
                switch.set()

        fake.stall_uploads = True
        fake.on_stall = stop_once_blocked
        hooks = Hooks()
        client = fake_client(
            limits=ReplyLimits(transfer_deadline=10.0), tick=switch.tick, connect_timeout=10.0, read_timeout=10.0
        )
        with pytest.raises(errors.Interrupted):
            client.submit(LEADS, big_upload(tmp_path), fmt=CSV, **hooks.kwargs())
        assert switch.set_at is not None and time.monotonic() - switch.set_at < 2.0
        assert hooks.events == ["send"]

    def test_ticks_keep_coming_through_a_stalled_but_legal_download(self, fake, fake_client):
        """A failure file paused 3 s mid-body (under the read timeout, inside the rate grace) arrives whole,
        and the tick ran at least once a second all along."""
        body = b"email,Import Failure Reason\n" + b"x@example.com,bad\n" * 2000

        def step(h: _Handler) -> None:
            h.wfile.write(head(len(body), "text/csv") + body[: len(body) // 2])
            h.server.stop.wait(3.0)
            h.wfile.write(body[len(body) // 2 :])

        fake.answer("failures", step)
        ticks: list[float] = []
        client = fake_client(tick=lambda: ticks.append(time.monotonic()))
        client.check_credentials()
        started = time.monotonic()
        assert client.failures(LEADS, 7) == body
        ended = time.monotonic()
        assert ended - started >= 3.0
        assert len([t for t in ticks if t >= started]) >= 3
        assert longest_gap(ticks, started, ended) < 1.5

    def test_ticks_keep_coming_through_a_held_upload(self, fake, fake_client, tmp_path):
        """An upload the server leaves unread for 2.5 s, then takes: sends wait in slices, ticking between."""
        fake.hold_uploads = 2.5
        fake.answer("import", ok_batch(7))
        ticks: list[float] = []
        client = fake_client(tick=lambda: ticks.append(time.monotonic()), connect_timeout=10.0, read_timeout=10.0)
        client.check_credentials()
        started = time.monotonic()
        assert client.submit(LEADS, big_upload(tmp_path), fmt=CSV).batch_id == 7
        ended = time.monotonic()
        assert ended - started >= 2.5
        assert len([t for t in ticks if t >= started]) >= 3
        assert longest_gap(ticks, started, ended) < 1.5

    def test_a_trickled_failure_file_ends_at_the_rate_floor(self, fake, fake_client):
        """20 bytes/s: once the grace is over (1 s here, 15 s by default) the average is under the floor, and the
        download ends long before its transfer deadline and without a read timeout: a TransientError."""
        body = b"email,Import Failure Reason\n" + b"x@example.com,bad\n" * 50
        fake.answer("failures", trickle(body, 0.05))
        limits = ReplyLimits(min_rate=1_000, rate_grace=1.0)
        assert limits.transfer_deadline == D.TRANSFER_DEADLINE_S
        client = fake_client(limits=limits, max_retry_seconds=0.0)
        client.check_credentials()
        started = time.monotonic()
        with pytest.raises(errors.TransientError, match="transfer too slow"):
            client.failures(LEADS, 7)
        assert 1.0 <= time.monotonic() - started < 2.5

    def test_an_upload_nobody_reads_ends_at_the_rate_floor_outcome_unknown(self, fake, fake_client, tmp_path):
        """Blocked sends are checked every slice: the upload's average falls under the floor after the grace, and
        bytes went out, so the submit is OutcomeUnknown; the deadline (240 s) and the per-send timeout (10 s) are
        far. Loopback buffers swallow megabytes at once, hence a floor of 50 MB/s here."""
        fake.stall_uploads = True
        hooks = Hooks()
        client = fake_client(
            limits=ReplyLimits(min_rate=50_000_000, rate_grace=1.0), connect_timeout=10.0, read_timeout=10.0
        )
        client.check_credentials()
        started = time.monotonic()
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, big_upload(tmp_path), fmt=CSV, **hooks.kwargs())
        assert caught.value.reason == "transfer too slow"
        assert 1.0 <= time.monotonic() - started < 3.0
        assert hooks.events == ["send"]

    def test_a_trickled_submit_reply_ends_at_the_rate_floor_outcome_unknown(self, fake, fake_client, tmp_path):
        """The floor applies to the reply of an import as well, and keeps its classification."""
        fake.answer("import", trickle(b'{"success":true,"result":[{"batchId":7,"status":"Queued"}]}', 0.05))
        client = fake_client(limits=ReplyLimits(min_rate=1_000, rate_grace=1.0))
        with pytest.raises(errors.OutcomeUnknownError) as caught:
            client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV)
        assert caught.value.reason == "transfer too slow"
        assert fake.hits("import") == 1

    @pytest.mark.parametrize(
        "bad", [{"tick_every": 0.0}, {"min_rate": -1.0}, {"rate_grace": -1.0}, {"transfer_deadline": 0.0}]
    )
    def test_limits_refuse_nonsense(self, bad):
        with pytest.raises(ValueError):
            ReplyLimits(**bad)

    def test_the_transfer_deadline_ends_inside_the_watchdog_window(self):
        """With no tick at all (an injected session), one call still ends before systemd's watchdog fires."""
        unit = (Path(__file__).resolve().parents[1] / "systemd" / "dropzone.service").read_text()
        [(number, unit_name)] = re.findall(r"^WatchdogSec=(\d+)(min|s)?\s*$", unit, re.MULTILINE)
        watchdog = int(number) * (60 if unit_name == "min" else 1)
        assert max(D.CALL_DEADLINE_S, D.TRANSFER_DEADLINE_S) <= 240.0 < watchdog


class TestSecretsOnNewPaths:
    def test_no_secret_or_token_in_any_new_error(self, fake, fake_client, tmp_path, calls):
        """Echoed secrets and tokens are scrubbed from every error, log event and CallRecord."""

        def echo_auth(h: _Handler) -> None:
            said = f"denied for {h.headers.get('Authorization')} and {CLIENT_SECRET}"
            marketo_error("603", said)(h)

        client = fake_client(max_retry_seconds=0.0)
        caught: list[BaseException] = []
        with structlog.testing.capture_logs() as logs:
            fake.answer("status", echo_auth)
            fake.answer("import", reply(502, HTML + CLIENT_SECRET, content_type="text/html"))
            fake.answer("failures", reply(200, HTML + TOKEN, content_type="text/html"))
            fake.answer("warnings", marketo_error("1003", f"no batch, token {TOKEN}"))
            for call in (
                lambda: client.status(LEADS, 7),
                lambda: client.submit(LEADS, write(tmp_path, "l.csv", LEADS_CSV), fmt=CSV),
                lambda: client.failures(LEADS, 7),
                lambda: client.warnings(LEADS, 7),
            ):
                with pytest.raises(errors.MarketoError) as info:
                    call()
                caught.append(info.value)
            refusal = {"error": "invalid_client", "error_description": f"bad {CLIENT_SECRET}"}
            fake.answer("identity", reply(401, refusal))
            client._token = None
            with pytest.raises(errors.AuthError) as info:
                client.check_credentials()
            caught.append(info.value)
        assert [type(e) for e in caught] == [
            errors.MisconfiguredError, errors.OutcomeUnknownError, errors.TransientError, errors.BatchNotFoundError,
            errors.AuthError,
        ]
        blob = repr(logs) + repr(calls) + "".join(str(e) + repr(e) + repr(e.__context__) for e in caught)
        assert CLIENT_SECRET not in blob
        assert TOKEN not in blob
        assert "[redacted]" in str(caught[0])

    def test_a_batch_message_echoing_the_token_never_carries_it(self, fake, fake_client):
        """Marketo's ``message`` goes to the partner's status file: an echoed token or secret is scrubbed."""

        def echo_auth(h: _Handler) -> None:
            said = f"Import completed; authorised by {h.headers.get('Authorization')} / {CLIENT_SECRET}"
            reply(body={"success": True, "result": [{"batchId": 7, "status": "Complete", "message": said}]})(h)

        fake.answer("status", echo_auth)
        status = fake_client().status(LEADS, 7)
        assert status.status == "Complete" and "authorised by" in status.message
        assert TOKEN not in status.message and CLIENT_SECRET not in status.message

    def test_json_tracebacks_carry_no_frame_locals(self):
        """A token in a local variable of a failing frame never reaches a JSON log line."""
        stream = io.StringIO()
        logs.configure(json=True, level="info", stream=stream)

        def fails(token: str) -> None:
            raise ValueError("boom")

        try:
            fails(TOKEN)
        except ValueError:
            structlog.get_logger("t").exception("it_failed")
        line = stream.getvalue()
        assert "it_failed" in line and "boom" in line
        assert TOKEN not in line and '"locals"' not in line


class TestImportTarget:
    @pytest.mark.parametrize(
        ("target", "text"),
        [
            (LEADS, '{"lookupField":"email","object":"leads"}'),
            (
                ImportTarget(kind=ObjectKind.LEADS, lookup_field="id", list_id=12, partition_name="EMEA"),
                '{"listId":12,"lookupField":"id","object":"leads","partitionName":"EMEA"}',
            ),
            (CARS, '{"apiName":"car_c","object":"customobject"}'),
            (MEMBERS, '{"object":"programmember","programId":1044,"programMemberStatus":"On List"}'),
            (
                ImportTarget(kind=ObjectKind.CUSTOM_OBJECT, api_name="car_c", instance="sandbox"),
                '{"apiName":"car_c","instance":"sandbox","object":"customobject"}',
            ),
        ],
    )
    def test_round_trip_with_marketo_names(self, target, text):
        """What the journal stores: stable text (sorted, compact), Marketo's parameter names, read back equal."""
        assert target.to_json() == text
        assert ImportTarget.from_json(text) == target

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "not json",
            "[]",
            "null",
            '{"object": "contacts"}',
            '{"lookupField": "email"}',
            '{"object": "customobject"}',
            '{"object": "programmember", "programId": 1044}',
            '{"object": "programmember", "programId": "1044", "programMemberStatus": "On List"}',
            '{"object": "leads", "instance": ""}',
            '{"object": "programmember", "programId": true, "programMemberStatus": "On List"}',
            '{"object": "leads", "listId": "12"}',
            '{"object": "leads", "listId": 0}',
            '{"object": "leads", "apiName": "car_c"}',
            '{"object": "customobject", "apiName": ""}',
            '{"object": "leads", "format": "csv"}',
            '{"object": "leads", "lookupField": 5}',
        ],
    )
    def test_from_json_refuses_garbage(self, text):
        with pytest.raises(ValueError):
            ImportTarget.from_json(text)

    def test_paths_and_query(self):
        assert MEMBERS.submit_path() == "/bulk/v1/program/1044/members/import.json"
        assert MEMBERS.batch_path(5, "status") == "/bulk/v1/program/members/import/5/status.json"
        assert LEADS.batch_path(5, "status") == "/bulk/v1/leads/batch/5.json"
        assert CARS.batch_path(5, "failures") == "/bulk/v1/customobjects/car_c/import/5/failures.json"
        assert MEMBERS.query(SSV) == {"format": "ssv", "programMemberStatus": "On List"}
