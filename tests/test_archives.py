"""Zip drops below the daemon: members taken out (real zips, hostile ones too), the journal's record of them,
and the zip's status from its members'."""

from __future__ import annotations

import io
import sqlite3
import stat
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from dropzone import decoders, members
from dropzone.errors import InputError
from dropzone.jobs import FileState, Outcome, TransitionError
from dropzone.journal_schema import DDL, UPGRADES
from dropzone.store import DB_NAME, FileRow, NewMember, Store
from dropzone.unpack_config import UnpackLimits

LIMITS = UnpackLimits(max_expanded_bytes=10_000_000, max_archive_bytes=30_000_000, max_archive_members=50)


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", method) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests need
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def info(name: str, *, mode: int = 0, method: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name)
    entry.compress_type = method
    if mode:
        entry.create_system = 3
        entry.external_attr = mode << 16
    return entry


def flag_encrypted(data: bytes, name: str) -> bytes:
    """Set the "encrypted" bit of ``name``'s central directory entry (zipfile never writes encrypted members)."""
    raw = bytearray(data)
    at = raw.find(b"PK\x01\x02" + raw[raw.find(b"PK\x01\x02") + 4 : raw.find(b"PK\x01\x02") + 8])
    while at >= 0:
        length = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + length] == name.encode():
            raw[at + 8] |= 0x1
            return bytes(raw)
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


def extract(data: bytes, dest: Path, *, limits: UnpackLimits = LIMITS, relpath: str = "acme/batch.zip"):
    dest.mkdir(exist_ok=True)
    return decoders.extract_members(io.BytesIO(data), relpath, dest, limits=limits, shown=relpath)


CSV = b"email\na@example.com\n"


class TestExtract:
    def test_a_member_with_flags_zipfile_cannot_read_is_that_members_problem(self, tmp_path):
        data = bytearray(make_zip([("ok.csv", CSV), ("odd.csv", CSV)]))
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the flag bits, local and central
            at = data.rfind(signature)
            data[at + offset] |= 0x20  # "compressed patched data": zipfile raises NotImplementedError
        found = {m.relpath: m.error or "" for m in extract(bytes(data), tmp_path / "m")}
        assert found["acme/ok.csv"] == "" and "damaged" in found["acme/odd.csv"]

    def test_many_members_each_within_the_grace_are_bound_by_the_archives_ratio(self, tmp_path):
        """Each member alone may compress 1 MiB to almost nothing; a thousand of them must not fill the disk:
        the whole archive may grow max_compression_ratio times its own size (after one grace)."""
        row = b"email\n" + b"a@example.com\n" * 70_000  # ~1 MB, compresses ~1000:1
        data = make_zip([(f"m{i:03d}.csv", row) for i in range(40)])
        with pytest.raises(InputError, match="max_compression_ratio"):
            extract(data, tmp_path / "m")
        assert not any((tmp_path / "m").iterdir())

    def test_a_directory_entry_that_lies_about_its_compressed_size_lifts_no_bound(self, tmp_path):
        body = b"email\n" + b"a@example.com\n" * 200_000  # 2.8 MB in a few kB
        data = bytearray(make_zip([("lie.csv", body)]))
        central = data.rfind(b"PK\x01\x02")
        data[central + 20 : central + 24] = (len(data) * 1000).to_bytes(4, "little")  # compress_size: a lie
        with pytest.raises(InputError, match="max_compression_ratio"):
            extract(bytes(data), tmp_path / "m")

    def test_members_in_nested_folders_keep_their_names_under_the_archives_folder(self, tmp_path):
        data = make_zip([("a.csv", CSV), ("sub/", b""), ("sub/deeper/b.tsv", b"email\tx\n"), ("c.xlsx", b"PK")])
        found = extract(data, tmp_path / "m")
        assert [(m.relpath, m.error, m.size) for m in found] == [
            ("acme/a.csv", None, len(CSV)), ("acme/sub/deeper/b.tsv", None, 8), ("acme/c.xlsx", None, 2),
        ]
        assert found[1].path.read_bytes() == b"email\tx\n"
        assert all(stat.S_IMODE(m.path.stat().st_mode) == 0o600 for m in found)

    def test_hostile_members_are_refused_one_by_one(self, tmp_path):
        data = make_zip([
            ("good.csv", CSV),
            ("../evil.csv", CSV),
            ("/etc/evil.csv", CSV),
            ("sub\\evil.csv", CSV),
            ("C:/evil.csv", CSV),
            ("ctl\x01.csv", CSV),
            ("nul#.csv.txt", CSV),  # made "nul\0.csv.txt" below: zipfile itself would read it as "nul"
            (info("link.csv", mode=stat.S_IFLNK | 0o777), b"/etc/passwd"),
            ("secret.csv", CSV),
            ("twice.csv", CSV),
            ("twice.csv", CSV),
            ("inner.zip", make_zip([("x.csv", CSV)])),
            ("x.csv.gz", b"\x1f\x8b"),
            (info("old.csv", method=zipfile.ZIP_BZIP2), CSV),
            ("__MACOSX/._good.csv", b"resource fork"),
            (".DS_Store", b""),
        ])
        data = flag_encrypted(data, "secret.csv").replace(b"nul#.csv.txt", b"nul\x00.csv.txt")
        listed = extract(data, tmp_path / "m")
        assert [m.relpath for m in listed].count("twice.csv") == 2  # both copies of the duplicate are refused
        found = {m.relpath: m for m in listed}
        assert found.pop("acme/good.csv").error is None
        expected = {
            "../evil.csv": ("'..'", False),
            "/etc/evil.csv": ("absolute path", False),
            "sub\\evil.csv": ("backslash", False),
            "C:/evil.csv": ("drive letter", False),
            "ctl\\x01.csv": ("control character", False),  # shown escaped: it names no file
            "nul\\x00.csv.txt": ("control character", False),
            "acme/link.csv": ("symbolic link", True),
            "acme/secret.csv": ("password-protected", True),
            "twice.csv": ("appears more than once", False),
            "acme/inner.zip": ("inside a zip is not unpacked", True),
            "acme/x.csv.gz": ("inside a zip is not unpacked", True),
            "acme/old.csv": ("compression method 12 is not read", True),
        }
        assert sorted(found) == sorted(expected)
        for relpath, (words, own) in expected.items():
            assert words in (found[relpath].error or ""), relpath
            assert found[relpath].own_status is own, relpath
            assert not found[relpath].path.exists()
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["00000"]

    def test_a_member_bomb_is_that_members_problem(self, tmp_path):
        ratio = ("ratio.csv", b"email\n" + b"a@example.com\n" * 500_000)  # 7 MB in ~7 kB
        size = (info("size.csv", method=zipfile.ZIP_STORED), bytes(range(256)) * 50_000)  # 12.8 MB, stored
        started = time.monotonic()
        found = extract(make_zip([ratio, ("ok.csv", CSV), size]), tmp_path / "m")
        assert time.monotonic() - started < 3
        by_name = {m.relpath: m.error or "" for m in found}
        assert "(max_compression_ratio)" in by_name["acme/ratio.csv"]
        assert by_name["acme/ok.csv"] == ""
        assert "(max_expanded_bytes)" in by_name["acme/size.csv"]
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["00001"]  # nothing of the bombs is kept

    def test_the_archive_as_a_whole_is_bounded(self, tmp_path):
        """Past max_archive_bytes in all (the members each within bounds) the archive itself is refused, on the
        sizes the zip declares, before a byte is read; a zip that understates them is read only that far."""
        limits = UnpackLimits(max_expanded_bytes=2_000_000, max_archive_bytes=3_000_000, max_compression_ratio=5)
        data = make_zip([(f"p{i}.csv", bytes(range(256)) * 6_000) for i in range(3)], method=zipfile.ZIP_STORED)
        with pytest.raises(InputError, match=r"together \(max_archive_bytes\)"):
            extract(data, tmp_path / "m", limits=limits)
        lying = bytearray(data)
        entry = len(lying)
        for _ in range(3):  # the central directory says 1 byte each: each is read up to that byte, and its CRC fails
            entry = lying.rfind(b"PK\x01\x02", 0, entry)
            lying[entry + 24 : entry + 28] = (1).to_bytes(4, "little")
        found = extract(bytes(lying), tmp_path / "n", limits=limits)
        assert all("it is damaged" in (m.error or "") for m in found) and len(found) == 3
        assert list((tmp_path / "n").iterdir()) == []

    def test_too_many_members_is_refused_before_any_is_read(self, tmp_path):
        data = make_zip([(f"f{i}.csv", CSV) for i in range(51)])
        with pytest.raises(InputError, match=r"holds 51 files, more than 50 \(max_archive_members\)"):
            extract(data, tmp_path / "m")
        assert list((tmp_path / "m").iterdir()) == []

    @pytest.mark.parametrize(
        ("data", "words"),
        [
            (b"email\na@example.com\n", "cannot be read as a zip archive"),
            (make_zip([("a.csv", CSV)])[:-30], "cannot be read as a zip archive"),
            (make_zip([("sub/", b""), (".hidden.csv", CSV)]), "holds no files"),
        ],
    )
    def test_an_archive_that_cannot_be_read_is_the_archives_problem(self, tmp_path, data, words):
        with pytest.raises(InputError, match=words) as info:
            extract(data, tmp_path / "m")
        assert str(info.value).startswith("acme/batch.zip: ")

    def test_a_damaged_member_is_that_members_problem(self, tmp_path):
        data = bytearray(make_zip([("a.csv", b"email\n" + b"x@example.com\n" * 100), ("b.csv", CSV)]))
        start = data.find(b"a.csv") + len(b"a.csv")
        data[start + 10] ^= 0xFF  # inside a.csv's deflate data
        found = extract(bytes(data), tmp_path / "m")
        assert "cannot be read from the archive: it is damaged" in (found[0].error or "")
        assert found[1].error is None


# ---- the journal ---------------------------------------------------------------------------------


def zip_claimed(store: Store, tmp_path: Path) -> int:
    fid = store.begin_claim(inbox=tmp_path / "inbox", relpath="acme/batch.zip",
                            processing_path=tmp_path / "inbox/.processing/batch.zip", size=9, dev=1, ino=2)
    store.confirm_claim(fid)
    return fid


MEMBERS = [
    NewMember("acme/a.csv", Path("/w/00000"), 10),
    NewMember("acme/link.csv", Path("/w/00001"), 5, error="acme/link.csv: refused: it is a symbolic link"),
    NewMember("../evil.csv", Path("/w/00002"), 5, error="'../evil.csv' in the archive: refused", own_status=False),
]


class TestJournal:
    def test_members_are_recorded_with_the_zip_in_one_transaction(self, tmp_path):
        store = Store(tmp_path / "state")
        try:
            fid = zip_claimed(store, tmp_path)
            store.record_unpack(fid, MEMBERS, notes=["unpacked (zip)"])
            assert (store.file(fid).state, store.file(fid).notes) == (FileState.UNPACKED, ["unpacked (zip)"])
            taken, link, evil = store.children(fid)
            assert all(c.parent_id == fid and c.received_at == store.file(fid).received_at for c in (taken, link, evil))
            assert (taken.state, taken.processing_path, taken.size, taken.outcome) == (
                FileState.CLAIMED, Path("/w/00000"), 10, None)
            assert (link.state, link.outcome, link.error) == (FileState.FINISHING, Outcome.REJECTED, MEMBERS[1].error)
            assert (evil.state, evil.outcome, evil.outbox_files) == (FileState.DONE, Outcome.REJECTED, [])
            with pytest.raises(TransitionError):  # only once, from claimed: nothing of a second call sticks
                store.record_unpack(fid, MEMBERS)
            assert len(store.children(fid)) == 3
            assert store.file(taken.id).parent_id == fid and store.file(fid).parent_id is None
        finally:
            store.close()

    def test_a_version_4_journal_is_upgraded_in_place(self, tmp_path):
        (tmp_path / "state").mkdir()
        db = sqlite3.connect(tmp_path / "state" / DB_NAME)
        for statement in (*DDL, *UPGRADES[2], *UPGRADES[3]):
            db.execute(statement)
        db.execute(
            "INSERT INTO files (id, inbox, relpath, processing_path, state, received_at) VALUES (1, ?, ?, ?, ?, ?)",
            (b"/in", b"old.csv", b"/in/.processing/old.csv", "claimed", "2024-05-01T10:00:00Z"),
        )
        db.execute("PRAGMA user_version=4")
        db.commit()
        db.close()
        store = Store(tmp_path / "state")
        try:
            assert store.file(1).parent_id is None and store.file(1).state is FileState.CLAIMED
            fid = zip_claimed(store, tmp_path)
            store.record_unpack(fid, MEMBERS[:1])
            assert [c.relpath for c in store.children(fid)] == ["acme/a.csv"]
        finally:
            store.close()


# ---- the zip's status ---------------------------------------------------------------------------


def row(fid: int, relpath: str, *, state=FileState.DONE, outcome=None, rows=None, error=None, outbox_files=None,
        parent_id=None) -> FileRow:
    return FileRow(
        id=fid, inbox=Path("/in"), relpath=relpath, processing_path=Path("/p"), state=state, size=1,
        received_at="2024-05-01T10:00:00Z", target=None, fmt=None, rows=rows, outcome=outcome, error=error,
        error_line=None, notes=[], finished_at=None, outbox_files=outbox_files, archived_to=None, dev=None,
        ino=None, parent_id=parent_id,
    )


class TestArchiveStatus:
    ZIP = row(1, "acme/batch.zip", state=FileState.UNPACKED)

    def test_the_zip_waits_for_every_member(self):
        children = [row(2, "acme/a.csv", outcome=Outcome.COMPLETE), row(3, "acme/b.csv", state=FileState.SPLIT)]
        assert members.settle(self.ZIP, children) is None

    @pytest.mark.parametrize(
        ("outcomes", "expected", "error"),
        [
            ([Outcome.COMPLETE, Outcome.COMPLETE], Outcome.COMPLETE, False),
            ([Outcome.COMPLETE, Outcome.REJECTED], Outcome.PARTIAL, False),
            ([Outcome.REJECTED, Outcome.REJECTED], Outcome.REJECTED, True),
        ],
    )
    def test_its_outcome(self, outcomes, expected, error):
        children = [row(i + 2, f"acme/{i}.csv", outcome=o) for i, o in enumerate(outcomes)]
        outcome, message = members.settle(self.ZIP, children) or (None, None)
        assert outcome is expected and (message is not None) is error
        if error:
            assert message == "acme/batch.zip: none of the 2 file(s) in it was imported; each member's status says why"

    def test_its_members_and_where_their_statuses_are(self):
        children = [
            row(2, "acme/sub/a.csv", outcome=Outcome.PARTIAL, rows=3, outbox_files=[
                "acme/sub/a.csv.status.json", "acme/sub/a.csv.failures.csv", "acme/sub/a.csv.warnings.csv"]),
            row(3, "../evil.csv", outcome=Outcome.REJECTED, error="refused", outbox_files=[]),
        ]
        doc = members.archive_doc(self.ZIP, children, lambda c: (2, 1, 0) if c.id == 2 else (0, 0, 0))
        assert doc["members"] == [
            {"file": "acme/sub/a.csv", "status": Outcome.PARTIAL, "statusFile": "sub/a.csv.status.json",
             "rowsTotal": 3, "rowsProcessed": 2, "rowsFailed": 1, "rowsWithWarning": 0},
            {"file": "../evil.csv", "status": Outcome.REJECTED, "rowsTotal": 0, "rowsProcessed": 0, "rowsFailed": 0,
             "rowsWithWarning": 0, "error": "refused"},
        ]
        assert (doc["rowsTotal"], doc["rowsProcessed"], doc["rowsFailed"]) == (3, 2, 1)
        assert members.member_doc(self.ZIP) == {"archive": "acme/batch.zip"}
