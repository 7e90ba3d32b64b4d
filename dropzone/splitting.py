"""Cutting a partner's flat file into chunks Marketo will take.

This module owns one job: read a csv/tsv/ssv byte stream once, in constant
memory, and write it back out as chunks of at most ``max_bytes`` (Marketo
answers HTTP 413 above 10 MB), each chunk being the header line followed by
whole records copied byte for byte.  It also owns the checks that make a file
unsplittable (bad UTF-8, an unterminated quote, a record too big for any
chunk, an empty or header-only file) and the manifest that maps every chunk
back to source bytes and source line numbers, so a failure row reported by
Marketo can be traced to the partner's line.

Everything above ``split_file`` works on byte streams and never opens a path,
so tests feed ``io.BytesIO``; ``split_file`` at the bottom is the I/O edge.

Three concerns live beside it: where records end (the quote and line-feed
arithmetic, without parsing fields) is ``dropzone.records``; validating,
transcoding and metering the source's character encoding is
``dropzone.charsets``; moving a chunk's bytes from a source that is a
regular file without passing them through Python (the fast path: the
kernel copies chunk k while this module reads chunk k+1) is
``dropzone.fastcut``.  This module drives all three: it reads the blocks,
sniffs the byte order mark, carries the unfinished record, applies the size
rules, writes the chunks and words every error about the data.

Memory: a block, plus the unfinished record carried to the next block
(bounded by ``max_bytes``), plus a few copies of those: about 25 MB with the
defaults, 70 MB when records approach the 9.5 MB limit.

Physical line numbers count line feeds (LF and CRLF both end in one); a lone
CR inside a quoted field does not start a new line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dropzone import defaults as D
from dropzone.charsets import UTF16_BOMS, SourceMeter, Transcoder, Utf8Check, normalise_encoding
from dropzone.errors import ConfigError, SplitError
from dropzone.fastcut import Copy, SourceFile, write_all
from dropzone.kinds import FileFormat
from dropzone.records import LF, Quotes, first_boundary, last_boundary
from dropzone.rewriting import LineMapSink, RecordMap, RecordRewriter

#: Sees the header's field names before any chunk is written; returns the names to write
#: (e.g. trimmed; records copied as they are), or a ``RecordMap`` (records rewritten:
#: ``dropzone.rewriting``), or raises ``InputError`` to refuse the file.
HeaderCheck = Callable[[list[str]], list[str] | RecordMap]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk as written: where its records came from in the source.

    ``source_start``/``source_end`` delimit the chunk's records (not the
    header) in the source file's own bytes; ``first_line``/``last_line`` are
    the 1-based physical lines of its first and last record (header = line 1).
    """

    index: int
    source_start: int
    source_end: int
    first_line: int
    last_line: int
    rows: int
    size: int


@dataclass(frozen=True, slots=True)
class SplitResult:
    header: bytes  # as written to every chunk: BOM stripped, own line ending kept
    header_fields: list[str]
    chunks: list[Chunk]
    rows: int
    bom_stripped: bool
    ends_with_newline: bool  # False: last record has no line break (truncated upload?)


OpenChunk = Callable[[int], contextlib.AbstractContextManager[BinaryIO]]


def split(
    source: BinaryIO,
    open_chunk: OpenChunk,
    *,
    fmt: FileFormat | str = FileFormat.CSV,
    max_bytes: int = D.SPLIT_MAX_BYTES,
    encoding: str | None = None,
    block_size: int = D.SPLIT_BLOCK_BYTES,
    header_check: HeaderCheck | None = None,
    line_map: LineMapSink | None = None,
) -> SplitResult:
    """Split ``source`` into chunks written through ``open_chunk(index)``.

    ``encoding`` names the source encoding when it is not UTF-8; chunks are
    then transcoded to UTF-8. ``header_check`` sees the header before any
    chunk is written; names it changes are written to every chunk (quoted
    as needed, the header's own line ending kept); a ``RecordMap`` rewrites every record, and
    ``line_map`` gets the line map of each chunk whose lines drift. Raises ``SplitError``
    (with ``line``) for files that cannot be cut into valid chunks; chunks
    already written are left to the caller (``open_chunk``'s context manager
    sees the exception).
    """
    delimiter = _delimiter(fmt)
    if max_bytes < 2:
        raise ValueError(f"max_bytes must be at least 2, not {max_bytes}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, not {block_size}")
    return _Splitter(source, open_chunk, delimiter, max_bytes, encoding, block_size, header_check, line_map).run()


def scan(
    source: BinaryIO,
    *,
    fmt: FileFormat | str = FileFormat.CSV,
    max_bytes: int = D.SPLIT_MAX_BYTES,
    encoding: str | None = None,
    block_size: int = D.SPLIT_BLOCK_BYTES,
    header_check: HeaderCheck | None = None,
) -> SplitResult:
    """Run every check ``split`` runs and build the same manifest, writing nothing (``dropzone split --check``)."""
    return split(
        source,
        _null_chunk,
        fmt=fmt,
        max_bytes=max_bytes,
        encoding=encoding,
        block_size=block_size,
        header_check=header_check,
    )


def format_manifest_line(chunk: Chunk) -> str:
    """One line per chunk, ``key=value`` so it reads well and greps well."""
    return (
        f"chunk={chunk.index:04d} lines={chunk.first_line}-{chunk.last_line} rows={chunk.rows} "
        f"source_bytes={chunk.source_start}-{chunk.source_end} size={chunk.size}"
    )


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------


class _NullSink:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


@contextlib.contextmanager
def _null_chunk(index: int) -> Iterator[BinaryIO]:
    yield _NullSink()  # type: ignore[misc]  # only write() is ever called


def _delimiter(fmt: FileFormat | str) -> bytes:
    try:
        return FileFormat(fmt).delimiter_byte
    except ValueError:
        known = ", ".join(f.value for f in FileFormat)
        raise ConfigError(f"unknown format {fmt!r}; expected one of {known}") from None


class _ChunkWriter:
    """Opens, fills and closes chunks, and keeps their manifest.

    Without ``source`` each record range is written as it is read.  With it
    (a regular file read as UTF-8, so a chunk's records are one byte range of
    the file) nothing is written until a chunk is full: it is then opened,
    given its header and filled by ``fastcut`` while the next one is read,
    and closed before the next one is opened, so chunks are still opened in
    order, one at a time.
    """

    def __init__(self, open_chunk: OpenChunk, header: bytes, max_bytes: int, source: SourceFile | None) -> None:
        self._open_chunk = open_chunk
        self._header = header
        self.max_bytes = max_bytes
        self._source = source
        self.chunks: list[Chunk] = []
        self._cm: contextlib.ExitStack | None = None
        self._out: BinaryIO | None = None
        self._copy: Copy | None = None
        self._started = False
        self.size = len(header)
        self.rows = 0
        self._first_line = self._last_line = self._source_start = self._source_end = 0

    @property
    def room(self) -> int:
        return self.max_bytes - self.size

    def write(
        self, data: memoryview, rows: int, first_line: int, last_line: int, src_start: int, src_end: int
    ) -> None:
        if not self._started:
            self._started = True
            self._first_line, self._source_start = first_line, src_start
            if self._source is None:
                self._out = self._open()
        if self._out is not None:
            write_all(self._out, data)
        self.size += len(data)
        self.rows += rows
        self._last_line, self._source_end = last_line, src_end

    def close(self, last: bool = False) -> None:
        if not self._started:
            return
        self._settle()  # this chunk, or with a source the one before
        if self._source is not None:
            # Nothing is left to read beside the last chunk's copy.
            self._copy = Copy(self._source, self._open(), self._source_start, self._source_end, background=not last)
            if last:
                self._settle()
        self.chunks.append(
            Chunk(
                index=len(self.chunks),
                source_start=self._source_start,
                source_end=self._source_end,
                first_line=self._first_line,
                last_line=self._last_line,
                rows=self.rows,
                size=self.size,
            )
        )
        self.size, self.rows, self._started = len(self._header), 0, False

    def finish(self) -> None:
        """Closes the last chunk once its bytes are in."""
        self.close(last=True)
        self._settle()
        if self._source is not None:
            self._source.check_unchanged()

    def abort(self, exc: BaseException) -> None:
        if self._copy is not None:
            # Its file must not be closed under it; exc is the error to report.
            with contextlib.suppress(Exception):
                self._copy.wait()
        if self._cm is not None:
            cm, self._cm, self._out = self._cm, None, None
            cm.__exit__(type(exc), exc, exc.__traceback__)

    def _open(self) -> BinaryIO:
        self._cm = contextlib.ExitStack()
        out = self._cm.enter_context(self._open_chunk(len(self.chunks)))
        write_all(out, self._header)
        return out

    def _settle(self) -> None:
        """The open chunk's copy finished and the chunk closed."""
        if self._copy is not None:
            self._copy.wait()  # kept until it returns: abort() must wait again if it did not
            self._copy = None
        if self._cm is not None:
            cm, self._cm, self._out = self._cm, None, None
            cm.close()


class _Splitter:
    def __init__(
        self,
        source: BinaryIO,
        open_chunk: OpenChunk,
        delimiter: bytes,
        max_bytes: int,
        encoding: str | None,
        block_size: int,
        header_check: HeaderCheck | None = None,
        line_map: LineMapSink | None = None,
    ) -> None:
        self.header_check, self.line_map = header_check, line_map
        self.source = source
        self.open_chunk = open_chunk
        self.delimiter = delimiter
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.encoding = normalise_encoding(encoding)
        self.bom_stripped = False
        self.bom_in_text = False  # a U+FEFF the decoder handed us (vs. one it consumed)
        self.skipped = 0  # source bytes before the header: a stripped UTF-8 BOM
        self.meter: SourceMeter | None = None
        self.check: Utf8Check | None = None
        self.writer: _ChunkWriter | None = None
        self.file: SourceFile | None = None  # set when chunks can be copied from the source file
        self.read: Callable[[int], bytes] = source.read

    def run(self) -> SplitResult:
        try:
            return self._run()
        except BaseException as exc:
            if self.writer is not None:
                self.writer.abort(exc)
            raise

    # -- input -------------------------------------------------------------

    def _read_at_least(self, size: int) -> bytes:
        # A raw stream may return short reads; the BOM sniff needs 4 bytes.
        data = self.source.read(size)
        while 0 < len(data) < size:
            more = self.source.read(size - len(data))
            if not more:
                break
            data += more
        return data

    def _open(self) -> bytes:
        """Sets up ``self.read`` (UTF-8 blocks) and returns the first block."""
        # Before the first read: chunk offsets count from where the stream is now.
        file = SourceFile.of(self.source) if self.open_chunk is not _null_chunk else None
        first = self._read_at_least(max(self.block_size, 4))
        if self.encoding is not None:
            if first.startswith(codecs.BOM_UTF8):
                raise SplitError(
                    f"the file starts with a UTF-8 byte order mark but encoding "
                    f"{self.encoding} was configured; it is probably UTF-8: remove the "
                    "encoding setting",
                    line=1,
                )
            utf16 = first.startswith(UTF16_BOMS)
            if utf16 and not self.encoding.startswith(("utf-16", "utf-32")):
                raise SplitError(
                    f"the file is UTF-16 (it starts with a UTF-16 byte order mark) but encoding "
                    f"{self.encoding} was configured; save it as UTF-8 or configure utf-16",
                    line=1,
                )
            self.bom_stripped = utf16  # the codec consumes it
            transcoder = Transcoder(self.source, self.encoding, first)
            self.read = transcoder.read
            self.meter = SourceMeter(self.encoding)
            first = self.read(self.block_size)
            if first.startswith(codecs.BOM_UTF8):  # e.g. utf-16-le keeps the BOM as text
                self.bom_stripped = self.bom_in_text = True
                first = first[len(codecs.BOM_UTF8) :] or self.read(self.block_size)
            return first
        if first.startswith(UTF16_BOMS):
            raise SplitError(
                "the file is UTF-16 (it starts with a UTF-16 byte order mark); "
                "save it as UTF-8, or configure encoding utf-16",
                line=1,
            )
        if first.startswith(codecs.BOM_UTF8):
            self.bom_stripped = True
            self.skipped = len(codecs.BOM_UTF8)
            # Never hand on an empty first block: it would read as end of file.
            first = first[self.skipped :] or self.read(self.block_size)
        self.check = Utf8Check()
        self.file = file  # UTF-8 in, UTF-8 out: a chunk's records are a byte range of the file
        self._validate(b"", first, 1)
        return first

    def _validate(self, data: bytes, block: bytes, data_line: int) -> None:
        """Checks ``block`` (about to follow ``data``) is UTF-8; b"" = end of file."""
        if self.check is None:
            return  # transcoded output is UTF-8 by construction
        bad = self.check.feed(block, not block)
        if bad is None:
            return
        data += block
        pos = max(len(data) - len(block) + bad, 0)
        line = data_line + data.count(b"\n", 0, pos)
        shown = data[pos : pos + 4].hex(" ").upper()
        raise SplitError(
            f"line {line}: the bytes {shown} are not valid UTF-8; save the file as UTF-8 "
            "or configure its encoding (e.g. cp1252)",
            line=line,
        )

    def _next_block(self, data: bytes, data_line: int) -> bytes:
        # Reading at least len(data) keeps rescans of a long record's carried
        # head amortised O(n).
        block = self.read(max(self.block_size, len(data)))
        self._validate(data, block, data_line)
        return block

    # -- the split ---------------------------------------------------------

    def _header(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """Reads until the header's line feed: (header, rest, eof)."""
        eof = False
        while (end := first_boundary(data)) < 0:
            if eof:
                if not data:
                    raise SplitError("the file is empty")
                if Quotes(data).open_line >= 0:
                    raise SplitError("line 1: the header has a quote that is never closed", line=1)
                if b"\r" in data.rstrip(b"\r"):
                    raise SplitError(
                        "the file has no line feeds, only carriage returns (old Mac line endings): "
                        "save it with LF or CRLF line endings",
                        line=1,
                    )
                raise SplitError("the file has a header line but no data records", line=1)
            if len(data) > self.max_bytes:
                hint = ""
                if b"\r" in data:
                    hint = " (its line endings look like CR only: save with LF or CRLF)"
                raise SplitError(
                    f"line 1: no line break in the first {len(data)} bytes, so the header is "
                    f"longer than max_bytes={self.max_bytes}{hint}",
                    line=1,
                )
            block = self._next_block(data, 1)
            if block:
                data += block
            else:
                eof = True
        return data[:end], data[end:], eof

    def _run(self) -> SplitResult:
        header, data, eof = self._header(self._open())
        if b"\0" in header:
            raise SplitError(
                "line 1: the header contains NUL bytes; the file is probably UTF-16 without "
                "a byte order mark: save it as UTF-8",
                line=1,
            )
        text = header.decode("utf-8")
        fields = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter.decode())
        header_fields = next(fields)
        meter = self.meter
        # Source offsets count the partner's own header, whatever is written.
        if meter is not None:
            offset = meter.measure(("\ufeff" if self.bom_in_text else "").encode() + header)
        else:
            offset = self.skipped + len(header)
        data_line = 1 + header.count(b"\n")  # physical line of data[0]; the header starts line 1
        rewrite: RecordMap | None = None
        if self.header_check is not None:
            wanted = self.header_check(list(header_fields))
            if not isinstance(wanted, list):
                rewrite, wanted = wanted, list(wanted.names)
            if wanted != header_fields:
                header = self._rewrite_header(header, wanted)
                header_fields = wanted
        max_record = self.max_bytes - len(header)
        if max_record < 1:
            raise SplitError(
                f"line 1: the header alone is {len(header)} bytes, leaving no room for "
                f"records under max_bytes={self.max_bytes}",
                line=1,
            )
        writer = self.writer = _ChunkWriter(self.open_chunk, header, self.max_bytes, None if rewrite else self.file)
        rewriter = None if rewrite is None else RecordRewriter(rewrite, self.delimiter.decode(), header, writer, meter,
            self.line_map, lambda line: self._too_big(line, max_record, " (once its columns are mapped)"))
        total_rows = 0
        last_byte = -1
        while True:
            if not eof:
                block = self._next_block(data, data_line)
                if block:
                    data = data + block if data else block
                else:
                    eof = True
            q = Quotes(data)
            n = len(data)
            if eof:
                if q.open_line >= 0:
                    line = data_line + q.open_line
                    raise SplitError(
                        f"line {line}: a quoted field opens on this line and is never closed: "
                        'an unmatched " (a " inside a value must be doubled, and the value quoted)',
                        line=line,
                    )
                end, end_ord = n, q.lfs
            else:
                end, end_ord = last_boundary(data, 0, n, 0, q)
                if end < 0:
                    end, end_ord = 0, 0
            view = memoryview(data)
            i, i_ord = 0, 0
            if rewriter is not None and end:
                rows, offset = rewriter.feed(data, end, end_ord, q, data_line, offset)
                total_rows, last_byte, i = total_rows + rows, data[end - 1], end
            while i < end:
                room = writer.room
                if end - i <= room:
                    cut, cut_ord = end, end_ord
                else:
                    cut, cut_ord = last_boundary(data, i, i + room, i_ord, q)
                    if cut < 0:
                        if writer.rows:
                            writer.close()
                            continue
                        raise self._too_big(data_line + i_ord, max_record, "")
                rows = cut_ord - i_ord
                if q.los:
                    rows -= q.inside_before(cut_ord) - q.inside_before(i_ord)
                last_byte = data[cut - 1]
                if last_byte == LF:
                    last_line = data_line + cut_ord - 1
                else:  # only the final record can lack its line break
                    rows += 1
                    last_line = data_line + cut_ord
                start = offset
                offset += meter.measure(view[i:cut]) if meter is not None else cut - i
                writer.write(view[i:cut], rows, data_line + i_ord, last_line, start, offset)
                total_rows += rows
                i, i_ord = cut, cut_ord
            view.release()
            if eof:
                break
            data = data[end:]
            data_line += end_ord
            if len(data) > max_record:
                hint = ""
                if q.open_line >= 0:
                    hint = (
                        f"; a quoted field opened on line {data_line + q.open_line - end_ord} "
                        'is still open: probably an unmatched " character'
                    )
                raise self._too_big(data_line, max_record, hint)
        (rewriter or writer).finish()
        if total_rows == 0:
            raise SplitError("the file has a header line but no data records", line=1)
        return SplitResult(
            header=header,
            header_fields=header_fields,
            chunks=writer.chunks,
            rows=total_rows,
            bom_stripped=self.bom_stripped,
            ends_with_newline=last_byte == LF,
        )

    def _rewrite_header(self, header: bytes, fields: list[str]) -> bytes:
        ending = "\r\n" if header.endswith(b"\r\n") else "\n"
        out = io.StringIO()
        csv.writer(out, delimiter=self.delimiter.decode(), lineterminator=ending).writerow(fields)
        return out.getvalue().encode("utf-8")

    def _too_big(self, line: int, max_record: int, hint: str) -> SplitError:
        return SplitError(
            f"line {line}: the record starting here is larger than the {max_record} bytes a "
            f"chunk has room for after the header (max_bytes={self.max_bytes}), so it cannot "
            f"be imported{hint}",
            line=line,
        )


# --------------------------------------------------------------------------
# I/O edge: the one place paths are opened.
# --------------------------------------------------------------------------


def chunk_path(source: Path, out_dir: Path, index: int) -> Path:
    return out_dir / f"{source.stem}.part{index:04d}{source.suffix}"


def split_file(
    path: Path,
    out_dir: Path | None,
    *,
    fmt: FileFormat | str | None = None,
    max_bytes: int = D.SPLIT_MAX_BYTES,
    encoding: str | None = None,
) -> SplitResult:
    """Split the file at ``path`` into ``out_dir/{stem}.partNNNN{suffix}``.

    ``fmt`` is inferred from the extension when None.  On error the chunks
    written so far are removed, so ``out_dir`` never holds a partial split.
    ``out_dir`` None: every check and the same manifest, nothing written (``scan``).
    """
    path = Path(path)
    if fmt is None:
        fmt = FileFormat.from_name(path.name)
        if fmt is None:
            raise SplitError(
                f"{path.name}: unsupported extension {path.suffix!r}; expected .csv, .tsv or .ssv "
                "(or give the format explicitly)"
            )
    if out_dir is None:
        with open(path, "rb", buffering=0) as source:
            return scan(source, fmt=fmt, max_bytes=max_bytes, encoding=encoding)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        target = chunk_path(path, out_dir, index)
        written.append(target)
        with open(target, "wb") as f:
            yield f

    try:
        with open(path, "rb", buffering=0) as source:
            return split(source, open_chunk, fmt=fmt, max_bytes=max_bytes, encoding=encoding)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
