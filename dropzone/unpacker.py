"""The prepare stage's first step: a claimed file's layers peeled into its work dir, before it is split.

``Prepare`` asks ``plan`` what a claimed file's name announces (refusals are
``InputError``, so the file is ``Rejected`` with the reason), then either
splits the stream ``plaintext`` yields (the original itself, or its
decrypted, decompressed or converted form) or, for a zip, takes its members
out with ``unpack``. Everything decoded stays in the file's work dir under
``state_dir`` (removed with it once the file is reported; temporary files
as soon as the split is over), each decoder within its bound. A crash
mid-decode loses nothing: the file is still ``claimed`` and is simply
decoded again.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dropzone import decoders, sheets, unpacking
from dropzone.errors import DecryptUnavailableError
from dropzone.journal_schema import NewMember
from dropzone.kinds import Layer
from dropzone.outbox import printable
from dropzone.pgp import Keyring
from dropzone.unpack_config import UnpackLimits
from dropzone.unpacking import Plan

GZIP_NOTE = "decompressed (gzip) before import; line numbers count the lines of the decompressed file"


@dataclass
class Unpacker:
    """Peels layers within ``limits``; decrypts with ``keyring`` (None: no ``pgp:``, PGP drops are refused)."""

    limits: UnpackLimits = field(default_factory=UnpackLimits)
    keyring: Keyring | None = None

    def plan(self, relpath: str, *, member: bool = False) -> Plan:
        """What ``relpath`` announces, checked against the nesting rule; ``InputError`` if refused."""
        plan = unpacking.peel(relpath)
        unpacking.check(plan, pgp=self.keyring is not None, member=member)
        return plan

    @contextlib.contextmanager
    def plaintext(
        self, original: BinaryIO, plan: Plan, work: Path, *, notes: list[str], sheet: str | None = None
    ) -> Iterator[BinaryIO]:
        """The data to split: ``original`` itself, or what its layers hold, streamed or decoded into ``work``.

        ``notes`` gets a line per layer peeled, for the status file. ``sheet``: a workbook's sheet to convert
        (None: its first).
        """
        shown = printable(plan.relpath)
        size = os.fstat(original.fileno()).st_size
        with contextlib.ExitStack() as stack:
            source = original
            for layer in plan.layers:
                bound = unpacking.expansion_bound(size, self.limits)
                overflow = functools.partial(unpacking.too_big, shown, bound, self.limits)
                if layer is Layer.PGP:
                    source = self._decrypt(source, work, stack, limit=bound.limit, overflow=overflow, notes=notes,
                                           shown=shown)
                    size = os.fstat(source.fileno()).st_size
                elif layer is Layer.GZIP:
                    source = stack.enter_context(decoders.gunzip(source, limit=bound.limit, overflow=overflow,
                                                                 shown=shown))
                    notes.append(GZIP_NOTE)
            if plan.sheet:
                source = self._sheet(source, work, stack, sheet=sheet, notes=notes, shown=shown)
            yield source

    def unpack(self, original: BinaryIO, plan: Plan, work: Path, *, notes: list[str]) -> list[NewMember]:
        """A zip's (or a decrypted zip's) members, taken out into ``work/members``; ``InputError`` for the archive."""
        shown = printable(plan.relpath)
        with contextlib.ExitStack() as stack:
            source = original
            if Layer.PGP in plan.layers:
                bound = unpacking.expansion_bound(os.fstat(original.fileno()).st_size, self.limits)
                overflow = functools.partial(unpacking.too_big, shown, bound, self.limits)
                source = self._decrypt(source, work, stack, limit=bound.limit, overflow=overflow, notes=notes,
                                       shown=shown)
            members = work / "members"
            members.mkdir(mode=0o700)
            found = decoders.extract_members(source, plan.relpath, members, limits=self.limits, shown=shown)
        taken = sum(1 for m in found if m.error is None)
        notes.append(f"unpacked (zip): {taken} of its {len(found)} file(s) taken out, each with its own status")
        return found

    def _decrypt(
        self, source: BinaryIO, work: Path, stack: contextlib.ExitStack, *, limit: int, overflow: Callable[[], str],
        notes: list[str], shown: str,
    ) -> BinaryIO:
        """``source`` decrypted into ``work`` (removed when ``stack`` closes), open for reading."""
        if self.keyring is None:
            raise DecryptUnavailableError("pgp: is no longer configured")
        path = work / "decrypted"
        stack.callback(_unlink, path)
        notes += self.keyring.decrypt(source, path, limit=limit, overflow=overflow, shown=shown)
        return stack.enter_context(path.open("rb"))

    def _sheet(
        self, source: BinaryIO, work: Path, stack: contextlib.ExitStack, *, sheet: str | None, notes: list[str],
        shown: str,
    ) -> BinaryIO:
        """A workbook (a file, or a decompressed stream) converted to a CSV file in ``work``, open for reading."""
        if not source.seekable():  # a .xlsx.gz: the workbook is a zip, read from its end
            raw = work / "workbook.raw"
            stack.callback(_unlink, raw)
            decoders.copy_to(source, raw)
            source = stack.enter_context(raw.open("rb"))
        book = work / "workbook.xlsx"
        stack.callback(_unlink, book)
        decoders.repack_workbook(source, book, limits=self.limits, shown=shown)
        converted = work / "sheet.csv"
        stack.callback(_unlink, converted)
        bound = unpacking.Bound(self.limits.max_expanded_bytes, "max_expanded_bytes")
        notes += sheets.to_csv(book, converted, sheet=sheet, limit=bound.limit, shown=shown,
                               overflow=unpacking.too_big(shown, bound, self.limits))
        return stack.enter_context(open(converted, "rb"))


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


__all__ = ["Unpacker"]
