"""Prepare: route each claimed file once, check its header, split it into chunks.

For each file in ``claimed``: pick its route (the one time a file is routed
for its import), open the claimed original in the private processing area
(no symlink followed, the inode readiness saw), and stream it through the
splitter once. The splitter hands the header to ``check_header`` *before*
any chunk is written, so a 400 MB file with a bad header costs one block;
trimmed header names are written by the splitter itself. The chunks, the
serialised import target and the notes are journalled in one transaction
(``split``); from then on the file is the dispatch stage's.

A route's ``columns``/``constants`` (``dropzone.mapping``) are applied here,
while the file is split: the header check builds the plan, a rename changes
only the header (records are still copied byte for byte), a drop or a
constant rewrites the records (``dropzone.rewriting``). What the outbox
needs to speak the partner's names again, and each drifting chunk's line
map, are written beside the chunks before the split is journalled. The
names sent pass through a ``HeaderNames`` last (``described``: the describe pre-flight, route key
``preflight``): the one place where they may still be respelled (as Marketo spells its fields) or
refused.

A file Marketo must not see is ``Rejected`` with a message naming the line;
a full or broken work area (a disk problem, not the partner's) keeps the
file claimed and tries again later.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from dropzone import defaults as D
from dropzone import fieldcheck, health, mapping, outbox, routing, safefs, splitting, unpacking
from dropzone.config import Inbox, Route
from dropzone.crashguard import CrashGuard
from dropzone.describe import Schema
from dropzone.errors import DecryptUnavailableError, InputError, StoreError, UnknownFieldError
from dropzone.gate import Gate, Preflight
from dropzone.jobs import FileState, Outcome
from dropzone.kinds import ObjectKind
from dropzone.store import FileRow, NewChunk, Store
from dropzone.unpacker import Unpacker

log = structlog.get_logger("dropzone.prepare")


def work_dir(state_dir: Path, file_id: int) -> Path:
    """Where a file's chunks and result files live until it is reported."""
    return state_dir / "work" / str(file_id)


#: The seam where the names sent can still be adjusted after mapping: ``(route, names, notes)`` →
#: the names to send, one per name given (e.g. as Marketo spells its fields), or ``InputError``.
HeaderNames = Callable[[Route, list[str], list[str]], list[str]]


def keep_names(route: Route, names: list[str], notes: list[str]) -> list[str]:
    """The default ``HeaderNames``: the mapped names as they are."""
    return names


def check_header(
    relpath: str, route: Route, fields: list[str], notes: list[str], header_names: HeaderNames = keep_names
) -> mapping.Plan:
    """Refuse headers Marketo would fail row by row; return the plan of what to send.

    Pure (unless ``header_names`` is not): ``notes`` collects what the status
    file should say about changes. The route's ``columns`` are applied
    first; the checks of names as the partner wrote them (spaces around them,
    empty ones) then apply to the columns passing through unchanged; then
    ``header_names`` may respell the names to send.
    """
    shown = outbox.printable(relpath)
    if not any(name.strip() for name in fields):
        raise InputError(f"{shown}: line 1 is empty; the first line must be the header", line=1)
    with _naming(shown):
        plan = mapping.build_plan(fields, route.columns, route.constants)
    padded = [name for _, name in plan.passthrough() if name != name.strip()]
    if padded:
        if not route.trim_header:
            listed = ", ".join(repr(n) for n in padded)
            raise InputError(
                f"{shown}: header names with spaces around them ({listed}) on line 1: Marketo would "
                "fail every row; remove the spaces (or set trim_header on the route)",
                line=1,
            )
        plan = plan.trimmed()
        notes.append("spaces around header names were removed (trim_header)")
    empty = [i + 1 for i, name in plan.passthrough() if not name.strip()]
    if empty:
        raise InputError(f"{shown}: header column {empty[0]} on line 1 has no name", line=1)
    with _naming(shown):
        plan.check_unique()
    if plan.missing:
        listed = ", ".join(repr(n) for n in plan.missing)
        notes.append(f"columns listed in the route's columns but not in this file: {listed}")
    names = header_names(route, list(plan.names), notes)
    if names != list(plan.names):
        with _naming(shown):
            plan = plan.respelled(names)
            plan.check_unique()
    if route.object is ObjectKind.PROGRAM_MEMBER and "email" not in {n.lower() for n in plan.names}:
        raise InputError(
            f"{shown}: program member files need an 'email' column (Marketo deduplicates on it); "
            f"line 1 has {', '.join(plan.names)}",
            line=1,
        )
    return plan


@contextlib.contextmanager
def _naming(shown: str) -> Iterator[None]:
    """``mapping``'s refusals, which name no file, with the file's name."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"{shown}: {exc}", line=exc.line) from None


def described(schema: Schema | None, shown: str) -> HeaderNames:
    """The pre-flight as a ``HeaderNames`` (route key ``preflight``): the names, after any mapping, against
    Marketo's describe (``gate``), sent as Marketo spells them; None checks no field names.

    Unknown columns raise ``UnknownFieldError`` (``Prepare._prepare_one`` asks Marketo once more first).
    """

    def names(route: Route, fields: list[str], notes: list[str]) -> list[str]:
        if schema is None:
            return fields
        checked = fieldcheck.check(schema, route.target(), fields, shown=shown)
        renamed = fieldcheck.renamed_note(fields, checked)
        if renamed is not None:
            notes.append(renamed)
        return checked

    return names


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
    #: Target checks and describes (``gate``); None splits every file unchecked by Marketo.
    preflight: Preflight | None = None
    #: Peels compressed, encrypted and spreadsheet drops before they are split (``unpacker``).
    unpacker: Unpacker = field(default_factory=Unpacker)
    #: Claimed files that changed after their claim, by file id: split once they stop changing.
    _growing: dict[int, _Growing] = field(default_factory=dict)
    #: Files that named an unknown column and waited for a fresh describe: rejected if they still do.
    _rechecked: set[int] = field(default_factory=set)
    #: Files the last pass skipped over for the pre-flight: the next pass starts by looking that much further.
    _skipped: int = 0
    #: Times gpg stalled on each file (``DECRYPT_STALLS_PER_FILE``).
    _stalls: dict[int, int] = field(default_factory=dict)
    #: Which file is being prepared, should the process die on it (``crashguard``); set by ``__post_init__``.
    _guard: CrashGuard = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._guard = CrashGuard(self.state_dir)

    def run_once(self, now: float) -> bool:
        """Split up to a few claimed files; True when one moved on."""
        busy = self.preflight.run_once(now) if self.preflight is not None else False
        # The oldest few, not the whole backlog: more while small ones split quickly (PREPARE_PASS_S).
        # Skipped over: files still changing after their claim, and those the pre-flight holds (a wrong
        # target) or keeps waiting, which must not starve the files behind them: the look goes on,
        # further each time, until the pass has split enough or none are left.
        window = D.PREPARES_PER_PASS + len(self._growing) + self._skipped
        started = skipped = 0
        looked: set[int] = set()
        until = time.monotonic() + D.PREPARE_PASS_S
        # Files kept for a retry (a disk, journal or gpg trouble): the next file is tried, but a few in a row
        # mean the trouble is not the file's: the rest wait for the next pass.
        retries = 0

        def enough() -> bool:
            return (retries >= D.PREPARE_RETRIES_PER_PASS or started >= D.PREPARES_MAX_PER_PASS
                    or (started > 0 and time.monotonic() >= until))

        while not enough():
            rows = self.store.files([FileState.CLAIMED], first=window)
            for row in rows:
                if enough():
                    break
                if row.id in looked:
                    continue
                looked.add(row.id)
                if not self._settled(row, now):
                    continue
                with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath):
                    gated = self._gate(row, now)
                    if gated is not None and not gated[1].go:
                        skipped += 1
                        continue  # held, or waiting for Marketo: not busy, the answer wakes the loop
                    started += 1
                    self.heartbeat()
                    moved = self._prepare_one(row, now, gated)
                    busy |= moved
                    retries += not moved
            if len(rows) < window:
                break
            window *= 2
        self._skipped = skipped
        return busy

    def _gate(self, row: FileRow, now: float) -> tuple[Route, Gate] | None:
        """The file's route and what ``Preflight`` says of it; None when there is no route (rejected by _split)."""
        inbox = self.inbox_of(row.inbox) if self.preflight is not None else None
        if self.preflight is None or inbox is None:
            return None
        try:
            plan = self.unpacker.plan(row.relpath, member=row.parent_id is not None)
        except InputError:
            return None  # refused by _split, with the reason
        if plan.archive:
            return None  # a zip: its members are checked, each by its own route
        match = unpacking.route(inbox.routes, plan)
        if isinstance(match, routing.NoMatch):
            return None
        return match.route, self.preflight.gate(match.route, now)

    def _settled(self, row: FileRow, now: float) -> bool:
        """False while a file that changed after its claim is within a new quiet period."""
        growing = self._growing.get(row.id)
        if growing is None:
            return True
        inbox = self.inbox_of(row.inbox)
        return now >= growing.since + (inbox.quiet_period if inbox else 0.0)

    def _prepare_one(self, row: FileRow, now: float, gated: tuple[Route, Gate] | None = None) -> bool:
        poison = self._guard.poison(row.id)
        if poison is not None:
            log.error("file_rejected_after_crashes", reason=poison)
            self._reject(row, f"{outbox.printable(row.relpath)}: {poison}", None)
            self._guard.end(row.id)
            return True
        self._guard.begin(row.id)
        try:
            return self._prepare_guarded(row, now, gated)
        finally:
            self._guard.end(row.id)

    def _prepare_guarded(self, row: FileRow, now: float, gated: tuple[Route, Gate] | None) -> bool:
        try:
            self._split(row, gated[1] if gated is not None else None)
        except _StillWrittenError as exc:
            # A writer that kept its handle open (one we could not see) is still writing into the
            # claimed file: what was split is thrown away; it is split again once it stops changing.
            shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)
            if row.id not in self._growing:
                log.warning("file_changed_after_claim_waiting", bytes=exc.size)
            self._growing[row.id] = _Growing(exc.size, exc.mtime_ns, since=now)
            return False
        except UnknownFieldError as exc:
            if (row.id not in self._rechecked and gated is not None and self.preflight is not None
                    and self.preflight.recheck(gated[0], now)):
                # The describe is a few minutes old: an admin may just have added the field. Asked once more first.
                self._rechecked.add(row.id)
                shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)
                return False
            log.info("file_rejected", reason=str(exc), line=exc.line)
            self._reject(row, str(exc), exc.line)
        except InputError as exc:
            log.info("file_rejected", reason=str(exc), line=exc.line)
            self._reject(row, str(exc), exc.line)
        except DecryptUnavailableError as exc:
            stalls = self._stalls[row.id] = self._stalls.get(row.id, 0) + exc.stalled
            if stalls >= D.DECRYPT_STALLS_PER_FILE:
                self._stalls.pop(row.id, None)
                message = (f"{outbox.printable(row.relpath)}: gpg made no progress on this file {stalls} times "
                           "(its agent restarted in between): it cannot be decrypted here")
                log.info("file_rejected", reason=message)
                self._reject(row, message, None)
                return True
            log.error("prepare_failed_will_retry", error=str(exc))
            return False
        except (OSError, StoreError, sqlite3.Error) as exc:
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
        self._rechecked.discard(row.id)
        shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)
        self.store.settle(row.id, Outcome.REJECTED, error=message, line=line)

    def _split(self, row: FileRow, gate: Gate | None = None) -> None:
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

        def save_line_map(index: int, lines: mapping.LineMap) -> None:
            outbox.atomic_write(mapping.line_map_path(work / f"{stem}.part{index:04d}"), lines.encode())

        notes: list[str] = [gate.note] if gate is not None and gate.note else []
        header_names = described(gate.schema if gate is not None else None, outbox.printable(row.relpath))
        plans: list[mapping.Plan] = []

        def header_check(fields: list[str]) -> list[str] | mapping.Plan:
            plan = check_header(row.relpath, match.route, fields, notes, header_names)
            plans.append(plan)
            # A rename alone: only the header changes, the records are copied as they are.
            return plan if plan.rewrites_records else list(plan.names)

        with self._unchanged_original(row) as source, contextlib.ExitStack() as decoded:
            # What the original's layers hold (``unpacker``), or the original itself.
            data = decoded.enter_context(self.unpacker.plaintext(source, plan, work, notes=notes,
                                                                 sheet=match.route.sheet))
            result = splitting.split(
                data,
                open_chunk,
                fmt=match.format,
                max_bytes=self.split_max_bytes,
                encoding=match.route.encoding,
                header_check=header_check,
                line_map=save_line_map,
            )
        reverse = plans[0].reverse() if plans else None
        if reverse:
            # With the chunks, not the configuration: a reload before the report must not change it.
            outbox.atomic_write(work / mapping.REVERSE_MAP_NAME, reverse.encode())
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
        self._rechecked.discard(row.id)
        self.metrics.file_split(len(chunks))
        log.info("file_split", chunks=len(chunks), rows=result.rows)

    def _unpack(self, row: FileRow, plan: unpacking.Plan) -> None:
        """A zip: its members, taken out into its work dir, become files of their own in one transaction."""
        work = work_dir(self.state_dir, row.id)
        shutil.rmtree(work, ignore_errors=True)  # a crash mid-unpack: it is simply done again
        work.mkdir(parents=True)
        notes: list[str] = []
        with self._unchanged_original(row) as source:
            members = self.unpacker.unpack(source, plan, work, notes=notes)
        self._growing.pop(row.id, None)
        self.store.record_unpack(row.id, members, notes=notes)
        log.info("archive_unpacked", members=len(members), refused=sum(1 for m in members if m.error))

    @contextlib.contextmanager
    def _unchanged_original(self, row: FileRow) -> Iterator[BinaryIO]:
        """The claimed original, as long as it is what the claim (or the last change seen) saw; raises
        ``_StillWrittenError`` if it differs on opening, or changed while it was read."""
        growing = self._growing.get(row.id)
        expected = (growing.size, growing.mtime_ns) if growing else (row.size, None)
        with self._open_original(row) as source:
            before = os.fstat(source.fileno())
            if before.st_size != expected[0] or expected[1] not in (None, before.st_mtime_ns):
                raise _StillWrittenError(before.st_size, before.st_mtime_ns)
            try:
                yield source
            finally:
                # Also when reading refused it: a half-written last record is no reason to reject.
                after = os.fstat(source.fileno())
                # ctime too: a writer can put the mtime back (utime, sftp's fsetstat), never the ctime.
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    before.st_size, before.st_mtime_ns, before.st_ctime_ns
                ):
                    raise _StillWrittenError(after.st_size, after.st_mtime_ns)

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
