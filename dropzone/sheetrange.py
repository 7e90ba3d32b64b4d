"""How much memory reading a worksheet would take: the extent of its cells, measured while its XML streams by.

calamine holds a sheet as one dense rectangle from its first used cell to its last: a 2 kB workbook
with cells at A1 and XFD100000 asks for 16,384 x 100,000 cells (some 50 GB) and the process is
killed, before any Python code can refuse it; restarted, the daemon would take the same file again.
So before calamine reads a workbook, ``decoders.repack_workbook`` feeds each worksheet part through a
``RangeMeter`` (expat, incremental, constant memory) and refuses a sheet whose rectangle passes
``MAX_SHEET_CELLS``. Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from dropzone import defaults as D

_REF = re.compile(r"([A-Z]{1,3})?(\d{1,7})?\Z")
_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _column(letters: str) -> int:
    number = 0
    for ch in letters:
        number = number * 26 + ord(ch) - 64
    return number


class RangeMeter:
    """The rows and columns a worksheet's cells span, fed its XML in pieces."""

    def __init__(self) -> None:
        self._parser: XMLPullParser[Element] = XMLPullParser(events=("start",))
        self._row = 0
        self._col = 0
        self.top = self.left = 0  # 0: no cell yet
        self.bottom = self.right = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._parser.feed(data)
            for event in self._parser.read_events():
                element = event[-1]
                if not isinstance(element, Element):
                    continue
                if element.tag == f"{_NS}row":
                    self._row = _number(element.get("r"), self._row + 1)
                    self._col = 0
                elif element.tag == f"{_NS}c":
                    self._cell(element.get("r"))
                element.clear()
        except ParseError:
            self.broken = True  # calamine will say what is wrong with it

    def _cell(self, ref: str | None) -> None:
        # Positions may be left out (the next cell, in the row's next column): counted as calamine counts them.
        found = _REF.match(ref or "")
        letters, digits = (found.group(1), found.group(2)) if found else (None, None)
        self._col = _column(letters) if letters else self._col + 1
        row = int(digits) if digits else self._row
        for edge, value, low in (("top", row, True), ("bottom", row, False), ("left", self._col, True),
                                 ("right", self._col, False)):
            old = getattr(self, edge)
            if old == 0 or (value < old if low else value > old):
                setattr(self, edge, value)

    @property
    def cells(self) -> int:
        """The rectangle calamine would allocate, in cells."""
        if self.top == 0:
            return 0
        return (self.bottom - self.top + 1) * (self.right - self.left + 1)

    def problem(self, shown: str, part: str) -> str | None:
        """Why the sheet in ``part`` cannot be read, or None."""
        if self.cells <= D.MAX_SHEET_CELLS:
            return None
        return (
            f"{shown}: a sheet ({part}) spans {self.bottom - self.top + 1:,} rows by {self.right - self.left + 1:,} "
            f"columns ({self.cells:,} cells, more than {D.MAX_SHEET_CELLS:,}): it is read whole into memory; "
            "delete the stray cells far from the data, or send it as CSV"
        )


def _number(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() and len(text) <= 7 else default


__all__ = ["RangeMeter"]
