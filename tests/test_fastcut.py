"""The fast path: chunks copied from the source file by the kernel give what writing them from Python gives."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropzone import fastcut
from dropzone.errors import SplitError
from dropzone.fastcut import SourceFile
from dropzone.splitting import SplitResult, chunk_path, split, split_file

Outcome = tuple[SplitResult, list[bytes]] | tuple[str, int | None]


def classic(source: bytes, **kwargs: object) -> Outcome:
    """The reference: a stream that is no file, so every record is written from Python."""
    chunks: dict[int, io.BytesIO] = {}

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        chunks[index] = io.BytesIO()
        yield chunks[index]

    try:
        result = split(io.BytesIO(source), open_chunk, **kwargs)  # type: ignore[arg-type]
    except SplitError as exc:
        return str(exc), exc.line
    return result, [chunks[i].getvalue() for i in range(len(chunks))]


def fast(
    source: bytes, folder: Path, *, buffered: bool = True, yield_wrapper: bool = False, **kwargs: object
) -> Outcome:
    """The same split from a real file into real files (or into wrappers the kernel cannot write to)."""
    path = folder / "leads.csv"
    path.write_bytes(source)
    written: list[Path] = []
    opened = threading.Semaphore(1)  # chunks are opened in order, one at a time

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        assert index == len(written)
        assert opened.acquire(blocking=False), "a chunk was opened before the previous one was closed"
        written.append(folder / f"part{index}")
        try:
            with open(written[-1], "wb") as f:
                yield Wrapper(f) if yield_wrapper else f  # type: ignore[misc]
        finally:
            opened.release()

    try:
        with open(path, "rb", buffering=-1 if buffered else 0) as f:
            result = split(f, open_chunk, **kwargs)  # type: ignore[arg-type]
    except SplitError as exc:
        return str(exc), exc.line
    return result, [p.read_bytes() for p in written]


class Wrapper:
    """A chunk the caller wraps (counting, hashing): it must see every byte through write()."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.seen = 0

    def write(self, data: bytes | memoryview) -> int:
        self.seen += len(data)
        return self.f.write(data)

    def fileno(self) -> int:  # tempting, but writing past write() would skip the wrapper
        return self.f.fileno()


def split_file_chunks(outcome: Outcome) -> list[bytes]:
    assert isinstance(outcome[0], SplitResult) and isinstance(outcome[1], list), outcome
    return outcome[1]


def oracle(source: bytes, max_bytes: int) -> list[tuple[int, int, int, int, int]]:
    """(source_start, source_end, first_line, last_line, rows) per chunk: records found
    one byte at a time (a line feed outside quotes ends one), packed greedily."""
    records = []
    inside, line, start, first = False, 1, 0, 1
    for pos, byte in enumerate(source):
        if byte == 0x22:
            inside = not inside
        elif byte == 0x0A:
            if not inside:
                records.append((start, pos + 1, first, line))
                start, first = pos + 1, line + 1
            line += 1
    if start < len(source):
        records.append((start, len(source), first, line))
    (_, header_end, _, _), *records = records
    room = max_bytes - header_end
    chunks: list[list[int]] = []
    for start, end, first, last in records:
        if chunks and end - chunks[-1][0] <= room:
            chunks[-1][1:] = [end, chunks[-1][2], last, chunks[-1][4] + 1]
        else:
            chunks.append([start, end, first, last, 1])
    return [(a, b, c, d, e) for a, b, c, d, e in chunks]


# -- property: any quote-heavy file, any limit, any block size ---------------

QUOTED_PIECE = st.sampled_from(
    [b"x", b"yy", b'""', b"\n", b"\r\n", b"\r", b",", b"\xc3\xa9", b"\xf0\x9d\x84\x9e", b" "]
)
FIELD = st.one_of(
    st.lists(QUOTED_PIECE, max_size=8).map(lambda pieces: b'"' + b"".join(pieces) + b'"'),
    st.sampled_from([b"", b"1", b"abc", b"\xc3\xa9t\xc3\xa9", b"O'Brien"]),
)


@st.composite
def quote_heavy(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(file, whether it is well formed)."""
    terminator = draw(st.sampled_from([b"\n", b"\r\n"]))
    width = draw(st.integers(1, 4))
    header = b",".join(b'"h%d"' % i for i in range(width))
    rows = draw(st.lists(st.lists(FIELD, min_size=width, max_size=width), min_size=1, max_size=25))
    source = terminator.join([header, *(b",".join(row) for row in rows)])
    if draw(st.booleans()):
        source += terminator  # else: no line break after the last record, still valid
    good = True
    if draw(st.integers(0, 5)) == 0:  # a stray quote or a byte that is not UTF-8
        at = draw(st.integers(len(header) + 1, len(source)))
        source = source[:at] + draw(st.sampled_from([b'"', b"\xff", b"\xe2\x82"])) + source[at:]
        good = False
    return source, good


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quote_heavy(), data=st.data())
def test_fast_path_gives_what_the_reference_gives(case: tuple[bytes, bool], data: st.DataObject) -> None:
    source, good = case
    max_bytes = data.draw(st.integers(8, len(source) + 8), label="max_bytes")
    block_size = data.draw(st.sampled_from([1, 2, 3, 7, 16, 64, 1 << 20]), label="block_size")
    buffered = data.draw(st.booleans(), label="buffered")
    expected = classic(source, max_bytes=max_bytes, block_size=block_size)
    with tempfile.TemporaryDirectory() as folder:
        got = fast(source, Path(folder), buffered=buffered, max_bytes=max_bytes, block_size=block_size)
    assert got == expected
    if good and isinstance(expected[0], SplitResult):
        manifest = [(c.source_start, c.source_end, c.first_line, c.last_line, c.rows) for c in expected[0].chunks]
        assert manifest == oracle(source, max_bytes)


# -- the ways of copying, and their fallbacks ---------------------------------

SOURCE = b'"email","note"\r\n' + b"".join(
    b'"u%d@x.com","line one\r\nline ""two"" \xc3\xa9"\r\n' % i if i % 3 else b'"u%d@x.com","plain"\r\n' % i
    for i in range(400)
)


def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(way, thread) of every kernel copy and write the fast path makes."""
    calls: list[tuple[str, str]] = []
    for name in ("copy_file_range", "sendfile", "pread"):
        real = getattr(os, name)

        def spy(*args: int, _real: Callable[..., int | bytes] = real, _name: str = name) -> int | bytes:
            calls.append((_name, threading.current_thread().name))
            return _real(*args)

        monkeypatch.setattr(os, name, spy)
    return calls


def refuse(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    def refused(*args: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, refused)


def test_chunks_are_copied_in_the_kernel_on_a_helper_thread_but_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = copies(monkeypatch)
    expected = classic(SOURCE, max_bytes=2000)
    assert fast(SOURCE, tmp_path, max_bytes=2000) == expected
    chunks = len(split_file_chunks(expected))
    assert chunks > 3
    assert [way for way, _ in calls] == ["copy_file_range"] * chunks
    assert [thread for _, thread in calls] == ["dropzone-chunk-copy"] * (chunks - 1) + ["MainThread"]


@pytest.mark.parametrize(
    ("refused", "code", "way"),
    [
        (["copy_file_range"], errno.EXDEV, "sendfile"),  # another filesystem, before Linux 5.3 or since 5.19
        (["copy_file_range"], errno.ENOSYS, "sendfile"),  # an old kernel, or a sandbox that filters it
        (["copy_file_range", "sendfile"], errno.EINVAL, "pread"),  # e.g. a chunk opened O_APPEND
        (["copy_file_range", "sendfile"], errno.EOPNOTSUPP, "pread"),
    ],
)
def test_refused_kernel_copies_fall_back_to_identical_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: list[str], code: int, way: str
) -> None:
    expected = classic(SOURCE, max_bytes=1500, block_size=100)
    calls = copies(monkeypatch)
    for name in refused:
        refuse(monkeypatch, name, code)
    assert fast(SOURCE, tmp_path, max_bytes=1500, block_size=100) == expected
    assert {w for w, _ in calls} == {way}


def test_without_copy_file_range_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not Linux: the attribute is missing, not refused."""
    expected = classic(SOURCE, max_bytes=1500)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    assert fast(SOURCE, tmp_path, max_bytes=1500) == expected


def test_a_copy_that_fails_fails_the_split_and_leaves_no_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk on the helper thread is raised in the splitter, and split_file cleans up."""
    refuse(monkeypatch, "copy_file_range", errno.ENOSPC)
    source = tmp_path / "leads.csv"
    source.write_bytes(SOURCE)
    with pytest.raises(OSError, match="No space left") as info:
        split_file(source, tmp_path / "out", max_bytes=1500)
    assert info.value.errno == errno.ENOSPC
    assert list((tmp_path / "out").iterdir()) == []


def test_chunk_context_managers_see_a_copy_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse(monkeypatch, "copy_file_range", errno.EIO)
    seen: list[type[BaseException] | None] = []

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        with open(tmp_path / f"part{index}", "wb") as f:
            try:
                yield f
            except BaseException as exc:
                seen.append(type(exc))
                raise
            seen.append(None)

    (tmp_path / "leads.csv").write_bytes(SOURCE)
    with open(tmp_path / "leads.csv", "rb") as f, pytest.raises(OSError):
        split(f, open_chunk, max_bytes=1500)
    assert seen == [OSError]  # the first chunk's copy failed; nothing after it was opened


def test_a_wrapped_chunk_sees_every_byte_through_its_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = copies(monkeypatch)
    expected = classic(SOURCE, max_bytes=1500)
    assert fast(SOURCE, tmp_path, max_bytes=1500, yield_wrapper=True) == expected
    assert {way for way, _ in calls} == {"pread"}
    assert {thread for _, thread in calls} == {"MainThread"}


def test_a_stream_that_does_not_start_at_offset_zero(tmp_path: Path) -> None:
    prefix = b"junk that is not part of the csv\n"
    path = tmp_path / "leads.csv"
    path.write_bytes(prefix + SOURCE)
    chunks: list[bytes] = []

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        with open(tmp_path / f"part{index}", "wb") as f:
            yield f
        chunks.append((tmp_path / f"part{index}").read_bytes())

    with open(path, "rb") as f:
        f.read(len(prefix))  # a BufferedReader: its file position is further on than its stream's
        result = split(f, open_chunk, max_bytes=1500)
    assert (result, chunks) == classic(SOURCE, max_bytes=1500)


def test_bom_and_trimmed_header_on_the_fast_path(tmp_path: Path) -> None:
    source = b"\xef\xbb\xbf email , note \n" + b"a@x.com,1\n" * 300
    expected = classic(source, max_bytes=400, header_check=lambda names: [n.strip() for n in names])
    assert fast(source, tmp_path, max_bytes=400, header_check=lambda names: [n.strip() for n in names]) == expected
    chunks = split_file_chunks(expected)
    assert isinstance(expected[0], SplitResult) and expected[0].bom_stripped
    assert len(chunks) > 1 and all(c.startswith(b"email,note\n") for c in chunks)


def test_check_only_mode_opens_nothing(tmp_path: Path) -> None:
    source = tmp_path / "leads.csv"
    source.write_bytes(SOURCE)
    assert split_file(source, None, max_bytes=1500) == split_file(source, tmp_path / "out", max_bytes=1500)
    assert SourceFile.of(io.BytesIO(SOURCE)) is None


def test_a_file_that_grows_while_it_is_split_is_refused(tmp_path: Path) -> None:
    """The kernel copies what the file holds now, the split checked what it read: they must agree."""
    source = tmp_path / "leads.csv"
    source.write_bytes(SOURCE)
    out = tmp_path / "out"

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        with open(source, "ab") as partner:
            partner.write(b'"late@x.com","appended while split"\r\n')
        with open(chunk_path(source, out, index), "wb") as f:
            yield f

    out.mkdir()
    with open(source, "rb") as f, pytest.raises(SplitError, match="changed while it was being split"):
        split(f, open_chunk, max_bytes=1500)


def test_a_file_rewritten_in_place_with_its_mtime_put_back_is_refused(tmp_path: Path) -> None:
    """Same size, the old mtime restored (utime, sftp's fsetstat): the change time still tells."""
    source = tmp_path / "leads.csv"
    source.write_bytes(SOURCE)
    before = os.stat(source)
    out = tmp_path / "out"

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        if index == 0:
            time.sleep(0.01)  # a later change time than the split's first look (its clock's granularity)
            with open(source, "r+b") as partner:
                partner.seek(len(SOURCE) - 4)
                partner.write(b"\xff\xfe")
            os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        with open(chunk_path(source, out, index), "wb") as f:
            yield f

    out.mkdir()
    with open(source, "rb") as f, pytest.raises(SplitError, match="changed while it was being split"):
        split(f, open_chunk, max_bytes=1500)


def test_a_file_that_shrinks_while_it_is_split_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "leads.csv"
    source.write_bytes(SOURCE)

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        os.truncate(source, 100)
        with open(tmp_path / f"part{index}", "wb") as f:
            yield f

    with open(source, "rb") as f, pytest.raises(SplitError, match="shorter"):
        split(f, open_chunk, max_bytes=1500, block_size=len(SOURCE))


def test_what_counts_as_a_source_file(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv.gz"
    with gzip.open(path, "wb") as z:
        z.write(SOURCE)
    with gzip.open(path, "rb") as z:
        assert SourceFile.of(z) is None  # type: ignore[arg-type]  # its fileno() is the compressed file's
    with open(path, "rb", buffering=0) as raw:
        raw.seek(5)
        file = SourceFile.of(raw)
        assert file is not None and file.base == 5 and file.fd == raw.fileno()
    read, write = os.pipe()
    with open(read, "rb") as pipe, open(write, "wb"):
        assert SourceFile.of(pipe) is None


def test_copy_range_falls_back_mid_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel copy refused after a first part: the rest follows from where it stopped."""
    (tmp_path / "src").write_bytes(bytes(range(256)) * 100)
    real = os.copy_file_range
    done: list[int] = []

    def once(src: int, dst: int, count: int, offset: int) -> int:
        if done:
            raise OSError(errno.EXDEV, "cross-device")
        done.append(real(src, dst, 1000, offset))
        return done[-1]

    monkeypatch.setattr(os, "copy_file_range", once)
    refuse(monkeypatch, "sendfile", errno.EINVAL)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        fastcut.copy_range(src.fileno(), dst.fileno(), 10, 20_000)
    assert done == [1000]
    assert (tmp_path / "dst").read_bytes() == (tmp_path / "src").read_bytes()[10:20_000]
