"""The bytes of a shared import: the merged upload, and its result files split back per chunk.

``write_merged`` writes the file one shared import sends: the header once,
then each chunk's records byte for byte, streamed, in order of receipt. It
is written (and fsynced) before the chunks are journalled ``submitting``, so
a resubmit after a lost answer sends the very same bytes.

``share_results`` takes Marketo's failure (or warning) file of a shared
batch and gives each chunk its own rows, as a file beside that chunk in its
own file's work area: from there the report stage treats it like any
chunk's result file (source lines, one file per partner file). Marketo's
rows carry no row number: each is matched by its values against the chunks
as sent, in order of receipt; a row found in two chunks goes to the first
that has not yet had it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dropzone import outbox
from dropzone.coalescing import line_ending
from dropzone.kinds import FileFormat

_BLOCK = 1 << 20


class ChangedChunkError(ValueError):
    """A chunk file no longer starts with the header the journal has for it: it is not merged."""


def write_merged(parts: Sequence[Path], header: bytes, out: Path) -> int:
    """Write the merged upload of ``parts`` (each starting with ``header``) to ``out``; its size."""
    eol = line_ending(header)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as sink:
            sink.write(header)
            for path in parts:
                with open(path, "rb") as source:
                    if source.read(len(header)) != header:
                        raise ChangedChunkError(f"{path.name} does not start with the header it was split with")
                    last = b""
                    while block := source.read(_BLOCK):
                        sink.write(block)
                        last = block[-1:]
                    if last and last != b"\n":
                        # The file's last record had no line break: without one it would run into the next.
                        sink.write(eol)
            sink.flush()
            os.fsync(sink.fileno())
            size = sink.tell()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    outbox.fsync_dir(out.parent)
    return size


@dataclass(frozen=True, slots=True)
class Member:
    """One chunk of a shared import: where its own bytes (and its share of the results) live."""

    chunk_id: int
    path: Path


@dataclass(frozen=True, slots=True)
class Shares:
    """Each chunk's rows of one result file: a file beside the chunk (None: no rows) and how many."""

    paths: dict[int, Path | None]
    rows: dict[int, int]
    unmatched: int  # rows found in no chunk (Marketo is known to drop columns from some rows)


def share_results(body: bytes, members: Sequence[Member], fmt: FileFormat, kind: str) -> Shares:
    """Split one of a shared batch's result files (``kind``: failures or warnings) back per chunk."""
    delimiter = fmt.delimiter
    rows = list(csv.reader(io.StringIO(body.decode("utf-8", errors="replace"), newline=""), delimiter=delimiter))
    header, data = (rows[0], [r for r in rows[1:] if r]) if rows else ([], [])
    # Marketo echoes the columns sent, then its reason: the values without the reason find the row.
    wanted = [tuple(r[:-1]) for r in data]
    owners = _owners(members, delimiter, wanted)
    mine: dict[int, list[list[str]]] = {m.chunk_id: [] for m in members}
    unmatched = 0
    for row, owner in zip(data, owners, strict=True):
        if owner is None:
            unmatched += 1
        else:
            mine[owner].append(row)
    paths: dict[int, Path | None] = {}
    for member in members:
        path = member.path.with_name(f"{member.path.name}.{kind}")
        if mine[member.chunk_id]:
            buffer = io.StringIO(newline="")
            terminator = "\r\n" if fmt == FileFormat.CSV else "\n"
            writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator)
            writer.writerow(header)
            writer.writerows(mine[member.chunk_id])
            outbox.atomic_write(path, buffer.getvalue().encode("utf-8"))
            paths[member.chunk_id] = path
        else:
            path.unlink(missing_ok=True)  # a share written by an earlier try that found more rows
            paths[member.chunk_id] = None
    return Shares(paths, {k: len(v) for k, v in mine.items()}, unmatched)


def _owners(members: Sequence[Member], delimiter: str, wanted: list[tuple[str, ...]]) -> list[int | None]:
    """The chunk each wanted row came from, streaming the chunks so memory stays bounded by ``wanted``."""
    found: dict[tuple[str, ...], list[int]] = {key: [] for key in wanted}
    for member in members:
        try:
            with open(member.path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle, delimiter=delimiter)
                next(reader, None)  # its header
                for row in reader:
                    key = tuple(row)
                    if key in found:
                        found[key].append(member.chunk_id)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # its rows stay unmatched rather than guessed
    taken: dict[tuple[str, ...], int] = {}
    owners: list[int | None] = []
    for key in wanted:
        i = taken.get(key, 0)
        owners.append(found[key][i] if i < len(found[key]) else None)
        taken[key] = i + 1
    return owners


__all__ = ["ChangedChunkError", "Member", "Shares", "share_results", "write_merged"]
