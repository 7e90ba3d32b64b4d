"""A zip and its members in the status files: the zip's outcome, its members list, a member's archive (pure).

A zip dropped as ``acme/batch.zip`` is no import of its own: each file in it
is routed, split and reported under its own name (``acme/x.csv.status.json``
and so on), and ``acme/batch.zip.status.json`` lists them, each with its
outcome, its counts and where its own status file is (relative to the zip's
status file). A member refused for its name (``../x.csv``, a duplicate) has
no status file of its own: the zip's says why. Plain values in, plain values
out; ``report`` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dropzone.jobs import FileState, Outcome
from dropzone.outbox import printable
from dropzone.store import FileRow
from dropzone.unpacking import archive_outcome

#: A member's rows: (processed, failed, with a warning).
Counts = tuple[int, int, int]


def settle(archive: FileRow, children: Sequence[FileRow]) -> tuple[Outcome, str | None] | None:
    """The zip's outcome and error once every member is done, else None (it waits)."""
    if any(c.state is not FileState.DONE for c in children):
        return None
    outcome = archive_outcome([c.outcome for c in children if c.outcome is not None])
    error = None
    if outcome in (Outcome.REJECTED, Outcome.FAILED):
        error = (
            f"{printable(archive.relpath)}: none of the {len(children)} file(s) in it was imported; "
            "each member's status says why"
        )
    return outcome, error


def archive_doc(archive: FileRow, children: Sequence[FileRow], counts: Callable[[FileRow], Counts]) -> dict[str, Any]:
    """What the zip's status file adds: its members and their totals."""
    folder = archive.relpath.rpartition("/")[0]
    listed = []
    totals = [0, 0, 0, 0]
    for child in children:
        processed, failed, warned = counts(child)
        entry: dict[str, Any] = {"file": child.relpath, "status": child.outcome}
        if child.outbox_files:
            status_file = child.outbox_files[0]
            entry["statusFile"] = status_file[len(folder) + 1 :] if folder else status_file
        entry.update(rowsTotal=child.rows or 0, rowsProcessed=processed, rowsFailed=failed, rowsWithWarning=warned)
        if child.error:
            entry["error"] = child.error
        listed.append(entry)
        for i, n in enumerate((child.rows or 0, processed, failed, warned)):
            totals[i] += n
    return {
        "rowsTotal": totals[0],
        "rowsProcessed": totals[1],
        "rowsFailed": totals[2],
        "rowsWithWarning": totals[3],
        "members": listed,
    }


def member_doc(archive: FileRow) -> dict[str, Any]:
    """What a member's status file adds: the zip it came in."""
    return {"archive": archive.relpath}


__all__ = ["Counts", "archive_doc", "member_doc", "settle"]
