"""Compressed, encrypted and spreadsheet drops: the pure rules (table tests) and the streaming decoders."""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import time
import zlib
from pathlib import Path

import pytest

from dropzone import decoders, unpacking
from dropzone.config import Route
from dropzone.errors import ConfigError, InputError
from dropzone.jobs import Outcome
from dropzone.kinds import FileFormat, Layer, ObjectKind
from dropzone.routing import NoMatch, RouteMatch
from dropzone.unpack_config import UnpackLimits
from dropzone.unpacking import Entry, Plan

P, G, Z = Layer.PGP, Layer.GZIP, Layer.ZIP


class TestPeel:
    @pytest.mark.parametrize(
        ("relpath", "name", "layers", "sheet"),
        [
            ("leads.csv", "leads.csv", (), False),
            ("leads.csv.gz", "leads.csv", (G,), False),
            ("acme/leads.csv.GZ", "acme/leads.csv", (G,), False),
            ("leads.csv.pgp", "leads.csv", (P,), False),
            ("leads.csv.gpg", "leads.csv", (P,), False),
            ("leads.csv.asc", "leads.csv", (P,), False),
            ("leads.csv.gz.pgp", "leads.csv", (P, G), False),
            ("batch.zip", "batch", (Z,), False),
            ("batch.zip.gpg", "batch", (P, Z), False),
            ("book.xlsx", "book.xlsx", (), True),
            ("book.XLSX.gz", "book.XLSX", (G,), True),
            ("x.csv.gz.gz", "x.csv", (G, G), False),
            ("x.csv.pgp.gz", "x.csv", (G, P), False),
            (".gz", ".gz", (), False),  # no stem: not a layer (and hidden: intake never takes it)
            ("gz", "gz", (), False),
            ("a/.xlsx", "a/.xlsx", (), False),
            ("data.gz", "data", (G,), False),
        ],
    )
    def test_layers_and_the_name_routes_see(self, relpath, name, layers, sheet):
        assert unpacking.peel(relpath) == Plan(relpath=relpath, name=name, layers=layers, sheet=sheet)

    def test_only_a_zip_is_an_archive(self):
        assert unpacking.peel("a.zip.pgp").archive and not unpacking.peel("a.csv.gz.pgp").archive


class TestNestingRule:
    @pytest.mark.parametrize("relpath", ["a.csv", "a.csv.gz", "a.zip", "a.csv.pgp", "a.csv.gz.pgp", "a.zip.asc",
                                         "a.xlsx.gz.gpg"])
    def test_allowed(self, relpath):
        unpacking.check(unpacking.peel(relpath), pgp=True)

    @pytest.mark.parametrize(
        ("relpath", "words"),
        [
            ("a.csv.gz.gz", "at most one decryption"),
            ("a.csv.pgp.gz", "at most one decryption"),
            ("a.zip.gz", "at most one decryption"),
            ("a.csv.gz.zip", "at most one decryption"),
            ("a.csv.pgp.pgp", "at most one decryption"),
            ("a.zip.gz.pgp", "at most one decryption"),
        ],
    )
    def test_refused(self, relpath, words):
        with pytest.raises(InputError, match=words):
            unpacking.check(unpacking.peel(relpath), pgp=True)

    def test_an_encrypted_drop_without_a_key_is_refused_with_what_to_do(self):
        with pytest.raises(InputError, match=r"no private key to decrypt it .*send it unencrypted"):
            unpacking.check(unpacking.peel("a.csv.pgp"), pgp=False)
        unpacking.check(unpacking.peel("a.csv.gz"), pgp=False)

    @pytest.mark.parametrize("relpath", ["in.zip", "in.csv.gz", "in.csv.pgp"])
    def test_nothing_wrapped_inside_a_zip(self, relpath):
        with pytest.raises(InputError, match="inside a zip is not unpacked"):
            unpacking.check(unpacking.peel(relpath), pgp=True, member=True)
        unpacking.check(unpacking.peel("in.xlsx"), pgp=True, member=True)


def routes(*specs: tuple[str, FileFormat | None]) -> tuple[Route, ...]:
    return tuple(Route(match=m, object=ObjectKind.LEADS, format=f) for m, f in specs)


class TestRoute:
    def test_a_gz_follows_the_route_of_the_name_inside(self):
        match = unpacking.route(routes(("leads_*.csv", None)), unpacking.peel("leads_1.csv.gz"))
        assert isinstance(match, RouteMatch)
        assert (match.relpath, match.format) == ("leads_1.csv", FileFormat.CSV)

    def test_the_format_comes_from_the_inner_extension(self):
        match = unpacking.route(routes(("*", None)), unpacking.peel("cars.tsv.gz.pgp"))
        assert isinstance(match, RouteMatch) and match.format is FileFormat.TSV

    def test_no_route_says_which_name_routes_saw(self):
        match = unpacking.route(routes(("leads_*.csv", None)), unpacking.peel("other.csv.gz"))
        assert isinstance(match, NoMatch)
        assert "no route matches" in match.message and "'other.csv'" in match.message

    @pytest.mark.parametrize("fmt", [None, FileFormat.TSV])
    def test_a_workbook_is_sent_as_csv(self, fmt):
        match = unpacking.route(routes(("*.xlsx", fmt)), unpacking.peel("book.xlsx"))
        assert isinstance(match, RouteMatch) and match.format is FileFormat.CSV

    def test_a_workbook_no_route_takes_is_no_match(self):
        assert isinstance(unpacking.route(routes(("*.csv", None)), unpacking.peel("book.xlsx")), NoMatch)


LIMITS = UnpackLimits(max_expanded_bytes=10_000_000, max_archive_bytes=30_000_000, max_compression_ratio=100)


class TestBounds:
    @pytest.mark.parametrize(
        ("compressed", "room", "limit", "key"),
        [
            (1_000, None, 1 << 20, "max_compression_ratio"),  # the grace: small files may compress very well
            (50_000, None, 5_000_000, "max_compression_ratio"),
            (500_000, None, 10_000_000, "max_expanded_bytes"),
            (500_000, 2_000_000, 2_000_000, "max_archive_bytes"),
            (500_000, -5, 0, "max_archive_bytes"),
        ],
    )
    def test_the_tightest_bound_wins(self, compressed, room, limit, key):
        left = None if room is None else unpacking.Bound(room, "max_archive_bytes")
        bound = unpacking.expansion_bound(compressed, LIMITS, room=left)
        assert (bound.limit, bound.key) == (limit, key)

    @pytest.mark.parametrize(
        ("archive", "limit", "key"),
        [
            (1_000, 1 << 20, "max_compression_ratio"),  # one grace for the whole archive, not one per member
            (100_000, 10_000_000, "max_compression_ratio"),
            (1_000_000, 30_000_000, "max_archive_bytes"),
        ],
    )
    def test_an_archive_is_bound_by_its_own_size_too(self, archive, limit, key):
        bound = unpacking.archive_bound(archive, LIMITS)
        assert (bound.limit, bound.key) == (limit, key)

    @pytest.mark.parametrize(
        ("key", "words"),
        [
            ("max_compression_ratio", "more than 100 times its compressed size (max_compression_ratio)"),
            ("max_expanded_bytes", "more than 10,000,000 bytes (max_expanded_bytes)"),
            ("max_archive_bytes", "more than 30,000,000 bytes together (max_archive_bytes)"),
        ],
    )
    def test_each_refusal_names_its_setting(self, key, words):
        text = unpacking.too_big("x.gz", unpacking.Bound(10_000_000, key), LIMITS)
        assert text.startswith("x.gz: ") and words in text


class TestMembers:
    @pytest.mark.parametrize(
        ("name", "problem"),
        [
            ("a.csv", None),
            ("sub/dir/a.csv", None),
            ("sub/", None),
            ("../a.csv", "'..'"),
            ("sub/../../a.csv", "'..'"),
            ("/etc/a.csv", "absolute"),
            ("C:/a.csv", "drive letter"),
            ("c:a.csv", "drive letter"),
            ("sub\\a.csv", "backslash"),
            ("a\x00.csv", "control character"),
            ("a\n.csv", "control character"),
            ("a\x7f.csv", "control character"),
            ("sub//a.csv", "empty or '.'"),
            ("./a.csv", "empty or '.'"),
            ("d" * 256 + "/a.csv", "a folder in its name is longer than 255 bytes"),  # no outbox folder could hold it
            ("a" * 300 + ".csv", None),  # a long leaf is shortened for its result files
        ],
    )
    def test_names(self, name, problem):
        found = unpacking.name_problem(name)
        assert (found is None) if problem is None else (problem in (found or ""))

    @pytest.mark.parametrize(
        ("entry", "duplicate", "relpath", "error", "skip"),
        [
            (Entry("a.csv"), False, "acme/a.csv", None, False),
            (Entry("sub/a.csv", mode=stat.S_IFREG | 0o644), False, "acme/sub/a.csv", None, False),
            (Entry("sub/"), False, None, None, True),
            (Entry("sub/", mode=stat.S_IFDIR | 0o755), False, None, None, True),
            (Entry("__MACOSX/._a.csv"), False, None, None, True),
            (Entry(".DS_Store"), False, None, None, True),
            (Entry("../a.csv"), False, None, "'..'", False),
            (Entry("a.csv"), True, None, "more than once", False),
            (Entry("a.csv", mode=stat.S_IFLNK | 0o777), False, "acme/a.csv", "symbolic link", False),
            (Entry("a.csv", mode=stat.S_IFIFO | 0o644), False, "acme/a.csv", "not a regular file", False),
            (Entry("a.csv", encrypted=True), False, "acme/a.csv", "password-protected", False),
            (Entry("in.zip"), False, "acme/in.zip", "inside a zip is not unpacked", False),
            (Entry("a.csv.gz"), False, "acme/a.csv.gz", "inside a zip is not unpacked", False),
            (Entry("book.xlsx"), False, "acme/book.xlsx", None, False),
            (Entry("batch.zip"), False, None, "the archive's own name", False),  # its statuses would be the zip's
        ],
    )
    def test_verdicts(self, entry, duplicate, relpath, error, skip):
        verdict = unpacking.member_verdict(entry, "acme/batch.zip", duplicate)
        assert (verdict.relpath, verdict.skip) == (relpath, skip)
        assert (verdict.error is None) if error is None else (error in (verdict.error or ""))

    @pytest.mark.parametrize(
        ("name", "shown"),
        [("a.csv", "a.csv"), ("a\x00b", "a\\x00b"), ("a\nb\x7f", "a\\x0ab\\x7f"), ("caf\udce9", "caf\\xe9")],
    )
    def test_a_name_that_names_no_file_is_shown_escaped(self, name, shown):
        assert unpacking.escaped(name) == shown

    def test_members_of_an_archive_at_the_top_have_their_own_name(self):
        assert unpacking.member_verdict(Entry("a.csv"), "batch.zip", False).relpath == "a.csv"


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([Outcome.COMPLETE, Outcome.COMPLETE], Outcome.COMPLETE),
        ([Outcome.COMPLETE, Outcome.REJECTED], Outcome.PARTIAL),
        ([Outcome.PARTIAL], Outcome.PARTIAL),
        ([Outcome.REJECTED, Outcome.FAILED], Outcome.FAILED),
        ([Outcome.REJECTED, Outcome.REJECTED], Outcome.REJECTED),
        ([], Outcome.REJECTED),
    ],
)
def test_an_archive_outcome_from_its_members(outcomes, expected):
    assert unpacking.archive_outcome(outcomes) is expected


# ---- gzip --------------------------------------------------------------------------------------


def gunzip_all(data: bytes, limit: int = 1 << 30) -> bytes:
    stream = decoders.gunzip(io.BytesIO(data), limit=limit, overflow=lambda: "too big", shown="x.csv.gz")
    with stream:
        return stream.read()


class TestGunzip:
    def test_a_stream_is_decompressed(self):
        text = b"email\n" + b"".join(b"u%d@example.com\n" % i for i in range(50_000))
        assert gunzip_all(gzip.compress(text)) == text

    def test_every_member_of_a_multi_member_file(self):
        assert gunzip_all(gzip.compress(b"email\n") + gzip.compress(b"a@x.com\n")) == b"email\na@x.com\n"

    def test_exactly_at_the_bound_is_fine(self):
        assert gunzip_all(gzip.compress(b"x" * 1000), limit=1000) == b"x" * 1000

    @pytest.mark.parametrize(
        ("data", "words"),
        [
            (b"email\nnot gzip at all\n", "not gzip data"),
            (gzip.compress(b"email\na@x.com\n" * 1000)[:-40], "ends too soon"),
            (gzip.compress(b"email\n")[:-8] + b"\x00\x00\x00\x00\x06\x00\x00\x00", "checksum"),
            (gzip.compress(b"email\n")[:10] + b"\xff" * 30, "damaged"),
        ],
    )
    def test_a_broken_stream_is_the_partners_problem(self, data, words):
        with pytest.raises(InputError, match=words) as info:
            gunzip_all(data)
        assert not isinstance(info.value, OSError)
        assert str(info.value).startswith("x.csv.gz: cannot be decompressed")

    def test_a_bomb_stops_at_its_bound_quickly(self):
        bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB in ~64 kB
        started = time.monotonic()
        with pytest.raises(InputError, match="too big"):
            gunzip_all(bomb, limit=1 << 20)
        assert time.monotonic() - started < 2.0

    def test_a_zlib_stream_is_not_gzip(self):
        with pytest.raises(InputError, match="not gzip data"):
            gunzip_all(zlib.compress(b"email\n"))

    def test_copy_to_never_replaces_a_file(self, tmp_path):
        (tmp_path / "out").write_bytes(b"old")
        with pytest.raises(FileExistsError):
            decoders.copy_to(io.BytesIO(b"new"), tmp_path / "out")
        assert decoders.copy_to(io.BytesIO(b"new"), tmp_path / "fresh") == 3
        assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o600


# ---- configuration -------------------------------------------------------------------------------


class TestConfig:
    @staticmethod
    def parse(text: str, files: dict[str, str] | None = None):
        from dropzone.config import parse

        def read(path: str) -> str:
            if files is None or path not in files:
                raise FileNotFoundError(2, "No such file or directory")
            return files[path]

        base = (
            "marketo: {endpoint: 'https://x.mktorest.com', client_id: a, client_secret: b}\n"
            "state_dir: /var/lib/dz\n"
        )
        routes = "inboxes: [{path: /in, outbox: /out, routes: [{match: '*.csv', object: leads}]}]\n"
        return parse(base + (text if "inboxes" in text else text + routes), environ={}, read_file=read,
                     base_dir="/etc/dz")

    def test_defaults(self):
        cfg = self.parse("")
        assert cfg.pgp is None and cfg.unpack == UnpackLimits()
        assert cfg.unpack.max_compression_ratio == 100 and cfg.unpack.max_archive_members == 1000
        assert cfg.redacted()["pgp"] is None and cfg.redacted()["max_expanded_bytes"] == 2 << 30

    def test_bounds_are_top_level_keys(self):
        cfg = self.parse(
            "max_expanded_bytes: 5\nmax_archive_bytes: 6\nmax_archive_members: 7\nmax_compression_ratio: 8\n"
        )
        assert cfg.unpack == UnpackLimits(max_expanded_bytes=5, max_archive_bytes=6, max_archive_members=7,
                                          max_compression_ratio=8)
        with pytest.raises(ConfigError, match="max_compression_ratio: must be at least 2"):
            self.parse("max_compression_ratio: 1\n")

    def test_pgp_reads_the_passphrase_and_never_shows_it(self):
        cfg = self.parse(
            "pgp: {private_key_file: keys/p.key, passphrase_file: /run/creds/p.pass}\n",
            files={"/run/creds/p.pass": "correct horse\n"},
        )
        assert cfg.pgp is not None
        assert (cfg.pgp.private_key_file, cfg.pgp.passphrase) == (Path("/etc/dz/keys/p.key"), "correct horse")
        assert "correct horse" not in repr(cfg) and "correct horse" not in str(cfg.redacted())
        assert cfg.redacted()["pgp"]["passphrase"] == "********"

    @pytest.mark.parametrize(
        ("text", "files", "words"),
        [
            ("pgp: {}\n", None, "pgp.private_key_file: is required"),
            ("pgp: {private_key_file: k, passphrase_file: /p}\n", None, "pgp.passphrase_file: cannot read /p"),
            ("pgp: {private_key_file: k, passphrase_file: /p}\n", {"/p": "\n"}, "pgp.passphrase_file: /p is empty"),
            ("pgp: {private_key_file: k, passphrase_file: /p}\n", {"/p": "a\nb\n"}, "must hold one line"),
            ("pgp: {private_key_file: k, passphrase: x}\n", None, "pgp.passphrase: unknown key"),
        ],
    )
    def test_pgp_mistakes_name_the_key(self, text, files, words):
        with pytest.raises(ConfigError, match=re.escape(words)):
            self.parse(text, files)

    def test_a_workbook_route_needs_no_format_and_may_name_a_sheet(self):
        cfg = self.parse(
            "inboxes: [{path: /in, outbox: /out, routes: [{match: '*.xlsx', object: leads, sheet: Contacts}]}]\n"
        )
        route = cfg.inboxes[0].routes[0]
        assert (route.sheet, route.format) == ("Contacts", None)
        assert route.redacted()["sheet"] == "Contacts"

    @pytest.mark.parametrize(
        ("route", "words"),
        [
            ("{match: '*.csv.gz', object: leads}", "routes match the name inside a .gz file"),
            ("{match: 'batch*.zip', object: leads}", "routes match the name inside a .zip file"),
            ("{match: '*.PGP', object: leads}", "routes match the name inside a .PGP file"),
            ("{match: '*.csv', object: leads, sheet: One}", "sheet: applies to .xlsx workbooks only"),
            ("{match: '*.xls', object: leads}", "format: is required"),
        ],
    )
    def test_routes_that_could_never_match_are_refused(self, route, words):
        with pytest.raises(ConfigError, match=re.escape(words)):
            self.parse(f"inboxes: [{{path: /in, outbox: /out, routes: [{route}]}}]\n")
