"""The HTTP endpoint of health and metrics, and the client side of ``dropzone health``.

Serves ``/livez``, ``/readyz`` and ``/metrics`` from a ``health.Metrics``
(off unless the configuration has an ``http`` section), on its own threads:
they only read. ``check`` asks a running daemon, for HEALTHCHECK and cron.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dropzone.health import Check, Metrics

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


__all__ = ["HealthServer", "base_url", "check"]
