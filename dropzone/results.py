"""A finished batch's result files into the journal: a chunk's own, or each chunk's share of a shared batch.

Runs on the loop's thread (it writes the journal) once ``calls`` has the
files in the work area. Counters Marketo left out are counted from the
files, never assumed 0 (program-member statuses may omit them). A shared
batch's counters are the whole batch's: each chunk gets its own, from the
rows attributed to it (``coalescing.share_counts``), so every file's status
tells its own rows.
"""

from __future__ import annotations

from dropzone import coalescing
from dropzone.calls import Downloaded
from dropzone.store import ChunkRow, Counts, FileRow, Results, Store

_NO_COUNTS = (
    "Marketo's status for batch {batch} had no row counts; they were counted from its failure and warning files"
)
_UNMATCHED = (
    "{n} row(s) of the {kind} file of batch {batch}, shared with other files, matched no file's rows as sent: "
    "they are not in this file's {kind} file"
)
_UNTOLD = (
    "batch {batch}, shared with other files, had {failed} failed row(s) by Marketo's count and {processed} "
    "processed, which the rows told apart per file do not add up to: this file's failed rows are unknown, "
    "so it is reported Partial (import it alone, coalesce: false, to have them told)"
)
_NO_SHARE = (
    "the {kind} file of batch {batch}, shared with other files, could not be fetched ({why}): "
    "which of its rows were this file's is unknown"
)


def store_results(store: Store, chunk: ChunkRow, row: FileRow, got: Downloaded) -> None:
    """Record the result files ``got`` for ``chunk``'s batch (its first chunk, for a shared one)."""
    if got.shares:
        _store_shares(store, chunk, got)
        return
    counts = None
    if _unknown(chunk) and chunk.marketo_status == "Complete":
        failed = chunk.failed if chunk.failed is not None else got.rows["failures"]
        counts = Counts(
            processed=chunk.processed if chunk.processed is not None else max(chunk.rows - failed, 0),
            failed=failed,
            warned=chunk.warned if chunk.warned is not None else got.rows["warnings"],
        )
        store.add_note(row.id, _NO_COUNTS.format(batch=chunk.batch_id))
    store.store_results(chunk.id, failures=got.found["failures"], warnings=got.found["warnings"], counts=counts)


def _unknown(chunk: ChunkRow) -> bool:
    return chunk.processed is None or chunk.failed is None or chunk.warned is None


def _store_shares(store: Store, first: ChunkRow, got: Downloaded) -> None:
    members = store.group_of(first.id)
    batch = Counts(first.processed, first.failed, first.warned)
    failures, warnings = got.shares["failures"], got.shares["warnings"]
    per_chunk: dict[int, Results] = {}
    for c in members:
        failed = None if "failures" in got.gave_up else failures.rows[c.id]
        warned = None if "warnings" in got.gave_up else warnings.rows[c.id]
        counts = coalescing.share_counts(first.marketo_status, c.rows, failed, warned, batch)
        per_chunk[c.id] = Results(failures.paths[c.id], warnings.paths[c.id], counts)
    notes = []
    if not coalescing.shares_add_up(batch, [r.counts for r in per_chunk.values() if r.counts is not None]):
        # Marketo's failure file left rows out or wrote them unlike we sent them: never call a file clean
        # on rows we could not tell apart (the same file imported alone would be Partial).
        per_chunk = {
            cid: Results(r.failures, r.warnings, Counts(processed=None, failed=None, warned=r.counts.warned
                                                        if r.counts is not None else None))
            for cid, r in per_chunk.items()
        }
        notes.append(_UNTOLD.format(batch=first.batch_id, failed=batch.failed, processed=batch.processed))
    if _unknown(first) and first.marketo_status == "Complete":
        notes.append(_NO_COUNTS.format(batch=first.batch_id))
    for kind, shares in got.shares.items():
        if shares.unmatched:
            notes.append(_UNMATCHED.format(n=shares.unmatched, kind=kind, batch=first.batch_id))
    for kind, why in got.gave_up.items():
        if (batch.failed if kind == "failures" else batch.warned) != 0:
            notes.append(_NO_SHARE.format(kind=kind, batch=first.batch_id, why=why))
    for file_id in dict.fromkeys(c.file_id for c in members):
        for note in notes:
            store.add_note(file_id, note)
    store.store_results(first.id, per_chunk=per_chunk)


__all__ = ["store_results"]
