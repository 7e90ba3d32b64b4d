"""From an import request's bytes to an accepted upload or a refusal (pure).

Owns parameter lookup (query string or multipart field), the submit-time
checks that need only the configuration (612, 613, 413, 1001, 1003, 1006,
1008, 1009, 1013, 1025, 1026, 701) and the row verdicts, and ``Schemas``: the
configuration's fields and catalogue, normalised once and shared with the
describe endpoints. Checks that need the live queue (1016, 1019) belong to
``state``. Runs outside the simulator's lock, so a 10 MB upload does not stall
other calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from . import catalog, codes, multipart, rows
from .config import DEFAULT_LEAD_FIELDS, FieldSpec, SimConfig, field_specs


@dataclass(frozen=True)
class Rejection:
    """An envelope error to answer after authentication."""

    code: str
    message: str

    @classmethod
    def of(cls, code: str, **values: object) -> Rejection:
        return cls(code, codes.message(code, **values))


@dataclass
class Upload:
    """An import that passed every configuration check."""

    kind: str
    params: dict[str, Any]
    param_sources: dict[str, str]
    header: list[str]
    outcomes: list[rows.RowOutcome]
    delimiter: str
    nbytes: int
    filename: str | None


@dataclass
class Prepared:
    """What the edge learnt from an import body before taking the lock."""

    form: dict[str, str] = field(default_factory=dict)
    too_large: bool = False
    outcome: Upload | Rejection | None = None


class Schemas:
    """The configuration's field lists and catalogue, normalised once (imports and describes read the same)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.any_lead_field = cfg.lead_fields == "any"
        lead = dict(DEFAULT_LEAD_FIELDS) if isinstance(cfg.lead_fields, str) else field_specs(cfg.lead_fields)
        self.lead_fields: dict[str, FieldSpec] = lead
        self.program_member_fields: dict[str, FieldSpec] = field_specs(cfg.program_member_fields)
        self.member_fields: dict[str, FieldSpec] = {**lead, **self.program_member_fields}
        self.custom_objects: dict[str, rows.CustomObjectSchema] = {
            name: rows.CustomObjectSchema(
                api_name=name,
                fields=field_specs(spec.get("fields", [])),
                dedupe=tuple(spec.get("dedupe", spec.get("dedupeFields", []))),
                display_name=str(spec.get("displayName", name)),
                description=str(spec.get("description", "")),
                relationships=tuple(spec.get("relationships", ())),
            )
            for name, spec in cfg.custom_objects.items()
        }
        self.catalog = catalog.build(
            lists=cfg.lists, programs=cfg.programs, channels=cfg.channels, partitions=cfg.partitions
        )


def prepare(
    *,
    cfg: SimConfig,
    schemas: Schemas,
    kind: str,
    path_params: Mapping[str, str],
    query: Mapping[str, str],
    content_type: str | None,
    body: bytes,
    body_too_large: bool,
) -> Prepared:
    """Read an import request; never raises for bad input, it returns a Rejection."""
    if body_too_large:
        return Prepared(too_large=True)
    if not multipart.is_multipart(content_type):
        return Prepared(outcome=Rejection.of("612"))
    assert content_type is not None
    try:
        parts = multipart.parse(content_type, body)
    except multipart.MultipartError:
        return Prepared(outcome=Rejection.of("613"))
    form = {p.name: p.data.decode("utf-8", "replace") for p in parts if p.filename is None and p.name != "file"}
    file_part = next((p for p in parts if p.name == "file"), None)
    prepared = Prepared(form=form)
    if file_part is not None and len(file_part.data) >= cfg.max_file_bytes:
        prepared.too_large = True
        return prepared
    prepared.outcome = _check(cfg, schemas, kind, path_params, query, form, file_part)
    return prepared


def _check(
    cfg: SimConfig,
    schemas: Schemas,
    kind: str,
    path_params: Mapping[str, str],
    query: Mapping[str, str],
    form: Mapping[str, str],
    file_part: multipart.Part | None,
) -> Upload | Rejection:
    sources: dict[str, str] = {}

    def param(name: str) -> str | None:
        # Swagger says query, Adobe's cURL examples say form field: both work, the query first.
        if name in query:
            sources[name] = "query"
            return query[name]
        if name in form:
            sources[name] = "form"
            return form[name]
        return None

    raw_format = param("format")
    fmt = (raw_format or "csv").lower()
    if raw_format is None:
        sources["format"] = "default"
    if fmt not in rows.DELIMITERS:
        return Rejection.of("1001", value=raw_format, type="format")
    params: dict[str, Any] = {"format": fmt}

    if kind == "leads":
        refusal = _lead_params(schemas, param, params, sources)
        known: Mapping[str, FieldSpec] = schemas.lead_fields
    elif kind == "customobject":
        if not cfg.custom_objects_enabled:
            return Rejection.of("1026")
        api_name = path_params["apiName"]
        if api_name not in schemas.custom_objects:
            return Rejection.of("1013")
        params["objectApiName"] = api_name
        sources["objectApiName"] = "path"
        refusal, known = None, schemas.custom_objects[api_name].fields
    else:
        refusal = _member_params(schemas.catalog, param, params, sources, path_params["programId"])
        known = schemas.member_fields
    if refusal:
        return refusal

    if file_part is None:
        return Rejection.of("613")
    delimiter = rows.DELIMITERS[fmt]
    try:
        table = rows.parse_table(file_part.data, delimiter)
    except rows.EmptyFileError:
        return Rejection("1003", "Empty file")
    except rows.UnreadableFileError:
        return Rejection.of("1003")

    if kind == "customobject":
        schema = schemas.custom_objects[params["objectApiName"]]
        # Seed 004: a header missing the dedupe field is accepted and every row fails,
        # so the unknown-column check only applies once the dedupe fields are there.
        dedupe_ok = all(name in table.header for name in schema.dedupe)
        if dedupe_ok and cfg.unknown_fields == "reject":
            unknown = rows.unknown_columns(table.header, known, case_sensitive=True)
            if unknown:
                return Rejection.of("1006", name=unknown[0])
        outcomes = rows.evaluate_custom_object(table, schema=schema, ragged=cfg.ragged_rows)
    else:
        if cfg.unknown_fields == "reject" and not schemas.any_lead_field:
            unknown = rows.unknown_columns(table.header, known, case_sensitive=cfg.lead_fields_case_sensitive)
            if unknown:
                return Rejection.of("1006", name=unknown[0])
        if kind == "leads":
            outcomes = rows.evaluate_leads(
                table,
                lookup_field=params["lookupField"],
                fields=known,
                case_sensitive=cfg.lead_fields_case_sensitive,
                ragged=cfg.ragged_rows,
            )
        else:
            outcomes = rows.evaluate_program_members(
                table, fields=known, case_sensitive=cfg.lead_fields_case_sensitive, ragged=cfg.ragged_rows
            )
    return Upload(
        kind=kind,
        params=params,
        param_sources=sources,
        header=table.header,
        outcomes=outcomes,
        delimiter=delimiter,
        nbytes=len(file_part.data),
        filename=file_part.filename,
    )


def _lead_params(schemas: Schemas, param: Any, params: dict[str, Any], sources: dict[str, str]) -> Rejection | None:
    lookup = param("lookupField")
    if lookup is None:
        lookup, sources["lookupField"] = "email", "default"
    if not schemas.any_lead_field and lookup not in schemas.lead_fields:
        # The parameter names an API field exactly, unlike header columns.
        return Rejection.of("1006", name=lookup)
    params["lookupField"] = lookup

    raw_list = param("listId")
    list_id: int | None = None
    if raw_list is not None and raw_list != "":
        try:
            list_id = int(raw_list)
        except ValueError:
            return Rejection.of("1001", value=raw_list, type="Integer")
        if schemas.catalog.static_list(list_id) is None:
            return Rejection.of("1013")
    params["listId"] = list_id

    partition = param("partitionName")
    partitions = schemas.catalog.partitions
    if partitions is not None:
        if partition and partition not in partitions:
            return Rejection.of("1008", name=partition)
        if not partition and len(partitions) > 1:
            return Rejection.of("1009")
    params["partitionName"] = partition or None
    return None


def _member_params(
    instance: catalog.Catalog, param: Any, params: dict[str, Any], sources: dict[str, str], program_id: str
) -> Rejection | None:
    program = instance.program(program_id)
    if program is None:
        return Rejection.of("1013")
    # Never "Not in Program": an import makes members (docs §9).
    statuses = instance.statuses_for(program)
    params["programId"] = program_id
    sources["programId"] = "path"
    status = param("programMemberStatus")
    if not status:
        return Rejection.of("701", name="programMemberStatus")
    if status not in statuses and unquote_plus(status) in statuses:
        # A form field sent still URL-encoded ("On%20List") is what the docs' example invites.
        status = unquote_plus(status)
    if status not in statuses:
        return Rejection.of("1025")
    params["programMemberStatus"] = status
    return None
