"""What a dropped name says about its wrappings, and what is done with each: the pure decisions.

A partner may wrap a flat file: ``leads.csv.gz`` (gzip), ``leads.csv.pgp``
(``.gpg``, ``.asc``: PGP-encrypted), ``leads.csv.gz.pgp`` (both), a zip of
several files, or send a workbook (``leads.xlsx``). This module owns the
rules, on names and plain values only (``decoders``, ``pgp`` and ``sheets``
do the I/O):

* ``peel``: the layers a name announces, outermost first, and the name left
  once they are removed, which is what routes see (``leads.csv.gz`` follows
  the route for ``leads.csv``, its format from ``.csv``);
* ``check``: **the nesting rule**. At most two layers, in this order: one
  decryption (``.pgp``/``.gpg``/``.asc``), then one decompression (``.gz``
  or ``.zip``). So ``x.csv.gz.pgp`` and ``x.zip.pgp`` are unpacked;
  ``x.csv.gz.gz``, ``x.csv.pgp.gz`` (compressed after encryption, which
  gains nothing) and anything wrapped inside a zip (a zip in a zip, a ``.gz``
  or ``.pgp`` member) are refused with the rule in the message. A workbook
  is a format, not a layer: ``x.xlsx.gz.pgp`` is fine;
* ``route``: the route of the peeled name (a workbook is always sent as CSV);
* ``member_verdict``: what happens to each entry of a zip (taken, skipped,
  or refused and why, with or without a status file of its own);
* ``expansion_bound``: how far a decoded file may grow before it is a bomb;
* ``archive_outcome``: an archive's outcome from its members'.
"""

from __future__ import annotations

import dataclasses
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from dropzone import defaults as D
from dropzone import readiness, routing
from dropzone.config import Route
from dropzone.errors import InputError
from dropzone.jobs import Outcome
from dropzone.kinds import SHEET_EXTENSION, FileFormat, Layer
from dropzone.outbox import NAME_MAX, printable
from dropzone.unpack_config import UnpackLimits

SHEET_SUFFIX = f".{SHEET_EXTENSION}"
#: Every order of layers the nesting rule allows, outermost first.
ALLOWED = frozenset({
    (), (Layer.PGP,), (Layer.GZIP,), (Layer.ZIP,), (Layer.PGP, Layer.GZIP), (Layer.PGP, Layer.ZIP),
})
RULE = "dropzone unpacks at most one decryption (.pgp, .gpg, .asc) and then one decompression (.gz or .zip)"


@dataclass(frozen=True, slots=True)
class Plan:
    """A dropped file's name, read: the layers to peel (outermost first) and the name routes see."""

    relpath: str  # as dropped, relative to the inbox
    name: str  # ``relpath`` without the layers' suffixes: what routes match
    layers: tuple[Layer, ...] = ()
    sheet: bool = False  # the data is a workbook, converted to CSV before it is split

    @property
    def archive(self) -> bool:
        """A zip: its members become files of their own; the archive itself is not routed."""
        return Layer.ZIP in self.layers


def peel(relpath: str) -> Plan:
    """The layers ``relpath``'s suffixes announce, outermost first, and the name left. Never refuses."""
    folder, sep, base = relpath.rpartition("/")
    layers: list[Layer] = []
    while True:
        stem, dot, ext = base.rpartition(".")
        layer = Layer.from_extension(ext) if dot and stem else None
        if layer is None:
            break
        layers.append(layer)
        base = stem
    sheet = base.lower().endswith(SHEET_SUFFIX) and len(base) > len(SHEET_SUFFIX)
    return Plan(relpath=relpath, name=folder + sep + base, layers=tuple(layers), sheet=sheet)


def check(plan: Plan, *, pgp: bool, member: bool = False) -> None:
    """Refuse what the nesting rule, or the configuration, does not allow.

    Args:
        plan: from ``peel``.
        pgp: whether a private key is configured (``pgp:``).
        member: the file came out of a zip: it may have no layer at all.

    Raises:
        InputError: saying which rule, in words a partner can act on.
    """
    shown = printable(plan.relpath)
    if member and plan.layers:
        raise InputError(
            f"{shown}: a compressed, encrypted or archived file inside a zip is not unpacked ({RULE}, "
            "outside in); put the plain file in the zip"
        )
    if plan.layers not in ALLOWED:
        raise InputError(f"{shown}: too many or misordered layers: {RULE}, outside in, like NAME.csv.gz.pgp")
    if Layer.PGP in plan.layers and not pgp:
        raise InputError(
            f"{shown}: this file is PGP-encrypted, but this dropzone has no private key to decrypt it "
            "(no pgp: in its configuration): send it unencrypted, or ask the operator to set one up"
        )


def route(routes: Sequence[Route], plan: Plan) -> routing.RouteMatch | routing.NoMatch:
    """The route of the peeled name. A workbook is converted to CSV, so its format is CSV whatever the route says."""
    match = routing.route(routes, plan.name)
    if plan.sheet:
        if isinstance(match, routing.RouteMatch):
            return dataclasses.replace(match, format=FileFormat.CSV)
        if match.index is not None:  # matched, only the format was unknown: it is CSV
            return routing.RouteMatch(route=routes[match.index], index=match.index, relpath=plan.name,
                                      format=FileFormat.CSV)
    if isinstance(match, routing.NoMatch) and plan.name != plan.relpath:
        message = f"{match.message} (routes see the name inside, {printable(plan.name)!r})"
        return dataclasses.replace(match, message=message)
    return match


# ---- bounds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """How many bytes a decoded file may grow to, and the setting that says so."""

    limit: int
    key: str  # max_expanded_bytes, max_compression_ratio or max_archive_bytes


def expansion_bound(compressed: int, limits: UnpackLimits, *, room: Bound | None = None) -> Bound:
    """The bound on a file decoded from ``compressed`` bytes; ``room``: what its archive has left."""
    candidates = [
        Bound(limits.max_expanded_bytes, "max_expanded_bytes"),
        Bound(max(D.RATIO_GRACE_BYTES, compressed * limits.max_compression_ratio), "max_compression_ratio"),
    ]
    if room is not None:
        candidates.append(Bound(max(room.limit, 0), room.key))
    return min(candidates, key=lambda b: b.limit)


def archive_bound(archive_size: int, limits: UnpackLimits) -> Bound:
    """What all of an archive's files may grow to together: ``max_archive_bytes``, and the ratio against the
    archive's own size. Per member alone, a thousand members each within the ratio's grace, or a member whose
    directory entry lies about its compressed size, would let a small zip fill the disk."""
    return min(
        Bound(limits.max_archive_bytes, "max_archive_bytes"),
        Bound(max(D.RATIO_GRACE_BYTES, archive_size * limits.max_compression_ratio), "max_compression_ratio"),
        key=lambda b: b.limit,
    )


def too_big(shown: str, bound: Bound, limits: UnpackLimits) -> str:
    """Why a file was stopped at its bound, for its status file."""
    if bound.key == "max_compression_ratio":
        return (
            f"{shown}: expands more than {limits.max_compression_ratio} times its compressed size "
            "(max_compression_ratio): refused as a possible decompression bomb; send it uncompressed or in "
            "smaller files"
        )
    if bound.key == "max_archive_bytes":
        return (
            f"{shown}: the archive's files expand to more than {limits.max_archive_bytes:,} bytes together "
            "(max_archive_bytes): refused; send fewer or smaller files per archive"
        )
    return f"{shown}: expands to more than {bound.limit:,} bytes (max_expanded_bytes): refused; send smaller files"


# ---- zip members ------------------------------------------------------------------------------

_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Entry:
    """A zip entry as its central directory describes it (all of it the partner's say)."""

    name: str
    mode: int = 0  # the Unix mode in the entry's external attributes; 0: none given (a DOS zip)
    encrypted: bool = False  # the entry's "encrypted" flag bit


@dataclass(frozen=True, slots=True)
class MemberVerdict:
    """What happens to one zip entry.

    ``skip``: a folder, or a name an inbox ignores (hidden, temporary: ``__MACOSX/._x``), not a file
    of its own. Otherwise ``relpath`` is where it is routed (the archive's folder, then its name), or
    None when its name cannot name a file (then its refusal is told in the archive's status file only);
    ``error``: why it is refused (None: taken).
    """

    relpath: str | None
    error: str | None = None
    skip: bool = False


def escaped(name: str) -> str:
    """A member's name as status files and logs show it: control characters as ``\\xNN``, undecodable bytes too."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(name))


def name_problem(name: str) -> str | None:
    """Why a member's name cannot be a path inside the archive's folder, or None."""
    if _CONTROL.search(name):
        return "its name holds a control character"
    if "\\" in name:
        return "its name holds a backslash (a Windows path?)"
    if name.startswith("/"):
        return "its name is an absolute path"
    if _DRIVE.match(name):
        return "its name starts with a drive letter"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "its name holds '..' (it would leave the archive's folder)"
    if any(part in ("", ".") for part in parts):
        return "its name holds an empty or '.' folder"
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in parts[:-1]):
        # The leaf is shortened for its result files (outbox.fit_name); a folder cannot be.
        return f"a folder in its name is longer than {NAME_MAX} bytes"
    return None


def member_verdict(entry: Entry, archive_relpath: str, duplicate: bool) -> MemberVerdict:
    """What to do with one entry of the zip at ``archive_relpath``; ``duplicate``: its name appears twice."""
    shown = printable(entry.name)
    problem = name_problem(entry.name)
    if problem is not None:
        return MemberVerdict(None, f"{shown!r} in the archive: refused: {problem}")
    if entry.name.endswith("/"):
        return MemberVerdict(None, skip=True)
    if readiness.is_ignored_path(entry.name):
        return MemberVerdict(None, skip=True)
    if duplicate:
        return MemberVerdict(None, f"{shown!r} in the archive: refused: the name appears more than once")
    folder, sep, _ = archive_relpath.rpartition("/")
    relpath = folder + sep + entry.name
    if relpath == archive_relpath:  # its result files would take the archive's own names
        return MemberVerdict(None, f"{shown!r} in the archive: refused: it has the archive's own name")
    kind = stat.S_IFMT(entry.mode)
    if stat.S_ISLNK(entry.mode):
        return MemberVerdict(relpath, f"{printable(relpath)}: refused: it is a symbolic link in the archive")
    if kind and not stat.S_ISREG(entry.mode) and not stat.S_ISDIR(entry.mode):
        return MemberVerdict(relpath, f"{printable(relpath)}: refused: it is not a regular file in the archive")
    if entry.encrypted:
        return MemberVerdict(
            relpath,
            f"{printable(relpath)}: refused: it is password-protected in the archive; send the zip without a "
            "password (PGP-encrypt the whole zip instead)",
        )
    try:
        check(peel(relpath), pgp=True, member=True)
    except InputError as exc:
        return MemberVerdict(relpath, str(exc))
    return MemberVerdict(relpath)


def archive_outcome(outcomes: Sequence[Outcome]) -> Outcome:
    """An archive's outcome: Complete when every member is, Partial when some rows got in, else Failed or Rejected."""
    if outcomes and all(o is Outcome.COMPLETE for o in outcomes):
        return Outcome.COMPLETE
    if any(o in (Outcome.COMPLETE, Outcome.PARTIAL) for o in outcomes):
        return Outcome.PARTIAL
    if Outcome.FAILED in outcomes:
        return Outcome.FAILED
    return Outcome.REJECTED


__all__ = [
    "ALLOWED",
    "RULE",
    "SHEET_SUFFIX",
    "Bound",
    "Entry",
    "MemberVerdict",
    "Plan",
    "archive_bound",
    "archive_outcome",
    "check",
    "escaped",
    "expansion_bound",
    "member_verdict",
    "name_problem",
    "peel",
    "route",
    "too_big",
]
