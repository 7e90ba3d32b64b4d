"""The configuration of compressed, encrypted and spreadsheet drops: ``pgp:`` and the unpacking bounds.

Owns the parsed shape of the ``pgp`` section and of the top-level bounds
(``max_expanded_bytes``, ``max_archive_bytes``, ``max_archive_members``,
``max_compression_ratio``), and their checks that need no key material.
Reads ``passphrase_file`` at parse time, as ``client_secret_file`` is read;
the private key itself is read and checked by ``pgp.Keyring.build`` (at
start, on reload and by ``dropzone check``), whose errors name
``pgp.private_key_file``. ``config`` calls in here; this module does not
import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropzone import defaults as D
from dropzone.schema import Context, Section, os_problem

PGP_KEYS = ("private_key_file", "passphrase_file")
LIMIT_KEYS = ("max_expanded_bytes", "max_archive_bytes", "max_archive_members", "max_compression_ratio")
#: The top-level keys this module owns.
TOP_KEYS = ("pgp", *LIMIT_KEYS)


@dataclass(frozen=True, slots=True, kw_only=True)
class PgpSettings:
    """Where the private key that decrypts partners' ``*.pgp``/``*.gpg``/``*.asc`` files is, and its passphrase."""

    private_key_file: Path
    passphrase_file: Path | None = None
    #: Read from ``passphrase_file``; never logged, never on a command line (gpg reads it from a pipe).
    passphrase: str | None = field(default=None, repr=False)

    def redacted(self) -> dict[str, Any]:
        return {
            "private_key_file": str(self.private_key_file),
            "passphrase_file": str(self.passphrase_file) if self.passphrase_file else None,
            "passphrase": D.SECRET_MASK if self.passphrase else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpackLimits:
    """How far a compressed, encrypted or converted file may grow before it is refused as a bomb."""

    max_expanded_bytes: int = D.MAX_EXPANDED_BYTES
    max_archive_bytes: int = D.MAX_ARCHIVE_BYTES
    max_archive_members: int = D.MAX_ARCHIVE_MEMBERS
    max_compression_ratio: int = D.MAX_COMPRESSION_RATIO

    def redacted(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LIMIT_KEYS}


def parse_pgp(ctx: Context, data: object) -> PgpSettings | None:
    """The ``pgp`` section, or None when it is absent."""
    if data is None:
        return None
    s = Section(ctx, data, "pgp", PGP_KEYS)
    key_file = s.path("private_key_file")
    passphrase_file = s.path("passphrase_file", None)
    passphrase = None
    if passphrase_file is not None:
        try:
            passphrase = ctx.read_file(str(passphrase_file)).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise s.error("passphrase_file", f"cannot read {passphrase_file}: {os_problem(exc)}") from None
        if not passphrase:
            raise s.error("passphrase_file", f"{passphrase_file} is empty")
        if any(c in passphrase for c in "\r\n\x00"):
            # gpg reads the passphrase as one line from a pipe: a second line would be read as data.
            raise s.error("passphrase_file", f"{passphrase_file} must hold one line")
    return PgpSettings(private_key_file=key_file, passphrase_file=passphrase_file, passphrase=passphrase)


def parse_limits(top: Section) -> UnpackLimits:
    """The top-level bounds; each at least 1."""
    limits = UnpackLimits(
        max_expanded_bytes=top.integer("max_expanded_bytes", D.MAX_EXPANDED_BYTES, low=1),
        max_archive_bytes=top.integer("max_archive_bytes", D.MAX_ARCHIVE_BYTES, low=1),
        max_archive_members=top.integer("max_archive_members", D.MAX_ARCHIVE_MEMBERS, low=1),
        max_compression_ratio=top.integer("max_compression_ratio", D.MAX_COMPRESSION_RATIO, low=2),
    )
    return limits


__all__ = ["LIMIT_KEYS", "PGP_KEYS", "TOP_KEYS", "PgpSettings", "UnpackLimits", "parse_limits", "parse_pgp"]
