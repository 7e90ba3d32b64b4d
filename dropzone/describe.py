"""Reading Marketo's descriptions: the fields an object takes, and whether an import's target exists.

Pure: the envelope a successful read returned (``MarketoClient.get_json``) in, plain values out. The
shapes are Adobe's (contract doc §9, seed 004 for custom objects, AdobeDocs ``channels.md``,
``programs.md``); each reader also takes the older or looser shapes a real instance may send
(Describe Lead v1's ``rest.name``, an asset search answered with only a warning). Trusting none of
it: anything unexpected (a wrong type, a missing key, a list of 100,000 names, a name that is not a
short string) raises ``DescribeUnavailableError``, never another exception. A file is rejected, or
a target called wrong, only on a reply read whole; a doubtful one means "unknown".
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dropzone import defaults as D
from dropzone.errors import DescribeUnavailableError

#: Paths of the reads, one place (``schemas`` and ``targetcheck`` call them; the simulator serves them).
LEAD_DESCRIBE = "/rest/v1/leads/describe2.json"
PROGRAM_MEMBER_DESCRIBE = "/rest/v1/programs/members/describe.json"
PARTITIONS = "/rest/v1/leads/partitions.json"
CHANNEL_BY_NAME = "/rest/asset/v1/channel/byName.json"


def custom_object_describe(api_name: str) -> str:
    return f"/rest/v1/customobjects/{urllib.parse.quote(api_name, safe='')}/describe.json"


def static_list(list_id: int) -> str:
    return f"/rest/v1/lists/{int(list_id)}.json"


def program(program_id: int) -> str:
    return f"/rest/asset/v1/program/{int(program_id)}.json"


@dataclass(frozen=True, slots=True)
class Schema:
    """The fields an import of one Marketo object may name, as Marketo spells them.

    ``what`` names the object in messages ("lead", "custom object car_c", "program member");
    ``dedupe`` are the fields a custom object finds existing records by (empty: not known);
    ``display`` maps a casefolded display name ("first name") to its API name, for suggestions.
    """

    what: str
    fields: tuple[str, ...]
    dedupe: tuple[str, ...] = ()
    display: Mapping[str, str] = field(default_factory=dict)

    def plus(self, other: Schema, what: str) -> Schema:
        """Both objects' fields (a program-member file names lead and program-member fields)."""
        return Schema(
            what=what,
            fields=tuple(dict.fromkeys((*self.fields, *other.fields))),
            dedupe=other.dedupe,
            display={**self.display, **other.display},
        )


def _unavailable(what: str, why: str) -> DescribeUnavailableError:
    return DescribeUnavailableError(f"Marketo's {what} could not be read: {why}")


def _list(value: object, what: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise _unavailable(what, f"'{key}' is not a list")
    if len(value) > D.DESCRIBE_MAX_ITEMS:
        raise _unavailable(what, f"'{key}' lists more than {D.DESCRIBE_MAX_ITEMS} items")
    return value


def _name(value: object, what: str, key: str) -> str:
    """A name Marketo gave: a short, non-empty string of printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise _unavailable(what, f"a '{key}' that is not a non-empty string")
    if len(value) > D.DESCRIBE_MAX_NAME_CHARS:
        raise _unavailable(what, f"a '{key}' longer than {D.DESCRIBE_MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise _unavailable(what, f"a '{key}' with control characters")
    return value


def _results(data: Mapping[str, Any], what: str) -> list[Any]:
    """The envelope's ``result``; an absent one is none (an asset search that found nothing only warns)."""
    if not isinstance(data, Mapping):
        raise _unavailable(what, "the reply is not a JSON object")
    result = data.get("result")
    if result is None:
        return []
    return _list(result, what, "result")


def _objects(items: Iterable[Any], what: str, key: str) -> list[Mapping[str, Any]]:
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            raise _unavailable(what, f"an item of '{key}' that is not an object")
        out.append(item)
    return out


def _fields(item: Mapping[str, Any], what: str) -> tuple[list[str], dict[str, str]]:
    """Field names and display names of one described object (``fields: [{name, displayName, ...}]``)."""
    names: list[str] = []
    display: dict[str, str] = {}
    for entry in _objects(_list(item.get("fields"), what, "fields"), what, "fields"):
        name = _name(entry.get("name"), what, "name")
        names.append(name)
        shown = entry.get("displayName")
        if isinstance(shown, str) and 0 < len(shown) <= D.DESCRIBE_MAX_NAME_CHARS:
            display.setdefault(shown.casefold(), name)
    if not names:
        # Searchable or dedupe fields alone would call every other column unknown.
        raise _unavailable(what, "it lists no fields")
    return names, display


def _searchable(item: Mapping[str, Any], what: str) -> list[str]:
    """Names in ``searchableFields`` (a list of lists of names): fields too, should ``fields`` leave one out."""
    raw = item.get("searchableFields")
    if raw is None:
        return []
    out: list[str] = []
    for group in _list(raw, what, "searchableFields"):
        out += [_name(n, what, "searchableFields") for n in _list(group, what, "searchableFields")]
    if len(out) > D.DESCRIBE_MAX_ITEMS:
        raise _unavailable(what, f"'searchableFields' lists more than {D.DESCRIBE_MAX_ITEMS} names")
    return out


def _schema(
    reply: str, what: str, names: list[str], display: dict[str, str], dedupe: Iterable[str] = ()
) -> Schema:
    unique = tuple(dict.fromkeys(names))
    if not unique:
        # An empty schema would call every column unknown: never a reason to reject a file.
        raise _unavailable(reply, "it lists no fields")
    if len(unique) > D.DESCRIBE_MAX_ITEMS:
        raise _unavailable(reply, f"it lists more than {D.DESCRIBE_MAX_ITEMS} fields")
    return Schema(what=what, fields=unique, dedupe=tuple(dedupe), display=display)


def lead_schema(data: Mapping[str, Any]) -> Schema:
    """The lead fields, from Describe Lead2 (``result: [{name: "Lead", fields: [...], searchableFields}]``).

    Describe Lead (v1) answers one item per field (``{displayName, rest: {name}}``): read too.
    """
    what = "lead describe"
    names: list[str] = []
    display: dict[str, str] = {}
    for item in _objects(_results(data, what), what, "result"):
        if "fields" in item:
            found, labels = _fields(item, what)
            names += found + _searchable(item, what)
            display.update(labels)
        elif isinstance(item.get("rest"), Mapping):  # Describe Lead v1: one field per item
            name = _name(item["rest"].get("name"), what, "rest.name")
            names.append(name)
            label = item.get("displayName")
            if isinstance(label, str) and 0 < len(label) <= D.DESCRIBE_MAX_NAME_CHARS:
                display.setdefault(label.casefold(), name)
        else:
            raise _unavailable(what, "a result item with neither 'fields' nor 'rest'")
    return _schema(what, "lead", names, display)


def custom_object_schema(data: Mapping[str, Any], api_name: str) -> Schema:
    """A custom object's fields and ``dedupeFields``, from its describe (seed 004's ``car_c``)."""
    what = f"describe of custom object {api_name}"
    items = _objects(_results(data, what), what, "result")
    if not items:
        raise _unavailable(what, "it describes nothing (no such custom object?)")
    item = items[0]
    named = item.get("name")
    if named is not None and (not isinstance(named, str) or named.casefold() != api_name.casefold()):
        raise _unavailable(what, "it describes another object")
    names, display = _fields(item, what)
    names += _searchable(item, what)
    dedupe = [_name(n, what, "dedupeFields") for n in _list(item.get("dedupeFields", []), what, "dedupeFields")]
    extra: list[str] = list(dedupe)
    if item.get("idField") is not None:
        extra.append(_name(item.get("idField"), what, "idField"))
    relationships = item.get("relationships")
    if relationships is not None:
        # A link field (to a lead, say) is named in the relationship; accepting it can only spare a good file.
        for link in _objects(_list(relationships, what, "relationships"), what, "relationships"):
            if link.get("field") is not None:
                extra.append(_name(link.get("field"), what, "relationships.field"))
    return _schema(what, f"custom object {api_name}", names + extra, display, dedupe)


def program_member_schema(data: Mapping[str, Any]) -> Schema:
    """Program-member fields (standard and custom) from Describe Program Member; lead fields come separately."""
    what = "program member describe"
    items = _objects(_results(data, what), what, "result")
    if not items:
        raise _unavailable(what, "it describes nothing")
    names, display = _fields(items[0], what)
    names += _searchable(items[0], what)
    return _schema(what, "program member", names, display)


# ---- import targets -----------------------------------------------------------------------


def _id_of(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _by_id(data: Mapping[str, Any], wanted: int, what: str) -> Mapping[str, Any] | None:
    """The result item with ``id`` ``wanted``; None when the reply found nothing."""
    items = _objects(_results(data, what), what, "result")
    if not items:
        return None
    for item in items:
        if _id_of(item.get("id")) == wanted:
            return item
    raise _unavailable(what, f"it answered about another id than {wanted}")


def list_exists(data: Mapping[str, Any], list_id: int) -> bool:
    """Whether Get List by Id found static list ``list_id``."""
    return _by_id(data, list_id, f"static list {list_id}") is not None


def program_channel(data: Mapping[str, Any], program_id: int) -> str | None:
    """The channel of program ``program_id`` (its member statuses come from it); None: no such program."""
    what = f"program {program_id}"
    item = _by_id(data, program_id, what)
    if item is None:
        return None
    return _name(item.get("channel"), what, "channel")


def channel_statuses(data: Mapping[str, Any], channel: str) -> tuple[str, ...] | None:
    """The progression statuses of ``channel`` (Get Channel by Name); None: no such channel."""
    what = f"channel {channel!r}"
    items = _objects(_results(data, what), what, "result")
    if not items:
        return None
    item = next((i for i in items if i.get("name") == channel), items[0])
    statuses = _objects(_list(item.get("progressionStatuses"), what, "progressionStatuses"), what,
                        "progressionStatuses")
    return tuple(_name(s.get("name"), what, "progressionStatuses.name") for s in statuses)


def partition_names(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The instance's lead partitions (Get Lead Partitions); every instance has at least "Default"."""
    what = "lead partitions"
    items = _objects(_results(data, what), what, "result")
    names = tuple(dict.fromkeys(_name(i.get("name"), what, "name") for i in items))
    if not names:
        raise _unavailable(what, "it lists none")
    return names


def custom_object_exists(data: Mapping[str, Any], api_name: str) -> bool:
    """Whether a custom object's describe found it (an empty ``result`` did not)."""
    what = f"describe of custom object {api_name}"
    items = _objects(_results(data, what), what, "result")
    if not items:
        return False
    named = items[0].get("name")
    if named is not None and (not isinstance(named, str) or named.casefold() != api_name.casefold()):
        raise _unavailable(what, "it describes another object")
    return True


__all__ = [
    "CHANNEL_BY_NAME",
    "LEAD_DESCRIBE",
    "PARTITIONS",
    "PROGRAM_MEMBER_DESCRIBE",
    "Schema",
    "channel_statuses",
    "custom_object_describe",
    "custom_object_exists",
    "custom_object_schema",
    "lead_schema",
    "list_exists",
    "partition_names",
    "program",
    "program_channel",
    "program_member_schema",
    "static_list",
]
