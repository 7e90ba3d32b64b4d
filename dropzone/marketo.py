"""The Marketo bulk-import client: token, submit, status, failures and warnings.

Owns every call to Marketo: when it may go (token, rate window, in-flight
limit), whether to send it again, and what it returned. It does not decide
what to do with a file, a queue slot or a lost reply: those belong to the
daemon and its journal. The wire is ``dropzone.transport``; reading replies
is ``dropzone.replies``.

Rules it keeps, each from ``shared/docs/marketo-bulk-import.md``:

* The token travels only in ``Authorization: Bearer`` (the query parameter is
  being removed). Identity returns the same token until it expires, so a token
  about to expire is waited out rather than asked for in a loop.
* An import POST is sent again only when Marketo said it was not executed
  (6xx, 1016, 1019, 1029) or the connection was refused before any byte
  left. Anything else that is not a clean answer is ``OutcomeUnknownError``.
* Every exchange is bounded in time and size (``ReplyLimits``).
* No secret or token is ever put in an exception, a repr, a log event or a
  ``CallRecord``: messages name the method and path, never a URL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
import structlog
from requests_toolbelt.multipart.encoder import MultipartEncoder

from dropzone import defaults as D
from dropzone import logs, throttle, transport
from dropzone.errors import (
    AuthError,
    MarketoError,
    MisconfiguredError,
    OutcomeUnknownError,
    ThrottledError,
    TransientError,
)
from dropzone.instances import MarketoSettings
from dropzone.kinds import FileFormat
from dropzone.replies import (
    BatchStatus,
    Endpoint,
    TokenRefusedError,
    Where,
    interpret,
    parse_batch,
    parse_identity,
    parse_usage,
)
from dropzone.targets import ImportTarget
from dropzone.transport import ReplyLimits, make_session

log = structlog.get_logger("dropzone.marketo")

_UNKNOWN_LIFETIME = float("inf")

T = TypeVar("T")

_REDACTED = "[redacted]"

_NOT_SENT = "not sent"


class _NotSentError(TransientError):
    """No connection was made: the request never reached Marketo (nor its quota)."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP exchange, for metrics and tests: never holds a URL query or a token."""

    endpoint: Endpoint
    method: str
    path: str
    outcome: str  # "ok", a Marketo code ("606"), "HTTP 503", a reason ("reply not JSON") or an exception class name
    seconds: float
    #: Whether it may have spent a call of the instance's daily quota (``throttle.counts_toward_quota``).
    counted: bool = False


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, _NotSentError):
        return _NOT_SENT
    if isinstance(exc, TokenRefusedError):
        return exc.code
    if isinstance(exc, OutcomeUnknownError):
        return exc.code or exc.reason
    return (exc.code if isinstance(exc, MarketoError) else None) or type(exc).__name__


_Body = Callable[[], tuple[MultipartEncoder, contextlib.ExitStack]]


class MarketoClient:
    """Calls Marketo's bulk-import API within its limits.

    Thread-safe: the token, the rate window and the in-flight semaphore are
    shared by every thread using the client.

    Args:
        settings: endpoint, credentials, limits and timeouts (``marketo:`` of the configuration).
        session: an injected session (tests, proxies); ``make_session`` otherwise. Only a session
            made by ``make_session`` bounds a reply trickled inside one read.
        sleep: how to wait; the daemon passes one that raises ``WouldWaitError`` instead, so one
            instance's rate window or backoff never holds the loop that serves the others.
        clock: monotonic seconds, for retries, the rate window and the token's life. Deadlines on
            the wire always use ``time.monotonic``: sockets live in real time.
        now_utc: the wall clock, for the daily quota and Retry-After dates.
        on_call: called once per HTTP exchange with a ``CallRecord``.
        limits: deadlines, rate floor and size caps of exchanges.
        tick: called about every ``limits.tick_every`` seconds while a request is sent or its reply
            read (with a session of ``make_session``). It may raise: a ``BaseException`` such as
            ``dropzone.errors.Interrupted`` leaves the client unchanged, the connection shut. The
            daemon passes its heartbeat and shutdown check.
    """

    def __init__(
        self,
        settings: MarketoSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now_utc: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_call: Callable[[CallRecord], None] | None = None,
        limits: ReplyLimits = ReplyLimits(),  # noqa: B008 - frozen, so sharing it is safe
        tick: Callable[[], None] = transport.no_tick,
    ) -> None:
        if not 1 <= settings.max_concurrent_calls <= D.MARKETO_MAX_CONCURRENT_CALLS:
            raise ValueError(f"max_concurrent_calls must be between 1 and {D.MARKETO_MAX_CONCURRENT_CALLS}")
        self.settings = settings
        self.limits = limits
        self._session = session or make_session(settings)
        self._sleep = sleep
        self._clock = clock
        self._now_utc = now_utc
        self._on_call = on_call
        self._tick = tick
        self._base = settings.endpoint.rstrip("/")
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._old_token: str | None = None
        self._token_lifetime = _UNKNOWN_LIFETIME  # what a fresh token lives (3600 s on Marketo)
        self._token_expires_at = 0.0
        self._rate_lock = threading.Lock()
        self._window = throttle.RateWindow(settings.calls_per_20s)
        self._in_flight = threading.BoundedSemaphore(settings.max_concurrent_calls)
        self._quota_lock = threading.Lock()
        self._quota = throttle.DailyCalls()
        self.token_refreshes = 0

    def __repr__(self) -> str:
        return f"MarketoClient(endpoint={self._base!r}, client_id={self.settings.client_id!r})"

    def close(self) -> None:
        self._session.close()

    # ---- public API -------------------------------------------------------

    def submit(
        self,
        target: ImportTarget,
        path: Path,
        *,
        fmt: FileFormat,
        before_send: Callable[[], None] | None = None,
        not_executed: Callable[[], None] | None = None,
        retry_for: float | None = None,
    ) -> BatchStatus:
        """Create an import job from the file at ``path`` (streamed from disk).

        ``before_send`` runs right before each attempt's request goes out, after
        the token and the rate window; ``not_executed`` runs when an attempt was
        answered in a way that means Marketo did not run it (a 6xx, 1016, 1019,
        a refusal, a refused connection), before the client waits to retry or
        raises. Neither runs for an outcome-unknown answer: the journal keeps
        the intent recorded by the first.

        Raises:
            QueueFullError, ListBusyError: Marketo's queue or the target list is busy; try later.
            OutcomeUnknownError: the request may have reached Marketo and its answer does not say.
            MisconfiguredError: the integration is wrong (603, bad credentials, a route parameter).
            RejectedError: Marketo refused this file or request (1003, 1006, 413, ...).
            TransientError, ThrottledError, QuotaExceededError: not executed; retried for
                ``retry_for`` seconds (``max_retry_seconds`` when None), then raised.
        """
        if not isinstance(fmt, FileFormat):
            raise TypeError(f"fmt must be a FileFormat, not {fmt!r}")

        def body() -> tuple[MultipartEncoder, contextlib.ExitStack]:
            # A fresh encoder over a freshly opened file on every attempt: the
            # previous attempt may have consumed the stream.
            stack = contextlib.ExitStack()
            handle = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
            return MultipartEncoder(fields={"file": (path.name, handle, "text/csv")}), stack

        where = Where(Endpoint.IMPORT, "POST", target.submit_path())
        return self._call(
            where,
            lambda data: parse_batch(data, where, scrub=self._scrub),
            params=target.query(fmt),
            body=body,
            before_send=before_send,
            not_executed=not_executed,
            retry_for=retry_for,
        )

    def status(self, target: ImportTarget, batch_id: int, *, retry_for: float | None = None) -> BatchStatus:
        """The batch's status; BatchNotFoundError only when Marketo itself says it has no such batch.

        ``retry_for``: seconds transient errors are retried within this call
        (``max_retry_seconds`` when None); a caller with its own schedule passes 0.
        """
        where = Where(Endpoint.STATUS, "GET", target.batch_path(batch_id, "status"))
        return self._call(
            where,
            lambda data: parse_batch(data, where, scrub=self._scrub, batch_id=int(batch_id)),
            retry_for=retry_for,
        )

    def failures(self, target: ImportTarget, batch_id: int, *, retry_for: float | None = None) -> bytes | None:
        """The failure file's bytes, or None when Marketo has no failure rows (404 or empty 200)."""
        where = Where(Endpoint.FAILURES, "GET", target.batch_path(batch_id, "failures"))
        return self._call(where, _file_or_none, file=True, retry_for=retry_for)

    def warnings(self, target: ImportTarget, batch_id: int, *, retry_for: float | None = None) -> bytes | None:
        """The warning file's bytes, or None when Marketo has no warning rows (404 or empty 200)."""
        where = Where(Endpoint.WARNINGS, "GET", target.batch_path(batch_id, "warnings"))
        return self._call(where, _file_or_none, file=True, retry_for=retry_for)

    def usage_today(self, *, retry_for: float | None = None) -> int:
        """The instance's API calls today, every integration's, from ``/rest/v1/stats/usage.json``.

        Kept for ``quota_today``. Raises MisconfiguredError (code "603") when the API
        user may not read usage, and a TransientError for a reply it cannot trust.
        """
        where = Where(Endpoint.USAGE, "GET", "/rest/v1/stats/usage.json")
        with self._quota_lock:
            # Taken before the call: ours sent meanwhile (this one too) are added to its answer.
            ours_then = self._quota.total
        total = self._call(where, lambda data: parse_usage(data, where), retry_for=retry_for)
        with self._quota_lock:
            self._quota.observe_usage(total, taken_at=self._now_utc(), ours_then=ours_then)
        return total

    def get_json(self, endpoint: Endpoint, path: str, *, params: Mapping[str, str] | None = None,
                 retry_for: float | None = None) -> dict[str, Any]:
        """A read of Marketo's REST API (describe, lists, programs...): its successful envelope, as sent.

        The caller reads it (``dropzone.describe``): an envelope Marketo sent is an answer, whatever it holds.
        """
        return self._call(Where(endpoint, "GET", path), _envelope_of, params=params, retry_for=retry_for)

    def calls_today(self) -> int:
        """Our calls that may count toward the instance's daily quota, since its last reset."""
        with self._quota_lock:
            return self._quota.ours(self._now_utc())

    def quota_today(self) -> throttle.QuotaToday:
        """Our calls today, the instance's as usage.json last said, and what is known spent."""
        with self._quota_lock:
            return self._quota.today(self._now_utc())

    def share_quota(self, other: MarketoClient) -> None:
        """Count on ``other``'s tally (a reload replaces a client: the day's calls stay counted)."""
        self._quota_lock, self._quota = other._quota_lock, other._quota

    def check_credentials(self) -> None:
        """Fetch a token; raises AuthError on bad credentials. For ``dropzone check``."""
        with self._named_keys():
            self._get_token()

    @contextlib.contextmanager
    def _named_keys(self) -> Iterator[None]:
        """Advice naming ``marketo.endpoint`` names ``instances.NAME.endpoint`` for another instance."""
        try:
            yield
        except MisconfiguredError as exc:
            if self.settings.name != D.DEFAULT_INSTANCE and exc.args:
                exc.args = (str(exc.args[0]).replace("marketo.", f"instances.{self.settings.name}."), *exc.args[1:])
            raise

    # ---- token ------------------------------------------------------------

    def _get_token(self, margin: float = D.TOKEN_SKEW_S, retry_for: float | None = None) -> str:
        """A token with at least ``margin`` seconds to live (uploads ask for a minute).

        Identity hands back the same token until it dies, so a token too close
        to its end is waited out; a *new* token with more than a second to live
        is taken whatever its lifetime (waiting could not get a longer one).
        """
        with self._token_lock:
            # Tokens that live less than two margins (test instances) are used for half their life.
            margin = min(margin, self._token_lifetime / 2)
            if self._token and self._clock() < self._token_expires_at - margin:
                return self._token
            waits = 0
            while True:
                token, expires_in = self._fetch_token(retry_for)
                fresh = token not in (self._token, self._old_token) and expires_in > D.TOKEN_SKEW_S
                if expires_in > margin or fresh or waits >= D.MAX_TOKEN_WAITS:
                    if token != self._token:
                        self._old_token = self._token
                    # Whatever shape Marketo's tokens take, this one is never printed.
                    logs.redactor.add(token)
                    self._token = token
                    self._token_expires_at = self._clock() + expires_in
                    if fresh or self._token_lifetime == _UNKNOWN_LIFETIME:
                        self._token_lifetime = max(expires_in, 2 * D.TOKEN_SKEW_S)
                    self.token_refreshes += 1
                    log.debug("token_refreshed", expires_in=expires_in)
                    return token
                # Identity hands back the same dying token until it is dead:
                # asking again now would only get it again. Wait it out.
                waits += 1
                log.info("token_expiring_waiting", seconds=round(expires_in + 0.5, 3))
                self._sleep(expires_in + 0.5)

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None
                self._old_token = token

    def _fetch_token(self, retry_for: float | None = None) -> tuple[str, float]:
        deadline = self._clock() + (self.settings.max_retry_seconds if retry_for is None else retry_for)
        attempt = 0
        while True:
            try:
                return self._identity_once()
            except TransientError as exc:
                delay = max(throttle.backoff(attempt), exc.retry_after or 0.0)
                if self._clock() + delay > deadline:
                    raise
                attempt += 1
                self._sleep(delay)

    def _identity_once(self) -> tuple[str, float]:
        where = Where(Endpoint.IDENTITY, "GET", "/oauth/token")
        params = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
        }
        started = self._clock()
        outcome = "ok"
        try:
            status, headers, content = self._wire(
                where, self.settings.identity_url + where.path, params=params, headers={"Accept": "application/json"}
            )
            return parse_identity(
                status, headers, content, client_id=self.settings.client_id, now_utc=self._now_utc(), scrub=self._scrub
            )
        except BaseException as exc:  # Interrupted too: never recorded as "ok"
            outcome = _outcome(exc)
            raise
        finally:
            self._record(where, outcome, started)

    # ---- calls ------------------------------------------------------------

    def _call(
        self,
        where: Where,
        parse: Callable[[Any], T],
        *,
        params: Mapping[str, str] | None = None,
        body: _Body | None = None,
        file: bool = False,
        before_send: Callable[[], None] | None = None,
        not_executed: Callable[[], None] | None = None,
        retry_for: float | None = None,
    ) -> T:
        with self._named_keys():
            return self._call_with_retries(
                where, parse, params=params, body=body, file=file, before_send=before_send,
                not_executed=not_executed, retry_for=retry_for,
            )

    def _call_with_retries(
        self,
        where: Where,
        parse: Callable[[Any], T],
        *,
        params: Mapping[str, str] | None,
        body: _Body | None,
        file: bool,
        before_send: Callable[[], None] | None,
        not_executed: Callable[[], None] | None,
        retry_for: float | None,
    ) -> T:
        deadline = self._clock() + (self.settings.max_retry_seconds if retry_for is None else retry_for)
        attempt = 0
        auth_retries = 0
        # An upload may take up to the read timeout: its token must outlive it.
        margin = D.TOKEN_REFRESH_MARGIN_S if body is not None else D.TOKEN_SKEW_S
        while True:
            token = self._get_token(margin, retry_for)
            try:
                return self._exchange(
                    where, token, parse, params=params, body=body, file=file, before_send=before_send
                )
            except TokenRefusedError as refused:
                if not_executed is not None:
                    not_executed()
                self._drop_token(token)
                auth_retries += 1
                if auth_retries > D.MAX_AUTH_RETRIES:
                    raise AuthError(
                        f"Marketo kept refusing fresh access tokens (code {refused.code}) on {where}; "
                        f"check the API user's role and the service of client id {self.settings.client_id!r}",
                        code=refused.code,
                        endpoint=where.endpoint,
                    ) from None
            except OutcomeUnknownError:
                raise  # may have been executed: never sent again from here
            except MarketoError as exc:
                # Anything else Marketo answered means it did not run this request.
                if not_executed is not None:
                    not_executed()
                if not isinstance(exc, (TransientError, ThrottledError)):
                    raise
                delay = self._retry_delay(exc, attempt)
                if self._clock() + delay > deadline:
                    # What this client would have waited: a caller with its own schedule pauses as long.
                    exc.retry_after = max(exc.retry_after or 0.0, delay)
                    raise
                log.info("marketo_retry", endpoint=str(where.endpoint), code=exc.code, delay=round(delay, 2))
                attempt += 1
                self._sleep(delay)

    def _retry_delay(self, exc: MarketoError, attempt: int) -> float:
        # After a 606 somebody (maybe another integration) filled the 20 s
        # window: every call is held back until it has rolled over.
        delay = D.RATE_WINDOW_S + throttle.backoff(attempt, cap=5.0) if exc.code == "606" else throttle.backoff(attempt)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        if exc.code == "606" or exc.retry_after:
            with self._rate_lock:
                self._window.block(self._clock(), delay)
        return delay

    def _acquire_rate_slot(self) -> None:
        while True:
            with self._rate_lock:
                now = self._clock()
                wait = self._window.delay(now)
                if wait <= 0:
                    self._window.record(now)
                    return
            self._sleep(wait)

    def _exchange(
        self,
        where: Where,
        token: str,
        parse: Callable[[Any], T],
        *,
        params: Mapping[str, str] | None,
        body: _Body | None,
        file: bool,
        before_send: Callable[[], None] | None,
    ) -> T:
        self._acquire_rate_slot()
        started = self._clock()
        outcome = "ok"
        with self._in_flight, contextlib.ExitStack() as stack:
            headers = {"Authorization": f"Bearer {token}"}
            if not file:
                headers["Accept"] = "application/json"
            data = None
            if body is not None:
                encoder, files = body()
                stack.enter_context(files)
                data = encoder
                headers["Content-Type"] = encoder.content_type
            if before_send is not None:
                before_send()
            try:
                status, reply_headers, content = self._wire(
                    where, self._base + where.path, params=params, data=data, headers=headers, file=file
                )
                value = interpret(
                    where, status, reply_headers, content, file=file, now_utc=self._now_utc(), scrub=self._scrub
                )
                return parse(value)
            except BaseException as exc:  # Interrupted too: never recorded as "ok"
                outcome = _outcome(exc)
                raise
            finally:
                self._record(where, outcome, started, sent=outcome != _NOT_SENT)

    def _wire(
        self,
        where: Where,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: MultipartEncoder | None = None,
        headers: Mapping[str, str],
        file: bool = False,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request and its whole reply, within the deadline, the rate floor and the size cap.

        ``tick`` runs throughout; whatever it raises leaves as it is, the connection shut first
        by the wire (no handler here takes a BaseException that is not an Exception).
        """
        long = file or where.creates
        at = time.monotonic() + (self.limits.transfer_deadline if long else self.limits.call_deadline)
        limit = self.limits.max_file_bytes if file else self.limits.max_reply_bytes
        exchange = transport.Exchange(at, limits=self.limits, tick=self._tick)
        failure: MarketoError
        try:
            with transport.bounded(exchange):
                resp = self._session.request(
                    where.method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    stream=True,
                )
                try:
                    return resp.status_code, resp.headers, transport.read_body(resp, limit=limit, at=at)
                finally:
                    resp.close()
        except transport.WireError as exc:
            failure = self._lost(where, exc.reason)
        except requests.exceptions.RequestException as exc:
            if transport.never_sent(exc):
                failure = _NotSentError(
                    f"could not connect to Marketo for {where} ({type(exc).__name__})", endpoint=where.endpoint
                )
            elif exchange.ended is not None:  # the deadline or the rate floor
                failure = self._lost(where, exchange.ended)
            elif time.monotonic() >= at:
                failure = self._lost(where, "deadline passed")
            elif isinstance(exc, requests.exceptions.ReadTimeout) or "timed out" in str(exc).lower():
                failure = self._lost(where, "read timed out")
            else:
                failure = self._lost(where, "connection lost after sending")
        # Raised here, outside the handler, so that no exception of requests
        # (whose text holds the URL, and Identity's holds the secret) rides
        # along as __context__.
        raise failure

    def _lost(self, where: Where, reason: str) -> MarketoError:
        if where.creates:
            return OutcomeUnknownError(
                f"{where}: {reason}; Marketo may or may not have created the job",
                reason=reason,
                endpoint=where.endpoint,
            )
        return TransientError(f"no usable answer from Marketo for {where}: {reason}", endpoint=where.endpoint)

    def _scrub(self, text: str) -> str:
        """Text from a reply, without our secret or tokens (a proxy or an echo could quote them)."""
        for secret in (self.settings.client_secret, self._token, self._old_token):
            if secret and len(secret) >= 4:
                text = text.replace(secret, _REDACTED)
        return text

    def _record(self, where: Where, outcome: str, started: float, *, sent: bool = True) -> None:
        seconds = self._clock() - started
        counted = throttle.counts_toward_quota(where.endpoint, outcome, sent=sent)
        if counted:
            with self._quota_lock:
                self._quota.record(self._now_utc())
        log.debug(
            "marketo_call", endpoint=str(where.endpoint), method=where.method, path=where.path, outcome=outcome,
            ms=round(seconds * 1000, 1),
        )
        if self._on_call is not None:
            self._on_call(CallRecord(where.endpoint, where.method, where.path, outcome, seconds, counted))


def _file_or_none(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) and value else None


def _envelope_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


__all__ = ["BatchStatus", "CallRecord", "Endpoint", "MarketoClient", "ReplyLimits", "make_session"]
