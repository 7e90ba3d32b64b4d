"""The simulator's describe and target endpoints, over real HTTP on 127.0.0.1 with plain ``requests``.

Each test pins a documented shape (docs/marketo-bulk-import.md §9, seed 004,
Adobe's program-members.md, programs.md, channels.md, error-codes.md) and
checks that the describe agrees with what the import enforces: a client that
trusts the describe is never surprised by the import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from dropzone.simulator import Fault, SimConfig, Simulator
from tests.test_simulator import CID, SECRET, SEED_CARS, Api, ManualClock, batch_of, error_of

NO_ASSETS = "No assets found for the given search criteria."


def ok(response: requests.Response) -> dict[str, Any]:
    """The envelope of a successful call (HTTP 200, success true)."""
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["success"] is True, body
    return body


def record(response: requests.Response) -> dict[str, Any]:
    """The one record of a successful lookup."""
    (found,) = ok(response)["result"]
    assert isinstance(found, dict)
    return found


def by_name(fields: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in fields}


# --------------------------------------------------------------------------- describes


class TestDescribeLeads:
    def test_lists_exactly_what_the_import_enforces(self, make_api: Callable[..., Api]) -> None:
        """describe2 lists the configured lead fields in Describe's shape; a column it omits gets 1006 at import."""
        api = make_api(
            lead_fields=[
                {"name": "id", "displayName": "Id", "dataType": "integer", "updateable": False},
                {"name": "email", "displayName": "Email Address", "dataType": "email"},
                {"name": "score_c", "displayName": "Partner Score", "dataType": "integer"},
                {"name": "region_c", "displayName": "Region", "dataType": "string", "length": 40},
            ]
        )
        lead = record(api.get("/rest/v1/leads/describe2.json"))
        assert lead["name"] == "Lead"
        fields = by_name(lead["fields"])
        assert list(fields) == ["id", "email", "score_c", "region_c"]
        assert fields["email"] == {
            "name": "email",
            "displayName": "Email Address",
            "dataType": "email",
            "length": 255,
            "updateable": True,
            "crmManaged": False,
        }
        assert fields["id"]["updateable"] is False and "length" not in fields["id"]
        assert fields["region_c"]["length"] == 40
        # The documented lookup fields present, then custom string/email/integer fields.
        assert lead["searchableFields"] == [["email"], ["id"], ["score_c"], ["region_c"]]
        assert batch_of(api.leads(b"email,score_c,region_c\na@example.com,5,EMEA\n"))
        assert error_of(api.leads(b"email,firstName\na@example.com,A\n")) == ("1006", "Field 'firstName' not found")

    def test_defaults_and_the_any_mode(self, make_api: Callable[..., Api]) -> None:
        """The default lead fields are described with their display names; lead_fields "any" describes those too."""
        for knobs in ({}, {"lead_fields": "any"}):
            fields = by_name(record(make_api(**knobs).get("/rest/v1/leads/describe2.json"))["fields"])
            assert fields["leadScore"]["displayName"] == "Lead Score" and fields["leadScore"]["dataType"] == "integer"
            assert {"email", "firstName", "company", "externalCompanyId"} <= set(fields)


class TestDescribeCustomObject:
    def test_seed_shape_for_car_c(self, make_api: Callable[..., Api]) -> None:
        """Seed 004's Describe Custom Object: system fields first and not updateable, no crmManaged."""
        api = make_api()
        car = record(api.get("/rest/v1/customobjects/car_c/describe.json"))
        assert {k: car[k] for k in ("name", "displayName", "description", "idField", "dedupeFields")} == {
            "name": "car_c",
            "displayName": "Car",
            "description": "It's a car.",
            "idField": "marketoGUID",
            "dedupeFields": ["vin"],
        }
        assert car["searchableFields"] == [["vin"], ["marketoGUID"]]
        assert "relationships" not in car and car["createdAt"].endswith("Z")
        names = [f["name"] for f in car["fields"]]
        assert names == ["createdAt", "marketoGUID", "updatedAt", "color", "make", "model", "vin"]
        fields = by_name(car["fields"])
        assert fields["marketoGUID"] == {
            "name": "marketoGUID",
            "displayName": "Marketo GUID",
            "dataType": "string",
            "length": 36,
            "updateable": False,
        }
        assert fields["vin"] == {
            "name": "vin",
            "displayName": "VIN",
            "dataType": "string",
            "length": 255,
            "updateable": True,
        }
        assert batch_of(api.cars(SEED_CARS))

    def test_configured_object_and_the_unknown_ones(self, make_api: Callable[..., Api]) -> None:
        """A configured object is described as configured; an unknown apiName is 1013 at describe and at import."""
        relationship = {"field": "leadId", "type": "child", "relatedTo": {"name": "Lead", "field": "id"}}
        api = make_api(
            custom_objects={
                "order_c": {
                    "displayName": "Order",
                    "fields": ["orderId", {"name": "total", "dataType": "currency"}, "leadId"],
                    "dedupe": ["orderId"],
                    "relationships": [relationship],
                }
            }
        )
        order = record(api.get("/rest/v1/customobjects/order_c/describe.json"))
        assert order["displayName"] == "Order" and order["dedupeFields"] == ["orderId"]
        assert order["relationships"] == [relationship]
        assert by_name(order["fields"])["total"] == {
            "name": "total",
            "displayName": "total",
            "dataType": "currency",
            "updateable": True,
        }
        assert error_of(api.get("/rest/v1/customobjects/car_c/describe.json")) == ("1013", "Object not found")
        assert error_of(api.cars(SEED_CARS))[0] == "1013"
        disabled = make_api(custom_objects_enabled=False)
        assert error_of(disabled.get("/rest/v1/customobjects/car_c/describe.json"))[0] == "1026"


class TestDescribeProgramMembers:
    def test_standard_and_custom_fields(self, make_api: Callable[..., Api]) -> None:
        """Adobe's example shape: standard fields not updateable, custom fields updateable and importable."""
        api = make_api(program_member_fields=[{"name": "webinarUrl", "dataType": "url", "length": 2000}])
        members = record(api.get("/rest/v1/programs/members/describe.json"))
        assert members["name"] == "API Program Membership"
        assert members["dedupeFields"] == ["leadId", "programId"]
        assert {"description", "createdAt", "updatedAt"} <= set(members)
        assert ["leadId"] in members["searchableFields"] and ["statusName"] in members["searchableFields"]
        fields = by_name(members["fields"])
        assert fields["statusName"]["updateable"] is False and fields["leadId"]["dataType"] == "integer"
        assert fields["webinarUrl"] == {
            "name": "webinarUrl",
            "displayName": "webinarUrl",
            "dataType": "url",
            "length": 2000,
            "updateable": True,
            "crmManaged": False,
        }
        assert "email" not in fields  # lead fields are describe2's
        assert batch_of(api.members(b"email,webinarUrl\na@example.com,https://example.com/w\n"))
        assert error_of(api.members(b"email,seat_c\na@example.com,12\n")) == ("1006", "Field 'seat_c' not found")


# --------------------------------------------------------------------------- targets


class TestTargets:
    def test_list_by_id(self, make_api: Callable[..., Api]) -> None:
        """Get List by Id: the StaticList record; an unknown id is 1013 there and at import (error-codes.md)."""
        api = make_api(lists={1234: "Uploads", 77: {"name": "Webinar", "programName": "Partner Event"}})
        assert record(api.get("/rest/v1/lists/1234.json")) == {
            "id": 1234,
            "name": "Uploads",
            "description": "",
            "workspaceName": "Default",
            "createdAt": "2024-01-15T09:30:00Z",
            "updatedAt": "2024-06-03T14:05:00Z",
        }
        assert record(api.get("/rest/v1/lists/77.json"))["programName"] == "Partner Event"
        for unknown in ("1001", "0", "9" * 5000):
            assert error_of(api.get(f"/rest/v1/lists/{unknown}.json")) == ("1013", "Object not found")
        assert error_of(api.leads(b"email\na@example.com\n", params={"format": "csv", "listId": "1001"}))[0] == "1013"
        defaults = make_api()
        assert [record(defaults.get(f"/rest/v1/lists/{n}.json"))["id"] for n in (1001, 1010, 1234)] == [
            1001,
            1010,
            1234,
        ]
        assert record(make_api(lists=None).get("/rest/v1/lists/31337.json"))["id"] == 31337

    def test_program_by_id_in_the_asset_envelope(self, make_api: Callable[..., Api]) -> None:
        """Get Program by Id: programs.md's record in the Asset envelope; nothing found is a warning, or 702."""
        api = make_api()
        body = ok(api.get("/rest/asset/v1/program/1044.json"))
        assert body["errors"] == [] and body["warnings"] == []
        (program,) = body["result"]
        assert {k: program[k] for k in ("id", "name", "type", "channel", "status", "workspace")} == {
            "id": 1044,
            "name": "Partner Event",
            "type": "Event",
            "channel": "Event",
            "status": "",
            "workspace": "Default",
        }
        assert program["folder"]["type"] == "Folder" and program["createdAt"].endswith("+0000")
        missing = ok(api.get("/rest/asset/v1/program/4242.json"))
        assert missing["warnings"] == [NO_ASSETS] and missing["errors"] == [] and "result" not in missing
        assert ok(api.get(f"/rest/asset/v1/program/{'7' * 5000}.json"))["warnings"] == [NO_ASSETS]
        strict = make_api(asset_not_found="702")
        assert error_of(strict.get("/rest/asset/v1/program/4242.json"))[0] == "702"

    def test_channel_statuses_decide_the_import(self, make_api: Callable[..., Api]) -> None:
        """A program's channel lists its statuses; an import may use any of them but "Not in Program" (1025)."""
        api = make_api()
        event = record(api.get("/rest/asset/v1/channel/byName.json", params={"name": "Event"}))
        statuses = event["progressionStatuses"]
        assert statuses[0] == {
            "name": "Not in Program",
            "step": 0,
            "description": None,
            "hidden": False,
            "success": False,
        }
        assert [s["step"] for s in statuses] == sorted(s["step"] for s in statuses)
        online = record(api.get("/rest/asset/v1/channel/byName.json", params={"name": "Online Advertising"}))
        assert online["applicableProgramType"] == "program"
        assert [s["name"] for s in online["progressionStatuses"] if s["success"]] == ["Attended"]
        rows = b"email\na@example.com\n"
        assert batch_of(api.members(rows, program="1044", status="On List"))
        assert error_of(api.members(rows, program="1044", status="Not in Program"))[0] == "1025"
        assert error_of(api.members(rows, program="1107", status="On List"))[0] == "1025"
        assert batch_of(api.members(rows, program="1107", status="Registered"))
        assert error_of(api.members(rows, program="4242"))[0] == "1013"
        assert ok(api.get("/rest/asset/v1/channel/byName.json", params={"name": "Nope"}))["warnings"] == [NO_ASSETS]
        assert error_of(api.get("/rest/asset/v1/channel/byName.json"))[0] == "701"

    def test_configured_programs_and_channels(self, make_api: Callable[..., Api]) -> None:
        """programs/channels configure the instance; "Not in Program" is added to a channel that lacks it."""
        api = make_api(
            programs={"2001": {"name": "Webinar Q3", "channel": "Webinar", "type": "Event with Webinar"}},
            channels={"Webinar": ["Registered", {"name": "Attended", "success": True, "step": 40}]},
        )
        program = ok(api.get("/rest/asset/v1/program/2001.json"))["result"][0]
        assert (program["name"], program["channel"]) == ("Webinar Q3", "Webinar")
        webinar = record(api.get("/rest/asset/v1/channel/byName.json", params={"name": "Webinar"}))
        steps = [(s["name"], s["step"], s["success"]) for s in webinar["progressionStatuses"]]
        assert steps == [("Not in Program", 0, False), ("Registered", 10, False), ("Attended", 40, True)]
        assert ok(api.get("/rest/asset/v1/program/1044.json"))["warnings"] == [NO_ASSETS]

    def test_partitions(self, make_api: Callable[..., Api]) -> None:
        """One "Default" partition by default; configured partitions are listed and enforced (1008, 1009)."""
        assert ok(make_api().get("/rest/v1/leads/partitions.json"))["result"] == [
            {"id": 1, "name": "Default", "description": "Initial system lead partition"}
        ]
        api = make_api(partitions=["Default", "EMEA"])
        listed = ok(api.get("/rest/v1/leads/partitions.json"))["result"]
        assert [(p["id"], p["name"]) for p in listed] == [(1, "Default"), (2, "EMEA")]
        rows = b"email\na@example.com\n"
        assert batch_of(api.leads(rows, params={"format": "csv", "partitionName": "EMEA"}))
        assert error_of(api.leads(rows, params={"format": "csv", "partitionName": "APAC"}))[0] == "1008"
        assert error_of(api.leads(rows))[0] == "1009"


# --------------------------------------------------------------------------- like every other endpoint


ALL_PATHS = (
    "/rest/v1/leads/describe2.json",
    "/rest/v1/customobjects/car_c/describe.json",
    "/rest/v1/programs/members/describe.json",
    "/rest/v1/lists/1234.json",
    "/rest/v1/leads/partitions.json",
    "/rest/asset/v1/program/1044.json",
    "/rest/asset/v1/channel/byName.json?name=Event",
)


class TestLikeEveryEndpoint:
    def test_token_method_and_permission_knob(self, make_api: Callable[..., Api]) -> None:
        """No token 600, a bad one 601, POST 605; denied_endpoints answers 603 (in the Asset envelope there)."""
        api = make_api(denied_endpoints=["describe_leads", "program"])
        for path in ALL_PATHS:
            assert error_of(api.get(path, headers={}))[0] == "600"
            assert error_of(api.get(path, token="not-a-token"))[0] == "601"
            assert error_of(api.http.post(api.sim.base_url + path, headers=api.auth()))[0] == "605"
        assert error_of(api.get("/rest/v1/leads/describe2.json")) == ("603", "Access denied")
        denied = api.get("/rest/asset/v1/program/1044.json").json()
        assert denied["success"] is False and denied["errors"][0]["code"] == "603" and denied["warnings"] == []
        assert record(api.get("/rest/v1/lists/1234.json"))["id"] == 1234
        with pytest.raises(ValueError, match="denied_endpoints"):
            SimConfig(client_id=CID, client_secret=SECRET, denied_endpoints=["describe_everything"])

    def test_rate_limit_quota_faults_and_call_log(self, make_api: Callable[..., Api]) -> None:
        """Describe calls count toward the rate window and the day, take faults by name and are logged by name."""
        clock = ManualClock()
        api = make_api(clock=clock, rate_limit=len(ALL_PATHS))
        for path in ALL_PATHS:
            ok(api.get(path))
        assert error_of(api.get("/rest/v1/leads/describe2.json"))[0] == "606"
        assert api.sim.calls_today() == len(ALL_PATHS)
        clock.advance(21)
        api.sim.inject("608", endpoint="channel")
        assert error_of(api.get("/rest/asset/v1/channel/byName.json?name=Event"))[0] == "608"
        api.sim.arm(Fault("refuse", endpoint="list", flavour="permission"))
        assert "Read-Only Lead" in error_of(api.get("/rest/v1/lists/1234.json"))[1]
        logged = [c["endpoint"] for c in api.sim.calls() if c["endpoint"] != "identity"]
        assert logged[: len(ALL_PATHS)] == [
            "describe_leads",
            "describe_customobject",
            "describe_programmember",
            "list",
            "partitions",
            "program",
            "channel",
        ]
        assert logged[-2:] == ["channel", "list"]


# --------------------------------------------------------------------------- configuration


class TestConfiguration:
    def test_yaml_and_flags(self, tmp_path: Path) -> None:
        """--config YAML configures lists, programs, channels and partitions; --deny and --asset-not-found are flags."""
        from dropzone.simulator.cli import build_parser, config_from_args

        yaml_file = tmp_path / "sim.yaml"
        yaml_file.write_text(
            "lists: {500: Imports}\n"
            "programs: {'600': {name: Trade Show, channel: Tradeshow}}\n"
            "channels: {Tradeshow: [Visited Booth, {name: Influenced, success: true}]}\n"
            "partitions: [Default]\n",
            encoding="utf-8",
        )
        argv = ["--client-id", CID, "--config", str(yaml_file), "--deny", "partitions", "--asset-not-found", "702"]
        cfg = config_from_args(build_parser().parse_args(argv), environ={"DROPZONE_SIM_CLIENT_SECRET": SECRET})
        assert (cfg.denied_endpoints, cfg.asset_not_found) == (["partitions"], "702")
        with Simulator(cfg) as sim:
            api = Api(sim)
            try:
                assert record(api.get("/rest/v1/lists/500.json"))["name"] == "Imports"
                assert record(api.get("/rest/asset/v1/program/600.json"))["channel"] == "Tradeshow"
                assert batch_of(api.members(b"email\na@example.com\n", program="600", status="Visited Booth"))
                assert error_of(api.get("/rest/v1/leads/partitions.json"))[0] == "603"
                assert error_of(api.get("/rest/asset/v1/program/601.json"))[0] == "702"
            finally:
                api.close()

    @pytest.mark.parametrize(
        ("knobs", "message"),
        [
            ({"programs": {1: {"name": "P", "channel": "Nope"}}}, "names channel 'Nope'"),
            ({"programs": {"x": {"channel": "Event"}}}, "not a positive integer id"),
            ({"lists": {5: 7}}, "expected a name or a mapping"),
            ({"channels": {}}, "at least one channel"),
            ({"channels": {"C": ["A", "A"]}}, "must be unique"),
            ({"partitions": "Default"}, "list of names"),
            ({"asset_not_found": "404"}, "asset_not_found"),
        ],
    )
    def test_bad_configuration_is_refused_up_front(self, knobs: dict[str, Any], message: str) -> None:
        """A catalogue the simulator cannot serve is a ValueError naming the entry, before any request."""
        with pytest.raises(ValueError, match=message):
            SimConfig(client_id=CID, client_secret=SECRET, **knobs)


# --------------------------------------------------------------------------- a client nobody here wrote


def test_marketorestpython_reads_every_describe(make_api: Callable[..., Api]) -> None:
    """marketorestpython 0.5.25's describe and lookup helpers read the simulator's answers unmodified."""
    from marketorestpython.client import MarketoClient

    api = make_api()
    mc = MarketoClient("000-AAA-000", CID, SECRET, max_retry_time=5)
    mc.host = api.sim.base_url
    assert mc.describe2()[0]["name"] == "Lead"
    assert mc.describe_custom_object("car_c")[0]["dedupeFields"] == ["vin"]
    assert mc.describe_program_member()[0]["name"] == "API Program Membership"
    assert mc.get_lead_partitions()[0]["name"] == "Default"
    assert mc.get_program_by_id(1044)[0]["channel"] == "Event"
    assert mc.get_channel_by_name("Event")[0]["progressionStatuses"][0]["name"] == "Not in Program"
