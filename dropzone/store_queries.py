"""The journal's queries that a pass makes, bounded by what the pass can work on, never by the backlog.

``Store`` turns their rows into ``FileRow`` and ``ChunkRow``; here are the SQL and the indexes it
relies on, so that a pass costs O(what changed) whether 10 or 100,000 files are in flight.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

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
#: The pending chunks of one (inbox, route), oldest first, and whether each one's file may share an
#: import (``shares``): CROSS JOIN keeps SQLite walking ``files_route`` in order of receipt, row by
#: row, so the caller stops reading when it has enough, rather than SQLite sorting every pending chunk.
_HEADS = (
    "SELECT c.*, f.header IS NOT NULL AS shares FROM files f CROSS JOIN chunks c ON c.file_id=f.id"
    " WHERE f.state=? AND f.inbox=? AND f.route=? AND c.instance=? AND c.state=? ORDER BY f.id, c.idx"
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


def pending_heads(
    db: sqlite3.Connection, instance: str, per_route: int, *, budget: int = 0, wall: float = math.inf
) -> list[sqlite3.Row]:
    """The oldest pending chunks of ``instance`` in each (inbox, route) of split files: enough to choose from.

    Per (inbox, route), chunks are read in order of receipt until ``per_route`` of them could be sent now
    (each leads its import, none held past ``wall``) and, where files share imports, until those add
    up to ``budget`` bytes (what one merged import can take). Held chunks and the other members of a
    shared import come along without counting: they cannot be chosen.
    """
    found: list[sqlite3.Row] = []
    for inbox, route in db.execute(_CLASSES, (FileState.SPLIT,)).fetchall():
        rows = db.execute(_HEADS, (FileState.SPLIT, inbox, route, instance, ChunkState.PENDING))
        found += take_heads(rows, per_route, budget=budget, wall=wall)
    return found


def take_heads(rows: Iterable[Mapping[str, Any]], per_route: int, *, budget: int, wall: float) -> list[Any]:
    """The first ``rows`` (pending chunks of one route, oldest first) a submit pass can choose from."""
    taken: list[Any] = []
    chosen = size = 0
    for row in rows:
        taken.append(row)
        if row["group_id"] not in (None, row["id"]):
            continue  # rides with its import's first chunk
        if row["not_before"] is not None and row["not_before"] > wall:
            continue  # held back: not a choice now
        chosen += 1
        size += row["size"]
        if chosen >= per_route and (not row["shares"] or size >= budget):
            break
    return taken


def where_chunks(
    states: Iterable[ChunkState], instance: str | None, endpoint: str | None = None
) -> tuple[str, list[str]]:
    """A WHERE clause with placeholders only, and its values. ``endpoint``: sent there, or not recorded."""
    args = [s.value for s in states]
    sql = f"state IN ({','.join('?' * len(args))})"
    if instance is not None:
        sql += " AND instance=?"
        args.append(instance)
    if endpoint is not None:
        sql += " AND (endpoint IS NULL OR endpoint=?)"
        args.append(endpoint)
    return sql, args


def imports(
    db: sqlite3.Connection, states: Iterable[ChunkState], instance: str, endpoint: str | None
) -> list[sqlite3.Row]:
    """The first chunk of each import in these states (a chunk alone is its own): one row per batch,
    however many files a shared one carries."""
    sql, args = where_chunks(states, instance, endpoint)
    query = f"SELECT * FROM chunks WHERE {sql} AND (group_id IS NULL OR group_id=id) ORDER BY file_id, idx"  # noqa: S608 - placeholders only
    return db.execute(query, args).fetchall()


def has_pending(db: sqlite3.Connection, instance: str) -> bool:
    """Whether any chunk of ``instance`` waits to be sent (one index probe)."""
    sql = "SELECT 1 FROM chunks WHERE instance=? AND state=? LIMIT 1"
    return db.execute(sql, (instance, ChunkState.PENDING.value)).fetchone() is not None
