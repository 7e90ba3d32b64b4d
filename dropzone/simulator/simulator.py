"""``Simulator``: the running fake, its thread, its lock and its test-facing API.

Owns the lifecycle (start, stop), the one lock around ``SimState``, the
ticker that moves jobs along even when nobody polls, the record file, and
the inspection and fault-injection methods tests use. HTTP lives in
``server``, rules in ``state`` and below.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from .config import SimConfig
from .faults import Fault, slow_seconds
from .jobs import Job, JobStatus
from .replies import Response
from .server import SimHTTPServer
from .state import Request, SimState

# How often the ticker moves jobs along and writes records.
_TICK_SECONDS = 0.02


class Simulator:
    """A fake Marketo subscription on 127.0.0.1.

    Args:
        config: the knobs.
        clock: seconds since the epoch; inject a manual clock to step time in
            tests (dwell times, token expiry, rate windows, retention).
    """

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = SimState(config, now=self._clock())
        self._stopping = threading.Event()
        self._server: SimHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._record: IO[str] | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1:``config.port`` (0 = any free port) and serve in daemon threads."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        if self.config.record_path is not None:
            path = Path(self.config.record_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Open for the simulator's whole life; closed in stop().
            self._record = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._server = SimHTTPServer(self.config.port, self._handle, self.config.max_file_bytes)
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim-http", daemon=True
        )
        tick = threading.Thread(target=self._tick, name="sim-ticker", daemon=True)
        self._threads = [serve, tick]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and flush the record file. Idempotent."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_all()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            self._state.advance(self._clock())
            self._flush_records()
            if self._record is not None:
                self._record.close()
                self._record = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The REST endpoint (bulk calls go under ``/bulk``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def identity_url(self) -> str:
        """Identity base: ``identity_url + "/oauth/token"``."""
        return self.base_url + "/identity"

    # -- control ----------------------------------------------------------------------

    def arm(self, fault: Fault) -> int:
        """Arm one misbehaviour (kinds, parameters and lifetimes: see ``faults``); returns its id.

            sim.arm(Fault("create_then", reply="503", times=2))
            sim.arm(Fault("refuse", endpoint="import", seconds=30, flavour="ip_allowlist"))

        ``seconds`` run on the simulator's clock (a manual clock in tests).
        """
        with self._lock:
            return self._state.faults.arm(fault, self._clock())

    def disarm(self, fault_id: int) -> bool:
        """Forget one armed fault; False if it was already used up, expired or unknown."""
        with self._lock:
            return self._state.faults.disarm(fault_id)

    def armed(self) -> list[dict[str, Any]]:
        """Faults still armed, oldest first: id, kind, endpoint, remaining, seconds_left, params."""
        with self._lock:
            return self._state.faults.armed(self._clock())

    def inject(self, kind: str, times: int = 1, endpoint: str | None = None) -> None:
        """The next ``times`` matching calls get fault ``kind``: ``arm(Fault(kind, endpoint=..., times=...))``.

        ``endpoint``: "identity", "import", "status", "failures", "warnings",
        "usage", a describe or target endpoint ("describe_leads",
        "describe_customobject", "describe_programmember", "list", "program",
        "channel", "partitions"), "other", or None for any API (non-identity) call.
        """
        with self._lock:
            self._state.faults.inject(kind, times, endpoint, now=self._clock())

    def clear_faults(self) -> None:
        """Forget armed faults not yet used up (random rates stay)."""
        with self._lock:
            self._state.faults.clear()

    def expire_token(self) -> None:
        """Every issued token expires now: next use 602, then 601; Identity mints a new one."""
        with self._lock:
            self._state.tokens.expire_all(self._clock())

    def add_background_jobs(self, n: int, seconds: float | None = None) -> list[int]:
        """Queue ``n`` jobs of other integrations (never in ``submissions()``).

        They count toward the 2 importing / 10 open limits and each imports for
        ``seconds`` (default ``config.background_job_seconds``). Returns their
        batchIds; fewer than ``n`` if the queue filled up.
        """
        seconds = self.config.background_job_seconds if seconds is None else seconds
        with self._lock:
            ids = self._state.add_background_jobs(n, seconds, self._clock())
            self._changed.notify_all()
            return ids

    def add_foreign_calls(self, n: int, user: str = "other.integration@dropzone.invalid") -> None:
        """Count ``n`` API calls of another integration toward today's quota (usage.json shows them;
        607 comes sooner). They take no time and no place in the rate window."""
        with self._lock:
            self._state.quota.count(self._clock(), user, n)

    def calls_today(self) -> int:
        """The day's calls counted toward the daily quota, every API user's (what usage.json says)."""
        with self._lock:
            return self._state.quota.today(self._clock())[1]

    # -- inspection -------------------------------------------------------------------

    def submissions(self) -> list[dict[str, Any]]:
        """Every accepted import of ours, in submission order, with live status and counts."""
        with self._lock:
            now = self._sync()
            return [_snapshot(job, now) for job in self._state.submissions]

    def job(self, batch_id: int) -> dict[str, Any]:
        """One job (ours or background) with its history and per-row verdicts; KeyError if unknown."""
        with self._lock:
            now = self._sync()
            job = self._state.queue.get(int(batch_id), now)
            if job is None:
                raise KeyError(batch_id)
            snap = _snapshot(job, now)
            snap["history"] = [{"status": s, "t": t} for s, t in job.history]
            snap["outcomes"] = [
                {"values": list(o.values), "failure": o.failure, "warning": o.warning, "dropped": o.dropped}
                for o in job.outcomes
            ]
            return snap

    def imported_rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rows that reached "Marketo" (warned rows included), in completion order."""
        with self._lock:
            self._sync()
            return [dict(r) for r in self._state.imported if kind is None or r["kind"] == kind]

    def calls(self) -> list[dict[str, Any]]:
        """HTTP calls, identity included, oldest first (the newest 100 000); query secrets redacted."""
        with self._lock:
            return [dict(c) for c in self._state.calls]

    def in_flight(self) -> int:
        """API calls being served right now (what the 615 limit counts)."""
        with self._lock:
            return self._state.in_flight.count

    def current_token(self) -> str | None:
        """The token Identity would hand out now (None before the first grant)."""
        with self._lock:
            return self._state.tokens.current()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job (ours or background) is Queued or Importing; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._sync()
                if self._state.queue.is_idle():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, _TICK_SECONDS))

    # -- internals ----------------------------------------------------------------------

    def _handle(self, request: Request) -> tuple[Response | None, bool]:
        state = self._state
        with self._lock:
            ticket = state.begin(request, self._clock())
        response: Response | None = None
        drop = False
        try:
            fault = ticket.fault or ""
            if fault.startswith("slow:"):
                self._stopping.wait(slow_seconds(fault))
            if fault == "reset_before":
                drop = True
                return None, True
            state.prepare(ticket)
            with self._lock:
                response = state.process(ticket, self._clock())
                self._flush_records()
                self._changed.notify_all()
            drop = fault == "reset"
            return response, drop
        finally:
            with self._lock:
                state.end(ticket, self._clock(), response, delivered=not drop)

    def _sync(self) -> float:
        now = self._clock()
        self._state.advance(now)
        self._flush_records()
        return now

    def _tick(self) -> None:
        while not self._stopping.wait(_TICK_SECONDS):
            with self._lock:
                self._sync()
                self._changed.notify_all()

    def _flush_records(self) -> None:
        records = self._state.records
        if not records:
            return
        if self._record is not None:
            for record in records:
                self._record.write(json.dumps(record) + "\n")
            self._record.flush()
        records.clear()


def _snapshot(job: Job, now: float) -> dict[str, Any]:
    processed, failed, warned = job.counts(now)
    return {
        "batchId": job.batch_id,
        "kind": job.kind,
        "params": dict(job.params),
        "param_sources": dict(job.param_sources),
        "header": list(job.header),
        "rows": len(job.outcomes),
        "bytes": job.nbytes,
        "filename": job.filename,
        "status": job.status.value,
        "processed": processed,
        "failed": failed,
        "warnings": warned,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "open": job.status in (JobStatus.QUEUED, JobStatus.IMPORTING),
    }
