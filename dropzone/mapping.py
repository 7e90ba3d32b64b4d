"""A route's column mapping: partner header names in, Marketo field names out, and back (pure).

A route may rename the partner's columns to Marketo field names, drop some
(``null``) and add constant columns to every record::

    columns: {"E-mail Address": email, "Internal Ref": null}
    constants: {leadSource: Expo 2026}

This module owns the rules, on plain values:

* ``build_plan``: the route's ``columns``/``constants`` against one file's
  header fields give a ``Plan``: which source columns are kept, in order,
  under which names, and the constant values appended. Header names match a
  ``columns`` key exactly first, then ignoring case and surrounding spaces.
  A listed column the file lacks is not an error (``Plan.missing``).
* ``Plan.record``: one record's fields rewritten (only when columns are
  dropped or constants added; a rename alone changes only the header, so
  records keep their bytes).
* ``ReverseMap``: what the outbox needs to give the failures and warnings
  files back in the partner's names (renamed columns get their partner name,
  constant columns are removed), persisted beside the chunks so a restart or
  a configuration reload between split and report changes nothing.
* ``LineMap``: where a chunk's physical lines drift from the partner's
  (a dropped field that held line breaks leaves the chunk with fewer lines
  than the source). Only the points where the drift changes are kept, one per
  record whose dropped fields held line breaks, so a file without such
  records has no line map at all.

Refusals are ``InputError`` with ``line=1`` and no file name (the caller
adds it).
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dropzone.errors import InputError

#: The reverse map, in the file's work area beside its chunks.
REVERSE_MAP_NAME = "mapping.json"
#: A chunk's line map: ``<chunk file name><suffix>``, beside the chunk; absent when it has no drift.
LINE_MAP_SUFFIX = ".lines"
_VERSION = 1
_LINE_MAP_MAGIC = b"dropzone line map 1\n"


def loose(name: str) -> str:
    """How a header name matches a ``columns`` key when no key matches it exactly."""
    return name.strip().casefold()


def constant_text(value: object) -> str | None:
    """A configured constant as the text sent (None: not a scalar Marketo can take)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """How one file's records become the records sent.

    ``keep``: source column indices kept, in order; ``names``: the header
    sent (the kept columns' names, then the constants'); ``partner``: each
    kept column's name in the partner's header; ``listed``: whether a kept
    column was renamed by the route's ``columns`` (the others pass through
    under the partner's name); ``values``: the constants' values.
    """

    width: int
    keep: tuple[int, ...]
    names: tuple[str, ...]
    partner: tuple[str, ...]
    listed: tuple[bool, ...]
    values: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def rewrites_records(self) -> bool:
        """Whether records change (columns dropped or added); a rename only changes the header."""
        return bool(self.values) or self.keep != tuple(range(self.width))

    @property
    def constants(self) -> tuple[str, ...]:
        return self.names[len(self.keep) :]

    def record(self, fields: list[str]) -> list[str]:
        """One record's fields as sent.

        A record with as many fields as the header gets the kept ones and the
        constants. A ragged one (Marketo fails it, "Invalid number of fields")
        keeps the kept fields it has, then its extra fields, then the
        constants: it stays ragged, and fails as it would have, unless every
        field it lacks was dropped anyway (then each value is still under its
        own column, and it is sent whole).
        """
        if not fields:
            return fields  # a blank line stays blank
        if len(fields) == self.width:
            out = [fields[i] for i in self.keep]
        else:
            out = [fields[i] for i in self.keep if i < len(fields)]
            out += fields[self.width :]
        out += self.values
        # Never a blank line (Marketo skips those): one empty field still fails as ragged.
        return out or [""]

    def passthrough(self) -> list[tuple[int, str]]:
        """(source index, name) of the kept columns the route's ``columns`` do not name."""
        return [(i, name) for i, name, listed in zip(self.keep, self.partner, self.listed, strict=True) if not listed]

    def trimmed(self) -> Plan:
        """Spaces around the names of columns passing through removed (``trim_header``)."""
        kept = self.names[: len(self.keep)]
        names = [name if listed else name.strip() for name, listed in zip(kept, self.listed, strict=True)]
        return replace(self, names=(*names, *self.constants))

    def respelled(self, names: Sequence[str]) -> Plan:
        """The same plan sending ``names`` (one per column sent, e.g. as Marketo spells its fields)."""
        if len(names) != len(self.names):
            raise ValueError(f"{len(names)} names for a header of {len(self.names)} columns")
        return replace(self, names=tuple(names))

    def check_unique(self) -> None:
        """Refuse a header that would send one name twice, saying where each one came from."""
        first: dict[str, int] = {}
        for j, name in enumerate(self.names):
            if name not in first:
                first[name] = j
                continue
            raise InputError(_twice(self, first[name], j), line=1)

    def reverse(self) -> ReverseMap:
        """What the failures and warnings files need to speak the partner's names again."""
        columns = tuple(
            (sent, partner)
            for sent, partner in zip(self.names[: len(self.keep)], self.partner, strict=True)
            if sent != partner and sent != partner.strip()
        )
        return ReverseMap(columns=columns, constants=self.constants)


def _origin(plan: Plan, j: int) -> str:
    if j >= len(plan.keep):
        return "a constant of the route"
    if plan.listed[j]:
        return f"column {plan.partner[j]!r}, renamed by the route's columns"
    return f"column {plan.partner[j]!r}, passed through unchanged"


def _twice(plan: Plan, a: int, b: int) -> str:
    name, kept = plan.names[b], len(plan.keep)
    if b < kept and not plan.listed[a] and not plan.listed[b] and plan.partner[a].strip() == plan.partner[b].strip():
        return f"header column {name!r} appears twice on line 1"
    if a < kept <= b:
        return (
            f"{name!r} on line 1 would be sent twice: it is {_origin(plan, a)}, and {_origin(plan, b)}; "
            "drop the column (map it to null in the route's columns) or remove the constant"
        )
    return (
        f"{name!r} on line 1 would be sent twice: as {_origin(plan, a)}, and as {_origin(plan, b)}; "
        "map one of them to another field, or drop it (null in the route's columns)"
    )


def build_plan(
    fields: Sequence[str],
    columns: Sequence[tuple[str, str | None]] = (),
    constants: Sequence[tuple[str, str]] = (),
) -> Plan:
    """The plan for a file with header ``fields`` under a route's ``columns`` and ``constants``.

    ``columns`` keys are assumed distinct even ignoring case and surrounding
    spaces, and their targets distinct (the configuration checks both).

    Raises:
        InputError: two columns of the file match one key mapped to a field,
            or every column is dropped (``line=1``).
    """
    target = dict(columns)
    by_loose = {loose(key): key for key in target}
    key_of: list[str | None] = [name if name in target else None for name in fields]
    exact = {key for key in key_of if key is not None}
    for i, name in enumerate(fields):
        if key_of[i] is None:
            key = by_loose.get(loose(name))
            # Exact first: a key the file has verbatim takes no other column.
            if key is not None and key not in exact:
                key_of[i] = key
    matched: dict[str, list[int]] = {}
    for i, key in enumerate(key_of):
        if key is not None:
            matched.setdefault(key, []).append(i)
    for key, where in matched.items():
        if len(where) > 1 and target[key] is not None:
            a, b = (fields[i] for i in where[:2])
            raise InputError(
                f"columns {a!r} and {b!r} on line 1 both match {key!r} of the route's columns (names match "
                f"ignoring case and spaces around them when none matches exactly), so {target[key]!r} would "
                "be sent twice; rename one of them in the file",
                line=1,
            )
    keep = tuple(i for i, key in enumerate(key_of) if key is None or target[key] is not None)
    if not keep:
        raise InputError(
            "every column on line 1 is dropped by the route's columns (mapped to null): nothing would be imported",
            line=1,
        )
    names = tuple(fields[i] if (key := key_of[i]) is None else (target[key] or fields[i]) for i in keep)
    return Plan(
        width=len(fields),
        keep=keep,
        names=names + tuple(name for name, _ in constants),
        partner=tuple(fields[i] for i in keep),
        listed=tuple(key_of[i] is not None for i in keep),
        values=tuple(value for _, value in constants),
        missing=tuple(key for key in target if key not in matched),
    )


@dataclass(frozen=True, slots=True)
class ReverseMap:
    """Marketo's echo of the header as sent, back in the partner's names.

    ``columns``: (name sent, partner's name) of renamed columns;
    ``constants``: names of the constant columns, which the partner never
    sent and does not get back.
    """

    columns: tuple[tuple[str, str], ...] = ()
    constants: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.columns or self.constants)

    def apply(self, header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
        """A result file's ``header`` (its last column Marketo's reason) and ``rows``, in the partner's terms.

        Constant columns are found by name in the header (Marketo is known to
        leave columns out of some failure files) and removed from the rows
        that have the header's width; a row of another width (a ragged one,
        or one Marketo shortened) keeps its values, as nothing says which
        are which.
        """
        constants = set(self.constants)
        drop = {i for i, name in enumerate(header[:-1]) if name in constants}
        partner = dict(self.columns)
        named = [partner.get(name, name) if i < len(header) - 1 else name for i, name in enumerate(header)]
        if not drop:
            return named, rows
        width = len(header)

        def keep(values: list[str]) -> list[str]:
            return [v for i, v in enumerate(values) if i not in drop]

        return keep(named), [keep(row) if len(row) == width else row for row in rows]

    def encode(self) -> bytes:
        doc = {"version": _VERSION, "columns": [list(p) for p in self.columns], "constants": list(self.constants)}
        return (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> ReverseMap:
        """Raises ``ValueError`` when ``data`` is not a reverse map this version wrote."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise ValueError("not a reverse map of this version")
        try:
            columns = tuple((str(sent), str(partner)) for sent, partner in doc["columns"])
            return cls(columns=columns, constants=tuple(str(n) for n in doc["constants"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a reverse map: {exc}") from None


class LineMap:
    """A chunk's drift from the source's physical lines.

    Points (k, drift), k ascending: from the record that starts ``k``
    physical lines after the chunk's header on, the source line is
    ``chunk.first_line + k + drift``. No points: the chunk has the source's
    lines (drift 0). A point costs 16 bytes, in memory and on disk, so even
    a chunk whose every tiny record dropped a line break (2 million points
    at most) stays a few tens of MB.
    """

    __slots__ = ("_drift", "_k")

    def __init__(self, points: Iterable[tuple[int, int]] = ()) -> None:
        self._k, self._drift = array("q"), array("q")
        for k, drift in points:
            self.add(k, drift)

    def add(self, k: int, drift: int) -> None:
        """A new point, after the last one."""
        self._k.append(k)
        self._drift.append(drift)

    @property
    def points(self) -> list[tuple[int, int]]:
        return list(zip(self._k, self._drift, strict=True))

    def __bool__(self) -> bool:
        return bool(self._k)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineMap) and self._k == other._k and self._drift == other._drift

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"LineMap({self.points!r})"

    def source_line(self, first_line: int, k: int) -> int:
        """The source line of the record starting ``k`` lines after the chunk's header."""
        i = bisect_right(self._k, k) - 1
        return first_line + k + (self._drift[i] if i >= 0 else 0)

    def encode(self) -> bytes:
        flat = array("q", (n for point in zip(self._k, self._drift, strict=True) for n in point))
        if sys.byteorder == "big":
            flat.byteswap()  # little-endian on disk
        return _LINE_MAP_MAGIC + flat.tobytes()

    @classmethod
    def decode(cls, data: bytes) -> LineMap:
        """Raises ``ValueError`` when ``data`` is not a line map this version wrote."""
        if not data.startswith(_LINE_MAP_MAGIC) or (len(data) - len(_LINE_MAP_MAGIC)) % 16:
            raise ValueError("not a line map of this version")
        flat = array("q", data[len(_LINE_MAP_MAGIC) :])
        if sys.byteorder == "big":
            flat.byteswap()
        lines = cls()
        lines._k, lines._drift = flat[0::2], flat[1::2]
        return lines


def line_map_path(chunk_path: Path) -> Path:
    return chunk_path.with_name(chunk_path.name + LINE_MAP_SUFFIX)


__all__ = [
    "LINE_MAP_SUFFIX",
    "REVERSE_MAP_NAME",
    "LineMap",
    "Plan",
    "ReverseMap",
    "build_plan",
    "constant_text",
    "line_map_path",
    "loose",
]
