"""Report: tell the partner how each file went, then archive the original.

Each pass (``run_once``): a file whose chunks are all final gets its outcome
(``jobs.file_outcome``) and moves to ``finishing``; each finishing file gets
its failures, warnings and status files written into its inbox's outbox
(atomically: a partner never reads half a file), then its original (and the
marker it came with) is moved from the processing area into the archive.
Names are chosen once and journalled, so a crash and a retry write the same
files.

Distrust: result files for ``sub/NAME`` go to ``sub/`` of the partner's
*own* outbox, through ``safefs`` (no symlink followed from the outbox down);
a partner who plants a symlink there only keeps their own results from
reaching them: they are kept in ``state_dir/undeliverable/`` and logged.
The archive is the daemon's: its folders are created or verified as ours.

A file split under a route's column mapping gets its failures and warnings
files in the partner's column names: the reverse map the prepare stage left
in the file's work area (not the configuration, which may have been
reloaded since) renames the columns back and removes the constant ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from dropzone import __version__, health, jobs, mapping, members, outbox, safefs
from dropzone.config import Inbox
from dropzone.intake import MARKER_SUFFIX_IN_PROCESSING
from dropzone.jobs import ChunkState, FileState, Outcome
from dropzone.kinds import FileFormat
from dropzone.prepare import work_dir
from dropzone.store import ChunkRow, FileRow, Store, utc_now

log = structlog.get_logger("dropzone.report")


def _result(c: ChunkRow) -> jobs.ChunkResult:
    return jobs.ChunkResult(c.state, c.marketo_status, c.rows, c.processed, c.failed, c.warned)


def batch_doc(c: ChunkRow, shared: tuple[int, int] | None = None) -> dict[str, Any]:
    """One chunk as the status file shows it; ``shared``: the files and rows of the import it shared, if it did."""
    complete = c.state is ChunkState.DONE and c.marketo_status == "Complete"
    imported = jobs.imported_rows(_result(c))
    doc: dict[str, Any] = {
        "chunk": c.index,
        "batchId": c.batch_id,
        "sourceLines": [c.first_line, c.last_line],
        "rows": c.rows,
        "marketoStatus": c.marketo_status,
        "message": c.message,
        "rowsProcessed": c.processed if complete else imported,
        "rowsFailed": c.failed if complete else c.rows - imported,
        "rowsWithWarning": c.warned,
    }
    if c.error:
        doc["error"] = c.error
    if c.resubmits:
        doc["resubmitted"] = c.resubmits
    if shared:
        # One batchId on several partners' files is no mistake: say so, and how big the batch was.
        files, rows = shared
        doc["sharedWith"] = files - 1  # the others: this chunk's file is one of them
        doc["batchRows"] = rows
    return doc


def file_error(chunks: list[ChunkRow]) -> str | None:
    """The first thing that went wrong, for the status file's ``error``."""
    errors = [c.error for c in chunks if c.error]
    if errors:
        return errors[0]
    failed = [c for c in chunks if c.marketo_status == "Failed"]
    if failed:
        return f"Marketo failed batch {failed[0].batch_id}: {failed[0].message}"
    return None


@dataclass
class Report:
    """The report stage.

    Args:
        store: the journal.
        inbox_of: a file's inbox configuration (retired ones included), None if gone.
        state_dir: the work area, the default archive and undeliverable results live below it.
        metrics: counts finished files.
        heartbeat: called per file.
    """

    store: Store
    inbox_of: Callable[[Path], Inbox | None]
    state_dir: Path
    metrics: health.Metrics
    heartbeat: Callable[[], None] = lambda: None
    #: The configured folders' real paths at start (``Daemon.pins``).
    pins: dict[Path, str] = field(default_factory=dict)

    def run_once(self, now: float) -> bool:
        busy = self._settle()
        for row in self.store.files([FileState.FINISHING]):
            self.heartbeat()
            with structlog.contextvars.bound_contextvars(inbox=str(row.inbox), file=row.relpath):
                try:
                    self._report(row)
                    busy = True
                except OSError as exc:
                    # An unwritable outbox or archive: keep everything, try again later.
                    log.error("outbox_write_failed", error=str(exc), will_retry=True)
                except Exception:
                    log.exception("report_failed_internal_error")
        return busy

    def _settle(self) -> bool:
        busy = False
        for row in self.store.files_to_settle():
            chunks = self.store.chunks_of(row.id)
            if not all(c.state in jobs.CHUNK_FINAL for c in chunks):
                continue
            outcome = jobs.file_outcome(
                _result(c) for c in chunks
            )
            self.store.settle(row.id, outcome, error=file_error(chunks))
            busy = True
        for row in self.store.files([FileState.UNPACKED]):  # a zip, once every file it held is done
            settled = members.settle(row, self.store.children(row.id))
            if settled is not None:
                self.store.settle(row.id, settled[0], error=settled[1])
                busy = True
        return busy

    # ---- results ------------------------------------------------------------------

    def _report(self, row: FileRow) -> None:
        inbox = self.inbox_of(row.inbox)
        if row.finished_at is None:  # results not written yet (a retry of the archive step skips this)
            fmt = row.fmt or FileFormat.from_name(row.relpath) or FileFormat.CSV
            if inbox is None:
                self._deliver(row, fmt, self.state_dir / "orphaned-results", trusted=True)
            else:
                try:
                    self._deliver(row, fmt, inbox.outbox, trusted=False)
                except safefs.UnsafePathError as exc:
                    where = self.state_dir / "undeliverable" / str(row.id)
                    log.error("results_undeliverable_kept", reason=str(exc), kept_in=str(where))
                    self._deliver(row, fmt, where, trusted=True)
            row = self.store.file(row.id)
        # A zip's member has no original of its own: the zip is archived whole, once they are all done.
        archived = self._archive(row, inbox) if row.parent_id is None else None
        self.store.finish_file(row.id, finished_at=row.finished_at or utc_now(), archived_to=archived)
        shutil.rmtree(work_dir(self.state_dir, row.id), ignore_errors=True)

    def _deliver(self, row: FileRow, fmt: FileFormat, out_dir: Path, *, trusted: bool) -> None:
        if trusted:
            out_dir.mkdir(parents=True, exist_ok=True)  # ours, below state_dir
        with safefs.Root.open(out_dir, create=True, pin=None if trusted else self.pins.get(out_dir)) as out:
            if row.outbox_files is None:
                stamp = row.received_at.replace("-", "").replace(":", "")
                stem = outbox.choose_stem(out.exists, row.relpath, fmt.value, stamp)
                self.store.set_outbox_names(row.id, outbox.result_names(stem, fmt.value))
                row = self.store.file(row.id)
            status_name, failures_name, warnings_name = row.outbox_files or ["", "", ""]
            chunks = self.store.chunks_of(row.id)
            reverse = self._reverse_map(row)
            written: dict[str, str | None] = {"failures": None, "warnings": None}
            for kind, name in (("failures", failures_name), ("warnings", warnings_name)):
                pieces = []
                for c in chunks:
                    path = c.failures_path if kind == "failures" else c.warnings_path
                    if path is not None and path.exists():
                        pieces.append(outbox.ChunkRows(c.path, c.first_line, path.read_bytes()))
                data, _count = outbox.merge_rows(pieces, fmt=fmt, reverse=reverse) if pieces else (None, 0)
                if data is not None:
                    out.atomic_write(name, data, create_dirs=True)
                    written[kind] = Path(name).name
            # Totals, not every member: each of a shared import's N files would otherwise load all N.
            batches = [batch_doc(c, self.store.group_totals(c.group_id) if c.group_id is not None else None)
                       for c in chunks]
            # The instance that took the rows (a renamed instance's new name), by name only.
            instance = chunks[0].instance if chunks else row.target.instance if row.target else None
            doc = outbox.build_status(
                file=row.relpath,
                instance=instance,
                received_at=row.received_at,
                finished_at=utc_now(),
                route=self._route_doc(row),
                status=row.outcome or Outcome.FAILED,
                rows_total=row.rows or 0,
                batches=batches,
                error=row.error,
                error_line=row.error_line,
                notes=row.notes,
                failures_file=written["failures"],
                warnings_file=written["warnings"],
                version=__version__,
            )
            counted = {k: doc[k] for k in ("status", "rowsProcessed", "rowsFailed", "rowsWithWarning")}
            doc.update(self._family(row))  # a zip's members (their rows counted once, as theirs), a member's zip
            out.atomic_write(status_name, outbox.json_bytes(doc), create_dirs=True)
        self.store.mark_reported(row.id, finished_at=doc["finishedAt"])
        self.metrics.file_finished(
            counted["status"],
            rows_processed=counted["rowsProcessed"],
            rows_failed=counted["rowsFailed"],
            rows_warned=counted["rowsWithWarning"],
        )
        log.info(
            "file_finished",
            file_id=row.id,
            status=doc["status"],
            rows=doc["rowsTotal"],
            processed=doc["rowsProcessed"],
            failed=doc["rowsFailed"],
            warned=doc["rowsWithWarning"],
            batches=[b.get("batchId") for b in batches],
        )

    def _reverse_map(self, row: FileRow) -> mapping.ReverseMap | None:
        """The column mapping the file was split with, to undo in its result files (None: it had none)."""
        path = work_dir(self.state_dir, row.id) / mapping.REVERSE_MAP_NAME
        try:
            return mapping.ReverseMap.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            # The results still go out, under the names as sent: better than none.
            log.error("reverse_map_unreadable", error=str(exc))
            return None

    def _family(self, row: FileRow) -> dict[str, Any]:
        """A member's zip, or a zip's members, for the status file (nothing for other files)."""
        if row.parent_id is not None:
            return members.member_doc(self.store.file(row.parent_id))
        children = self.store.children(row.id) if row.target is None else []
        if not children:
            return {}

        def counts(child: FileRow) -> members.Counts:
            docs = [batch_doc(c) for c in self.store.chunks_of(child.id)]

            def total(key: str) -> int:
                return sum(d[key] or 0 for d in docs)

            return total("rowsProcessed"), total("rowsFailed"), total("rowsWithWarning")

        return members.archive_doc(row, children, counts)

    @staticmethod
    def _route_doc(row: FileRow) -> dict[str, Any] | None:
        if row.target is None:
            return None
        doc: dict[str, Any] = {"object": row.target.kind.value}
        if row.fmt is not None:
            doc["format"] = row.fmt.value
        doc.update(row.target.params())
        return doc

    # ---- archive ------------------------------------------------------------------

    def _archive(self, row: FileRow, inbox: Inbox | None) -> Path | None:
        area, name = row.processing_path.parent, row.processing_path.name
        root = (inbox.archive if inbox and inbox.archive else None) or self.state_dir / "archive"
        folder, _, base = row.relpath.rpartition("/")
        failed = "failed" if row.outcome in (Outcome.REJECTED, Outcome.FAILED) else ""
        sub = "/".join(p for p in (failed, row.received_at[:10].replace("-", "/"), folder) if p)
        inbox_root = safefs.Root.open(area.parent, pin=self.pins.get(area.parent))
        try:
            processing = inbox_root.open_dir(area.name, private=True)
        except FileNotFoundError:
            processing = None
        if processing is None or not processing.exists(name):
            if row.archived_to is None:
                # Not moved by us: the processing area (or the file) was removed under us.
                log.warning("original_missing_from_processing_area", processing=str(area))
            if processing is not None:
                processing.close()
            inbox_root.close()
            return row.archived_to  # moved before a crash, or gone
        with inbox_root, processing, safefs.Root.open(root, create=True, pin=self.pins.get(root)) as archive_root:
            with archive_root.open_dir(sub, create=True, private=True) as day:
                # The partner's own name; shortened (with a hash) only where a suffix must fit.
                target = base if not day.exists(base) else f"{outbox.fit_name(base)}.{row.id}"
                self.store.set_archive_target(row.id, root / sub / target)
                # The archive may be on another filesystem (state_dir's by default).
                safefs.rename(processing, name, day, target, cross_device=True)
                marker = name + MARKER_SUFFIX_IN_PROCESSING
                if processing.exists(marker):
                    beside = target + MARKER_SUFFIX_IN_PROCESSING
                    if len(os.fsencode(beside)) > outbox.NAME_MAX:
                        beside = outbox.fit_name(target) + MARKER_SUFFIX_IN_PROCESSING
                    safefs.rename(processing, marker, day, beside, cross_device=True)
        return root / sub / target
