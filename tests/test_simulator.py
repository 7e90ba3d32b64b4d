"""The simulator's own contract, over real HTTP on 127.0.0.1 with plain ``requests``.

Each test pins one documented Marketo behaviour (docs/marketo-bulk-import.md,
seeds 000-004) so the fake the rest of the suite trusts is itself trusted.
Time-dependent rules run on a manual clock: no sleeps, no flaky windows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from dropzone.simulator import Simulator

CID, SECRET = "cid", "csecret"
REQUEST_ID = re.compile(r"^[0-9a-f]{4}#[0-9a-f]{11}$")
QUEUE_FULL = "There are 10 imports currently being processed. Please try again later"

SEED_LEADS = (
    b"FirstName,LastName,Email,Company\n"
    b"Able,Baker,ablebaker@marketo.com,Marketo\n"
    b"Charlie,Dog,charliedog@marketo.com,Marketo\n"
    b"Easy,Fox,easyfox@marketo.com,Marketo\n"
)
SEED_CARS = (
    b"color,make,model,vin\n"
    b"red,bmw,2002,WBA4R7C55HK895912\n"
    b"yellow,bmw,320i,WBA4R7C30HK896061\n"
    b"blue,bmw,325i,WBS3U9C52HP970604\n"
)


class ManualClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


class Api:
    """Raw HTTP against one simulator: no dropzone client code involved."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.http = requests.Session()
        self.http.trust_env = False
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def identity(self, method: str = "GET", **params: str) -> requests.Response:
        args = {"grant_type": "client_credentials", "client_id": CID, "client_secret": SECRET, **params}
        url = self.sim.identity_url + "/oauth/token"
        if method == "GET":
            return self.http.get(url, params=args)
        return self.http.post(url, data=args)

    def token(self) -> str:
        if self._token is None:
            self._token = self.identity().json()["access_token"]
        return self._token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}

    def get(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers") if "headers" in kw else self.auth(token)
        return self.http.get(self.sim.base_url + path, headers=headers, **kw)

    def upload(
        self,
        path: str,
        data: bytes,
        params: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        filename: str = "import.csv",
    ) -> requests.Response:
        return self.http.post(
            self.sim.base_url + path,
            params=params if params is not None else {"format": "csv"},
            data=form,
            files={"file": (filename, data, "text/csv")},
            headers=headers if headers is not None else self.auth(),
        )

    def leads(self, data: bytes, **kw: Any) -> requests.Response:
        return self.upload("/bulk/v1/leads.json", data, **kw)

    def cars(self, data: bytes, **kw: Any) -> requests.Response:
        return self.upload("/bulk/v1/customobjects/car_c/import.json", data, **kw)

    def members(self, data: bytes, program: str = "1044", status: str = "On List", **kw: Any) -> requests.Response:
        params = kw.pop("params", {"format": "csv", "programMemberStatus": status})
        return self.upload(f"/bulk/v1/program/{program}/members/import.json", data, params=params, **kw)

    def lead_status(self, batch_id: int) -> dict[str, Any]:
        body = self.get(f"/bulk/v1/leads/batch/{batch_id}.json").json()
        assert body["success"] is True, body
        return body["result"][0]


def batch_of(response: requests.Response) -> int:
    body = response.json()
    assert body["success"] is True, body
    return int(body["result"][0]["batchId"])


def error_of(response: requests.Response) -> tuple[str, str]:
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False, body
    assert REQUEST_ID.match(body["requestId"])
    return body["errors"][0]["code"], body["errors"][0]["message"]


# --------------------------------------------------------------------------- identity


class TestIdentity:
    def test_same_token_until_expiry_with_remaining_lifetime(self, make_api: Callable[..., Api]) -> None:
        """Identity returns one token and counts its expires_in down, by GET, POST query or POST form."""
        clock = ManualClock()
        api = make_api(clock=clock)
        first = api.identity().json()
        assert first["token_type"] == "bearer" and first["scope"] and first["expires_in"] == 3600
        assert re.match(r"^[0-9a-f-]{36}:int$", first["access_token"])
        clock.advance(10.4)
        again = api.identity("POST").json()
        assert (again["access_token"], again["expires_in"]) == (first["access_token"], 3589)
        via_query = api.http.post(
            api.sim.identity_url + "/oauth/token",
            params={"grant_type": "client_credentials", "client_id": CID, "client_secret": SECRET},
        ).json()
        assert via_query["access_token"] == first["access_token"]
        clock.advance(3590)
        fresh = api.identity().json()
        assert fresh["access_token"] != first["access_token"] and fresh["expires_in"] == 3600

    def test_bad_credentials_get_401_oauth_body(self, make_api: Callable[..., Api]) -> None:
        """Wrong client_secret → HTTP 401 invalid_client, not the Marketo envelope."""
        api = make_api()
        r = api.identity(client_secret="nope")
        assert r.status_code == 401
        assert r.json() == {"error": "invalid_client", "error_description": "Bad client credentials"}
        missing = api.http.get(api.sim.identity_url + "/oauth/token", params={"grant_type": "client_credentials"})
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        assert api.identity(grant_type="password").status_code == 400

    def test_expired_token_gets_602_then_601(self, make_api: Callable[..., Api]) -> None:
        """A token used after expiry answers 602 once, then 601; Identity then mints a new one."""
        clock = ManualClock()
        api = make_api(clock=clock, token_ttl=60)
        old = api.token()
        clock.advance(60)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", old)) == ("602", "Access token expired")
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", old)) == ("601", "Access token invalid")
        new = api.identity().json()["access_token"]
        assert new != old
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", new))[0] == "1003"  # authenticated: batch unknown

    def test_expire_token_and_unknown_and_missing_tokens(self, make_api: Callable[..., Api]) -> None:
        """expire_token() forces 602 then 601; a made-up token is 601; no token at all is 600."""
        api = make_api()
        token = api.token()
        api.sim.expire_token()
        codes = [error_of(api.get("/bulk/v1/leads/batch/1.json", token))[0] for _ in range(2)]
        assert codes == ["602", "601"]
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", "made-up:int"))[0] == "601"
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", headers={"X": "y"}))[0] == "600"

    def test_zero_expires_in_then_really_expires(self, make_api: Callable[..., Api]) -> None:
        """zero_expires_in: a live token is answered with 0 and dies within a second; the next one is fresh."""
        clock = ManualClock()
        api = make_api(clock=clock, zero_expires_in=True)
        inherited = api.identity().json()
        assert inherited["expires_in"] == 0
        clock.advance(1.0)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", inherited["access_token"]))[0] == "602"
        first = api.identity().json()
        assert first["access_token"] != inherited["access_token"] and first["expires_in"] == 3600
        clock.advance(5)
        zero = api.identity().json()
        assert (zero["access_token"], zero["expires_in"]) == (first["access_token"], 0)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", first["access_token"]))[0] == "1003"
        clock.advance(1.0)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json", first["access_token"]))[0] == "602"
        fresh = api.identity().json()
        assert fresh["access_token"] != first["access_token"] and fresh["expires_in"] == 3600

    def test_injected_expires_in_0_applies_once(self, make_api: Callable[..., Api]) -> None:
        """inject("expires_in_0") answers the next grant with 0 even for a brand-new token."""
        clock = ManualClock()
        api = make_api(clock=clock)
        api.sim.inject("expires_in_0")
        dying = api.identity().json()
        assert dying["expires_in"] == 0
        clock.advance(1.0)
        fresh = api.identity().json()
        assert fresh["expires_in"] == 3600 and fresh["access_token"] != dying["access_token"]

    def test_query_and_form_tokens_are_toggles(self, make_api: Callable[..., Api]) -> None:
        """?access_token= and a multipart access_token get 601 unless allowed; the log says where it came from."""
        strict = make_api()
        token = strict.token()
        r = strict.get("/bulk/v1/leads/batch/1.json", headers={}, params={"access_token": token})
        assert error_of(r)[0] == "601"
        r = strict.leads(SEED_LEADS, headers={}, form={"access_token": token})
        assert error_of(r)[0] == "601"
        logged = [c for c in strict.sim.calls() if c["endpoint"] != "identity"]
        assert [c["auth"] for c in logged] == ["query", "form"]
        assert logged[0]["query"] == {"access_token": "<redacted>"}
        assert all(token not in json.dumps(c) and SECRET not in json.dumps(c) for c in strict.sim.calls())

        lenient = make_api(accept_query_token=True, accept_form_token=True)
        token = lenient.token()
        r = lenient.get("/bulk/v1/leads/batch/1.json", headers={}, params={"access_token": token})
        assert error_of(r)[0] == "1003"  # past authentication
        assert batch_of(lenient.leads(SEED_LEADS, headers={}, form={"access_token": token}))


# --------------------------------------------------------------------------- shapes


class TestResponseShapes:
    def test_leads_create_and_status_match_the_docs(self, make_api: Callable[..., Api]) -> None:
        """Seed 000's file: create has batchId/importId/status; status has the documented keys and message."""
        api = make_api()
        created = api.leads(SEED_LEADS).json()
        assert REQUEST_ID.match(created["requestId"]) and created["success"] is True
        (result,) = created["result"]
        assert result == {"batchId": result["batchId"], "importId": str(result["batchId"]), "status": "Queued"}
        assert api.sim.wait_idle(5)
        status = api.lead_status(result["batchId"])
        assert status == {
            "batchId": result["batchId"],
            "importId": str(result["batchId"]),
            "status": "Complete",
            "numOfLeadsProcessed": 3,
            "numOfRowsFailed": 0,
            "numOfRowsWithWarning": 0,
            "message": "Import succeeded, 3 records imported (3 members)",
        }

    def test_custom_object_create_and_status_match_the_docs(self, make_api: Callable[..., Api]) -> None:
        """Seed 004: no importId on create; status has operation, objectApiName, numOfObjectsProcessed, importTime."""
        api = make_api()
        (created,) = api.cars(SEED_CARS).json()["result"]
        assert created == {"batchId": created["batchId"], "status": "Queued", "objectApiName": "car_c"}
        assert api.sim.wait_idle(5)
        body = api.get(f"/bulk/v1/customobjects/car_c/import/{created['batchId']}/status.json").json()
        (status,) = body["result"]
        assert list(status) == [
            "batchId", "operation", "status", "objectApiName", "numOfObjectsProcessed",
            "numOfRowsFailed", "numOfRowsWithWarning", "importTime", "message",
        ]  # fmt: skip
        assert status["operation"] == "import" and status["status"] == "Complete"
        assert status["numOfObjectsProcessed"] == 3 and status["numOfRowsFailed"] == 0
        assert re.match(r"^\d+ second\(s\)$", status["importTime"])
        assert status["message"] == "Import succeeded, 3 records imported (3 members)"
        wrong_object = api.get(f"/bulk/v1/customobjects/other_c/import/{created['batchId']}/status.json")
        assert error_of(wrong_object)[0] == "1003"

    def test_program_member_warning_row_is_still_imported(self, make_api: Callable[..., Api]) -> None:
        """The docs' INVALID_EMAIL example: a warning, the row imported, the warnings file verbatim."""
        api = make_api()
        data = (
            b"firstName,lastName,email,title,company,leadScore\n"
            b"Aerys,Targaryen,INVALID_EMAIL,Targaryen,House Targaryen,0\n"
        )
        (created,) = api.members(data).json()["result"]
        batch = created["batchId"]
        assert created == {"batchId": batch, "importId": str(batch), "status": "Queued"}
        assert api.sim.wait_idle(5)
        (status,) = api.get(f"/bulk/v1/program/members/import/{batch}/status.json").json()["result"]
        assert status["numOfLeadsProcessed"] == 1 and status["numOfRowsWithWarning"] == 1
        assert status["message"] == "Import succeeded, 1 records imported (1 members), 1 warning."
        warnings = api.get(f"/bulk/v1/program/members/import/{batch}/warnings.json")
        assert warnings.headers["Content-Type"] == "text/csv;charset=UTF-8"
        assert warnings.text == (
            "firstName,lastName,email,title,company,leadScore,Import Warning Reason\n"
            "Aerys,Targaryen,INVALID_EMAIL,Targaryen,House Targaryen,0,Invalid email address\n"
        )
        (row,) = api.sim.imported_rows("programmember")
        assert row["batchId"] == batch and row["row"]["email"] == "INVALID_EMAIL"

    def test_program_member_type_failure_uses_display_name(self, make_api: Callable[..., Api]) -> None:
        """The docs' TEXT_VALUE_IN_INTEGER_FIELD example fails with "Invalid data type in field Lead Score"."""
        api = make_api()
        data = (
            b"firstName,lastName,email,title,company,leadScore\n"
            b"Aerys,Targaryen,Aerys@Targaryen.com,Targaryen,House Targaryen,TEXT_VALUE_IN_INTEGER_FIELD\n"
        )
        batch = batch_of(api.members(data))
        assert api.sim.wait_idle(5)
        failures = api.get(f"/bulk/v1/program/members/import/{batch}/failures.json")
        assert failures.text == (
            "firstName,lastName,email,title,company,leadScore,Import Failure Reason\n"
            "Aerys,Targaryen,Aerys@Targaryen.com,Targaryen,House Targaryen,TEXT_VALUE_IN_INTEGER_FIELD,"
            "Invalid data type in field Lead Score\n"
        )
        assert api.sim.imported_rows() == []

    def test_program_member_status_decoding_and_checks(self, make_api: Callable[..., Api]) -> None:
        """programMemberStatus arrives as On%20List, On+List or a form field; unknown status 1025, program 1013."""
        api = make_api(programs={1044: {"name": "P", "channel": "List"}}, channels={"List": ["Member", "On List"]})
        data = b"email\na@example.com\n"
        path = "/bulk/v1/program/1044/members/import.json"
        assert batch_of(api.members(data))  # requests encodes the space as %20
        plus = api.http.post(api.sim.base_url + path + "?format=csv&programMemberStatus=On+List",
                             files={"file": ("m.csv", data)}, headers=api.auth())  # fmt: skip
        assert batch_of(plus)
        assert batch_of(api.members(data, params={}, form={"format": "csv", "programMemberStatus": "On List"}))
        assert error_of(api.members(data, status="Gone"))[0] == "1025"
        assert error_of(api.members(data, program="999"))[0] == "1013"
        assert error_of(api.members(data, params={"format": "csv"}))[0] == "701"
        statuses = {s["params"]["programMemberStatus"] for s in api.sim.submissions()}
        assert statuses == {"On List"}


# --------------------------------------------------------------------------- parameters and routing


class TestParamsAndRouting:
    def test_params_from_query_or_form_any_case_default_csv(self, make_api: Callable[..., Api]) -> None:
        """format/lookupField/listId work as query or form fields; format ignores case and defaults to csv."""
        api = make_api(lists=[77])
        tsv = b"email\tfirstName\na@example.com\tA\n"
        api.leads(tsv, params={}, form={"format": "TSV", "lookupField": "email", "listId": "77"})
        api.leads(SEED_LEADS, params={"format": "CSV"})
        api.leads(SEED_LEADS, params={})
        first, second, third = api.sim.submissions()
        assert first["params"] == {"format": "tsv", "lookupField": "email", "listId": 77, "partitionName": None}
        assert first["param_sources"]["format"] == "form" and first["header"] == ["email", "firstName"]
        assert second["params"]["format"] == "csv" and second["param_sources"]["format"] == "query"
        assert third["param_sources"]["format"] == "default"
        assert error_of(api.leads(SEED_LEADS, params={"format": "xls"}))[0] == "1001"
        assert error_of(api.leads(SEED_LEADS, params={"format": "csv", "listId": "5"}))[0] == "1013"

    def test_unknown_paths_and_wrong_methods(self, make_api: Callable[..., Api]) -> None:
        """A /rest prefix or a missing .json is 610 with HTTP 200; a GET on the import path is 605."""
        api = make_api()
        assert error_of(api.http.post(api.sim.base_url + "/rest/bulk/v1/leads.json", headers=api.auth()))[0] == "610"
        assert error_of(api.get("/bulk/v1/leads/batch/1"))[0] == "610"
        assert error_of(api.get("/bulk/v1/leads.json"))[0] == "605"
        assert api.get("/bulk/v1/leads/batch/1/failures.json").json()["errors"][0]["code"] == "1003"

    def test_non_multipart_is_612_and_garbage_is_613(self, make_api: Callable[..., Api]) -> None:
        """A JSON body gets 612; a multipart content type with no boundary in the body gets 613."""
        api = make_api()
        url = api.sim.base_url + "/bulk/v1/leads.json?format=csv"
        assert error_of(api.http.post(url, json={"a": 1}, headers=api.auth()))[0] == "612"
        headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=XyZ"}
        garbage = api.http.post(url, data=b"no parts here", headers=headers)
        assert error_of(garbage)[0] == "613"
        assert api.sim.submissions() == []

    def test_sloppy_multipart_and_chunked_bodies_are_accepted(self, make_api: Callable[..., Api]) -> None:
        """Marketo's Java sample (text/plain part, odd CTE, no closing --) and a chunked body both import."""
        api = make_api()
        body = (
            b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="leads.csv"\r\n'
            b'Content-type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: text/plain\r\n\r\n'
            + SEED_LEADS
            + b"\r\n--BOUNDARY\r\n"
        )
        headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=BOUNDARY"}
        url = api.sim.base_url + "/bulk/v1/leads.json?format=csv"
        assert batch_of(api.http.post(url, data=body, headers=headers))
        chunked = api.http.post(url, data=iter([body[:50], body[50:]]), headers=headers)
        assert batch_of(chunked)
        assert [s["rows"] for s in api.sim.submissions()] == [3, 3]


# --------------------------------------------------------------------------- queue


class TestQueue:
    def test_two_importing_ten_open_then_1016_and_fifo(self, make_api: Callable[..., Api]) -> None:
        """10 open jobs (2 importing) fill the queue; the 11th gets 1016; slots free in FIFO order."""
        clock = ManualClock()
        api = make_api(clock=clock, instant=False, queued_seconds=0, import_seconds_per_job=100,
                       import_seconds_per_row=0)  # fmt: skip
        ids = [batch_of(api.leads(SEED_LEADS)) for _ in range(5)]
        ids += [batch_of(api.cars(SEED_CARS)) for _ in range(5)]
        statuses = {s["batchId"]: s["status"] for s in api.sim.submissions()}
        assert [statuses[i] for i in ids] == ["Importing"] * 2 + ["Queued"] * 8
        assert error_of(api.leads(SEED_LEADS)) == ("1016", QUEUE_FULL)
        clock.advance(100)
        statuses = {s["batchId"]: s["status"] for s in api.sim.submissions()}
        assert [statuses[i] for i in ids] == ["Complete"] * 2 + ["Importing"] * 2 + ["Queued"] * 6
        assert batch_of(api.leads(SEED_LEADS)) and batch_of(api.cars(SEED_CARS))
        assert error_of(api.cars(SEED_CARS))[0] == "1016"
        clock.advance(500)
        assert api.sim.wait_idle(2)
        started = sorted(api.sim.submissions(), key=lambda s: s["started_at"])
        assert [s["batchId"] for s in started] == sorted(s["batchId"] for s in started)

    def test_queued_dwell_and_growing_counters(self, make_api: Callable[..., Api]) -> None:
        """A job sits queued_seconds in Queued, then its counters grow while Importing."""
        clock = ManualClock()
        api = make_api(clock=clock, instant=False, queued_seconds=5, import_seconds_per_job=0,
                       import_seconds_per_row=1)  # fmt: skip
        rows = b"email\n" + b"".join(b"u%d@example.com\n" % i for i in range(10))
        batch = batch_of(api.leads(rows))
        clock.advance(4.9)
        assert api.lead_status(batch)["status"] == "Queued"
        clock.advance(0.1 + 4)
        half = api.lead_status(batch)
        assert half["status"] == "Importing" and half["numOfLeadsProcessed"] == 4
        clock.advance(6)
        assert api.lead_status(batch)["status"] == "Complete"
        history = [h["status"] for h in api.sim.job(batch)["history"]]
        assert history == ["Queued", "Importing", "Complete"]

    def test_background_jobs_hold_slots_but_stay_private(self, make_api: Callable[..., Api]) -> None:
        """Other integrations' jobs count toward the 10 open; they never show in submissions()."""
        clock = ManualClock()
        api = make_api(clock=clock)
        assert len(api.sim.add_background_jobs(10, seconds=30)) == 10
        assert error_of(api.leads(SEED_LEADS))[0] == "1016"
        clock.advance(30)
        batch = batch_of(api.leads(SEED_LEADS))
        assert api.lead_status(batch)["status"] == "Queued"
        clock.advance(120)
        assert api.lead_status(batch)["status"] == "Complete"
        assert [s["batchId"] for s in api.sim.submissions()] == [batch]

    def test_list_already_being_imported_is_1019(self, make_api: Callable[..., Api]) -> None:
        """A second leads import into a listId with an open import gets 1019 until the first finishes."""
        clock = ManualClock()
        api = make_api(clock=clock, instant=False, import_seconds_per_job=10)
        assert batch_of(api.leads(SEED_LEADS, params={"format": "csv", "listId": "1009"}))
        assert error_of(api.leads(SEED_LEADS, params={"format": "csv", "listId": "1009"}))[0] == "1019"
        assert batch_of(api.leads(SEED_LEADS, params={"format": "csv", "listId": "1010"}))
        clock.advance(60)
        assert batch_of(api.leads(SEED_LEADS, params={"format": "csv", "listId": "1009"}))

    def test_batch_ids_expire_after_retention(self, make_api: Callable[..., Api]) -> None:
        """A batchId answers for 7 days, then is unknown."""
        clock = ManualClock()
        api = make_api(clock=clock)
        batch = batch_of(api.leads(SEED_LEADS))
        clock.advance(7 * 86400)
        api._token = None
        assert api.lead_status(batch)["status"] == "Complete"
        clock.advance(1)
        assert error_of(api.get(f"/bulk/v1/leads/batch/{batch}.json"))[0] == "1003"

    def test_injected_job_failure(self, make_api: Callable[..., Api]) -> None:
        """inject("job_failed") lets the submit succeed and the job end Failed with a message."""
        api = make_api()
        api.sim.inject("job_failed")
        batch = batch_of(api.leads(SEED_LEADS))
        assert api.sim.wait_idle(5)
        status = api.lead_status(batch)
        assert status["status"] == "Failed" and status["message"]
        assert api.get(f"/bulk/v1/leads/batch/{batch}/failures.json").status_code == 404
        assert api.sim.imported_rows() == []


# --------------------------------------------------------------------------- files and rows


class TestFilesAndRows:
    def test_file_must_be_smaller_than_the_limit(self, make_api: Callable[..., Api]) -> None:
        """A file part of max_file_bytes is HTTP 413 with a non-JSON body; one byte less is accepted."""
        api = make_api(max_file_bytes=1000)
        head = b"email\n"
        at_limit = head + b"x" * (1000 - len(head) - 1) + b"\n"
        assert len(at_limit) == 1000
        r = api.leads(at_limit)
        assert r.status_code == 413 and not r.headers["Content-Type"].startswith("application/json")
        with pytest.raises(ValueError):
            r.json()
        assert batch_of(api.leads(at_limit[:-2] + b"\n"))
        huge = api.leads(b"email\n" + b"y" * 3_000_000)
        assert huge.status_code == 413

    def test_empty_and_header_only_files_are_1003(self, make_api: Callable[..., Api]) -> None:
        """A 0-byte file, a blank file and a header-only file are refused with 1003."""
        api = make_api()
        for data in (b"", b"\n\n", b"email,firstName\n"):
            assert error_of(api.leads(data)) == ("1003", "Empty file")
        assert api.sim.submissions() == []

    def test_seed_vin_header_fails_every_row(self, make_api: Callable[..., Api]) -> None:
        """Seed 004: header " vin" lacks the dedupe field, so 3 rows fail missing.dedupe.fields."""
        api = make_api()
        data = SEED_CARS.replace(b",vin\n", b", vin\n", 1)
        batch = batch_of(api.cars(data))
        assert api.sim.wait_idle(5)
        (status,) = api.get(f"/bulk/v1/customobjects/car_c/import/{batch}/status.json").json()["result"]
        assert (status["numOfObjectsProcessed"], status["numOfRowsFailed"]) == (0, 3)
        assert status["message"] == "Import completed with errors, 0 records imported (0 members), 3 failed"
        failures = api.get(f"/bulk/v1/customobjects/car_c/import/{batch}/failures.json")
        assert failures.headers["Content-Type"] == "text/csv;charset=UTF-8"
        assert failures.content == (
            b"color,make,model, vin,Import Failure Reason\n"
            b"red,bmw,2002,WBA4R7C55HK895912,missing.dedupe.fields\n"
            b"yellow,bmw,320i,WBA4R7C30HK896061,missing.dedupe.fields\n"
            b"blue,bmw,325i,WBS3U9C52HP970604,missing.dedupe.fields\n"
        )
        assert api.get(f"/bulk/v1/customobjects/car_c/import/{batch}/warnings.json").status_code == 404

    def test_lead_with_empty_lookup_value_fails(self, make_api: Callable[..., Api]) -> None:
        """P1's example: an empty email fails "Value for lookup field 'email' not found"; others import."""
        api = make_api()
        data = b"firstName,lastName,phone,email\nBenji,Nordstrom,212-555-2323,\nAnn,Lee,1,ann@example.com\n"
        batch = batch_of(api.leads(data))
        assert api.sim.wait_idle(5)
        status = api.lead_status(batch)
        assert (status["numOfLeadsProcessed"], status["numOfRowsFailed"]) == (1, 1)
        assert api.get(f"/bulk/v1/leads/batch/{batch}/failures.json").text == (
            "firstName,lastName,phone,email,Import Failure Reason\n"
            "Benji,Nordstrom,212-555-2323,,Value for lookup field 'email' not found\n"
        )
        assert [r["row"]["email"] for r in api.sim.imported_rows("leads")] == ["ann@example.com"]

    def test_failure_file_quirk_drops_the_empty_last_lookup_column(self, make_api: Callable[..., Api]) -> None:
        """Quirk mode reproduces P1's failure file, which lost the trailing email column."""
        api = make_api(failure_file_quirk=True)
        batch = batch_of(api.leads(b"firstName,lastName,phone,email\nBenji,Nordstrom,212-555-2323,\n"))
        assert api.sim.wait_idle(5)
        assert api.get(f"/bulk/v1/leads/batch/{batch}/failures.json").text == (
            "firstName,lastName,phone,Import Failure Reason\n"
            "Benji,Nordstrom,212-555-2323,Value for lookup field 'email' not found\n"
        )

    def test_header_is_verbatim_bom_included(self, make_api: Callable[..., Api]) -> None:
        """A UTF-8 BOM stays part of the first column name: 1006 when rejecting, lookup failure when ignoring."""
        data = "\ufeffemail,firstName\na@example.com,A\n".encode()
        strict = make_api()
        assert error_of(strict.leads(data)) == ("1006", "Field '\ufeffemail' not found")
        lax = make_api(unknown_fields="ignore")
        batch = batch_of(lax.leads(data))
        assert lax.sim.wait_idle(5)
        assert lax.lead_status(batch)["numOfRowsFailed"] == 1
        assert lax.sim.submissions()[0]["header"] == ["\ufeffemail", "firstName"]

    def test_delimiters_quoting_and_report_format(self, make_api: Callable[..., Api]) -> None:
        """ssv rows with quoted ; and CR/LF import intact; the failures file uses the job's delimiter."""
        api = make_api()
        data = (
            b'email;firstName;leadScore\r\na@example.com;"Ann; ""Jr""\r\nsecond line";1\r\nb@example.com;Bob;high\r\n'
        )
        batch = batch_of(api.leads(data, params={"format": "ssv"}))
        assert api.sim.wait_idle(5)
        (row,) = api.sim.imported_rows()
        assert row["row"] == {"email": "a@example.com", "firstName": 'Ann; "Jr"\r\nsecond line', "leadScore": "1"}
        assert api.get(f"/bulk/v1/leads/batch/{batch}/failures.json").text == (
            "email;firstName;leadScore;Import Failure Reason\n"
            "b@example.com;Bob;high;Invalid data type in field Lead Score\n"
        )

    def test_no_rows_means_404_or_empty_200(self, make_api: Callable[..., Api]) -> None:
        """No failures → 404 by default, 200 with an empty body with failures_404=False; also before Complete."""
        clock = ManualClock()
        api = make_api(clock=clock, instant=False, import_seconds_per_job=10)
        failing = batch_of(api.leads(b"email\n\n,\n"))
        assert api.get(f"/bulk/v1/leads/batch/{failing}/failures.json").status_code == 404  # not finished yet
        clock.advance(60)
        assert api.get(f"/bulk/v1/leads/batch/{failing}/failures.json").status_code == 200
        clean = batch_of(api.leads(SEED_LEADS))
        clock.advance(60)
        assert api.get(f"/bulk/v1/leads/batch/{clean}/failures.json").status_code == 404
        lax = make_api(failures_404=False)
        batch = batch_of(lax.leads(SEED_LEADS))
        assert lax.sim.wait_idle(5)
        empty = lax.get(f"/bulk/v1/leads/batch/{batch}/warnings.json")
        assert (empty.status_code, empty.content) == (200, b"")

    def test_unknown_columns_rejected_or_ignored(self, make_api: Callable[..., Api]) -> None:
        """An unknown header column is 1006 at submit by default; lead names match case-insensitively."""
        api = make_api()
        assert error_of(api.leads(b"email,shoeSize\na@example.com,9\n")) == ("1006", "Field 'shoeSize' not found")
        assert error_of(api.cars(b"vin,wheels\nX1,4\n"))[0] == "1006"
        assert batch_of(api.leads(SEED_LEADS))  # FirstName,LastName,Email,Company as in the seed
        anyfield = make_api(lead_fields="any")
        assert batch_of(anyfield.leads(b"email,shoeSize\na@example.com,9\n"))


# --------------------------------------------------------------------------- limits


class TestLimits:
    def test_rate_window_606_and_slide(self, make_api: Callable[..., Api]) -> None:
        """The 101st call in 20 s gets 606 with the live text; exempt 601s don't count; the window slides."""
        clock = ManualClock()
        api = make_api(clock=clock)
        for _ in range(30):
            assert error_of(api.get("/bulk/v1/leads/batch/1.json", "bogus"))[0] == "601"
        for _ in range(100):
            assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"
        assert error_of(api.get("/bulk/v1/leads/batch/1.json")) == (
            "606", "Max rate limit '100' exceeded with in '20' secs")  # fmt: skip
        assert api.identity().status_code == 200  # identity is never limited
        clock.advance(19.9)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "606"
        clock.advance(0.1)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"

    def test_concurrency_615(self, make_api: Callable[..., Api]) -> None:
        """With 10 calls in flight, the 11th gets 615 at once."""
        api = make_api()
        token = api.token()
        api.sim.inject("slow:1.0", times=10)
        results: list[int] = []

        def call() -> None:
            with requests.Session() as s:
                s.trust_env = False
                url = api.sim.base_url + "/bulk/v1/leads/batch/1.json"
                r = s.get(url, headers={"Authorization": f"Bearer {token}"})
                results.append(r.status_code)

        threads = [threading.Thread(target=call) for _ in range(10)]
        for t in threads:
            t.start()
        wait_for(lambda: api.sim.in_flight() == 10)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "615"
        for t in threads:
            t.join()
        assert results == [200] * 10
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"

    def test_daily_quota_607_resets_at_cst_midnight(self, make_api: Callable[..., Api]) -> None:
        """After daily_quota counted calls every call gets 607 until 00:00 CST."""
        clock = ManualClock(start=1_700_000_000.0 - (1_700_000_000.0 - 6 * 3600) % 86400 + 3600)
        api = make_api(clock=clock, daily_quota=3, token_ttl=10 * 86400)
        for _ in range(3):
            assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"
        assert error_of(api.get("/bulk/v1/leads/batch/1.json")) == ("607", "Daily quota reached")
        clock.advance(86400 - 3600 - 1)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "607"
        clock.advance(1)
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"


# --------------------------------------------------------------------------- faults


class TestFaults:
    def test_injected_codes_are_counted_and_filtered_by_endpoint(self, make_api: Callable[..., Api]) -> None:
        """inject("606", times=2, endpoint="import") hits the next two imports only."""
        api = make_api()
        api.sim.inject("606", times=2, endpoint="import")
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"
        assert [error_of(api.leads(SEED_LEADS))[0] for _ in range(2)] == ["606", "606"]
        assert batch_of(api.leads(SEED_LEADS))
        assert len(api.sim.submissions()) == 1
        api.sim.inject("http503", endpoint="status")
        r = api.get("/bulk/v1/leads/batch/1.json")
        assert r.status_code == 503 and "json" not in r.headers["Content-Type"]
        api.sim.inject("502", endpoint="identity")
        assert error_of(api.identity())[0] == "502"

    def test_reset_after_processing_creates_the_job(self, make_api: Callable[..., Api]) -> None:
        """The "reset" fault drops the reply of an import that happened: the job exists, the client cannot know."""
        api = make_api()
        api.token()
        api.sim.inject("reset", endpoint="import")
        with pytest.raises(requests.ConnectionError):
            api.leads(SEED_LEADS)
        (job,) = api.sim.submissions()
        last = api.sim.calls()[-1]
        assert last["fault"] == "reset" and last["delivered"] is False and last["code"] == 200
        assert api.lead_status(job["batchId"])["status"] in ("Queued", "Importing", "Complete")

    def test_reset_before_processing_creates_nothing(self, make_api: Callable[..., Api]) -> None:
        """The "reset_before" fault closes the socket before the import is processed."""
        api = make_api()
        api.token()
        api.sim.inject("reset_before", endpoint="import")
        with pytest.raises(requests.ConnectionError):
            api.leads(SEED_LEADS)
        assert api.sim.submissions() == []
        assert batch_of(api.leads(SEED_LEADS))

    def test_slow_delays_the_answer(self, make_api: Callable[..., Api]) -> None:
        """The "slow:0.3" fault answers normally, at least 0.3 s later."""
        api = make_api()
        api.sim.inject("slow:0.3", endpoint="status")
        assert error_of(api.get("/bulk/v1/leads/batch/1.json"))[0] == "1003"
        call = api.sim.calls()[-1]
        assert call["fault"] == "slow:0.3" and call["t_end"] - call["t"] >= 0.3

    def test_random_faults_are_reproducible_with_a_seed(self, make_api: Callable[..., Api]) -> None:
        """The same seed and rates give the same fault sequence; identity is never hit."""

        def run() -> list[str]:
            api = make_api(seed=7, fault_rates={"608": 0.3, "http503": 0.2})
            out = []
            for _ in range(40):
                r = api.get("/bulk/v1/leads/batch/1.json")
                out.append(str(r.status_code) if r.status_code != 200 else r.json()["errors"][0]["code"])
            return out

        first, second = run(), run()
        assert first == second
        assert {"608", "503", "1003"} <= set(first)


# --------------------------------------------------------------------------- record file and CLI


class TestRecordAndCli:
    def test_record_file_has_one_line_per_submission_and_imported_row(
        self, make_api: Callable[..., Api], tmp_path: Path
    ) -> None:
        """record_path gets exactly the accepted submissions and the imported rows, as JSON lines."""
        record = tmp_path / "marketo.jsonl"
        api = make_api(record_path=record)
        error_of(api.leads(b"email\n"))  # refused: not recorded
        batch = batch_of(api.leads(b"email,firstName\na@example.com,A\n,B\n"))
        assert api.sim.wait_idle(5)
        api.sim.stop()
        lines = [json.loads(line) for line in record.read_text("utf-8").splitlines()]
        assert [line["record"] for line in lines] == ["submission", "row"]
        assert lines[0]["batchId"] == batch and lines[0]["header"] == ["email", "firstName"]
        assert lines[0]["rows"] == 2 and lines[0]["kind"] == "leads"
        assert lines[1]["row"] == {"email": "a@example.com", "firstName": "A"}

    def test_cli_prints_port_serves_and_stops_on_sigterm(self, tmp_path: Path) -> None:
        """`python -m dropzone.simulator --port 0` prints its URL, serves Identity, exits 0 on SIGTERM."""
        env = {**os.environ, "DROPZONE_SIM_CLIENT_SECRET": SECRET}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dropzone.simulator", "--port", "0", "--client-id", CID, "--instant"],
            stdout=subprocess.PIPE, env=env, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            with requests.Session() as s:
                s.trust_env = False
                params = {"grant_type": "client_credentials", "client_id": CID, "client_secret": SECRET}
                r = s.get(match.group(1) + "/identity/oauth/token", params=params)
                assert r.status_code == 200 and r.json()["access_token"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def test_cli_config_yaml_then_flags(self, tmp_path: Path) -> None:
        """--config YAML sets schemas, lists and programs; flags override it; the secret may come from the env."""
        from dropzone.simulator.cli import build_parser, config_from_args

        yaml_file = tmp_path / "sim.yaml"
        yaml_file.write_text(
            "custom_objects:\n"
            "  order_c: {fields: [orderId, {name: total, displayName: Total, dataType: currency}], dedupe: [orderId]}\n"
            "lists: [7]\n"
            "programs: {1044: [Member]}\n"
            "rate_limit: 50\n",
            encoding="utf-8",
        )
        args = build_parser().parse_args(
            ["--client-id", CID, "--config", str(yaml_file), "--rate-limit", "5", "--fault-rate", "606=0.0"]
        )
        cfg = config_from_args(args, environ={"DROPZONE_SIM_CLIENT_SECRET": SECRET})
        assert (cfg.client_secret, cfg.rate_limit, cfg.lists, cfg.fault_rates) == (SECRET, 5, [7], {"606": 0.0})
        assert cfg.programs == {1044: ["Member"]} and "order_c" in cfg.custom_objects
        with Simulator(cfg) as sim, requests.Session() as http:
            api = Api(sim)
            api.http = http
            bad = api.upload("/bulk/v1/customobjects/order_c/import.json", b"orderId,total\nA1,cheap\n")
            assert batch_of(bad) and sim.wait_idle(5)
            assert sim.job(batch_of(bad))["outcomes"][0]["failure"] == "Invalid data type in field Total"
        bad_yaml = tmp_path / "bad.yaml"
        bad_yaml.write_text("no_such_knob: 1\n", encoding="utf-8")
        with pytest.raises(ValueError, match="no_such_knob"):
            config_from_args(build_parser().parse_args(["--config", str(bad_yaml)]), environ={})

    def test_cli_refuses_missing_secret(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a secret (flag or env) main() returns 2 and says why."""
        from dropzone.simulator.cli import main

        monkeypatch.delenv("DROPZONE_SIM_CLIENT_SECRET", raising=False)
        assert main(["--client-id", CID]) == 2
        assert "client-secret" in capsys.readouterr().err


# --------------------------------------------------------------------------- a client nobody here wrote


class TestMarketorestpythonCompat:
    def test_marketorestpython_imports_polls_and_reads_failures(
        self, make_api: Callable[..., Api], tmp_path: Path
    ) -> None:
        """marketorestpython 0.5.25 (Bearer header) runs import_lead, status and the failure file unmodified."""
        from marketorestpython.client import MarketoClient

        api = make_api()
        leads = tmp_path / "leads.csv"
        leads.write_bytes(b"email,firstName\na@example.com,A\n,B\n")
        mc = MarketoClient("000-AAA-000", CID, SECRET, max_retry_time=5)
        mc.host = api.sim.base_url
        with warnings.catch_warnings():
            # import_lead opens the file and never closes it; not ours to fix.
            warnings.simplefilter("ignore", ResourceWarning)
            (created,) = mc.execute(method="import_lead", file=str(leads), format="csv", lookupField="email")
        assert created["status"] == "Queued"
        batch = created["batchId"]
        assert api.sim.wait_idle(5)
        (status,) = mc.execute(method="get_import_lead_status", id=batch)
        assert status["status"] == "Complete" and status["numOfRowsFailed"] == 1
        failures = mc.execute(method="get_import_failure_file", id=batch)
        assert failures == "email,firstName,Import Failure Reason\n,B,Value for lookup field 'email' not found\n"
        assert {c["auth"] for c in api.sim.calls() if c["endpoint"] != "identity"} == {"bearer"}
