"""The simulator's knobs: one frozen dataclass, every default in one place.

Owns ``SimConfig``, the field schemas (lead fields, program-member fields,
custom objects) and loading overrides from YAML; the instance's lists,
programs, channels and partitions are ``catalog``'s. It knows nothing about
HTTP or time.

Where the Marketo docs are silent the behaviour is a knob, and the default is
the most plausible reading (tagged [INF] in the field comments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from . import catalog
from .catalog import ASSET_NOT_FOUND_MODES, DEFAULT_CHANNELS, DEFAULT_LISTS, DEFAULT_PROGRAMS
from .codes import ENDPOINTS

# Data types the row rules understand; anything else is a free string.
DATA_TYPES = frozenset(
    {"string", "text", "email", "integer", "float", "currency", "boolean", "date", "datetime", "phone", "url"}
)


# Describe's ``length`` of a field that names none, by data type; other types have no length.
DEFAULT_LENGTHS: Mapping[str, int] = {"string": 255, "email": 255, "phone": 255, "url": 255, "text": 65535}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One importable field: its API name, the display name used in failure reasons, its type,
    and what Describe says of it (``length`` None: by type, see DEFAULT_LENGTHS)."""

    name: str
    display_name: str
    data_type: str = "string"
    length: int | None = None
    updateable: bool = True
    crm_managed: bool = False


def _f(name: str, display: str, data_type: str = "string", *, updateable: bool = True) -> tuple[str, FieldSpec]:
    return name, FieldSpec(name, display, data_type, updateable=updateable)


# Common lead API names (Describe Lead). Display names matter: type failures
# quote them ("Invalid data type in field Lead Score").
DEFAULT_LEAD_FIELDS: Mapping[str, FieldSpec] = dict(
    [
        # System-managed (Describe: not updateable), yet a valid column and lookupField ("update only").
        _f("id", "Id", "integer", updateable=False),
        _f("email", "Email Address", "email"),
        _f("firstName", "First Name"),
        _f("middleName", "Middle Name"),
        _f("lastName", "Last Name"),
        _f("salutation", "Salutation"),
        _f("title", "Job Title"),
        _f("company", "Company Name"),
        _f("phone", "Phone Number", "phone"),
        _f("mobilePhone", "Mobile Phone Number", "phone"),
        _f("fax", "Fax Number", "phone"),
        _f("address", "Address"),
        _f("city", "City"),
        _f("state", "State"),
        _f("country", "Country"),
        _f("postalCode", "Postal Code"),
        _f("website", "Website", "url"),
        _f("industry", "Industry"),
        _f("leadSource", "Lead Source"),
        _f("leadStatus", "Lead Status"),
        _f("leadScore", "Lead Score", "integer"),
        _f("annualRevenue", "Annual Revenue", "currency"),
        _f("numberOfEmployees", "Num Employees", "integer"),
        _f("dateOfBirth", "Date of Birth", "date"),
        _f("unsubscribed", "Unsubscribed", "boolean"),
        _f("doNotCall", "Do Not Call", "boolean"),
        _f("externalCompanyId", "External Company Id"),
        _f("externalSalesPersonId", "External Sales Person Id"),
        _f("cookies", "Cookies"),
        _f("twitterId", "Twitter Id"),
        _f("facebookId", "Facebook Id"),
        _f("linkedInId", "LinkedIn Id"),
        _f("sfdcAccountId", "SFDC Account Id"),
        _f("sfdcContactId", "SFDC Contact Id"),
        _f("sfdcLeadId", "SFDC Lead Id"),
        _f("sfdcLeadOwnerId", "SFDC Lead Owner Id"),
        _f("sfdcOpptyId", "SFDC Oppty Id"),
    ]
)

# The "Car" object from the custom-object import page (seed 004): dedupe on vin.
DEFAULT_CUSTOM_OBJECTS: Mapping[str, Mapping[str, Any]] = {
    "car_c": {
        "displayName": "Car",
        "description": "It's a car.",
        "fields": [
            {"name": "color", "displayName": "Color", "dataType": "string"},
            {"name": "make", "displayName": "Make", "dataType": "string"},
            {"name": "model", "displayName": "Model", "dataType": "string"},
            {"name": "vin", "displayName": "VIN", "dataType": "string"},
        ],
        "dedupe": ["vin"],
    }
}

UNKNOWN_FIELD_MODES = ("reject", "ignore")
RAGGED_ROW_MODES = ("fail", "drop")


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Knobs of one simulated Marketo subscription.

    Identity and tokens:
        client_id, client_secret: the only credentials Identity accepts.
        token_ttl: lifetime of a new access token, seconds (Marketo: 3600).
        zero_expires_in: Identity answers a live token with ``expires_in: 0``
            (the end-of-life token rudder PR #2432 saw) and the token really
            dies ``zero_expires_grace`` seconds later. The simulator's first
            grant counts as such a token (another integration of the same API
            user fetched it an hour ago). A token minted after one died reports
            its full ttl, so a client that waits it out makes progress.
        pod: suffix of the token (``<uuid>:<pod>``).
        scope: the ``scope`` Identity reports (the API user's email).
        accept_query_token / accept_form_token: whether ``?access_token=`` and a
            multipart ``access_token`` field still work (deprecated by Adobe; off
            so a client regressing to them fails loudly). A token sent only
            there gets 601 "Access token invalid" [INF: doc says 601 is most
            plausible after the removal].
        missing_token_code: code for a call carrying no token anywhere.
            "600" (mrkt maps it to EmptyAccessToken) [INF]; "601" also plausible.

    Jobs:
        instant: every dwell below is zero; jobs still pass Queued → Importing →
            Complete, one state per look.
        queued_seconds: time a job sits in Queued after a slot frees for it.
        import_seconds_per_job, import_seconds_per_row: Importing lasts
            per_job + rows * per_row.
        background_job_seconds: import time of jobs from "other integrations"
            (``add_background_jobs``); independent of ``instant``.
        max_importing, max_open: 2 importing, 10 open including importing; one
            FIFO shared by leads, custom objects and program members [INF].
        first_batch_id: first batchId handed out.
        batch_retention: seconds a batchId stays queryable (7 days).
        unknown_batch_code: envelope code for an unknown or expired batchId, on
            status, failures and warnings alike (docs §9: a 1003-style "not
            found"; the seeds are silent) [INF]. Always HTTP 200 + the JSON
            envelope, so a client can tell it from a proxy's 404 or 429.
        program_member_counters: False → program-member status results hold
            only batchId, importId and status, as the swagger's
            ImportProgramMemberResponse lists them (the docs' example carries
            the counters; §9). The "bare_status" fault does it for N calls.

    Files and rows:
        max_file_bytes: the file part must be *less than* this (seeds: "less
            than 10 MB"), else HTTP 413 with a non-JSON body.
        failures_404: no failure/warning rows → HTTP 404; False → 200, empty body.
        failure_file_quirk: reproduce P1's lossy failure file (lookup column
            dropped when it is last and empty; values written unquoted).
        ragged_rows: a row whose field count differs from the header "fail"s
            ("Invalid number of fields") or is silently "drop"ped [INF].
        unknown_fields: a header column that is no field → "reject" (1006 at
            submit) or "ignore" [INF].
        lead_fields: {apiName: dataType | {displayName, dataType, length,
            updateable, crmManaged}} or a list, or "any" (every column
            accepted; known defaults keep their types). Describe Lead2 lists
            exactly these (the defaults for "any").
        lead_fields_case_sensitive: False because the seed's working example
            uploads ``FirstName,LastName,Email,Company``.
        program_member_fields: program-member custom fields, same shapes (lead
            fields are always allowed too). Describe Program Member lists them
            after the standard, non-updateable fields of Adobe's example.
        custom_objects: {apiName: {"fields": [...], "dedupe": [...],
            "displayName", "description", "relationships"}}; header names must
            match exactly (seed 004's " vin"). Describe adds the system fields
            createdAt, marketoGUID, updatedAt (not updateable; an import naming
            them gets 1006 [INF]); an unknown apiName gets 1013 there as at
            import [INF: "Object not found", what Get-by-id calls answer].
        custom_objects_enabled: False → every custom-object call gets 1026.

    Targets (``catalog`` has the shapes; Get List/Program/Channel/Partitions read the same):
        lists: {listId: name | {name, description, programName, workspaceName}}
            or a list of ids; None = any id. Default: 1001..1010 and 1234.
            An unknown listId → 1013 at import [INF] and from Get List by Id
            [DOC error-codes.md: what Get object by id answers].
        programs: {programId: {name, channel, type, workspace, description}};
            None = any id, on the first channel. Default: 1044 ("Event") and
            1107 ("Online Advertising"). Unknown program → 1013 at import
            [INF]; Get Program by Id answers ``asset_not_found``.
        channels: {name: [status, ...] | {applicableProgramType,
            progressionStatuses}}, a status a name or {name, step, success,
            hidden, description}. An import's programMemberStatus must be one
            of its program's channel's statuses, never "Not in Program"
            (docs §9), else 1025 [INF].
        partitions: lead partition names; None = Get Lead Partitions lists
            "Default" and an import may name any partition or none (the
            leniency of old). Else an unknown partitionName → 1008, and none
            given while several exist → 1009 [INF].
        asset_not_found: what the Asset API (Get Program by Id, Get Channel by
            Name) answers for nothing found: "warning" (success true, no
            result, warnings ["No assets found for the given search
            criteria."], as live recordings show [OBS]) or "702" (success
            false, "No data found…" [DOC error-codes.md]).
        denied_endpoints: endpoint names (``codes.ENDPOINTS``, e.g.
            "describe_leads", "list", "program") answered with 603 "Access
            denied" after the token and the limits, as a role missing the
            permission is [DOC]; "usage" is what ``usage_denied`` sets.

    Limits and faults:
        rate_limit per rate_window seconds, sliding → 606.
        max_concurrent in-flight API calls → 615 for the next one.
        daily_quota: API calls per day (resets 00:00 CST); None = unlimited → 607.
            Counted either way: GET /rest/v1/stats/usage.json reports the day's
            calls, ours and other integrations' (``Simulator.add_foreign_calls``),
            in Adobe's public shape (not in the seeds) [INF].
        usage_denied: usage.json answers 603 "Access denied" (an API user whose
            role may not read usage) [INF: the usual 603 for a missing permission].
        unknown_path_status: HTTP status of a 610 for an unknown path (200, or 500).
        fault_rates: {kind: probability} drawn per API call with ``seed``
            (kinds as for ``Simulator.inject``; the parameterless edge kinds
            plus "http429" with its default Retry-After).
        seed: makes tokens, requestIds and random faults reproducible.
        record_path: JSON-lines file, appended: one line per accepted
            submission, one per imported row.
    """

    client_id: str
    client_secret: str = field(repr=False)
    port: int = 0

    token_ttl: float = 3600.0
    zero_expires_in: bool = False
    zero_expires_grace: float = 1.0
    pod: str = "int"
    scope: str = "apiuser@dropzone.invalid"
    accept_query_token: bool = False
    accept_form_token: bool = False
    missing_token_code: str = "600"  # noqa: S105 (a Marketo code, not a secret)

    instant: bool = False
    queued_seconds: float = 0.5
    import_seconds_per_job: float = 1.0
    import_seconds_per_row: float = 0.0001
    background_job_seconds: float = 1.0
    max_importing: int = 2
    max_open: int = 10
    first_batch_id: int = 1001
    batch_retention: float = 7 * 24 * 3600.0
    unknown_batch_code: str = "1003"
    program_member_counters: bool = True

    max_file_bytes: int = 10_485_760
    failures_404: bool = True
    failure_file_quirk: bool = False
    ragged_rows: str = "fail"
    unknown_fields: str = "reject"
    lead_fields: Mapping[str, Any] | Sequence[Any] | str = field(default_factory=lambda: dict(DEFAULT_LEAD_FIELDS))
    lead_fields_case_sensitive: bool = False
    program_member_fields: Mapping[str, Any] | Sequence[Any] = field(default_factory=dict)
    custom_objects: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(DEFAULT_CUSTOM_OBJECTS))
    custom_objects_enabled: bool = True
    lists: Mapping[Any, Any] | Sequence[int] | None = field(default_factory=lambda: dict(DEFAULT_LISTS))
    programs: Mapping[Any, Any] | None = field(default_factory=lambda: dict(DEFAULT_PROGRAMS))
    channels: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    partitions: Sequence[str] | None = None
    asset_not_found: str = "warning"
    denied_endpoints: Sequence[str] = ()

    rate_limit: int = 100
    rate_window: float = 20.0
    max_concurrent: int = 10
    daily_quota: int | None = None
    usage_denied: bool = False
    unknown_path_status: int = 200

    fault_rates: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None
    record_path: str | Path | None = None

    def __post_init__(self) -> None:
        if self.unknown_fields not in UNKNOWN_FIELD_MODES:
            raise ValueError(f"unknown_fields must be one of {UNKNOWN_FIELD_MODES}, not {self.unknown_fields!r}")
        if self.ragged_rows not in RAGGED_ROW_MODES:
            raise ValueError(f"ragged_rows must be one of {RAGGED_ROW_MODES}, not {self.ragged_rows!r}")
        if isinstance(self.lead_fields, str) and self.lead_fields != "any":
            raise ValueError("lead_fields must be a mapping, a list or 'any'")
        if self.max_importing < 1 or self.max_open < self.max_importing:
            raise ValueError("need 1 <= max_importing <= max_open")
        for kind, p in self.fault_rates.items():
            if not 0.0 <= p <= 1.0 or math.isnan(p):
                raise ValueError(f"fault rate for {kind!r} must be within [0, 1]")
        if sum(self.fault_rates.values()) > 1.0:
            raise ValueError("fault rates must add up to at most 1")
        if self.asset_not_found not in ASSET_NOT_FOUND_MODES:
            raise ValueError(f"asset_not_found must be one of {ASSET_NOT_FOUND_MODES}, not {self.asset_not_found!r}")
        deniable = [e for e in ENDPOINTS if e not in ("identity", "other")]
        unknown = [e for e in self.denied_endpoints if e not in deniable]
        if isinstance(self.denied_endpoints, str) or unknown:
            raise ValueError(f"denied_endpoints must be a list of {deniable}; cannot read {self.denied_endpoints!r}")
        # Fails early, naming the entry, rather than at the first request.
        catalog.build(lists=self.lists, programs=self.programs, channels=self.channels, partitions=self.partitions)

    def denied(self) -> frozenset[str]:
        """Endpoints answered with 603 after the limits."""
        return frozenset(self.denied_endpoints) | ({"usage"} if self.usage_denied else frozenset())

    def timings(self) -> tuple[float, float, float]:
        """(queued dwell, seconds per job, seconds per row), zeros in instant mode."""
        if self.instant:
            return 0.0, 0.0, 0.0
        return self.queued_seconds, self.import_seconds_per_job, self.import_seconds_per_row

    def with_overrides(self, **overrides: Any) -> SimConfig:
        """A copy with some knobs changed (unknown names raise TypeError)."""
        return replace(self, **overrides)


def field_specs(spec: Mapping[str, Any] | Sequence[Any]) -> dict[str, FieldSpec]:
    """Normalise the accepted field-list shapes into {apiName: FieldSpec}.

    Accepts FieldSpec values, ``{name: dataType}``, ``{name: {displayName, dataType, ...}}``
    and lists of names or ``{"name", "displayName", "dataType", "length",
    "updateable", "crmManaged"}`` dicts (the Describe shape).
    """
    out: dict[str, FieldSpec] = {}
    items: list[tuple[str, Any]]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for entry in spec:
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, FieldSpec):
                items.append((entry.name, entry))
            elif isinstance(entry, Mapping) and "name" in entry:
                items.append((str(entry["name"]), entry))
            else:
                raise ValueError(f"cannot read field entry {entry!r}")
    for name, value in items:
        if isinstance(value, FieldSpec):
            out[name] = value
        elif value is None:
            out[name] = FieldSpec(name, name)
        elif isinstance(value, str):
            out[name] = FieldSpec(name, name, _checked_type(value))
        elif isinstance(value, Mapping):
            length = value.get("length")
            if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
                raise ValueError(f"field {name!r}: length must be a positive integer, not {length!r}")
            out[name] = FieldSpec(
                name,
                str(value.get("displayName", name)),
                _checked_type(str(value.get("dataType", "string"))),
                length,
                bool(value.get("updateable", True)),
                bool(value.get("crmManaged", False)),
            )
        else:
            raise ValueError(f"cannot read field {name!r}: {value!r}")
    return out


def _checked_type(data_type: str) -> str:
    if data_type not in DATA_TYPES:
        raise ValueError(f"unknown dataType {data_type!r}; known: {sorted(DATA_TYPES)}")
    return data_type


def config_keys() -> frozenset[str]:
    """Names a YAML config file may set."""
    return frozenset(f.name for f in fields(SimConfig))


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read knob overrides from a YAML mapping; unknown keys raise ValueError naming them."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    unknown = sorted(set(data) - config_keys())
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    return data
