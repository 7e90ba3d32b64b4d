"""The journal: one SQLite file in ``state_dir`` that survives crashes.

Owns the schema, the single-instance lock and every write of a file's or a
chunk's state. Each state change is one transaction that also checks the
transition against ``jobs``; the daemon saves a state *before* the action it
enables. Paths are stored as bytes, because partner file names need not be
UTF-8.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropzone.errors import StoreError
from dropzone.jobs import ChunkState, FileState, check_chunk_transition, check_file_transition

DB_NAME = "journal.sqlite3"
LOCK_NAME = "dropzone.lock"
SCHEMA_VERSION = 1

_DDL = (
    """CREATE TABLE IF NOT EXISTS files (
        id INTEGER PRIMARY KEY,
        inbox BLOB NOT NULL,
        relpath BLOB NOT NULL,
        processing_path BLOB NOT NULL,
        state TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        received_at TEXT NOT NULL,
        route TEXT,
        fmt TEXT,
        rows INTEGER,
        outcome TEXT,
        error TEXT,
        error_line INTEGER,
        notes TEXT NOT NULL DEFAULT '[]',
        finished_at TEXT,
        outbox_files TEXT,
        archived_to BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS files_state ON files(state)",
    """CREATE TABLE IF NOT EXISTS chunks (
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id),
        idx INTEGER NOT NULL,
        path BLOB NOT NULL,
        first_line INTEGER NOT NULL,
        last_line INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        batch_id INTEGER,
        submits INTEGER NOT NULL DEFAULT 0,
        resubmits INTEGER NOT NULL DEFAULT 0,
        marketo_status TEXT,
        message TEXT,
        processed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        failures_path BLOB,
        warnings_path BLOB,
        error TEXT,
        submitted_at TEXT,
        UNIQUE (file_id, idx)
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_state ON chunks(state)",
)


def _b(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _p(raw: bytes | None) -> Path | None:
    return None if raw is None else Path(os.fsdecode(raw))


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    inbox: Path
    relpath: str
    processing_path: Path
    state: FileState
    size: int
    received_at: str
    route: dict[str, Any] | None
    fmt: str | None
    rows: int | None
    outcome: str | None
    error: str | None
    error_line: int | None
    notes: list[str]
    finished_at: str | None
    outbox_files: list[str] | None
    archived_to: Path | None


@dataclass(frozen=True, slots=True)
class ChunkRow:
    id: int
    file_id: int
    index: int
    path: Path
    first_line: int
    last_line: int
    rows: int
    size: int
    state: ChunkState
    batch_id: int | None
    submits: int
    resubmits: int
    marketo_status: str | None
    message: str | None
    processed: int
    failed: int
    warned: int
    failures_path: Path | None
    warnings_path: Path | None
    error: str | None
    submitted_at: str | None


@dataclass(frozen=True, slots=True)
class NewChunk:
    index: int
    path: Path
    first_line: int
    last_line: int
    rows: int
    size: int


_FILE_JSON = {"route", "notes", "outbox_files"}
_PATH_FIELDS = {"inbox", "processing_path", "archived_to", "path", "failures_path", "warnings_path"}


def _file_row(r: sqlite3.Row) -> FileRow:
    return FileRow(
        id=r["id"],
        inbox=_p(r["inbox"]),  # type: ignore[arg-type]
        relpath=os.fsdecode(r["relpath"]),
        processing_path=_p(r["processing_path"]),  # type: ignore[arg-type]
        state=FileState(r["state"]),
        size=r["size"],
        received_at=r["received_at"],
        route=json.loads(r["route"]) if r["route"] else None,
        fmt=r["fmt"],
        rows=r["rows"],
        outcome=r["outcome"],
        error=r["error"],
        error_line=r["error_line"],
        notes=json.loads(r["notes"]),
        finished_at=r["finished_at"],
        outbox_files=json.loads(r["outbox_files"]) if r["outbox_files"] else None,
        archived_to=_p(r["archived_to"]),
    )


def _chunk_row(r: sqlite3.Row) -> ChunkRow:
    values = {f.name: r[f.name if f.name != "index" else "idx"] for f in dataclasses.fields(ChunkRow)}
    for name in ("path", "failures_path", "warnings_path"):
        values[name] = _p(values[name])
    values["state"] = ChunkState(values["state"])
    return ChunkRow(**values)


class Store:
    """The journal. One owner thread; other processes may read it (WAL)."""

    def __init__(self, state_dir: Path, *, lock: bool = True) -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state_dir {state_dir}: {exc.strerror}") from None
        self._lock_fd: int | None = None
        if lock:
            self._take_lock()
        try:
            self._db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a transition that returned is on disk, even after power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"the journal {state_dir / DB_NAME} is unusable: {exc}") from None
        except StoreError:
            self.close()
            raise

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another dropzone is already running on state_dir {self.state_dir} "
                f"(it holds {self.state_dir / LOCK_NAME}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the journal in {self.state_dir} was written by a newer dropzone (schema {version}); upgrade dropzone"
            )
        with self.transaction():
            for statement in _DDL:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- files ------------------------------------------------------------

    def begin_claim(self, *, inbox: Path, relpath: str, processing_path: Path, size: int, received_at: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO files (inbox, relpath, processing_path, state, size, received_at) VALUES (?,?,?,?,?,?)",
                (_b(inbox), os.fsencode(relpath), _b(processing_path), FileState.CLAIMING, size, received_at),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def forget_claim(self, file_id: int) -> None:
        """The rename never happened (the file vanished or was taken): no trace should remain."""
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE id=? AND state=?", (file_id, FileState.CLAIMING))

    def set_file(self, file_id: int, state: FileState | None = None, **fields: Any) -> None:
        """Update a file's fields and, if given, move it to ``state`` (checked against ``jobs``)."""
        with self.transaction() as db:
            self._set(db, "files", file_id, state, fields)

    def add_note(self, file_id: int, note: str) -> None:
        with self.transaction() as db:
            notes = json.loads(db.execute("SELECT notes FROM files WHERE id=?", (file_id,)).fetchone()[0])
            if note not in notes:
                notes.append(note)
            db.execute("UPDATE files SET notes=? WHERE id=?", (json.dumps(notes), file_id))

    def file(self, file_id: int) -> FileRow:
        row = self._db.execute("SELECT * FROM files WHERE id=?", (file_id,)).fetchone()
        if row is None:
            raise KeyError(file_id)
        return _file_row(row)

    def files(self, states: Iterable[FileState] | None = None, *, limit: int | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files", []
        if states is not None:
            states = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql.replace(' ORDER BY id', ' ORDER BY id DESC')} LIMIT {int(limit)}) ORDER BY id"
        return [_file_row(r) for r in self._db.execute(sql, args)]

    # ---- chunks -----------------------------------------------------------

    def add_chunks(self, file_id: int, chunks: Sequence[NewChunk], **file_fields: Any) -> None:
        """Record a file's chunks and move it to ``split``, in one transaction."""
        with self.transaction() as db:
            self._set(db, "files", file_id, FileState.SPLIT, file_fields)
            db.executemany(
                "INSERT INTO chunks (file_id, idx, path, first_line, last_line, rows, size, state)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (file_id, c.index, _b(c.path), c.first_line, c.last_line, c.rows, c.size, ChunkState.PENDING)
                    for c in chunks
                ],
            )

    def set_chunk(self, chunk_id: int, state: ChunkState | None = None, **fields: Any) -> None:
        """Update a chunk's fields and, if given, move it to ``state`` (checked against ``jobs``)."""
        with self.transaction() as db:
            self._set(db, "chunks", chunk_id, state, fields)

    def chunk(self, chunk_id: int) -> ChunkRow:
        return _chunk_row(self._db.execute("SELECT * FROM chunks WHERE id=?", (chunk_id,)).fetchone())

    def chunks_of(self, file_id: int) -> list[ChunkRow]:
        return [_chunk_row(r) for r in self._db.execute("SELECT * FROM chunks WHERE file_id=? ORDER BY idx", (file_id,))]

    def chunks(self, states: Iterable[ChunkState]) -> list[ChunkRow]:
        states = list(states)
        sql = f"SELECT * FROM chunks WHERE state IN ({','.join('?' * len(states))}) ORDER BY file_id, idx"
        return [_chunk_row(r) for r in self._db.execute(sql, states)]

    def counts(self) -> dict[str, int]:
        """Files by state and outcome, for ``dropzone status`` and metrics."""
        out: dict[str, int] = {}
        for state, outcome, n in self._db.execute("SELECT state, outcome, COUNT(*) FROM files GROUP BY 1, 2"):
            key = outcome if state == FileState.DONE and outcome else state
            out[key] = out.get(key, 0) + n
        return out

    def _set(
        self, db: sqlite3.Connection, table: str, row_id: int, state: FileState | ChunkState | None, fields: dict[str, Any]
    ) -> None:
        if state is not None:
            old = db.execute(f"SELECT state FROM {table} WHERE id=?", (row_id,)).fetchone()[0]  # noqa: S608
            if old != state:
                if table == "files":
                    check_file_transition(FileState(old), FileState(state))
                else:
                    check_chunk_transition(ChunkState(old), ChunkState(state))
            fields["state"] = state
        self._update(db, table, row_id, fields)

    @staticmethod
    def _update(db: sqlite3.Connection, table: str, row_id: int, fields: dict[str, Any]) -> None:
        if not fields:
            return
        values = []
        for name, value in fields.items():
            if isinstance(value, str):
                # Messages may quote a partner's file name with bytes that are not UTF-8.
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            if name in _FILE_JSON:
                value = json.dumps(value) if value is not None else None
            elif name in _PATH_FIELDS:
                value = _b(value)
            values.append(value)
        assignments = ", ".join(f"{name}=?" for name in fields)
        db.execute(f"UPDATE {table} SET {assignments} WHERE id=?", (*values, row_id))  # noqa: S608 - names are ours
