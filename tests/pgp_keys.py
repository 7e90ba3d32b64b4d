"""Throwaway OpenPGP keys for the tests, made once per session with the real gpg in a temporary GNUPGHOME.

``ours`` (no passphrase) and ``prot`` (with one) are keys dropzone may be given; ``other`` is a key dropzone
never holds. Fast key types (ed25519 for signing, cv25519 for encryption: gpg's ``future-default``).
Import the ``pgp_keys`` fixture into a test module to use it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"


@dataclass
class Keys:
    home: Path  # the partners' side: every key, public and secret

    def gpg(self, *args: str, data: bytes = b"", passphrase: str | None = None) -> bytes:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--trust-model", "always",
               "--pinentry-mode", "loopback"]
        if passphrase is not None:
            cmd += ["--passphrase", passphrase]
        done = subprocess.run([*cmd, *args], input=data, capture_output=True, timeout=60, check=True)
        return done.stdout

    def fingerprint(self, who: str) -> str:
        listing = self.gpg("--with-colons", "--list-keys", f"{who}@example.com").decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def encrypt(self, data: bytes, to: str = "ours", *, sign: str | None = None, armor: bool = False) -> bytes:
        args = ["--encrypt", "--recipient", f"{to}@example.com"]
        if sign:
            args += ["--sign", "--local-user", f"{sign}@example.com"]
        if armor:
            args.append("--armor")
        return self.gpg(*args, data=data, passphrase=PASSPHRASE if sign == "prot" else "")

    def symmetric(self, data: bytes) -> bytes:
        return self.gpg("--symmetric", data=data, passphrase="a password")

    def clearsign(self, data: bytes, by: str) -> bytes:
        return self.gpg("--clearsign", "--local-user", f"{by}@example.com", data=data,
                        passphrase=PASSPHRASE if by == "prot" else "")

    def secret_key(self, who: str, dest: Path, *, armor: bool = True) -> Path:
        dest.write_bytes(self.gpg(*(["--armor"] if armor else []), "--export-secret-keys", f"{who}@example.com",
                                  passphrase=PASSPHRASE if who == "prot" else ""))
        return dest

    def public_key(self, who: str, dest: Path) -> Path:
        dest.write_bytes(self.gpg("--armor", "--export", f"{who}@example.com"))
        return dest


@pytest.fixture(scope="session")
def pgp_keys() -> Iterator[Keys]:
    if shutil.which("gpg") is None:
        pytest.fail("GnuPG's gpg is needed (apt-get install gnupg; .ci/run installs it)")
    home = Path(tempfile.mkdtemp(prefix="dzk"))  # short: gpg-agent's socket lives here
    keys = Keys(home)
    for who, passphrase in (("ours", ""), ("prot", PASSPHRASE), ("other", "")):
        keys.gpg("--quick-gen-key", f"{who.title()} <{who}@example.com>", "future-default", "default", "never",
                 passphrase=passphrase)
    yield keys
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=10,
                   check=False)
    shutil.rmtree(home, ignore_errors=True)
