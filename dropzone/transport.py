"""The wire under the Marketo client: a session that never resends, and replies with bounds.

Owns how bytes move (sessions, sockets, deadlines, size caps), not what they
mean: ``dropzone.replies`` reads them and ``dropzone.marketo`` decides what
to do. Two rules:

* Nothing here sends a request twice. urllib3's own retries are off for every
  method and status: the client retries what Marketo says was not executed,
  and only it can tell an import POST from a GET.
* Every exchange has a wall-clock deadline, upload and reply included. A
  per-read timeout alone does not bound a reply trickled one byte at a time,
  so the sockets of a session made here re-arm their timeout before every
  send and receive with what is left of the deadline, and ``read_body``
  counts the bytes it keeps.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import io
import socket
import time
from collections.abc import Iterator
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
from dropzone.config import MarketoSettings

_CHUNK = 64 * 1024

#: The deadline (``time.monotonic()``) of the exchange running in this context.
#: A context variable because urllib3 builds connections and responses where
#: no argument of ours reaches.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("dropzone_wire_deadline", default=None)


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """How long an exchange may take and how much of a reply is read."""

    call_deadline: float = D.CALL_DEADLINE_S
    transfer_deadline: float = D.TRANSFER_DEADLINE_S
    max_reply_bytes: int = D.MAX_REPLY_BYTES
    max_file_bytes: int = D.MAX_RESULT_FILE_BYTES

    def __post_init__(self) -> None:
        if min(self.call_deadline, self.transfer_deadline) <= 0 or min(self.max_reply_bytes, self.max_file_bytes) < 1:
            raise ValueError("reply deadlines and sizes must be positive")


class WireError(Exception):
    """Internal: the reply broke a bound. ``reason`` is short and stable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Bound every socket operation of the exchanges made inside to ``at`` (monotonic seconds)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _arm(sock: socket.socket | None, per_op: float | None) -> None:
    at = _DEADLINE.get()
    if at is None:
        return
    left = at - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    if sock is not None:
        sock.settimeout(left if per_op is None else min(per_op, left))


class _BoundedSocketIO(io.RawIOBase):
    """A socket's reading end whose every receive waits at most what is left of the deadline."""

    def __init__(self, sock: socket.socket, at: float) -> None:
        super().__init__()
        self._raw = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._at = at
        self._per_op = sock.gettimeout()  # urllib3 set the read timeout just before

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left if self._per_op is None else min(self._per_op, left))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None):
        super().__init__(sock, debuglevel, method, url)
        at = _DEADLINE.get()
        if at is not None:
            # Status line, headers and body all come through this reader.
            self.fp.close()
            self.fp = io.BufferedReader(_BoundedSocketIO(sock, at))


class _BoundedHTTPConnection(HTTPConnection):
    response_class = _BoundedResponse

    def send(self, data: Any) -> None:
        _arm(self.sock, self.timeout if isinstance(self.timeout, (int, float)) else None)
        super().send(data)


class _BoundedHTTPSConnection(HTTPSConnection):
    response_class = _BoundedResponse

    def send(self, data: Any) -> None:
        _arm(self.sock, self.timeout if isinstance(self.timeout, (int, float)) else None)
        super().send(data)


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


__all__ = ["NO_RETRY", "ReplyLimits", "WireError", "deadline", "make_session", "never_sent", "read_body"]
