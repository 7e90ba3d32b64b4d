"""The describe and target endpoints (pure): Marketo's documented result records, built from
the very schemas and catalogue the imports check against.

Owns the records of Describe Lead2, Describe Custom Object, Describe Program
Member, Get List by Id, Get Lead Partitions, Get Program by Id and Get Channel
by Name, and what each answers for something that does not exist. Knows
nothing of tokens, limits or envelopes: ``state`` wraps the ``Answer``.

Shapes: leads/program members as docs §9 and Adobe's program-members.md;
custom objects as seed 004 (system fields first, no ``crmManaged``, no
``relationships`` unless configured); programs and channels as programs.md and
channels.md; lists as the swagger's StaticList; partitions as LeadPartition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import codes
from .catalog import Catalog, Channel, Program, StaticList, parse_id
from .config import DEFAULT_LEAD_FIELDS, DEFAULT_LENGTHS, FieldSpec, SimConfig
from .imports import Schemas
from .rows import CustomObjectSchema

# Fixed timestamps: the simulated instance was set up once, long ago.
_CREATED = "2024-01-15T09:30:00Z"
_UPDATED = "2024-06-03T14:05:00Z"
# The Asset API writes its offset after the Z (programs.md, channels.md).
_ASSET_CREATED = _CREATED + "+0000"
_ASSET_UPDATED = _UPDATED + "+0000"
_PROGRAM_FOLDER = {"type": "Folder", "value": 15, "folderName": "Marketing Activities"}

# Standard lead fields the docs allow as lookupField (bulk-lead-import.md), hence searchable.
_LEAD_LOOKUPS = (
    "email",
    "id",
    "cookies",
    "twitterId",
    "facebookId",
    "linkedInId",
    "sfdcAccountId",
    "sfdcContactId",
    "sfdcLeadId",
    "sfdcLeadOwnerId",
    "sfdcOpptyId",
)
# "Custom fields (string, email, integer)" may be a lookupField too.
_CUSTOM_LOOKUP_TYPES = frozenset({"string", "email", "integer"})

# Custom-object system fields, in seed 004's order.
_CO_SYSTEM_FIELDS = (
    {"name": "createdAt", "displayName": "Created At", "dataType": "datetime", "updateable": False},
    {"name": "marketoGUID", "displayName": "Marketo GUID", "dataType": "string", "length": 36, "updateable": False},
    {"name": "updatedAt", "displayName": "Updated At", "dataType": "datetime", "updateable": False},
)
_CO_ID_FIELD = "marketoGUID"

# Standard program-member fields of Adobe's Describe Program Member example: none updateable.
_PM_STANDARD = (
    ("acquiredBy", "boolean", None),
    ("attendanceLikelihood", "integer", None),
    ("createdAt", "datetime", None),
    ("isExhausted", "boolean", None),
    ("leadId", "integer", None),
    ("membershipDate", "datetime", None),
    ("nurtureCadence", "string", 4),
    ("program", "string", 255),
    ("programId", "integer", None),
    ("reachedSuccess", "boolean", None),
    ("reachedSuccessDate", "datetime", None),
    ("registrationLikelihood", "integer", None),
    ("statusName", "string", 255),
    ("statusReason", "string", 255),
    ("trackName", "string", 255),
    ("updatedAt", "datetime", None),
    ("waitlistPriority", "integer", None),
)
_PM_SEARCHABLE = ("leadId", "reachedSuccess", "statusName")
_PM_DEDUPE = ["leadId", "programId"]


@dataclass(frozen=True)
class Answer:
    """What an endpoint found: result records, or an error (code, message), plus Asset API warnings.

    ``result`` None with no error is the Asset API's "nothing found": the key is left out.
    """

    result: list[dict[str, Any]] | None = None
    error: tuple[str, str] | None = None
    warnings: tuple[str, ...] = ()


def answer(
    endpoint: str, path: Mapping[str, str], query: Mapping[str, str], schemas: Schemas, cfg: SimConfig
) -> Answer:
    """The answer of one describe or target endpoint (``codes.DESCRIBE_ENDPOINTS``)."""
    found: Catalog = schemas.catalog
    if endpoint == "describe_leads":
        return Answer([describe_leads(schemas.lead_fields)])
    if endpoint == "describe_programmember":
        return Answer([describe_program_members(schemas.program_member_fields)])
    if endpoint == "describe_customobject":
        if not cfg.custom_objects_enabled:
            return _error("1026")
        schema = schemas.custom_objects.get(path["apiName"])
        return _error("1013") if schema is None else Answer([describe_custom_object(schema)])
    if endpoint == "partitions":
        return Answer([{"id": p.id, "name": p.name, "description": p.description} for p in found.lead_partitions()])
    if endpoint == "list":
        list_id = parse_id(path["listId"])
        listed = None if list_id is None else found.static_list(list_id)
        return _error("1013") if listed is None else Answer([static_list(listed)])
    if endpoint == "program":
        program = found.program(path["programId"])
        return _not_found(cfg) if program is None else Answer([program_record(program)])
    if endpoint == "channel":
        name = query.get("name", "")
        if not name:
            return _error("701", name="name")
        channel = found.channel(name)
        return _not_found(cfg) if channel is None else Answer([channel_record(channel)])
    raise ValueError(f"not a describe endpoint: {endpoint!r}")


def describe_leads(fields: Mapping[str, FieldSpec]) -> dict[str, Any]:
    """Describe Lead2: exactly the fields an import accepts (the defaults when any column is)."""
    searchable = [name for name in _LEAD_LOOKUPS if name in fields]
    searchable += [
        name
        for name, spec in fields.items()
        if name not in DEFAULT_LEAD_FIELDS and spec.data_type in _CUSTOM_LOOKUP_TYPES and name not in searchable
    ]
    return {
        "name": "Lead",
        "searchableFields": [[name] for name in searchable],
        "fields": [_field(spec, crm=True) for spec in fields.values()],
    }


def describe_program_members(custom_fields: Mapping[str, FieldSpec]) -> dict[str, Any]:
    """Describe Program Member: the standard fields, then the custom ones (lead fields are Describe Lead2's)."""
    custom = list(custom_fields.values())
    standard = {name: FieldSpec(name, name, kind, length, updateable=False) for name, kind, length in _PM_STANDARD}
    for spec in custom:
        standard.pop(spec.name, None)
    searchable = ["leadId", *[s.name for s in custom if s.data_type in ("string", "integer")]]
    searchable += [name for name in _PM_SEARCHABLE if name not in searchable]
    return {
        "name": "API Program Membership",
        "description": "Map for API program membership fields",
        "createdAt": _CREATED,
        "updatedAt": _UPDATED,
        "dedupeFields": list(_PM_DEDUPE),
        "searchableFields": [[name] for name in searchable],
        "fields": [_field(spec, crm=True) for spec in [*standard.values(), *custom]],
    }


def describe_custom_object(schema: CustomObjectSchema) -> dict[str, Any]:
    """Describe Custom Object, in seed 004's shape."""
    configured = [_field(spec, crm=False) for name, spec in schema.fields.items() if name not in _system_names()]
    record: dict[str, Any] = {
        "name": schema.api_name,
        "displayName": schema.display_name or schema.api_name,
        "description": schema.description,
        "createdAt": _CREATED,
        "updatedAt": _UPDATED,
        "idField": _CO_ID_FIELD,
        "dedupeFields": list(schema.dedupe),
        "searchableFields": [list(schema.dedupe), [_CO_ID_FIELD]] if schema.dedupe else [[_CO_ID_FIELD]],
    }
    if schema.relationships:
        record["relationships"] = [dict(r) for r in schema.relationships]
    record["fields"] = [dict(f) for f in _CO_SYSTEM_FIELDS] + configured
    return record


def static_list(found: StaticList) -> dict[str, Any]:
    record: dict[str, Any] = {"id": found.id, "name": found.name, "description": found.description}
    if found.program_name is not None:
        record["programName"] = found.program_name
    record.update(workspaceName=found.workspace, createdAt=_CREATED, updatedAt=_UPDATED)
    return record


def program_record(program: Program) -> dict[str, Any]:
    """Get Program by Id's record (programs.md)."""
    return {
        "id": program.id,
        "name": program.name,
        "description": program.description,
        "createdAt": _ASSET_CREATED,
        "updatedAt": _ASSET_UPDATED,
        "url": f"https://app-sim.marketo.com/#PG{program.id}A1",
        "type": program.type,
        "channel": program.channel,
        "folder": dict(_PROGRAM_FOLDER),
        "status": "",
        "workspace": program.workspace,
        "tags": [],
        "costs": None,
        "headStart": False,
    }


def channel_record(channel: Channel) -> dict[str, Any]:
    """Get Channel by Name's record (channels.md)."""
    return {
        "id": channel.id,
        "name": channel.name,
        "applicableProgramType": channel.program_type,
        "progressionStatuses": [
            {"name": s.name, "step": s.step, "description": s.description, "hidden": s.hidden, "success": s.success}
            for s in channel.statuses
        ],
        "createdAt": _ASSET_CREATED,
        "updatedAt": _ASSET_UPDATED,
    }


def _field(spec: FieldSpec, *, crm: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"name": spec.name, "displayName": spec.display_name, "dataType": spec.data_type}
    length = spec.length if spec.length is not None else DEFAULT_LENGTHS.get(spec.data_type)
    if length is not None:
        record["length"] = length
    record["updateable"] = spec.updateable
    if crm:
        record["crmManaged"] = spec.crm_managed
    return record


def _system_names() -> frozenset[str]:
    return frozenset(str(f["name"]) for f in _CO_SYSTEM_FIELDS)


def _not_found(cfg: SimConfig) -> Answer:
    if cfg.asset_not_found == "702":
        return _error("702")
    return Answer(warnings=(codes.NO_ASSETS_WARNING,))


def _error(code: str, **values: object) -> Answer:
    return Answer(error=(code, codes.message(code, **values)))
