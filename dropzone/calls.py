"""Where the dispatch stage's Marketo calls run, and the part of each that needs no journal.

The daemon gives each instance a few threads (``ThreadPoolExecutor``), so a
slow upload or a sick instance never holds the loop, the inboxes, the
outboxes or the other instances; tests and tools run calls ``Inline``. Code
here never touches the journal: the loop's thread marks a chunk
``submitting`` before its upload is handed over, and applies every result.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from dropzone import jobs, merging, outbox
from dropzone.jobs import FetchAction
from dropzone.kinds import FileFormat
from dropzone.marketo import MarketoClient
from dropzone.merging import Member, Shares
from dropzone.targets import ImportTarget

T = TypeVar("T")


class Inline(Executor):
    """Runs each call at once, in the caller's thread: results are there when ``submit`` returns."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - Interrupted too: the future carries it to the loop
            future.set_exception(exc)
        return future


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """A call's value, or what it raised (``Interrupted`` is never caught: it is the future's)."""

    value: T | None = None
    error: Exception | None = None


def start(calls: Executor, call: Callable[[], T]) -> Future[Attempt[T]]:
    """Run ``call`` on ``calls`` with the caller's log context (inbox, file, chunk, batchId)."""
    context = contextvars.copy_context()
    return calls.submit(context.run, _attempt, call)


def _attempt(call: Callable[[], T]) -> Attempt[T]:
    try:
        return Attempt(value=call())
    except Exception as exc:  # noqa: BLE001 - the loop decides what it means (jobs.after_*)
        return Attempt(error=exc)


@dataclass
class Downloaded:
    """The failure and warning files of one batch, written beside its chunk in the work area."""

    found: dict[str, Path | None] = field(default_factory=lambda: {"failures": None, "warnings": None})
    rows: dict[str, int] = field(default_factory=lambda: {"failures": 0, "warnings": 0})
    #: Set when the fetch must be tried again: ``WouldWaitError`` (the instance waits) or another error.
    retry: Exception | None = None
    #: Kinds Marketo had no file for (``jobs.FetchAction.GIVE_UP``), with why.
    gave_up: dict[str, str] = field(default_factory=dict)
    #: A shared batch's files split back per chunk, by kind (``merging.share_results``).
    shares: dict[str, Shares] = field(default_factory=dict)


def download_results(
    client: MarketoClient, target: ImportTarget, batch_id: int, chunk_path: Path, fmt: FileFormat,
    *, failed: int | None, warned: int | None,
) -> Downloaded:
    """Fetch a finished batch's failure and warning files (each only when its counter is not 0)."""
    out = Downloaded()
    for kind, count, fetch in (("failures", failed, client.failures), ("warnings", warned, client.warnings)):
        if count is not None and count <= 0:
            continue  # unknown counters (program members may omit them): the files tell
        body: bytes | None = None
        error: Exception | None = None
        try:
            body = fetch(target, batch_id, retry_for=0.0)
        except Exception as exc:  # noqa: BLE001 - jobs.after_fetch decides
            error = exc
        match jobs.after_fetch(error):
            case FetchAction.WAIT_INSTANCE | FetchAction.RETRY:
                out.retry = error
                return out
            case FetchAction.GIVE_UP:
                out.gave_up[kind] = str(error)
            case FetchAction.STORE if body:
                path = chunk_path.with_name(f"{chunk_path.name}.{kind}")
                outbox.atomic_write(path, body)
                out.found[kind] = path
                out.rows[kind] = outbox.count_rows(body, fmt=fmt)
    return out


def download_shared_results(
    client: MarketoClient, target: ImportTarget, batch_id: int, upload: Path, members: Sequence[Member],
    fmt: FileFormat, *, failed: int | None, warned: int | None,
) -> Downloaded:
    """A shared batch's failure and warning files, fetched once beside its merged upload, then split back
    per chunk (the matching reads every chunk: here, off the loop)."""
    out = download_results(client, target, batch_id, upload, fmt, failed=failed, warned=warned)
    if out.retry is not None:
        return out
    for kind, path in out.found.items():
        body = path.read_bytes() if path is not None else b""
        out.shares[kind] = merging.share_results(body, members, fmt, kind)
    return out


__all__ = ["Attempt", "Downloaded", "Inline", "download_results", "download_shared_results", "start"]
