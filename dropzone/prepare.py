"""Prepare: route each claimed file once, check its header, split it into chunks.

For each file in ``claimed``: pick its route (the one time a file is routed
for its import), open the claimed original in the private processing area
(no symlink followed, the inode readiness saw), and stream it through the
splitter once. The splitter hands the header to ``check_header`` *before*
any chunk is written, so a 400 MB file with a bad header costs one block;
trimmed header names are written by the splitter itself. The chunks, the
serialised import target and the notes are journalled in one transaction
(``split``); from then on the file is the dispatch stage's.

A file Marketo must not see is ``Rejected`` with a message naming the line;
a full or broken work area (a disk problem, not the partner's) keeps the
file claimed and tries again later.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from dropzone import defaults as D
from dropzone import health, outbox, routing, safefs, splitting, unpacking
from dropzone.config import Inbox, Route
from dropzone.errors import DecryptUnavailableError, InputError, StoreError
from dropzone.jobs import FileState, Outcome
from dropzone.kinds import ObjectKind
from dropzone.store import FileRow, NewChunk, Store
from dropzone.unpacker import Unpacker

log = structlog.get_logger("dropzone.prepare")


def work_dir(state_dir: Path, file_id: int) -> Path:
    """Where a file's chunks and result files live until it is reported."""
    return state_dir / "work" / str(file_id)


def check_header(relpath: str, route: Route, fields: list[str], notes: list[str]) -> list[str]:
    """Refuse headers Marketo would fail row by row; return the names to send.

    Pure: ``notes`` collects what the status file should say about changes.
    """
    shown = outbox.printable(relpath)
    if not any(name.strip() for name in fields):
        raise InputError(f"{shown}: line 1 is empty; the first line must be the header", line=1)
    padded = [name for name in fields if name != name.strip()]
    if padded:
        if not route.trim_header:
            listed = ", ".join(repr(n) for n in padded)
            raise InputError(
                f"{shown}: header names with spaces around them ({listed}) on line 1: Marketo would "
                "fail every row; remove the spaces (or set trim_header on the route)",
                line=1,
            )
        fields = [name.strip() for name in fields]
        notes.append("spaces around header names were removed (trim_header)")
    empty = [i + 1 for i, name in enumerate(fields) if not name]
    if empty:
        raise InputError(f"{shown}: header column {empty[0]} on line 1 has no name", line=1)
    seen: set[str] = set()
    for name in fields:
        if name in seen:
            raise InputError(f"{shown}: header column {name!r} appears twice on line 1", line=1)
        seen.add(name)
    if route.object is ObjectKind.PROGRAM_MEMBER and "email" not in {n.lower() for n in fields}:
        raise InputError(
            f"{shown}: program member files need an 'email' column (Marketo deduplicates on it); "
            f"line 1 has {', '.join(fields)}",
            line=1,
        )
    return fields


class _StillWrittenError(Exception):
    """The claimed file changed (size or mtime) since its claim, or while it was split."""

    def __init__(self, size: int, mtime_ns: int) -> None:
        super().__init__(f"changed: {size} bytes")
        self.size, self.mtime_ns = size, mtime_ns


@dataclass(frozen=True, slots=True)
class _Growing:
    size: int
    mtime_ns: int
    since: float


@dataclass
class Prepare:
    """The prepare stage.

    Args:
        store: the journal.
        inbox_of: the configuration of a file's inbox (retired ones included), None if gone.
        state_dir: the work area lives below it.
        split_max_bytes: the largest chunk.
        metrics: counts splits.
        heartbeat: called per file.
    """

    store: Store
    inbox_of: Callable[[Path], Inbox | None]
    state_dir: Path
    split_max_bytes: int
    metrics: health.Metrics
    heartbeat: Callable[[], None] = lambda: None
    #: The configured folders' real paths at start (``Daemon.pins``).
    pins: dict[Path, str] = field(default_factory=dict)
    #: Peels compressed, encrypted and spreadsheet drops before they are split (``unpacker``).
    unpacker: Unpacker = field(default_factory=Unpacker)
    #: Claimed files that changed after their claim, by file id: split once they stop changing.
    _growing: dict[int, _Growing] = field(default_factory=dict)

    def run_once(self, now: float) -> bool:
        """Split up to a few claimed files; True when one moved on."""
        busy = False
        rows = [r for r in self.store.files([FileState.CLAIMED]) if self._settled(r, now)]
        for row in rows[: D.PREPARES_PER_PASS]:
            self.heartbeat()
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath):
                busy |= self._prepare_one(row, now)
        return busy

    def _settled(self, row: FileRow, now: float) -> bool:
        """False while a file that changed after its claim is within a new quiet period."""
        growing = self._growing.get(row.id)
        if growing is None:
            return True
        inbox = self.inbox_of(row.inbox)
        return now >= growing.since + (inbox.quiet_period if inbox else 0.0)

    def _prepare_one(self, row: FileRow, now: float) -> bool:
        try:
            self._split(row)
        except _StillWrittenError as exc:
            # A writer that kept its handle open (one we could not see) is still writing into the
            # claimed file: what was split is thrown away; it is split again once it stops changing.
            shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)
            if row.id not in self._growing:
                log.warning("file_changed_after_claim_waiting", bytes=exc.size)
            self._growing[row.id] = _Growing(exc.size, exc.mtime_ns, since=now)
            return False
        except InputError as exc:
            log.info("file_rejected", reason=str(exc), line=exc.line)
            self._reject(row, str(exc), exc.line)
        except (OSError, StoreError, DecryptUnavailableError, sqlite3.Error) as exc:
            # The work area or the journal failed us, not the partner: keep the
            # file claimed and try again; never reject good data for it.
            log.error("prepare_failed_will_retry", error=str(exc))
            return False
        except Exception as exc:
            # A bug, not the partner's fault; rejecting beats crash-looping on the same file.
            log.exception("file_failed_internal_error")
            self._reject(
                row,
                f"{outbox.printable(row.relpath)}: dropzone could not process this file ({type(exc).__name__}); "
                "the original is kept, please report this",
                None,
            )
        return True

    def _reject(self, row: FileRow, message: str, line: int | None) -> None:
        shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)
        self.store.settle(row.id, Outcome.REJECTED, error=message, line=line)

    def _split(self, row: FileRow) -> None:
        inbox = self.inbox_of(row.inbox)
        if inbox is None:
            raise InputError(f"{outbox.printable(row.relpath)}: its inbox is no longer configured")
        plan = self.unpacker.plan(row.relpath, member=row.parent_id is not None)
        if plan.archive:
            self._unpack(row, plan)
            return
        match = unpacking.route(inbox.routes, plan)
        if isinstance(match, routing.NoMatch):
            raise match.error()
        marker_name = row.relpath.rpartition("/")[2] + (match.route.marker or "")
        if match.route.marker and len(os.fsencode(marker_name)) > outbox.NAME_MAX:
            raise InputError(
                f"{outbox.printable(row.relpath)}: the name is too long for its marker file "
                f"(NAME{match.route.marker} would exceed 255 bytes); send it under a shorter name"
            )
        work = work_dir(self.state_dir, row.id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # Chunk files get plain ASCII names: the partner's name may not be UTF-8,
        # and Marketo sees the chunk's name as the upload's file name.
        stem = f"chunk.{match.format.value}"

        @contextlib.contextmanager
        def open_chunk(index: int) -> Iterator[BinaryIO]:
            with open(work / f"{stem}.part{index:04d}", "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())

        notes: list[str] = []
        growing = self._growing.get(row.id)
        expected = (growing.size, growing.mtime_ns) if growing else (row.size, None)
        with self._open_original(row) as source, contextlib.ExitStack() as decoded:
            before = os.fstat(source.fileno())
            if before.st_size != expected[0] or expected[1] not in (None, before.st_mtime_ns):
                raise _StillWrittenError(before.st_size, before.st_mtime_ns)
            try:
                # What the original's layers hold (``unpacker``), or the original itself.
                data = decoded.enter_context(self.unpacker.plaintext(source, plan, work, notes=notes,
                                                                     sheet=match.route.sheet))
                result = splitting.split(
                    data,
                    open_chunk,
                    fmt=match.format,
                    max_bytes=self.split_max_bytes,
                    encoding=match.route.encoding,
                    header_check=lambda fields: check_header(row.relpath, match.route, fields, notes),
                )
            finally:
                # Also when the split refused it: a half-written last record is no reason to reject.
                after = os.fstat(source.fileno())
                # ctime too: a writer can put the mtime back (utime, sftp's fsetstat), never the ctime.
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    before.st_size, before.st_mtime_ns, before.st_ctime_ns
                ):
                    raise _StillWrittenError(after.st_size, after.st_mtime_ns)
        if self._growing.pop(row.id, None) is not None:
            notes.append(
                "the file changed after it was claimed (it was still being written): it was imported "
                "once it had not changed for the quiet period"
            )
        if result.bom_stripped:
            notes.insert(0, "a UTF-8 byte order mark was removed from the header")
        if not result.ends_with_newline:
            notes.append(
                f"the last record (line {result.chunks[-1].last_line}) has no line break at its end: "
                "if this file was uploaded in place, make sure the upload finished"
            )
        chunks = [
            NewChunk(
                index=c.index,
                path=work / f"{stem}.part{c.index:04d}",
                first_line=c.first_line,
                last_line=c.last_line,
                rows=c.rows,
                size=c.size,
            )
            for c in result.chunks
        ]
        self.store.record_split(
            row.id, chunks, target=match.target, fmt=match.format, rows=result.rows, notes=notes,
            # The header as every chunk starts with it: only chunks with the same bytes share an import.
            header=result.header if match.route.coalesce else None,
        )
        self.metrics.file_split(len(chunks))
        log.info("file_split", chunks=len(chunks), rows=result.rows)

    def _unpack(self, row: FileRow, plan: unpacking.Plan) -> None:
        """A zip: its members, taken out into its work dir, become files of their own in one transaction."""
        work = work_dir(self.state_dir, row.id)
        shutil.rmtree(work, ignore_errors=True)  # a crash mid-unpack: it is simply done again
        work.mkdir(parents=True)
        notes: list[str] = []
        growing = self._growing.get(row.id)
        expected = (growing.size, growing.mtime_ns) if growing else (row.size, None)
        with self._open_original(row) as source:
            before = os.fstat(source.fileno())
            if before.st_size != expected[0] or expected[1] not in (None, before.st_mtime_ns):
                raise _StillWrittenError(before.st_size, before.st_mtime_ns)
            try:
                members = self.unpacker.unpack(source, plan, work, notes=notes)
            finally:
                after = os.fstat(source.fileno())  # as in _split: still being written is no reason to reject
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    before.st_size, before.st_mtime_ns, before.st_ctime_ns
                ):
                    raise _StillWrittenError(after.st_size, after.st_mtime_ns)
        self._growing.pop(row.id, None)
        self.store.record_unpack(row.id, members, notes=notes)
        log.info("archive_unpacked", members=len(members), refused=sum(1 for m in members if m.error))

    @contextlib.contextmanager
    def _open_original(self, row: FileRow) -> Iterator[BinaryIO]:
        """The claimed original, from the private processing area, as the claim saw it (a zip's member: from
        the zip's work dir under state_dir)."""
        if row.parent_id is not None:
            try:
                fd = os.open(row.processing_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise InputError(f"{outbox.printable(row.relpath)}: taken out of its zip, then lost") from None
            with os.fdopen(fd, "rb") as member:
                yield member
            return
        area, name = row.processing_path.parent, row.processing_path.name
        expect = (row.dev, row.ino) if row.dev is not None and row.ino is not None else None
        try:
            with (
                safefs.Root.open(area.parent, pin=self.pins.get(area.parent)) as inbox_root,
                inbox_root.open_dir(area.name, private=True) as processing,
            ):
                fd = processing.open_file(name, expect=expect)
        except FileNotFoundError:
            raise InputError(
                f"{outbox.printable(row.relpath)}: the claimed file is gone; nothing was imported"
            ) from None
        except PermissionError as exc:
            raise InputError(
                f"{outbox.printable(row.relpath)}: cannot be read ({exc.strerror}); nothing was imported"
            ) from None
        except safefs.UnsafePathError as exc:
            raise InputError(f"{outbox.printable(row.relpath)}: refused ({exc}); nothing was imported") from None
        with os.fdopen(fd, "rb") as source:
            yield source
