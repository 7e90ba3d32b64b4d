"""The Marketo client against the simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
from pathlib import Path

import pytest
import requests
import structlog

from dropzone import errors
from dropzone.marketo import BatchStatus, CallRecord, ClientSettings, ImportTarget, MarketoClient, ObjectKind
from tests.conftest import CLIENT_ID, CLIENT_SECRET, wait_until

LEADS = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email")
CARS = ImportTarget(kind=ObjectKind.CUSTOM_OBJECT, api_name="car_c")


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


@pytest.fixture
def make_client(simulator, fake_time, calls):
    made: list[MarketoClient] = []

    def make(**overrides) -> MarketoClient:
        settings = ClientSettings(
            endpoint=simulator.base_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            connect_timeout=2.0,
            read_timeout=5.0,
        )
        settings = dataclasses.replace(settings, **overrides)
        client = MarketoClient(settings, sleep=fake_time.sleep, clock=fake_time.clock, on_call=calls.append)
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


class TestSubmitAndPoll:
    def test_leads_with_all_parameters(self, simulator, client, tmp_path):
        """A leads file with lookupField, listId and partitionName reaches Marketo whole, with its parameters."""
        target = ImportTarget(kind=ObjectKind.LEADS, lookup_field="email", list_id=1234, partition_name="EMEA")
        submitted = client.submit(target, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
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
        submitted = client.submit(CARS, write(tmp_path, "cars.tsv", text), fmt="tsv")
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
        submitted = client.submit(CARS, write(tmp_path, "cars.csv", text), fmt="csv")
        done = finished(client, CARS, submitted.batch_id)
        assert (done.processed, done.failed) == (0, 3)
        body = client.failures(CARS, submitted.batch_id)
        assert body is not None
        lines = body.decode("utf-8").splitlines()
        assert lines[0] == "color,make,model, vin,Import Failure Reason"
        assert lines[1] == "red,bmw,2002,WBA4R7C55HK895912,missing.dedupe.fields"
        assert len(lines) == 4
        assert client.warnings(CARS, submitted.batch_id) is None

    def test_program_members_status_with_a_space_and_a_warning(self, simulator, make_client, tmp_path):
        """programMemberStatus is URL-encoded; an invalid email warns and the row is still imported."""
        client = make_client()
        target = ImportTarget(kind=ObjectKind.PROGRAM_MEMBER, program_id="1044", program_member_status="On List")
        text = "email;firstName\nann@example.com;Ann\nnot-an-email;Bob\n"
        submitted = client.submit(target, write(tmp_path, "members.ssv", text), fmt="ssv")
        done = finished(client, target, submitted.batch_id)
        assert (done.status, done.processed, done.failed, done.warned) == ("Complete", 2, 0, 1)
        assert simulator.submissions()[0]["params"]["programMemberStatus"] == "On List"
        warnings = client.warnings(target, submitted.batch_id)
        assert warnings is not None
        assert warnings.decode("utf-8").splitlines() == [
            "email;firstName;Import Warning Reason",
            "not-an-email;Bob;Invalid email address",
        ]
        assert client.failures(target, submitted.batch_id) is None

    def test_lead_with_empty_lookup_value_fails(self, client, tmp_path):
        """Marketo's own failure text names the lookup field."""
        text = "firstName,lastName,email\nBenji,Nordstrom,\nAnn,Lee,ann@example.com\n"
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", text), fmt="csv")
        done = finished(client, LEADS, submitted.batch_id)
        assert (done.processed, done.failed) == (1, 1)
        body = client.failures(LEADS, submitted.batch_id)
        assert body is not None
        assert "Value for lookup field 'email' not found" in body.decode("utf-8")

    def test_failures_is_none_when_there_are_none(self, client, tmp_path):
        """A 404 on failures.json means no failure rows, not an error."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        finished(client, LEADS, submitted.batch_id)
        assert client.failures(LEADS, submitted.batch_id) is None

    def test_empty_200_on_failures_also_means_none(self, sim_config, tmp_path, fake_time):
        """Some clients' Marketo answered 200 with an empty body instead of 404."""
        from dropzone.simulator import Simulator

        with Simulator(dataclasses.replace(sim_config, failures_404=False)) as sim:
            client = MarketoClient(
                ClientSettings(endpoint=sim.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                sleep=fake_time.sleep,
                clock=fake_time.clock,
            )
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
            finished(client, LEADS, submitted.batch_id)
            assert client.failures(LEADS, submitted.batch_id) is None
            client.close()

    def test_the_file_is_streamed_from_disk_not_loaded(self, client, tmp_path):
        """A 5 MB upload goes through the streaming encoder intact (rows counted by the simulator)."""
        rows = 60_000
        text = "email,firstName\n" + "".join(f"u{i}@example.com,N{i}\n" for i in range(rows))
        path = write(tmp_path, "big.csv", text)
        assert path.stat().st_size > 1_000_000
        submitted = client.submit(LEADS, path, fmt="csv")
        done = finished(client, LEADS, submitted.batch_id)
        assert done.processed == rows


class TestTokens:
    def test_token_goes_only_in_the_bearer_header(self, simulator, client, tmp_path):
        """No call carries access_token in the query string or a form field."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        client.status(LEADS, submitted.batch_id)
        api_calls = [c for c in simulator.calls() if not c["path"].startswith("/identity")]
        assert api_calls
        assert {c["auth"] for c in api_calls} == {"bearer"}

    def test_the_token_is_cached(self, simulator, client, tmp_path):
        """Ten calls cost one Identity call."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        for _ in range(9):
            client.status(LEADS, submitted.batch_id)
        assert len([c for c in simulator.calls() if c["path"].startswith("/identity")]) == 1

    def test_expired_token_602_then_refresh(self, simulator, client, tmp_path, calls):
        """A token that expires server-side gets 602; the client re-authenticates and the call succeeds."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        simulator.expire_token()
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id
        outcomes = [c.outcome for c in calls if c.endpoint == "status"]
        assert outcomes == ["602", "ok"]
        assert client.token_refreshes == 2

    def test_invalid_token_601_then_refresh(self, simulator, client, tmp_path, calls):
        """601 (token invalid) is handled like 602: a new token, the same call again."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
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

    def test_expires_in_zero_is_waited_out(self, sim_config, fake_time, tmp_path):
        """Identity answering expires_in 0 makes the client wait for the token to die, not loop on Identity."""
        from dropzone.simulator import Simulator

        real_sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            # The token really has to expire on the simulator's (real) clock.
            import time as _time

            real_sleeps.append(seconds)
            _time.sleep(min(seconds, 2.0))

        with Simulator(dataclasses.replace(sim_config, zero_expires_in=True)) as sim:
            client = MarketoClient(
                ClientSettings(endpoint=sim.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                sleep=sleep,
            )
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
            assert submitted.batch_id
            identity_calls = [c for c in sim.calls() if c["path"].startswith("/identity")]
            assert 1 < len(identity_calls) <= 7
            assert real_sleeps and all(s >= 0.5 for s in real_sleeps)
            client.close()

    def test_bad_credentials_name_the_client_not_the_secret(self, simulator, fake_time):
        """HTTP 401 invalid_client is fatal; the message names the client id and never the secret."""
        wrong = "wrong-secret-value"
        client = MarketoClient(
            ClientSettings(endpoint=simulator.base_url, client_id=CLIENT_ID, client_secret=wrong),
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )
        with pytest.raises(errors.AuthError) as caught:
            client.check_credentials()
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
                client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
            submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
            client.status(LEADS, submitted.batch_id)
        token = client._token
        assert token
        blob = repr(logs) + str(caught.value) + repr(caught.value)
        assert CLIENT_SECRET not in blob
        assert token not in blob


class TestRetries:
    @pytest.mark.parametrize("code", ["502", "604", "608", "611", "614", "615", "713", "719", "http500", "http503"])
    def test_transient_errors_on_status_are_retried(self, simulator, client, tmp_path, code, calls, fake_time):
        """Each transient code is retried with backoff and the call then succeeds."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        simulator.inject(code, times=2, endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id
        status_calls = [c for c in simulator.calls() if "/batch/" in c["path"]]
        assert len(status_calls) == 3, "two faults, then the answer"

    @pytest.mark.parametrize("code", ["502", "604", "608", "611", "614", "615", "713", "719", "http502", "http503"])
    def test_transient_errors_on_submit_are_retried(self, simulator, client, tmp_path, code):
        """A submit that Marketo answered with a transient error was not executed: it is sent again, once."""
        simulator.inject(code, times=1, endpoint="import")
        client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        assert len(simulator.submissions()) == 1

    def test_606_waits_out_the_whole_window(self, simulator, client, tmp_path, fake_time):
        """Max rate limit: the client holds back for at least the 20 s window before trying again."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        simulator.inject("606", endpoint="status")
        fake_time.sleeps.clear()
        client.status(LEADS, submitted.batch_id)
        assert sum(fake_time.sleeps) >= 20.0

    def test_retries_stop_at_the_deadline(self, simulator, make_client, tmp_path):
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
        with pytest.raises(errors.OutcomeUnknownError):
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        assert len(simulator.submissions()) == 1

    def test_lost_reply_to_a_get_is_retried(self, simulator, client, tmp_path):
        """GETs are idempotent, so a reset is just retried."""
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        simulator.inject("reset", endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id

    def test_read_timeout_on_submit_is_outcome_unknown(self, simulator, make_client, tmp_path):
        """A submit that times out reading the reply may have created a job."""
        client = make_client(read_timeout=0.3)
        simulator.inject("slow:1.5", endpoint="import")
        with pytest.raises(errors.OutcomeUnknownError):
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")

    def test_read_timeout_on_a_get_is_retried(self, simulator, make_client, tmp_path):
        """A slow status answer times out and the next attempt succeeds."""
        client = make_client(read_timeout=0.3)
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        simulator.inject("slow:1.5", endpoint="status")
        assert client.status(LEADS, submitted.batch_id).batch_id == submitted.batch_id

    def test_nothing_listening_is_transient_not_unknown(self, fake_time, tmp_path):
        """Connection refused means nothing was sent: a plain TransientError, even for a submit."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = MarketoClient(
            ClientSettings(
                endpoint=f"http://127.0.0.1:{port}", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                max_retry_seconds=1.0,
            ),
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )
        with pytest.raises(errors.TransientError) as caught:
            client.check_credentials()
        assert CLIENT_SECRET not in str(caught.value)
        client.close()


class TestClassification:
    def test_queue_full_1016(self, simulator, client, tmp_path):
        """Other integrations' jobs fill the 10 slots: 1016 is its own 'try later' class."""
        simulator.add_background_jobs(10)
        with pytest.raises(errors.QueueFullError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        assert caught.value.code == "1016"
        assert isinstance(caught.value, errors.TryLaterError)

    def test_list_busy_1019(self, simulator, client, tmp_path):
        simulator.inject("1019", endpoint="import")
        with pytest.raises(errors.ListBusyError):
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")

    def test_daily_quota_607_says_when_to_resume(self, simulator, client, tmp_path):
        """607 is not retried: the quota comes back at midnight US Central."""
        simulator.inject("607", endpoint="import")
        with pytest.raises(errors.QuotaExceededError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        now = dt.datetime.now(dt.timezone.utc)
        assert now < caught.value.resume_at <= now + dt.timedelta(hours=25)

    @pytest.mark.parametrize("code", ["603", "609", "610", "612", "613", "1003", "1006", "1026", "http413"])
    def test_fatal_codes_are_rejected_without_retry(self, simulator, client, tmp_path, code, calls):
        """Retrying a request Marketo refused cannot help: one attempt, RejectedError with the code."""
        simulator.inject(code, endpoint="import")
        with pytest.raises(errors.RejectedError) as caught:
            client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        assert len([c for c in calls if c.endpoint == "import"]) == 1
        expected = "HTTP 413" if code == "http413" else code
        assert caught.value.code == expected

    def test_real_413_for_a_file_over_the_limit(self, sim_config, fake_time, tmp_path):
        """The simulator's size limit produces a real HTTP 413, reported as RejectedError."""
        from dropzone.simulator import Simulator

        with Simulator(dataclasses.replace(sim_config, max_file_bytes=1000)) as sim:
            client = MarketoClient(
                ClientSettings(endpoint=sim.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                sleep=fake_time.sleep,
                clock=fake_time.clock,
            )
            text = "email\n" + "".join(f"user{i}@example.com\n" for i in range(100))
            with pytest.raises(errors.RejectedError) as caught:
                client.submit(LEADS, write(tmp_path, "big.csv", text), fmt="csv")
            assert caught.value.code == "HTTP 413"
            assert sim.submissions() == []
            client.close()


class TestLimiter:
    def test_calls_per_window_are_respected(self, simulator, make_client, tmp_path, fake_time):
        """With 5 calls per 20 s, 16 calls spread over at least 60 s of the client's clock."""
        client = make_client(calls_per_window=5)
        submitted = client.submit(LEADS, write(tmp_path, "leads.csv", LEADS_CSV), fmt="csv")
        start = fake_time.now
        for _ in range(15):
            client.status(LEADS, submitted.batch_id)
        assert fake_time.now - start >= 60.0
        assert len([c for c in simulator.calls() if c["code"] == "606"]) == 0


class TestIntentHooks:
    def test_intent_is_recorded_before_sending_and_cleared_when_not_executed(self, simulator, client, tmp_path):
        """The journal hooks see: send, refused (606, not executed), send again; waits happen outside 'send'."""
        simulator.inject("606", endpoint="import")
        events: list[str] = []
        client.submit(
            LEADS,
            write(tmp_path, "leads.csv", LEADS_CSV),
            fmt="csv",
            before_send=lambda: events.append("send"),
            not_executed=lambda: events.append("not executed"),
        )
        assert events == ["send", "not executed", "send"]
        assert len(simulator.submissions()) == 1

    def test_a_lost_reply_leaves_the_intent_in_place(self, simulator, client, tmp_path):
        """Outcome unknown: 'not executed' must not be called, the journal keeps 'submitting'."""
        simulator.inject("reset", endpoint="import")
        events: list[str] = []
        with pytest.raises(errors.OutcomeUnknownError):
            client.submit(
                LEADS,
                write(tmp_path, "leads.csv", LEADS_CSV),
                fmt="csv",
                before_send=lambda: events.append("send"),
                not_executed=lambda: events.append("not executed"),
            )
        assert events == ["send"]
