"""Pre-flight of a header against Marketo's describe: which names Marketo takes, spelled its way.

Pure: a ``describe.Schema``, the import target and the header's names (after any column mapping)
in; the names to send out, or an ``InputError`` naming line 1 and the columns. Names match
Marketo's fields case-insensitively (the seeds' own example uploads ``FirstName,LastName,Email``)
and are sent as Marketo spells them; an exact spelling always wins. Refused, before a queue slot
is spent:

* a column that is no field of the object (``UnknownFieldError``, with a close match from
  ``difflib`` when there is one, or the API name of a display name);
* two columns that are one field;
* a lead file without the route's ``lookupField``, a custom-object file without its dedupe
  fields, a program-member file without ``email``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence

from dropzone import defaults as D
from dropzone.describe import Schema
from dropzone.errors import InputError, UnknownFieldError
from dropzone.kinds import ObjectKind
from dropzone.targets import ImportTarget

#: Unknown columns named in one message; a file of a hundred wrong columns gets the first few.
_MAX_LISTED = 10
_NAME_SHOWN = 80


def quoted(name: str) -> str:
    """A partner's column name as a message shows it: in double quotes, control characters escaped, cut short."""
    text = json.dumps(name, ensure_ascii=False)
    return text if len(text) <= _NAME_SHOWN else text[: _NAME_SHOWN - 2] + '…"'


class _Index:
    """The schema's fields, found by exact spelling, else case-insensitively."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.exact = frozenset(schema.fields)
        self.folded: dict[str, list[str]] = {}
        for name in schema.fields:
            self.folded.setdefault(name.casefold(), []).append(name)

    def find(self, name: str) -> list[str]:
        """Marketo's spelling of ``name``: one name, several (ambiguous), or none (unknown)."""
        if name in self.exact:
            return [name]
        return self.folded.get(name.casefold(), [])

    def suggestion(self, name: str) -> str:
        """"; did you mean ..." for an unknown name, or ""."""
        by_display = self.schema.display.get(name.casefold())
        if by_display is not None:
            return f"; did you mean {quoted(by_display)} (the API name of {quoted(name)})?"
        close = difflib.get_close_matches(name.casefold(), list(self.folded), n=1, cutoff=0.75)
        if close:
            return f"; did you mean {quoted(self.folded[close[0]][0])}?"
        return ""


def check(schema: Schema, target: ImportTarget, names: Sequence[str], *, shown: str) -> list[str]:
    """The names to send, as Marketo spells them; raises ``InputError`` naming line 1 and the columns.

    Args:
        schema: what Marketo's describe says the object takes.
        target: the import (its kind, and a lead route's ``lookupField``).
        names: the header's names, after any column mapping.
        shown: the file, as messages name it.
    """
    index = _Index(schema)
    sent: list[str] = []
    unknown: list[str] = []
    for column, name in enumerate(names, start=1):
        found = index.find(name)
        if len(found) > 1:
            listed = ", ".join(quoted(f) for f in found)
            raise InputError(
                f"{shown}: line 1, column {column}: {quoted(name)} matches several {schema.what} fields ({listed}); "
                "spell it exactly as one of them",
                line=1,
            )
        if not found:
            # A suggestion costs a scan of every field (difflib): only for the columns the message lists, so a
            # header of 100,000 unknown names costs no more than one of _MAX_LISTED.
            hint = index.suggestion(name) if len(unknown) < _MAX_LISTED else ""
            said = f"column {column}: {quoted(name)} is not a {schema.what} field{hint}"
            unknown.append(said if said.endswith("?") else said + ".")
            sent.append(name)
            continue
        sent.append(found[0])
    if unknown:
        more = f" And {len(unknown) - _MAX_LISTED} more." if len(unknown) > _MAX_LISTED else ""
        listed = " ".join([unknown[0], *(u[0].upper() + u[1:] for u in unknown[1:_MAX_LISTED])])
        raise UnknownFieldError(
            f"{shown}: line 1, {listed}{more} Header names must be Marketo's API field names, not display names",
            line=1,
        )
    _no_twice(sent, names, schema, shown)
    _required(sent, target, schema, shown)
    return sent


def _no_twice(sent: list[str], names: Sequence[str], schema: Schema, shown: str) -> None:
    first: dict[str, int] = {}
    for column, name in enumerate(sent):
        if name in first:
            was = first[name]
            raise InputError(
                f"{shown}: line 1: columns {was + 1} ({quoted(names[was])}) and {column + 1} ({quoted(names[column])}) "
                f"are both the {schema.what} field {quoted(name)}; keep one",
                line=1,
            )
        first[name] = column


def _required(sent: list[str], target: ImportTarget, schema: Schema, shown: str) -> None:
    present = {name.casefold() for name in sent}
    has = ", ".join(quoted(n) for n in sent[:_MAX_LISTED]) + (", …" if len(sent) > _MAX_LISTED else "")
    match target.kind:
        case ObjectKind.LEADS:
            lookup = target.lookup_field or D.LOOKUP_FIELD
            if lookup.casefold() not in present:
                raise InputError(
                    f"{shown}: line 1 has no {quoted(lookup)} column: lead imports find existing leads by the "
                    f"route's lookupField ({quoted(lookup)}); line 1 has {has}",
                    line=1,
                )
        case ObjectKind.CUSTOM_OBJECT:
            missing = [f for f in schema.dedupe if f.casefold() not in present]
            if missing:
                listed = ", ".join(quoted(f) for f in missing)
                raise InputError(
                    f"{shown}: line 1 lacks the dedupe field(s) {listed} of {schema.what}: Marketo finds existing "
                    f"records by them, and would fail every row; line 1 has {has}",
                    line=1,
                )
        case ObjectKind.PROGRAM_MEMBER:
            if "email" not in present:
                raise InputError(
                    f"{shown}: line 1 has no \"email\" column: program member imports need it (Marketo deduplicates "
                    f"on it); line 1 has {has}",
                    line=1,
                )


def renamed_note(before: Sequence[str], after: Sequence[str]) -> str | None:
    """The status file's note when names were sent as Marketo spells them, or None."""
    pairs = [f"{quoted(a)} as {quoted(b)}" for a, b in zip(before, after, strict=True) if a != b]
    if not pairs:
        return None
    more = f" and {len(pairs) - _MAX_LISTED} more" if len(pairs) > _MAX_LISTED else ""
    return "header names were sent as Marketo spells them: " + ", ".join(pairs[:_MAX_LISTED]) + more


__all__ = ["check", "quoted", "renamed_note"]
