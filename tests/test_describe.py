"""Reading Marketo's describes and target replies (``dropzone.describe``): documented shapes, hostile ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dropzone import defaults as D
from dropzone import describe
from dropzone.errors import DescribeUnavailableError

# The shapes of the contract doc §9, seed 004 and AdobeDocs channels.md / programs.md.
LEAD2: dict[str, Any] = {
    "requestId": "1#1",
    "success": True,
    "result": [{
        "name": "Lead",
        "searchableFields": [["email"], ["id"], ["sfdcLeadId"]],
        "fields": [
            {"name": "id", "displayName": "Id", "dataType": "integer", "updateable": False, "crmManaged": False},
            {"name": "email", "displayName": "Email Address", "dataType": "email", "length": 255, "updateable": True},
            {"name": "firstName", "displayName": "First Name", "dataType": "string", "length": 255},
        ],
    }],
}
LEAD1 = {"success": True, "result": [
    {"id": 2, "displayName": "Company Name", "dataType": "string", "rest": {"name": "company", "readOnly": False}},
    {"id": 3, "displayName": "Email Address", "dataType": "email", "rest": {"name": "email", "readOnly": False}},
]}
CAR: dict[str, Any] = {"success": True, "result": [{
    "name": "car_c", "displayName": "Car", "idField": "marketoGUID", "dedupeFields": ["vin"],
    "searchableFields": [["vin"], ["marketoGUID"]],
    "relationships": [{"field": "leadId", "type": "child", "relatedTo": {"name": "Lead", "field": "id"}}],
    "fields": [{"name": "createdAt", "dataType": "datetime"}, {"name": "marketoGUID", "dataType": "string"},
               {"name": "color", "displayName": "Color"}, {"name": "vin", "displayName": "VIN"}],
}]}
MEMBERS = {"success": True, "result": [{
    "name": "API Program Membership", "dedupeFields": ["leadId", "programId"], "searchableFields": [["leadId"]],
    "fields": [{"name": "leadId", "dataType": "integer"}, {"name": "membershipDate", "dataType": "datetime"},
               {"name": "webinarUrl_c", "displayName": "Webinar URL"}],
}]}
PROGRAM = {"success": True, "warnings": [], "errors": [], "result": [
    {"id": 1044, "name": "Webinar", "type": "Event", "channel": "Webinar", "workspace": "Default"}]}
NO_ASSET = {"success": True, "errors": [], "warnings": ["No assets found for the given search criteria."]}
CHANNEL = {"success": True, "result": [{"id": 4, "name": "Webinar", "applicableProgramType": "event",
                                        "progressionStatuses": [{"name": "Not in Program", "step": 0},
                                                                {"name": "Registered", "step": 20},
                                                                {"name": "Attended", "step": 40}]}]}
PARTITIONS = {"success": True, "result": [{"id": 1, "name": "Default", "description": "Initial system lead partition"},
                                          {"id": 2, "name": "Europe"}]}
LIST = {"success": True, "result": [{"id": 1234, "name": "Webinar attendees", "programName": "Webinar"}]}


class TestDocumentedShapes:
    def test_describe2_lists_the_lead_fields_and_their_display_names(self) -> None:
        schema = describe.lead_schema(LEAD2)
        assert schema.fields == ("id", "email", "firstName", "sfdcLeadId")
        assert schema.display["first name"] == "firstName"
        assert schema.what == "lead"

    def test_describe_v1_is_read_too(self) -> None:
        assert describe.lead_schema(LEAD1).fields == ("company", "email")

    def test_a_custom_object_has_its_dedupe_fields_and_its_link_field(self) -> None:
        schema = describe.custom_object_schema(CAR, "car_c")
        assert schema.dedupe == ("vin",)
        assert {"color", "vin", "marketoGUID", "createdAt", "leadId"} <= set(schema.fields)
        assert schema.what == "custom object car_c"

    def test_program_members_take_lead_fields_and_their_own(self) -> None:
        schema = describe.lead_schema(LEAD2).plus(describe.program_member_schema(MEMBERS), "program member")
        assert {"email", "firstName", "leadId", "membershipDate", "webinarUrl_c"} <= set(schema.fields)
        assert schema.display["webinar url"] == "webinarUrl_c"

    def test_targets(self) -> None:
        assert describe.list_exists(LIST, 1234)
        assert not describe.list_exists({"success": True, "result": []}, 1234)
        assert describe.program_channel(PROGRAM, 1044) == "Webinar"
        assert describe.program_channel(NO_ASSET, 1044) is None  # the asset API's "found nothing"
        assert describe.channel_statuses(CHANNEL, "Webinar") == ("Not in Program", "Registered", "Attended")
        assert describe.channel_statuses(NO_ASSET, "Webinar") is None
        assert describe.partition_names(PARTITIONS) == ("Default", "Europe")
        assert describe.custom_object_exists(CAR, "car_c")
        assert not describe.custom_object_exists({"success": True, "result": []}, "car_c")

    def test_ids_may_come_as_strings(self) -> None:
        assert describe.list_exists({"result": [{"id": "1234"}]}, 1234)

    def test_paths(self) -> None:
        assert describe.static_list(1234) == "/rest/v1/lists/1234.json"
        assert describe.program(1044) == "/rest/asset/v1/program/1044.json"
        assert describe.custom_object_describe("car_c") == "/rest/v1/customobjects/car_c/describe.json"


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


HUGE = [{"name": f"f{i}"} for i in range(D.DESCRIBE_MAX_ITEMS + 1)]

#: Replies a proxy, a bug or an attacker could send: each is "describe unavailable", never a crash or a schema.
HOSTILE_LEADS = [
    pytest.param("not a dict", id="not-an-object"),
    pytest.param({"result": "x"}, id="result-not-a-list"),
    pytest.param({"result": [1, 2]}, id="items-not-objects"),
    pytest.param({"result": [{"name": "Lead"}]}, id="no-fields-no-rest"),
    pytest.param({"result": []}, id="nothing-described"),
    pytest.param(_set(LEAD2, ("result", 0, "fields"), {"name": "email"}), id="fields-not-a-list"),
    pytest.param(_set(LEAD2, ("result", 0, "fields"), []), id="no-fields"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), 42), id="name-a-number"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), None), id="name-missing"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), ["email"]), id="name-a-list"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), ""), id="name-empty"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), "x" * 10_000), id="name-huge"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), "ema\x00il"), id="name-with-nul"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1, "name"), "a\ud800"), id="name-lone-surrogate"),
    pytest.param(_set(LEAD2, ("result", 0, "fields"), HUGE), id="huge-field-list"),
    pytest.param(_set(LEAD2, ("result", 0, "searchableFields"), [["a"]] * (D.DESCRIBE_MAX_ITEMS + 1)),
                 id="huge-searchable-list"),
    pytest.param(_set(LEAD2, ("result", 0, "searchableFields"), "email"), id="searchable-not-a-list"),
    pytest.param(_set(LEAD2, ("result", 0, "fields", 1), "email"), id="field-not-an-object"),
    pytest.param({"result": [{"rest": {"name": 7}}]}, id="v1-name-a-number"),
]


@pytest.mark.parametrize("reply", HOSTILE_LEADS)
def test_a_hostile_lead_describe_is_unavailable(reply: Any) -> None:
    with pytest.raises(DescribeUnavailableError) as caught:
        describe.lead_schema(reply)
    assert "lead describe" in caught.value.reason


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(_set(CAR, ("result", 0, "dedupeFields"), "vin"), id="dedupe-not-a-list"),
        pytest.param(_set(CAR, ("result", 0, "dedupeFields"), [None]), id="dedupe-name-null"),
        pytest.param(_set(CAR, ("result", 0, "name"), "boat_c"), id="another-object"),
        pytest.param(_set(CAR, ("result", 0, "name"), 5), id="name-not-a-string"),
        pytest.param(_set(CAR, ("result", 0, "relationships"), [{"field": 3}]), id="link-field-a-number"),
        pytest.param(_set(CAR, ("result", 0, "idField"), {"x": 1}), id="id-field-an-object"),
        pytest.param({"success": True, "result": []}, id="no-such-object"),
    ],
)
def test_a_hostile_custom_object_describe_is_unavailable(reply: Any) -> None:
    with pytest.raises(DescribeUnavailableError):
        describe.custom_object_schema(reply, "car_c")


@pytest.mark.parametrize(
    ("read", "reply"),
    [
        pytest.param(lambda r: describe.list_exists(r, 1234), {"result": [{"id": 99}]}, id="list-another-id"),
        pytest.param(lambda r: describe.list_exists(r, 1234), {"result": {"id": 1234}}, id="list-result-an-object"),
        pytest.param(lambda r: describe.program_channel(r, 1044), {"result": [{"id": 1044}]}, id="program-no-channel"),
        pytest.param(lambda r: describe.program_channel(r, 1044), {"result": [{"id": 1044, "channel": 3}]},
                     id="program-channel-a-number"),
        pytest.param(lambda r: describe.program_channel(r, 1044), {"result": [{"id": True, "channel": "W"}]},
                     id="program-id-a-boolean"),
        pytest.param(lambda r: describe.channel_statuses(r, "Webinar"), {"result": [{"name": "Webinar"}]},
                     id="channel-no-statuses"),
        pytest.param(lambda r: describe.channel_statuses(r, "Webinar"),
                     {"result": [{"name": "Webinar", "progressionStatuses": [{"name": None}]}]},
                     id="status-name-null"),
        pytest.param(lambda r: describe.partition_names(r), {"result": []}, id="no-partitions"),
        pytest.param(lambda r: describe.partition_names(r), {"result": [{"name": 1}]}, id="partition-name-a-number"),
        pytest.param(lambda r: describe.partition_names(r), {"result": [{"name": "p"}] * (D.DESCRIBE_MAX_ITEMS + 1)},
                     id="huge-partition-list"),
        pytest.param(lambda r: describe.custom_object_exists(r, "car_c"), {"result": [{"name": "boat_c"}]},
                     id="another-object"),
    ],
)
def test_a_hostile_target_reply_is_unknown_never_a_verdict(read: Any, reply: Any) -> None:
    with pytest.raises(DescribeUnavailableError):
        read(reply)
