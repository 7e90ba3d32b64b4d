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

# As generous as any reader: letters in either case, any number of digits (leading zeros too). A reference
# read more strictly than calamine reads it would let a far cell through unmeasured.
_REF = re.compile(r"\$?([A-Za-z]+)?\$?(\d+)?\Z")


def _column(letters: str) -> int:
    number = 0
    for ch in letters.upper()[:8]:  # 8 letters already pass any sheet's width
        number = number * 26 + ord(ch) - 64
    return number


def _local(tag: str) -> str:
    """The element's name without its namespace: transitional and strict OOXML both (and none)."""
    return tag.rpartition("}")[2]


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
                name = _local(element.tag)
                if name == "row":
                    self._row = _number(element.get("r"), self._row + 1)
                    self._col = 0
                elif name == "c":
                    self._cell(element.get("r"))
                element.clear()
        except ParseError:
            self.broken = True

    def _cell(self, ref: str | None) -> None:
        # Positions may be left out (the next cell, in the row's next column): counted as calamine counts them.
        found = _REF.match(ref or "")
        letters, digits = (found.group(1), found.group(2)) if found else (None, None)
        self._col = _column(letters) if letters else self._col + 1
        row = _big(digits) if digits else self._row
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
        if self.broken:
            # The reader tolerates what expat refuses, so a part that cannot be measured is not read at all.
            return f"{shown}: a part of the workbook ({part}) is not well-formed XML: save it again from Excel"
        if self.cells <= D.MAX_SHEET_CELLS:
            return None
        return (
            f"{shown}: a sheet ({part}) spans {self.bottom - self.top + 1:,} rows by {self.right - self.left + 1:,} "
            f"columns ({self.cells:,} cells, more than {D.MAX_SHEET_CELLS:,}): it is read whole into memory; "
            "delete the stray cells far from the data, or send it as CSV"
        )


def _number(text: str | None, default: int) -> int:
    return _big(text) if text is not None and text.isdigit() else default


def _big(digits: str) -> int:
    """A row number; past 12 digits, simply huge (``int`` of thousands of digits is refused, and slow)."""
    return int(digits) if len(digits) <= 12 else 10**12


__all__ = ["RangeMeter"]
