"""PGP drops: a private keyring under ``state_dir``, and decryption with GnuPG within a bound.

Owns the keyring (``Keyring.build``: a fresh GnuPG home, mode 0700, below
``state_dir/pgp``, holding only the key of ``pgp.private_key_file``, checked
by decrypting a probe with the configured passphrase, so a bad key or
passphrase is a ``ConfigError`` at start, on reload and in ``dropzone
check``), its gpg-agent's life, and ``decrypt``: a partner's file streamed
through ``gpg --decrypt`` (python-gnupg), the plaintext written straight to
the file's work dir and gpg killed the moment it passes its bound.

Secrets: the passphrase goes to gpg on its stdin (``--passphrase-fd 0``),
never on a command line, and is never formatted into a message or a log
line; python-gnupg's own logger (which logs key material at debug) is held
at ERROR. ``verdict`` (pure, table-tested) reads gpg's status lines: a file
for another key, a password-encrypted file, a bad signature, damaged or
non-OpenPGP data are the partner's (``InputError``, in words they can act
on); a passphrase that does not unlock our key or an agent that does not
answer are ours (``DecryptUnavailableError``: the file stays claimed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import gnupg

from dropzone import defaults as D
from dropzone.errors import ConfigError, DecryptUnavailableError, InputError
from dropzone.unpack_config import PgpSettings

# python-gnupg logs the first bytes of imported keys, and every gpg status line, at debug.
logging.getLogger("gnupg").setLevel(logging.ERROR)

#: Longest GnuPG home whose agent sockets (``S.gpg-agent.browser``) still fit in a socket address.
_MAX_HOME = 80
#: What every gpg run gets: no prompt (the passphrase comes on a pipe), no network, plain English messages.
_OPTIONS = ["--pinentry-mode", "loopback", "--no-auto-key-retrieve", "--no-auto-key-locate", "--no-greeting"]
_PROBE = b"dropzone: can this key decrypt?\n"
#: gpg-error's code for a wrong (or missing) passphrase, in ``ERROR pkdecrypt_failed <code>``.
_BAD_PASSPHRASE_CODES = frozenset({11, 177})


class _Gpg(gnupg.GPG):  # type: ignore[misc]  # python-gnupg ships no type hints
    """python-gnupg, remembering its last gpg process so a runaway decryption can be stopped."""

    process: subprocess.Popen[bytes] | None = None

    def _open_subprocess(self, args: list[str], passphrase: bool = False) -> subprocess.Popen[bytes]:
        self.process = super()._open_subprocess(args, passphrase)
        return self.process

    def _handle_io(self, args: Any, fileobj_or_path: Any, result: Any, passphrase: Any = None,
                   binary: bool = False) -> Any:
        try:
            return super()._handle_io(args, fileobj_or_path, result, passphrase, binary)
        except BrokenPipeError:
            # gpg stopped reading its input (it refused the data part-way, or was stopped at the bound): its
            # output was collected all the same, and says why; a closed pipe is no disk trouble of ours.
            return result

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.kill()


# ---- what gpg said ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decryption's outcome from gpg's status lines: ``error`` for the partner, ``ours`` for the operator."""

    error: str | None = None
    ours: str | None = None
    notes: tuple[str, ...] = ()


def status_lines(stderr: str) -> list[tuple[str, str]]:
    """gpg's ``[GNUPG:] KEYWORD ARGS`` lines, as (keyword, args)."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, rest = line[9:].partition(" ")
            found.append((keyword, rest.strip()))
    return found


#: gpg's own words for a failing agent, at the start of its message: anywhere else in a line, "agent" may be a
#: partner's text gpg echoes (a signer's ``issuer "x@agentur.de"``, a key server's name).
_AGENT_TROUBLE = re.compile(
    r"(can't connect to the agent|problem with the agent|failed to start (the )?(gpg-)?agent|no gpg-agent running"
    r"|gpg-agent is not available|error running '[^']*gpg-agent'|agent_\w+ failed)",
    re.IGNORECASE,
)


def verdict(stderr: str, *, shown: str, ours: str) -> Verdict:
    """Read a ``gpg --decrypt`` run from its stderr (status lines and messages). Pure.

    Args:
        stderr: everything gpg wrote on stderr (``--status-fd 2``).
        shown: the file's name, for messages.
        ours: our key's fingerprint, so a partner knows which key to encrypt to.
    """
    status = status_lines(stderr)
    seen: dict[str, str] = {}
    for keyword, rest in status:
        seen.setdefault(keyword, rest)
    messages = [line[5:].strip() for line in stderr.splitlines() if line.startswith("gpg: ")]
    if any(_AGENT_TROUBLE.match(m) for m in messages):
        return Verdict(ours=f"gpg could not use its agent ({'; '.join(messages)})")
    if "NEED_PASSPHRASE_SYM" in seen:
        return Verdict(
            f"{shown}: encrypted with a password, not to dropzone's key: encrypt it to the public key {ours}"
        )
    failed = [rest for keyword, rest in status if keyword == "ERROR" and rest.startswith("pkdecrypt_failed")]
    codes = {int(rest.split()[-1]) & 0xFFFF for rest in failed if rest.split()[-1].isdigit()}
    if ("NEED_PASSPHRASE" in seen and "DECRYPTION_OKAY" not in seen) or codes & _BAD_PASSPHRASE_CODES:
        return Verdict(ours="the private key needs a passphrase, and pgp.passphrase_file does not unlock it")
    if "NO_SECKEY" in seen and "DECRYPTION_OKAY" not in seen:
        keys = ", ".join(rest for keyword, rest in status if keyword == "NO_SECKEY")
        return Verdict(
            f"{shown}: encrypted for another key (key ID {keys}), not for dropzone's: encrypt it to the public "
            f"key {ours}"
        )
    if "BADSIG" in seen:
        return Verdict(
            f"{shown}: its signature is BAD (key ID {seen['BADSIG']}): the file changed after it was signed; "
            "nothing was imported"
        )
    broken = "BEGIN_DECRYPTION" in seen and "DECRYPTION_OKAY" not in seen  # gpg stopped part way (zlib, say)
    if broken or "BADMDC" in seen or "DECRYPTION_FAILED" in seen:
        why = f" ({messages[-1]})" if messages else ""
        return Verdict(f"{shown}: cannot be decrypted: the encrypted data is damaged or was modified{why}")
    if "NODATA" in seen:
        return Verdict(
            f"{shown}: holds no OpenPGP data that can be decrypted (cut short, damaged, or not encrypted at all)"
        )
    decrypted = "DECRYPTION_OKAY" in seen
    if not decrypted and not ("PLAINTEXT" in seen and "BEGIN_DECRYPTION" not in seen):
        why = messages[-1] if messages else "gpg gave no reason"
        return Verdict(f"{shown}: cannot be decrypted ({why})")
    notes = [] if decrypted else ["it was signed but not encrypted"]
    if "GOODSIG" in seen:
        notes.append(f"its signature is good (key ID {seen['GOODSIG']})")
    elif "ERRSIG" in seen:
        key = seen["ERRSIG"].split()[0]
        notes.append(
            f"it is signed (key ID {key}), but dropzone holds no public keys: the signature was not checked"
        )
    return Verdict(notes=("decrypted (PGP) before import", *notes))


# ---- the keyring ------------------------------------------------------------------------------


class _Sink:
    """Where gpg's plaintext goes (python-gnupg's ``on_data``, on its reader thread): a new 0600 file, bounded."""

    def __init__(self, path: Path, limit: int, stop: Callable[[], None]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.file = os.fdopen(fd, "wb")
        self.limit, self.stop = limit, stop
        self.written = 0
        self.over = False
        self.error: OSError | None = None

    def __call__(self, data: bytes) -> bool:
        """Write ``data``; False always: python-gnupg then keeps nothing in memory."""
        if not data or self.over or self.error is not None:
            return False
        if self.written + len(data) > self.limit:
            self.over = True
            self.stop()
            return False
        try:
            self.file.write(data)
        except OSError as exc:
            self.error = exc
            self.stop()
        self.written += len(data)
        return False


@dataclass
class Keyring:
    """A GnuPG home under ``state_dir/pgp`` holding one private key; ``close`` stops its agent and removes it."""

    home: Path  # the folder, below state_dir/pgp
    gpg_home: Path  # what gpg is told: ``home``, or a short link to it
    fingerprint: str
    passphrase: str | None = field(default=None, repr=False)
    _link_dir: Path | None = None
    _gpg: _Gpg | None = field(default=None, repr=False)
    #: Monotonic time before which gpg is not run again: it stalled (DECRYPT_REST_S).
    _resting_until: float = 0.0

    @classmethod
    def build(cls, settings: PgpSettings, parent: Path, *, source: str = "config") -> Keyring:
        """Import ``settings``' key into a new home below ``parent`` and check that it decrypts.

        Raises:
            ConfigError: naming ``pgp.private_key_file`` (or ``pgp.passphrase_file``) and what is wrong.
        """

        def error(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{source}: pgp.{key}: {problem}")

        path = settings.private_key_file
        try:
            key_data = path.read_bytes()
        except OSError as exc:
            raise error("private_key_file", f"cannot read {path}: {exc.strerror}") from None
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)
        home = Path(tempfile.mkdtemp(prefix="k", dir=parent))
        link_dir = None
        gpg_home = home
        if len(os.fsencode(home)) > _MAX_HOME:
            # gpg-agent's socket lives in the home, and a socket's path has ~107 bytes at most.
            link_dir = Path(tempfile.mkdtemp(prefix="dz-gpg-"))
            gpg_home = link_dir / "h"
            gpg_home.symlink_to(home)
        keyring = cls(home=home, gpg_home=gpg_home, fingerprint="", passphrase=settings.passphrase,
                      _link_dir=link_dir)
        try:
            try:
                keyring._gpg = _Gpg(gnupghome=str(gpg_home), options=_OPTIONS, env={**os.environ, "LC_ALL": "C"})
            except (OSError, ValueError):
                raise error(
                    "private_key_file", "GnuPG's gpg cannot be run here (Debian: apt-get install gnupg)"
                ) from None
            keyring.fingerprint = keyring._import(key_data, error, path)
            keyring._probe(error, path)
        except BaseException:
            keyring.close()
            raise
        return keyring

    def _import(self, key_data: bytes, error: Callable[[str, str], ConfigError], path: Path) -> str:
        gpg = self._require()
        result = gpg.import_keys(key_data)
        secret = gpg.list_keys(secret=True)
        if not secret:
            if not result.count:
                raise error("private_key_file", f"{path} holds no OpenPGP key")
            raise error("private_key_file", f"{path} holds a public key only; dropzone needs the private key")
        if len(secret) > 1:
            raise error("private_key_file", f"{path} holds {len(secret)} private keys; give exactly one")
        return str(secret[0]["fingerprint"])

    def _probe(self, error: Callable[[str, str], ConfigError], path: Path) -> None:
        """Encrypt a line to the key and decrypt it: the key can decrypt, and the passphrase unlocks it."""
        gpg = self._require()
        sealed = gpg.encrypt(_PROBE, self.fingerprint, always_trust=True, armor=False)
        if not sealed.ok:
            raise error(
                "private_key_file",
                f"the key in {path} cannot be used to decrypt (no valid encryption subkey, or expired): "
                f"{sealed.status}",
            )
        opened = gpg.decrypt(sealed.data, passphrase=self.passphrase)
        if opened.ok and opened.data == _PROBE:
            return
        found = verdict(opened.stderr, shown="probe", ours=self.fingerprint)
        if found.ours and "passphrase" in found.ours:
            if self.passphrase is None:
                raise error(
                    "private_key_file", f"the key in {path} is protected by a passphrase: set pgp.passphrase_file"
                )
            raise error("passphrase_file", "the passphrase does not unlock the private key")
        raise error("private_key_file", f"the key in {path} could not decrypt a test message ({opened.status})")

    def _require(self) -> _Gpg:
        if self._gpg is None:
            raise DecryptUnavailableError("the keyring is closed")
        return self._gpg

    def decrypt(
        self, source: BinaryIO, dest: Path, *, limit: int, overflow: Callable[[], str], shown: str
    ) -> list[str]:
        """Decrypt ``source`` into a new file ``dest`` (0600), at most ``limit`` bytes; the notes for the status file.

        Raises:
            InputError: the partner's file cannot be decrypted (``dest`` is removed), or ``overflow()`` at the bound.
            DecryptUnavailableError: gpg or our key failed us; try again later.
        """
        if time.monotonic() < self._resting_until:
            raise DecryptUnavailableError(
                f"gpg stalled on an earlier file; decryption is tried again in "
                f"{self._resting_until - time.monotonic():.0f} s"
            )
        gpg = self._require()
        sink = _Sink(dest, limit, gpg.kill)
        late = threading.Event()
        stalled = threading.Event()
        done = threading.Event()

        def watch() -> None:
            # Killed past the deadline, or as soon as it writes nothing for DECRYPT_STALL_S (a stuck agent).
            started = last_at = time.monotonic()
            last = 0
            while not done.wait(min(1.0, D.DECRYPT_STALL_S / 4)):
                now = time.monotonic()
                if sink.written != last:
                    last, last_at = sink.written, now
                if now - last_at >= D.DECRYPT_STALL_S:
                    stalled.set()
                elif now - started >= D.DECRYPT_DEADLINE_S:
                    late.set()
                else:
                    continue
                gpg.kill()
                return

        timer = threading.Thread(target=watch, name="gpg-watch", daemon=True)
        ok = False
        try:
            gpg.on_data = sink
            timer.start()
            try:
                result: Any = gpg.decrypt_file(
                    source, passphrase=self.passphrase, always_trust=True,
                    # gpg's own bound too (a compressed PGP message is a bomb like any other).
                    extra_args=["--max-output", str(limit + D.RATIO_GRACE_BYTES)],
                )
            except ValueError:  # python-gnupg refuses a passphrase with a line break: checked at parse time
                raise DecryptUnavailableError("the passphrase cannot be given to gpg") from None
            finally:
                done.set()
                timer.join()
                gpg.on_data = None
                sink.file.close()
            if sink.error is not None:
                raise sink.error
            if sink.over:
                raise InputError(overflow())
            if stalled.is_set():
                self._resting_until = time.monotonic() + D.DECRYPT_REST_S
                _kill_agent(self.gpg_home)
                raise DecryptUnavailableError(
                    f"gpg wrote nothing for {D.DECRYPT_STALL_S:.0f} s and was stopped (a stuck gpg-agent?); "
                    f"tried again in {D.DECRYPT_REST_S:.0f} s",
                    stalled=True,
                )
            if late.is_set():
                raise InputError(
                    f"{shown}: decryption took longer than {D.DECRYPT_DEADLINE_S:.0f} s; send it in smaller files"
                )
            died = gpg.process.returncode if gpg.process is not None else None
            if died is not None and died < 0 and not (sink.over or late.is_set() or stalled.is_set()):
                raise DecryptUnavailableError(f"gpg was killed by signal {-died} while decrypting; tried again")
            found = verdict(result.stderr, shown=shown, ours=self.fingerprint)
            if found.ours is not None:
                raise DecryptUnavailableError(found.ours)
            if found.error is not None:
                raise InputError(found.error)
            ok = True
            return list(found.notes)
        finally:
            if not ok:
                with contextlib.suppress(FileNotFoundError):
                    dest.unlink()

    def close(self) -> None:
        """Stop the keyring's gpg-agent and remove the keyring (and its short link)."""
        self._gpg = None
        _kill_agent(self.gpg_home)
        shutil.rmtree(self.home, ignore_errors=True)
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)

    @staticmethod
    def sweep(parent: Path) -> None:
        """Remove keyrings a crash left below ``parent`` (at start, before the new one is built)."""
        if not parent.is_dir():
            return
        for home in parent.iterdir():
            if home.is_dir() and not home.is_symlink():
                _kill_agent(home)
                shutil.rmtree(home, ignore_errors=True)


def _kill_agent(home: Path) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=10,
                       check=False)


__all__ = ["Keyring", "Verdict", "status_lines", "verdict"]
