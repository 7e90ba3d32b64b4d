"""Compressed, encrypted and spreadsheet drops end to end: a real daemon, the simulator over loopback, real files."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import random
import zipfile

import openpyxl
import pytest

from dropzone import defaults as D
from tests import pgp_keys as keys_module
from tests.helpers import ROUTES, archived, daemons, drop, make_config, run_until_idle, status_of

pgp_keys = keys_module.pgp_keys  # the session's keys (a fixture)


@pytest.fixture
def daemon_factory(tmp_path, simulator):
    yield from daemons(tmp_path, simulator.base_url)


def leads(n: int, start: int = 0) -> bytes:
    return b"email,firstName\n" + b"".join(b"u%d@example.com,Name %d\n" % (i, i) for i in range(start, start + n))


def work_area(tmp_path) -> list[str]:
    """What is left in the daemon's work area (decoded plaintext must not outlive its file's report)."""
    work = tmp_path / "state" / "work"
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []


class TestGzip:
    def test_gz_drops_good_broken_and_bombs(self, tmp_path, simulator, daemon_factory):
        """One daemon, several drops at once (each test daemon costs a second): a good gz is imported by the
        route of the name inside; a damaged one, two bombs and what the nesting rule refuses are Rejected with
        the reason, kept whole, and leave nothing in the work area."""
        daemon = daemon_factory(extra="max_expanded_bytes: 1500000\nmax_compression_ratio: 20")
        good = drop(tmp_path, "acme/leads_z.csv.gz", gzip.compress(leads(3))).read_bytes()
        drop(tmp_path, "leads_f.csv.gz", gzip.compress(b"email,firstName\na@example.com,A\n,NoEmail\n"))
        broken = drop(tmp_path, "leads_b.csv.gz", gzip.compress(leads(2000))[:-100]).read_bytes()
        # 32 MiB of one repeated row in ~32 kB: stopped after 1 MiB of output, never written whole.
        drop(tmp_path, "leads_bomb.csv.gz", gzip.compress(b"email\n" + b"a@example.com\n" * ((32 << 20) // 14)))
        # Random rows compress poorly (no ratio alarm) but expand past max_expanded_bytes.
        rng = random.Random(7)
        rows = b"".join(b"%x@example.com,%x\n" % (rng.getrandbits(64), rng.getrandbits(64)) for _ in range(60_000))
        drop(tmp_path, "leads_big.csv.gz", gzip.compress(b"email,firstName\n" + rows))
        drop(tmp_path, "leads_n.csv.gz.gz", b"whatever")
        drop(tmp_path, "leads_n.csv.pgp", b"whatever")
        run_until_idle(daemon)

        status = status_of(tmp_path, "acme/leads_z.csv.gz")
        assert status["status"] == "Complete", status
        assert (status["rowsTotal"], status["route"]["listId"], status["route"]["format"]) == (3, 1234, "csv")
        assert any("decompressed (gzip)" in note for note in status["notes"])
        emails = sorted(r["row"]["email"] for r in simulator.imported_rows())
        assert emails == ["a@example.com"] + [f"u{i}@example.com" for i in range(3)]
        # Failures point at lines of the decompressed file.
        assert status_of(tmp_path, "leads_f.csv.gz")["status"] == "Partial"
        failures = (tmp_path / "outbox" / "leads_f.csv.gz.failures.csv").read_text().splitlines()
        assert failures[1].endswith(",3")

        rejected = {
            "leads_b.csv.gz": "the gzip data ends too soon",
            "leads_bomb.csv.gz": "more than 20 times its compressed size (max_compression_ratio)",
            "leads_big.csv.gz": "more than 1,500,000 bytes (max_expanded_bytes)",
            "leads_n.csv.gz.gz": "at most one decryption (.pgp, .gpg, .asc) and then one decompression",
            "leads_n.csv.pgp": "no private key to decrypt it",
        }
        for name, words in rejected.items():
            status = status_of(tmp_path, name)
            assert status["status"] == "Rejected" and words in status["error"]["message"], (name, status)
        kept = {p.name: p for p in archived(tmp_path)}
        assert kept["leads_z.csv.gz"].read_bytes() == good  # the original, still compressed
        assert "failed" in kept["leads_b.csv.gz"].parts and kept["leads_b.csv.gz"].read_bytes() == broken
        assert len(simulator.submissions()) <= 2 and work_area(tmp_path) == []

    def test_a_marker_route_waits_for_the_marker_of_the_gz(self, tmp_path, simulator, daemon_factory):
        daemon = daemon_factory(routes='\n      - match: "leads_*.csv"\n        object: leads\n        marker: true\n')
        drop(tmp_path, "leads_m.csv.gz", gzip.compress(leads(1)))
        for _ in range(5):
            daemon.run_once()
        assert simulator.submissions() == []
        drop(tmp_path, "leads_m.csv.gz.done", b"")
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_m.csv.gz")["status"] == "Complete"
        assert sorted(p.name for p in archived(tmp_path)) == ["leads_m.csv.gz", "leads_m.csv.gz.marker"]



class TestPgp:
    def test_pgp_drops(self, tmp_path, simulator, daemon_factory, pgp_keys):
        """Decrypted with the configured key, then (for .csv.gz.pgp) decompressed, then routed by the name
        inside; a file for another key or a damaged one is Rejected with gpg's reason; no plaintext is left."""
        pgp_keys.secret_key("ours", tmp_path / "ours.key")
        daemon = daemon_factory(extra="pgp:\n  private_key_file: ours.key")
        [home] = (tmp_path / "state" / "pgp").iterdir()
        assert (home.stat().st_mode & 0o777) == 0o700
        sealed = drop(tmp_path, "leads_p.csv.pgp", pgp_keys.encrypt(leads(2))).read_bytes()
        drop(tmp_path, "acme/leads_q.csv.gz.asc", pgp_keys.encrypt(gzip.compress(leads(2, start=10)), armor=True))
        drop(tmp_path, "leads_o.csv.gpg", pgp_keys.encrypt(leads(1), "other"))
        drop(tmp_path, "leads_d.csv.pgp", pgp_keys.encrypt(leads(50))[:300])
        drop(tmp_path, "acme/more.zip.gpg", pgp_keys.encrypt(make_zip([("leads_y.csv", leads(1, start=30))])))
        run_until_idle(daemon)

        status = status_of(tmp_path, "leads_p.csv.pgp")
        assert status["status"] == "Complete" and "decrypted (PGP) before import" in status["notes"]
        status = status_of(tmp_path, "acme/leads_q.csv.gz.asc")
        assert status["status"] == "Complete" and status["rowsTotal"] == 2
        assert "decrypted (PGP) before import" in status["notes"][0] and "gzip" in status["notes"][1]
        emails = sorted(r["row"]["email"] for r in simulator.imported_rows())
        assert emails == sorted(["u0@example.com", "u1@example.com", "u10@example.com", "u11@example.com",
                                 "u30@example.com"])
        assert status_of(tmp_path, "acme/leads_y.csv")["archive"] == "acme/more.zip.gpg"
        assert status_of(tmp_path, "acme/more.zip.gpg")["status"] == "Complete"
        other = status_of(tmp_path, "leads_o.csv.gpg")
        assert other["status"] == "Rejected"
        assert "encrypted for another key" in other["error"]["message"]
        assert pgp_keys.fingerprint("ours") in other["error"]["message"]  # the key to encrypt to
        assert status_of(tmp_path, "leads_d.csv.pgp")["status"] == "Rejected"
        kept = {p.name: p for p in archived(tmp_path)}
        assert kept["leads_p.csv.pgp"].read_bytes() == sealed  # archived as it came, still encrypted
        assert work_area(tmp_path) == []

        # A reload imports the key file again: a rotated key takes effect, the old keyring goes.
        pgp_keys.secret_key("other", tmp_path / "ours.key")
        extra = "pgp: {private_key_file: ours.key}"
        daemon._reload_config = lambda: make_config(tmp_path, simulator.base_url, extra=extra)
        daemon.reload()
        assert [p.name for p in (tmp_path / "state" / "pgp").iterdir()] != [home.name]
        drop(tmp_path, "leads_r.csv.pgp", pgp_keys.encrypt(leads(1, start=20), "other"))
        run_until_idle(daemon)
        assert status_of(tmp_path, "leads_r.csv.pgp")["status"] == "Complete"
        daemon.close()
        assert list((tmp_path / "state" / "pgp").iterdir()) == []  # the keyring goes with the daemon

    def test_a_bad_key_is_a_configuration_error(self, tmp_path, simulator, pgp_keys):
        """The daemon does not start, and `dropzone check` names the key (exit 2)."""
        from dropzone.daemon import Daemon
        from dropzone.errors import ConfigError
        from tests.test_cli import dropzone

        pgp_keys.public_key("ours", tmp_path / "ours.pub")
        config = make_config(tmp_path, simulator.base_url, extra="pgp:\n  private_key_file: ours.pub")
        with pytest.raises(ConfigError, match=r"pgp\.private_key_file: .* a public key only"):
            Daemon(config)
        text = (
            f"marketo: {{endpoint: '{simulator.base_url}', client_id: a, client_secret: b}}\nstate_dir: state\n"
            "pgp: {private_key_file: ours.pub}\n"
            "inboxes: [{path: inbox, outbox: outbox, routes: [{match: '*.csv', object: leads}]}]\n"
        )
        (tmp_path / "dz.yaml").write_text(text)
        result = dropzone("check", "--config", str(tmp_path / "dz.yaml"), "--offline")
        assert result.returncode == 2 and "pgp.private_key_file" in result.stderr, result.stderr
        pgp_keys.secret_key("ours", tmp_path / "ours.pub")  # now a private key under that name
        result = dropzone("check", "--config", str(tmp_path / "dz.yaml"), "--offline")
        assert result.returncode == 0, result.stderr
        assert f"pgp: the private key {pgp_keys.fingerprint('ours')} decrypts" in result.stdout


def make_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def xlsx(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    book.active.title = "Contacts"
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


XLSX_ROUTE = '\n      - match: "*.xlsx"\n        object: leads\n        sheet: Contacts\n'


class TestZip:
    def test_each_member_is_a_file_of_its_own(self, tmp_path, simulator, daemon_factory):
        """Members routed by their own names inside the zip's folder, each with its own status (and failures);
        the zip keeps one status listing them and is archived whole; a workbook member is converted."""
        daemon = daemon_factory(routes=ROUTES + XLSX_ROUTE)
        original = drop(tmp_path, "acme/batch.zip", make_zip([
            ("leads_a.csv", leads(2)),
            ("sub/", b""),
            ("sub/leads_b.csv", b"email,firstName\nb@example.com,B\n,NoEmail\n"),
            ("cars_c.tsv", b"color\tmake\tmodel\tvin\nred\tbmw\t2002\tWBA4R7C55HK895912\n"),
            # Marketo checks these types: a date in ISO 8601, an integer without a trailing ".0".
            ("book.xlsx", xlsx([["email", "dateOfBirth", "leadScore"], ["x@example.com", dt.date(1990, 5, 2), 42]])),
            ("notes.txt", b"not for Marketo\n"),
            ("../evil.csv", leads(1)),
        ])).read_bytes()
        run_until_idle(daemon)

        expected = {
            "acme/leads_a.csv": "Complete", "acme/sub/leads_b.csv": "Partial", "acme/cars_c.tsv": "Complete",
            "acme/book.xlsx": "Complete", "acme/notes.txt": "Rejected",
        }
        for name, outcome in expected.items():
            status = status_of(tmp_path, name)
            assert (status["status"], status["archive"]) == (outcome, "acme/batch.zip"), (name, status)
        assert "no route matches" in status_of(tmp_path, "acme/notes.txt")["error"]["message"]
        assert (tmp_path / "outbox" / "acme/sub/leads_b.csv.failures.csv").read_text().splitlines()[1].endswith(",3")
        assert any("sheet 'Contacts'" in n for n in status_of(tmp_path, "acme/book.xlsx")["notes"])
        rows = {r["row"].get("email") or r["row"].get("vin"): r["row"] for r in simulator.imported_rows()}
        assert (rows["x@example.com"]["dateOfBirth"], rows["x@example.com"]["leadScore"]) == ("1990-05-02", "42")
        assert sorted(rows) == ["WBA4R7C55HK895912", "b@example.com", "u0@example.com", "u1@example.com",
                                "x@example.com"]

        zipped = status_of(tmp_path, "acme/batch.zip")
        assert zipped["status"] == "Partial" and zipped["route"] is None
        listed = {m["file"]: m for m in zipped["members"]}
        assert listed["acme/sub/leads_b.csv"]["statusFile"] == "sub/leads_b.csv.status.json"
        assert (listed["acme/sub/leads_b.csv"]["rowsProcessed"], listed["acme/sub/leads_b.csv"]["rowsFailed"]) == (1, 1)
        assert listed["../evil.csv"]["status"] == "Rejected" and "statusFile" not in listed["../evil.csv"]
        assert "'..'" in listed["../evil.csv"]["error"]
        assert (zipped["rowsTotal"], zipped["rowsProcessed"]) == (6, 5)
        assert not list((tmp_path / "outbox").rglob("evil*")) and not (tmp_path / "evil.csv").exists()
        [kept] = archived(tmp_path)
        assert kept.name == "batch.zip" and kept.read_bytes() == original and "failed" not in kept.parts
        assert work_area(tmp_path) == []

    def test_a_crash_mid_unpack_neither_loses_nor_doubles(self, tmp_path, simulator, monkeypatch):
        """Killed while the third member is taken out: on restart the zip is unpacked again from the start
        (its members are journalled in one transaction, after they are all out), each imported once."""
        from dropzone import decoders
        from dropzone.daemon import Daemon
        from dropzone.store import Store

        class Killed(BaseException):
            pass

        copy = decoders.copy_member
        calls = []

        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise Killed
            return copy(*args, **kwargs)

        monkeypatch.setattr(decoders, "copy_member", dying)
        config = make_config(tmp_path, simulator.base_url)
        drop(tmp_path, "batch.zip", make_zip([(f"leads_{i}.csv", leads(1, start=i)) for i in range(4)]))
        first = Daemon(config, max_idle=0.05)
        first.start()
        try:
            with pytest.raises(Killed):
                run_until_idle(first)
        finally:
            first.close()
        store = Store(config.state_dir, lock=False)
        try:
            assert [r.relpath for r in store.files()] == ["batch.zip"]  # claimed, no member recorded
        finally:
            store.close()
        monkeypatch.setattr(decoders, "copy_member", copy)
        second = Daemon(config, max_idle=0.05)
        second.start()
        try:
            run_until_idle(second)
        finally:
            second.close()
        assert status_of(tmp_path, "batch.zip")["status"] == "Complete"
        assert sorted(r["row"]["email"] for r in simulator.imported_rows()) == [f"u{i}@example.com" for i in range(4)]
        assert work_area(tmp_path) == []


def test_a_file_gpg_keeps_stalling_on_is_rejected_and_others_go_on(tmp_path, simulator, daemon_factory, pgp_keys,
                                                                   monkeypatch):
    """gpg that writes nothing on one file (many bogus key packets for our key make it try each, silently) is
    ours at first, then the file's: after DECRYPT_STALLS_PER_FILE stalls, with the agent restarted between
    them, the file is Rejected; a plain file dropped beside it is imported meanwhile."""
    fake, stuck = tmp_path / "bin", tmp_path / "stuck"
    fake.mkdir()
    (fake / "gpg").write_text(  # stuck once the keyring is built (building it decrypts a probe)
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --decrypt ] && [ -e {stuck} ] && exec sleep 600; done\n'
        'exec /usr/bin/gpg "$@"\n'
    )
    (fake / "gpg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(D, "DECRYPT_STALL_S", 0.3)
    monkeypatch.setattr(D, "DECRYPT_REST_S", 0.1)
    pgp_keys.secret_key("ours", tmp_path / "ours.key")
    daemon = daemon_factory(extra="pgp:\n  private_key_file: ours.key")
    stuck.touch()
    drop(tmp_path, "leads_s.csv.pgp", pgp_keys.encrypt(leads(2)))
    drop(tmp_path, "leads_plain.csv", leads(1, start=50))
    run_until_idle(daemon)
    stuck = status_of(tmp_path, "leads_s.csv.pgp")
    assert stuck["status"] == "Rejected" and "gpg made no progress on this file 3 times" in stuck["error"]["message"]
    assert status_of(tmp_path, "leads_plain.csv")["status"] == "Complete"
