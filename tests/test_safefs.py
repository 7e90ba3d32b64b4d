"""safefs: two partners side by side, acme attacking, bob's tree must not change.

Every attack is replayed in miniature with real files. "Nothing of bob's was
read" is checked by inode: no entry yielded, no descriptor returned and
nothing moved is one of bob's inodes; "nothing moved or written" by comparing
a full snapshot of bob's tree (kinds, inodes, contents, link targets) before
and after.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from dropzone import safefs
from dropzone.safefs import FileChangedError, Root, TooManyEntriesError, UnsafePathError

NON_UTF8 = os.fsdecode(b"leads_\xff\xfe\x80 caf\xc3\xa9\n.csv")  # invalid UTF-8, valid UTF-8 and a newline
LONG = "L" * 251 + ".csv"  # 255 bytes
assert len(os.fsencode(LONG)) == safefs.NAME_MAX

Snapshot = dict[str, tuple[object, ...]]


def snapshot(top: Path) -> Snapshot:
    """Everything below ``top`` without following links: kind, inode, and content or link target."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(top), followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.fsdecode(os.path.relpath(path, os.fsencode(top)))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    out[rel] = ("file", st.st_ino, st.st_mode, st.st_mtime_ns, handle.read())
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_ino, os.readlink(path))
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_mode)
    return out


def inodes(top: Path) -> set[tuple[int, int]]:
    found = {(os.lstat(top).st_dev, os.lstat(top).st_ino)}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_dev, st.st_ino))
    return found


@dataclass
class Partners:
    top: Path
    acme: Path
    bob: Path

    def bob_unchanged(self, before: Snapshot) -> None:
        assert snapshot(self.bob) == before


@pytest.fixture
def partners(tmp_path: Path) -> Partners:
    acme, bob = tmp_path / "acme", tmp_path / "bob"
    for who in (acme, bob):
        for area in ("inbox", "outbox", "archive"):
            (who / area).mkdir(parents=True)
    (bob / "inbox" / "leads_bob.csv").write_bytes(b"email\nsecret@bob.example\n")
    (bob / "inbox" / "batch.ready").write_bytes(b"")
    (bob / "inbox" / "sub").mkdir()
    (bob / "inbox" / "sub" / "deep.csv").write_bytes(b"email\ndeep@bob.example\n")
    (bob / "archive" / "leads_bob.csv").write_bytes(b"email\narchived@bob.example\n")
    (bob / "outbox" / "leads_bob.csv.status.json").write_bytes(b'{"status": "done"}\n')
    return Partners(tmp_path, acme, bob)


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of hanging forever if something blocks (e.g. opening a FIFO)."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("blocked")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(5)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def read_fd(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


# ---- attack 1: a symlinked folder in acme's outbox pointing at bob's inbox ----


def test_atomic_write_refuses_symlinked_folder_in_outbox(partners: Partners) -> None:
    (partners.acme / "outbox" / "x").symlink_to("../../bob/inbox")
    before = snapshot(partners.bob)
    with Root.open(partners.acme / "outbox") as outbox:
        with pytest.raises(UnsafePathError) as caught:
            outbox.atomic_write("x/leads_evil.csv.status.json", b"{}", create_dirs=True)
        assert caught.value.errno == errno.ELOOP
        assert "symbolic link" in str(caught.value) and "../../bob/inbox" in str(caught.value)
        assert "x/leads_evil.csv.status.json" in str(caught.value)
        with pytest.raises(UnsafePathError):
            outbox.open_dir("x", create=True)
        assert not outbox.exists("x/leads_bob.csv")  # bob's file is not "there" through acme's link
        with pytest.raises(UnsafePathError):
            outbox.stat("x/leads_bob.csv")
    partners.bob_unchanged(before)


def test_walk_does_not_enter_symlinked_subfolder(partners: Partners) -> None:
    (partners.acme / "inbox" / "x").symlink_to("../../bob/inbox")
    (partners.acme / "inbox" / "mine.csv").write_bytes(b"a\n")
    before = snapshot(partners.bob)
    with Root.open(partners.acme / "inbox") as inbox:
        found = list(inbox.walk())
        assert [(e.relpath, e.kind) for e in found] == [("mine.csv", "file"), ("x", "symlink")]
        assert not {e.dev_ino for e in found} & inodes(partners.bob)
        with pytest.raises(UnsafePathError):
            inbox.open_file("x/leads_bob.csv")
    partners.bob_unchanged(before)


# ---- attack 2: swap a parked folder for a symlink between scan and move ----


def test_rename_refuses_folder_swapped_for_symlink_after_walk(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "s").mkdir()
    (inbox_dir / "s" / "leads_bob.csv").write_bytes(b"email\nacme@acme.example\n")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        (entry,) = list(inbox.walk())
        assert entry.relpath == "s/leads_bob.csv"
        # The attacker's move, between the daemon's scan and its claim:
        (inbox_dir / "s").rename(inbox_dir / "s.parked")
        (inbox_dir / "s").symlink_to("../../bob/archive")
        with pytest.raises(UnsafePathError) as caught:
            safefs.rename(inbox, entry.relpath, processing, "claimed", expect=entry.dev_ino)
        assert caught.value.errno == errno.ELOOP
        with pytest.raises(UnsafePathError):  # even without expect= the link is never crossed
            safefs.rename(inbox, entry.relpath, processing, "claimed")
        with pytest.raises(UnsafePathError):
            inbox.open_file(entry.relpath)
        assert os.listdir(inbox_dir / ".processing") == []
    partners.bob_unchanged(before)


def test_rename_refuses_other_inode_swapped_into_folder(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "s").mkdir()
    (inbox_dir / "s" / "a.csv").write_bytes(b"first\n")
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        (entry,) = list(inbox.walk())
        (inbox_dir / "s").rename(inbox_dir / "old")
        (inbox_dir / "s").mkdir()
        (inbox_dir / "s" / "a.csv").write_bytes(b"second\n")
        with pytest.raises(FileChangedError) as caught:
            safefs.rename(inbox, "s/a.csv", processing, "claimed", expect=entry.dev_ino)
        assert caught.value.errno == errno.ESTALE
        with pytest.raises(FileChangedError):
            inbox.open_file("s/a.csv", expect=entry.dev_ino)
        assert os.listdir(inbox_dir / ".processing") == []
        assert (inbox_dir / "s" / "a.csv").read_bytes() == b"second\n"


def test_rename_puts_back_entry_swapped_during_the_rename(partners: Partners, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one window a rename cannot close: the name is swapped after the lstat, before renameat."""
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "a.csv").write_bytes(b"acme\n")
    before = snapshot(partners.bob)
    real = safefs._rename_noreplace
    calls: list[str] = []

    def swapping(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
        if not calls:
            os.unlink(inbox_dir / "a.csv")
            (inbox_dir / "a.csv").symlink_to("../../bob/inbox/leads_bob.csv")
        calls.append(src_name)
        real(src_fd, src_name, dst_fd, dst_name)

    monkeypatch.setattr(safefs, "_rename_noreplace", swapping)
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        with pytest.raises(FileChangedError) as caught:
            safefs.rename(inbox, "a.csv", processing, "claimed")
        assert "put back" in str(caught.value)
    assert os.listdir(inbox_dir / ".processing") == []
    assert os.readlink(inbox_dir / "a.csv") == "../../bob/inbox/leads_bob.csv"
    partners.bob_unchanged(before)


# ---- attack 3: a planted .processing ----


def test_symlinked_processing_area_is_refused(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / ".processing").symlink_to("../../bob/inbox")
    (inbox_dir / "leads.csv").write_bytes(b"acme\n")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox:
        with pytest.raises(UnsafePathError) as caught:
            inbox.open_dir(".processing", create=True, private=True)
        assert caught.value.errno == errno.ELOOP
        assert ".processing" in str(caught.value)
    assert (inbox_dir / "leads.csv").read_bytes() == b"acme\n"
    partners.bob_unchanged(before)


def test_processing_area_planted_as_a_file_is_refused(partners: Partners) -> None:
    (partners.acme / "inbox" / ".processing").write_bytes(b"")
    with Root.open(partners.acme / "inbox") as inbox, pytest.raises(UnsafePathError) as caught:
        inbox.open_dir(".processing", create=True, private=True)
    assert caught.value.errno == errno.ENOTDIR
    assert "regular file" in str(caught.value)


def test_private_folder_must_be_ours_and_closed(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / ".processing").mkdir(mode=0o700)
    os.chmod(inbox_dir / ".processing", 0o770)
    with Root.open(inbox_dir) as inbox:
        with pytest.raises(UnsafePathError, match="writable by group") as caught:
            inbox.open_dir(".processing", private=True)
        assert caught.value.errno == errno.EPERM
        os.chmod(inbox_dir / ".processing", 0o700)
        inbox.open_dir(".processing", private=True).close()
        if os.geteuid() == 0:  # only root can hand a folder to a stranger
            os.chown(inbox_dir / ".processing", 4242, 4242)
            with pytest.raises(UnsafePathError, match="owned by uid 4242"):
                inbox.open_dir(".processing", private=True)


def test_private_folder_is_created_0700(partners: Partners) -> None:
    with Root.open(partners.top / "bob" / "archive") as archive:
        with archive.open_dir("failed/2024/05/01", create=True, private=True) as day:
            assert day.path == partners.bob / "archive" / "failed/2024/05/01"
        for rel in ("failed", "failed/2024", "failed/2024/05", "failed/2024/05/01"):
            st = archive.stat(rel)
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


# ---- planted names at write targets, markers, special files ----


def test_atomic_write_replaces_symlink_not_its_target(partners: Partners) -> None:
    outbox_dir = partners.acme / "outbox"
    (outbox_dir / "r.status.json").symlink_to("../../bob/outbox/leads_bob.csv.status.json")
    before = snapshot(partners.bob)
    with Root.open(outbox_dir) as outbox:
        outbox.atomic_write("r.status.json", b'{"ok": true}\n')
    target = outbox_dir / "r.status.json"
    assert not target.is_symlink()
    assert target.read_bytes() == b'{"ok": true}\n'
    assert stat.S_IMODE(target.lstat().st_mode) == 0o640
    assert sorted(os.listdir(outbox_dir)) == ["r.status.json"]  # no temporary left
    partners.bob_unchanged(before)


def test_atomic_write_refuses_folder_at_target(partners: Partners) -> None:
    outbox_dir = partners.acme / "outbox"
    (outbox_dir / "r.status.json").mkdir()
    (outbox_dir / "r.status.json" / "keep").write_bytes(b"k")
    with Root.open(outbox_dir) as outbox, pytest.raises(UnsafePathError) as caught:
        outbox.atomic_write("r.status.json", b"{}")
    assert caught.value.errno == errno.EISDIR
    assert sorted(os.listdir(outbox_dir)) == ["r.status.json"]
    assert (outbox_dir / "r.status.json" / "keep").read_bytes() == b"k"


def test_symlink_marker_does_not_count(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "batch.ready").symlink_to("../../bob/inbox/batch.ready")
    (inbox_dir / "d").symlink_to("../../bob/inbox")
    (inbox_dir / "real.ready").write_bytes(b"")
    (inbox_dir / "f").write_bytes(b"")
    with Root.open(inbox_dir) as inbox:
        assert not inbox.exists("batch.ready")
        assert not inbox.exists("d/batch.ready")  # through a link
        assert not inbox.exists("f/batch.ready")  # through a file
        assert not inbox.exists("missing.ready")
        assert inbox.exists("real.ready")
        assert stat.S_ISLNK(inbox.stat("batch.ready").st_mode)  # lstat semantics


def test_fifo_is_refused_without_blocking(partners: Partners, no_hang: None) -> None:
    inbox_dir = partners.acme / "inbox"
    os.mkfifo(inbox_dir / "leads.csv")
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        (entry,) = list(inbox.walk())
        assert entry.kind == "other" and stat.S_ISFIFO(entry.st.st_mode)
        with pytest.raises(UnsafePathError, match="FIFO"):
            inbox.open_file("leads.csv")
        with pytest.raises(UnsafePathError, match="FIFO"):
            safefs.rename(inbox, "leads.csv", processing, "claimed")
    assert stat.S_ISFIFO(os.lstat(inbox_dir / "leads.csv").st_mode)


def test_fifo_swapped_in_after_lstat_does_not_block(
    partners: Partners, no_hang: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "leads.csv").write_bytes(b"x\n")
    real_open = os.open

    def swapping_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "leads.csv":
            os.unlink(inbox_dir / "leads.csv")
            os.mkfifo(inbox_dir / "leads.csv")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    with Root.open(inbox_dir) as inbox:
        fds = open_fds()
        monkeypatch.setattr(os, "open", swapping_open)
        with pytest.raises(UnsafePathError, match="FIFO"):
            inbox.open_file("leads.csv")
        monkeypatch.undo()
        assert open_fds() == fds


def test_symlinked_file_is_refused_everywhere(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "leads.csv").symlink_to("../../bob/inbox/leads_bob.csv")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        with pytest.raises(UnsafePathError, match="symbolic link") as caught:
            inbox.open_file("leads.csv")
        assert caught.value.errno == errno.ELOOP
        with pytest.raises(UnsafePathError, match="symbolic link"):
            safefs.rename(inbox, "leads.csv", processing, "claimed")
        inbox.unlink("leads.csv")  # removes the link itself
    assert not os.path.lexists(inbox_dir / "leads.csv")
    partners.bob_unchanged(before)


# ---- hard names ----


def test_non_utf8_name_round_trips(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    raw = os.fsencode(NON_UTF8)
    os.mkdir(os.path.join(os.fsencode(inbox_dir), b"d\xff"))
    with open(os.path.join(os.fsencode(inbox_dir), b"d\xff", raw), "wb") as handle:
        handle.write(b"payload\n")
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        (entry,) = list(inbox.walk())
        assert os.fsencode(entry.relpath) == b"d\xff/" + raw
        assert inbox.exists(entry.relpath)
        assert inbox.stat(entry.relpath).st_ino == entry.st.st_ino
        assert read_fd(inbox.open_file(entry.relpath, expect=entry.dev_ino)) == b"payload\n"
        flat = safefs.flatten(entry.relpath)
        assert os.fsencode(flat) == b"d\xff__" + raw
        safefs.rename(inbox, entry.relpath, processing, flat, expect=entry.dev_ino)
        assert read_fd(processing.open_file(flat)) == b"payload\n"
    with Root.open(partners.acme / "outbox") as outbox:
        outbox.atomic_write(f"{entry.relpath}.status.json", b"{}", create_dirs=True)
    assert os.path.exists(os.path.join(os.fsencode(partners.acme / "outbox"), b"d\xff", raw + b".status.json"))


def test_error_messages_escape_hostile_names(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    os.symlink(b"../../bob/\xff\n", os.path.join(os.fsencode(inbox_dir), b"l\xff\nk"))
    with Root.open(inbox_dir) as inbox, pytest.raises(UnsafePathError) as caught:
        inbox.open_file(os.fsdecode(b"l\xff\nk"))
    message = str(caught.value)
    assert "\n" not in message and "l\\xff\\x0ak" in message
    message.encode("utf-8")  # no lone surrogates: loggable, JSON-able


def test_255_byte_names(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / LONG).write_bytes(b"long\n")
    (inbox_dir / LONG[:-4]).mkdir()  # a 251-byte folder name
    ((inbox_dir / LONG[:-4]) / LONG).write_bytes(b"nested\n")
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        found = {e.relpath: e for e in inbox.walk()}
        assert set(found) == {LONG, f"{LONG[:-4]}/{LONG}"}
        assert read_fd(inbox.open_file(LONG)) == b"long\n"
        safefs.rename(inbox, LONG, processing, LONG, expect=found[LONG].dev_ino)
        flat = safefs.flatten(f"{LONG[:-4]}/{LONG}")
        assert len(os.fsencode(flat)) == safefs.NAME_MAX and flat.endswith(".csv")
        safefs.rename(inbox, f"{LONG[:-4]}/{LONG}", processing, flat)
        assert sorted(os.listdir(inbox_dir / ".processing")) == sorted([LONG, flat])
    with Root.open(partners.acme / "outbox") as outbox:
        outbox.atomic_write(LONG, b"x")  # the temporary name must fit too
        assert outbox.exists(LONG)
        with pytest.raises(OSError) as caught:
            outbox.atomic_write(LONG + "x", b"x")
        assert caught.value.errno == errno.ENAMETOOLONG


def test_flatten() -> None:
    assert safefs.flatten("sub/dir/name.csv") == "sub__dir__name.csv"
    assert safefs.flatten("name.csv") == "name.csv"
    long_a = safefs.flatten("é" * 200 + "/a.csv")
    long_b = safefs.flatten("é" * 200 + "/b.csv")
    assert long_a != long_b
    for name in (long_a, long_b):
        raw = os.fsencode(name)
        assert len(raw) <= safefs.NAME_MAX
        raw.decode("utf-8")  # cut on a character boundary
        assert name.endswith(".csv") and "/" not in name
    assert len(os.fsencode(safefs.flatten("x" * 300, reserve=40))) == safefs.NAME_MAX - 40
    assert len(os.fsencode(safefs.flatten(os.fsdecode(b"\xff" * 300)))) == safefs.NAME_MAX
    with pytest.raises(UnsafePathError):
        safefs.flatten("../etc/passwd")


BAD_RELPATHS = ["", "/etc/passwd", "..", "a/../b", "a//b", "a/", ".", "./a", "a\0b", "\ud800"]


@pytest.mark.parametrize("rel", BAD_RELPATHS)
def test_invalid_relative_paths_are_refused_before_any_io(partners: Partners, rel: str) -> None:
    before = snapshot(partners.top)
    with Root.open(partners.acme / "inbox") as inbox, Root.open(partners.acme / "archive") as archive:
        for call in (
            lambda: inbox.stat(rel),
            lambda: inbox.exists(rel),
            lambda: inbox.open_file(rel),
            lambda: inbox.open_dir(rel, create=True),
            lambda: inbox.atomic_write(rel, b"x", create_dirs=True),
            lambda: inbox.unlink(rel),
            lambda: safefs.rename(inbox, rel, archive, "x"),
            lambda: safefs.rename(inbox, "x", archive, rel or "/"),
        ):
            with pytest.raises(UnsafePathError) as caught:
                call()
            assert caught.value.errno == errno.EINVAL
    with Root.open(partners.acme / "inbox") as inbox, Root.open(partners.acme / "archive") as archive:
        with pytest.raises(UnsafePathError, match="single name"):
            safefs.rename(inbox, "x", archive, "a/b")
    assert snapshot(partners.top) == before  # nothing created, moved or removed anywhere


# ---- the walk ----


def test_walk_normal_tree(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    for rel in ("b.csv", "a/z.csv", "a/b/c.csv", ".hidden.csv.part", ".tmpdir/x.csv", ".processing/y"):
        (inbox_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox_dir / rel).write_bytes(rel.encode())
    with Root.open(inbox_dir) as inbox:
        walked = [(e.relpath, e.kind) for e in inbox.walk()]
        assert walked == [(".hidden.csv.part", "file"), ("b.csv", "file"), ("a/z.csv", "file"), ("a/b/c.csv", "file")]
        assert [e.relpath for e in inbox.walk()] == [r for r, _ in walked]  # the root descriptor is reusable
        everything = {e.relpath for e in inbox.walk(skip_hidden_dirs=False)}
        assert {".tmpdir/x.csv", ".processing/y"} <= everything
        shallow = [(e.relpath, e.kind) for e in inbox.walk(max_depth=1)]
        assert ("a/b", "other") in shallow and "a/b/c.csv" not in {r for r, _ in shallow}
        for entry in inbox.walk():
            assert entry.st.st_ino == (inbox_dir / entry.relpath).lstat().st_ino


def test_walk_entry_limit(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    for i in range(10):
        (inbox_dir / f"{i}.csv").write_bytes(b"")
    with Root.open(inbox_dir) as inbox:
        fds = open_fds()
        got: list[str] = []
        with pytest.raises(TooManyEntriesError):
            got.extend(e.relpath for e in inbox.walk(max_entries=5))
        assert got == []  # raised while listing, before yielding from that folder
        assert len(list(inbox.walk(max_entries=10))) == 10
        assert open_fds() == fds


def _swap_folders(inbox_dir: Path) -> None:
    """The attacker's moves: ``d`` becomes a link to bob's inbox, ``e`` vanishes, ``f`` is another folder."""
    (inbox_dir / "d").rename(inbox_dir / "d.old")
    (inbox_dir / "d").symlink_to("../../bob/inbox")
    (inbox_dir / "e" / "in.csv").unlink()
    (inbox_dir / "e").rmdir()
    (inbox_dir / "f").rename(inbox_dir / "f.old")
    (inbox_dir / "f").mkdir()
    (inbox_dir / "f" / "new.csv").write_bytes(b"")


@pytest.mark.parametrize("when", ["after_listing", "after_lstat"])
def test_walk_survives_folders_swapped_or_removed_mid_walk(partners: Partners, when: str) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "a.csv").write_bytes(b"")
    (inbox_dir / "z.csv").write_bytes(b"")
    for name in ("d", "e", "f"):
        (inbox_dir / name).mkdir()
        (inbox_dir / name / "in.csv").write_bytes(b"")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox:
        fds = open_fds()
        walk = inbox.walk()
        # The root is listed at the first step; its names are lstat'ed as they
        # are yielded (a.csv, then d, e, f, then z.csv); folders are opened after.
        assert next(walk).relpath == "a.csv"
        if when == "after_lstat":
            assert next(walk).relpath == "z.csv"
        _swap_folders(inbox_dir)
        rest = [(e.relpath, e.kind) for e in walk]
        if when == "after_listing":
            # d is seen as what it now is; e is gone; f is the new folder
            assert rest == [("d", "symlink"), ("z.csv", "file"), ("f/new.csv", "file")]
        else:
            # d and f were lstat'ed as folders: opening d finds a link, f another inode, e nothing
            assert rest == []
        assert open_fds() == fds
    partners.bob_unchanged(before)


def test_walk_closes_descriptors_when_abandoned(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "a" / "b").mkdir(parents=True)
    (inbox_dir / "a" / "b" / "c.csv").write_bytes(b"")
    (inbox_dir / "a" / "b" / "d.csv").write_bytes(b"")
    with Root.open(inbox_dir) as inbox:
        fds = open_fds()
        walk = inbox.walk()
        next(walk)
        assert len(open_fds()) > len(fds)
        walk.close()
        assert open_fds() == fds


def test_walk_reports_unreadable_subfolders(partners: Partners, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "locked").mkdir()
    (inbox_dir / "ok.csv").write_bytes(b"")
    real_open = os.open

    def denying(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    errors: list[tuple[str, int | None]] = []
    with Root.open(inbox_dir) as inbox:
        monkeypatch.setattr(os, "open", denying)
        found = [e.relpath for e in inbox.walk(on_error=lambda rel, exc: errors.append((rel, exc.errno)))]
        monkeypatch.undo()
    assert found == ["ok.csv"]
    assert errors == [("locked", errno.EACCES)]


# ---- normal paths ----


def test_root_open_create_and_operator_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "configured").symlink_to("real")  # the operator's own link is trusted
    with Root.open(tmp_path / "configured" / "inbox", create=True, mode=0o750) as inbox:
        assert inbox.path == tmp_path / "configured" / "inbox"
        inbox.atomic_write("hello.csv", b"hi")
    assert (tmp_path / "real" / "inbox" / "hello.csv").read_bytes() == b"hi"
    with Root.open(tmp_path / "configured" / "inbox") as again:
        assert again.exists("hello.csv")
    with pytest.raises(FileNotFoundError):
        Root.open(tmp_path / "missing" / "inbox", create=True)  # only the last component is made
    with pytest.raises(FileNotFoundError):
        Root.open(tmp_path / "absent")
    with pytest.raises(NotADirectoryError):
        Root.open(tmp_path / "real" / "inbox" / "hello.csv")


def test_expect_with_a_stat_result_pins_size_and_mtime(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "a.csv").write_bytes(b"one\n")
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        seen = inbox.stat("a.csv")
        with open(inbox_dir / "a.csv", "ab") as handle:  # same inode, still being written
            handle.write(b"two\n")
        read_fd(inbox.open_file("a.csv", expect=(seen.st_dev, seen.st_ino)))  # the inode alone matches
        with pytest.raises(FileChangedError):
            inbox.open_file("a.csv", expect=seen)
        with pytest.raises(FileChangedError):
            safefs.rename(inbox, "a.csv", processing, "claimed", expect=seen)
        safefs.rename(inbox, "a.csv", processing, "claimed", expect=inbox.stat("a.csv"))


def test_claim_read_archive_round_trip(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "sub").mkdir()
    (inbox_dir / "sub" / "leads.csv").write_bytes(b"email\na@acme.example\n")
    with (
        Root.open(inbox_dir) as inbox,
        inbox.open_dir(".processing", create=True, private=True) as processing,
        Root.open(partners.acme / "archive") as archive_root,
    ):
        (entry,) = list(inbox.walk())
        safefs.rename(inbox, entry.relpath, processing, "0001", expect=entry.dev_ino)
        assert not inbox.exists("sub/leads.csv")
        fd = processing.open_file("0001", expect=entry.dev_ino)
        assert read_fd(fd) == b"email\na@acme.example\n"
        with archive_root.open_dir("2024/05/01", create=True, private=True) as day:
            safefs.rename(processing, "0001", day, safefs.flatten(entry.relpath))
        assert archive_root.stat("2024/05/01/sub__leads.csv").st_ino == entry.st.st_ino
        assert list(processing.walk()) == []


def test_rename_never_replaces_unless_asked(partners: Partners) -> None:
    inbox_dir, archive_dir = partners.acme / "inbox", partners.acme / "archive"
    (inbox_dir / "a.csv").write_bytes(b"new")
    (archive_dir / "a.csv").write_bytes(b"old")
    (archive_dir / "link.csv").symlink_to("../../bob/inbox/leads_bob.csv")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox, Root.open(archive_dir) as archive:
        with pytest.raises(FileExistsError):
            safefs.rename(inbox, "a.csv", archive, "a.csv")
        with pytest.raises(FileExistsError):  # a dangling-or-not link counts as taken
            safefs.rename(inbox, "a.csv", archive, "link.csv")
        assert (inbox_dir / "a.csv").read_bytes() == b"new" and (archive_dir / "a.csv").read_bytes() == b"old"
        safefs.rename(inbox, "a.csv", archive, "a.csv", replace=True)
        assert (archive_dir / "a.csv").read_bytes() == b"new" and not (inbox_dir / "a.csv").exists()
    partners.bob_unchanged(before)


def _renameat2_unsupported(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int) -> int:
    ctypes.set_errno(errno.EINVAL)  # what a filesystem without RENAME_NOREPLACE answers
    return -1


@pytest.mark.parametrize("renameat2", [None, _renameat2_unsupported], ids=["no_libc_symbol", "fs_refuses_flag"])
def test_rename_fallback_without_renameat2(
    partners: Partners, monkeypatch: pytest.MonkeyPatch, renameat2: object
) -> None:
    monkeypatch.setattr(safefs, "_renameat2", renameat2)
    inbox_dir, archive_dir = partners.acme / "inbox", partners.acme / "archive"
    (inbox_dir / "a.csv").write_bytes(b"new")
    (archive_dir / "taken.csv").write_bytes(b"old")
    (archive_dir / "link.csv").symlink_to("../../bob/inbox/leads_bob.csv")
    with Root.open(inbox_dir) as inbox, Root.open(archive_dir) as archive:
        for taken in ("taken.csv", "link.csv"):
            with pytest.raises(FileExistsError):
                safefs.rename(inbox, "a.csv", archive, taken)
        safefs.rename(inbox, "a.csv", archive, "free.csv")
    assert (archive_dir / "free.csv").read_bytes() == b"new"
    assert (archive_dir / "taken.csv").read_bytes() == b"old"


def test_rename_with_replace_replaces_a_planted_link_not_its_target(partners: Partners) -> None:
    inbox_dir, outbox_dir = partners.acme / "inbox", partners.acme / "outbox"
    (inbox_dir / "a.csv").write_bytes(b"acme")
    (outbox_dir / "a.csv").symlink_to("../../bob/inbox/leads_bob.csv")
    before = snapshot(partners.bob)
    with Root.open(inbox_dir) as inbox, Root.open(outbox_dir) as outbox:
        safefs.rename(inbox, "a.csv", outbox, "a.csv", replace=True)
    assert not (outbox_dir / "a.csv").is_symlink() and (outbox_dir / "a.csv").read_bytes() == b"acme"
    partners.bob_unchanged(before)


def test_rename_across_filesystems_copies(partners: Partners, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox_dir, archive_dir = partners.acme / "inbox", partners.acme / "archive"
    (inbox_dir / "a.csv").write_bytes(b"data" * 1000)
    os.utime(inbox_dir / "a.csv", ns=(1_000_000_000, 2_000_000_000))
    real = safefs._rename_noreplace

    def exdev(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> None:
        if src_fd != dst_fd:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real(src_fd, src_name, dst_fd, dst_name)

    monkeypatch.setattr(safefs, "_rename_noreplace", exdev)
    with Root.open(inbox_dir) as inbox, Root.open(archive_dir) as archive:
        ident = inbox.stat("a.csv")
        with pytest.raises(OSError) as caught:
            safefs.rename(inbox, "a.csv", archive, "a.csv")
        assert caught.value.errno == errno.EXDEV
        safefs.rename(inbox, "a.csv", archive, "a.csv", cross_device=True, expect=(ident.st_dev, ident.st_ino))
    assert (archive_dir / "a.csv").read_bytes() == b"data" * 1000
    assert (archive_dir / "a.csv").stat().st_mtime_ns == 2_000_000_000
    assert os.listdir(inbox_dir) == [] and os.listdir(archive_dir) == ["a.csv"]


def test_errors_are_oserrors_and_name_the_path(partners: Partners) -> None:
    with Root.open(partners.acme / "inbox") as inbox:
        with pytest.raises(FileNotFoundError) as caught:
            inbox.open_file("nope/x.csv")
        assert "nope" in str(caught.value)
        with pytest.raises(FileNotFoundError):
            inbox.stat("x.csv")
        with pytest.raises(FileNotFoundError):
            inbox.unlink("x.csv")
        (partners.acme / "inbox" / "dir").mkdir()
        with pytest.raises(UnsafePathError, match="folder"):
            inbox.unlink("dir")
        with pytest.raises(UnsafePathError, match="folder") as unsafe:
            inbox.open_file("dir")
        assert isinstance(unsafe.value, OSError)
    inbox.close()
    with pytest.raises(OSError) as closed:
        inbox.stat("x")
    assert closed.value.errno == errno.EBADF


def test_no_descriptor_leaks(partners: Partners) -> None:
    inbox_dir = partners.acme / "inbox"
    (inbox_dir / "x").symlink_to("../../bob/inbox")
    (inbox_dir / "f.csv").write_bytes(b"f")
    fds = open_fds()
    with Root.open(inbox_dir) as inbox, inbox.open_dir(".processing", create=True, private=True) as processing:
        for call in (
            lambda: inbox.open_file("x/leads_bob.csv"),
            lambda: inbox.stat("x/y/z"),
            lambda: inbox.open_dir("x"),
            lambda: inbox.atomic_write("x/y", b""),
            lambda: safefs.rename(inbox, "x/leads_bob.csv", processing, "c"),
            lambda: safefs.rename(inbox, "f.csv", processing, "c", expect=(0, 0)),
            lambda: inbox.open_file("f.csv", expect=(0, 0)),
        ):
            with pytest.raises(OSError):
                call()
        list(inbox.walk())
    assert open_fds() == fds
