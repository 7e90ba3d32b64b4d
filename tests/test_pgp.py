"""PGP drops: the keyring built from pgp.private_key_file, and decryption with the real gpg (keys made per session)."""

from __future__ import annotations

import io
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from dropzone import pgp
from dropzone.errors import ConfigError, DecryptUnavailableError, InputError
from dropzone.pgp import Keyring
from dropzone.unpack_config import PgpSettings
from tests import pgp_keys as keys_module
from tests.pgp_keys import PASSPHRASE, Keys

pgp_keys = keys_module.pgp_keys  # the session's keys (a fixture)

DATA = b"email,firstName\n" + b"".join(b"u%d@example.com,N%d\n" % (i, i) for i in range(1000))
BIG = os.urandom(3 << 20).hex().encode()  # incompressible: its ciphertext is megabytes too


@pytest.fixture(scope="module")
def keyring(pgp_keys: Keys, tmp_path_factory: pytest.TempPathFactory):
    """dropzone's keyring with ``ours``, shared by the decryption tests of this module."""
    base = tmp_path_factory.mktemp("kr")
    ring = Keyring.build(PgpSettings(private_key_file=pgp_keys.secret_key("ours", base / "ours.key")), base / "pgp")
    yield ring
    ring.close()


def damaged(message: bytes) -> bytes:
    """Bytes of the encrypted data (past the session key's packet) flipped: the integrity check must catch it."""
    return message[:200] + bytes(b ^ 0x55 for b in message[200:260]) + message[260:]


def decrypt(ring: Keyring, data: bytes, dest: Path, limit: int = 1 << 30) -> list[str]:
    return ring.decrypt(io.BytesIO(data), dest, limit=limit, overflow=lambda: "too big", shown="x.csv.pgp")


class TestVerdict:
    """gpg's status lines, read (a pure function; the lines are gpg 2.2's own)."""

    OK = "[GNUPG:] ENC_TO 062E 18 0\n[GNUPG:] BEGIN_DECRYPTION\n[GNUPG:] PLAINTEXT 62 0 \n[GNUPG:] DECRYPTION_OKAY\n"

    @pytest.mark.parametrize(
        ("stderr", "error", "ours", "note"),
        [
            (OK, None, None, "decrypted (PGP)"),
            (OK + "[GNUPG:] ERRSIG FC4D 22 10 00 1 9 BECD\n[GNUPG:] NO_PUBKEY FC4D\n", None, None, "not checked"),
            (OK + "[GNUPG:] GOODSIG CC35 Prot <p@x>\n", None, None, "signature is good"),
            ("[GNUPG:] PLAINTEXT 74 0 \n[GNUPG:] GOODSIG CC35 P\n", None, None, "signed but not encrypted"),
            ("[GNUPG:] ENC_TO B807 18 0\n[GNUPG:] NO_SECKEY B807\n[GNUPG:] DECRYPTION_FAILED\n",
             "another key (key ID B807)", None, None),
            ("[GNUPG:] NEED_PASSPHRASE_SYM 9 3 2\n[GNUPG:] DECRYPTION_FAILED\n", "encrypted with a password", None,
             None),
            ("[GNUPG:] PLAINTEXT 74 0 \n[GNUPG:] BADSIG CC35 Prot <p@x>\n", "signature is BAD", None, None),
            ("[GNUPG:] BEGIN_DECRYPTION\n[GNUPG:] BADMDC\n", "damaged or was modified", None, None),
            ("[GNUPG:] NODATA 3\n", "no OpenPGP data", None, None),
            ("gpg: CRC error; 29CED5 - B83BC9\n", "cannot be decrypted (CRC error", None, None),
            ("[GNUPG:] ERROR pkdecrypt_failed 67108875\n[GNUPG:] DECRYPTION_FAILED\n", None, "passphrase", None),
            ("[GNUPG:] NEED_PASSPHRASE 062E CC35 18 0\n", None, "passphrase", None),
            ("gpg: can't connect to the agent: IPC connect call failed\n", None, "agent", None),
            # "agent" in text the partner controls (a signer's issuer, a key server) is no agent trouble of ours.
            (OK + 'gpg:                issuer "x@agentur.de"\n[GNUPG:] GOODSIG CC35 Prot <p@x>\n', None, None,
             "signature is good"),
        ],
    )
    def test_table(self, stderr, error, ours, note):
        found = pgp.verdict(stderr, shown="x.pgp", ours="FPR")
        assert (found.error is None) if error is None else (error in (found.error or ""))
        assert (found.ours is None) if ours is None else (ours in (found.ours or ""))
        if note:
            assert any(note in n for n in found.notes)


class TestKeyring:
    def test_a_private_home_under_the_parent(self, keyring, pgp_keys):
        assert stat.S_IMODE(keyring.home.stat().st_mode) == 0o700
        assert stat.S_IMODE(keyring.home.parent.stat().st_mode) == 0o700
        assert keyring.fingerprint == pgp_keys.fingerprint("ours")

    def test_a_passphrase_protected_key_with_its_passphrase(self, pgp_keys, tmp_path, caplog):
        """It decrypts; neither the passphrase nor the key's bytes reach any log, at any level."""
        caplog.set_level(logging.DEBUG)
        settings = PgpSettings(private_key_file=pgp_keys.secret_key("prot", tmp_path / "p.key", armor=False),
                               passphrase=PASSPHRASE)
        ring = Keyring.build(settings, tmp_path / "pgp")
        try:
            assert decrypt(ring, pgp_keys.encrypt(DATA, "prot"), tmp_path / "out")
            assert (tmp_path / "out").read_bytes() == DATA
            with pytest.raises(InputError):
                decrypt(ring, pgp_keys.encrypt(DATA, "other"), tmp_path / "out2")
        finally:
            ring.close()
        assert not ring.home.exists()
        key = (tmp_path / "p.key").read_bytes()
        logged = caplog.text
        assert PASSPHRASE not in logged and repr(key[:64])[2:-1] not in logged

    @pytest.mark.parametrize(
        ("who", "passphrase", "key", "words"),
        [
            ("prot", "wrong", "pgp.passphrase_file", "does not unlock"),
            ("prot", None, "pgp.private_key_file", "protected by a passphrase: set pgp.passphrase_file"),
        ],
    )
    def test_a_passphrase_that_does_not_unlock_is_a_config_error(self, pgp_keys, tmp_path, who, passphrase, key,
                                                                  words):
        settings = PgpSettings(private_key_file=pgp_keys.secret_key(who, tmp_path / "k"), passphrase=passphrase)
        with pytest.raises(ConfigError, match=f"dz.yaml: {key}: .*{words}"):
            Keyring.build(settings, tmp_path / "pgp", source="dz.yaml")
        assert list((tmp_path / "pgp").iterdir()) == []  # nothing half-built is left

    @pytest.mark.parametrize(
        ("content", "words"),
        [
            (None, "cannot read"),
            (b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nnot a key\n", "holds no OpenPGP key"),
            ("public", "a public key only"),
        ],
    )
    def test_a_bad_key_file_names_the_key(self, pgp_keys, tmp_path, content, words):
        path = tmp_path / "k"
        if content == "public":
            pgp_keys.public_key("ours", path)
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(ConfigError, match=f"dz.yaml: pgp.private_key_file: .*{words}"):
            Keyring.build(PgpSettings(private_key_file=path), tmp_path / "pgp", source="dz.yaml")

    def test_a_long_state_dir_still_gets_an_agent(self, pgp_keys, tmp_path):
        """gpg-agent's socket path is limited to ~107 bytes: a long state_dir is reached through a short link."""
        parent = tmp_path / ("d" * 100) / "pgp"
        ring = Keyring.build(PgpSettings(private_key_file=pgp_keys.secret_key("ours", tmp_path / "k")), parent)
        try:
            assert ring.gpg_home != ring.home and ring.gpg_home.resolve() == ring.home.resolve()
            decrypt(ring, pgp_keys.encrypt(DATA), tmp_path / "out")
            assert (tmp_path / "out").read_bytes() == DATA
        finally:
            ring.close()
        assert not ring.gpg_home.parent.exists() and not ring.home.exists()

    def test_sweep_removes_what_a_crash_left(self, pgp_keys, tmp_path):
        ring = Keyring.build(PgpSettings(private_key_file=pgp_keys.secret_key("ours", tmp_path / "k")),
                             tmp_path / "pgp")
        Keyring.sweep(tmp_path / "pgp")
        assert list((tmp_path / "pgp").iterdir()) == []
        ring.close()


class TestDecrypt:
    def test_the_right_key(self, keyring, pgp_keys, tmp_path):
        notes = decrypt(keyring, pgp_keys.encrypt(DATA, armor=True), tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == DATA and notes == ["decrypted (PGP) before import"]
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o600

    def test_signed_by_a_key_we_cannot_check(self, keyring, pgp_keys, tmp_path):
        notes = decrypt(keyring, pgp_keys.encrypt(DATA, sign="other"), tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == DATA
        assert any("signature was not checked" in n for n in notes)

    @pytest.mark.parametrize(
        ("make", "words"),
        [
            (lambda k: k.encrypt(DATA, "other"), "encrypted for another key"),
            (lambda k: k.encrypt(DATA)[:200], "cannot be decrypted|no OpenPGP data"),
            (lambda k: damaged(k.encrypt(DATA)), "damaged or was modified"),
            (lambda k: DATA, "no OpenPGP data"),
            (lambda k: b"", "no OpenPGP data"),
            (lambda k: k.symmetric(DATA), "encrypted with a password"),
            # Larger than a pipe's buffer: gpg stops reading part-way; its verdict still comes through.
            (lambda k: k.symmetric(BIG), "encrypted with a password"),
            (lambda k: damaged(k.encrypt(BIG)), "damaged or was modified"),
            (lambda k: k.clearsign(b"email\na@x.com\n", "ours").replace(b"a@x.com", b"b@x.com"), "signature is BAD"),
        ],
    )
    def test_what_is_refused_and_why(self, keyring, pgp_keys, tmp_path, make, words):
        with pytest.raises(InputError, match=words) as info:
            decrypt(keyring, make(pgp_keys), tmp_path / "out")
        assert str(info.value).startswith("x.csv.pgp: ")
        assert not (tmp_path / "out").exists(), "no plaintext is left behind"

    def test_a_compressed_bomb_stops_at_its_bound(self, keyring, pgp_keys, tmp_path):
        """gpg compresses before it encrypts: 64 MiB of zeros is a small message; gpg is stopped at the bound."""
        bomb = pgp_keys.encrypt(b"\0" * (64 << 20))
        assert len(bomb) < 1 << 20
        started = time.monotonic()
        with pytest.raises(InputError, match="too big"):
            decrypt(keyring, bomb, tmp_path / "out", limit=1 << 20)
        assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()

    def test_a_closed_keyring_is_ours_to_fix(self, pgp_keys, tmp_path):
        ring = Keyring.build(PgpSettings(private_key_file=pgp_keys.secret_key("ours", tmp_path / "k")),
                             tmp_path / "pgp")
        ring.close()
        with pytest.raises(DecryptUnavailableError):
            decrypt(ring, pgp_keys.encrypt(DATA), tmp_path / "out")

    def test_the_passphrase_is_never_on_a_command_line(self, pgp_keys, tmp_path, monkeypatch):
        """While gpg runs (seen from its first plaintext block), no process's arguments hold the passphrase."""
        settings = PgpSettings(private_key_file=pgp_keys.secret_key("prot", tmp_path / "k"), passphrase=PASSPHRASE)
        ring = Keyring.build(settings, tmp_path / "pgp")
        seen: list[str] = []
        write = pgp._Sink.__call__

        def spy(sink: pgp._Sink, data: bytes) -> bool:
            if not seen:
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
                    except OSError:
                        pass
            return write(sink, data)

        monkeypatch.setattr(pgp._Sink, "__call__", spy)
        try:
            # More than a pipe holds, so gpg is still writing when the first block arrives.
            decrypt(ring, pgp_keys.encrypt(os.urandom(1 << 20).hex().encode(), "prot"), tmp_path / "out")
        finally:
            ring.close()
        assert any("--decrypt" in args for args in seen), "gpg was running"
        assert not any(PASSPHRASE in args for args in seen)


def test_a_stuck_gpg_is_stopped_soon_and_rests_without_holding_the_loop(pgp_keys, tmp_path, monkeypatch):
    """A gpg that writes nothing (a stuck agent) is killed after DECRYPT_STALL_S, reported as ours (the file
    stays claimed, never Rejected), and gpg rests DECRYPT_REST_S: the next file fails at once, not after
    another stall (attack review: the loop waited the whole 240 s deadline per file)."""
    fake, stuck = tmp_path / "bin", tmp_path / "stuck"
    fake.mkdir()
    (fake / "gpg").write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --decrypt ] && [ -e {stuck} ] && exec sleep 600; done\n'
        'exec /usr/bin/gpg "$@"\n'
    )
    (fake / "gpg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(pgp.D, "DECRYPT_STALL_S", 0.5)
    ring = Keyring.build(PgpSettings(private_key_file=pgp_keys.secret_key("ours", tmp_path / "ours.key")),
                         tmp_path / "kr")
    try:
        stuck.touch()
        started = time.monotonic()
        with pytest.raises(DecryptUnavailableError, match="wrote nothing"):
            decrypt(ring, pgp_keys.encrypt(DATA), tmp_path / "out1")
        assert time.monotonic() - started < 10
        started = time.monotonic()
        with pytest.raises(DecryptUnavailableError, match="tried again in"):
            decrypt(ring, pgp_keys.encrypt(DATA), tmp_path / "out2")
        assert time.monotonic() - started < 1
        assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    finally:
        ring.close()
