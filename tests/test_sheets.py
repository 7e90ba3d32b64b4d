"""Workbook drops: cells as CSV text (a table), and real .xlsx files (written with openpyxl) converted to CSV."""

from __future__ import annotations

import datetime as dt
import gzip
import re
import zipfile
from pathlib import Path

import openpyxl
import pytest

from dropzone import decoders, sheets
from dropzone.errors import InputError
from dropzone.sheetrange import RangeMeter
from dropzone.unpack_config import UnpackLimits
from dropzone.unpacker import Unpacker


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("", ""),
        ("Ann", "Ann"),
        (" spaced ", " spaced "),
        (42.0, "42"),
        (-0.0, "0"),
        (4155551234.0, "4155551234"),
        (3.5, "3.5"),
        (0.1 + 0.2, "0.3"),
        (1e20, "1e+20"),
        (7, "7"),
        (True, "true"),
        (False, "false"),
        (dt.datetime(2024, 5, 1, 13, 45), "2024-05-01T13:45:00"),
        (dt.datetime(2024, 5, 1, 13, 45, 0, 500000), "2024-05-01T13:45:00.500000"),
        (dt.date(2024, 5, 2), "2024-05-02"),
        (dt.time(9, 30), "09:30:00"),
        (dt.timedelta(hours=36), "1 day, 12:00:00"),
    ],
)
def test_cell_text(value, text):
    assert sheets.cell_text(value) == text


def workbook(path: Path, sheets_rows: dict[str, list[list[object]]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets_rows.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


CONTACTS = [
    ["email", "firstName", "signedUp", "lastSeen", "score", "note"],
    ["ann@example.com", "Ann", dt.date(2024, 5, 2), dt.datetime(2024, 5, 1, 13, 45), 42, None],
    ["bob@example.com", None, None, None, 3.25, "VIP"],
]


def convert(path: Path, work: Path, *, sheet: str | None = None, limits: UnpackLimits | None = None,
            name: str | None = None) -> tuple[bytes, list[str]]:
    """What the prepare stage would split: the workbook at ``path``, dropped as ``name``."""
    unpacker = Unpacker(limits or UnpackLimits())
    plan = unpacker.plan(name or path.name)
    work.mkdir(exist_ok=True)
    notes: list[str] = []
    with open(path, "rb") as original, unpacker.plaintext(original, plan, work, notes=notes, sheet=sheet) as source:
        data = source.read()
    assert sorted(p.name for p in work.iterdir()) == [], "temporary files go with the split"
    return data, notes


class TestConvert:
    def test_the_first_sheet_by_default(self, tmp_path):
        path = workbook(tmp_path / "book.xlsx", {"Contacts": CONTACTS, "Other": [["x"], [1]]})
        data, notes = convert(path, tmp_path / "work")
        assert data.decode().splitlines() == [
            "email,firstName,signedUp,lastSeen,score,note",
            "ann@example.com,Ann,2024-05-02,2024-05-01T13:45:00,42,",
            "bob@example.com,,,,3.25,VIP",
        ]
        assert notes == ["converted from sheet 'Contacts' of the workbook to CSV (dates in ISO 8601)",
                         "line numbers are the sheet's row numbers"]

    def test_the_routes_sheet(self, tmp_path):
        path = workbook(tmp_path / "book.xlsx", {"Other": [["x"], [1]], "Contacts": CONTACTS})
        data, _ = convert(path, tmp_path / "work", sheet="Contacts")
        assert data.startswith(b"email,firstName,")

    def test_a_missing_sheet_names_the_ones_there(self, tmp_path):
        path = workbook(tmp_path / "book.xlsx", {"One": [["x"]], "Two": [["y"]]})
        words = "has no sheet 'Contacts' (the route's sheet); its sheets: 'One', 'Two'"
        with pytest.raises(InputError, match=re.escape(words)):
            convert(path, tmp_path / "work", sheet="Contacts")

    def test_empty_rows_are_left_out_and_said(self, tmp_path):
        rows = [[None], [None], ["email", "note"], ["a@example.com", "two\nlines"], [None, None], ["b@example.com", 1]]
        path = workbook(tmp_path / "book.xlsx", {"S": rows})
        data, notes = convert(path, tmp_path / "work")
        assert data == b'email,note\na@example.com,"two\nlines"\nb@example.com,1\n'
        assert "line 1, the header, is row 3 of the sheet; 1 empty row(s) were left out; cells with line breaks" \
            in notes[1]

    def test_a_gzipped_workbook(self, tmp_path):
        path = workbook(tmp_path / "book.xlsx", {"Contacts": CONTACTS})
        (tmp_path / "book.xlsx.gz").write_bytes(gzip.compress(path.read_bytes()))
        data, notes = convert(tmp_path / "book.xlsx.gz", tmp_path / "work")
        assert data.startswith(b"email,") and "gzip" in notes[0]

    @pytest.mark.parametrize(
        ("content", "words"),
        [
            (decoders.CFB_MAGIC + b"\0" * 2000, "password-protected workbook"),
            (b"email\na@example.com\n", "cannot be read as a zip archive"),
            (b"", "cannot be read as a zip archive"),
            ("truncated", "cannot be read as a zip archive"),
            ("no sheets", "cannot be read as an .xlsx workbook"),
            ("empty", "is empty"),
        ],
    )
    def test_what_cannot_be_read_is_rejected_with_the_reason(self, tmp_path, content, words):
        path = tmp_path / "book.xlsx"
        if content == "truncated":
            path.write_bytes(workbook(tmp_path / "w.xlsx", {"S": CONTACTS}).read_bytes()[:-200])
        elif content == "no sheets":
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("hello.txt", "not a workbook")
        elif content == "empty":
            workbook(path, {"S": []})
        else:
            path.write_bytes(content)
        with pytest.raises(InputError, match=words) as info:
            convert(path, tmp_path / "work")
        assert str(info.value).startswith("book.xlsx: ")

    def test_a_workbook_bomb_is_refused_before_it_is_read(self, tmp_path):
        """A sheet part of 64 MiB of spaces in ~64 kB: refused by the ratio bound, before calamine sees it."""
        path = tmp_path / "book.xlsx"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("xl/worksheets/sheet1.xml", b" " * (64 << 20))
        with pytest.raises(InputError, match=r"\(max_compression_ratio\)"):
            convert(path, tmp_path / "work")

    @pytest.mark.parametrize("repeated", [False, True])
    def test_the_workbook_and_its_csv_are_bounded(self, tmp_path, repeated):
        """Parts past max_expanded_bytes; or a CSV past it from small parts (one long string, shared by every row)."""
        text = "x" * 1000 if repeated else None
        rows = [["email", "note"], *([f"u{i}@example.com" if not repeated else "a", text] for i in range(3000))]
        path = workbook(tmp_path / "book.xlsx", {"S": rows})
        bound = 400_000 if repeated else 10_000
        with pytest.raises(InputError, match=rf"more than {bound:,} bytes \(max_expanded_bytes\)"):
            convert(path, tmp_path / "work", limits=UnpackLimits(max_expanded_bytes=bound))


def test_repack_copies_each_part_as_stored(tmp_path):
    path = workbook(tmp_path / "book.xlsx", {"S": CONTACTS})
    with open(path, "rb") as source:
        decoders.repack_workbook(source, tmp_path / "out.xlsx", limits=UnpackLimits(), shown="book.xlsx")
    with zipfile.ZipFile(tmp_path / "out.xlsx") as out, zipfile.ZipFile(path) as original:
        assert out.namelist() == [i.filename for i in original.infolist() if not i.is_dir()]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in out.infolist())
        assert all(out.read(n) == original.read(n) for n in out.namelist())



class TestUsedRange:
    """calamine holds a sheet as one dense rectangle: a stray far cell must be refused before it reads."""

    def test_a_stray_far_cell_is_refused_before_the_reader_allocates_it(self, tmp_path):
        book = openpyxl.Workbook()
        book.active["A1"] = "email"
        book.active["A2"] = "ann@example.com"
        book.active["XFD100000"] = "x"  # 16,384 x 100,000 cells: ~50 GB to calamine, which aborts the process
        book.save(tmp_path / "sparse.xlsx")
        with pytest.raises(InputError, match=r"spans 100,000 rows by 16,384 columns"):
            convert(tmp_path / "sparse.xlsx", tmp_path / "w")

    @pytest.mark.parametrize(
        ("xml", "cells"),
        [
            (b'<row r="1"><c r="A1"/><c r="C1"/></row><row r="4"><c r="B4"/></row>', 12),
            (b'<row r="2"><c/><c/><c/></row><row><c/></row>', 6),  # positions left out: next column, next row
            (b"", 0),
            # Read as generously as a reader would: lowercase, leading zeros, absolute, very long numbers.
            (b'<row r="1"><c r="A1"/><c r="xfd00100000"/></row>', 16_384 * 100_000),
            (b'<row r="1"><c r="$A$1"/><c r="B1000000000000001"/></row>', 2 * 10**12),
        ],
    )
    @pytest.mark.parametrize(
        "namespace", ["http://schemas.openxmlformats.org/spreadsheetml/2006/main", "http://purl.oclc.org/ooxml/spreadsheetml/main"]
    )
    def test_the_meter_measures_the_rectangle_fed_in_pieces(self, xml, cells, namespace):
        meter = RangeMeter()
        data = f'<worksheet xmlns="{namespace}"><sheetData>'.encode() + xml + b"</sheetData></worksheet>"
        for i in range(0, len(data), 7):
            meter.feed(data[i : i + 7])
        assert meter.cells == cells
