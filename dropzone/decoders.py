"""Streaming decoders: gzip and zip, each within its bound (the I/O of ``unpacking``'s decisions).

Owns reading a partner's compressed bytes without trusting them: output is
counted as it is produced and the decoder stops at its ``Bound`` (nothing
past the bound is ever written; what was written is the caller's work area,
removed when the file is refused), and every way a damaged stream can fail
becomes an ``InputError`` in words a partner can act on, never an
``OSError`` (which the prepare stage takes for a disk problem and retries).
Does not own: which files get which decoder and the bounds themselves
(``unpacking``), PGP (``pgp``), workbooks (``sheets``).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from dropzone import defaults as D
from dropzone import unpacking
from dropzone.errors import InputError
from dropzone.journal_schema import NewMember
from dropzone.outbox import printable
from dropzone.sheetrange import RangeMeter
from dropzone.unpack_config import UnpackLimits

#: Bytes read or written at a time.
BLOCK = 1 << 20
#: The compression methods read in a zip: every zip tool's default. Others (bzip2, lzma, deflate64) are refused
#: by name rather than half-supported.
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
#: The first bytes of an OLE compound file: a password-protected .xlsx, or an old binary .xls.
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class _Gunzip(io.RawIOBase):
    """A gzip stream's plaintext (every member of a multi-member file), refused past ``limit`` bytes."""

    def __init__(self, source: BinaryIO, limit: int, overflow: Callable[[], str], shown: str) -> None:
        super().__init__()
        self._gz = gzip.GzipFile(fileobj=source, mode="rb")
        self._limit, self._overflow, self._shown = limit, overflow, shown
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        # One byte past what is left tells an overflow from a file that ends exactly at the bound.
        want = min(len(buffer), self._limit - self.produced + 1)
        try:
            data = self._gz.read(want)
        except gzip.BadGzipFile as exc:
            raise InputError(f"{self._shown}: cannot be decompressed: {_gzip_reason(str(exc))}") from None
        except EOFError:
            raise InputError(
                f"{self._shown}: cannot be decompressed: the gzip data ends too soon (an interrupted upload?)"
            ) from None
        except zlib.error as exc:
            raise InputError(f"{self._shown}: cannot be decompressed: the gzip data is damaged ({exc})") from None
        self.produced += len(data)
        if self.produced > self._limit:
            raise InputError(self._overflow())
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._gz.close()  # leaves ``source`` open: the caller's
        super().close()


def _gzip_reason(text: str) -> str:
    if text.startswith("Not a gzipped file"):
        return "it is not gzip data (is it really a .gz file?)"
    if text.startswith("CRC check failed") or text.startswith("Incorrect length"):
        return "its checksum does not match (the file is damaged)"
    return f"the gzip data is damaged ({text})"


def gunzip(source: BinaryIO, *, limit: int, overflow: Callable[[], str], shown: str) -> BinaryIO:
    """The decompressed stream of ``source``, read block by block; ``InputError`` past ``limit`` bytes.

    ``overflow()`` words the refusal at the bound; ``shown`` is the file's name for the other ones.
    """
    return io.BufferedReader(_Gunzip(source, limit, overflow, shown), buffer_size=BLOCK)


def copy_to(source: BinaryIO, dest: Path) -> int:
    """Stream ``source`` into a new file ``dest`` (0600, never an existing one); the bytes written."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, BLOCK)
        return out.tell()


# ---- zip -----------------------------------------------------------------------------------


class MemberTooBigError(Exception):
    """A zip member produced more than its bound (nothing past the bound was written)."""


class DamagedMemberError(Exception):
    """A zip member's data cannot be read (bad checksum, damaged deflate data, cut short)."""


def open_zip(source: BinaryIO, shown: str) -> zipfile.ZipFile:
    """``source`` (seekable) as a zip; ``InputError`` when it is not one."""
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise InputError(f"{shown}: cannot be read as a zip archive ({exc})") from None


def method_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member's compression is not read, or None."""
    if info.compress_type in ZIP_METHODS:
        return None
    return f"compression method {info.compress_type} is not read (only {' and '.join(ZIP_METHODS.values())})"


class Sink(Protocol):
    """Where ``copy_member`` writes: a file, a zip part, or a part measured on its way (``_Metered``)."""

    def write(self, data: bytes, /) -> int: ...


def copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: Sink, *, limit: int) -> int:
    """Stream one member into ``out``; its size. ``MemberTooBigError`` past ``limit``; ``DamagedMemberError``.

    zipfile stops at the size the entry declares and checks the CRC there, so a member that lies about its
    size is damaged, never bigger than it said.
    """
    produced = 0
    try:
        with archive.open(info) as member:
            while block := member.read(min(BLOCK, limit - produced + 1)):
                produced += len(block)
                if produced > limit:
                    raise MemberTooBigError
                out.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError) as exc:
        # NotImplementedError: zipfile refuses flag bits it does not support (patched data, strong encryption).
        raise DamagedMemberError(str(exc) or type(exc).__name__) from None
    return produced


def repack_workbook(source: BinaryIO, dest: Path, *, limits: UnpackLimits, shown: str) -> None:
    """Copy an .xlsx's parts into a plain (stored) zip at ``dest``, each checked and within bounds.

    The reader (calamine) then sees parts whose sizes are true and bounded: it holds a whole sheet in
    memory and would trust the sizes a workbook declares. ``InputError`` for a workbook that is encrypted,
    not a zip, damaged, or too big once expanded.
    """
    head = source.read(len(CFB_MAGIC))
    source.seek(0)
    if head == CFB_MAGIC:
        raise InputError(
            f"{shown}: is a password-protected workbook (or an old binary .xls): save it as .xlsx without a password"
        )
    budget = min(limits.max_expanded_bytes, D.MAX_WORKBOOK_BYTES)
    with open_zip(source, shown) as book:
        parts = [info for info in book.infolist() if not info.is_dir()]
        names = [info.filename for info in parts]
        if len(parts) > limits.max_archive_members or len(set(names)) != len(names):
            raise InputError(f"{shown}: is not a readable .xlsx workbook (its parts are not what a workbook holds)")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as out:
            total = 0
            for info in parts:
                if info.flag_bits & 0x1:
                    raise InputError(f"{shown}: is password-protected: save it as .xlsx without a password")
                problem = method_problem(info)
                if problem is not None:
                    raise InputError(f"{shown}: is not a readable .xlsx workbook ({problem})")
                bound = unpacking.expansion_bound(info.compress_size, limits)
                limit = min(bound.limit, budget - total)
                meter = RangeMeter() if _WORKSHEET.match(info.filename) else None
                try:
                    with out.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as part:
                        total += copy_member(book, info, _Metered(part, meter), limit=limit)
                except MemberTooBigError:
                    if limit == bound.limit:
                        raise InputError(unpacking.too_big(shown, bound, limits)) from None
                    if budget == limits.max_expanded_bytes:
                        raise InputError(unpacking.too_big(shown, unpacking.Bound(budget, "max_expanded_bytes"),
                                                           limits)) from None
                    raise InputError(
                        f"{shown}: the workbook expands to more than {budget:,} bytes (it is read whole into "
                        "memory); send it as CSV, or in smaller workbooks"
                    ) from None
                except DamagedMemberError as exc:
                    raise InputError(f"{shown}: the workbook is damaged ({exc})") from None
                problem = meter.problem(shown, info.filename) if meter is not None else None
                if problem is not None:
                    raise InputError(problem)


# Every XML part is measured: a workbook may keep its sheets anywhere its relationships point.
_WORKSHEET = re.compile(r".*\.xml\Z", re.IGNORECASE)


class _Metered:
    """A worksheet part on its way into the repacked workbook, measured as it goes (``sheetrange``)."""

    def __init__(self, out: IO[bytes], meter: RangeMeter | None) -> None:
        self.out, self.meter = out, meter

    def write(self, data: bytes) -> int:
        if self.meter is not None:
            self.meter.feed(data)
        return self.out.write(data)


def _size_of(source: BinaryIO) -> int:
    """The archive's size (the original, or its decrypted copy in the work dir): zipfile seeks anyway."""
    here = source.tell()
    size = source.seek(0, os.SEEK_END)
    source.seek(here)
    return size


def extract_members(
    source: BinaryIO, archive_relpath: str, dest: Path, *, limits: UnpackLimits, shown: str
) -> list[NewMember]:
    """Take a zip's files out into ``dest`` (each 0600, named by its position), within the bounds.

    A member's own trouble (a bad name, a link, a password, too big, damaged) is that member's: it is listed,
    refused, and the others are taken. The archive's trouble (not a zip, too many files, more than
    ``max_archive_bytes`` in all, nothing in it) is ``InputError`` for the archive, with nothing kept.
    """
    with open_zip(source, shown) as archive:
        entries = archive.infolist()
        files = [info for info in entries if not info.is_dir()]
        if len(files) > limits.max_archive_members:
            raise InputError(
                f"{shown}: holds {len(files):,} files, more than {limits.max_archive_members:,} "
                "(max_archive_members): send fewer files per archive"
            )
        archive_size = _size_of(source)
        whole = unpacking.archive_bound(archive_size, limits)
        if sum(info.file_size for info in files) > whole.limit:  # what it says: refused before a byte is read
            raise InputError(unpacking.too_big(shown, whole, limits))
        # orig_filename: zipfile cuts a name at its first NUL (``filename``); the partner's full name is refused.
        names = Counter(info.orig_filename for info in entries)
        members: list[NewMember] = []
        total = 0
        for index, info in enumerate(entries):
            mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix modes only from Unix zips
            entry = unpacking.Entry(info.orig_filename, mode=mode, encrypted=bool(info.flag_bits & 0x1))
            verdict = unpacking.member_verdict(entry, archive_relpath, names[info.orig_filename] > 1)
            if verdict.skip:
                continue
            path = dest / f"{index:05d}"
            relpath = verdict.relpath or unpacking.escaped(info.orig_filename)
            error = verdict.error
            problem = method_problem(info) if error is None else None
            if problem is not None:
                error = f"{printable(relpath)}: refused: its {problem}; zip it with deflate (the usual method)"
            if error is not None:
                members.append(NewMember(relpath, path, info.file_size, error, own_status=verdict.relpath is not None))
                continue
            # A directory entry may lie about the compressed size: never more than the archive itself.
            room = unpacking.Bound(whole.limit - total, whole.key)
            bound = unpacking.expansion_bound(min(info.compress_size, archive_size), limits, room=room)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    size = copy_member(archive, info, out, limit=bound.limit)
            except (MemberTooBigError, DamagedMemberError) as exc:
                path.unlink()
                big = isinstance(exc, MemberTooBigError)
                if big and bound.limit == room.limit and bound.key == room.key:  # the archive's bound, not the member's
                    raise InputError(unpacking.too_big(shown, whole, limits)) from None
                why = (
                    unpacking.too_big(printable(relpath), bound, limits) if big
                    else f"{printable(relpath)}: cannot be read from the archive: it is damaged ({exc})"
                )
                members.append(NewMember(relpath, path, info.file_size, why))
                continue
            total += size
            members.append(NewMember(relpath, path, size))
    if not members:
        raise InputError(f"{shown}: the archive holds no files (folders and hidden files are skipped)")
    return members


__all__ = [
    "BLOCK",
    "CFB_MAGIC",
    "ZIP_METHODS",
    "DamagedMemberError",
    "MemberTooBigError",
    "copy_member",
    "copy_to",
    "extract_members",
    "gunzip",
    "method_problem",
    "open_zip",
    "repack_workbook",
]
