"""The record-rewriting path of the splitter: records parsed, mapped and written again, into chunks.

``dropzone.splitting`` copies records byte for byte when a file's records
stay as they are. When a route drops columns or adds constant ones
(``dropzone.mapping``), each record must be rewritten: this module takes the
splitter's ranges of whole records, parses them with the ``csv`` module,
maps each one, writes it with ``csv.writer`` (quoting only where needed, the
header's own line ending), and fills chunks by the size of what is written.

Records are the splitter's: a line feed ends a record iff an even number of
quotes precede it (``dropzone.records``). The ``csv`` module reads the same
records from any well-formed file; where it would read others (a ``"``
inside an unquoted value, or text after a closing quote, that leaves a
quote open) the file is refused with the line, since neither reading is
sure to be the partner's.

Line numbers: each chunk's ``first_line``/``last_line`` stay the source's.
A dropped field that held line breaks leaves the chunk with fewer physical
lines than the source; the points where that drift changes are handed to
``line_map(chunk index, LineMap)`` when the chunk is closed (only for chunks
that drift), so the outbox can give each failure row its source line.
Memory: a block of records, parsed and rewritten (about 20 MB more than
the byte-copying split with the default block), plus one chunk's line map:
16 bytes per record whose dropped fields held line breaks (none in most
files; at most about 2 million records of a few bytes in a 9.5 MB chunk,
32 MB, in a pathological one).

Pure apart from the chunk writer it is given; tested through
``dropzone.splitting``.
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import accumulate
from operator import itemgetter
from typing import Protocol

from dropzone import defaults as D
from dropzone.charsets import SourceMeter
from dropzone.errors import SplitError
from dropzone.mapping import LineMap
from dropzone.records import LF, Quotes, nth_lf


class RecordMap(Protocol):
    """What the splitter needs of a mapping plan (``dropzone.mapping.Plan``).

    ``record`` maps any record; a record with ``width`` fields is sent as its
    fields at ``keep``, then ``values``.
    """

    @property
    def names(self) -> Sequence[str]: ...

    @property
    def width(self) -> int: ...

    @property
    def keep(self) -> Sequence[int]: ...

    @property
    def values(self) -> Sequence[str]: ...

    def record(self, fields: list[str]) -> list[str]: ...


class ChunkSink(Protocol):
    """The splitter's chunk writer, as this module uses it."""

    @property
    def room(self) -> int: ...

    @property
    def rows(self) -> int: ...

    def write(
        self, data: memoryview, rows: int, first_line: int, last_line: int, src_start: int, src_end: int
    ) -> None: ...

    def close(self, last: bool = False) -> None: ...

    def finish(self) -> None: ...


#: Receives a chunk's line map when a chunk that drifts is closed.
LineMapSink = Callable[[int, LineMap], None]


class _Last:
    """A file for ``csv.writer`` that keeps the one record it was given (the writer writes each whole)."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text = text
        return len(text)


class _Collect:
    """A file for ``csv.writer`` whose every write, one record, is appended to ``parts``."""

    def __init__(self, parts: list[str]) -> None:
        self.write = parts.append


class RowWriter:
    """One record as text: quoted only where needed, a value holding a lone CR included, then ``ending``."""

    def __init__(self, delimiter: str, ending: str) -> None:
        self.ending = ending
        self._out = _Last()
        # Written with CRLF, then given ``ending``: csv quotes only the terminator's characters.
        self._csv = csv.writer(self._out, delimiter=delimiter, lineterminator="\r\n")

    def __call__(self, fields: Sequence[str]) -> str:
        self._csv.writerow(fields)
        text = self._out.text
        return text if self.ending == "\r\n" else text[:-2] + self.ending


class RecordRewriter:
    """Rewrites ranges of whole records through ``record_map`` into ``writer``'s chunks.

    Each range is handled in bulk (parsed, checked, mapped and written by C
    loops where it can be; Python steps per chunk and per record with
    quoted line breaks), so the csv module's own parsing and writing are
    most of the cost.

    Args:
        record_map: the mapping of each record's fields.
        delimiter: the file's delimiter.
        header: the header as written; its line ending is given to every record.
        writer: opens, fills and closes chunks (no fast copy: rewritten records are no byte range of the source).
        meter: source offsets when the source was transcoded (None: UTF-8 bytes are the source's).
        line_map: receives each drifting chunk's line map.
        too_big: the error for a record that does not fit an empty chunk, given its line.
    """

    def __init__(
        self,
        record_map: RecordMap,
        delimiter: str,
        header: bytes,
        writer: ChunkSink,
        meter: SourceMeter | None,
        line_map: LineMapSink | None,
        too_big: Callable[[int], SplitError],
    ) -> None:
        # Records may be up to a chunk (10 MB); the csv module's default field limit is 128 KiB.
        if csv.field_size_limit() < D.MARKETO_MAX_IMPORT_BYTES:
            csv.field_size_limit(D.MARKETO_MAX_IMPORT_BYTES)
        self.record = record_map.record
        self.width = record_map.width
        keep = tuple(record_map.keep)
        # The usual record (as many fields as the header) is mapped by C loops: the kept fields picked by
        # itemgetter, written by csv, the constants' text (always the same) appended.
        self._pick: Callable[[Iterable[list[str]]], Iterable[Sequence[str]]] | None = (
            None if keep == tuple(range(self.width))
            else (lambda rows: zip(map(itemgetter(keep[0]), rows))) if len(keep) == 1
            else partial(map, itemgetter(*keep))
        )
        # After a field, as csv writes them inside a record (a lone empty field alone would be quoted).
        tail = RowWriter(delimiter, "")(["x", *record_map.values])[1:] if record_map.values else ""
        self.delimiter = delimiter
        self.ending = "\r\n" if header.endswith(b"\r\n") else "\n"
        self._tail = tail + self.ending
        self._solo = len(keep) == 1 and bool(tail)
        self._empty = '""' + self._tail
        self.writer = writer
        self.meter = meter
        self.line_map = line_map
        self.too_big = too_big
        self._texts: list[str] = []
        # Written with CRLF, then given the header's ending: csv quotes only the terminator's characters.
        self._csv = csv.writer(_Collect(self._texts), delimiter=delimiter, lineterminator="\r\n")
        self._chunk = 0  # index of the chunk being filled
        self._k = 0  # physical lines written after the header in that chunk
        self._drift = self._noted = 0  # the source lines dropped so far in that chunk, and at its last point
        self._points = LineMap()

    def feed(self, data: bytes, end: int, end_ord: int, q: Quotes, first_line: int, offset: int) -> tuple[int, int]:
        """Rewrite the whole records of ``data[:end]``: (rows, the source offset after them).

        ``end_ord``: line feeds in ``data[:end]``; ``q``: the quotes of ``data``
        (which starts a record); ``first_line``: the source line of ``data[0]``;
        ``offset``: its source byte offset.
        """
        if end == 0:
            return 0, offset
        unterminated = data[end - 1] != LF  # only the file's last record can be
        rows, ends = self._parse(data[:end].decode("utf-8"), end_ord + unterminated, bool(q.los), first_line)
        if q.los or len(rows) != end_ord + unterminated:
            _check(q, ends, end_ord, unterminated, first_line)
        texts = self._render(rows, unterminated)
        offset = self._write(data, end, end_ord, texts, ends, first_line, offset)
        self._texts.clear()
        return len(rows), offset

    def finish(self) -> None:
        """Close the last chunk (after the last ``feed``)."""
        points = self._points
        self.writer.finish()
        if points and self.line_map is not None:
            self.line_map(self._chunk, points)

    # -- internals ---------------------------------------------------------

    def _parse(self, text: str, lines: int, quoted_lfs: bool, first_line: int) -> tuple[list[list[str]], Sequence[int]]:
        """The records, and the physical lines read after each (``csv``'s ``line_num``)."""
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter)
        try:
            if not quoted_lfs:
                rows = list(reader)
                if len(rows) == lines:  # one line each: the usual file, parsed by a C loop
                    return rows, range(1, lines + 1)
                reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter)
            rows, ends = [], list[int]()
            add_row, add_end = rows.append, ends.append
            for fields in reader:
                add_row(fields)
                add_end(reader.line_num)
        except csv.Error as exc:
            line = first_line + reader.line_num - 1
            raise SplitError(f"line {line}: this record cannot be read to map its columns: {exc}", line=line) from None
        return rows, ends

    def _render(self, rows: list[list[str]], unterminated: bool) -> list[str]:
        """Each record as written, its ending included (a blank line stays one: Marketo skips it, the splitter
        counts it)."""
        self._texts.clear()
        usual = len(set(map(len, rows))) == 1 and len(rows[0]) == self.width
        if usual:
            self._csv.writerows(rows if self._pick is None else self._pick(rows))
        else:
            self._csv.writerows(map(self.record, rows))
        texts = self._texts
        if len(texts) != len(rows):
            raise RuntimeError("csv.writer wrote a record in several pieces")
        if usual:
            tail = self._tail
            texts = [text[:-2] + tail for text in texts]
            if self._solo:  # csv quotes a lone empty field; followed by constants it is written bare
                texts = [tail if text == self._empty else text for text in texts]
        elif self.ending != "\r\n":
            texts = [text[:-2] + self.ending for text in texts]
        if unterminated:
            texts[-1] = texts[-1][: -len(self.ending)]
        return texts

    def _write(
        self, data: bytes, end: int, end_ord: int, texts: list[str], ends: Sequence[int], first_line: int, offset: int
    ) -> int:
        """Fill chunks with ``texts``, closing each that is full; the source offset after them."""
        joined = "".join(texts)
        blob = joined.encode("utf-8")
        sizes = map(len, texts) if len(blob) == len(joined) else map(len, map(str.encode, texts))
        acc = list(accumulate(sizes, initial=0))  # acc[j]: bytes written before record j
        drifts = _drifts(texts, ends) if joined.count("\n") != end_ord else []
        view = memoryview(blob)
        n, j, pos, d = len(texts), 0, 0, 0
        while j < n:
            start_ord = ends[j - 1] if j else 0
            m = bisect_right(acc, acc[j] + self.writer.room, j) - 1  # records j..m-1 fit
            if m == j:
                if self.writer.rows:
                    self._close()
                    continue
                raise self.too_big(first_line + start_ord)
            stop = end if m == n else nth_lf(data, pos, start_ord, end, ends[m - 1] - 1) + 1
            if self._drift != self._noted:  # a point only where a record starts with a new drift
                self._points.add(self._k, self._drift)
                self._noted = self._drift
            dropped = 0
            while d < len(drifts) and drifts[d][0] < m:
                r, lost = drifts[d]
                d += 1
                dropped += lost
                if r + 1 < m:
                    self._points.add(self._k + ends[r] - start_ord - dropped, self._drift + dropped)
                    self._noted = self._drift + dropped
            self._k += ends[m - 1] - start_ord - dropped
            self._drift += dropped
            source = self.meter.measure(data[pos:stop]) if self.meter is not None else stop - pos
            first, last = first_line + start_ord, first_line + ends[m - 1] - 1
            self.writer.write(view[acc[j] : acc[m]], m - j, first, last, offset, offset + source)
            offset, pos, j = offset + source, stop, m
        view.release()
        return offset

    def _close(self) -> None:
        self.writer.close()
        if self._points and self.line_map is not None:
            self.line_map(self._chunk, self._points)
        self._chunk += 1
        self._k = self._drift = self._noted = 0
        self._points = LineMap()


def _drifts(texts: list[str], ends: Sequence[int]) -> list[tuple[int, int]]:
    """(record, source lines it lost): records whose dropped fields held line breaks."""
    out, before = [], 0
    for r, stop in enumerate(ends):
        lines = stop - before
        if lines > 1:
            lost = lines - texts[r].count("\n")
            if lost > 0:
                out.append((r, lost))
        before = stop
    return out


def _check(q: Quotes, ends: Sequence[int], end_ord: int, unterminated: bool, first_line: int) -> None:
    """Refuse a range where the csv module's records are not the splitter's.

    They are iff as many records end at a line feed as there are line feeds
    outside quotes, and none ends at one inside quotes.
    """
    inside = q.inside_before(end_ord) if q.los else 0
    agree = len(ends) - unterminated == end_ord - inside
    for lo, hi in zip(q.los, q.his, strict=True):
        if not agree or lo >= end_ord:
            break
        j = bisect_left(ends, lo + 1)  # the first record ending at or after LF ordinal lo
        agree = j == len(ends) or ends[j] - 1 >= hi
    if agree:
        return
    start = 0
    for j, stop in enumerate(ends):
        if not _agrees(q, start, stop - start, not (unterminated and j == len(ends) - 1)):
            raise _ambiguous(first_line + start)
        start = stop
    raise _ambiguous(first_line)  # not reached: records that each agree agree in number


def _agrees(q: Quotes, start: int, lines: int, terminated: bool) -> bool:
    """Whether the csv module's record (``lines`` physical lines from LF ordinal ``start``) is the splitter's.

    Its inner line feeds must be inside quotes, and the one ending it outside.
    """
    o, stop = start, start + lines - 1
    while o < stop:
        i = q.inside(o)
        if i < 0:
            return False
        o = q.his[i]
    return not terminated or q.inside(stop) < 0


def _ambiguous(line: int) -> SplitError:
    return SplitError(
        f'line {line}: a " inside a value that is not quoted (or text after a closing quote) leaves it unclear '
        "where this record ends, so its columns cannot be mapped: quote the whole value and double each "
        '" inside it',
        line=line,
    )


__all__ = ["ChunkSink", "LineMapSink", "RecordMap", "RecordRewriter", "RowWriter"]
