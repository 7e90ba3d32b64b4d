"""Where a file's rows go: one of Marketo's three bulk imports, with its parameters.

Owns the ``ImportTarget`` value: its validation, Marketo's names for its
parameters, the paths and query each kind of import uses, and the JSON the
journal stores for a file (``to_json``/``from_json``). Pure: no I/O. The
client (``marketo``) sends to a target; routes (``config.Route.target``) make one.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from dropzone.defaults import DEFAULT_INSTANCE
from dropzone.kinds import FileFormat, ObjectKind

# ImportTarget's fields under Marketo's parameter names, and which kind takes which.
_JSON_NAMES: dict[str, str] = {
    "lookup_field": "lookupField",
    "list_id": "listId",
    "partition_name": "partitionName",
    "api_name": "apiName",
    "program_id": "programId",
    "program_member_status": "programMemberStatus",
}
_FIELDS_BY_JSON = {v: k for k, v in _JSON_NAMES.items()}
_KIND_FIELDS: dict[ObjectKind, frozenset[str]] = {
    ObjectKind.LEADS: frozenset({"lookup_field", "list_id", "partition_name"}),
    ObjectKind.CUSTOM_OBJECT: frozenset({"api_name"}),
    ObjectKind.PROGRAM_MEMBER: frozenset({"program_id", "program_member_status"}),
}
_INT_FIELDS = frozenset({"list_id", "program_id"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportTarget:
    """Where rows go, with the parameters Marketo takes for that kind of import.

    What the journal stores for a file (``to_json``/``from_json``), under
    Marketo's own parameter names. Invalid combinations raise ValueError.
    """

    kind: ObjectKind
    lookup_field: str | None = None
    list_id: int | None = None
    partition_name: str | None = None
    api_name: str | None = None
    program_id: int | None = None  # Marketo's path segment is the program's numeric id
    program_member_status: str | None = None
    #: Which Marketo instance (by configured name); not a Marketo parameter.
    instance: str = DEFAULT_INSTANCE

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ObjectKind):
            raise ValueError(f"object must be one of {[k.value for k in ObjectKind]}, not {self.kind!r}")
        if not isinstance(self.instance, str) or not self.instance:
            raise ValueError(f"instance must be a non-empty name, not {self.instance!r}")
        for name, key in _JSON_NAMES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if name not in _KIND_FIELDS[self.kind]:
                raise ValueError(f"{key} does not apply to a {self.kind.value} import")
            if name in _INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ValueError(f"{key} must be a positive integer, not {value!r}")
            elif not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key} must be a non-empty string, not {value!r}")
        if self.kind is ObjectKind.CUSTOM_OBJECT and not self.api_name:
            raise ValueError("a custom object import needs apiName")
        if self.kind is ObjectKind.PROGRAM_MEMBER and not (self.program_id and self.program_member_status):
            raise ValueError("a program member import needs programId and programMemberStatus")

    def params(self) -> dict[str, str | int]:
        """The parameters that are set, under Marketo's names (``listId``, ``programId``...)."""
        return {key: value for name, key in _JSON_NAMES.items() if (value := getattr(self, name)) is not None}

    def to_json(self) -> str:
        """A stable text: sorted keys, no spaces, parameters not set left out (the default instance too,
        so a journal written before instances existed reads the same)."""
        doc: dict[str, str | int] = {"object": self.kind.value, **self.params()}
        if self.instance != DEFAULT_INSTANCE:
            doc["instance"] = self.instance
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ImportTarget:
        """The target ``to_json`` wrote; ValueError for anything else (a damaged journal)."""
        try:
            doc = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"an import target must be JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("an import target must be a JSON object")
        unknown = sorted(set(doc) - {"object", "instance", *_FIELDS_BY_JSON})
        if unknown:
            raise ValueError(f"unknown import target keys {unknown}")
        raw = doc.get("object")
        if not isinstance(raw, str) or raw not in {k.value for k in ObjectKind}:
            raise ValueError(f"unknown object {raw!r}; one of {[k.value for k in ObjectKind]}")
        kind = ObjectKind(raw)
        params = {_FIELDS_BY_JSON[k]: v for k, v in doc.items() if k in _FIELDS_BY_JSON and v is not None}
        # A journal from before instances existed: everything went to the default one.
        return cls(kind=kind, instance=doc.get("instance", DEFAULT_INSTANCE), **params)

    def submit_path(self) -> str:
        match self.kind:
            case ObjectKind.LEADS:
                return "/bulk/v1/leads.json"
            case ObjectKind.CUSTOM_OBJECT:
                return f"/bulk/v1/customobjects/{_segment(self.api_name)}/import.json"
            case ObjectKind.PROGRAM_MEMBER:
                return f"/bulk/v1/program/{int(self.program_id or 0)}/members/import.json"

    def batch_path(self, batch_id: int, leaf: str) -> str:
        """Status (``leaf`` "status"), failures or warnings path: each kind spells them differently."""
        match self.kind:
            case ObjectKind.LEADS:
                # Leads have no /status segment: the batch itself is the status.
                base = f"/bulk/v1/leads/batch/{int(batch_id)}"
                return f"{base}.json" if leaf == "status" else f"{base}/{leaf}.json"
            case ObjectKind.CUSTOM_OBJECT:
                return f"/bulk/v1/customobjects/{_segment(self.api_name)}/import/{int(batch_id)}/{leaf}.json"
            case ObjectKind.PROGRAM_MEMBER:
                # Program-member batches are addressed without the programId.
                return f"/bulk/v1/program/members/import/{int(batch_id)}/{leaf}.json"

    def query(self, fmt: FileFormat) -> dict[str, str]:
        """Submit parameters, in the query string where Marketo's reference declares them."""
        params = {"format": fmt.value}
        if self.kind is ObjectKind.LEADS:
            if self.lookup_field:
                params["lookupField"] = self.lookup_field
            if self.list_id is not None:
                params["listId"] = str(self.list_id)
            if self.partition_name:
                params["partitionName"] = self.partition_name
        elif self.kind is ObjectKind.PROGRAM_MEMBER:
            params["programMemberStatus"] = str(self.program_member_status)
        return params


def _segment(value: str | None) -> str:
    return urllib.parse.quote(str(value), safe="")


__all__ = ["ImportTarget"]
