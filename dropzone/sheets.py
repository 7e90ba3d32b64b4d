"""Workbook drops: one sheet of an .xlsx written out as a CSV file, row by row.

Owns the conversion (python-calamine reads; ``csv`` writes) and how each
cell is written (``cell_text``, pure and table-tested): dates and date-times
in ISO 8601, empty cells empty, whole numbers without a spurious ``.0``,
other numbers as Excel shows them (15 significant digits), booleans as
``true``/``false``. The header is the sheet's first non-empty row; rows that
are entirely empty are left out (they would only fail in Marketo), and the
status file says how line numbers map to the sheet's rows. Does not own:
which files are workbooks and which sheet (``unpacking``, the route's
``sheet``), nor bounding the workbook's expanded size (``decoders.repack_workbook``
runs first; this module bounds the CSV it writes).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import python_calamine

from dropzone.errors import InputError

#: Largest float written as a whole number: past 2**53 a float no longer holds every integer.
_EXACT = 2**53


def cell_text(value: object) -> str:
    """One cell as CSV text. Pure."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _EXACT:
            return str(int(value))
        return format(value, ".15g")
    if isinstance(value, int):
        return str(value)
    return str(value)


class _Bounded:
    """A text file the CSV writer writes to, refusing past ``limit`` bytes (of UTF-8)."""

    def __init__(self, path: Path, limit: int, overflow: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.limit, self.overflow = limit, overflow
        self.written = 0

    def write(self, text: str) -> int:
        self.written += len(text.encode("utf-8"))
        if self.written > self.limit:
            raise InputError(self.overflow)
        return self.file.write(text)


def to_csv(workbook: Path, dest: Path, *, sheet: str | None, limit: int, overflow: str, shown: str) -> list[str]:
    """Write ``sheet`` (None: the first) of the .xlsx at ``workbook`` to ``dest`` as CSV; notes for the status file.

    Raises:
        InputError: no such sheet, an unreadable workbook, an empty sheet, or more than ``limit`` bytes of CSV.
    """
    try:
        return _to_csv(workbook, dest, sheet=sheet, limit=limit, overflow=overflow, shown=shown)
    except (OverflowError, ValueError) as exc:
        raise InputError(f"{shown}: a cell cannot be converted to text ({exc})") from None
    except BaseException as exc:
        # A panic in the reader (Rust) comes up as pyo3's PanicException, a BaseException: the workbook's
        # problem, never the daemon's (uncaught, it would stop the daemon, and again on every restart).
        if type(exc).__name__ != "PanicException":
            raise
        raise InputError(f"{shown}: cannot be read as an .xlsx workbook (the reader failed on it)") from None


def _to_csv(workbook: Path, dest: Path, *, sheet: str | None, limit: int, overflow: str, shown: str) -> list[str]:
    try:
        book = python_calamine.CalamineWorkbook.from_path(str(workbook))
    except python_calamine.CalamineError as exc:
        raise InputError(f"{shown}: cannot be read as an .xlsx workbook ({exc})") from None
    try:
        names = list(book.sheet_names)
        if not names:
            raise InputError(f"{shown}: the workbook has no sheets")
        if sheet is not None and sheet not in names:
            listed = ", ".join(repr(n) for n in names)
            raise InputError(f"{shown}: the workbook has no sheet {sheet!r} (the route's sheet); its sheets: {listed}")
        name = sheet if sheet is not None else names[0]
        try:
            rows = book.get_sheet_by_name(name)
            leading = 0  # empty rows before the header
            out = _Bounded(dest, limit, overflow)
            with out.file:
                writer = csv.writer(out, lineterminator="\n")
                written = skipped = 0
                multiline = False
                for row in rows.iter_rows():
                    cells = [cell_text(value) for value in row]
                    if not any(cells):
                        if written:
                            skipped += 1
                        else:
                            leading += 1
                        continue
                    multiline = multiline or any("\n" in c or "\r" in c for c in cells)
                    writer.writerow(cells)
                    written += 1
        except python_calamine.CalamineError as exc:
            raise InputError(f"{shown}: sheet {name!r} cannot be read ({exc})") from None
    finally:
        book.close()
    if not written:
        raise InputError(f"{shown}: sheet {name!r} is empty")
    # calamine yields rows from the sheet's first row, or (some versions) from the first row in use.
    seen = leading + written + skipped
    header_row = 1 + leading + (rows.start[0] if rows.start and seen == rows.height else 0)
    notes = [f"converted from sheet {name!r} of the workbook to CSV (dates in ISO 8601)"]
    if header_row == 1 and not skipped and not multiline:
        notes.append("line numbers are the sheet's row numbers")
    else:
        details = [f"line 1, the header, is row {header_row} of the sheet"]
        if skipped:
            details.append(f"{skipped} empty row(s) were left out")
        if multiline:
            details.append("cells with line breaks take several lines")
        notes.append(f"line numbers count the lines of the converted CSV ({'; '.join(details)})")
    return notes


__all__ = ["cell_text", "to_csv"]
