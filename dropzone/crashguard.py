"""A file that kills the daemon while it is prepared must not kill it again on every restart.

A bug in a reader written in C or Rust (a workbook, an archive), or the kernel's OOM killer, can stop
the whole process while one file is being decoded or split: no exception reaches Python, and the file,
still claimed, is taken again after the restart, and again. So ``Prepare`` says which file it is on
(``begin``, one small unsynced write: a crash of the process keeps it, only a power cut would not) and
clears it after (``end``). At start-up, a file found there was being prepared when the daemon died; it
is counted (``crashes.json``), and once it has been there ``D.PREPARE_CRASHES`` times it is Rejected
instead of tried again, the original kept. Everything else the daemon does goes on meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import structlog

from dropzone import defaults as D

log = structlog.get_logger("dropzone.crashguard")

_ON = "preparing"
_COUNTS = "crashes.json"


class CrashGuard:
    """Which file the prepare stage is on, and how often the daemon died on each (``state_dir/work``)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "work"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.counts: dict[int, int] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, AttributeError):
            raw = json.loads((self.dir / _COUNTS).read_text())
            self.counts = {int(k): int(v) for k, v in raw.items()}
        with contextlib.suppress(FileNotFoundError, ValueError):
            died_on = int((self.dir / _ON).read_text())
            self.counts[died_on] = self.counts.get(died_on, 0) + 1
            log.warning("daemon_died_preparing_a_file", file_id=died_on, times=self.counts[died_on])
            self._save()
        (self.dir / _ON).unlink(missing_ok=True)

    def poison(self, file_id: int) -> str | None:
        """Why the file must not be tried again, or None."""
        times = self.counts.get(file_id, 0)
        if times < D.PREPARE_CRASHES:
            return None
        return (
            f"dropzone stopped {times} times while preparing this file (a crash of a reader, or memory "
            "exhausted): it is not tried again; the original is kept, please report this"
        )

    def begin(self, file_id: int) -> None:
        (self.dir / _ON).write_text(str(file_id))

    def end(self, file_id: int) -> None:
        (self.dir / _ON).unlink(missing_ok=True)
        if self.counts.pop(file_id, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.dir / f"{_COUNTS}.tmp"
        tmp.write_text(json.dumps({str(k): v for k, v in self.counts.items()}))
        os.replace(tmp, self.dir / _COUNTS)


__all__ = ["CrashGuard"]
