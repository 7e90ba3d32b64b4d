"""Noticing files: watchdog hints, reconcile scans, and the filesystem facts readiness needs.

Owns the watchdog observers (one per inbox, supervised and restarted when a
thread dies), the recursive scan that is the source of truth (events are only
hints: inotify overflows are dropped silently by watchdog), the choice of
scan-only polling on network filesystems, and the /proc check for files still
open for writing. Decides nothing about readiness: that is ``readiness``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import queue
from collections.abc import Iterator
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = structlog.get_logger("dropzone.watching")


class _QuietStopRace(logging.Filter):
    """watchdog logs an ERROR when an emitter thread stops while inotify events are pending
    ("queue_events() called when the thread is inactive"): a harmless race on every clean stop,
    which would page whoever alerts on error-level lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStopRace())

with contextlib.suppress(ImportError):  # Linux only
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    # watchdog holds every rename *out of* a watched folder for 0.5 s, hoping to pair it with its
    # arrival, and holds every event queued behind it too: each file archived out of our processing
    # area would delay the next upload's event by up to half a second. Both halves of a rename come
    # in the same read of the inotify descriptor, and an unpaired half is only two hints instead of one.
    InotifyMoveEventGrouper.delay = 0.05

#: Filesystems where inotify sees nothing written by other hosts (or sees it late).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs")


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem holding ``path``, from /proc/self/mountinfo ('' if unknown)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = right.split()[0] if right.split() else ""
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def use_polling(mode: str, path: Path) -> bool:
    """True for scan-only watching: configured, or a network/FUSE filesystem under ``auto``."""
    if mode == "polling":
        return True
    if mode == "native":
        return False
    fs_type = filesystem_type(path)
    return fs_type in NETWORK_FS or fs_type.startswith("fuse")


class _Writers:
    """Every descriptor on the machine we can see, by the (device, inode) it holds: one walk of /proc."""

    def __init__(self) -> None:
        self.by_file: dict[tuple[int, int], list[tuple[str, str]]] | None = None

    def load(self) -> dict[tuple[int, int], list[tuple[str, str]]] | None:
        if self.by_file is not None:
            return self.by_file
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return None
        by_file: dict[tuple[int, int], list[tuple[str, str]]] = {}
        for pid in pids:
            fd_dir = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    st = os.stat(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                by_file.setdefault((st.st_dev, st.st_ino), []).append((pid, fd))
        self.by_file = by_file
        return by_file


_writers: contextvars.ContextVar[_Writers | None] = contextvars.ContextVar("dropzone_writers", default=None)


@contextlib.contextmanager
def one_look_at_writers() -> Iterator[None]:
    """Within it, ``is_open_for_writing`` walks /proc once, at its first call, not once per file.

    A walk costs milliseconds (every descriptor of every process is stat'ed): claiming
    thousands of files with one walk each would take most of a minute. The flags of a
    matching descriptor are still read at each call, so a writer that closed since counts no more.
    """
    token = _writers.set(_Writers())
    try:
        yield
    finally:
        _writers.reset(token)


def is_open_for_writing(path: Path) -> bool | None:
    """Whether any process we can see holds ``path`` open for writing; None when we cannot tell.

    OpenSSH's sftp-server writes in place under the final name, so an open
    write descriptor is the best sign an upload is still going. Processes of
    other users are invisible without privileges: the quiet period remains the
    fallback.
    """
    try:
        target = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    by_file = (_writers.get() or _Writers()).load()
    if by_file is None:
        return None
    for pid, fd in by_file.get((target.st_dev, target.st_ino), []):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("flags:"):
                        flags = int(line.split()[1], 8)
                        if flags & (os.O_WRONLY | os.O_RDWR):
                            return True
    return False


#: What can make a file new, changed, finished or gone. Not opens and read-only closes: the daemon
#: itself opens the inbox and the files in it at every look and claim, and each event costs the
#: watchdog threads Python time that the loop then waits for (the GIL).
HINT_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileClosedEvent,
    FileMovedEvent, DirMovedEvent, FileDeletedEvent, DirDeletedEvent,
]


class _Hints(FileSystemEventHandler):
    """Puts touched paths on the queue and does nothing else: it runs on watchdog's thread."""

    def __init__(self, inbox: Path, hints: queue.Queue[tuple[Path, str]]) -> None:
        self.inbox = inbox
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            with contextlib.suppress(ValueError):
                rel = os.path.relpath(path, self.inbox)
                if not rel.startswith(".."):
                    self.hints.put((self.inbox, rel))


class Watcher:
    """A watchdog observer over one inbox, or nothing in scan-only mode.

    ``ensure_alive`` is called from the main loop: a dead observer (watchdog
    threads can die on errors nobody sees) is replaced, and the caller is told
    to rescan because events may have been missed meanwhile.
    """

    def __init__(self, inbox: Path, hints: queue.Queue[tuple[Path, str]], *, polling: bool) -> None:
        self.inbox = inbox
        self.hints = hints
        self.polling = polling
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        if self.polling:
            return
        observer = Observer()
        observer.schedule(_Hints(self.inbox, self.hints), str(self.inbox), recursive=True, event_filter=HINT_EVENTS)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:
            # inotify watch or instance limits: fall back to scanning rather than fail.
            log.warning(
                "watch_failed_polling_instead",
                inbox=str(self.inbox),
                error=exc.strerror or str(exc),
                hint="raise fs.inotify.max_user_watches / max_user_instances",
            )
            self.polling = True
            return
        self._observer = observer

    def is_alive(self) -> bool:
        if self.polling:
            return True
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def ensure_alive(self) -> bool:
        """Restart a dead observer; True when it had to (the caller should rescan)."""
        if self.is_alive():
            return False
        log.error("watcher_died_restarting", inbox=str(self.inbox))
        self.stop()
        self.start()
        return True

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
                observer.join(timeout=5)
