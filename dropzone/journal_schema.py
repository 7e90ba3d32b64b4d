"""The journal's schema: the tables as first created, each upgrade since, and the rows as read.

``store`` opens a journal and brings it to ``SCHEMA_VERSION`` through
``UPGRADES`` in one transaction; an old dropzone refuses a newer journal.
Kept apart from the verbs so each upgrade reads as one list of statements.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dropzone.defaults import DEFAULT_INSTANCE
from dropzone.errors import StoreError
from dropzone.jobs import ChunkState, FileState, Outcome
from dropzone.kinds import FileFormat
from dropzone.targets import ImportTarget

SCHEMA_VERSION = 5

#: Schema 2, as created; later schemas are reached through ``UPGRADES`` from here.
DDL = (
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
        archived_to BLOB,
        dev INTEGER,
        ino INTEGER
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
        processed INTEGER,
        failed INTEGER,
        warned INTEGER,
        failures_path BLOB,
        warnings_path BLOB,
        error TEXT,
        submitted_at TEXT,
        not_before REAL,
        UNIQUE (file_id, idx)
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_state ON chunks(state)",
)

#: What each older schema needs to reach this one (SQLite adds columns in place).
_CHUNK_COLUMNS_V1 = (
    "id, file_id, idx, path, first_line, last_line, rows, size, state, batch_id, submits, resubmits,"
    " marketo_status, message, processed, failed, warned, failures_path, warnings_path, error, submitted_at"
)
UPGRADES: dict[int, tuple[str, ...]] = {
    # 2: the claimed file's identity; a resubmit hold; counters that may be unknown (NULL).
    1: (
        "ALTER TABLE files ADD COLUMN dev INTEGER",
        "ALTER TABLE files ADD COLUMN ino INTEGER",
        "ALTER TABLE chunks RENAME TO chunks_v1",
        DDL[2],
        f"INSERT INTO chunks ({_CHUNK_COLUMNS_V1}) SELECT {_CHUNK_COLUMNS_V1} FROM chunks_v1",  # noqa: S608 - our own column list, no values
        "DROP TABLE chunks_v1",
        DDL[3],
    ),
    # 3: the Marketo instance each chunk goes to, the endpoint its bytes went to (when sent), and
    # each instance name's last endpoint (a renamed instance's chunks follow it).
    2: (
        "CREATE TABLE instances (name TEXT PRIMARY KEY, endpoint TEXT NOT NULL)",
        f"ALTER TABLE chunks ADD COLUMN instance TEXT NOT NULL DEFAULT '{DEFAULT_INSTANCE}'",
        "ALTER TABLE chunks ADD COLUMN endpoint TEXT",
        "CREATE INDEX IF NOT EXISTS chunks_instance_state ON chunks(instance, state)",
    ),
    # 4: coalescing. A file's header as written to its chunks (NULL: its route does not share imports,
    # or it was split before coalescing); the import a chunk shares with others (the id of the
    # group's first chunk; NULL: its own import) and the merged file sent for it, kept so a resubmit
    # after a lost answer sends the same bytes.
    3: (
        "ALTER TABLE files ADD COLUMN header BLOB",
        "ALTER TABLE chunks ADD COLUMN group_id INTEGER",
        "ALTER TABLE chunks ADD COLUMN upload_path BLOB",
        "CREATE INDEX IF NOT EXISTS chunks_group ON chunks(group_id)",
    ),
    # 5: archives. A zip's members are files of their own: ``parent_id`` is the zip's id (NULL: a file
    # dropped as it is); the zip waits for them in state ``unpacked`` (a new value, no column).
    4: (
        "ALTER TABLE files ADD COLUMN parent_id INTEGER REFERENCES files(id)",
        "CREATE INDEX IF NOT EXISTS files_parent ON files(parent_id)",
    ),
}


# ---- the rows as ``store`` reads and writes them -------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    inbox: Path
    relpath: str
    processing_path: Path
    state: FileState
    size: int
    received_at: str
    target: ImportTarget | None  # set once the file is split
    fmt: FileFormat | None
    rows: int | None
    outcome: Outcome | None
    error: str | None
    error_line: int | None
    notes: list[str]
    finished_at: str | None
    outbox_files: list[str] | None
    archived_to: Path | None
    dev: int | None  # the claimed file's identity, as readiness saw it
    ino: int | None
    #: The header line as written to every chunk, when the route lets the file share imports (``coalesce``).
    header: bytes | None = None
    #: The zip this file came out of (None: dropped as it is).
    parent_id: int | None = None


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
    processed: int | None
    failed: int | None
    warned: int | None
    failures_path: Path | None
    warnings_path: Path | None
    error: str | None
    submitted_at: str | None
    not_before: float | None  # wall-clock seconds: not submitted before (a possible copy is waited out)
    instance: str  # the configured instance that owns the chunk
    endpoint: str | None  # where its bytes were sent (``MarketoSettings.subscription``); None before
    #: The import it shares with other chunks: the id of that group's first chunk (None: its own import).
    group_id: int | None = None
    #: The merged file sent for its group (None: the chunk's own file is sent).
    upload_path: Path | None = None

    @property
    def batch_key(self) -> int:
        """The id every chunk of one import shares (a chunk alone: its own)."""
        return self.group_id if self.group_id is not None else self.id


@dataclass(frozen=True, slots=True)
class NewChunk:
    index: int
    path: Path
    first_line: int
    last_line: int
    rows: int
    size: int


@dataclass(frozen=True, slots=True)
class NewClaim:
    """A file about to be claimed (``Store.begin_claims``): where it is, where it goes, what it is."""

    inbox: Path
    relpath: str
    processing_path: Path
    size: int
    dev: int
    ino: int


@dataclass(frozen=True, slots=True)
class NewMember:
    """One file taken out of a zip (or refused), as ``Store.record_unpack`` journals it.

    ``relpath``: where it is routed and reported (the zip's folder, then its name in the zip); for a member
    whose name cannot name a file (``own_status`` False), its name in the zip, shown in the zip's status only.
    ``path``: its extracted plaintext in the zip's work dir (never written for a refused one). ``error``:
    why it is refused (it is then ``Rejected`` without being read).
    """

    relpath: str
    path: Path
    size: int
    error: str | None = None
    own_status: bool = True


@dataclass(frozen=True, slots=True)
class Results:
    """One chunk's result files in the work area, and counters Marketo left out (or a shared batch's share)."""

    failures: Path | None
    warnings: Path | None
    counts: Counts | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """A batch's counters as Marketo gave them; None: not given."""

    processed: int | None = None
    failed: int | None = None
    warned: int | None = None


def file_row(r: sqlite3.Row) -> FileRow:
    return FileRow(
        id=r["id"],
        inbox=Path(os.fsdecode(r["inbox"])),
        relpath=os.fsdecode(r["relpath"]),
        processing_path=Path(os.fsdecode(r["processing_path"])),
        state=FileState(r["state"]),
        size=r["size"],
        received_at=r["received_at"],
        target=_target(r["route"]),
        fmt=FileFormat(r["fmt"]) if r["fmt"] else None,
        rows=r["rows"],
        outcome=Outcome(r["outcome"]) if r["outcome"] else None,
        error=r["error"],
        error_line=r["error_line"],
        notes=json.loads(r["notes"]),
        finished_at=r["finished_at"],
        outbox_files=json.loads(r["outbox_files"]) if r["outbox_files"] else None,
        archived_to=_p(r["archived_to"]),
        dev=r["dev"],
        ino=r["ino"],
        header=r["header"],
        parent_id=r["parent_id"],
    )


def chunk_row(r: sqlite3.Row) -> ChunkRow:
    values = {f.name: r[f.name if f.name != "index" else "idx"] for f in dataclasses.fields(ChunkRow)}
    for name in ("path", "failures_path", "warnings_path", "upload_path"):
        values[name] = _p(values[name])
    values["state"] = ChunkState(values["state"])
    return ChunkRow(**values)


def _p(raw: bytes | None) -> Path | None:
    return None if raw is None else Path(os.fsdecode(raw))


def _target(raw: str | None) -> ImportTarget | None:
    if not raw:
        return None
    doc = json.loads(raw)
    doc.pop("format", None)  # schema 1 kept the format in the route
    return ImportTarget.from_json(json.dumps(doc))


def migrate(db: sqlite3.Connection, state_dir: Path, *, write: bool) -> None:
    """Bring the journal at ``db`` to ``SCHEMA_VERSION`` in one transaction (``write`` False: only read it)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the journal in {state_dir} was written by a newer dropzone (schema {version}); upgrade dropzone"
        )
    if not write and 0 < version < SCHEMA_VERSION:
        # A reader (``dropzone status``) beside an older running daemon never upgrades its journal.
        raise StoreError(
            f"the journal in {state_dir} has schema {version}; the dropzone that owns it is older "
            f"than this command (schema {SCHEMA_VERSION}): restart it with this version first"
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if version == 0:
            for statement in DDL:
                db.execute(statement)
            version = 2
        for old in range(version, SCHEMA_VERSION):
            for statement in UPGRADES[old]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
