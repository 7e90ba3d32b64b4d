"""The splitter: chunks hold whole records, fit the limit, and map back to the source."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropzone.defaults import SPLIT_MAX_BYTES as DEFAULT_MAX_BYTES
from dropzone.errors import ConfigError, InputError, SplitError
from dropzone.kinds import FileFormat
from dropzone.splitting import (
    Chunk,
    SplitResult,
    format_manifest_line,
    scan,
    split,
    split_file,
)

DELIMITERS = {f.value: f.delimiter_byte for f in FileFormat}


class Sink:
    """An ``open_chunk`` that keeps chunks in memory and checks they are closed."""

    def __init__(self) -> None:
        self.chunks: dict[int, bytes] = {}
        self.open = 0

    @contextlib.contextmanager
    def __call__(self, index: int) -> Iterator[BinaryIO]:
        assert index == len(self.chunks), "chunks are opened in order, once each"
        buf = io.BytesIO()
        self.open += 1
        try:
            yield buf
        finally:
            self.open -= 1
        self.chunks[index] = buf.getvalue()


def run(data: bytes, **kwargs: object) -> tuple[SplitResult, list[bytes]]:
    sink = Sink()
    result = split(io.BytesIO(data), sink, **kwargs)  # type: ignore[arg-type]
    assert sink.open == 0
    return result, [sink.chunks[i] for i in range(len(sink.chunks))]


def parse(data: bytes, delimiter: bytes = b",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter.decode()))


def check_manifest(source: bytes, result: SplitResult, chunks: list[bytes], max_bytes: int) -> None:
    """Every invariant the daemon relies on, against the source bytes."""
    header = result.header
    assert [c.index for c in result.chunks] == list(range(len(chunks)))
    assert sum(c.rows for c in result.chunks) == result.rows
    bom = 3 if result.bom_stripped else 0
    assert result.chunks[0].source_start == bom + len(header)
    assert result.chunks[0].first_line == 2
    assert result.chunks[-1].source_end == len(source)
    physical_lines = source.count(b"\n") + (0 if source.endswith(b"\n") else 1)
    assert result.chunks[-1].last_line == physical_lines
    assert result.ends_with_newline == source.endswith(b"\n")
    for chunk, body in zip(result.chunks, chunks, strict=True):
        assert body.startswith(header)
        assert chunk.size == len(body) <= max_bytes
        assert body[len(header) :] == source[chunk.source_start : chunk.source_end]
        assert chunk.first_line == source.count(b"\n", 0, chunk.source_start) + 1
        records = source[chunk.source_start : chunk.source_end]
        last = records.count(b"\n") - (1 if records.endswith(b"\n") else 0)
        assert chunk.last_line == chunk.first_line + last
        assert chunk.rows >= 1
    for before, after in itertools.pairwise(result.chunks):
        assert after.source_start == before.source_end
        assert after.first_line == before.last_line + 1


# -- property: any table, any limit ----------------------------------------

NASTY = st.sampled_from(
    [",", "\t", ";", '"', '""', "\r", "\n", "\r\n", "é", "€", "𝄞", "x", " ", "a b"]
)
CELL = st.one_of(st.just(""), st.lists(NASTY, max_size=6).map("".join), st.text(max_size=5))


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[list[str]], bytes, bytes, list[int], int]:
    """(rows, delimiter, file bytes, each line's byte length, header length)."""
    fmt = draw(st.sampled_from(sorted(DELIMITERS)))
    delimiter = DELIMITERS[fmt]
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    width = draw(st.integers(1, 4))
    header = [f"col{i}" for i in range(width)]
    rows = draw(st.lists(st.lists(CELL, min_size=width, max_size=width), min_size=1, max_size=12))
    if terminator == "\n" and quoting == csv.QUOTE_MINIMAL:
        # The csv writer does not quote a lone CR when the terminator is LF,
        # and its reader then splits there: keep the source valid CSV.
        rows = [[cell.replace("\r", "\r\n") for cell in row] for row in rows]
    lines: list[bytes] = []
    for row in [header, *rows]:
        out = io.StringIO()
        writer = csv.writer(
            out, delimiter=delimiter.decode(), lineterminator=terminator, quoting=quoting
        )
        writer.writerow(row)
        lines.append(out.getvalue().encode("utf-8"))
    if draw(st.booleans()):
        lines[-1] = lines[-1][: -len(terminator)]  # no final line break: still valid CSV
    source = b"".join(lines)
    return rows, delimiter, source, [len(line) for line in lines[1:]], len(lines[0])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), data=st.data())
def test_any_table_splits_into_valid_chunks(
    table: tuple[list[list[str]], bytes, bytes, list[int], int], data: st.DataObject
) -> None:
    rows, delimiter, source, record_sizes, header_len = table
    fmt = next(k for k, v in DELIMITERS.items() if v == delimiter)
    smallest = header_len + max(record_sizes)
    max_bytes = data.draw(st.integers(smallest - 3, smallest + len(source)), label="max_bytes")
    block_size = data.draw(st.sampled_from([1, 2, 3, 5, 16, 64, 1 << 20]), label="block_size")
    if max_bytes < smallest:
        with pytest.raises(SplitError) as info:
            run(source, fmt=fmt, max_bytes=max(max_bytes, 2), block_size=block_size)
        assert info.value.line is not None
        return
    result, chunks = run(source, fmt=fmt, max_bytes=max_bytes, block_size=block_size)
    assert result.rows == len(rows)
    assert result.header_fields == [f"col{i}" for i in range(len(rows[0]))]
    parsed = []
    for body in chunks:
        chunk_rows = parse(body, delimiter)
        assert chunk_rows[0] == result.header_fields
        parsed.extend(chunk_rows[1:])
    assert parsed == rows
    check_manifest(source, result, chunks, max_bytes)
    assert scan(io.BytesIO(source), fmt=fmt, max_bytes=max_bytes) == result


CODE_PAGE_TEXT = st.text(alphabet=st.sampled_from(list(',;"\r\nxé€“”ŸÆ ')), max_size=6)
NOT_IN_LATIN1 = {ord("€"): "¤", ord("“"): "«", ord("”"): "»", ord("Ÿ"): "ÿ"}


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode(encoding)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.lists(CODE_PAGE_TEXT, min_size=2, max_size=2), min_size=1, max_size=8),
    encoding=st.sampled_from(["cp1252", "latin-1", "utf-16"]),
    slack=st.integers(0, 60),
    block_size=st.sampled_from([1, 3, 7, 1 << 20]),
)
def test_transcoded_chunks_map_back_to_source_bytes(
    rows: list[list[str]], encoding: str, slack: int, block_size: int
) -> None:
    if encoding == "latin-1":
        rows = [[cell.translate(NOT_IN_LATIN1) for cell in row] for row in rows]
    source = csv_bytes([["a", "b"], *rows], encoding)
    max_bytes = len(b"a,b\r\n") + max(len(csv_bytes([row])) for row in rows) + slack
    result, chunks = run(source, encoding=encoding, max_bytes=max_bytes, block_size=block_size)
    assert [r for body in chunks for r in parse(body)[1:]] == rows
    assert result.bom_stripped == (encoding == "utf-16")
    for chunk, body in zip(result.chunks, chunks, strict=True):
        assert len(body) == chunk.size <= max_bytes
        piece = source[chunk.source_start : chunk.source_end]
        if encoding == "utf-16":
            piece = codecs.BOM_UTF16 + piece  # the codec wants its BOM back
        assert piece.decode(encoding).encode() == body[len(result.header) :]
    assert result.chunks[-1].source_end == len(source)


# -- edge cases --------------------------------------------------------------


def test_whole_file_under_the_limit_is_one_chunk() -> None:
    source = b"email,name\na@x.com,Ann\nb@x.com,Bob\n"
    result, chunks = run(source)
    assert chunks == [source]
    assert result.chunks == [Chunk(0, 11, len(source), 2, 3, 2, len(source))]
    assert result.rows == 2 and result.ends_with_newline and not result.bom_stripped
    assert DEFAULT_MAX_BYTES < 10_000_000


def test_record_exactly_filling_the_limit() -> None:
    header, record = b"h\n", b"x" * 10 + b"\n"
    source = header + record * 3
    result, chunks = run(source, max_bytes=len(header) + len(record))
    assert chunks == [header + record] * 3
    assert [c.size for c in result.chunks] == [13, 13, 13]


def test_two_records_fill_a_chunk_exactly_third_goes_on() -> None:
    source = b"h\n" + b"aaaa\n" * 3
    result, chunks = run(source, max_bytes=12)
    assert chunks == [b"h\naaaa\naaaa\n", b"h\naaaa\n"]
    assert [(c.first_line, c.last_line, c.rows) for c in result.chunks] == [(2, 3, 2), (4, 4, 1)]


def test_no_trailing_newline_is_kept_and_flagged() -> None:
    source = b"a,b\n1,2\n3,4"
    result, chunks = run(source, max_bytes=8)
    assert chunks == [b"a,b\n1,2\n", b"a,b\n3,4"]
    assert not result.ends_with_newline
    assert result.rows == 2 and result.chunks[-1].last_line == 3


def test_crlf_is_copied_byte_for_byte() -> None:
    source = b'a,b\r\n1,"x\r\ny"\r\n2,3\r\n'
    result, chunks = run(source, max_bytes=15)
    assert chunks == [b'a,b\r\n1,"x\r\ny"\r\n', b"a,b\r\n2,3\r\n"]
    assert [(c.first_line, c.last_line) for c in result.chunks] == [(2, 3), (4, 4)]
    assert result.header == b"a,b\r\n"


def test_bom_is_stripped_and_reported() -> None:
    source = b"\xef\xbb\xbfemail,name\na@x.com,Ann\n"
    result, chunks = run(source)
    assert result.bom_stripped
    assert result.header == b"email,name\n"
    assert result.header_fields == ["email", "name"]
    assert chunks == [source[3:]]
    assert result.chunks[0].source_start == 3 + len(b"email,name\n")


def test_bom_split_across_tiny_blocks() -> None:
    result, chunks = run(b"\xef\xbb\xbfa\n1\n", block_size=1)
    assert result.bom_stripped and chunks == [b"a\n1\n"]


def test_header_fields_use_the_delimiter() -> None:
    result, _ = run(b'email; "first name";email\nx;y;z\n', fmt="ssv")
    assert result.header_fields == ["email", ' "first name"', "email"]
    result, _ = run(b"a\tb,c\n1\t2\n", fmt="tsv")
    assert result.header_fields == ["a", "b,c"]


def test_quoted_header_with_a_newline() -> None:
    result, _chunks = run(b'"a\nb",c\n1,2\n', block_size=2)
    assert result.header == b'"a\nb",c\n'
    assert result.header_fields == ["a\nb", "c"]
    assert result.chunks[0].first_line == 3  # the header spans lines 1-2


def test_empty_file() -> None:
    with pytest.raises(SplitError, match="empty"):
        run(b"")
    with pytest.raises(SplitError, match="empty"):
        run(b"\xef\xbb\xbf")


@pytest.mark.parametrize("source", [b"email,name\n", b"email,name", b"email,name\r\n"])
def test_header_only(source: bytes) -> None:
    with pytest.raises(SplitError, match="no data records") as info:
        run(source)
    assert info.value.line == 1


def test_record_over_the_limit_names_its_line() -> None:
    source = b"h\n" + b"ok\n" * 3 + b"x" * 50 + b"\n" + b"ok\n"
    with pytest.raises(SplitError, match=r"line 5: .*larger than the 18 bytes") as info:
        run(source, max_bytes=20)
    assert info.value.line == 5


def test_record_over_the_limit_across_blocks() -> None:
    source = b"h\n" + b"ok\n" + b'"' + b"y\n" * 40 + b'"\n'
    with pytest.raises(SplitError) as info:
        run(source, max_bytes=20, block_size=4)
    assert info.value.line == 3


def test_header_over_the_limit() -> None:
    with pytest.raises(SplitError, match="header alone") as info:
        run(b"a" * 30 + b"\n1\n", max_bytes=20)
    assert info.value.line == 1
    with pytest.raises(SplitError, match="no line break"):
        run(b"a" * 30 + b"\r1\r", max_bytes=20, block_size=4)


def test_unterminated_quote_reports_where_it_opened() -> None:
    source = b'a,b\n1,2\n3,"oops\n4,5\n6,7\n'
    with pytest.raises(SplitError, match="never closed") as info:
        run(source)
    assert info.value.line == 3
    with pytest.raises(SplitError) as info:
        run(source, block_size=3)
    assert info.value.line == 3


def test_unterminated_quote_in_a_big_file_is_hinted_at() -> None:
    source = b"a\n" + b"1\n" * 5 + b'"' + b"2\n" * 100
    with pytest.raises(SplitError, match=r'line 7: .*opened on line 7 is still open') as info:
        run(source, max_bytes=50, block_size=8)
    assert info.value.line == 7


def test_invalid_utf8_reports_the_first_bad_line() -> None:
    source = b"a,b\n1,caf\xc3\xa9\n2,caf\xe9\n3,\xff\n"
    with pytest.raises(SplitError, match="not valid UTF-8") as info:
        run(source)
    assert info.value.line == 3
    for block_size in (1, 2, 5):
        with pytest.raises(SplitError) as info:
            run(source, block_size=block_size)
        assert info.value.line == 3


def test_utf8_sequence_split_across_blocks_is_fine() -> None:
    source = "a,b\n1,€𝄞é\n".encode()
    for block_size in range(1, 8):
        _result, chunks = run(source, block_size=block_size)
        assert chunks == [source]


def test_truncated_utf8_at_end_of_file() -> None:
    with pytest.raises(SplitError, match="not valid UTF-8") as info:
        run(b"a\n1\n\xe2\x82", block_size=2)
    assert info.value.line == 3


def test_cp1252_is_transcoded_to_utf8() -> None:
    source = "email,name\na@x.com,Zoë “Z” Müller\nb@x.com,€uro\n".encode("cp1252")
    result, chunks = run(source, encoding="cp1252", block_size=3)
    text = "email,name\na@x.com,Zoë “Z” Müller\nb@x.com,€uro\n"
    assert b"".join(chunks).decode("utf-8") == text
    # Byte ranges stay in the source's own bytes.
    assert result.chunks[0].source_start == len(b"email,name\n")
    assert result.chunks[-1].source_end == len(source)
    # One record per chunk: the limit applies to the UTF-8 output.
    records = source.split(b"\n")[1:3]
    longest = max(len(r.decode("cp1252").encode()) + 1 for r in records)
    result, chunks = run(source, encoding="cp1252", max_bytes=len(b"email,name\n") + longest)
    assert len(chunks) == 2 and max(len(c) for c in chunks) == len(b"email,name\n") + longest
    assert [c.source_end - c.source_start for c in result.chunks] == [len(r) + 1 for r in records]
    assert [(c.first_line, c.last_line) for c in result.chunks] == [(2, 2), (3, 3)]


def test_bad_byte_in_the_source_encoding() -> None:
    source = b"a,b\n1,2\n3,\x81\n"  # 0x81 is undefined in cp1252
    with pytest.raises(SplitError, match="not valid cp1252") as info:
        run(source, encoding="cp1252")
    assert info.value.line == 3


def test_utf8_bom_with_a_configured_encoding_is_refused() -> None:
    with pytest.raises(SplitError, match="probably UTF-8"):
        run(b"\xef\xbb\xbfa\n1\n", encoding="latin-1")


def test_utf8_as_encoding_takes_the_native_path() -> None:
    result, chunks = run(b"\xef\xbb\xbfa\n\xc3\xa9\n", encoding="UTF-8")
    assert result.bom_stripped and chunks == [b"a\n\xc3\xa9\n"]


def test_utf16_without_encoding_is_refused() -> None:
    source = "a,b\n1,2\n".encode("utf-16")
    with pytest.raises(SplitError, match=r"UTF-16.*save it as UTF-8"):
        run(source)
    with pytest.raises(SplitError, match="NUL"):
        run("a,b\n1,2\n".encode("utf-16-le"))


def test_utf16_with_a_single_byte_encoding_is_refused() -> None:
    with pytest.raises(SplitError, match=r"UTF-16.*cp1252"):
        run("a,b\n1,2\n".encode("utf-16"), encoding="cp1252")


def test_utf16_with_encoding_is_transcoded() -> None:
    source = "a,b\n1,é\n".encode("utf-16")
    result, chunks = run(source, encoding="utf-16", block_size=3)
    assert result.bom_stripped
    assert chunks == ["a,b\n1,é\n".encode()]
    assert result.chunks[0].source_start == 2 + 8 and result.chunks[0].source_end == len(source)


def test_unknown_encoding_and_format() -> None:
    with pytest.raises(ConfigError, match="unknown encoding"):
        run(b"a\n1\n", encoding="klingon")
    with pytest.raises(ConfigError, match="unknown format"):
        run(b"a\n1\n", fmt="xlsx")


def test_quoted_field_spanning_block_boundaries() -> None:
    source = b'a,b\n1,"long\nquoted, ""field""\r\nover blocks"\n2,x\n'
    for block_size in (1, 2, 3, 4, 7, 11):
        result, chunks = run(source, block_size=block_size, max_bytes=56)
        assert chunks == [source]
        assert result.rows == 2
        assert result.chunks[0].last_line == 5
        result, chunks = run(source, block_size=block_size, max_bytes=47)
        assert parse(chunks[0])[1] == ["1", 'long\nquoted, "field"\r\nover blocks']
        assert chunks[1] == b"a,b\n2,x\n"


@pytest.mark.parametrize("position", range(1, 24))
def test_quote_at_a_block_boundary(position: int) -> None:
    source = b'h\n"a""\nb"\n"\n"\n""\nz\n'
    result, chunks = run(source, block_size=position, max_bytes=12)
    assert [r for body in chunks for r in parse(body)[1:]] == [['a"\nb'], ["\n"], [""], ["z"]]
    check_manifest(source, result, chunks, 12)


def test_chunk_context_managers_see_the_error() -> None:
    seen: list[type[BaseException] | None] = []

    @contextlib.contextmanager
    def opener(index: int) -> Iterator[BinaryIO]:
        try:
            yield io.BytesIO()
        except BaseException as exc:
            seen.append(type(exc))
            raise
        seen.append(None)

    with pytest.raises(SplitError):
        split(io.BytesIO(b"h\n1\n2\n" + b"3" * 40 + b"\n"), opener, max_bytes=6, block_size=2)
    assert seen[-1] is SplitError


def test_scan_writes_nothing_and_agrees_with_split() -> None:
    source = b"a\n" + b"".join(b"%d\n" % i for i in range(100))
    result, _ = run(source, max_bytes=50)
    assert scan(io.BytesIO(source), max_bytes=50) == result
    with pytest.raises(SplitError):
        scan(io.BytesIO(b"a\n\"1\n"))


def test_format_manifest_line() -> None:
    line = format_manifest_line(Chunk(3, 100, 200, 12, 20, 8, 150))
    assert line == "chunk=0003 lines=12-20 rows=8 source_bytes=100-200 size=150"


def test_split_file(tmp_path: Path) -> None:
    source = tmp_path / "leads.tsv"
    source.write_bytes(b"email\tname\n" + b"".join(b"u%d@x.com\tN\n" % i for i in range(30)))
    out = tmp_path / "out"
    result = split_file(source, out, max_bytes=100)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"leads.part{i:04d}.tsv" for i in range(len(result.chunks))]
    assert len(names) > 1
    assert result.header_fields == ["email", "name"]
    body = b"".join((out / n).read_bytes()[len(result.header) :] for n in names)
    assert result.header + body == source.read_bytes()


def test_split_file_removes_its_chunks_on_error(tmp_path: Path) -> None:
    source = tmp_path / "bad.txt"
    source.write_bytes(b"a,b\n" + b"1,2\n" * 50 + b"3,\xff\n")
    out = tmp_path / "out"
    with pytest.raises(SplitError) as info:
        split_file(source, out, fmt="csv", max_bytes=20)
    assert info.value.line == 52
    assert list(out.iterdir()) == []


def test_split_file_takes_no_guess_at_txt(tmp_path: Path) -> None:
    """One extension rule for the daemon and ``dropzone split``: .txt needs the format given."""
    source = tmp_path / "leads.txt"
    source.write_bytes(b"a\n1\n")
    with pytest.raises(SplitError, match="unsupported extension"):
        split_file(source, tmp_path / "out")


def test_split_file_refuses_unknown_extensions(tmp_path: Path) -> None:
    source = tmp_path / "leads.xlsx"
    source.write_bytes(b"a\n1\n")
    with pytest.raises(SplitError, match="unsupported extension"):
        split_file(source, tmp_path / "out")
    assert split_file(source, tmp_path / "out", fmt="csv").rows == 1


class TestHeaderCheck:
    def test_refusal_comes_before_any_chunk_is_written(self) -> None:
        """A header the check refuses: nothing is written, however large the file."""
        opened: list[int] = []

        @contextlib.contextmanager
        def open_chunk(index: int) -> Iterator[BinaryIO]:
            opened.append(index)
            yield io.BytesIO()

        def refuse(fields: list[str]) -> list[str]:
            raise InputError("bad header", line=1)

        data = b"email\n" + b"a@example.com\n" * 100_000
        with pytest.raises(InputError, match="bad header"):
            split(io.BytesIO(data), open_chunk, max_bytes=100_000, header_check=refuse)
        assert opened == []

    def test_changed_names_are_written_to_every_chunk_and_lines_keep_counting_the_source(self) -> None:
        chunks: dict[int, io.BytesIO] = {}

        @contextlib.contextmanager
        def open_chunk(index: int) -> Iterator[BinaryIO]:
            chunks[index] = io.BytesIO()
            yield chunks[index]

        data = b" email , first name\r\n" + b"a@example.com,Ann\r\n" * 10
        result = split(
            io.BytesIO(data), open_chunk, max_bytes=80, header_check=lambda names: [n.strip() for n in names]
        )
        assert result.header_fields == ["email", "first name"]
        assert len(chunks) > 1
        for sink in chunks.values():
            assert sink.getvalue().startswith(b"email,first name\r\n")
        assert result.chunks[0].first_line == 2
        assert result.chunks[0].source_start == len(b" email , first name\r\n")
        assert result.rows == 10
