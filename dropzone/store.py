"""The journal: one SQLite file in ``state_dir`` that survives crashes.

Owns the schema, the single-instance lock and every write of a file's or a
chunk's state. Each state change is one transaction that also checks the
transition against ``jobs``; the daemon saves a state *before* the action it
enables. Paths are stored as bytes, because partner file names need not be
UTF-8.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from dropzone import store_queries as queries
from dropzone.errors import StoreError
from dropzone.jobs import (
    CHUNK_FINAL,
    ChunkState,
    FileState,
    Outcome,
    TransitionError,
    check_chunk_transition,
    check_file_transition,
)
from dropzone.journal_schema import (
    SCHEMA_VERSION,
    ChunkRow,
    Counts,
    FileRow,
    NewChunk,
    NewClaim,
    NewMember,
    Results,
    chunk_row,
    file_row,
    migrate,
)
from dropzone.kinds import FileFormat
from dropzone.targets import ImportTarget

DB_NAME = "journal.sqlite3"
LOCK_NAME = "dropzone.lock"

RESUBMIT_NOTE = (
    "chunk {index} is submitted again: the answer to its first submission was lost or unreadable "
    "({why}), and Marketo offers no way to look the batch up; the second copy goes out only after "
    "the first could have finished, so its rows may be imported twice, which updates the same "
    "records again (imports are upserts)"
)

def _b(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def utc_now() -> str:
    """A journal and status-file timestamp: UTC, seconds, ``Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: str | None) -> str | None:
    # Messages may quote a partner's file name with bytes that are not UTF-8.
    return None if value is None else value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Store:
    """The journal. One owner thread; other processes may read it (WAL)."""

    def __init__(self, state_dir: Path, *, lock: bool = True) -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state_dir {state_dir}: {exc.strerror}") from None
        self._lock_fd: int | None = None
        #: Committed transactions so far: a stage that found nothing to do skips its queries until this moves.
        self.changes = 0
        #: Split files a chunk of which became final since report last looked (None: not known, look at all).
        self._unsettled: set[int] | None = None
        if lock:
            self._take_lock()
        try:
            self._db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a transition that returned is on disk, even after power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db, self.state_dir, write=lock)
            for statement in queries.INDEXES if lock else ():
                self._db.execute(statement)
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
        self.changes += 1

    # ---- files: one verb per transition, one transaction each -----------------

    def begin_claim(
        self, *, inbox: Path, relpath: str, processing_path: Path, size: int, dev: int, ino: int
    ) -> int:
        """Saved before the rename into the processing area (``claiming``)."""
        [file_id] = self.begin_claims([NewClaim(inbox, relpath, processing_path, size, dev, ino)])
        return file_id

    def begin_claims(self, claims: Sequence[NewClaim]) -> list[int]:
        """``begin_claim`` for a batch, in one transaction (one fsync): the ids, in order."""
        with self.transaction() as db:
            return [
                int(db.execute(
                    "INSERT INTO files (inbox, relpath, processing_path, state, size, received_at, dev, ino)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (_b(c.inbox), os.fsencode(c.relpath), _b(c.processing_path), FileState.CLAIMING, c.size,
                     utc_now(), c.dev, c.ino),
                ).lastrowid or 0)
                for c in claims
            ]

    def confirm_claim(self, *file_ids: int) -> None:
        with self.transaction() as db:
            for file_id in file_ids:
                self._move(db, "files", file_id, FileState.CLAIMED)

    def forget_claim(self, file_id: int) -> None:
        """The rename never happened (the file vanished or was taken): no trace should remain."""
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE id=? AND state=?", (file_id, FileState.CLAIMING))

    def record_split(
        self,
        file_id: int,
        chunks: Sequence[NewChunk],
        *,
        target: ImportTarget,
        fmt: FileFormat,
        rows: int,
        notes: Sequence[str],
        header: bytes | None = None,
    ) -> None:
        """Record a file's chunks and where they go, and move it to ``split``.

        ``header``: the header line as written to every chunk, when the file's chunks may share an import
        with other files' (None: never).
        """
        with self.transaction() as db:
            self._move(db, "files", file_id, FileState.SPLIT)
            self._hint_settle(file_id)  # as if its chunks had changed: a file without any is settled at once
            db.execute(
                "UPDATE files SET route=?, fmt=?, rows=?, header=? WHERE id=?",
                (target.to_json(), fmt.value, rows, header, file_id),
            )
            for note in notes:
                self._note(db, file_id, note)
            db.executemany(
                "INSERT INTO chunks (file_id, idx, path, first_line, last_line, rows, size, state, instance)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        file_id, c.index, _b(c.path), c.first_line, c.last_line, c.rows, c.size, ChunkState.PENDING,
                        target.instance,
                    )
                    for c in chunks
                ],
            )

    def record_unpack(self, file_id: int, members: Sequence[NewMember], *, notes: Sequence[str] = ()) -> None:
        """A zip's members become files of their own (``parent_id``), and the zip waits for them: one transaction.

        Taken out: ``claimed``, routed and split like any file. Refused: ``finishing``, ``Rejected`` (its own
        status says why), or ``done`` at once when its name cannot name a file (the zip's status says why).
        """
        with self.transaction() as db:
            self._move(db, "files", file_id, FileState.UNPACKED)
            inbox, received_at = db.execute("SELECT inbox, received_at FROM files WHERE id=?", (file_id,)).fetchone()
            for note in notes:
                self._note(db, file_id, note)
            for m in members:
                refused = (Outcome.REJECTED, _text(m.error)) if m.error is not None else (None, None)
                told = FileState.FINISHING if m.own_status else FileState.DONE  # by its own status, or the zip's
                state = FileState.CLAIMED if m.error is None else told
                db.execute(
                    "INSERT INTO files (inbox, relpath, processing_path, state, size, received_at, parent_id, outcome,"
                    " error, outbox_files, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (inbox, os.fsencode(m.relpath), _b(m.path), state, m.size, received_at, file_id, *refused,
                     *(("[]", utc_now()) if state is FileState.DONE else (None, None))),
                )

    def children(self, file_id: int) -> list[FileRow]:
        """The files a zip held, in the zip's order."""
        rows = self._db.execute("SELECT * FROM files WHERE parent_id=? ORDER BY id", (file_id,))
        return [file_row(r) for r in rows]

    def settle(self, file_id: int, outcome: Outcome, *, error: str | None = None, line: int | None = None) -> None:
        """The outcome is known (or the file was refused): move it to ``finishing``."""
        with self.transaction() as db:
            self._move(db, "files", file_id, FileState.FINISHING)
            if self._unsettled is not None:
                self._unsettled.discard(file_id)
            db.execute(
                "UPDATE files SET outcome=?, error=?, error_line=? WHERE id=?",
                (outcome.value, _text(error), line, file_id),
            )

    def set_outbox_names(self, file_id: int, names: Sequence[str]) -> None:
        """Chosen once, before the first write, so a crash and a retry write the same names."""
        with self.transaction() as db:
            db.execute("UPDATE files SET outbox_files=? WHERE id=?", (json.dumps(list(names)), file_id))

    def set_archive_target(self, file_id: int, path: Path) -> None:
        """Saved before the move into the archive, so a crash after it still knows where it went."""
        with self.transaction() as db:
            db.execute("UPDATE files SET archived_to=? WHERE id=?", (_b(path), file_id))

    def mark_reported(self, file_id: int, *, finished_at: str) -> None:
        """The outbox has the results: a retry of the archive step never writes them again."""
        with self.transaction() as db:
            self._move(db, "files", file_id, FileState.FINISHING, again=True)
            db.execute("UPDATE files SET finished_at=? WHERE id=?", (finished_at, file_id))

    def finish_file(self, file_id: int, *, finished_at: str, archived_to: Path | None) -> None:
        with self.transaction() as db:
            self._move(db, "files", file_id, FileState.DONE)
            db.execute(
                "UPDATE files SET finished_at=?, archived_to=? WHERE id=?", (finished_at, _b(archived_to), file_id)
            )

    def add_note(self, file_id: int, note: str) -> None:
        with self.transaction() as db:
            self._note(db, file_id, note)

    def file(self, file_id: int) -> FileRow:
        row = self._db.execute("SELECT * FROM files WHERE id=?", (file_id,)).fetchone()
        if row is None:
            raise KeyError(file_id)
        return file_row(row)

    def files(
        self, states: Iterable[FileState] | None = None, *, limit: int | None = None, first: int | None = None
    ) -> list[FileRow]:
        """Files in these states in order of receipt: all, the ``first`` N or the last ``limit``."""
        sql, args = "SELECT * FROM files", []
        if states is not None:
            wanted = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args.extend(wanted)
        sql += " ORDER BY id"
        if first is not None:
            sql += f" LIMIT {int(first)}"
        if limit is not None:
            sql = f"SELECT * FROM ({sql.replace(' ORDER BY id', ' ORDER BY id DESC')} LIMIT {int(limit)}) ORDER BY id"  # noqa: S608 - our query, values bound, limit an int
        return [file_row(r) for r in self._db.execute(sql, args)]

    def files_with_ids(self, ids: Iterable[int], states: Iterable[FileState]) -> list[FileRow]:
        """These files (those in these states), in order of receipt: a pass loads what it works on, no more."""
        return [file_row(r) for r in queries.files_with_ids(self._db, ids, states)]

    def files_to_settle(self) -> list[FileRow]:
        """Split files whose chunks are all final; only those a chunk of which changed since the last call.

        The first call (after a start) looks at every split file. A file stays named until it is
        settled, so a pass that failed on it tries it again.
        """
        rows = [file_row(r) for r in queries.files_to_settle(self._db, self._unsettled)]
        self._unsettled = {row.id for row in rows}  # the others are named again when a chunk of theirs changes
        return rows

    def _hint_settle(self, file_id: int) -> None:
        if self._unsettled is not None:
            self._unsettled.add(file_id)

    def holds(self, dev: int, ino: int) -> bool:
        """Whether a file in flight (claimed, not yet done) is this device and inode."""
        sql = "SELECT 1 FROM files WHERE dev=? AND ino=? AND state!=? LIMIT 1"
        return self._db.execute(sql, (dev, ino, FileState.DONE.value)).fetchone() is not None

    def has_files(self, states: Iterable[FileState]) -> bool:
        wanted = list(states)
        sql = f"SELECT 1 FROM files WHERE state IN ({','.join('?' * len(wanted))}) LIMIT 1"  # noqa: S608
        return self._db.execute(sql, wanted).fetchone() is not None

    # ---- chunks -----------------------------------------------------------

    # Every verb below takes one chunk id and acts on its whole import: a chunk alone, or every chunk of
    # the group it shares a batch with (``group_id``). A shared batch has one state, one batchId.

    def mark_submitting(
        self,
        chunk_id: int,
        *,
        endpoint: str | None = None,
        members: Sequence[int] = (),
        upload: Path | None = None,
    ) -> None:
        """Saved right before the upload's bytes go out: a crash from here on is the ambiguous window.

        ``endpoint``: where they go, so the batch is looked for there even if the instance is renamed.
        ``members`` and ``upload``: other pending chunks merged with this one into the file ``upload``
        (written before this call); the group is formed here, in the same transaction, and kept from
        then on, so a resubmit sends the same bytes.
        """
        with self.transaction() as db:
            if members:
                group = [chunk_id, *members]
                marks = ",".join("?" * len(group))
                found = db.execute(
                    f"SELECT COUNT(*) FROM chunks WHERE id IN ({marks}) AND state=? AND group_id IS NULL",  # noqa: S608 - placeholders only
                    [*group, ChunkState.PENDING.value],
                ).fetchone()[0]
                if found != len(set(group)):
                    raise TransitionError("only pending chunks that share no import yet can be merged")
                db.execute(
                    f"UPDATE chunks SET group_id=?, upload_path=? WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                    [chunk_id, _b(upload), *group],
                )
            for member in self._group(db, chunk_id):
                # again: the client may retry an upload it knows was not executed without a requeue between.
                self._move(db, "chunks", member, ChunkState.SUBMITTING, again=True)
                db.execute("UPDATE chunks SET submits=submits+1, endpoint=? WHERE id=?", (endpoint, member))

    def remember_instances(self, endpoints: Mapping[str, str]) -> None:
        """Each configured instance's endpoint, by name; names no longer configured are kept."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO instances (name, endpoint) VALUES (?,?)"
                " ON CONFLICT(name) DO UPDATE SET endpoint=excluded.endpoint",
                list(endpoints.items()),
            )

    def known_instances(self) -> dict[str, str]:
        """Every instance name the journal has seen, with its last endpoint."""
        return dict(self._db.execute("SELECT name, endpoint FROM instances").fetchall())

    def reassign(self, chunk_id: int, instance: str) -> None:
        """The chunk's instance was renamed in the configuration: the same endpoint, a new name."""
        with self.transaction() as db:
            for member in self._group(db, chunk_id):
                db.execute("UPDATE chunks SET instance=? WHERE id=?", (instance, member))

    def requeue(self, chunk_id: int, *, unknown: str | None = None, not_before: float | None = None) -> None:
        """Back to ``pending``. ``unknown``: why the first copy may exist; counted and told in the status file."""
        with self.transaction() as db:
            group = self._group(db, chunk_id)
            for member in group:
                self._move(db, "chunks", member, ChunkState.PENDING)
                if unknown is None:
                    continue
                db.execute(
                    "UPDATE chunks SET resubmits=resubmits+1, not_before=? WHERE id=?", (not_before, member)
                )
                file_id, index = db.execute("SELECT file_id, idx FROM chunks WHERE id=?", (member,)).fetchone()
                self._note(db, file_id, RESUBMIT_NOTE.format(index=index, why=unknown))

    def record_batch(self, chunk_id: int, *, batch_id: int, status: str) -> None:
        """Marketo accepted the chunk: from now on it is polled, never sent again."""
        with self.transaction() as db:
            at = utc_now()
            for member in self._group(db, chunk_id):
                self._move(db, "chunks", member, ChunkState.SUBMITTED)
                db.execute(
                    "UPDATE chunks SET batch_id=?, marketo_status=?, submitted_at=? WHERE id=?",
                    (batch_id, status, at, member),
                )

    def record_progress(self, chunk_id: int, *, status: str, counts: Counts) -> None:
        """The batch's counters so far (a shared batch's: the whole batch's, until its results are split)."""
        with self.transaction() as db:
            for member in self._group(db, chunk_id):
                db.execute(
                    "UPDATE chunks SET marketo_status=?, processed=?, failed=?, warned=? WHERE id=?",
                    (status, counts.processed, counts.failed, counts.warned, member),
                )

    def finish_batch(self, chunk_id: int, *, status: str, message: str | None, counts: Counts) -> None:
        """Complete or Failed: the result files are fetched next (``fetching``)."""
        with self.transaction() as db:
            for member in self._group(db, chunk_id):
                self._move(db, "chunks", member, ChunkState.FETCHING)
                db.execute(
                    "UPDATE chunks SET marketo_status=?, message=?, processed=?, failed=?, warned=? WHERE id=?",
                    (status, _text(message), counts.processed, counts.failed, counts.warned, member),
                )

    def store_results(
        self,
        chunk_id: int,
        *,
        failures: Path | None = None,
        warnings: Path | None = None,
        counts: Counts | None = None,
        per_chunk: Mapping[int, Results] | None = None,
    ) -> None:
        """The result files are in the work area (``done``); ``counts`` fills counters Marketo left out.

        ``per_chunk``: each member's own share of a shared batch (its rows of the result files, its
        counts), for every chunk of the group; without it every member gets the same values.
        """
        with self.transaction() as db:
            group = self._group(db, chunk_id)
            if per_chunk is not None and set(per_chunk) != set(group):
                raise ValueError(f"results for chunks {sorted(per_chunk)}, the batch has {group}")
            for member in group:
                mine = per_chunk[member] if per_chunk is not None else Results(failures, warnings, counts)
                self._move(db, "chunks", member, ChunkState.DONE)
                db.execute(
                    "UPDATE chunks SET failures_path=?, warnings_path=? WHERE id=?",
                    (_b(mine.failures), _b(mine.warnings), member),
                )
                if mine.counts is not None:
                    db.execute(
                        "UPDATE chunks SET processed=?, failed=?, warned=? WHERE id=?",
                        (mine.counts.processed, mine.counts.failed, mine.counts.warned, member),
                    )

    def fail_chunk(self, chunk_id: int, error: str) -> None:
        """Refused or lost: every file in the import is failed with the same reason."""
        with self.transaction() as db:
            for member in self._group(db, chunk_id):
                self._move(db, "chunks", member, ChunkState.ERROR)
                db.execute("UPDATE chunks SET error=? WHERE id=?", (_text(error), member))

    def group_of(self, chunk_id: int) -> list[ChunkRow]:
        """Every chunk of the chunk's import, in order of receipt (a chunk alone: itself)."""
        return [self.chunk(member) for member in self._group(self._db, chunk_id)]

    def group_totals(self, group_id: int) -> tuple[int, int]:
        """A shared import's files and rows, counted in the journal (one query, whatever its size)."""
        sql = "SELECT COUNT(DISTINCT file_id), COALESCE(SUM(rows), 0) FROM chunks WHERE group_id=?"
        files, rows = self._db.execute(sql, (group_id,)).fetchone()
        return int(files), int(rows)

    def count_batches(
        self, states: Iterable[ChunkState], *, instance: str | None = None, endpoint: str | None = None
    ) -> int:
        """Imports (a shared one counted once) whose chunks are in these states."""
        sql, args = queries.where_chunks(states, instance, endpoint)
        query = f"SELECT COUNT(DISTINCT COALESCE(group_id, id)) FROM chunks WHERE {sql}"  # noqa: S608
        return int(self._db.execute(query, args).fetchone()[0])

    def count_chunks(
        self, states: Iterable[ChunkState], *, instance: str | None = None, endpoint: str | None = None
    ) -> int:
        sql, args = queries.where_chunks(states, instance, endpoint)
        return int(self._db.execute(f"SELECT COUNT(*) FROM chunks WHERE {sql}", args).fetchone()[0])  # noqa: S608

    def chunk(self, chunk_id: int) -> ChunkRow:
        row = self._db.execute("SELECT * FROM chunks WHERE id=?", (chunk_id,)).fetchone()
        if row is None:
            raise KeyError(chunk_id)
        return chunk_row(row)

    def chunks_of(self, file_id: int) -> list[ChunkRow]:
        return [
            chunk_row(r) for r in self._db.execute("SELECT * FROM chunks WHERE file_id=? ORDER BY idx", (file_id,))
        ]

    def chunks(
        self, states: Iterable[ChunkState], *, instance: str | None = None, endpoint: str | None = None
    ) -> list[ChunkRow]:
        """Chunks in these states (of one instance, sent to one endpoint, when given), in order of receipt."""
        sql, args = queries.where_chunks(states, instance, endpoint)
        rows = self._db.execute(f"SELECT * FROM chunks WHERE {sql} ORDER BY file_id, idx", args)  # noqa: S608
        return [chunk_row(r) for r in rows]

    def pending_heads(
        self, instance: str, *, per_route: int, budget: int = 0, wall: float = math.inf
    ) -> list[ChunkRow]:
        """Pending chunks of one instance a submit pass can choose from, in order of receipt: the oldest
        ``per_route`` of each inbox and import target that can go now and, where files share imports,
        ``budget`` bytes of them (``store_queries.pending_heads``); never the whole backlog."""
        rows = queries.pending_heads(self._db, instance, per_route, budget=budget, wall=wall)
        return sorted((chunk_row(r) for r in rows), key=lambda c: (c.file_id, c.index))

    def imports(self, states: Iterable[ChunkState], *, instance: str, endpoint: str | None = None) -> list[ChunkRow]:
        """The first chunk of each of the instance's imports in these states (sent to ``endpoint``, when
        given), in order of receipt: a shared import is one row, however many files it carries."""
        return [chunk_row(r) for r in queries.imports(self._db, states, instance, endpoint)]

    def has_pending(self, instance: str) -> bool:
        return queries.has_pending(self._db, instance)

    def chunk_instances(self, states: Iterable[ChunkState]) -> set[str]:
        """The instances that own chunks in these states."""
        sql, args = queries.where_chunks(states, None)
        return {r[0] for r in self._db.execute(f"SELECT DISTINCT instance FROM chunks WHERE {sql}", args)}  # noqa: S608

    def counts(self) -> dict[str, int]:
        """Files by state and outcome, for ``dropzone status`` and metrics."""
        out: dict[str, int] = {}
        for state, outcome, n in self._db.execute("SELECT state, outcome, COUNT(*) FROM files GROUP BY 1, 2"):
            key = outcome if state == FileState.DONE and outcome else state
            out[key] = out.get(key, 0) + n
        return out

    @staticmethod
    def _group(db: sqlite3.Connection, chunk_id: int) -> list[int]:
        found = db.execute("SELECT group_id FROM chunks WHERE id=?", (chunk_id,)).fetchone()
        if found is None:
            raise KeyError(chunk_id)
        if found[0] is None:
            return [chunk_id]
        rows = db.execute("SELECT id FROM chunks WHERE group_id=? ORDER BY file_id, idx", (found[0],))
        return [r[0] for r in rows]

    def _move(
        self, db: sqlite3.Connection, table: str, row_id: int, new: FileState | ChunkState, *, again: bool = False
    ) -> None:
        """Check and make one transition; ``again``: staying in ``new`` is allowed too (a verb that repeats)."""
        owner = "file_id" if table == "chunks" else "id"
        found = db.execute(f"SELECT state, {owner} FROM {table} WHERE id=?", (row_id,)).fetchone()  # noqa: S608 - ours
        if found is None:
            raise KeyError(row_id)
        if table == "chunks" and new in CHUNK_FINAL:
            self._hint_settle(found["file_id"])
        if not (again and found["state"] == new):
            if table == "files":
                check_file_transition(FileState(found["state"]), FileState(new))
            else:
                check_chunk_transition(ChunkState(found["state"]), ChunkState(new))
        db.execute(f"UPDATE {table} SET state=? WHERE id=?", (new.value, row_id))  # noqa: S608

    @staticmethod
    def _note(db: sqlite3.Connection, file_id: int, note: str) -> None:
        found = db.execute("SELECT notes FROM files WHERE id=?", (file_id,)).fetchone()
        if found is None:
            raise KeyError(file_id)
        notes = json.loads(found[0])
        note = _text(note) or ""
        if note not in notes:
            notes.append(note)
        db.execute("UPDATE files SET notes=? WHERE id=?", (json.dumps(notes), file_id))


__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "RESUBMIT_NOTE",
    "SCHEMA_VERSION",
    "ChunkRow",
    "Counts",
    "FileRow",
    "NewChunk",
    "NewClaim",
    "NewMember",
    "Results",
    "Store",
    "utc_now",
]
