"""What the partner gets back: the status, failures and warnings files.

Owns the content of those files (built from journal rows and Marketo's
failure/warning files) and how they reach the outbox: a hidden temporary
name in the same folder, fsync, rename, fsync of the folder, so a partner
never reads half a file.

Re-drops: results go to ``NAME.status.json`` (and ``NAME.failures.EXT``,
``NAME.warnings.EXT``). If any of those names is still in the outbox (the
partner has not collected the previous results), the new results are written
as ``NAME.<received UTC stamp>.status.json`` and so on, so nothing uncollected
is ever overwritten.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropzone.kinds import FileFormat
from dropzone.mapping import LineMap, ReverseMap, line_map_path
from dropzone.rewriting import RowWriter

SCHEMA_VERSION = 1
SOURCE_LINE_COLUMN = "Source Line"


def printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (partner file names) shown as ``\\xff`` escapes.

    Python keeps such bytes in ``str`` as lone surrogates, which neither JSON
    files nor SQLite can hold.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _printable_doc(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _printable_doc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_doc(v) for v in value]
    return value


def json_bytes(doc: dict[str, Any]) -> bytes:
    """A JSON document as UTF-8 bytes, whatever bytes the partner's file names hold."""
    return (json.dumps(_printable_doc(doc), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that readers see the old file, or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Longest file name most filesystems take (bytes).
NAME_MAX = 255
#: Room kept for ".<stamp>-N.failures.csv" after a shortened name.
_SUFFIX_ROOM = 48


def result_names(relpath: str, ext: str) -> tuple[str, str, str]:
    return f"{relpath}.status.json", f"{relpath}.failures.{ext}", f"{relpath}.warnings.{ext}"


def fit_name(relpath: str) -> str:
    """``relpath`` with its last part shortened (and made unique by a hash) if result names would not fit."""
    folder, _, name = relpath.rpartition("/")
    raw = os.fsencode(name)
    if len(raw) + _SUFFIX_ROOM <= NAME_MAX:
        return relpath
    digest = hashlib.sha256(raw).hexdigest()[:12]
    short = raw[: NAME_MAX - _SUFFIX_ROOM - 14].decode("utf-8", "ignore") + f"~{digest}"
    return f"{folder}/{short}" if folder else short


def choose_stem(exists: Callable[[str], bool], relpath: str, ext: str, stamp: str) -> str:
    """``relpath``, or ``relpath.<stamp>`` when earlier results under that name are still uncollected.

    A name too long for result suffixes is shortened first (with a hash, so two long names do not collide).
    """
    relpath = fit_name(relpath)
    if any(exists(name) for name in result_names(relpath, ext)):
        stem = f"{relpath}.{stamp}"
        n = 1
        while any(exists(name) for name in result_names(stem, ext)):
            n += 1
            stem = f"{relpath}.{stamp}-{n}"
        return stem
    return relpath


@dataclass(frozen=True, slots=True)
class ChunkRows:
    """Marketo's failure (or warning) file for one chunk, and where that chunk came from."""

    chunk_path: Path
    first_line: int
    body: bytes


def count_rows(body: bytes, *, fmt: FileFormat | str) -> int:
    """Data rows in one of Marketo's failure or warning files (quoted line breaks are one row)."""
    text = body.decode("utf-8", errors="replace")
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=FileFormat(fmt).delimiter) if r]
    except csv.Error:
        return 0
    return max(len(rows) - 1, 0)


def merge_rows(
    pieces: Sequence[ChunkRows], *, fmt: FileFormat | str, reverse: ReverseMap | None = None
) -> tuple[bytes | None, int]:
    """One file from the chunks' failure (or warning) files: one header, rows in order, each with its source line.

    Marketo echoes the submitted header plus its reason column, and the
    submitted values of each affected row, with no row number. The source
    line is found by matching the row's values against the chunk as sent
    (and its line map, where mapped columns dropped line breaks); a row
    that matches nothing (Marketo is known to drop columns in some failure
    rows) gets an empty source line rather than a guess. ``reverse`` (a
    route's column mapping) gives the partner's column names back and
    removes the constant columns, once the rows are matched.

    Returns the bytes (None when there are no rows) and the row count.
    """
    delimiter = FileFormat(fmt).delimiter
    header: list[str] | None = None
    out_rows: list[list[str]] = []
    for piece in pieces:
        text = piece.body.decode("utf-8", errors="replace")
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
        if not rows:
            continue
        if header is None:
            header = rows[0]
        data = [r for r in rows[1:] if r]
        lines = _source_lines(piece.chunk_path, piece.first_line, delimiter, [tuple(r[:-1]) for r in data])
        if reverse:
            _, data = reverse.apply(rows[0], data)
        out_rows.extend([*row, str(line) if line else ""] for row, line in zip(data, lines, strict=True))
    if header is None or not out_rows:
        return None, 0
    if reverse:
        header, _ = reverse.apply(header, [])
    write = RowWriter(delimiter, "\r\n" if fmt == FileFormat.CSV else "\n")
    text = write([*header, SOURCE_LINE_COLUMN]) + "".join(map(write, out_rows))
    return text.encode("utf-8"), len(out_rows)


def _source_lines(chunk_path: Path, first_line: int, delimiter: str, wanted: list[tuple[str, ...]]) -> list[int | None]:
    """Source line of each wanted row, streaming the chunk so memory stays bounded by ``wanted``.

    Physical lines are counted as the splitter counts them: line feeds only
    (a lone CR inside a quoted value starts no line).
    """
    positions: dict[tuple[str, ...], list[int]] = {key: [] for key in wanted}
    try:
        lines = _line_map(chunk_path)
        with open(chunk_path, encoding="utf-8", newline="\n") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            next(reader, None)  # header
            header_lines = consumed = reader.line_num
            for row in reader:
                start = lines.source_line(first_line, consumed - header_lines)
                consumed = reader.line_num
                key = tuple(row)
                if key in positions:
                    positions[key].append(start)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return [None] * len(wanted)
    taken: dict[tuple[str, ...], int] = {}
    result: list[int | None] = []
    for key in wanted:
        i = taken.get(key, 0)
        found = positions.get(key, [])
        result.append(found[i] if i < len(found) else None)
        taken[key] = i + 1
    return result


def _line_map(chunk_path: Path) -> LineMap:
    """The chunk's line map (none: its lines are the source's). ``ValueError`` if it is unreadable."""
    try:
        return LineMap.decode(line_map_path(chunk_path).read_bytes())
    except FileNotFoundError:
        return LineMap()


def build_status(
    *,
    file: str,
    instance: str | None = None,
    received_at: str,
    finished_at: str,
    route: dict[str, Any] | None,
    status: str,
    rows_total: int,
    batches: Iterable[dict[str, Any]],
    error: str | None = None,
    error_line: int | None = None,
    notes: Sequence[str] = (),
    failures_file: str | None = None,
    warnings_file: str | None = None,
    version: str = "",
) -> dict[str, Any]:
    """The status document, as written to ``NAME.status.json``."""
    batches = list(batches)
    doc: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "file": file,
        "status": status,
        "receivedAt": received_at,
        "finishedAt": finished_at,
        "route": route,
        **({"instance": instance} if instance else {}),
        "rowsTotal": rows_total,
        "rowsProcessed": sum(b.get("rowsProcessed") or 0 for b in batches),
        "rowsFailed": sum(b.get("rowsFailed") or 0 for b in batches),
        "rowsWithWarning": sum(b.get("rowsWithWarning") or 0 for b in batches),
        "batches": batches,
    }
    if error:
        doc["error"] = {"message": error, "line": error_line} if error_line else {"message": error}
    if notes:
        doc["notes"] = list(notes)
    if failures_file:
        doc["failuresFile"] = failures_file
    if warnings_file:
        doc["warningsFile"] = warnings_file
    if version:
        doc["dropzoneVersion"] = version
    return doc
