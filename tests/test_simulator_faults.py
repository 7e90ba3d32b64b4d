"""The simulator's armed faults, over real HTTP on 127.0.0.1 with plain ``requests``.

Each test pins what one misbehaviour looks like on the wire (faults.py lists
them) and that it ends when it should: after N calls, after its duration on a
manual clock, or never until disarmed. Time-dependent rules run on the manual
clock; only the trickle tests measure real time, on bodies of a few hundred bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests

from dropzone.simulator import Fault, SimConfig, Simulator
from tests.test_simulator import CID, REQUEST_ID, SECRET, SEED_CARS, SEED_LEADS, Api, ManualClock, batch_of, error_of

MEMBERS = b"email,firstName\na@example.com,A\nINVALID_EMAIL,B\n"
FAILING_LEADS = b"email,firstName\na@example.com,A\n,B\n,C\n"
LEADS_STATUS = "/bulk/v1/leads/batch/{}.json"
PM_STATUS = "/bulk/v1/program/members/import/{}/status.json"
CAR_STATUS = "/bulk/v1/customobjects/car_c/import/{}/status.json"


def completed_batch(api: Api, data: bytes = SEED_LEADS) -> int:
    batch = batch_of(api.leads(data))
    assert api.sim.wait_idle(5)
    return batch


def not_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


# --------------------------------------------------------------------------- the arming API


class TestFaultApi:
    def test_fault_validates_kind_endpoint_lifetime_and_params(self) -> None:
        """Typos fail at arming time, not silently at the call; defaults are filled in."""
        with pytest.raises(ValueError, match="unknown fault kind"):
            Fault("http_429")
        with pytest.raises(ValueError, match="no parameter 'retry'"):
            Fault("http429", retry=3)
        with pytest.raises(ValueError, match="reply must be one of"):
            Fault("create_then", reply="500")
        with pytest.raises(ValueError, match="'import' calls only"):
            Fault("create_then", endpoint="status")
        with pytest.raises(ValueError, match="identity"):
            Fault("refuse", endpoint="identity")
        with pytest.raises(ValueError, match="endpoint must be one of"):
            Fault("trickle", endpoint="batch")
        with pytest.raises(ValueError, match="times"):
            Fault("oversize", times=0)
        with pytest.raises(ValueError, match="seconds"):
            Fault("refuse", seconds=-1)
        with pytest.raises(ValueError, match="bytes_per_second"):
            Fault("trickle", bytes_per_second=0)
        assert Fault("trickle").params == {"bytes_per_second": 1.0}
        assert Fault("oversize").params == {"size": 4 * 1024 * 1024}
        assert Fault("http429").params == {"retry_after": 20}
        assert Fault("refuse").params == {"flavour": "access_denied"}
        assert Fault("malformed_status").endpoint == "status"
        assert (Fault("refuse").times, Fault("refuse", seconds=5).times, Fault("refuse", seconds=5).seconds) == (
            1,
            None,
            5.0,
        )
        with pytest.raises(ValueError, match="no random rate"):
            Simulator(SimConfig(client_id=CID, client_secret=SECRET, fault_rates={"trickle": 0.1}))

    def test_cli_fault_rates_take_only_random_kinds(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--fault-rate accepts http429 and refuses kinds that need arming (trickle)."""
        from dropzone.simulator.cli import build_parser

        assert build_parser().parse_args(["--fault-rate", "http429=0.1"]).fault_rate == [("http429", 0.1)]
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--fault-rate", "trickle=0.1"])
        assert "no random rate" in capsys.readouterr().err

    def test_armed_lists_and_disarm_forgets(self, make_api: Callable[..., Api]) -> None:
        """armed() shows what is pending, oldest first; disarm(id) and clear_faults() remove it."""
        clock = ManualClock()
        api = make_api(clock=clock)
        first = api.sim.arm(Fault("http429", endpoint="status", times=2, retry_after=1))
        second = api.sim.arm(Fault("refuse", endpoint="import", seconds=30, flavour="permission"))
        clock.advance(10)
        listed = api.sim.armed()
        assert [(f["id"], f["kind"], f["endpoint"], f["remaining"]) for f in listed] == [
            (first, "http429", "status", 2),
            (second, "refuse", "import", None),
        ]
        assert listed[0]["seconds_left"] is None and listed[1]["seconds_left"] == pytest.approx(20)
        assert listed[1]["params"] == {"flavour": "permission"}
        assert api.sim.disarm(first) is True and api.sim.disarm(first) is False
        assert [f["id"] for f in api.sim.armed()] == [second]
        api.sim.clear_faults()
        assert api.sim.armed() == []

    def test_random_429_uses_the_default_retry_after(self, make_api: Callable[..., Api]) -> None:
        """A random "http429" (fault_rates) carries the default Retry-After: 20."""
        api = make_api(seed=1, fault_rates={"http429": 1.0})
        r = api.get(LEADS_STATUS.format(1))
        assert (r.status_code, r.headers["Retry-After"]) == (429, "20")


# --------------------------------------------------------------------------- 1. created, then a lost reply


class TestCreateThenLostReply:
    def test_502_html_yet_the_job_exists_and_imports(self, make_api: Callable[..., Api]) -> None:
        """create_then (502): the next two imports answer a proxy's HTML 502, but both jobs run."""
        api = make_api()
        api.sim.arm(Fault("create_then", times=2))
        replies = [api.leads(SEED_LEADS) for _ in range(2)]
        for r in replies:
            assert r.status_code == 502
            assert r.headers["Content-Type"].startswith("text/html")
            assert r.text.startswith("<html>") and "502 Bad Gateway" in r.text
        assert batch_of(api.leads(SEED_LEADS))  # the third is answered normally
        assert api.sim.wait_idle(5)
        jobs = api.sim.submissions()
        assert [j["status"] for j in jobs] == ["Complete"] * 3
        assert len(api.sim.imported_rows()) == 9
        assert api.lead_status(jobs[0]["batchId"])["numOfLeadsProcessed"] == 3
        imports = [c for c in api.sim.calls() if c["endpoint"] == "import"]
        assert [c["fault"] for c in imports] == ["create_then", "create_then", None]
        assert [c["http_status"] for c in imports] == [502, 502, 200]

    @pytest.mark.parametrize(
        ("reply", "status", "content_type"),
        [("503", 503, "text/html"), ("504", 504, "text/html"), ("not_json", 200, "text/html"),
         ("truncated", 200, "application/json")],
    )  # fmt: skip
    def test_other_lost_replies(self, make_api: Callable[..., Api], reply: str, status: int, content_type: str) -> None:
        """503/504 pages, a 200 HTML page and a 200 cut-off JSON body: never parseable, always a created job."""
        api = make_api()
        api.sim.arm(Fault("create_then", reply=reply))
        r = api.leads(SEED_LEADS)
        assert r.status_code == status and r.headers["Content-Type"].startswith(content_type)
        assert not_json(r.content)
        (job,) = api.sim.submissions()
        if reply == "truncated":
            assert r.text.startswith('{"requestId":"') and not r.text.endswith("}")
        assert api.lead_status(job["batchId"])["status"] in ("Queued", "Importing", "Complete")

    def test_only_an_import_that_created_a_job_uses_it_up(self, make_api: Callable[..., Api]) -> None:
        """A refused import (1003 empty file, 1016 full queue) keeps the fault armed for the next real create."""
        clock = ManualClock()
        api = make_api(clock=clock)
        api.sim.arm(Fault("create_then", reply="503"))
        assert error_of(api.leads(b""))[0] == "1003"
        api.sim.add_background_jobs(10, seconds=30)
        assert error_of(api.leads(SEED_LEADS))[0] == "1016"
        assert [f["kind"] for f in api.sim.armed()] == ["create_then"]
        clock.advance(30)
        assert api.leads(SEED_LEADS).status_code == 503
        assert len(api.sim.submissions()) == 1 and api.sim.armed() == []


# --------------------------------------------------------------------------- 2. a proxy's 429


class TestProxy429:
    def test_status_gets_429_html_with_retry_after(self, make_api: Callable[..., Api]) -> None:
        """http429 on status: two HTML 429s with Retry-After, then Marketo's answer; the job is untouched."""
        api = make_api()
        batch = completed_batch(api)
        api.sim.arm(Fault("http429", endpoint="status", times=2, retry_after=7))
        for _ in range(2):
            r = api.get(LEADS_STATUS.format(batch))
            assert (r.status_code, r.headers["Retry-After"]) == (429, "7")
            assert r.headers["Content-Type"].startswith("text/html") and "429 Too Many Requests" in r.text
        assert api.lead_status(batch)["status"] == "Complete"

    def test_failures_and_warnings_get_429_too(self, make_api: Callable[..., Api]) -> None:
        """Armed per endpoint: the failures file, then the warnings file; retry_after=None sends no header."""
        api = make_api()
        batch = completed_batch(api, FAILING_LEADS)
        api.sim.arm(Fault("http429", endpoint="failures", retry_after=None))
        api.sim.arm(Fault("http429", endpoint="warnings", retry_after=3))
        assert api.lead_status(batch)["numOfRowsFailed"] == 2  # status is not armed
        failures = api.get(f"/bulk/v1/leads/batch/{batch}/failures.json")
        assert failures.status_code == 429 and "Retry-After" not in failures.headers
        warnings = api.get(f"/bulk/v1/leads/batch/{batch}/warnings.json")
        assert (warnings.status_code, warnings.headers["Retry-After"]) == (429, "3")
        again = api.get(f"/bulk/v1/leads/batch/{batch}/failures.json")
        assert again.status_code == 200 and again.text.count("\n") == 3
        assert api.get(f"/bulk/v1/leads/batch/{batch}/warnings.json").status_code == 404


# --------------------------------------------------------------------------- 3. trickled and oversized replies


def timed_read(response: requests.Response) -> tuple[bytes, float]:
    """The body, one byte at a time, and the seconds from its first byte to its last."""
    chunks = response.iter_content(chunk_size=1)
    first = next(chunks)
    start = time.monotonic()
    rest = b"".join(chunks)
    return first + rest, time.monotonic() - start


class TestTrickle:
    @pytest.mark.parametrize("endpoint", ["identity", "import", "status", "failures", "warnings"])
    def test_body_arrives_at_the_given_rate(self, make_api: Callable[..., Api], endpoint: str) -> None:
        """trickle: headers at once, then the normal body at bytes_per_second (500 B/s on ~100-250 bytes)."""
        pace = 500.0
        api = make_api()
        leads = completed_batch(api, FAILING_LEADS)
        members = batch_of(api.members(MEMBERS))
        assert api.sim.wait_idle(5)
        paths = {
            "status": LEADS_STATUS.format(leads),
            "failures": f"/bulk/v1/leads/batch/{leads}/failures.json",
            "warnings": f"/bulk/v1/program/members/import/{members}/warnings.json",
        }
        api.sim.arm(Fault("trickle", endpoint=endpoint, bytes_per_second=pace))
        started = time.monotonic()
        if endpoint == "identity":
            url = api.sim.identity_url + "/oauth/token"
            params = {"grant_type": "client_credentials", "client_id": CID, "client_secret": SECRET}
            r = api.http.get(url, params=params, stream=True)
        elif endpoint == "import":
            r = api.http.post(
                api.sim.base_url + "/bulk/v1/leads.json",
                params={"format": "csv"},
                files={"file": ("l.csv", SEED_LEADS)},
                headers=api.auth(),
                stream=True,
            )
        else:
            r = api.http.get(api.sim.base_url + paths[endpoint], headers=api.auth(), stream=True)
        headers_after = time.monotonic() - started
        body, spread = timed_read(r)
        assert r.status_code == 200 and len(body) == int(r.headers["Content-Length"]) >= 60
        assert spread >= (len(body) - 1) / pace * 0.5, "the body came at once"  # half: a loaded machine reads in bursts
        assert headers_after < spread / 2, "the headers were held back too"
        if endpoint in ("failures", "warnings"):
            assert body.startswith(b"email,firstName,Import ")
        else:
            assert json.loads(body)
        call = [c for c in api.sim.calls() if c["endpoint"] == endpoint][-1]
        assert call["fault"] == "trickle"
        if endpoint == "import":
            assert len(api.sim.submissions()) == 3  # processed normally: a third job

    def test_default_one_byte_per_second_and_stop_cuts_it_short(self, make_api: Callable[..., Api]) -> None:
        """The default pace is 1 B/s; stopping the simulator mid-body does not wait for the rest."""
        api = make_api()
        api.sim.arm(Fault("trickle", endpoint="identity"))
        url = api.sim.identity_url + "/oauth/token"
        params = {"grant_type": "client_credentials", "client_id": CID, "client_secret": SECRET}
        r = api.http.get(url, params=params, stream=True)
        chunks = r.iter_content(chunk_size=1)
        assert next(chunks) == b"{"
        start = time.monotonic()
        assert next(chunks) == b'"'
        assert 0.8 <= time.monotonic() - start < 2.0
        stopping = time.monotonic()
        api.sim.stop()
        assert time.monotonic() - stopping < 2.0
        with pytest.raises(requests.exceptions.RequestException):
            b"".join(chunks)  # the body is cut short, never completed
        r.close()


class TestOversize:
    def test_status_is_padded_to_exactly_the_default_size_same_json(self, make_api: Callable[..., Api]) -> None:
        """oversize on status: 4 MiB of valid JSON holding the same value; the next status is normal."""
        api = make_api()
        batch = completed_batch(api)
        normal = api.get(LEADS_STATUS.format(batch)).json()
        api.sim.arm(Fault("oversize", endpoint="status"))
        big = api.get(LEADS_STATUS.format(batch))
        assert len(big.content) == int(big.headers["Content-Length"]) == 4 * 1024 * 1024
        padded = big.json()
        assert padded["result"] == normal["result"] and padded["success"] is True
        assert len(api.get(LEADS_STATUS.format(batch)).content) < 1000

    def test_failures_file_repeats_its_rows_past_the_size(self, make_api: Callable[..., Api]) -> None:
        """oversize on failures: header once, then the failed rows over and over, at least ``size`` bytes."""
        api = make_api()
        batch = completed_batch(api, FAILING_LEADS)
        path = f"/bulk/v1/leads/batch/{batch}/failures.json"
        normal = api.get(path).content
        api.sim.arm(Fault("oversize", endpoint="failures", size=200_000, times=2))
        for _ in range(2):
            big = api.get(path)
            assert big.status_code == 200 and big.headers["Content-Type"] == "text/csv;charset=UTF-8"
            header, rows = normal.split(b"\n", 1)
            assert 200_000 <= len(big.content) < 200_000 + len(rows)
            assert big.content.startswith(normal) and big.content.count(header) == 1
            assert set(big.content.split(b"\n")[1:-1]) == set(rows.split(b"\n")[:-1])
        assert api.get(path).content == normal


# --------------------------------------------------------------------------- 4. malformed status counters


class TestMalformedStatus:
    @pytest.mark.parametrize(
        ("shape", "key", "value"),
        [("failed_string", "numOfRowsFailed", "n/a"), ("processed_null", "numOfLeadsProcessed", None)],
    )
    def test_counter_shapes(self, make_api: Callable[..., Api], shape: str, key: str, value: object) -> None:
        """One counter comes back as a string or null; everything else, and the next status, is normal."""
        api = make_api()
        batch = completed_batch(api, FAILING_LEADS)
        normal = api.lead_status(batch)
        api.sim.arm(Fault("malformed_status", shape=shape, times=1))
        body = api.get(LEADS_STATUS.format(batch)).json()
        assert body["success"] is True and REQUEST_ID.match(body["requestId"])
        (result,) = body["result"]
        assert result[key] == value
        assert {k: v for k, v in result.items() if k != key} == {k: v for k, v in normal.items() if k != key}
        assert api.lead_status(batch) == normal

    def test_processed_null_on_a_custom_object_nulls_num_of_objects(self, make_api: Callable[..., Api]) -> None:
        """Custom objects count numOfObjectsProcessed; that is the counter nulled."""
        api = make_api()
        batch = batch_of(api.cars(SEED_CARS))
        assert api.sim.wait_idle(5)
        api.sim.arm(Fault("malformed_status", shape="processed_null"))
        (result,) = api.get(CAR_STATUS.format(batch)).json()["result"]
        assert result["numOfObjectsProcessed"] is None and result["numOfRowsFailed"] == 0

    def test_errors_as_an_object(self, make_api: Callable[..., Api]) -> None:
        """errors_dict: success false and ``errors`` an object, not a list; no result."""
        api = make_api()
        batch = completed_batch(api)
        api.sim.arm(Fault("malformed_status", shape="errors_dict", times=2))
        for _ in range(2):
            r = api.get(LEADS_STATUS.format(batch))
            body = r.json()
            assert r.status_code == 200 and body["success"] is False and "result" not in body
            assert body["errors"] == {"code": "611", "message": "System error"}
        assert api.lead_status(batch)["status"] == "Complete"

    def test_a_failed_status_call_does_not_use_it_up(self, make_api: Callable[..., Api]) -> None:
        """Only a status body Marketo would send is malformed: a 1003 for an unknown batch leaves it armed."""
        api = make_api()
        api.sim.arm(Fault("malformed_status"))
        assert error_of(api.get(LEADS_STATUS.format(999)))[0] == "1003"
        batch = completed_batch(api)
        assert api.get(LEADS_STATUS.format(batch)).json()["result"][0]["numOfRowsFailed"] == "n/a"


# --------------------------------------------------------------------------- 5. configuration-class refusals


class TestRefusals:
    def test_next_n_imports_get_603_access_denied(self, make_api: Callable[..., Api]) -> None:
        """refuse, times=2: Marketo's envelope with 603 "Access denied", HTTP 200, nothing created."""
        api = make_api()
        api.sim.arm(Fault("refuse", endpoint="import", times=2))
        for _ in range(2):
            r = api.leads(SEED_LEADS)
            assert r.status_code == 200 and r.headers["Content-Type"] == "application/json;charset=UTF-8"
            body = r.json()
            assert set(body) == {"requestId", "success", "errors"} and REQUEST_ID.match(body["requestId"])
            assert (body["success"], body["errors"]) == (False, [{"code": "603", "message": "Access denied"}])
        assert api.sim.submissions() == []
        assert error_of(api.get(LEADS_STATUS.format(1)))[0] == "1003"  # other endpoints are not armed
        assert batch_of(api.leads(SEED_LEADS))

    def test_for_a_while_then_it_clears_on_its_own(self, make_api: Callable[..., Api]) -> None:
        """refuse, seconds=30 (ip_allowlist): every import is refused for 30 s of clock, then accepted."""
        clock = ManualClock()
        api = make_api(clock=clock)
        api.sim.arm(Fault("refuse", endpoint="import", seconds=30, flavour="ip_allowlist"))
        codes = [error_of(api.leads(SEED_LEADS)) for _ in range(3)]
        assert {c for c, _ in codes} == {"603"}
        assert "allowlist" in codes[0][1] and codes[0][1].startswith("Access denied")
        clock.advance(29.9)
        assert error_of(api.leads(SEED_LEADS))[0] == "603"
        clock.advance(0.1)
        assert batch_of(api.leads(SEED_LEADS))
        assert api.sim.armed() == []

    def test_permission_flavour_names_the_missing_permission(self, make_api: Callable[..., Api]) -> None:
        """permission: same 603, the message names Read-Write Lead or Read-Write Custom Object [INF]."""
        api = make_api()
        api.sim.arm(Fault("refuse", endpoint="import", times=3, flavour="permission"))
        lead_code, lead_message = error_of(api.leads(SEED_LEADS))
        member_code, member_message = error_of(api.members(MEMBERS))
        car_code, car_message = error_of(api.cars(SEED_CARS))
        assert lead_code == member_code == car_code == "603"
        assert "'Read-Write Lead'" in lead_message and "'Read-Write Lead'" in member_message
        assert "'Read-Write Custom Object'" in car_message

    def test_comes_after_the_token_and_counts_toward_the_rate_limit(self, make_api: Callable[..., Api]) -> None:
        """A bad token still gets 601 (the refusal stays armed); refusals are counted calls, so 606 follows."""
        api = make_api(rate_limit=2)
        api.sim.arm(Fault("refuse", times=None))  # any API call, until disarmed
        assert error_of(api.leads(SEED_LEADS, headers={"Authorization": "Bearer nope:int"}))[0] == "601"
        assert error_of(api.leads(SEED_LEADS))[0] == "603"
        assert error_of(api.get(LEADS_STATUS.format(1)))[0] == "603"
        assert error_of(api.leads(SEED_LEADS))[0] == "606"
        assert [f["kind"] for f in api.sim.armed()] == ["refuse"]


# --------------------------------------------------------------------------- 6. program-member status without counters


class TestBareProgramMemberStatus:
    def test_next_n_program_member_statuses_only(self, make_api: Callable[..., Api]) -> None:
        """bare_status: lead statuses pass it by; the next program-member status has batchId/importId/status only."""
        api = make_api()
        lead = completed_batch(api)
        member = batch_of(api.members(MEMBERS))
        assert api.sim.wait_idle(5)
        api.sim.arm(Fault("bare_status", times=1))
        assert "numOfLeadsProcessed" in api.lead_status(lead)
        (bare,) = api.get(PM_STATUS.format(member)).json()["result"]
        assert bare == {"batchId": member, "importId": str(member), "status": "Complete"}
        (full,) = api.get(PM_STATUS.format(member)).json()["result"]
        assert full["numOfLeadsProcessed"] == 2 and full["numOfRowsWithWarning"] == 1

    def test_always_by_fault_or_by_knob(self, make_api: Callable[..., Api]) -> None:
        """times=None keeps it until disarmed; program_member_counters=False does it for the whole run."""
        api = make_api()
        member = batch_of(api.members(MEMBERS))
        assert api.sim.wait_idle(5)
        fault_id = api.sim.arm(Fault("bare_status", times=None))
        for _ in range(3):
            assert set(api.get(PM_STATUS.format(member)).json()["result"][0]) == {"batchId", "importId", "status"}
        assert api.sim.disarm(fault_id)
        assert "numOfRowsFailed" in api.get(PM_STATUS.format(member)).json()["result"][0]

        knob = make_api(program_member_counters=False)
        member = batch_of(knob.members(MEMBERS))
        lead = batch_of(knob.leads(SEED_LEADS))
        assert knob.sim.wait_idle(5)
        assert set(knob.get(PM_STATUS.format(member)).json()["result"][0]) == {"batchId", "importId", "status"}
        assert knob.lead_status(lead)["numOfLeadsProcessed"] == 3


# --------------------------------------------------------------------------- 7. Marketo's own "batch not found"


class TestUnknownBatch:
    PATHS = (
        LEADS_STATUS,
        "/bulk/v1/leads/batch/{}/failures.json",
        "/bulk/v1/leads/batch/{}/warnings.json",
        CAR_STATUS,
        "/bulk/v1/customobjects/car_c/import/{}/failures.json",
        "/bulk/v1/customobjects/car_c/import/{}/warnings.json",
        PM_STATUS,
        "/bulk/v1/program/members/import/{}/failures.json",
        "/bulk/v1/program/members/import/{}/warnings.json",
    )

    def test_unknown_or_expired_batch_is_a_1003_envelope_everywhere(self, make_api: Callable[..., Api]) -> None:
        """HTTP 200 + JSON envelope + 1003 on all nine GETs; a proxy's 404/429 is HTML and never success:false."""
        clock = ManualClock()
        api = make_api(clock=clock)
        expired = completed_batch(api)
        clock.advance(7 * 86400 + 1)
        api._token = None
        for batch in (4242, expired):
            for path in self.PATHS:
                r = api.get(path.format(batch))
                assert r.headers["Content-Type"] == "application/json;charset=UTF-8", path
                assert error_of(r) == ("1003", f"Batch not found: {batch}"), path
        fresh = completed_batch(api)
        no_rows = api.get(f"/bulk/v1/leads/batch/{fresh}/failures.json")
        assert no_rows.status_code == 404 and not_json(no_rows.content)
        api.sim.arm(Fault("http429", endpoint="status"))
        proxy = api.get(LEADS_STATUS.format(4242))
        assert proxy.status_code == 429 and not_json(proxy.content)
