"""Import files: parsing, the row rules, and the failure/warning files (pure).

Owns everything that looks at the bytes of an uploaded file: the delimiter,
RFC 4180 quoting, the verbatim header, which rows fail or warn and why, and
how the failure and warning files are written back. Knows nothing of jobs,
queues or HTTP.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .config import FieldSpec

DELIMITERS: Mapping[str, str] = {"csv": ",", "tsv": "\t", "ssv": ";"}

FAILURE_COLUMN = "Import Failure Reason"
WARNING_COLUMN = "Import Warning Reason"

DEDUPE_REASON = "missing.dedupe.fields"
INVALID_EMAIL = "Invalid email address"
RAGGED_REASON = "Invalid number of fields"

# Loose on purpose: Marketo warns on obviously broken addresses, it does not run RFC 5322.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_TRUE_FALSE = frozenset({"true", "false", "1", "0", "yes", "no"})


class EmptyFileError(ValueError):
    """The file has no header or no data row (Marketo answers 1003 "Empty file")."""


class UnreadableFileError(ValueError):
    """The csv module gave up on the file (e.g. a field over its size limit)."""


@dataclass
class RowOutcome:
    """What happened to one data row."""

    values: list[str]
    failure: str | None = None
    warning: str | None = None
    dropped: bool = False

    @property
    def imported(self) -> bool:
        return self.failure is None and not self.dropped


@dataclass(frozen=True)
class CustomObjectSchema:
    api_name: str
    fields: Mapping[str, FieldSpec]
    dedupe: tuple[str, ...]
    # What Describe Custom Object says besides the fields.
    display_name: str = ""
    description: str = ""
    relationships: tuple[Mapping[str, object], ...] = ()


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def parse_table(data: bytes, delimiter: str) -> Table:
    """Split a file into its verbatim header and data rows.

    The bytes are read as UTF-8 with replacement characters, so a Latin-1 file
    arrives garbled rather than refused, and a BOM stays part of the first
    column name: nothing here trims or normalises the header.

    Raises:
        EmptyFileError: no header, or a header and no data rows.
        UnreadableFileError: the csv module could not read it.
    """
    text = data.decode("utf-8", errors="replace")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=True, strict=False
    )
    try:
        # csv yields [] for a blank line; those are not records.
        records = [record for record in reader if record]
    except csv.Error as exc:
        raise UnreadableFileError(str(exc)) from None
    if len(records) < 2:
        raise EmptyFileError("Empty file")
    return Table(header=records[0], rows=records[1:])


def unknown_columns(header: Sequence[str], known: Mapping[str, FieldSpec], *, case_sensitive: bool) -> list[str]:
    """Header names that are no known field, in header order."""
    names = set(known) if case_sensitive else {name.lower() for name in known}
    return [col for col in header if (col if case_sensitive else col.lower()) not in names]


def _resolver(known: Mapping[str, FieldSpec], *, case_sensitive: bool) -> dict[str, FieldSpec]:
    return dict(known) if case_sensitive else {name.lower(): spec for name, spec in known.items()}


def _column_specs(
    header: Sequence[str], known: Mapping[str, FieldSpec], *, case_sensitive: bool
) -> list[FieldSpec | None]:
    table = _resolver(known, case_sensitive=case_sensitive)
    return [table.get(col if case_sensitive else col.lower()) for col in header]


def _column_index(header: Sequence[str], name: str, *, case_sensitive: bool) -> int | None:
    for i, col in enumerate(header):
        if col == name or (not case_sensitive and col.lower() == name.lower()):
            return i
    return None


def check_value(spec: FieldSpec, value: str) -> tuple[str | None, str | None]:
    """(failure, warning) for one non-lookup cell; empty cells are nulls and always pass."""
    text = value.strip()
    if not text:
        return None, None
    kind = spec.data_type
    if kind == "email":
        return (None, None) if _EMAIL.match(text) else (None, INVALID_EMAIL)
    if _valid_for_type(kind, text):
        return None, None
    return f"Invalid data type in field {spec.display_name}", None


def _valid_for_type(kind: str, text: str) -> bool:
    if kind == "integer":
        return bool(_INTEGER.match(text)) and -(2**31) <= int(text) < 2**31
    if kind in ("float", "currency"):
        try:
            return math.isfinite(float(text))
        except ValueError:
            return False
    if kind == "boolean":
        return text.lower() in _TRUE_FALSE
    if kind == "date":
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            return False
        return True
    if kind == "datetime":
        try:
            dt.datetime.fromisoformat(text)  # 3.11+ reads a trailing "Z"
        except ValueError:
            return False
        return True
    return True


def _typed_row(values: Sequence[str], specs: Sequence[FieldSpec | None], outcome: RowOutcome) -> None:
    # A type failure beats an email warning on the same row: the row is not imported at all.
    for spec, value in zip(specs, values, strict=True):
        if spec is None:
            continue
        failure, warning = check_value(spec, value)
        if failure:
            outcome.failure = failure
            outcome.warning = None
            return
        if warning and outcome.warning is None:
            outcome.warning = warning


def _ragged(row: list[str], width: int, mode: str) -> RowOutcome | None:
    if len(row) == width:
        return None
    if mode == "drop":
        return RowOutcome(values=row, dropped=True)
    return RowOutcome(values=row, failure=RAGGED_REASON)


def evaluate_leads(
    table: Table,
    *,
    lookup_field: str,
    fields: Mapping[str, FieldSpec],
    case_sensitive: bool,
    ragged: str,
) -> list[RowOutcome]:
    """Row rules for leads: empty lookup value fails, bad types fail, bad emails warn."""
    specs = _column_specs(table.header, fields, case_sensitive=case_sensitive)
    lookup = _column_index(table.header, lookup_field, case_sensitive=case_sensitive)
    outcomes = []
    for row in table.rows:
        bad = _ragged(row, len(table.header), ragged)
        if bad:
            outcomes.append(bad)
            continue
        outcome = RowOutcome(values=row)
        if lookup is None or not row[lookup].strip():
            outcome.failure = f"Value for lookup field '{lookup_field}' not found"
        else:
            _typed_row(row, specs, outcome)
        outcomes.append(outcome)
    return outcomes


def evaluate_program_members(
    table: Table,
    *,
    fields: Mapping[str, FieldSpec],
    case_sensitive: bool,
    ragged: str,
) -> list[RowOutcome]:
    """Row rules for program members: email is required (the dedupe key), a bad one only warns.

    A missing or empty email fails with the lead lookup text, since email is
    the program-member lookup field [INF: the docs give no text].
    """
    return evaluate_leads(table, lookup_field="email", fields=fields, case_sensitive=case_sensitive, ragged=ragged)


def evaluate_custom_object(table: Table, *, schema: CustomObjectSchema, ragged: str) -> list[RowOutcome]:
    """Row rules for custom objects: a dedupe field absent from the header fails every row.

    Seed 004: the header ``color,make,model, vin`` lacks ``vin`` (the space is
    part of the name), so all three rows fail with ``missing.dedupe.fields``.
    An empty dedupe value fails that row the same way [INF].
    """
    missing = [name for name in schema.dedupe if name not in table.header]
    dedupe_idx = [table.header.index(name) for name in schema.dedupe if name in table.header]
    specs = [schema.fields.get(col) for col in table.header]
    outcomes = []
    for row in table.rows:
        bad = _ragged(row, len(table.header), ragged)
        if bad:
            outcomes.append(bad)
            continue
        outcome = RowOutcome(values=row)
        if missing or any(not row[i].strip() for i in dedupe_idx):
            outcome.failure = DEDUPE_REASON
        else:
            _typed_row(row, specs, outcome)
        outcomes.append(outcome)
    return outcomes


def render_report(
    header: Sequence[str],
    outcomes: Sequence[RowOutcome],
    *,
    warnings: bool,
    delimiter: str,
    drop_column: int | None = None,
    unquoted: bool = False,
) -> bytes:
    """The failures (or warnings) file: submitted header verbatim + the reason column, affected rows only.

    ``drop_column`` and ``unquoted`` reproduce P1's lossy failure files.
    """
    reason_col = WARNING_COLUMN if warnings else FAILURE_COLUMN
    lines: list[list[str]] = [[*_without(header, drop_column), reason_col]]
    for outcome in outcomes:
        reason = outcome.warning if warnings else outcome.failure
        if reason is None or outcome.dropped or (warnings and not outcome.imported):
            continue
        lines.append([*_without(outcome.values, drop_column), reason])
    if unquoted:
        return "".join(delimiter.join(line) + "\n" for line in lines).encode("utf-8")
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, quotechar='"', lineterminator="\n")
    writer.writerows(lines)
    return buf.getvalue().encode("utf-8")


def _without(values: Sequence[str], index: int | None) -> list[str]:
    if index is None or index >= len(values):
        return list(values)
    return [v for i, v in enumerate(values) if i != index]


def row_dict(header: Sequence[str], values: Sequence[str]) -> dict[str, str]:
    """A row as {header name: value}, header names verbatim."""
    return dict(zip(header, values, strict=False))
