"""Hostile input: whatever lands in an inbox, the daemon stays up, keeps the original and says why.

Each case (``tests/hostile_corpus.py`` writes it at test time) runs through a
real in-process daemon against the simulator. For every case: a clear status
(``Rejected`` with the reason and line where there is one), or, where no
status can sensibly be written (symlinks, FIFOs, folders named like data
files), the entry left exactly as it was and a logged refusal; the original
kept byte for byte; the daemon still running; and a good file dropped
afterwards comes back ``Complete``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from dropzone import watching
from dropzone.daemon import Daemon
from dropzone.jobs import FileState
from tests.helpers import ROUTES, daemons, drop, run_until_idle, status_of
from tests.hostile_corpus import (
    CONTENT_CASES,
    GOOD,
    GOOD_EMAILS,
    NAME_CASES,
    UNTOUCHED_CASES,
    Case,
    snapshot,
)

AS_ROOT = os.geteuid() == 0
GOOD_NAME = "leads_good_after.csv"

KNOWN_BUGS: dict[str, str] = {}


def with_known_bugs(cases: list[Case]) -> list:
    return [
        pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.id]))
        if c.id in KNOWN_BUGS else pytest.param(c, id=c.id)
        for c in cases
    ]


# ---- helpers ------------------------------------------------------------------


@pytest.fixture
def daemon_factory(tmp_path, simulator):
    """Marketo polled every 50 ms (the simulator's jobs are instant), the loop idles 50 ms at most."""
    yield from daemons(tmp_path, simulator.base_url, poll_interval=0.05, max_idle=0.05)


def bpath(directory: Path, name: bytes) -> bytes:
    return os.path.join(os.fsencode(directory), name)


def digest(path: bytes | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def status_bytes(tmp_path: Path, name: bytes, *, exact: bool = True) -> dict:
    """The status file of ``name`` (bytes): ``NAME.status.json``, strict UTF-8 JSON.

    ``exact=False``: whatever single status file the outbox holds (a 255-byte
    NAME leaves no room for the suffix).
    """
    if exact:
        path = bpath(tmp_path / "outbox", name + b".status.json")
    else:
        [path] = [p for p in files_under(tmp_path / "outbox") if p.endswith(b".status.json")]
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def files_under(root: Path) -> list[bytes]:
    """Every file below ``root``, as bytes paths (names need not be UTF-8)."""
    found = []
    for folder, _dirs, names in os.walk(os.fsencode(root)):
        found.extend(os.path.join(folder, n) for n in names)
    return sorted(found)


def render_all(logs: list[dict]) -> None:
    """Every captured event renders as a JSON line (strict UTF-8) and as a console line."""
    to_json = structlog.processors.JSONRenderer()
    to_console = structlog.dev.ConsoleRenderer(colors=False)
    for event in logs:
        line = to_json(None, "info", dict(event))
        line.encode("utf-8")
        json.loads(line)
        to_console(None, "info", dict(event))


def good_file_goes_through(tmp_path: Path, simulator, daemon: Daemon) -> None:
    before = len(simulator.imported_rows())
    drop(tmp_path, GOOD_NAME, GOOD)
    run_until_idle(daemon, timeout=15)
    assert status_of(tmp_path, GOOD_NAME)["status"] == "Complete"
    assert [r["row"]["email"] for r in simulator.imported_rows()[before:]] == GOOD_EMAILS


@pytest.fixture
def swap_before_claim(monkeypatch) -> Callable[[str, Callable[[], None]], list[bool]]:
    """Run ``action`` once, between the readiness verdict on ``name`` and its claim.

    The daemon asks ``watching.is_open_for_writing`` right before it renames a
    ready file into its processing area: the narrowest window there is.
    """

    def arm(name: str, action: Callable[[], None]) -> list[bool]:
        real = watching.is_open_for_writing
        fired: list[bool] = []

        def hooked(path: Path) -> bool | None:
            if not fired and Path(path).name == name:
                fired.append(True)
                action()
            return real(path)

        monkeypatch.setattr(watching, "is_open_for_writing", hooked)
        return fired

    return arm


@pytest.fixture
def fifo_unblocker(tmp_path) -> Iterator[list[float]]:
    """If the daemon ever opens a FIFO it claimed, open its other end after 3 s so the test ends.

    Yields a list that gets the time of each rescue: a non-empty list means the daemon hung.
    """
    stop = threading.Event()
    rescued: list[float] = []
    start = time.monotonic()

    def run() -> None:
        while not stop.wait(0.1):
            if time.monotonic() - start < 3:
                continue
            for root, _dirs, names in os.walk(tmp_path / "inbox"):
                for name in names:
                    path = os.path.join(root, name)
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                    except OSError:
                        continue
                    os.close(fd)
                    rescued.append(time.monotonic() - start)

    thread = threading.Thread(target=run, name="fifo-unblocker")
    thread.start()
    try:
        yield rescued
    finally:
        stop.set()
        thread.join()


# ---- the corpus ---------------------------------------------------------------


@pytest.mark.parametrize("case", with_known_bugs(CONTENT_CASES + NAME_CASES))
def test_hostile_file_gets_a_clear_status(tmp_path, simulator, daemon_factory, case: Case):
    """Rejected with reason and line (or Complete where it should import); the original kept byte for byte."""
    daemon = daemon_factory(routes=case.routes + ROUTES + case.inbox_extra)
    inbox = tmp_path / "inbox"
    case.make(inbox, case.name)
    original = digest(bpath(inbox, case.name))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run_until_idle(daemon, timeout=8)
    render_all(logs)

    status = status_bytes(tmp_path, case.name, exact=case.exact_status_name)
    # The name as the partner wrote it; bytes that are not UTF-8 may come back escaped.
    assert isinstance(status["file"], str)
    assert status["file"][:5] == case.text_name[:5] and status["file"][-4:] == case.text_name[-4:]
    if case.expect == "rejected":
        assert status["status"] == "Rejected", status
        message = status["error"]["message"]
        for word in case.words:
            assert word.lower() in message.lower(), message
        if case.line is not None:
            assert status["error"].get("line") == case.line, status["error"]
        assert simulator.submissions() == []
        [kept] = files_under(tmp_path / "archive")
        assert b"/failed/" in kept and os.path.basename(kept) == os.path.basename(case.name)
    else:
        assert status["status"] == "Complete", status
        rows = [r["row"] for r in simulator.imported_rows()]
        if case.rows:
            assert rows == list(case.rows)
        else:
            assert [r["email"] for r in rows] == GOOD_EMAILS
        [kept] = files_under(tmp_path / "archive")
        assert b"/failed/" not in kept and os.path.basename(kept) == os.path.basename(case.name)
    assert digest(kept) == original
    assert not os.path.lexists(bpath(inbox, case.name))
    assert not [p for p in files_under(inbox) if b"/.processing/" in p]

    good_file_goes_through(tmp_path, simulator, daemon)


def test_an_empty_file_is_rejected_after_its_quiet_period(tmp_path, simulator, daemon_factory):
    """A 0-byte file that stays closed and quiet is an export with no rows (common), not an upload
    that has not started: it is answered ``Rejected`` ("empty") like any refusal, and kept."""
    daemon = daemon_factory()
    drop(tmp_path, "leads_empty.csv", b"")
    run_until_idle(daemon, timeout=10)
    status = status_of(tmp_path, "leads_empty.csv")
    assert status["status"] == "Rejected" and "empty" in status["error"]["message"]
    [kept] = [Path(os.fsdecode(p)) for p in files_under(tmp_path / "archive")]
    assert "failed" in kept.parts and kept.read_bytes() == b""
    assert simulator.submissions() == []
    good_file_goes_through(tmp_path, simulator, daemon)


@pytest.mark.parametrize("case", with_known_bugs(UNTOUCHED_CASES))
def test_not_a_regular_file_is_left_alone_and_refused_in_the_log(
    tmp_path, simulator, daemon_factory, fifo_unblocker, case: Case
):
    """Symlinks, FIFOs, sockets and folders named like data files: not followed, not moved, no status; logged."""
    daemon = daemon_factory()
    inbox = tmp_path / "inbox"
    case.make(inbox, case.name)
    entry = inbox / case.text_name
    before = snapshot(entry)
    outside = {p: digest(p) for p in files_under(tmp_path) if b"/inbox/" not in p and b"/state/" not in p}

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run_until_idle(daemon, timeout=10)
        daemon.run_once()
    render_all(logs)

    assert snapshot(entry) == before
    assert {p: digest(p) for p in outside} == outside
    assert list((tmp_path / "outbox").iterdir()) == []
    assert daemon.store.files() == []
    assert simulator.submissions() == []
    said = [e for e in logs if e.get("file") == case.text_name]
    if case.id == "directory-named-like-data":
        assert said == [], "a folder is a legitimate subfolder of the inbox: nothing to refuse"
    else:
        assert len(said) == 1, logs  # said once, not on every scan
        assert said[0]["log_level"] in ("warning", "error"), said

    good_file_goes_through(tmp_path, simulator, daemon)
    assert snapshot(entry) == before
    assert not fifo_unblocker, "the daemon opened a FIFO"


# ---- links and permissions -------------------------------------------------------


def test_hard_link_to_a_file_outside_the_inbox(tmp_path, simulator, daemon_factory):
    """A hard link is a regular file: it gets a status; the file outside keeps its name and bytes."""
    daemon = daemon_factory()
    outside = tmp_path / "outside.csv"
    outside.write_bytes(GOOD)
    os.link(outside, tmp_path / "inbox" / "leads_hard.csv")
    run_until_idle(daemon, timeout=10)
    assert status_of(tmp_path, "leads_hard.csv")["status"] == "Complete"
    assert [r["row"]["email"] for r in simulator.imported_rows()] == GOOD_EMAILS
    assert outside.read_bytes() == GOOD
    [kept] = files_under(tmp_path / "archive")
    assert Path(os.fsdecode(kept)).read_bytes() == GOOD
    good_file_goes_through(tmp_path, simulator, daemon)


def test_two_hard_links_in_the_inbox_each_get_a_status(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory()
    first = drop(tmp_path, "leads_h1.csv", GOOD)
    os.link(first, tmp_path / "inbox" / "leads_h2.csv")
    run_until_idle(daemon, timeout=10)
    for name in ("leads_h1.csv", "leads_h2.csv"):
        assert status_of(tmp_path, name)["status"] == "Complete"
    assert [Path(os.fsdecode(p)).read_bytes() for p in files_under(tmp_path / "archive")] == [GOOD, GOOD]
    good_file_goes_through(tmp_path, simulator, daemon)


@pytest.mark.skipif(AS_ROOT, reason="root reads a chmod 000 file anyway")
def test_unreadable_file_is_rejected_and_kept(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory()
    path = drop(tmp_path, "leads_secret.csv", GOOD)
    path.chmod(0)
    run_until_idle(daemon, timeout=10)
    status = status_of(tmp_path, "leads_secret.csv")
    assert status["status"] == "Rejected"
    assert "cannot be read" in status["error"]["message"] and "ermission" in status["error"]["message"]
    [kept] = [Path(os.fsdecode(p)) for p in files_under(tmp_path / "archive")]
    assert "failed" in kept.parts
    kept.chmod(0o600)
    assert kept.read_bytes() == GOOD
    good_file_goes_through(tmp_path, simulator, daemon)


def _break_outbox_as_file(tmp_path: Path) -> Callable[[], None]:
    outbox = tmp_path / "outbox"
    outbox.rmdir()
    outbox.write_text("not a folder")

    def repair() -> None:
        outbox.unlink()
        outbox.mkdir()

    return repair


def _break_outbox_by_mode(tmp_path: Path) -> Callable[[], None]:
    outbox = tmp_path / "outbox"
    outbox.chmod(0o500)
    return lambda: outbox.chmod(0o700)


@pytest.mark.parametrize(
    "breaker",
    [
        pytest.param(_break_outbox_as_file, id="outbox-is-a-file"),
        pytest.param(_break_outbox_by_mode, id="outbox-read-only",
                     marks=pytest.mark.skipif(AS_ROOT, reason="root writes through any permission")),
    ],
)
@pytest.mark.parametrize("content", [GOOD, b"email,email\na@x.com,b@x.com\n"], ids=["good", "rejected"])
def test_unwritable_outbox_logs_keeps_the_file_and_retries(tmp_path, simulator, daemon_factory, breaker, content):
    """No status can be written: the refusal is logged, the file waits in processing, and is reported once possible."""
    daemon = daemon_factory()
    repair = breaker(tmp_path)
    drop(tmp_path, "leads_ob.csv", content)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with pytest.raises(TimeoutError):
            run_until_idle(daemon, timeout=2)
    assert any(e["event"] == "outbox_write_failed" and e["log_level"] == "error" for e in logs), logs
    [row] = daemon.store.files()
    assert row.state is FileState.FINISHING
    assert row.processing_path.read_bytes() == content
    repair()
    run_until_idle(daemon, timeout=10)
    expected = "Complete" if content == GOOD else "Rejected"
    assert status_of(tmp_path, "leads_ob.csv")["status"] == expected
    [kept] = files_under(tmp_path / "archive")
    assert Path(os.fsdecode(kept)).read_bytes() == content
    good_file_goes_through(tmp_path, simulator, daemon)


# ---- races between detection and claim -------------------------------------------


def test_file_deleted_between_verdict_and_claim_is_forgotten(tmp_path, simulator, daemon_factory, swap_before_claim):
    daemon = daemon_factory()
    path = drop(tmp_path, "leads_gone.csv", GOOD)
    fired = swap_before_claim("leads_gone.csv", path.unlink)
    run_until_idle(daemon, timeout=10)
    assert fired
    assert daemon.store.files() == []
    assert list((tmp_path / "outbox").iterdir()) == []
    good_file_goes_through(tmp_path, simulator, daemon)


def test_file_replaced_between_looks_waits_for_its_own_quiet_period(tmp_path, simulator, daemon_factory):
    """Same size and mtime, another inode: the quiet period starts again; only the new content is imported."""
    daemon = daemon_factory()
    quiet = daemon.config.inboxes[0].quiet_period
    old = b"email\nold1@example.com\nold2@example.com\n"
    new = b"email\nnew1@example.com\nnew2@example.com\n"
    path = drop(tmp_path, "leads_swap.csv", old)
    st = path.stat()
    daemon.run_once()
    time.sleep(quiet * 0.75)
    tmp = tmp_path / "inbox" / ".leads_swap.csv.upload"
    tmp.write_bytes(new)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, path)
    replaced = time.monotonic()
    assert path.stat().st_ino != st.st_ino and path.stat().st_size == st.st_size
    while time.monotonic() < replaced + quiet * 0.8:
        daemon.run_once()
        assert daemon.store.files() == [], "claimed before the new file's own quiet period"
        time.sleep(0.02)
    run_until_idle(daemon, timeout=10)
    assert status_of(tmp_path, "leads_swap.csv")["status"] == "Complete"
    assert [r["row"]["email"] for r in simulator.imported_rows()] == ["new1@example.com", "new2@example.com"]
    [kept] = files_under(tmp_path / "archive")
    assert Path(os.fsdecode(kept)).read_bytes() == new


def test_file_replaced_between_verdict_and_claim_is_never_taken_half(
    tmp_path, simulator, daemon_factory, swap_before_claim
):
    """A new upload lands (a rename over the old name) in the instant before the claim:
    it waits its own quiet period."""
    daemon = daemon_factory()
    path = drop(tmp_path, "leads_swap2.csv", b"email\nold@example.com\n")
    half = b"email\nnew1@example.com\nnew2@exa"

    def replace() -> None:
        tmp = tmp_path / "inbox" / ".upload.tmp"
        tmp.write_bytes(half)
        os.rename(tmp, path)

    fired = swap_before_claim("leads_swap2.csv", replace)
    deadline = time.monotonic() + 5
    while not fired and time.monotonic() < deadline:
        daemon.run_once()
        time.sleep(0.02)
    assert fired
    assert daemon.store.files() == [], "the replacement was claimed without its own quiet period"
    with open(path, "ab") as handle:
        handle.write(b"mple.com\n")
    run_until_idle(daemon, timeout=10)
    assert status_of(tmp_path, "leads_swap2.csv")["status"] == "Complete"
    assert [r["row"]["email"] for r in simulator.imported_rows()] == ["new1@example.com", "new2@example.com"]


@pytest.mark.parametrize("kind", [
    pytest.param("fifo"),
    pytest.param("directory"),
    pytest.param("symlink"),
])
def test_file_replaced_by_a_non_file_before_claim_is_left_alone(
    tmp_path, simulator, daemon_factory, swap_before_claim, fifo_unblocker, kind
):
    """The regular file seen ready is swapped for a FIFO, a folder or a symlink: not claimed, not opened, no hang."""
    daemon = daemon_factory()
    path = drop(tmp_path, "leads_sw.csv", GOOD)
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"email\nsecret@example.com\n")

    def replace() -> None:
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        else:
            path.symlink_to(outside)

    fired = swap_before_claim("leads_sw.csv", replace)
    started = time.monotonic()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        try:
            run_until_idle(daemon, timeout=5)
        except TimeoutError:
            pass
    assert fired
    assert not fifo_unblocker, f"the daemon blocked opening a FIFO for {fifo_unblocker[0]:.1f} s"
    assert time.monotonic() - started < 5, "the daemon never settled"
    assert os.path.lexists(path), "the entry was moved out of the inbox"
    assert {"fifo": path.is_fifo(), "directory": path.is_dir() and not path.is_symlink(),
            "symlink": path.is_symlink()}[kind]
    assert outside.read_bytes() == b"email\nsecret@example.com\n"
    assert simulator.submissions() == []
    assert not [r for r in daemon.store.files() if r.state is not FileState.DONE], "a file is stuck in flight"
    assert any(e.get("file") == "leads_sw.csv" and e["log_level"] in ("warning", "error") for e in logs)
    good_file_goes_through(tmp_path, simulator, daemon)
