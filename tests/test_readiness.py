"""readiness: the ignore list, the quiet period on the daemon's clock, markers, stale uploads."""

from __future__ import annotations

import pytest

from dropzone.readiness import (
    Readiness,
    StaleKind,
    Tracker,
    is_ignored_name,
    is_ignored_path,
    is_partial_name,
)

QUIET = 10.0


def look(
    t: Tracker, path: str = "a.csv", *, now: float, size: int = 100, mtime_ns: int = 5, inode: int = 7, **kw: object
) -> bool:
    return t.observe(path, size=size, mtime_ns=mtime_ns, inode=inode, now=now, **kw)  # type: ignore[arg-type]


class TestIgnoredNames:
    @pytest.mark.parametrize(
        "name",
        [
            ".hidden.csv",
            ".in.leads.csv",
            "leads.csv.filepart",
            "leads.csv.part",
            "leads.csv.partial",
            "leads.csv.tmp",
            "leads.csv.lftp",
            "leads.csv.crdownload",
            ".leads.csv.swp",
            "~$leads.xlsx",
            "leads.csv~",
            "LEADS.CSV.FILEPART",
            "",
        ],
    )
    def test_hidden_and_temporary_names_are_ignored(self, name: str) -> None:
        """Hidden, temporary and backup names are on the built-in ignore list, in any case."""
        assert is_ignored_name(name)

    @pytest.mark.parametrize("name", ["leads.csv", "leads.part.csv", "a~b.csv", "tmp.csv"])
    def test_ordinary_names_are_not_ignored(self, name: str) -> None:
        """Names that merely contain an ignored word are still imported."""
        assert not is_ignored_name(name)

    def test_marker_files_are_ignored(self) -> None:
        """A file ending in one of the inbox's marker suffixes is a signal, not data."""
        assert is_ignored_name("leads.csv.done", [".done"])
        assert not is_ignored_name("leads.csv.done")

    def test_a_hidden_folder_hides_its_files(self) -> None:
        """Files under a hidden folder, such as the .processing area, are ignored."""
        assert is_ignored_path(".processing/leads.csv")
        assert is_ignored_path("acme/.cache/leads.csv")
        assert not is_ignored_path("acme/leads.csv")

    def test_partial_names_are_temporary_upload_names(self) -> None:
        """Temporary upload names count as partial uploads; hidden ordinary names do not."""
        assert is_partial_name("leads.csv.filepart")
        assert is_partial_name(".in.leads.csv")
        assert not is_partial_name(".profile")
        assert not is_partial_name("leads.csv")


class TestQuietPeriod:
    def test_a_single_look_is_not_enough(self) -> None:
        """A file seen once is waiting, with the time it changed and the quiet period in the reason."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        verdict = t.is_ready("a.csv", 104.0)
        assert verdict.readiness is Readiness.WAITING
        assert verdict.reason == "changed 4 s ago, quiet period 10 s"

    def test_two_equal_looks_spanning_the_quiet_period_make_it_ready(self) -> None:
        """Unchanged (size, mtime, inode) across the quiet period on the daemon's clock means ready."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        look(t, now=110.0)
        assert t.is_ready("a.csv", 110.0).is_ready

    def test_the_quiet_period_passing_without_a_new_look_is_not_enough(self) -> None:
        """The file may have changed since the last look, so another look is asked for at once."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        look(t, now=105.0)
        verdict = t.is_ready("a.csv", 130.0)
        assert verdict.readiness is Readiness.WAITING
        assert "needs another look" in verdict.reason

    def test_growth_restarts_the_wait(self) -> None:
        """A new size restarts the quiet period from the look that saw it."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, size=100)
        assert look(t, now=108.0, size=200)
        look(t, now=112.0, size=200)
        verdict = t.is_ready("a.csv", 112.0)
        assert not verdict.is_ready

    def test_a_replaced_file_restarts_the_wait(self) -> None:
        """A new inode with the same size and mtime is a different file: the wait starts over."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, inode=7)
        look(t, now=110.0, inode=8)
        assert not t.is_ready("a.csv", 110.0).is_ready

    def test_an_mtime_set_back_into_the_past_restarts_the_wait(self) -> None:
        """sftp put -p restores the source's old mtime after the data: that is a change too."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, mtime_ns=2_000_000_000_000_000_000)
        look(t, now=110.0, mtime_ns=1_000_000_000_000_000_000)
        assert not t.is_ready("a.csv", 110.0).is_ready

    def test_an_old_mtime_does_not_shorten_the_wait(self) -> None:
        """A file whose mtime is years old still waits a full quiet period from our first look."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, mtime_ns=1)
        look(t, now=105.0, mtime_ns=1)
        assert not t.is_ready("a.csv", 105.0).is_ready

    def test_observe_says_whether_the_file_is_new_or_changed(self) -> None:
        """observe returns True for a first or changed look and False for an identical one."""
        t = Tracker(quiet_period=QUIET)
        assert look(t, now=1.0)
        assert not look(t, now=2.0)
        assert look(t, now=3.0, size=101)

    def test_a_zero_quiet_period_trusts_one_look(self) -> None:
        """With quiet_period 0 the first look is enough."""
        t = Tracker(quiet_period=0)
        look(t, now=100.0)
        assert t.is_ready("a.csv", 100.0).is_ready

    def test_a_negative_quiet_period_is_refused(self) -> None:
        """The quiet period cannot be negative."""
        with pytest.raises(ValueError, match="quiet_period"):
            Tracker(quiet_period=-1)


class TestOtherConditions:
    def test_an_unknown_path_is_waiting(self) -> None:
        """A path never observed is waiting for a first look."""
        verdict = Tracker(quiet_period=QUIET).is_ready("a.csv", 5.0)
        assert verdict.readiness is Readiness.WAITING
        assert verdict.reason == "not looked at yet"

    def test_an_ignored_name_is_never_ready(self) -> None:
        """Hidden and temporary names get an "ignored" verdict however long they stay unchanged."""
        t = Tracker(quiet_period=QUIET)
        look(t, "a.csv.filepart", now=0.0)
        look(t, "a.csv.filepart", now=100.0)
        verdict = t.is_ready("a.csv.filepart", 100.0)
        assert verdict.readiness is Readiness.IGNORED
        assert verdict.reason.startswith("ignored name")

    def test_a_file_open_for_writing_is_not_ready(self) -> None:
        """A file known to be open for writing waits, even when unchanged."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, open_for_write=True)
        look(t, now=200.0, open_for_write=True)
        verdict = t.is_ready("a.csv", 200.0)
        assert not verdict.is_ready
        assert verdict.reason == "open for writing"

    def test_closing_the_file_does_not_restart_the_wait(self) -> None:
        """Once the writer closes an unchanged file it is ready; the close itself is not a change."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, open_for_write=True)
        look(t, now=110.0, open_for_write=False)
        assert t.is_ready("a.csv", 110.0).is_ready

    def test_a_required_marker_that_is_missing_blocks(self) -> None:
        """A route with a marker waits for NAME.done, and says so."""
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        look(t, "in/leads.csv", now=100.0, marker_present=False)
        look(t, "in/leads.csv", now=110.0, marker_present=False)
        verdict = t.is_ready("in/leads.csv", 110.0, marker=".done")
        assert not verdict.is_ready
        assert verdict.reason == "waiting for marker leads.csv.done"

    def test_a_present_marker_allows_readiness(self) -> None:
        """With its marker present and the quiet period over, the file is ready."""
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        look(t, now=100.0, marker_present=False)
        look(t, now=110.0, marker_present=True)
        assert t.is_ready("a.csv", 110.0, marker=".done").is_ready

    def test_a_marker_not_looked_for_counts_as_missing(self) -> None:
        """When the route needs a marker, "not looked for" (None) is not "present"."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        look(t, now=110.0)
        assert not t.is_ready("a.csv", 110.0, marker=".done").is_ready

    def test_an_empty_file_is_not_ready(self) -> None:
        """An SFTP upload starts as an empty file, so empty files wait for data."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0, size=0)
        look(t, now=200.0, size=0)
        verdict = t.is_ready("a.csv", 200.0)
        assert not verdict.is_ready
        assert verdict.reason == "empty file: waiting for data"

    def test_forget_drops_a_path(self) -> None:
        """After forget, the path is unknown again."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=1.0)
        t.forget("a.csv")
        assert "a.csv" not in t
        assert len(t) == 0
        t.forget("a.csv")


class TestStale:
    def test_an_abandoned_partial_is_reported_once(self) -> None:
        """A .filepart unchanged for `after` seconds is reported, and only once."""
        t = Tracker(quiet_period=QUIET)
        look(t, "a.csv.filepart", now=0.0)
        look(t, "a.csv.filepart", now=50.0)
        assert t.take_stale(99.0, after=100.0) == []
        [stale] = t.take_stale(100.0, after=100.0)
        assert (stale.path, stale.kind, stale.unchanged_for) == ("a.csv.filepart", StaleKind.PARTIAL, 100.0)
        assert "abandoned upload" in stale.message
        assert t.take_stale(500.0, after=100.0) == []

    def test_a_growing_partial_is_not_stale(self) -> None:
        """Staleness counts from the last change, so a slow upload that keeps growing is never reported."""
        t = Tracker(quiet_period=QUIET)
        look(t, "a.csv.filepart", now=0.0, size=1)
        look(t, "a.csv.filepart", now=90.0, size=2)
        assert t.take_stale(150.0, after=100.0) == []

    def test_a_change_rearms_the_report(self) -> None:
        """A reported partial that changes and goes quiet again is reported again."""
        t = Tracker(quiet_period=QUIET)
        look(t, "a.part", now=0.0, size=1)
        assert len(t.take_stale(100.0, after=100.0)) == 1
        look(t, "a.part", now=110.0, size=2)
        assert len(t.take_stale(210.0, after=100.0)) == 1

    def test_an_empty_file_goes_stale(self) -> None:
        """An empty file left for `after` seconds is reported as empty."""
        t = Tracker(quiet_period=QUIET)
        look(t, now=0.0, size=0)
        [stale] = t.take_stale(100.0, after=100.0)
        assert stale.kind is StaleKind.EMPTY

    def test_a_file_whose_marker_never_came_goes_stale(self) -> None:
        """A file last seen without its required marker is reported as unmarked."""
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        look(t, now=0.0, marker_present=False)
        [stale] = t.take_stale(100.0, after=100.0)
        assert stale.kind is StaleKind.UNMARKED
        assert "marker" in stale.message

    def test_ordinary_waiting_files_are_not_stale(self) -> None:
        """Regular files, hidden files and marker files are not reported as abandoned."""
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        look(t, "a.csv", now=0.0)
        look(t, ".profile", now=0.0)
        look(t, "a.csv.done", now=0.0, size=0)
        assert t.take_stale(1000.0, after=100.0) == []


class TestSchedule:
    """What a pass asks instead of looking at every file: which quiet periods ended, when the next ends."""

    @pytest.mark.parametrize(
        ("looks", "now", "due", "next_due"),
        [
            ([], 100.0, [], None),
            ([("a.csv", 100.0, 5)], 109.9, [], 110.0),  # within its quiet period: not yet
            ([("a.csv", 100.0, 5)], 110.0, ["a.csv"], None),  # it ended: one look can make it ready
            ([("a.csv", 100.0, 5), ("a.csv", 104.0, 5)], 110.0, ["a.csv"], None),  # an early look changes nothing
            ([("a.csv", 100.0, 5), ("a.csv", 104.0, 6)], 110.0, [], 114.0),  # a change restarts it
            ([("a.csv", 100.0, 5), ("a.csv", 111.0, 5)], 200.0, [], None),  # looked at after it ended: done
            ([("b.csv", 103.0, 5), ("a.csv", 100.0, 5)], 120.0, ["a.csv", "b.csv"], None),  # earliest first
            ([("a.csv", 100.0, 5), ("b.csv", 103.0, 5)], 111.0, ["a.csv"], 113.0),
        ],
    )
    def test_due_names_the_files_whose_quiet_period_ended(
        self, looks: list[tuple[str, float, int]], now: float, due: list[str], next_due: float | None
    ) -> None:
        t = Tracker(quiet_period=QUIET)
        for path, at, size in looks:
            look(t, path, now=at, size=size)
        assert t.due(now) == due
        assert t.next_due() == next_due

    def test_each_end_is_named_once_and_a_look_then_makes_the_file_ready(self) -> None:
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        assert t.due(110.0) == ["a.csv"]
        assert t.due(111.0) == []
        look(t, now=111.0)
        assert t.is_ready("a.csv", 111.0).is_ready

    def test_a_forgotten_file_is_never_due(self) -> None:
        t = Tracker(quiet_period=QUIET)
        look(t, now=100.0)
        t.forget("a.csv")
        assert (t.due(200.0), t.next_due()) == ([], None)

    def test_a_zero_quiet_period_needs_no_second_look(self) -> None:
        t = Tracker(quiet_period=0)
        look(t, now=100.0)
        assert (t.due(100.0), t.next_due()) == ([], None)

    def test_memory_follows_the_files_tracked_not_the_changes_seen(self) -> None:
        """Obsolete schedule entries are dropped: a file that changes for ever does not grow the tracker."""
        t = Tracker(quiet_period=QUIET)
        for i in range(10_000):
            look(t, now=float(i), size=i)
        assert all(len(s._heap) <= 2 * len(t) + 64 for s in (t._looks, t._since, t._stale))


class TestWaiting:
    @pytest.mark.parametrize(
        ("looks", "expected"),
        [
            ([], (0, None)),
            ([("a.csv", 100.0, 5)], (1, 100.0)),
            ([("a.csv", 100.0, 5), ("b.csv", 90.0, 5)], (2, 90.0)),
            ([("a.csv", 100.0, 5), ("a.csv", 105.0, 6)], (1, 105.0)),  # counted from its last change
            ([("a.csv.filepart", 100.0, 5), (".hidden", 90.0, 5)], (0, None)),  # never-ready names
            ([("a.csv", 100.0, 5), ("a.csv.done", 90.0, 0)], (1, 100.0)),  # a marker is no upload
        ],
    )
    def test_how_many_wait_and_since_when(
        self, looks: list[tuple[str, float, int]], expected: tuple[int, float | None]
    ) -> None:
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        for path, at, size in looks:
            look(t, path, now=at, size=size)
        assert t.waiting(200.0) == expected

    def test_forgotten_and_abandoned_files_no_longer_wait(self) -> None:
        t = Tracker(quiet_period=QUIET)
        look(t, "a.csv", now=90.0)
        look(t, "b.csv", now=100.0, size=0)
        t.forget("a.csv")
        assert t.waiting(150.0) == (1, 100.0)
        assert [s.path for s in t.take_stale(200.0, after=100.0)] == ["b.csv"]
        assert t.waiting(200.0) == (0, None)


class TestStaleOrder:
    def test_oldest_first_and_the_rest_on_a_later_call(self) -> None:
        t = Tracker(quiet_period=QUIET)
        for i, at in enumerate([30.0, 10.0, 20.0]):
            look(t, f"{i}.part", now=at)
        assert [s.path for s in t.take_stale(500.0, after=100.0, limit=2)] == ["1.part", "2.part"]
        assert [s.path for s in t.take_stale(500.0, after=100.0, limit=2)] == ["0.part"]

    def test_a_marker_that_went_missing_makes_a_quiet_file_stale(self) -> None:
        t = Tracker(quiet_period=QUIET, marker_suffixes=[".done"])
        look(t, now=0.0, marker_present=True)
        assert t.take_stale(150.0, after=100.0) == []
        look(t, now=160.0, marker_present=False)
        [stale] = t.take_stale(170.0, after=100.0)
        assert (stale.kind, stale.unchanged_for) == (StaleKind.UNMARKED, 170.0)
