"""The journal's queries that a pass makes, bounded by what the pass can work on, never by the backlog.

``Store`` turns their rows into ``FileRow`` and ``ChunkRow``; here are the SQL and the indexes it
relies on, so that a pass costs O(what changed) whether 10 or 100,000 files are in flight.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from dropzone.jobs import CHUNK_FINAL, ChunkState, FileState

#: Indexes any schema gets (idempotent), so that no query of a pass scans the backlog or the history:
#: ``holds`` runs once per claim; ``pending_heads`` walks the split files by inbox and route.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS files_identity ON files(ino, dev)",
    "CREATE INDEX IF NOT EXISTS files_route ON files(state, inbox, route)",
)
#: The (inbox, route) pairs of files in one state, one index probe each (a loose index scan).
_CLASSES = """WITH RECURSIVE
  ib(inbox) AS (
    SELECT (SELECT MIN(inbox) FROM files WHERE state=?1)
    UNION ALL SELECT (SELECT MIN(inbox) FROM files WHERE state=?1 AND inbox>ib.inbox) FROM ib WHERE inbox IS NOT NULL),
  cls(inbox, route) AS (
    SELECT inbox, (SELECT MIN(route) FROM files WHERE state=?1 AND inbox=ib.inbox) FROM ib WHERE inbox IS NOT NULL
    UNION ALL SELECT inbox, (SELECT MIN(route) FROM files WHERE state=?1 AND inbox=cls.inbox AND route>cls.route)
    FROM cls WHERE route IS NOT NULL)
SELECT inbox, route FROM cls WHERE route IS NOT NULL"""
#: The oldest pending chunks of one (inbox, route): CROSS JOIN keeps SQLite walking ``files_route``
#: in order of receipt and stopping at the limit, rather than sorting every pending chunk.
_HEADS = (
    "SELECT c.* FROM files f CROSS JOIN chunks c ON c.file_id=f.id WHERE f.state=? AND f.inbox=? AND f.route=?"
    " AND c.instance=? AND c.state=? ORDER BY f.id, c.idx LIMIT ?"
)


#: SQLite's bound on host parameters is 999 in old builds: ids go in slices.
_SLICE = 500


def files_with_ids(db: sqlite3.Connection, ids: Iterable[int], states: Iterable[FileState]) -> list[sqlite3.Row]:
    wanted, found = list(states), []
    every = sorted(set(ids))
    for start in range(0, len(every), _SLICE):
        some = every[start : start + _SLICE]
        sql = (
            f"SELECT * FROM files WHERE id IN ({','.join('?' * len(some))})"  # noqa: S608 - placeholders only
            f" AND state IN ({','.join('?' * len(wanted))}) ORDER BY id"
        )
        found += db.execute(sql, [*some, *wanted]).fetchall()
    return found


def files_to_settle(db: sqlite3.Connection, among: set[int] | None) -> list[sqlite3.Row]:
    """Split files without a chunk that is not final: ``among`` these ids, or all (None)."""
    finals = [s.value for s in CHUNK_FINAL]
    keep = ",".join("?" * len(finals))
    sql = "SELECT * FROM files f WHERE state=? AND NOT EXISTS "
    sql += f"(SELECT 1 FROM chunks c WHERE c.file_id=f.id AND c.state NOT IN ({keep}))"  # noqa: S608 - placeholders
    if among is None:
        return db.execute(f"{sql} ORDER BY id", [FileState.SPLIT, *finals]).fetchall()
    ids, rows = sorted(among), []
    for start in range(0, len(ids), _SLICE):
        some = ids[start : start + _SLICE]
        where = f" AND id IN ({','.join('?' * len(some))}) ORDER BY id"
        rows += db.execute(sql + where, [FileState.SPLIT, *finals, *some]).fetchall()
    return rows


def pending_heads(db: sqlite3.Connection, instance: str, per_route: int) -> list[sqlite3.Row]:
    """The oldest ``per_route`` pending chunks of ``instance`` in each (inbox, route) of split files."""
    return [
        r
        for inbox, route in db.execute(_CLASSES, (FileState.SPLIT,)).fetchall()
        for r in db.execute(_HEADS, (FileState.SPLIT, inbox, route, instance, ChunkState.PENDING, per_route))
    ]
