"""The vocabulary: every enumeration dropzone uses, defined once.

A Marketo object kind, a file format (with the one rule that turns a file
name into a format), and the enumerated configuration values. Owns no I/O.
"""

from __future__ import annotations

import enum


class ObjectKind(enum.StrEnum):
    """Which of Marketo's three bulk imports a file goes to."""

    LEADS = "leads"
    CUSTOM_OBJECT = "customobject"
    PROGRAM_MEMBER = "programmember"


class TargetPart(enum.StrEnum):
    """A part of an import target checked against Marketo, by the route key that names it."""

    LIST = "listId"
    PARTITION = "partitionName"
    API_NAME = "apiName"
    PROGRAM = "programId"
    STATUS = "programMemberStatus"


class FileFormat(enum.StrEnum):
    """Marketo's ``format`` parameter: comma, tab or semicolon separated."""

    CSV = "csv"
    TSV = "tsv"
    SSV = "ssv"

    @property
    def delimiter(self) -> str:
        return _DELIMITERS[self]

    @property
    def delimiter_byte(self) -> bytes:
        return _DELIMITERS[self].encode("ascii")

    @classmethod
    def from_name(cls, name: str) -> FileFormat | None:
        """The format a file name's extension gives (``.csv``, ``.tsv``, ``.ssv``, any case), if any.

        The one rule, for the daemon and ``dropzone split`` alike: any other
        extension (``.txt`` included: it is as often tab- as comma-separated)
        needs the format given explicitly.
        """
        stem, dot, ext = name.rpartition("/")[2].rpartition(".")
        if not dot or not stem:
            return None
        try:
            return cls(ext.lower())
        except ValueError:
            return None


_DELIMITERS = {FileFormat.CSV: ",", FileFormat.TSV: "\t", FileFormat.SSV: ";"}


class Layer(enum.StrEnum):
    """A wrapping around a partner's data, peeled before it is routed (``unpacking``)."""

    PGP = "pgp"  # *.pgp, *.gpg, *.asc: decrypted with the configured private key
    GZIP = "gzip"  # *.gz: one file, decompressed as a stream
    ZIP = "zip"  # *.zip: each member is a file of its own

    @classmethod
    def from_extension(cls, ext: str) -> Layer | None:
        """The layer a name's extension (without its dot, any case) announces, if any."""
        return _LAYER_EXTENSIONS.get(ext.lower())


_LAYER_EXTENSIONS = {"pgp": Layer.PGP, "gpg": Layer.PGP, "asc": Layer.PGP, "gz": Layer.GZIP, "zip": Layer.ZIP}
#: A workbook's extension: converted to CSV (its first sheet, or the route's ``sheet``) before it is split.
SHEET_EXTENSION = "xlsx"


class WatchMode(enum.StrEnum):
    AUTO = "auto"  # polling on network/FUSE/overlay filesystems, native events elsewhere
    NATIVE = "native"
    POLLING = "polling"


class LogFormat(enum.StrEnum):
    AUTO = "auto"  # JSON unless stdout is a terminal
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


__all__ = ["SHEET_EXTENSION", "FileFormat", "Layer", "LogFormat", "LogLevel", "ObjectKind", "TargetPart", "WatchMode"]
