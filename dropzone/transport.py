"""The wire under the Marketo client: a session that never resends, and replies with bounds.

Owns how bytes move (sessions, sockets, deadlines, size caps), not what they
mean: ``dropzone.replies`` reads them and ``dropzone.marketo`` decides what
to do. Two rules:

* Nothing here sends a request twice. urllib3's own retries are off for every
  method and status: the client retries what Marketo says was not executed,
  and only it can tell an import POST from a GET.
* Every exchange has a wall-clock deadline, upload and reply included, and a
  floor on its rate. A per-read timeout alone does not bound a reply trickled
  one byte at a time, so the sockets of a session made here never wait more
  than ``ReplyLimits.tick_every`` at once: between two waits they run the
  exchange's ``tick`` (the daemon's heartbeat and shutdown check, which may
  raise) and check the deadline and the rate again (``Exchange``). ``read_body``
  counts the bytes it keeps.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import io
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from dropzone import __version__
from dropzone import defaults as D
from dropzone.instances import MarketoSettings

_CHUNK = 64 * 1024

#: The exchange running in this context. A context variable because urllib3
#: builds connections and responses where no argument of ours reaches.
_EXCHANGE: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("dropzone_wire_exchange", default=None)


def no_tick() -> None:
    """The default ``tick``: nothing to report, nothing to stop."""


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """How long an exchange may take, how slowly it may move and how much of a reply is read.

    ``min_rate`` (bytes per second; 0 turns it off) applies to each direction of
    an exchange once it has run ``rate_grace`` seconds. ``tick_every`` is the
    longest single wait on a socket.
    """

    call_deadline: float = D.CALL_DEADLINE_S
    transfer_deadline: float = D.TRANSFER_DEADLINE_S
    max_reply_bytes: int = D.MAX_REPLY_BYTES
    max_file_bytes: int = D.MAX_RESULT_FILE_BYTES
    min_rate: float = D.MIN_TRANSFER_BYTES_PER_S
    rate_grace: float = D.TRANSFER_RATE_GRACE_S
    tick_every: float = D.WIRE_TICK_S

    def __post_init__(self) -> None:
        if min(self.call_deadline, self.transfer_deadline) <= 0 or min(self.max_reply_bytes, self.max_file_bytes) < 1:
            raise ValueError("reply deadlines and sizes must be positive")
        if self.tick_every <= 0 or self.min_rate < 0 or self.rate_grace < 0:
            raise ValueError("the tick interval must be positive, the minimum rate and its grace not negative")


class WireError(Exception):
    """Internal: the reply broke a bound. ``reason`` is short and stable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Flow:
    """The bytes one direction of an exchange has moved, and since when."""

    __slots__ = ("moved", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.moved = 0

    def start(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def too_slow(self, now: float, limits: ReplyLimits) -> bool:
        if self.since is None or limits.min_rate <= 0:
            return False
        elapsed = now - self.since
        return elapsed >= limits.rate_grace and self.moved < limits.min_rate * elapsed


class Exchange:
    """One request and its reply: the bounds and the tick every socket wait of theirs obeys.

    A wait lasts at most ``limits.tick_every``; before each one, ``tick`` runs
    and the exchange ends (``TimeoutError``) once its deadline has passed or,
    after ``limits.rate_grace``, when the direction under way has averaged less
    than ``limits.min_rate`` since it began: the upload from its first send,
    the reply from its first byte (the server's time to answer is bounded by
    the read timeout and the deadline, not by the rate). ``per_op``, the
    timeout urllib3 gave the socket, bounds a wait in which no byte moves.

    Whatever ends the exchange there, the tick's own exception included (the
    daemon's ``Interrupted``), first shuts the connection down: the peer sees
    it at once, whoever still holds the socket.

    ``ended`` keeps the reason a bound ended it ("deadline passed", "transfer
    too slow"): what urllib3 and requests make of a socket timeout does not say.
    """

    def __init__(self, at: float, *, limits: ReplyLimits | None = None, tick: Callable[[], None] = no_tick) -> None:
        self.at = at
        self.limits = limits or ReplyLimits()
        self.tick = tick
        self.ended: str | None = None
        self.sent = _Flow()
        self.received = _Flow()

    def end(self, reason: str) -> TimeoutError:
        """Record why a bound ended the exchange; the error to raise."""
        if self.ended is None:
            self.ended = reason
        return TimeoutError(reason)

    def send(self, sock: Any, data: bytes | bytearray | memoryview, per_op: float | None) -> None:
        """``sock.sendall(data)``, in slices: a timed-out ``send`` sent nothing and is simply made again."""
        view = memoryview(data).cast("B")
        now = time.monotonic()
        self.sent.start(now)
        idle_since = now
        while view:
            sock.settimeout(self._next_wait(sock, self.sent, per_op, idle_since))
            try:
                n = sock.send(view)
            except TimeoutError:
                continue  # nothing went out in this slice
            view = view[n:]
            self.sent.moved += n
            idle_since = time.monotonic()

    def recv_into(self, sock: Any, buffer: Any, per_op: float | None) -> int:
        """``sock.recv_into(buffer)``, in slices; 0 at the end of the stream."""
        idle_since = time.monotonic()
        while True:
            sock.settimeout(self._next_wait(sock, self.received, per_op, idle_since))
            try:
                n = int(sock.recv_into(buffer))
            except TimeoutError:
                continue  # nothing came in this slice
            if n:
                self.received.start(time.monotonic())
                self.received.moved += n
            return n

    def _next_wait(self, sock: Any, flow: _Flow, per_op: float | None, idle_since: float) -> float:
        """Tick, check the bounds, and say how long the next wait on ``sock`` may last."""
        try:
            self.tick()
            now = time.monotonic()
            if now >= self.at:
                raise self.end("deadline passed")
            if flow.too_slow(now, self.limits):
                raise self.end("transfer too slow")
            wait = min(self.limits.tick_every, self.at - now)
            if per_op is not None:
                quiet = per_op - (now - idle_since)
                if quiet <= 0:
                    raise TimeoutError("timed out")
                wait = min(wait, quiet)
            return wait
        except BaseException:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise


@contextlib.contextmanager
def bounded(exchange: Exchange) -> Iterator[Exchange]:
    """Run the exchanges made inside (with a session of ``make_session``) under ``exchange``'s bounds and tick."""
    token = _EXCHANGE.set(exchange)
    try:
        yield exchange
    finally:
        _EXCHANGE.reset(token)


def deadline(at: float) -> contextlib.AbstractContextManager[Exchange]:
    """Bound every socket operation of the exchanges made inside to ``at`` (monotonic seconds)."""
    return bounded(Exchange(at))


def _arm(sock: socket.socket | None, per_op: float | None) -> None:
    """For a send ``Exchange.send`` cannot slice: wait at most what is left of the deadline."""
    exchange = _EXCHANGE.get()
    if exchange is None:
        return
    left = exchange.at - time.monotonic()
    if left <= 0:
        raise exchange.end("deadline passed")
    if sock is not None:
        sock.settimeout(left if per_op is None else min(per_op, left))


class _BoundedSocketIO(io.RawIOBase):
    """A socket's reading end whose every receive obeys the exchange (``Exchange.recv_into``)."""

    def __init__(self, sock: socket.socket, exchange: Exchange) -> None:
        super().__init__()
        # Only held, never read: like any makefile(), it keeps the socket open until this reader
        # is closed (http.client closes a "Connection: close" socket once the headers are read).
        self._ref = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._exchange = exchange
        self._per_op = sock.gettimeout()  # urllib3 set the read timeout just before

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        # Straight from the socket: a SocketIO refuses every read after one timed out.
        return self._exchange.recv_into(self._sock, buffer, self._per_op)

    def close(self) -> None:
        self._ref.close()
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None):
        super().__init__(sock, debuglevel, method, url)
        exchange = _EXCHANGE.get()
        if exchange is not None:
            # Status line, headers and body all come through this reader.
            self.fp.close()
            self.fp = io.BufferedReader(_BoundedSocketIO(sock, exchange))


def _send(conn: HTTPConnection, data: Any, unsliced: Callable[[Any], None]) -> None:
    per_op = float(conn.timeout) if isinstance(conn.timeout, (int, float)) else None
    exchange = _EXCHANGE.get()
    if exchange is not None and conn.sock is not None and isinstance(data, (bytes, bytearray, memoryview)):
        exchange.send(conn.sock, data, per_op)
    else:
        # Outside an exchange, or a body urllib3 never hands over (it sends bytes): as http.client does.
        _arm(conn.sock, per_op)
        unsliced(data)


class _BoundedHTTPConnection(HTTPConnection):
    response_class = _BoundedResponse

    def send(self, data: Any) -> None:
        _send(self, data, super().send)


class _BoundedHTTPSConnection(HTTPSConnection):
    response_class = _BoundedResponse

    def send(self, data: Any) -> None:
        _send(self, data, super().send)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}


#: No transport retry of any kind: every count is zero, so a refused
#: connection surfaces at once (the client retries it: it knows nothing was
#: sent) and no status or read error is retried. POST is also left out of the
#: (default) idempotent methods, so it could not be resent even with counts left.
NO_RETRY = Retry(
    total=0,
    connect=0,
    read=False,
    status=0,
    other=0,
    redirect=False,
    status_forcelist=frozenset(),
    raise_on_status=False,
    raise_on_redirect=False,
    respect_retry_after_header=False,
)


def make_session(settings: MarketoSettings) -> requests.Session:
    """A session for Marketo: bounded sockets, no transport retries, no environment proxies."""
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc surprises on a daemon; proxies can be set explicitly
    adapter = _Adapter(max_retries=NO_RETRY, pool_maxsize=max(1, settings.max_concurrent_calls))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"dropzone/{__version__}"
    return session


def read_body(resp: requests.Response, *, limit: int, at: float) -> bytes:
    """The whole body of a streamed reply, or WireError past ``limit`` bytes or the deadline ``at``.

    Content-Length is only used to refuse early; the bytes are counted either
    way. The deadline is also checked here for sessions not made by
    ``make_session`` (whose sockets are not bounded).
    """
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WireError("reply too large")
    kept = bytearray()
    for chunk in resp.iter_content(_CHUNK):
        kept += chunk
        if len(kept) > limit:
            raise WireError("reply too large")
        if time.monotonic() > at:
            raise WireError("deadline passed")
    return bytes(kept)


def never_sent(exc: BaseException) -> bool:
    """True when the request provably never left: no connection was made."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, u3.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (u3.NewConnectionError, u3.ConnectTimeoutError, u3.NameResolutionError))


__all__ = [
    "NO_RETRY",
    "Exchange",
    "ReplyLimits",
    "WireError",
    "bounded",
    "deadline",
    "make_session",
    "never_sent",
    "no_tick",
    "read_body",
]
