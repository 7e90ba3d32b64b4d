"""The composition root: wires watching, readiness, routing, splitting, the
journal, the Marketo client and the outbox into one loop.

One thread owns the journal and every HTTP call; watchdog threads only put
hints on a queue. Each pass of the loop (``run_once``) takes what is due:
intake (scan, readiness, claim), preparation (route, pre-checks, split),
submission (within Marketo's queue), polling, fetching result files, and
finishing (outbox, archive). Every state is saved in the journal before the
action it enables, so a SIGKILL at any point loses nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from dropzone import __version__, health, jobs, notify, outbox, readiness, routing, splitting, throttle, watching
from dropzone.config import Config, FileFormat, Inbox, MarketoSettings, ObjectKind, check_paths
from dropzone.errors import (
    AuthError,
    ConfigError,
    DropzoneError,
    InputError,
    ListBusyError,
    MarketoError,
    OutcomeUnknownError,
    QueueFullError,
    QuotaExceededError,
    RejectedError,
)
from dropzone.jobs import ChunkState, FileState, Outcome
from dropzone.marketo import ClientSettings, ImportTarget, MarketoClient
from dropzone.marketo import ObjectKind as MarketoKind
from dropzone.store import ChunkRow, FileRow, NewChunk, Store

log = structlog.get_logger("dropzone.daemon")

#: Longest the loop sleeps when nothing is due; hints from watchdog wake it earlier.
MAX_IDLE_S = 1.0
#: Pauses after Marketo said "not now".
QUEUE_FULL_PAUSE_S = 15.0
LIST_BUSY_PAUSE_S = 10.0
TRANSIENT_PAUSE_S = 30.0
AUTH_PAUSE_S = 60.0

RESUBMIT_NOTE = (
    "chunk {index} was submitted again: the reply to its first submission was lost "
    "({why}), and Marketo offers no way to look the batch up; its rows may have been "
    "imported twice, which updates the same records again (imports are upserts)"
)


class Interrupted(Exception):
    """Shutdown was asked for while waiting: unwinds the current step so the loop can exit."""


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _InboxState:
    inbox: Inbox
    tracker: readiness.Tracker
    watcher: watching.Watcher
    next_scan: float = 0.0
    refused: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class _Poll:
    batch_id: int
    due: float
    last_polled: float
    polls: int = 0


class Daemon:
    """dropzone's main loop.

    Args:
        config: the parsed configuration.
        client: a Marketo client (tests inject one); made from the config otherwise.
        stop: set it to stop the loop (signal handlers do).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        config: Config,
        *,
        client: MarketoClient | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_config: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        #: Set by SIGHUP; the loop reloads the configuration with ``reload_config``.
        self.reload_requested = threading.Event()
        self._reload_config = reload_config
        self.clock = clock
        self.hints: queue.Queue[tuple[Path, str]] = queue.Queue()
        self.metrics = health.Metrics(clock=clock)
        self.watchdog = notify.Watchdog.from_env()
        self.store = Store(config.state_dir)
        self.client = client or self._make_client(config.marketo)
        self.inboxes: dict[Path, _InboxState] = {}
        #: Inboxes removed by a reload: their files in flight still finish and report there.
        self._retired: dict[Path, Inbox] = {}
        for inbox in config.inboxes:
            self.inboxes[inbox.path] = self._inbox_state(inbox)
        self._polls: dict[int, _Poll] = {}
        self._paused_until = 0.0  # every submit
        self._queue_full_streak = 0
        self._list_paused: dict[int, float] = {}
        self._api_paused_until = 0.0  # every call (daily quota)
        self._last_inbox: str | None = None
        self.last_tick = clock()

    # ---- lifecycle --------------------------------------------------------

    def _make_client(self, m: MarketoSettings) -> MarketoClient:
        return MarketoClient(
            ClientSettings(
                endpoint=m.endpoint,
                identity=m.identity,
                client_id=m.client_id,
                client_secret=m.client_secret,
                calls_per_window=m.calls_per_20s,
                max_concurrent_calls=m.max_concurrent_calls,
                connect_timeout=m.connect_timeout,
                read_timeout=m.read_timeout,
                max_retry_seconds=m.max_retry_seconds,
            ),
            sleep=self._sleep,
            on_call=self.metrics.on_call,
        )

    def _inbox_state(self, inbox: Inbox) -> _InboxState:
        return _InboxState(
            inbox=inbox,
            tracker=readiness.Tracker(quiet_period=inbox.quiet_period, marker_suffixes=inbox.marker_suffixes),
            watcher=watching.Watcher(inbox.path, self.hints, polling=watching.use_polling(inbox.watch.value, inbox.path)),
        )

    def _heartbeat(self) -> None:
        """The loop is alive: for /livez and systemd's watchdog (waits between retries count too)."""
        self.last_tick = self.clock()
        self.metrics.tick()
        self.watchdog.maybe_ping(self.last_tick)

    def _sleep(self, seconds: float) -> None:
        end = self.clock() + seconds
        while True:
            self._heartbeat()
            left = end - self.clock()
            if left <= 0:
                return
            if self.stop.wait(min(left, 5.0)):
                raise Interrupted

    def close(self) -> None:
        for state in self.inboxes.values():
            state.watcher.stop()
        self.client.close()
        self.store.close()

    def start(self) -> None:
        """Recover from the journal, start the watchers, scan every inbox once."""
        self.recover()
        for state in self.inboxes.values():
            state.inbox.path.mkdir(parents=True, exist_ok=True)
            state.watcher.start()
        now = self.clock()
        for state in self.inboxes.values():
            self._scan(state, now)
        self._update_readiness()
        self.metrics.set_ready_inputs(config_loaded=True)
        log.info("daemon_started", inboxes=len(self.inboxes), version=__version__)
        notify.ready()
        notify.status(f"watching {len(self.inboxes)} inbox(es)")

    def _update_readiness(self) -> None:
        self.metrics.set_ready_inputs(
            state_writable=health.probe_writable(self.config.state_dir),
            watchers_alive=all(s.watcher.is_alive() for s in self.inboxes.values()),
        )

    def run(self) -> None:
        """Run until ``stop`` is set."""
        self.start()
        try:
            failures = 0
            while not self.stop.is_set():
                if self.reload_requested.is_set():
                    self.reload()
                try:
                    busy = self.run_once()
                    failures = 0
                except Interrupted:
                    break
                except Exception:  # noqa: BLE001 - the loop outlives any one error; the journal is the truth
                    failures += 1
                    log.exception("loop_error", consecutive=failures)
                    if self.stop.wait(min(60.0, 2.0**failures)):
                        break
                    continue
                if not busy:
                    self._idle()
        finally:
            notify.stopping()
            log.info("daemon_stopping")
            self.close()

    def run_until_idle(self, timeout: float = 60.0) -> None:
        """Tests: run passes until nothing is in flight or waiting, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        for state in self.inboxes.values():
            state.next_scan = 0.0  # burst mode starts from what is on disk now
        while time.monotonic() < deadline:
            busy = self.run_once()
            if not busy and self.is_idle():
                return
            if not busy:
                self._idle()
        raise TimeoutError(f"dropzone was still busy after {timeout} s")

    def is_idle(self) -> bool:
        in_flight = self.store.files([FileState.CLAIMING, FileState.CLAIMED, FileState.SPLIT, FileState.FINISHING])
        now = self.clock()
        waiting = any(s.tracker.waiting(now)[0] for s in self.inboxes.values())
        return not in_flight and not waiting

    def _idle(self) -> None:
        self._heartbeat()
        wait = MAX_IDLE_S
        next_poll = jobs.next_poll_at(jobs.PollPlan(c, p.batch_id, p.due, p.last_polled) for c, p in self._polls.items())
        if next_poll is not None:
            wait = min(wait, max(0.0, next_poll - self.clock()))
        try:
            hint = self.hints.get(timeout=max(wait, 0.01))
        except queue.Empty:
            return
        self.hints.put(hint)

    # ---- one pass ---------------------------------------------------------

    def run_once(self) -> bool:
        """One pass over everything that is due; True when something was done."""
        self._heartbeat()
        busy = self._intake()
        busy |= self._prepare()
        busy |= self._submit()
        busy |= self._poll()
        busy |= self._fetch()
        busy |= self._finish()
        self._update_gauges()
        return busy

    def _update_gauges(self) -> None:
        counts = [s.tracker.waiting(self.clock()) for s in self.inboxes.values()]
        self.metrics.set_waiting(
            sum(n for n, _ in counts), min((t for _, t in counts if t is not None), default=None)
        )
        self.metrics.set_batches(
            open=len(self._polls), queued=len(self.store.chunks([ChunkState.PENDING, ChunkState.SUBMITTING]))
        )

    def reload(self) -> None:
        """Swap in a new configuration (SIGHUP); on any error keep the old one.

        Files in flight keep the route they were split with (it is in the
        journal); inboxes removed from the configuration still get their
        results. ``state_dir`` cannot change without a restart.
        """
        self.reload_requested.clear()
        notify.reloading()
        try:
            if self._reload_config is None:
                raise ConfigError("this daemon was started without a configuration file to reload")
            new = self._reload_config()
            if new.state_dir != self.config.state_dir:
                raise ConfigError(f"{new.source}: state_dir: cannot change on reload; restart dropzone to move it")
            problems = check_paths(new)
            if problems:
                raise ConfigError("; ".join(problems))
        except DropzoneError as exc:
            log.error("reload_refused_keeping_old_config", error=str(exc))
            notify.ready()
            return
        old_paths, new_paths = set(self.inboxes), {i.path for i in new.inboxes}
        changes: list[str] = []
        for path in old_paths - new_paths:
            state = self.inboxes.pop(path)
            state.watcher.stop()
            self._retired[path] = state.inbox
            changes.append(f"inbox removed: {path}")
        now = self.clock()
        for inbox in new.inboxes:
            current = self.inboxes.get(inbox.path)
            if current is None:
                current = self.inboxes[inbox.path] = self._inbox_state(inbox)
                current.watcher.start()
                changes.append(f"inbox added: {inbox.path}")
            elif current.inbox != inbox:
                current.inbox = inbox
                current.tracker.quiet_period = inbox.quiet_period
                changes.append(f"inbox changed: {inbox.path}")
            current.next_scan = now
            self._retired.pop(inbox.path, None)
        if new.marketo != self.config.marketo:
            self.client.close()
            self.client = self._make_client(new.marketo)
            changes.append("marketo settings changed")
        for name in ("split_max_bytes", "http", "log"):
            if getattr(new, name) != getattr(self.config, name):
                changes.append(f"{name} changed" + (" (applies after a restart)" if name in ("http", "log") else ""))
        self.config = new
        log.info("config_reloaded", changes=changes or ["nothing"])
        notify.ready()

    def recover(self) -> None:
        """Put what a crash interrupted back on its way (see ``jobs.recovery_action``)."""
        for row in self.store.files([FileState.CLAIMING]):
            if row.processing_path.exists():
                self.store.set_file(row.id, FileState.CLAIMED)
            else:
                # The rename never happened: the file is still in the inbox
                # (and will be found again) or is gone.
                self.store.forget_claim(row.id)
        now = self.clock()
        for chunk in self.store.chunks([ChunkState.SUBMITTING, ChunkState.SUBMITTED]):
            match jobs.recovery_action(chunk.state):
                case jobs.RecoveryAction.RESUBMIT:
                    self.store.set_chunk(chunk.id, ChunkState.PENDING, resubmits=chunk.resubmits + 1)
                    why = "dropzone stopped between the upload and its answer"
                    self.store.add_note(chunk.file_id, RESUBMIT_NOTE.format(index=chunk.index, why=why))
                    log.warning("chunk_resubmitting_after_crash", file_id=chunk.file_id, chunk=chunk.index)
                case jobs.RecoveryAction.POLL:
                    self._polls[chunk.id] = _Poll(batch_id=int(chunk.batch_id or 0), due=now, last_polled=now)
        # Chunks in FETCHING are picked up by _fetch as they are.

    # ---- intake -----------------------------------------------------------

    def _intake(self) -> bool:
        now = self.clock()
        touched: dict[Path, set[str]] = {}
        while True:
            try:
                inbox_path, rel = self.hints.get_nowait()
            except queue.Empty:
                break
            touched.setdefault(inbox_path, set()).add(rel)
        busy = False
        for state in self.inboxes.values():
            if state.watcher.ensure_alive():
                state.next_scan = 0.0
            if now >= state.next_scan:
                self._scan(state, now)
            # Every candidate is looked at again, not only those events named:
            # readiness needs a second look after the quiet period, and events may never come.
            for rel in touched.get(state.inbox.path, set()) | set(state.tracker):
                self._look(state, rel, now)
            for rel in state.tracker:
                busy |= self._maybe_claim(state, rel, now)
            for stale in state.tracker.take_stale(now, after=state.inbox.stale_partial_after):
                log.warning("upload_abandoned", inbox=str(state.inbox.path), file=stale.path, reason=stale.message)
                self._report_stale(state.inbox, stale)
        return busy

    def _report_stale(self, inbox: Inbox, stale: readiness.StaleUpload) -> None:
        """Tell the partner about an upload that looks abandoned; the file itself is left where it is."""
        doc = {
            "schemaVersion": outbox.SCHEMA_VERSION,
            "file": stale.path,
            "status": "Abandoned",
            "kind": str(stale.kind),
            "message": stale.message,
            "unchangedForSeconds": round(stale.unchanged_for),
            "detectedAt": _utc_now(),
            "dropzoneVersion": __version__,
        }
        try:
            outbox.atomic_write(inbox.outbox / f"{stale.path}.abandoned.json", outbox.json_bytes(doc))
        except OSError as exc:
            log.error("outbox_write_failed", file=stale.path, error=str(exc))

    def _scan(self, state: _InboxState, now: float) -> None:
        state.next_scan = now + state.inbox.scan_interval
        self._update_readiness()
        for entry in watching.scan(state.inbox.path):
            if entry.relpath not in state.tracker:
                self._look(state, entry.relpath, now)

    def _look(self, state: _InboxState, rel: str, now: float) -> None:
        if any(part.startswith(".") for part in rel.split("/")[:-1]) or rel == ".":
            return  # hidden folders: our processing area, upload tools' temporary folders
        path = state.inbox.path / rel
        try:
            st = os.lstat(path)
        except OSError:
            state.tracker.forget(rel)
            return
        if not os.path.isfile(path) or os.path.islink(path):
            if os.path.isdir(path) and not os.path.islink(path):
                return
            key = (rel, st.st_ino)
            if key not in state.refused:
                state.refused.add(key)
                log.warning("not_a_regular_file_skipped", inbox=str(state.inbox.path), file=rel)
            return
        match = routing.route(state.inbox.routes, rel) if not readiness.is_ignored_path(rel) else None
        marker = match.marker_relpath if isinstance(match, routing.RouteMatch) else None
        state.tracker.observe(
            rel,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            now=now,
            marker_present=(state.inbox.path / marker).exists() if marker else None,
        )

    def _maybe_claim(self, state: _InboxState, rel: str, now: float) -> bool:
        match = routing.route(state.inbox.routes, rel) if not readiness.is_ignored_path(rel) else None
        marker = match.route.marker if isinstance(match, routing.RouteMatch) else None
        verdict = state.tracker.is_ready(rel, now, marker=marker)
        if not verdict.is_ready:
            return False
        path = state.inbox.path / rel
        if watching.is_open_for_writing(path):
            state.tracker.observe(rel, size=-1, mtime_ns=0, inode=0, now=now)  # restart the quiet period
            log.info("file_still_open", inbox=str(state.inbox.path), file=rel)
            return False
        expected = state.tracker.stat_of(rel)
        state.tracker.forget(rel)
        self._claim(state, rel, expected)
        return True

    def _claim(self, state: _InboxState, rel: str, expected: readiness.FileStat | None) -> None:
        inbox = state.inbox
        source = inbox.path / rel
        try:
            st = os.lstat(source)
        except OSError:
            return
        now_stat = readiness.FileStat(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
        if not stat.S_ISREG(st.st_mode):
            log.warning("not_a_regular_file_skipped", inbox=str(inbox.path), file=rel)
            return
        if now_stat != expected:
            # Replaced by a new upload since readiness looked: the next look
            # starts a new quiet period for what is there now.
            log.info("file_changed_before_claim", inbox=str(inbox.path), file=rel)
            return
        # Flat, unique, short names: no folders to create (each would be one more
        # inotify watch) and no partner name that could exceed NAME_MAX with a prefix.
        target = inbox.processing_dir / uuid.uuid4().hex
        file_id = self.store.begin_claim(
            inbox=inbox.path, relpath=rel, processing_path=target, size=st.st_size, received_at=_utc_now()
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, target)
        except OSError as exc:
            self.store.forget_claim(file_id)
            log.warning("claim_failed", inbox=str(inbox.path), file=rel, error=exc.strerror)
            return
        self.store.set_file(file_id, FileState.CLAIMED)
        log.info("file_claimed", inbox=str(inbox.path), file=rel, file_id=file_id, bytes=st.st_size)

    # ---- prepare: route, pre-checks, split ---------------------------------

    def _prepare(self) -> bool:
        busy = False
        for row in self.store.files([FileState.CLAIMED]):
            busy = True
            bound = structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath)
            with bound:
                try:
                    self._split(row)
                except InputError as exc:
                    log.info("file_rejected", reason=str(exc), line=exc.line)
                    self._reject(row, str(exc), exc.line)
                except OSError as exc:
                    # The work area (state_dir) is full or unwritable: keep the
                    # file claimed and try again later; never reject good data for it.
                    log.error("split_failed_will_retry", error=str(exc))
                    busy = False
                except Exception as exc:  # noqa: BLE001 - one file must never stop the daemon
                    # A bug, not the partner's fault; rejecting beats crash-looping on the same file.
                    log.exception("file_failed_internal_error")
                    self._reject(row, f"{row.relpath}: dropzone could not process this file ({type(exc).__name__}); "
                                      "the original is kept, please report this", None)
        return busy

    def _reject(self, row: FileRow, message: str, line: int | None) -> None:
        shutil.rmtree(self._work_dir(row.id), ignore_errors=True)
        self.store.set_file(row.id, FileState.FINISHING, outcome=Outcome.REJECTED, error=message, error_line=line)

    def _inbox(self, row: FileRow) -> Inbox | None:
        state = self.inboxes.get(row.inbox)
        return state.inbox if state else self._retired.get(row.inbox)

    def _work_dir(self, file_id: int) -> Path:
        return self.config.state_dir / "work" / str(file_id)

    def _split(self, row: FileRow) -> None:
        inbox = self._inbox(row)
        if inbox is None:
            raise InputError(f"{row.relpath}: its inbox is no longer configured")
        match = routing.route(inbox.routes, row.relpath)
        if isinstance(match, routing.NoMatch):
            raise match.error()
        route = match.route
        fmt = match.format
        work = self._work_dir(row.id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # Chunk files get plain ASCII names: the partner's name may not be UTF-8,
        # and Marketo sees the chunk's name as the upload's file name.
        stem = f"chunk.{fmt.value}"

        @contextlib.contextmanager
        def open_chunk(index: int) -> Iterator[BinaryIO]:
            with open(work / f"{stem}.part{index:04d}", "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())

        try:
            # O_NONBLOCK: a FIFO swapped in at the last moment must not hang the daemon.
            fd = os.open(row.processing_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise InputError(f"{row.relpath}: cannot be read ({exc.strerror}); nothing was imported") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{row.relpath}: not a regular file; nothing was imported")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as source:
            result = splitting.split(
                source, open_chunk, fmt=fmt.value, max_bytes=self.config.split_max_bytes, encoding=route.encoding
            )
        notes = self._check_header(row, route, fmt, result, work, stem)
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
        route_doc = {"object": route.object.value, **match.marketo_params()}
        self.store.add_chunks(
            row.id,
            chunks,
            route=route_doc,
            fmt=fmt.value,
            rows=result.rows,
            notes=[*row.notes, *notes],
        )
        self.metrics.file_split(len(chunks))
        log.info("file_split", chunks=len(chunks), rows=result.rows)

    def _check_header(
        self, row: FileRow, route: Any, fmt: FileFormat, result: splitting.SplitResult, work: Path, stem: str
    ) -> list[str]:
        """Refuse headers Marketo would fail row by row; return notes for the status file."""
        notes: list[str] = []
        if result.bom_stripped:
            notes.append("a UTF-8 byte order mark was removed from the header")
        fields = result.header_fields
        if not any(name.strip() for name in fields):
            raise InputError(f"{outbox.printable(row.relpath)}: line 1 is empty; the first line must be the header", line=1)
        padded = [name for name in fields if name != name.strip()]
        if padded:
            if not route.trim_header:
                listed = ", ".join(repr(n) for n in padded)
                raise InputError(
                    f"{row.relpath}: header names with spaces around them ({listed}) on line 1: Marketo would "
                    "fail every row; remove the spaces (or set trim_header on the route)",
                    line=1,
                )
            self._trim_headers(work, stem, len(result.chunks), fmt)
            fields = [name.strip() for name in fields]
            notes.append("spaces around header names were removed (trim_header)")
        empty = [i + 1 for i, name in enumerate(fields) if not name]
        if empty:
            raise InputError(f"{row.relpath}: header column {empty[0]} on line 1 has no name", line=1)
        seen: set[str] = set()
        for name in fields:
            if name in seen:
                raise InputError(f"{row.relpath}: header column {name!r} appears twice on line 1", line=1)
            seen.add(name)
        if route.object is ObjectKind.PROGRAM_MEMBER and "email" not in fields:
            raise InputError(
                f"{row.relpath}: program member files need an 'email' column (Marketo deduplicates on it); "
                f"line 1 has {', '.join(fields)}",
                line=1,
            )
        return notes

    @staticmethod
    def _trim_headers(work: Path, stem: str, count: int, fmt: FileFormat) -> None:
        import csv
        import io

        for index in range(count):
            path = work / f"{stem}.part{index:04d}"
            data = path.read_bytes()
            cut = data.index(b"\n") + 1
            line = data[:cut].decode("utf-8")
            ending = "\r\n" if line.endswith("\r\n") else "\n"
            names = next(csv.reader(io.StringIO(line), delimiter=fmt.delimiter))
            buffer = io.StringIO()
            csv.writer(buffer, delimiter=fmt.delimiter, lineterminator=ending).writerow([n.strip() for n in names])
            outbox.atomic_write(path, buffer.getvalue().encode("utf-8") + data[cut:])

    # ---- submit -----------------------------------------------------------

    def _target(self, row: FileRow) -> ImportTarget:
        route = row.route or {}
        return ImportTarget(
            kind=MarketoKind(route["object"]),
            lookup_field=route.get("lookupField"),
            list_id=route.get("listId"),
            partition_name=route.get("partitionName"),
            api_name=route.get("apiName"),
            program_id=str(route["programId"]) if route.get("programId") is not None else None,
            program_member_status=route.get("programMemberStatus"),
        )

    def _submit(self) -> bool:
        now = self.clock()
        if now < max(self._paused_until, self._api_paused_until):
            return False
        open_chunks = self.store.chunks(jobs.CHUNK_OPEN)
        pending = self.store.chunks([ChunkState.PENDING])
        if not pending:
            return False
        files = {row.id: row for row in self.store.files([FileState.SPLIT])}
        busy_lists = {(files[c.file_id].route or {}).get("listId") for c in open_chunks if c.file_id in files}
        busy_lists |= {lid for lid, until in self._list_paused.items() if until > now}
        candidates = [
            jobs.Candidate(
                chunk_id=c.id,
                inbox=str(files[c.file_id].inbox),
                file_id=c.file_id,
                index=c.index,
                list_id=(files[c.file_id].route or {}).get("listId"),
            )
            for c in pending
            if c.file_id in files
        ]
        busy = False
        n_open = len(open_chunks)
        while candidates:
            slots = jobs.Slots(
                open=n_open,
                max_open=self.config.marketo.max_open_imports,
                busy_lists=frozenset(x for x in busy_lists if x is not None),
                last_inbox=self._last_inbox,
            )
            pick = jobs.pick_next(candidates, slots)
            if pick is None:
                break
            candidates.remove(pick)
            self._last_inbox = pick.inbox
            busy = True
            if not self._submit_one(self.store.chunk(pick.chunk_id), files[pick.file_id]):
                break
            n_open += 1
            if pick.list_id is not None:
                busy_lists.add(pick.list_id)
        return busy

    def _submit_one(self, chunk: ChunkRow, row: FileRow) -> bool:
        """Submit one chunk; False when Marketo said to stop submitting for now."""
        # Bound for every event of this step, the client's retries included.
        with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath, chunk=chunk.index):
            return self._submit_chunk(chunk, row)

    def _submit_chunk(self, chunk: ChunkRow, row: FileRow) -> bool:
        attempts = 0

        def record_intent() -> None:
            # Saved right before the bytes go out (not before waiting for a token or
            # the rate window): only a crash from here on is the ambiguous window.
            nonlocal attempts
            attempts += 1
            self.store.set_chunk(chunk.id, ChunkState.SUBMITTING, submits=chunk.submits + attempts)

        def clear_intent() -> None:
            self.store.set_chunk(chunk.id, ChunkState.PENDING)

        try:
            batch = self.client.submit(
                self._target(row), chunk.path, fmt=row.fmt or "csv", before_send=record_intent, not_executed=clear_intent
            )
        except Interrupted:
            # We were waiting between attempts: nothing is in flight.
            self.store.set_chunk(chunk.id, ChunkState.PENDING)
            raise
        except OutcomeUnknownError as exc:
            self.store.set_chunk(chunk.id, ChunkState.PENDING, resubmits=chunk.resubmits + 1)
            self.store.add_note(row.id, RESUBMIT_NOTE.format(index=chunk.index, why=str(exc)))
            log.warning("submit_outcome_unknown", error=str(exc))
            return True
        except RejectedError as exc:
            if exc.endpoint == "identity":
                # Identity, not the import, refused: the configuration is wrong, not this chunk.
                self.store.set_chunk(chunk.id, ChunkState.PENDING)
                self._pause_after(AuthError(str(exc), code=exc.code, endpoint=exc.endpoint), row)
                return False
            self.store.set_chunk(chunk.id, ChunkState.ERROR, error=str(exc))
            log.warning("submit_rejected", code=exc.code, error=str(exc))
            return True
        except OSError as exc:
            # The chunk file could not be read (state_dir damaged?): nothing was sent.
            self.store.set_chunk(chunk.id, ChunkState.ERROR, error=f"chunk {chunk.index} could not be read: {exc}")
            log.error("chunk_unreadable", error=str(exc))
            return True
        except MarketoError as exc:
            self.store.set_chunk(chunk.id, ChunkState.PENDING)
            self._pause_after(exc, row)
            return False
        self._queue_full_streak = 0
        self.store.set_chunk(
            chunk.id,
            ChunkState.SUBMITTED,
            batch_id=batch.batch_id,
            marketo_status=batch.status,
            submitted_at=_utc_now(),
        )
        now = self.clock()
        self._polls[chunk.id] = _Poll(
            batch_id=batch.batch_id, due=now + jobs.poll_delay(0, self.config.marketo.poll_interval), last_polled=now
        )
        log.info("import_submitted", batchId=batch.batch_id, rows=chunk.rows, bytes=chunk.size)
        return True

    def _pause_after(self, exc: MarketoError, row: FileRow | None = None) -> None:
        now = self.clock()
        if isinstance(exc, QueueFullError):
            # Other integrations fill Marketo's queue: back off, growing.
            self._queue_full_streak += 1
            delay = min(QUEUE_FULL_PAUSE_S * self._queue_full_streak, 120.0) + throttle.backoff(0, cap=5.0)
            self._paused_until = now + delay
        elif isinstance(exc, ListBusyError) and row is not None and row.route and row.route.get("listId") is not None:
            self._list_paused[row.route["listId"]] = now + LIST_BUSY_PAUSE_S
            delay = LIST_BUSY_PAUSE_S
        elif isinstance(exc, QuotaExceededError):
            delay = max(60.0, (exc.resume_at - dt.datetime.now(dt.timezone.utc)).total_seconds())
            self._api_paused_until = now + delay
        elif isinstance(exc, AuthError):
            delay = AUTH_PAUSE_S
            self._api_paused_until = now + delay
        else:
            delay = TRANSIENT_PAUSE_S
            self._paused_until = now + delay
        log.warning("marketo_pause", code=exc.code, error=str(exc), seconds=round(delay, 1))

    # ---- poll and fetch ---------------------------------------------------

    def _poll(self) -> bool:
        now = self.clock()
        if now < self._api_paused_until:
            return False
        busy = False
        plans = [jobs.PollPlan(cid, p.batch_id, p.due, p.last_polled) for cid, p in self._polls.items()]
        for chunk_id in jobs.polls_due(plans, now):
            self._polls[chunk_id].last_polled = now
            chunk = self.store.chunk(chunk_id)
            if chunk.state is not ChunkState.SUBMITTED:
                self._polls.pop(chunk_id, None)
                continue
            row = self.store.file(chunk.file_id)
            busy = True
            with structlog.contextvars.bound_contextvars(
                inbox=str(row.inbox), file=row.relpath, chunk=chunk.index, batchId=chunk.batch_id
            ):
                self._poll_one(chunk, row)
        return busy

    def _poll_one(self, chunk: ChunkRow, row: FileRow) -> None:
        poll = self._polls[chunk.id]
        try:
            status = self.client.status(self._target(row), int(chunk.batch_id or 0))
        except RejectedError as exc:
            self._polls.pop(chunk.id, None)
            self.store.set_chunk(chunk.id, ChunkState.ERROR, error=str(exc))
            log.warning("poll_rejected", code=exc.code, error=str(exc))
            return
        except MarketoError as exc:
            poll.due = self.clock() + self.config.marketo.poll_interval
            if isinstance(exc, (QuotaExceededError, AuthError)):
                self._pause_after(exc)
            return
        poll.polls += 1
        self.metrics.poll_succeeded()
        counts: dict[str, Any] = dict(processed=status.processed, failed=status.failed, warned=status.warned)
        if not status.is_finished:
            poll.due = self.clock() + jobs.poll_delay(poll.polls, self.config.marketo.poll_interval)
            self.store.set_chunk(chunk.id, marketo_status=status.status, **counts)
            return
        self._polls.pop(chunk.id, None)
        self.store.set_chunk(chunk.id, ChunkState.FETCHING, marketo_status=status.status, message=status.message, **counts)
        log.info("import_finished", status=status.status, **counts)

    def _fetch(self) -> bool:
        if self.clock() < self._api_paused_until:
            return False
        busy = False
        for chunk in self.store.chunks([ChunkState.FETCHING]):
            busy = True
            row = self.store.file(chunk.file_id)
            target = self._target(row)
            fields: dict[str, Any] = {}
            try:
                for kind, count, fetch in (
                    ("failures", chunk.failed, self.client.failures),
                    ("warnings", chunk.warned, self.client.warnings),
                ):
                    if count <= 0:
                        continue
                    body = fetch(target, int(chunk.batch_id or 0))
                    if body:
                        path = chunk.path.with_name(f"{chunk.path.name}.{kind}")
                        outbox.atomic_write(path, body)
                        fields[f"{kind}_path"] = path
            except RejectedError as exc:
                log.warning("result_file_unavailable", file=row.relpath, chunk=chunk.index, error=str(exc))
            except MarketoError as exc:
                log.info("result_file_retry_later", file=row.relpath, chunk=chunk.index, error=str(exc))
                continue
            self.store.set_chunk(chunk.id, ChunkState.DONE, **fields)
        return busy

    # ---- finish -----------------------------------------------------------

    def _finish(self) -> bool:
        busy = False
        for row in self.store.files([FileState.SPLIT]):
            chunks = self.store.chunks_of(row.id)
            if not all(c.state in jobs.CHUNK_FINAL for c in chunks):
                continue
            outcome = jobs.file_outcome(
                jobs.ChunkResult(c.state, c.marketo_status, c.rows, c.processed, c.failed, c.warned) for c in chunks
            )
            errors = [c.error for c in chunks if c.error]
            failed_batches = [c for c in chunks if c.marketo_status == "Failed"]
            error = None
            if errors:
                error = errors[0]
            elif failed_batches:
                error = f"Marketo failed batch {failed_batches[0].batch_id}: {failed_batches[0].message}"
            self.store.set_file(row.id, FileState.FINISHING, outcome=outcome, error=error)
            busy = True
        for row in self.store.files([FileState.FINISHING]):
            busy = True
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath):
                try:
                    self._write_results(row)
                except OSError as exc:
                    # An unwritable outbox: keep everything, try again later.
                    log.error("outbox_write_failed", error=str(exc))
                    busy = False
        return busy

    def _write_results(self, row: FileRow) -> None:
        inbox = self._inbox(row)
        out_dir = inbox.outbox if inbox else self.config.state_dir / "orphaned-results"
        ext = row.fmt or (Path(row.relpath).suffix.lstrip(".") or "csv")
        if ext not in outbox.DELIMITERS:
            ext = "csv"
        if row.outbox_files is None:
            stamp = row.received_at.replace("-", "").replace(":", "")
            stem = outbox.choose_stem(out_dir, row.relpath, ext, stamp)
            names = list(outbox.result_names(stem, ext))
            self.store.set_file(row.id, outbox_files=names)
            row = self.store.file(row.id)
        status_name, failures_name, warnings_name = row.outbox_files or []
        chunks = self.store.chunks_of(row.id)
        written: dict[str, str | None] = {"failures": None, "warnings": None}
        for kind, name in (("failures", failures_name), ("warnings", warnings_name)):
            pieces = []
            for c in chunks:
                path = c.failures_path if kind == "failures" else c.warnings_path
                if path is not None and path.exists():
                    pieces.append(outbox.ChunkRows(c.path, c.first_line, path.read_bytes()))
            data, _count = outbox.merge_rows(pieces, fmt=ext) if pieces else (None, 0)
            if data is not None:
                outbox.atomic_write(out_dir / name, data)
                written[kind] = Path(name).name
        batches = [self._batch_doc(c) for c in chunks]
        doc = outbox.build_status(
            file=row.relpath,
            received_at=row.received_at,
            finished_at=_utc_now(),
            route=row.route,
            status=row.outcome or Outcome.FAILED,
            rows_total=row.rows or 0,
            batches=batches,
            error=row.error,
            error_line=row.error_line,
            notes=row.notes,
            failures_file=written["failures"],
            warnings_file=written["warnings"],
            version=__version__,
        )
        outbox.atomic_write(out_dir / status_name, outbox.json_bytes(doc))
        archived = self._archive(row, inbox)
        self.store.set_file(row.id, FileState.DONE, finished_at=doc["finishedAt"], archived_to=archived)
        shutil.rmtree(self._work_dir(row.id), ignore_errors=True)
        self.metrics.file_finished(
            doc["status"],
            rows_processed=doc["rowsProcessed"],
            rows_failed=doc["rowsFailed"],
            rows_warned=doc["rowsWithWarning"],
        )
        log.info(
            "file_finished",
            file_id=row.id,
            status=doc["status"],
            rows=doc["rowsTotal"],
            processed=doc["rowsProcessed"],
            failed=doc["rowsFailed"],
            warned=doc["rowsWithWarning"],
            batches=[b.get("batchId") for b in batches],
        )

    @staticmethod
    def _batch_doc(c: ChunkRow) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "chunk": c.index,
            "batchId": c.batch_id,
            "sourceLines": [c.first_line, c.last_line],
            "rows": c.rows,
            "marketoStatus": c.marketo_status,
            "message": c.message,
            "rowsProcessed": c.processed,
            "rowsFailed": c.failed if c.state is ChunkState.DONE and c.marketo_status == "Complete" else c.rows - c.processed,
            "rowsWithWarning": c.warned,
        }
        if c.error:
            doc["error"] = c.error
        if c.resubmits:
            doc["resubmitted"] = c.resubmits
        return doc

    def _archive(self, row: FileRow, inbox: Inbox | None) -> Path | None:
        if row.archived_to is not None and not row.processing_path.exists():
            return row.archived_to  # moved before a crash
        if not row.processing_path.exists():
            return None
        root = (inbox.archive if inbox and inbox.archive else None) or self.config.state_dir / "archive"
        if row.outcome in (Outcome.REJECTED, Outcome.FAILED):
            root = root / "failed"
        day = row.received_at[:10].replace("-", "/")
        target = root / day / row.relpath
        if target.exists():
            target = target.with_name(f"{target.name}.{row.id}")
        self.store.set_file(row.id, archived_to=target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(row.processing_path, target)
        return target


__all__ = ["Daemon", "Interrupted"]
