"""The configuration of a route's column mapping: ``columns`` and ``constants``.

Owns their parsing and checks, with errors naming the entry
(``inboxes[0].routes[1].columns["First Name"]``): names are strings, a field
name is one line with no spaces around it, two partner columns never map to
one field, a constant is a one-line scalar and never also a mapped field.
What a mapping does to a file is ``mapping``; ``config`` calls in here.
"""

from __future__ import annotations

import json

from dropzone.mapping import constant_text, loose
from dropzone.schema import Section, describe


def _item(s: Section, key: str, name: str) -> str:
    """The key path of one entry of a mapping whose keys are free text: ``routes[0].columns["First Name"]``."""
    return f"{s.key(key)}[{json.dumps(name, ensure_ascii=False)}]"


def _field_name(s: Section, where: str, value: object, what: str) -> str:
    """A Marketo field name as the route gives it: a string Marketo can take as a header name."""
    if not isinstance(value, str):
        raise s.ctx.error(where, f"expected {what}, got {describe(value)}")
    if not value.strip():
        raise s.ctx.error(where, "must not be empty")
    if value != value.strip():
        raise s.ctx.error(where, f"{value!r} has spaces around it: Marketo would fail every row")
    if "\n" in value or "\r" in value:
        raise s.ctx.error(where, f"{value!r} has a line break")
    return str(value)


def _mapping(s: Section, key: str) -> dict[object, object]:
    raw = s.raw(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise s.error(key, f"expected a mapping of names, got {describe(raw)}")
    for name in raw:
        if not isinstance(name, str):
            raise s.error(key, f"names must be strings (quote {name!r}), got {describe(name)}")
        if not name.strip():
            raise s.error(key, "names must not be empty")
    return raw


def parse_columns(s: Section) -> tuple[tuple[str, str | None], ...]:
    """``columns``: partner header name → Marketo field name, or null to drop the column."""
    columns: list[tuple[str, str | None]] = []
    by_loose: dict[str, str] = {}
    by_target: dict[str, str] = {}
    for name, value in _mapping(s, "columns").items():
        assert isinstance(name, str)  # _mapping checked
        where = _item(s, "columns", name)
        other = by_loose.setdefault(loose(name), name)
        if other != name:
            raise s.ctx.error(
                where,
                f"matches the same header names as {_item(s, 'columns', other)} (names are matched "
                "ignoring case and spaces around them when none matches exactly)",
            )
        if value is None:
            columns.append((name, None))
            continue
        target = _field_name(s, where, value, "a Marketo field name, or null to drop the column")
        first = by_target.setdefault(target, name)
        if first != name:
            raise s.ctx.error(
                where, f"{target!r} is already the field of {_item(s, 'columns', first)}: one field, one column"
            )
        columns.append((name, target))
    return tuple(columns)


def parse_constants(s: Section, columns: tuple[tuple[str, str | None], ...]) -> tuple[tuple[str, str], ...]:
    """``constants``: Marketo field name → a scalar, sent as text in every record."""
    targets = {target: name for name, target in columns if target is not None}
    constants: list[tuple[str, str]] = []
    for name, value in _mapping(s, "constants").items():
        assert isinstance(name, str)  # _mapping checked
        where = _item(s, "constants", name)
        _field_name(s, where, name, "a Marketo field name")
        if name in targets:
            raise s.ctx.error(where, f"is also the field of {_item(s, 'columns', targets[name])}: one field, one value")
        text = constant_text(value)
        if text is None:
            raise s.ctx.error(where, f"expected text, a number or true/false, got {describe(value)}")
        if "\n" in text or "\r" in text:
            raise s.ctx.error(where, "has a line break: a constant is one line of text")
        constants.append((name, text))
    return tuple(constants)
