"""Intake: notice files in one inbox, wait until each upload is complete, claim it.

One ``Intake`` per inbox. Each pass (``run_once``) takes the watcher's hints,
rescans when due (events are only hints: they can be lost), looks at what the
hints name and at the files whose quiet period has just ended (``readiness``
keeps them by due time, so a pass costs O(changes), not O(files tracked)),
asks ``readiness`` for a verdict, and claims what is ready by renaming it
into the inbox's private processing area. A claim is journalled (``claiming``) before the rename and
confirmed after it, so a crash in between loses nothing.

Distrust: the partner owns every name, folder and symlink below the inbox.
Every look, open and rename goes through ``safefs`` (directory descriptors,
never following a symlink); what readiness saw (device, inode, size, mtime)
is what is claimed, or nothing is. One odd entry is that entry's problem:
it is logged once and the pass goes on.
"""

from __future__ import annotations

import os
import queue
import stat
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dropzone import __version__, jobs, outbox, readiness, routing, safefs, unpacking, watching
from dropzone import defaults as D
from dropzone.config import Inbox
from dropzone.jobs import FileState
from dropzone.store import NewClaim, Store, utc_now

log = structlog.get_logger("dropzone.intake")

#: Suffix of a consumed marker in the processing area; it is archived with its file.
MARKER_SUFFIX_IN_PROCESSING = ".marker"


def recover_claims(store: Store) -> None:
    """Start-up: a claim a crash left half made is confirmed, or forgotten (``jobs.recover_claim``)."""
    for row in store.files([FileState.CLAIMING]):
        area, name = row.processing_path.parent, row.processing_path.name
        try:
            with safefs.Root.open(area.parent) as inbox, inbox.open_dir(area.name, private=True) as processing:
                there = processing.exists(name)
        except OSError:
            there = False
        match jobs.recover_claim(there):
            case jobs.ClaimRecovery.CONFIRM:
                store.confirm_claim(row.id)
            case jobs.ClaimRecovery.FORGET:
                # The rename never happened: the file is still in the inbox (found again) or gone.
                store.forget_claim(row.id)


def pins_of(inboxes: Iterable[Inbox]) -> dict[Path, str]:
    """The real path of each configured inbox, outbox and archive: what ``Root.open(pin=…)`` holds them to."""
    return {
        path: os.path.realpath(path)
        for inbox in inboxes
        for path in (inbox.path, inbox.outbox, inbox.archive)
        if path is not None
    }


@dataclass(slots=True)
class _Candidate:
    """What one look found out about a name: its route's marker, asked once."""

    marker: str | None  # the marker suffix its route waits for
    marker_rel: str | None
    never_ready: bool  # a temporary name: looked at on scans only


def _in_hidden_folder(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/")[:-1])


@dataclass(slots=True)
class _Claim:
    """A ready file that passed its last checks: what its claim must still find."""

    rel: str
    st: os.stat_result
    candidate: _Candidate


@dataclass
class Intake:
    """The intake stage of one inbox.

    Args:
        inbox: its configuration (a reload builds a new ``Intake``).
        store: the journal.
        hints: the queue the watcher puts touched paths on (shared; the
            daemon routes each hint to its inbox's ``hint``).
        heartbeat: called per item, so a long pass still counts as alive.
    """

    inbox: Inbox
    store: Store
    hints: queue.Queue[tuple[Path, str]]
    heartbeat: Callable[[], None] = lambda: None
    #: Names tracked at once, per kind (temporary names have their own count).
    max_tracked: int = D.TRACKED_PER_INBOX
    #: The configured folders' real paths at start (``Daemon.pins``).
    pins: dict[Path, str] = field(default_factory=dict)
    #: Whether a process holds a path open for writing (None: cannot tell); ``watching``'s by default.
    open_for_writing: Callable[[Path], bool | None] | None = None
    next_scan: float = 0.0
    tracker: readiness.Tracker = field(init=False)
    watcher: watching.Watcher = field(init=False)
    _touched: set[str] = field(default_factory=set)
    _candidates: dict[str, _Candidate] = field(default_factory=dict)
    #: Candidates the last look found ready, in that order: claimed up to ``CLAIMS_PER_PASS`` a pass.
    _ready: dict[str, None] = field(default_factory=dict)
    _refused: set[tuple[str, int]] = field(default_factory=set)
    _told: set[str] = field(default_factory=set)
    _announced: bool = False
    _unreadable_until: float = 0.0
    #: Files renamed into .processing whose claim the journal could not confirm yet.
    _unconfirmed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # min_size 0: an empty file that stays closed and quiet is claimed and
        # refused ("empty file") like any other bad file, not tracked for a day.
        self.tracker = readiness.Tracker(
            quiet_period=self.inbox.quiet_period, marker_suffixes=self.inbox.marker_suffixes, min_size=0
        )
        self.watcher = watching.Watcher(
            self.inbox.path, self.hints, polling=watching.use_polling(self.inbox.watch.value, self.inbox.path)
        )

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.watcher.start()

    def prepare_folders(self) -> None:
        """Create a missing outbox or archive whose parent exists (logged); a failure is only logged."""
        for key, path in (("outbox", self.inbox.outbox), ("archive", self.inbox.archive)):
            if path is None or path.exists():
                continue
            try:
                safefs.Root.open(path, create=True).close()
                log.info("folder_created", inbox=str(self.inbox.path), key=key, path=str(path))
            except OSError as exc:
                log.error("folder_not_created", inbox=str(self.inbox.path), key=key, path=str(path), error=str(exc))

    def stop(self) -> None:
        self.watcher.stop()

    def hint(self, rel: str) -> None:
        """The watcher saw something happen to ``rel``: look at it in the next pass."""
        self._touched.add(rel)

    def rescan_now(self) -> None:
        self.next_scan = 0.0

    def waiting(self, now: float) -> tuple[int, float | None]:
        return self.tracker.waiting(now)

    def next_due(self) -> float | None:
        """When a file's quiet period next ends (monotonic): the loop wakes then to look at it.

        Not before the next scan while the inbox is unreadable: a look that cannot be made
        would otherwise be due at once, pass after pass.
        """
        due = self.tracker.next_due()
        return None if due is None else max(due, self._unreadable_until)

    # ---- one pass -------------------------------------------------------------

    def run_once(self, now: float) -> bool:
        """Scan if due, look at what changed, claim what is ready; True when a file was claimed."""
        if self._unconfirmed:
            self.store.confirm_claim(*self._unconfirmed)  # a journal error ends the pass, not the file
            self._unconfirmed.clear()
        if self.watcher.ensure_alive():
            self.next_scan = 0.0
        try:
            root = safefs.Root.open(self.inbox.path, pin=self.pins.get(self.inbox.path))
        except OSError as exc:
            log.error("inbox_unreadable", inbox=str(self.inbox.path), error=exc.strerror or str(exc))
            self.next_scan = self._unreadable_until = now + self.inbox.scan_interval
            return False
        self._unreadable_until = 0.0
        with root:
            scanned = self._scan(root, now) if now >= self.next_scan else set()
            touched, self._touched = self._touched, set()
            # What events named, and the files whose quiet period just ended (readiness needs a
            # look after it, and no event may come): never every candidate, whose number is
            # unbounded. What events miss, the next scan finds.
            looks = touched | self._data_files_of_markers(touched) | set(self.tracker.due(now))
            for rel in looks - scanned:
                self._guarded(self._look_up, root, rel, now)
            batch: list[_Claim] = []
            with watching.one_look_at_writers():  # one walk of /proc for the whole batch, not one per file
                for rel in list(self._ready):
                    if len(batch) >= D.CLAIMS_PER_PASS:
                        break  # the rest next pass: other inboxes get their turn
                    self._guarded(self._maybe_claim, root, rel, now, batch)
            claimed = bool(batch) and self._guarded(self._claim_batch, root, batch)
            stale = self.tracker.take_stale(
                now, after=self.inbox.stale_partial_after, limit=D.ABANDONED_NOTICES_PER_PASS
            )
            for upload in stale:
                self._guarded(self._report_stale, upload)
        return bool(claimed)

    def _data_files_of_markers(self, touched: set[str]) -> set[str]:
        """A marker that arrived makes its data file ready: look at that file too."""
        found = set()
        for rel in touched:
            for suffix in self.inbox.marker_suffixes:
                if suffix and rel.endswith(suffix) and rel[: -len(suffix)] in self._candidates:
                    found.add(rel[: -len(suffix)])
        return found

    def _guarded(self, step: Callable[..., bool | None], *args: object) -> bool:
        """One entry's step; an error there is that entry's problem, logged, never the pass's."""
        self.heartbeat()
        try:
            return bool(step(*args))
        except Exception as exc:  # noqa: BLE001 - isolate the item
            error = str(exc) or type(exc).__name__
            # Told once: a trap a partner leaves in place would otherwise be logged every pass.
            emit = log.debug if error in self._told else log.warning
            if len(self._told) >= D.TRACKED_PER_INBOX:
                self._told.clear()  # bounded over years of distinct names: some are told again
            self._told.add(error)
            emit("intake_item_failed", inbox=str(self.inbox.path), step=getattr(step, "__name__", "?"), error=error)
            return False

    def _scan(self, root: safefs.Root, now: float) -> set[str]:
        """Look at everything in the inbox with the stat the walk made; returns what was looked at."""
        self.next_scan = now + self.inbox.scan_interval
        seen: set[str] = set()
        complete = True
        tracked = {True: 0, False: 0}  # never-ready or not: two caps, so temporary names never crowd out a file
        for c in self._candidates.values():
            tracked[c.never_ready] += 1
        for entry in root.walk(skip_hidden_dirs=True):
            if entry.relpath not in self._candidates:
                never = readiness.is_ignored_path(entry.relpath, self.inbox.marker_suffixes)
                if tracked[never] >= self.max_tracked:
                    complete = False
                    continue  # tracking is capped: the rest on a later scan, once these are claimed
                tracked[never] += 1
            seen.add(entry.relpath)
            self._guarded(self._look, root, entry.relpath, entry.st, now)
        if complete:
            for rel in [r for r in self._candidates if r not in seen]:
                self._forget(rel)
        if not self._announced:
            # An operator watching the wrong (empty) folder, a container volume that did not mount,
            # sees it here at once.
            self._announced = True
            st = os.fstat(root.fileno())
            log.info(
                "inbox_watched",
                inbox=str(self.inbox.path),
                device=f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}",
                fstype=watching.filesystem_type(self.inbox.path),
                watch="polling" if self.watcher.polling else "native",
                entries=len(seen),
            )
        return seen

    def _look_up(self, root: safefs.Root, rel: str, now: float) -> None:
        if not rel or rel == "." or rel.startswith("../") or _in_hidden_folder(rel):
            return  # events from our own processing area, among others: not worth a stat
        try:
            st = root.stat(rel)
        except OSError:
            self._forget(rel)  # gone, or behind a symlinked folder: nothing to take
            return
        if stat.S_ISDIR(st.st_mode):
            return
        self._look(root, rel, st, now)

    def _look(self, root: safefs.Root, rel: str, st: os.stat_result, now: float) -> None:
        if _in_hidden_folder(rel):
            return  # hidden folders: our processing area, upload tools' temporary folders
        if not stat.S_ISREG(st.st_mode):
            key = (rel, st.st_ino)
            if key not in self._refused:
                self._refused.add(key)
                log.warning("not_a_regular_file_skipped", inbox=str(self.inbox.path), file=rel)
            return
        candidate = self._candidates.get(rel)
        if candidate is None:
            candidate = self._candidates[rel] = self._candidate(rel)
        marker_present = root.exists(candidate.marker_rel) if candidate.marker_rel else None
        self.tracker.observe(
            rel,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            now=now,
            marker_present=marker_present,
        )
        if not candidate.never_ready and self.tracker.is_ready(rel, now, marker=candidate.marker).is_ready:
            self._ready[rel] = None
        else:
            self._ready.pop(rel, None)

    def _candidate(self, rel: str) -> _Candidate:
        ignored = readiness.is_ignored_path(rel, self.inbox.marker_suffixes)
        # A leads.csv.gz waits for the marker of leads.csv's route (its own name + the suffix).
        match = None if ignored else unpacking.route(self.inbox.routes, unpacking.peel(rel))
        if isinstance(match, routing.RouteMatch) and match.route.marker:
            marker_name = os.fsencode(rel.rpartition("/")[2] + match.route.marker)
            if len(marker_name) > outbox.NAME_MAX:
                # Its marker cannot exist: not waited for; prepare refuses the file with the reason.
                return _Candidate(None, None, never_ready=False)
            return _Candidate(match.route.marker, match.route.marker_for(rel), never_ready=False)
        return _Candidate(None, None, never_ready=ignored)

    def _forget(self, rel: str) -> None:
        self.tracker.forget(rel)
        self._candidates.pop(rel, None)
        self._ready.pop(rel, None)

    # ---- claim ------------------------------------------------------------------

    def _maybe_claim(self, root: safefs.Root, rel: str, now: float, batch: list[_Claim]) -> bool:
        """Check a ready file once more; what passes joins ``batch``, claimed together (``_claim_batch``)."""
        candidate = self._candidates.get(rel)
        if candidate is None or candidate.never_ready:
            return False
        if not self.tracker.is_ready(rel, now, marker=candidate.marker).is_ready:
            self._ready.pop(rel, None)
            return False
        if (self.open_for_writing or watching.is_open_for_writing)(self.inbox.path / rel):
            self.tracker.observe(rel, size=-1, mtime_ns=0, inode=0, now=now)  # restart the quiet period
            self._ready.pop(rel, None)
            log.info("file_still_open", inbox=str(self.inbox.path), file=rel)
            return False
        # A check that raised (a trap, our own file seen again) leaves the name tracked: tried
        # again, told once. Gone or changed, it is forgotten: the next look starts afresh.
        st = self._check(root, rel, self.tracker.stat_of(rel))
        if st is None:
            self._forget(rel)
            return False
        batch.append(_Claim(rel, st, candidate))
        return True

    def _check(self, root: safefs.Root, rel: str, expected: readiness.FileStat | None) -> os.stat_result | None:
        inbox = self.inbox
        try:
            st = root.stat(rel)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            log.warning("not_a_regular_file_skipped", inbox=str(inbox.path), file=rel)
            return None
        if readiness.FileStat(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) != expected:
            # Replaced since readiness looked: the next look starts a new quiet period.
            log.info("file_changed_before_claim", inbox=str(inbox.path), file=rel)
            return None
        if self.store.holds(st.st_dev, st.st_ino):
            # Our own claimed file, seen again (the processing area renamed by the partner): never twice.
            raise safefs.UnsafePathError(0, str(inbox.path), rel, "is a file dropzone has already claimed")
        return st

    def _claim_batch(self, root: safefs.Root, batch: list[_Claim]) -> bool:
        """Claim checked files: journalled (``claiming``), renamed, made durable, confirmed (``claimed``).

        The order per file is a single claim's; a batch shares its transactions and its folder
        fsyncs (a claim is otherwise bound by four fsyncs, a backlog of 10,000 by 40,000).
        A batch that fails before its renames leaves its files tracked: tried again next pass.
        """
        inbox = self.inbox
        with root.open_dir(D.PROCESSING_DIRNAME, create=True, private=True) as processing:
            # Flat, unique, short names: no partner name can exceed NAME_MAX with a prefix.
            names = [uuid.uuid4().hex for _ in batch]
            file_ids = self.store.begin_claims([
                NewClaim(inbox.path, c.rel, inbox.processing_dir / name, c.st.st_size, c.st.st_dev, c.st.st_ino)
                for c, name in zip(batch, names, strict=True)
            ])
            moved = []
            for claim, name, file_id in zip(batch, names, file_ids, strict=True):
                if self._guarded(self._move_in, root, processing, claim, name, file_id):
                    moved.append((claim, name, file_id))
                # Taken or not, the name is forgotten: the next look at it starts afresh.
                self._forget(claim.rel)
            if not moved:
                return False
            confirmed = [file_id for _, _, file_id in moved]
            try:
                # Durable before the journal says so: a power cut must not undo a confirmed claim.
                processing.fsync()
                for folder in sorted({c.rel.rpartition("/")[0] for c, _, _ in moved}):
                    if not folder:
                        root.fsync()
                    else:
                        with root.open_dir(folder) as sub:
                            sub.fsync()
                self.store.confirm_claim(*confirmed)
            except Exception as exc:  # noqa: BLE001 - the journal, briefly: confirmed at a later pass
                log.error("journal_write_failed_will_retry", inbox=str(inbox.path), error=str(exc))
                self._unconfirmed.extend(confirmed)
            for claim, name, file_id in moved:
                log.info("file_claimed", inbox=str(inbox.path), file=claim.rel, file_id=file_id, bytes=claim.st.st_size)
                if claim.candidate.marker_rel:
                    self._consume_marker(root, processing, claim.candidate.marker_rel, name)
        return True

    def _move_in(self, root: safefs.Root, processing: safefs.Root, claim: _Claim, name: str, file_id: int) -> bool:
        try:
            safefs.rename(root, claim.rel, processing, name, expect=claim.st, sync=False)
        except OSError as exc:
            self.store.forget_claim(file_id)
            log.warning("claim_failed", inbox=str(self.inbox.path), file=claim.rel, error=exc.strerror or str(exc))
            return False
        return True

    def _consume_marker(self, root: safefs.Root, processing: safefs.Root, marker_rel: str, name: str) -> None:
        """Take the marker with its file, so a later upload under the same name waits for a new one."""
        try:
            safefs.rename(root, marker_rel, processing, name + MARKER_SUFFIX_IN_PROCESSING)
        except OSError as exc:
            log.warning("marker_not_consumed", inbox=str(self.inbox.path), marker=marker_rel, error=str(exc))

    # ---- abandoned uploads ----------------------------------------------------------

    def _report_stale(self, stale: readiness.StaleUpload) -> None:
        """Tell the partner about an upload that looks abandoned; the file itself is left where it is."""
        log.warning("upload_abandoned", inbox=str(self.inbox.path), file=stale.path, reason=stale.message)
        doc = {
            "schemaVersion": outbox.SCHEMA_VERSION,
            "file": stale.path,
            "status": "Abandoned",
            "kind": str(stale.kind),
            "message": stale.message,
            "unchangedForSeconds": round(stale.unchanged_for),
            "detectedAt": utc_now(),
            "dropzoneVersion": __version__,
        }
        with safefs.Root.open(self.inbox.outbox, create=True, pin=self.pins.get(self.inbox.outbox)) as out:
            out.atomic_write(f"{outbox.fit_name(stale.path)}.abandoned.json", outbox.json_bytes(doc), create_dirs=True)
