"""Is this upload finished? Decided from repeated looks, never from one event.

Owns: the ignore list for hidden and temporary names, the quiet-period rule,
the marker rule, and spotting abandoned uploads. Does not own: ``stat`` calls,
filesystem events or timers (``watching`` and ``daemon`` feed observations in),
nor a clock: every ``now`` is a reading of the daemon's monotonic clock,
passed in.

Why a quiet period on *our* clock: OpenSSH's ``sftp put`` writes in place,
under the final name, and an upload can stall for seconds on a slow link. A
file's mtime cannot say when it was last written as seen from here (``put -p``
and WinSCP restore the source's old mtime; network filesystems skew clocks),
so the mtime is only compared with itself. A file is ready once two looks at
least ``quiet_period`` apart, on the daemon's clock, found the same
(size, mtime_ns, inode). No quiet period can tell a finished in-place upload
from an abandoned one; routes that need certainty ask for a marker file.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

IGNORED_PREFIXES: Final[tuple[str, ...]] = (".", "~")
"""Names starting with these are never imported.

``.`` covers hidden files, lftp's ``.in.*`` temp names, PureFTPd's
``.pureftp-upload.*`` and our own ``.processing`` area; ``~`` covers office
lock files (``~$report.xlsx``).
"""

IGNORED_SUFFIXES: Final[tuple[str, ...]] = (
    ".filepart",  # WinSCP
    ".part",
    ".partial",
    ".tmp",
    ".lftp",
    ".crdownload",
    ".swp",
    "~",  # editor backups
)
"""Names ending with these (compared case-insensitively) are never imported."""

PARTIAL_SUFFIXES: Final[tuple[str, ...]] = (".filepart", ".part", ".partial", ".tmp", ".lftp", ".crdownload")
"""Temporary upload names: left behind, they mean an upload was abandoned."""

PARTIAL_PREFIXES: Final[tuple[str, ...]] = (".in.", ".pureftp-upload.")
"""Hidden temporary upload names used by lftp and PureFTPd."""

MIN_READY_SIZE: Final = 1
"""An SFTP upload starts as an empty file, so an empty file is never ready."""


def is_ignored_name(name: str, marker_suffixes: Iterable[str] = ()) -> bool:
    """Whether a file name is hidden, temporary, or a marker, and so never imported.

    Args:
        name: a base name, without any folder.
        marker_suffixes: the inbox's marker suffixes (``".done"``); marker
            files are signals, not data.

    Returns:
        True for names on the built-in ignore list or ending in a marker suffix.
    """
    if not name or name.startswith(IGNORED_PREFIXES):
        return True
    lowered = name.lower()
    if lowered.endswith(IGNORED_SUFFIXES):
        return True
    return any(lowered.endswith(suffix.lower()) for suffix in marker_suffixes if suffix)


def is_ignored_path(relpath: str, marker_suffixes: Iterable[str] = ()) -> bool:
    """Whether a path relative to the inbox is ignored: its name, or any folder on the way, is.

    Folders are checked with the prefixes only (``.processing/``, ``.ssh/``);
    the file name with the whole list.

    Args:
        relpath: a path relative to the inbox, ``/``-separated.
        marker_suffixes: as for ``is_ignored_name``.
    """
    *folders, name = relpath.split("/")
    if any(not folder or folder.startswith(IGNORED_PREFIXES) for folder in folders):
        return True
    return is_ignored_name(name, marker_suffixes)


def is_partial_name(name: str) -> bool:
    """Whether a name is a temporary upload name (``x.csv.filepart``, lftp's ``.in.x.csv``)."""
    return name.lower().endswith(PARTIAL_SUFFIXES) or name.startswith(PARTIAL_PREFIXES)


class Readiness(enum.StrEnum):
    READY = "ready"
    WAITING = "waiting"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The answer to "may this file be claimed now?".

    ``reason`` is a sentence for logs and ``dropzone explain``.
    """

    readiness: Readiness
    reason: str

    @property
    def is_ready(self) -> bool:
        return self.readiness is Readiness.READY


@dataclass(frozen=True, slots=True, kw_only=True)
class FileStat:
    """What must stay the same for a file to count as unchanged."""

    size: int
    mtime_ns: int
    inode: int


class StaleKind(enum.StrEnum):
    PARTIAL = "partial"  # a temporary upload name nobody renamed
    EMPTY = "empty"  # an empty file nobody wrote to
    UNMARKED = "unmarked"  # a finished-looking file whose marker never came


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleUpload:
    """A file that has not changed for too long without becoming importable."""

    path: str
    kind: StaleKind
    stat: FileStat
    unchanged_for: float

    @property
    def message(self) -> str:
        age = _seconds(self.unchanged_for)
        match self.kind:
            case StaleKind.PARTIAL:
                return f"{self.path}: temporary upload unchanged for {age}: abandoned upload?"
            case StaleKind.EMPTY:
                return f"{self.path}: empty for {age}: abandoned upload?"
            case StaleKind.UNMARKED:
                return f"{self.path}: unchanged for {age} but its marker file has not arrived"


class _Schedule:
    """Paths by time, earliest first, for a tracker whose every pass must cost O(changes), not O(paths).

    Entries are never removed in place: ``valid(time, path)`` tells a live one
    from one a later change or a ``forget`` made obsolete; obsolete ones are
    dropped as they reach the top, and all at once when they outnumber the
    live paths (``compact``), so memory stays proportional to what is tracked.
    """

    def __init__(self, valid: Callable[[float, str], bool]) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()  # ties break by arrival, never by comparing paths
        self._valid = valid

    def push(self, at: float, path: str) -> None:
        heapq.heappush(self._heap, (at, next(self._order), path))

    def peek(self) -> tuple[float, str] | None:
        while self._heap:
            at, _, path = self._heap[0]
            if self._valid(at, path):
                return at, path
            heapq.heappop(self._heap)
        return None

    def pop(self) -> None:
        heapq.heappop(self._heap)

    def compact(self, live: int) -> None:
        if len(self._heap) > 2 * live + 64:
            self._heap = [e for e in self._heap if self._valid(e[0], e[2])]
            heapq.heapify(self._heap)


@dataclass(slots=True, kw_only=True)
class _Sighting:
    stat: FileStat
    first_seen: float  # when the current stat was first seen
    last_seen: float  # the latest look that found the same stat
    open_for_write: bool | None
    marker_present: bool | None
    stale_reported: bool = False
    look_at: float | None = None  # when a look could find it ready (its quiet period ends); None: no look due


class Tracker:
    """What the daemon has seen of each candidate file, and whether it is ready.

    One tracker per inbox. Paths are opaque keys (the daemon uses the path
    relative to the inbox); only their base name is looked at, for the
    ignore list. The tracker keeps no clock: ``now`` always comes in.

    Args:
        quiet_period: seconds a file must stay unchanged, on the daemon's clock.
        marker_suffixes: the inbox's marker suffixes, ignored as names.
        min_size: smaller files are not ready (an SFTP upload starts empty).

    Example::

        t = Tracker(quiet_period=10)
        t.observe("a.csv", size=5, mtime_ns=1, inode=7, now=100.0)
        t.is_ready("a.csv", 105.0).reason   # 'changed 5 s ago, quiet period 10 s'
        t.observe("a.csv", size=5, mtime_ns=1, inode=7, now=110.0)
        t.is_ready("a.csv", 110.0).is_ready  # True

    Every pass of the daemon asks what changed, never about every path: ``due``
    names the files whose quiet period has ended since (only they need a look
    to become ready), ``next_due`` says when the next one ends (the loop sleeps
    until then), ``waiting`` and ``take_stale`` are answered from schedules
    kept as files are observed. Each costs O(log n) per path that changed.
    """

    def __init__(
        self,
        *,
        quiet_period: float,
        marker_suffixes: Iterable[str] = (),
        min_size: int = MIN_READY_SIZE,
    ) -> None:
        if quiet_period < 0:
            raise ValueError(f"quiet_period must not be negative, got {quiet_period}")
        self.quiet_period = float(quiet_period)
        self.marker_suffixes = tuple(marker_suffixes)
        self.min_size = min_size
        self._seen: dict[str, _Sighting] = {}
        #: Paths ``waiting`` counts: not ignored, not yet reported as abandoned.
        self._counted: set[str] = set()
        self._looks = _Schedule(lambda at, path: (s := self._seen.get(path)) is not None and s.look_at == at)
        self._since = _Schedule(lambda at, path: path in self._counted and self._seen[path].first_seen == at)
        self._stale = _Schedule(
            lambda at, path: (s := self._seen.get(path)) is not None and s.first_seen == at and not s.stale_reported
        )

    def __contains__(self, path: object) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))

    def observe(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        inode: int,
        now: float,
        open_for_write: bool | None = None,
        marker_present: bool | None = None,
    ) -> bool:
        """Record one look at a file.

        Args:
            path: the key for this file.
            size, mtime_ns, inode: from ``os.stat``.
            now: the daemon's monotonic clock.
            open_for_write: True if some process is known to have it open for
                writing, False if known not to, None if unknown.
            marker_present: for routes with a marker, whether ``NAME<suffix>``
                exists; None when not looked for.

        Returns:
            True if the file is new or changed (its quiet period restarts).
        """
        stat = FileStat(size=size, mtime_ns=mtime_ns, inode=inode)
        old = self._seen.get(path)
        if old is None or old.stat != stat:
            seen = self._seen[path] = _Sighting(
                stat=stat,
                first_seen=now,
                last_seen=now,
                open_for_write=open_for_write,
                marker_present=marker_present,
            )
            self._schedule(path, seen)
            if is_ignored_name(path.rpartition("/")[2], self.marker_suffixes):
                self._counted.discard(path)
            else:
                self._counted.add(path)
                self._since.push(now, path)
            self._stale.push(now, path)
            self._compact()
            return True
        if marker_present is False and old.marker_present is not False:
            self._stale.push(old.first_seen, path)  # its marker went missing: it may be abandoned after all
        old.last_seen = max(old.last_seen, now)
        old.open_for_write = open_for_write
        old.marker_present = marker_present
        self._schedule(path, old)
        return False

    def _schedule(self, path: str, seen: _Sighting) -> None:
        """A look is due once the quiet period has ended, unless a look after its end was already made."""
        ready_at = seen.first_seen + self.quiet_period
        want = ready_at if seen.last_seen < ready_at else None
        if want != seen.look_at:
            seen.look_at = want
            if want is not None:
                self._looks.push(want, path)

    def _compact(self) -> None:
        live = len(self._seen)
        for schedule in (self._looks, self._since, self._stale):
            schedule.compact(live)

    def due(self, now: float) -> list[str]:
        """The files whose quiet period has ended since they were last looked at: look at these now.

        Each is named once; looking at it (``observe``) schedules it again if it changed.
        Files that wait for something else (a marker, the end of a write) are not named:
        a filesystem event or the next scan brings them back.
        """
        found = []
        while (top := self._looks.peek()) is not None and top[0] <= now:
            self._looks.pop()
            self._seen[top[1]].look_at = None
            found.append(top[1])
        return found

    def next_due(self) -> float | None:
        """When ``due`` next names a file (the daemon's clock), None when none waits for its quiet period."""
        top = self._looks.peek()
        return None if top is None else top[0]

    def stat_of(self, path: str) -> FileStat | None:
        """The (size, mtime, inode) the last look found: what a claim must still find."""
        seen = self._seen.get(path)
        return seen.stat if seen else None

    def waiting(self, now: float) -> tuple[int, float | None]:
        """How many files are waiting to become ready, and when the longest-waiting was first seen as it is now.

        Files already reported as abandoned (``take_stale``) no longer count: nothing is expected of them.
        """
        oldest = self._since.peek()
        return len(self._counted), None if oldest is None else oldest[0]

    def forget(self, path: str) -> None:
        """Drop what is known about a path (it was claimed, or it disappeared)."""
        self._seen.pop(path, None)
        self._counted.discard(path)

    def is_ready(self, path: str, now: float, *, marker: str | None = None) -> Verdict:
        """Whether the file may be claimed now.

        Args:
            path: as given to ``observe``.
            now: the daemon's monotonic clock.
            marker: the route's marker suffix (``".done"``) when it requires
                one; the file is then ready only once the last look found
                ``NAME<marker>``.

        Returns:
            A verdict; checks are made in this order: ignored name, not seen,
            open for writing, marker, too small, quiet period.
        """
        name = path.rpartition("/")[2]
        if is_ignored_name(name, self.marker_suffixes):
            return Verdict(readiness=Readiness.IGNORED, reason="ignored name (hidden, temporary or marker file)")
        seen = self._seen.get(path)
        if seen is None:
            return Verdict(readiness=Readiness.WAITING, reason="not looked at yet")
        if seen.open_for_write:
            return Verdict(readiness=Readiness.WAITING, reason="open for writing")
        if marker is not None and seen.marker_present is not True:
            return Verdict(readiness=Readiness.WAITING, reason=f"waiting for marker {name}{marker}")
        if seen.stat.size < self.min_size:
            return Verdict(readiness=Readiness.WAITING, reason="empty file: waiting for data")
        ready_at = seen.first_seen + self.quiet_period
        if seen.last_seen >= ready_at:
            return Verdict(
                readiness=Readiness.READY,
                reason=f"unchanged for {_seconds(seen.last_seen - seen.first_seen)}, "
                f"quiet period {_seconds(self.quiet_period)}",
            )
        if now < ready_at:
            return Verdict(
                readiness=Readiness.WAITING,
                reason=f"changed {_seconds(now - seen.first_seen)} ago, quiet period {_seconds(self.quiet_period)}",
            )
        # The quiet period has passed on the clock, but the last look came
        # before it ended: the file may have changed since. Look again.
        return Verdict(
            readiness=Readiness.WAITING,
            reason=f"unchanged for {_seconds(seen.last_seen - seen.first_seen)} when last looked at, "
            f"quiet period {_seconds(self.quiet_period)}: needs another look",
        )

    def take_stale(self, now: float, *, after: float, limit: int | None = None) -> list[StaleUpload]:
        """Files unchanged for at least ``after`` seconds that will not become ready by themselves.

        These are temporary upload names (``*.filepart``, ``.in.*``, …),
        empty files, and files whose last look found their marker missing
        (``marker_present=False``). "Unchanged" is measured on the daemon's
        clock from the first look at the current (size, mtime, inode), so a
        slow upload that is still growing is never reported. Each file is
        returned once for a given stat; a change re-arms it.

        Args:
            now: the daemon's monotonic clock.
            after: seconds, e.g. the inbox's ``stale_partial_after``.

        Returns:
            The newly stale files, oldest first.
        """
        found: list[StaleUpload] = []
        # Oldest first; beyond ``limit`` the rest stay scheduled: one pass never writes thousands of notices.
        while (limit is None or len(found) < limit) and (top := self._stale.peek()) is not None:
            first_seen, path = top
            if now - first_seen < after:
                break
            self._stale.pop()
            seen = self._seen[path]
            kind = self._stale_kind(path, seen)
            if kind is None:
                continue  # only a change (a new stat, its marker gone) schedules it again
            seen.stale_reported = True
            self._counted.discard(path)
            found.append(StaleUpload(path=path, kind=kind, stat=seen.stat, unchanged_for=now - first_seen))
        return found

    def _stale_kind(self, path: str, seen: _Sighting) -> StaleKind | None:
        name = path.rpartition("/")[2]
        if is_partial_name(name):
            return StaleKind.PARTIAL
        if is_ignored_name(name, self.marker_suffixes):
            return None
        if seen.stat.size < self.min_size:
            return StaleKind.EMPTY
        if seen.marker_present is False:
            return StaleKind.UNMARKED
        return None


def _seconds(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + " s"


__all__ = [
    "IGNORED_PREFIXES",
    "IGNORED_SUFFIXES",
    "MIN_READY_SIZE",
    "PARTIAL_PREFIXES",
    "PARTIAL_SUFFIXES",
    "FileStat",
    "Readiness",
    "StaleKind",
    "StaleUpload",
    "Tracker",
    "Verdict",
    "is_ignored_name",
    "is_ignored_path",
    "is_partial_name",
]
