"""Coalescing: which pending chunks share one Marketo import, and each one's share of the result (pure).

A backlog of small files costs one of Marketo's ten queue slots and two or
three API calls per file when each is its own import. When the dispatch
stage picks a chunk to send (``jobs.pick_next``), ``gather`` adds the other
pending chunks that can ride along: same inbox, instance, import target,
format and header line (byte for byte, as the splitter wrote it), from routes
with ``coalesce`` on, not held back by a resubmit hold, in order of receipt,
while the merged file stays within the chunk limit. Only work already
waiting is merged: nothing ever waits for more files.

The inbox is part of the key on purpose: partners are strangers to each
other, so one partner's rows never decide another's batch (a job Marketo
fails fails every file in it), and a status file's ``sharedWith`` never
tells a partner about anyone else's files.

Once Marketo has finished a shared batch, each file gets its own counts
(``share_counts``) from the failure and warning rows attributed back to it
(``merging.share_results`` does the matching, in order of receipt).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dropzone.journal_schema import ChunkRow, Counts, FileRow


@dataclass(frozen=True, slots=True)
class MergeKey:
    """What chunks must have in common to share an import."""

    inbox: str
    instance: str
    target: str  # the ImportTarget's JSON: kind, every Marketo parameter
    fmt: str
    header: bytes  # the header line as written to the chunk, its line ending included


@dataclass(frozen=True, slots=True)
class Part:
    """A pending chunk as coalescing sees it."""

    chunk_id: int
    file_id: int
    index: int
    size: int  # the chunk file's bytes, its header included
    key: MergeKey | None  # None: never merged (``coalesce: false``, or already in an import of its own)
    not_before: float | None = None  # wall-clock seconds: held until then (a possible copy is waited out)


def part_of(chunk: ChunkRow, row: FileRow) -> Part:
    """A pending chunk of the file ``row`` as coalescing sees it: never merged unless its route lets its
    file share imports (a header was kept) and it is in no import of its own yet."""
    key = None
    if chunk.group_id is None and row.header is not None and row.target is not None and row.fmt is not None:
        key = MergeKey(str(row.inbox), chunk.instance, row.target.to_json(), row.fmt.value, row.header)
    return Part(chunk.id, chunk.file_id, chunk.index, chunk.size, key, chunk.not_before)


def line_ending(header: bytes) -> bytes:
    """The line break added after a chunk whose last record has none (the file's last line): the header's."""
    return b"\r\n" if header.endswith(b"\r\n") else b"\n"


def merged_bytes(parts: Iterable[Part], header: bytes) -> int:
    """The most the merged file can take: the header once, each part's records, a line break each may need."""
    body = sum(p.size - len(header) + len(line_ending(header)) for p in parts)
    return len(header) + body


def gather(leader: Part, pending: Iterable[Part], *, limit: int, wall: float) -> list[Part]:
    """The chunks that go with ``leader`` into one import: the leader first, then others in order of receipt.

    A part that would take the merged file over ``limit`` is skipped, not a stop: a later, smaller
    one may still fit (the skipped one leads an import of its own later).
    """
    chosen = [leader]
    if leader.key is None:
        return chosen
    header = leader.key.header
    size = merged_bytes(chosen, header)
    for part in sorted(pending, key=lambda p: (p.file_id, p.index)):
        if part.chunk_id == leader.chunk_id or part.key != leader.key:
            continue
        if part.not_before is not None and part.not_before > wall:
            continue
        grown = size + merged_bytes([part], header) - len(header)
        if grown > limit:
            continue
        chosen.append(part)
        size = grown
    return chosen


def share_counts(status: str | None, rows: int, failed: int | None, warned: int | None, batch: Counts) -> Counts:
    """One file's counts in a shared batch, from the rows attributed to it.

    ``failed``/``warned``: its rows in the batch's failure and warning files (None: that file could
    not be had, so this file's share is unknown, unless the batch had none at all).
    """
    if failed is None and batch.failed == 0:
        failed = 0
    if warned is None and batch.warned == 0:
        warned = 0
    if status != "Complete":
        return Counts(processed=0, failed=failed, warned=warned)
    return Counts(processed=max(rows - failed, 0) if failed is not None else None, failed=failed, warned=warned)


def shares_add_up(batch: Counts, shares: Sequence[Counts]) -> bool:
    """Whether the files' shares agree with Marketo's own counters for the batch (unknown ones agree)."""
    failed = [s.failed for s in shares]
    processed = [s.processed for s in shares]
    if batch.failed is not None and None not in failed and sum(f or 0 for f in failed) < batch.failed:
        return False  # failed rows no file was given
    known = batch.processed is not None and None not in processed
    return not (known and sum(p or 0 for p in processed) > (batch.processed or 0))


__all__ = [
    "MergeKey", "Part", "gather", "line_ending", "merged_bytes", "part_of", "share_counts", "shares_add_up",
]
