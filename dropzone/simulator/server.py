"""The HTTP edge: a stdlib threading server on 127.0.0.1 speaking HTTP/1.1 keep-alive.

Owns sockets only: reading bodies (Content-Length or chunked, as seed 004's
request sends), writing answers (at once, or trickled at a ``Response.pace``
for the "trickle" fault), and closing a connection without an answer for the
"reset" faults. Every decision is the ``Handler`` callback's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .replies import Response
from .state import Request, parse_query

# Handler(request) -> (response, drop): drop=True closes the socket unanswered.
Handler = Callable[[Request], tuple[Response | None, bool]]

_CHUNK = 64 * 1024
# Room for multipart framing and form fields around a file of max_file_bytes.
_BODY_SLACK = 1024 * 1024
# A trickled body is written at most this often (several bytes per write at high paces).
_TRICKLE_TICK = 0.01


class SimHTTPServer(ThreadingHTTPServer):
    """Serves one ``Handler``; remembers its connections so ``close_all`` can end idle keep-alives."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops SYNs when a client opens many
    # connections at once; the retry a second later would hide 615.
    request_queue_size = 128

    def __init__(self, port: int, handler: Handler, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body + _BODY_SLACK
        self._connections: set[socket.socket] = set()
        self._aborted: set[socket.socket] = set()
        # Set by close_all: a trickling answer stops mid-body.
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", port), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._connections.add(request)
        super().process_request(request, client_address)

    def abort(self, sock: socket.socket) -> None:
        """Close ``sock`` with an RST once the handler returns: the client sees a reset, not an answer."""
        self._aborted.add(sock)

    def shutdown_request(self, request: Any) -> None:
        self._connections.discard(request)
        if request in self._aborted:
            self._aborted.discard(request)
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close()
            return
        super().shutdown_request(request)

    def close_all(self) -> None:
        self.stopping.set()
        for sock in list(self._connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is normal traffic for a fault simulator.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dropzone-simulator"
    sys_version = ""
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 120
    server: SimHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus
        # delayed ACK costs ~40 ms per keep-alive call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # http.server dispatches on do_<METHOD>; every method goes to the one handler.
    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        try:
            body, too_large = self._read_body()
        except ValueError:
            self.send_error(400, "Bad request body")
            self.close_connection = True
            return
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_query(split.query),
            authorization=self.headers.get("Authorization"),
            content_type=self.headers.get("Content-Type"),
            body=body,
            body_too_large=too_large,
        )
        response, drop = self.server.handler(request)
        if drop or response is None:
            self.close_connection = True
            self.server.abort(self.connection)
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status == 413:
            # The body may not have been what we think it was; start clean.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if response.pace:
            self._trickle(response.body, response.pace)
        else:
            self.wfile.write(response.body)

    def _trickle(self, body: bytes, pace: float) -> None:
        """Write ``body`` at ``pace`` bytes per second: byte i leaves at about i / pace seconds."""
        start = time.monotonic()
        sent = 0
        while sent < len(body):
            due = min(len(body), int((time.monotonic() - start) * pace) + 1)
            if due > sent:
                self.wfile.write(body[sent:due])
                sent = due
                continue
            wait = max(start + sent / pace - time.monotonic(), _TRICKLE_TICK)
            if self.server.stopping.wait(wait):
                # Shutting down: the client gets a short body, then the connection closes.
                self.close_connection = True
                return

    def _read_body(self) -> tuple[bytes, bool]:
        """The whole body, kept up to the size cap and drained past it (so a 413 can be answered)."""
        kept = bytearray()
        too_large = False

        def take(data: bytes) -> None:
            nonlocal too_large
            if too_large:
                return
            if len(kept) + len(data) > self.server.max_body:
                too_large = True
                kept.clear()
                return
            kept.extend(data)

        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ValueError("truncated chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                while size:
                    data = self.rfile.read(min(size, _CHUNK))
                    if not data:
                        raise ValueError("truncated chunk")
                    take(data)
                    size -= len(data)
                self.rfile.readline(8)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            if remaining < 0:
                raise ValueError("negative Content-Length")
            while remaining:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise ValueError("truncated body")
                take(data)
                remaining -= len(data)
        return bytes(kept), too_large
