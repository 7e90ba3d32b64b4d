"""Health and metrics: what the daemon reports about itself, and the HTTP endpoint that serves it.

Owns: the Prometheus metrics (``Metrics``, on a private registry so tests and
two daemons in one process never share counters), the liveness and readiness
rules, the optional HTTP server (``/livez``, ``/readyz``, ``/metrics``; off
unless the configuration has an ``http`` section), and ``check``, the client
side of ``dropzone health``. Does not own when things happen: the daemon calls
the ``Metrics`` methods; this module never reaches into the daemon.

Threads: the daemon's loop writes, the server's threads read. prometheus_client
is thread-safe; the few readiness fields here are guarded by one lock.
Times are monotonic seconds from an injected clock (the daemon's).
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dropzone.jobs import Outcome

if TYPE_CHECKING:  # `dropzone health` (a HEALTHCHECK every 30 s) need not import requests
    from dropzone.marketo import CallRecord

__all__ = [
    "DEFAULT_LIVE_WITHIN",
    "DEFAULT_MARKETO_GRACE",
    "Check",
    "HealthServer",
    "Metrics",
    "base_url",
    "check",
    "probe_writable",
]

DEFAULT_LIVE_WITHIN: Final = 300.0
"""Seconds without a loop tick before /livez fails (systemd's WatchdogSec= is the same).
The loop ticks in its retry sleeps too, so the longest silence is one blocking call:
an upload within read_timeout (120 s by default)."""
_IDENTITY: Final = "identity"
"""``marketo.Endpoint.IDENTITY``: a call there that succeeded brought a new access token."""
DEFAULT_MARKETO_GRACE: Final = 300.0
"""Seconds Marketo may stay unreachable before /readyz fails; blips are retried anyway."""


@dataclass(frozen=True, slots=True)
class Check:
    """One health rule's verdict; ``detail`` says why, for people."""

    name: str
    ok: bool
    detail: str


def _answered(outcome: str) -> bool:
    """Did Marketo answer? "ok" and Marketo's own codes ("606", "1016") are answers;
    "HTTP 503", "HTTP 401" and exception names (no answer, or not Marketo's API answering) are not."""
    return outcome == "ok" or outcome.isdigit()


class Metrics:
    """The daemon's counters and gauges, and the inputs of /livez and /readyz.

    Args:
        clock: monotonic seconds; the daemon passes its own.
        live_within: seconds without ``tick()`` after which the daemon is not live.
        marketo_grace: seconds of failed Marketo calls (since the last answer) before not ready.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        live_within: float = DEFAULT_LIVE_WITHIN,
        marketo_grace: float = DEFAULT_MARKETO_GRACE,
    ) -> None:
        self.clock = clock
        self.live_within = live_within
        self.marketo_grace = marketo_grace
        self._lock = threading.Lock()
        # Creation counts as a tick: start-up (journal recovery, first scan) is not a hang.
        self._last_tick = clock()
        self._last_poll: float | None = None
        self._waiting_since: float | None = None
        self._config_loaded = False
        self._state_writable = False
        self._watchers_alive = False
        self._marketo_ok_at: float | None = None
        self._marketo_failing_since: float | None = None
        self._misconfigured: str | None = None

        self.registry = CollectorRegistry()
        r = self.registry
        self.files = Counter(
            "dropzone_files", "Files finished, by outcome (Complete, Partial, Failed, Rejected).",
            ["outcome"], registry=r,
        )
        for outcome in Outcome:  # present at 0, so rate() and alerts work before the first file
            self.files.labels(outcome.value)
        self.rows_imported = Counter(
            "dropzone_rows_imported", "Rows Marketo processed (rows with warnings included).", registry=r
        )
        self.rows_failed = Counter("dropzone_rows_failed", "Rows Marketo failed (in the failures file).", registry=r)
        self.rows_warned = Counter(
            "dropzone_rows_warned", "Rows imported with a warning (in the warnings file).", registry=r
        )
        self.batches_open = Gauge(
            "dropzone_batches_open", "Imports submitted to Marketo and not finished (queued or importing there).",
            registry=r,
        )
        self.batches_queued = Gauge(
            "dropzone_batches_queued", "Chunks split and waiting for dropzone to submit them.", registry=r
        )
        self.files_waiting = Gauge(
            "dropzone_files_waiting", "Files seen in the inboxes and not yet claimed (upload not complete yet).",
            registry=r,
        )
        Gauge(
            "dropzone_oldest_waiting_file_age_seconds", "Seconds the oldest waiting file has waited; 0 when none.",
            registry=r,
        ).set_function(self._oldest_waiting_age)
        self.api_calls = Counter(
            "dropzone_api_calls",
            "Marketo API calls by endpoint and code: ok, Marketo's code (606, 1016, ...), "
            "'HTTP <status>' or the error's class name when Marketo did not answer.",
            ["endpoint", "code"], registry=r,
        )
        self.token_refreshes = Counter(
            "dropzone_token_refreshes", "Access tokens obtained from Marketo Identity (the first one included).",
            registry=r,
        )
        self.chunks_split = Counter(
            "dropzone_chunks_split", "Chunks made from files over split_max_bytes (a file sent whole adds nothing).",
            registry=r,
        )
        Gauge(
            "dropzone_seconds_since_last_successful_poll",
            "Seconds since a batch status poll last succeeded; NaN before the first.", registry=r,
        ).set_function(lambda: self._since(self._last_poll))
        self.integration_refused = Gauge(
            "dropzone_marketo_integration_refused",
            "1 while Marketo refuses this integration itself (603 access denied, IP allow-list, bad "
            "credentials): submissions are paused, no file fails for it.", registry=r,
        )
        Gauge(
            "dropzone_seconds_since_last_tick", "Seconds since the main loop last started a pass.", registry=r,
        ).set_function(lambda: self._since(self._last_tick))

    # ---- what the daemon calls -----------------------------------------------

    def tick(self) -> None:
        """Each pass of the main loop (and while it sleeps in a retry): the daemon is live."""
        self._last_tick = self.clock()

    def file_finished(self, outcome: str, *, rows_processed: int, rows_failed: int, rows_warned: int) -> None:
        """A file's status file was written; ``outcome`` is a ``jobs.Outcome`` value."""
        self.files.labels(str(outcome)).inc()
        self.rows_imported.inc(rows_processed)
        self.rows_failed.inc(rows_failed)
        self.rows_warned.inc(rows_warned)

    def file_split(self, chunks: int) -> None:
        """A file was split into ``chunks`` chunks; one chunk is no split."""
        if chunks > 1:
            self.chunks_split.inc(chunks)

    def api_call(self, endpoint: str, outcome: str) -> None:
        """One HTTP exchange with Marketo. ``endpoint`` must be a small fixed set
        (``marketo.Endpoint``), never a path with ids in it: each value is a time series."""
        self.api_calls.labels(str(endpoint), outcome).inc()
        if str(endpoint) == _IDENTITY and outcome == "ok":
            self.token_refreshes.inc()
        now = self.clock()
        with self._lock:
            if _answered(outcome):
                self._marketo_ok_at = now
                self._marketo_failing_since = None
            elif self._marketo_failing_since is None:
                self._marketo_failing_since = now

    def on_call(self, record: CallRecord) -> None:
        """``MarketoClient(on_call=metrics.on_call)``: the same as ``api_call``."""
        self.api_call(str(record.endpoint), record.outcome)

    def poll_succeeded(self) -> None:
        """A batch status poll got Marketo's answer."""
        self._last_poll = self.clock()

    def set_batches(self, *, open: int, queued: int) -> None:
        self.batches_open.set(open)
        self.batches_queued.set(queued)

    def set_waiting(self, count: int, oldest_since: float | None) -> None:
        """Files waiting in the inboxes, and the clock reading when the oldest was first seen
        (the age is computed at scrape time, so it keeps growing if the loop stalls)."""
        self.files_waiting.set(count)
        self._waiting_since = oldest_since if count else None

    def set_ready_inputs(
        self,
        *,
        config_loaded: bool | None = None,
        state_writable: bool | None = None,
        watchers_alive: bool | None = None,
    ) -> None:
        """Update the readiness inputs given; the others keep their value (all start False)."""
        with self._lock:
            if config_loaded is not None:
                self._config_loaded = config_loaded
            if state_writable is not None:
                self._state_writable = state_writable
            if watchers_alive is not None:
                self._watchers_alive = watchers_alive

    def set_misconfigured(self, reason: str | None) -> None:
        """Marketo refuses this integration itself (603, credentials): not ready until it clears."""
        with self._lock:
            self._misconfigured = reason
        self.integration_refused.set(1 if reason else 0)

    # ---- verdicts ------------------------------------------------------------

    def liveness(self) -> Check:
        age = self.clock() - self._last_tick
        ok = age <= self.live_within
        return Check("loop", ok, f"last tick {age:.1f} s ago (limit {self.live_within:g} s)")

    def readiness(self) -> list[Check]:
        now = self.clock()
        with self._lock:
            ok_at, failing_since = self._marketo_ok_at, self._marketo_failing_since
            checks = [
                self.liveness(),
                Check("config", self._config_loaded, "loaded" if self._config_loaded else "not loaded yet"),
                Check("state", self._state_writable,
                      "state_dir writable" if self._state_writable else "state_dir not writable (or not checked yet)"),
                Check("watchers", self._watchers_alive,
                      "all alive" if self._watchers_alive else "an inbox watcher is dead (or not started yet)"),
            ]
            refused = self._misconfigured
        if refused is not None:
            checks.append(Check("marketo_access", False, f"Marketo refuses this integration: {refused}"))
        if failing_since is not None:
            failing_for = now - failing_since
            last = "never answered" if ok_at is None else f"last answered {now - ok_at:.0f} s ago"
            checks.append(Check(
                "marketo", failing_for < self.marketo_grace,
                f"calls failing for {failing_for:.0f} s (grace {self.marketo_grace:g} s); {last}",
            ))
        elif ok_at is None:
            # An idle daemon makes no calls; no evidence of trouble is not trouble.
            checks.append(Check("marketo", True, "no call yet"))
        else:
            checks.append(Check("marketo", True, f"last answered {now - ok_at:.0f} s ago"))
        return checks

    def _since(self, then: float | None) -> float:
        return math.nan if then is None else max(0.0, self.clock() - then)

    def _oldest_waiting_age(self) -> float:
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, self.clock() - since)


def probe_writable(path: Path) -> bool:
    """Create, write and remove a file in ``path``: the honest answer to "can the journal be written?"."""
    probe = path / f".dropzone-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


# ---- the HTTP server ------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "dropzone"
    sys_version = ""

    def do_GET(self) -> None:
        metrics = self.server.metrics
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            self._send_checks([metrics.liveness()])
        elif path == "/readyz":
            self._send_checks(metrics.readiness())
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: try /livez, /readyz or /metrics\n", "text/plain")

    def _send_checks(self, checks: list[Check]) -> None:
        failed = [c.name for c in checks if not c.ok]
        doc = {
            "status": "fail" if failed else "ok",
            "failed": failed,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        body = (json.dumps(doc) + "\n").encode()
        self._send(HTTPStatus.SERVICE_UNAVAILABLE if failed else HTTPStatus.OK, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not news; stderr is not our log stream


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up shutdown
    metrics: Metrics


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """Serves ``Metrics`` over HTTP from a daemon thread.

    Args:
        metrics: what to serve.
        host: address to bind (IPv4 or IPv6 literal, or a name); 127.0.0.1 keeps it private.
        port: TCP port; 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.metrics = metrics
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)

    def start(self) -> None:
        """Bind and serve. Raises OSError (address in use, …) here, so start-up fails loudly."""
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self._requested_port), _Handler)
        server.metrics = self.metrics
        self._server = server
        # The poll interval bounds how long stop() waits; ten idle wake-ups a second cost nothing.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="dropzone-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- dropzone health --------------------------------------------------------------


def base_url(host: str, port: int) -> str:
    """The URL to reach a server listening on ``host:port`` from this machine: a wildcard
    address (0.0.0.0, ::) is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``/livez and ``url``/readyz: exit code 0 when both answer 200, else 1, and a message.

    1, not 2: Docker's HEALTHCHECK reserves exit code 2. Proxies from the
    environment are ignored: the daemon is local, an HTTP_PROXY must not answer for it.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    lines: list[str] = []
    code = 0
    for name in ("livez", "readyz"):
        target = f"{url.rstrip('/')}/{name}"
        try:
            with opener.open(target, timeout=timeout) as resp:
                body, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
            exc.close()
        except (OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return 1, f"{name}: cannot reach {target}: {reason}"
        if status != 200:
            code = 1
        lines.append(f"{name}: {_describe(status, body)}")
    return code, "\n".join(lines)


def _describe(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
        checks = doc["checks"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
    if status == 200:
        return "ok"
    failed = [f"{name}: {c.get('detail', '')}" for name, c in checks.items() if not c.get("ok")]
    return f"HTTP {status}; " + "; ".join(failed)
