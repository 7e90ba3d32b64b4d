"""The Marketo bulk-import client: token, submit, status, failures and warnings.

Owns every byte that crosses the wire to Marketo and the translation of
Marketo's answers into results or ``dropzone.errors`` exceptions. It does not
decide what to do with a file, a queue slot or a lost reply: those belong to
the daemon and its journal.

Rules it keeps, each from ``shared/docs/marketo-bulk-import.md``:

* The token travels only in ``Authorization: Bearer`` (the query parameter is
  being removed). Identity returns the same token until it expires, so a token
  about to expire is waited out rather than asked for in a loop.
* Errors are classified by Marketo's code (a string), never by message text.
* A POST whose reply was lost is never resent: ``OutcomeUnknownError``.
* No secret or token is ever put in an exception, a repr or a log event:
  messages name the method and path, never a URL with its query string.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import structlog
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.encoder import MultipartEncoder
import urllib3.exceptions as u3
from urllib3.util.retry import Retry

from dropzone import __version__, throttle
from dropzone.errors import (
    AuthError,
    ListBusyError,
    MarketoError,
    OutcomeUnknownError,
    QueueFullError,
    QuotaExceededError,
    RejectedError,
    ThrottledError,
    TransientError,
)

log = structlog.get_logger("dropzone.marketo")

DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Marketo gives up on a request after about 30 s (604); an upload of 10 MB
#: over a slow uplink needs more than that to *send*, so reads get a margin.
DEFAULT_READ_TIMEOUT_S = 120.0
#: How long one call keeps retrying transient errors before giving up.
DEFAULT_MAX_RETRY_S = 300.0
#: A token with this little life left is not used for a new call.
TOKEN_SKEW_S = 1.0
#: 601/602 more often than this in one call means the credentials are the problem.
MAX_AUTH_RETRIES = 3
#: Identity may keep handing out a token with ``expires_in`` 0; stop waiting after this many.
MAX_TOKEN_WAITS = 5

# Classification by Marketo error code (strings, as Marketo sends them).
TOKEN_CODES = frozenset({"600", "601", "602"})
RETRY_CODES = frozenset({"502", "604", "608", "611", "614", "713", "719"})
THROTTLE_CODES = frozenset({"606", "615"})
QUOTA_CODE = "607"
QUEUE_FULL_CODE = "1016"
LIST_BUSY_CODE = "1019"


class ObjectKind(enum.StrEnum):
    LEADS = "leads"
    CUSTOM_OBJECT = "customobject"
    PROGRAM_MEMBER = "programmember"


class Endpoint(enum.StrEnum):
    """What a call was for; used in errors, logs and metrics."""

    IDENTITY = "identity"
    IMPORT = "import"
    STATUS = "status"
    FAILURES = "failures"
    WARNINGS = "warnings"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportTarget:
    """Where rows go, with the parameters Marketo takes for that kind of import."""

    kind: ObjectKind
    lookup_field: str | None = None
    list_id: int | None = None
    partition_name: str | None = None
    api_name: str | None = None
    program_id: str | None = None
    program_member_status: str | None = None

    def __post_init__(self) -> None:
        if self.kind is ObjectKind.CUSTOM_OBJECT and not self.api_name:
            raise ValueError("a custom object import needs apiName")
        if self.kind is ObjectKind.PROGRAM_MEMBER and not (self.program_id and self.program_member_status):
            raise ValueError("a program member import needs programId and programMemberStatus")

    def submit_path(self) -> str:
        match self.kind:
            case ObjectKind.LEADS:
                return "/bulk/v1/leads.json"
            case ObjectKind.CUSTOM_OBJECT:
                return f"/bulk/v1/customobjects/{_segment(self.api_name)}/import.json"
            case ObjectKind.PROGRAM_MEMBER:
                return f"/bulk/v1/program/{_segment(self.program_id)}/members/import.json"

    def batch_path(self, batch_id: int, leaf: str) -> str:
        """Status (``leaf`` "status"), failures or warnings path: each kind spells them differently."""
        match self.kind:
            case ObjectKind.LEADS:
                # Leads have no /status segment: the batch itself is the status.
                base = f"/bulk/v1/leads/batch/{int(batch_id)}"
                return f"{base}.json" if leaf == "status" else f"{base}/{leaf}.json"
            case ObjectKind.CUSTOM_OBJECT:
                return f"/bulk/v1/customobjects/{_segment(self.api_name)}/import/{int(batch_id)}/{leaf}.json"
            case ObjectKind.PROGRAM_MEMBER:
                # Program-member batches are addressed without the programId.
                return f"/bulk/v1/program/members/import/{int(batch_id)}/{leaf}.json"

    def query(self, fmt: str) -> dict[str, str]:
        """Submit parameters, in the query string where Marketo's reference declares them."""
        params = {"format": fmt}
        if self.kind is ObjectKind.LEADS:
            if self.lookup_field:
                params["lookupField"] = self.lookup_field
            if self.list_id is not None:
                params["listId"] = str(self.list_id)
            if self.partition_name:
                params["partitionName"] = self.partition_name
        elif self.kind is ObjectKind.PROGRAM_MEMBER:
            params["programMemberStatus"] = str(self.program_member_status)
        return params


def _segment(value: str | None) -> str:
    return urllib.parse.quote(str(value), safe="")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """One batch as Marketo reports it (after a submit or a status call)."""

    batch_id: int
    status: str
    processed: int = 0
    failed: int = 0
    warned: int = 0
    message: str = ""

    @property
    def is_finished(self) -> bool:
        return self.status in ("Complete", "Failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    identity: str | None = None
    calls_per_window: int = throttle.DEFAULT_CALLS_PER_WINDOW
    max_concurrent_calls: int = throttle.MAX_CONCURRENT_CALLS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    max_retry_seconds: float = DEFAULT_MAX_RETRY_S

    @property
    def identity_url(self) -> str:
        return (self.identity or f"{self.endpoint.rstrip('/')}/identity").rstrip("/")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP exchange, for metrics and tests: never holds a URL query or a token."""

    endpoint: Endpoint
    method: str
    path: str
    outcome: str  # "ok", a Marketo code ("606"), "HTTP 503", or an exception class name
    seconds: float


def make_session(settings: ClientSettings) -> requests.Session:
    """A session whose transport retries only what is safe to repeat.

    Connection failures are retried for every method (nothing was sent);
    read errors and 5xx only for GET, because a POST body is a one-shot
    stream and a repeated import would be a second job.
    """
    retry = Retry(
        total=3,
        connect=3,
        read=2,
        status=2,
        other=0,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=(500, 502, 503, 504),
        backoff_factor=0.5,
        backoff_jitter=0.5,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc surprises on a daemon; proxies can be set explicitly
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=settings.max_concurrent_calls)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"dropzone/{__version__}"
    return session


class _TokenRefused(Exception):
    """Internal: Marketo said 600/601/602 for the token we sent; refresh and retry."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class MarketoClient:
    """Calls Marketo's bulk-import API within its limits.

    Thread-safe: the token, the rate window and the in-flight semaphore are
    shared by every thread using the client.

    Args:
        settings: endpoint, credentials, limits and timeouts.
        session: an injected session (tests, proxies); made by ``make_session`` otherwise.
        sleep: how to wait; the daemon passes one that wakes up on shutdown.
        clock: monotonic seconds.
        on_call: called once per HTTP exchange with a ``CallRecord``.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now_utc: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self._session = session or make_session(settings)
        self._sleep = sleep
        self._clock = clock
        self._now_utc = now_utc
        self._on_call = on_call
        self._base = settings.endpoint.rstrip("/")
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._rate_lock = threading.Lock()
        self._window = throttle.RateWindow(settings.calls_per_window)
        self._in_flight = threading.BoundedSemaphore(settings.max_concurrent_calls)
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
        fmt: str,
        before_send: Callable[[], None] | None = None,
        not_executed: Callable[[], None] | None = None,
    ) -> BatchStatus:
        """Create an import job from the file at ``path`` (streamed from disk).

        ``before_send`` runs right before each attempt's request goes out, after
        the token and the rate window; ``not_executed`` runs when an attempt was
        answered with an error that means Marketo did not run it (6xx, 5xx, a
        refused connection), before the client waits to retry. The journal
        records the intent in the first and clears it in the second, so time
        spent waiting is never mistaken for an upload in flight.

        Raises:
            QueueFullError, ListBusyError: Marketo's queue or the target list is busy; try later.
            OutcomeUnknownError: the request went out and its reply was lost.
            RejectedError: Marketo refused the request (bad parameters, 413, 1003, ...).
        """
        if fmt not in ("csv", "tsv", "ssv"):
            raise ValueError(f"format must be csv, tsv or ssv, not {fmt!r}")

        def body() -> tuple[MultipartEncoder, contextlib.ExitStack]:
            # A fresh encoder over a freshly opened file on every attempt: the
            # previous attempt may have consumed the stream.
            stack = contextlib.ExitStack()
            handle = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
            return MultipartEncoder(fields={"file": (path.name, handle, "text/csv")}), stack

        data = self._call(
            "POST",
            target.submit_path(),
            Endpoint.IMPORT,
            params=target.query(fmt),
            body=body,
            before_send=before_send,
            not_executed=not_executed,
        )
        return _parse_batch(data, Endpoint.IMPORT)

    def status(self, target: ImportTarget, batch_id: int) -> BatchStatus:
        data = self._call("GET", target.batch_path(batch_id, "status"), Endpoint.STATUS)
        return _parse_batch(data, Endpoint.STATUS)

    def failures(self, target: ImportTarget, batch_id: int) -> bytes | None:
        """The failure file's bytes, or None when Marketo has no failure rows (404 or empty 200)."""
        return self._call("GET", target.batch_path(batch_id, "failures"), Endpoint.FAILURES, file=True)

    def warnings(self, target: ImportTarget, batch_id: int) -> bytes | None:
        """The warning file's bytes, or None when Marketo has no warning rows (404 or empty 200)."""
        return self._call("GET", target.batch_path(batch_id, "warnings"), Endpoint.WARNINGS, file=True)

    def check_credentials(self) -> None:
        """Fetch a token; raises AuthError on bad credentials. For ``dropzone check``."""
        self._get_token()

    # ---- token ------------------------------------------------------------

    def _get_token(self) -> str:
        with self._token_lock:
            if self._token and self._clock() < self._token_expires_at - TOKEN_SKEW_S:
                return self._token
            waits = 0
            while True:
                token, expires_in = self._fetch_token()
                if expires_in > TOKEN_SKEW_S or waits >= MAX_TOKEN_WAITS:
                    self._token = token
                    self._token_expires_at = self._clock() + expires_in
                    self.token_refreshes += 1
                    log.debug("token_refreshed", expires_in=expires_in)
                    return token
                # Identity hands back the same dying token until it is dead:
                # asking again now would only get it again. Wait it out.
                waits += 1
                log.info("token_expiring_waiting", seconds=round(expires_in + 0.5, 3))
                self._sleep(max(0.0, expires_in) + 0.5)

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _fetch_token(self) -> tuple[str, float]:
        deadline = self._clock() + self.settings.max_retry_seconds
        attempt = 0
        while True:
            try:
                return self._identity_once()
            except TransientError:
                delay = throttle.backoff(attempt)
                if self._clock() + delay > deadline:
                    raise
                attempt += 1
                self._sleep(delay)

    def _identity_once(self) -> tuple[str, float]:
        params = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
        }
        path = "/oauth/token"
        started = self._clock()
        outcome = "ok"
        try:
            with self._translate(Endpoint.IDENTITY, "GET", path, idempotent=True):
                resp = self._session.get(
                    self.settings.identity_url + path,
                    params=params,
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            if resp.status_code in (400, 401):
                body = _json_or_none(resp) or {}
                reason = body.get("error_description") or body.get("error") or "refused"
                outcome = f"HTTP {resp.status_code}"
                raise AuthError(
                    f"Marketo Identity refused client id {self.settings.client_id!r}: {reason} "
                    f"(HTTP {resp.status_code}). Check client_id and client_secret in the configuration.",
                    code=f"HTTP {resp.status_code}",
                    endpoint=Endpoint.IDENTITY,
                )
            if resp.status_code >= 500:
                outcome = f"HTTP {resp.status_code}"
                raise TransientError(
                    f"Marketo Identity answered HTTP {resp.status_code}",
                    code=outcome,
                    endpoint=Endpoint.IDENTITY,
                )
            body = _json_or_none(resp)
            if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
                outcome = f"HTTP {resp.status_code}"
                raise RejectedError(
                    f"Marketo Identity gave an unexpected answer (HTTP {resp.status_code}); "
                    "check marketo.identity in the configuration",
                    code=outcome,
                    endpoint=Endpoint.IDENTITY,
                )
            try:
                expires_in = float(body.get("expires_in", 0))
            except (TypeError, ValueError):
                expires_in = 0.0
            return str(body["access_token"]), expires_in
        except MarketoError as exc:
            outcome = exc.code or type(exc).__name__
            raise
        finally:
            self._record(Endpoint.IDENTITY, "GET", path, outcome, started)

    # ---- calls ------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        endpoint: Endpoint,
        *,
        params: Mapping[str, str] | None = None,
        body: Callable[[], tuple[MultipartEncoder, contextlib.ExitStack]] | None = None,
        file: bool = False,
        before_send: Callable[[], None] | None = None,
        not_executed: Callable[[], None] | None = None,
    ) -> Any:
        deadline = self._clock() + self.settings.max_retry_seconds
        attempt = 0
        auth_retries = 0
        while True:
            token = self._get_token()
            try:
                return self._exchange(
                    method, path, endpoint, token, params=params, body=body, file=file, before_send=before_send
                )
            except _TokenRefused as refused:
                if not_executed is not None:
                    not_executed()
                self._drop_token(token)
                auth_retries += 1
                if auth_retries > MAX_AUTH_RETRIES:
                    raise AuthError(
                        f"Marketo kept refusing fresh access tokens (code {refused.code}) on {method} {path}; "
                        f"check the API user's permissions for client id {self.settings.client_id!r}",
                        code=refused.code,
                        endpoint=endpoint,
                    ) from None
            except (TransientError, ThrottledError) as exc:
                if not_executed is not None:
                    not_executed()
                if exc.code == "606":
                    # Somebody (maybe another integration) filled the 20 s
                    # window: hold every call back until it has rolled over.
                    delay = throttle.RATE_WINDOW_S + throttle.backoff(attempt, cap=5.0)
                    with self._rate_lock:
                        self._window.block(self._clock(), delay)
                else:
                    delay = throttle.backoff(attempt)
                if self._clock() + delay > deadline:
                    raise
                log.info("marketo_retry", endpoint=str(endpoint), code=exc.code, delay=round(delay, 2))
                attempt += 1
                self._sleep(delay)

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
        method: str,
        path: str,
        endpoint: Endpoint,
        token: str,
        *,
        params: Mapping[str, str] | None,
        body: Callable[[], tuple[MultipartEncoder, contextlib.ExitStack]] | None,
        file: bool,
        before_send: Callable[[], None] | None = None,
    ) -> Any:
        self._acquire_rate_slot()
        started = self._clock()
        outcome = "ok"
        with self._in_flight, contextlib.ExitStack() as stack:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            data = None
            if body is not None:
                encoder, files = body()
                stack.enter_context(files)
                data = encoder
                headers["Content-Type"] = encoder.content_type
            if before_send is not None:
                before_send()
            try:
                with self._translate(endpoint, method, path, idempotent=method == "GET"):
                    resp = self._session.request(
                        method,
                        self._base + path,
                        params=params,
                        data=data,
                        headers=headers,
                        timeout=self._timeout,
                        allow_redirects=False,
                    )
                    # Read the body inside the translation: a reset while
                    # reading is a lost reply too.
                    content = resp.content
                return self._interpret(resp, content, method, path, endpoint, file=file)
            except _TokenRefused as refused:
                outcome = refused.code
                raise
            except MarketoError as exc:
                outcome = exc.code or type(exc).__name__
                raise
            finally:
                self._record(endpoint, method, path, outcome, started)

    def _interpret(
        self, resp: requests.Response, content: bytes, method: str, path: str, endpoint: Endpoint, *, file: bool
    ) -> Any:
        where = f"{method} {path}"
        status = resp.status_code
        if file and status == 404:
            return None
        if status == 413:
            raise RejectedError(
                f"Marketo refused the upload as too large (HTTP 413) on {where}; chunks must be under 10 MB",
                code="HTTP 413",
                endpoint=endpoint,
            )
        if status >= 500:
            raise TransientError(f"Marketo answered HTTP {status} on {where}", code=f"HTTP {status}", endpoint=endpoint)
        if status != 200:
            raise RejectedError(f"Marketo answered HTTP {status} on {where}", code=f"HTTP {status}", endpoint=endpoint)
        content_type = resp.headers.get("Content-Type", "")
        if file and "json" not in content_type:
            # Failure and warning files: raw bytes, decoded by the caller as
            # UTF-8 (requests would guess ISO-8859-1 for text without a charset).
            return content or None
        if file and not content:
            return None
        try:
            data = json.loads(content)
        except ValueError:
            raise TransientError(
                f"Marketo answered {where} with a body that is not JSON", code="bad-json", endpoint=endpoint
            ) from None
        if not isinstance(data, dict):
            raise TransientError(f"Marketo answered {where} with unexpected JSON", code="bad-json", endpoint=endpoint)
        if data.get("success") is False or data.get("errors"):
            self._raise_envelope(data, where, endpoint)
        return data

    def _raise_envelope(self, data: Mapping[str, Any], where: str, endpoint: Endpoint) -> None:
        errors = data.get("errors") or [{}]
        first = errors[0] if isinstance(errors[0], dict) else {}
        code = str(first.get("code", "")).strip()
        text = str(first.get("message", "")).strip()
        message = f"Marketo error {code} on {where}: {text}" if text else f"Marketo error {code} on {where}"
        if code in TOKEN_CODES:
            raise _TokenRefused(code)
        if code in RETRY_CODES:
            raise TransientError(message, code=code, endpoint=endpoint)
        if code in THROTTLE_CODES:
            raise ThrottledError(message, code=code, endpoint=endpoint)
        if code == QUOTA_CODE:
            raise QuotaExceededError(
                message + "; Marketo resets the daily quota at midnight US Central time",
                resume_at=throttle.next_quota_reset(self._now_utc()),
                endpoint=endpoint,
            )
        if code == QUEUE_FULL_CODE:
            raise QueueFullError(message, code=code, endpoint=endpoint)
        if code == LIST_BUSY_CODE:
            raise ListBusyError(message, code=code, endpoint=endpoint)
        raise RejectedError(message, code=code or None, endpoint=endpoint)

    @contextlib.contextmanager
    def _translate(self, endpoint: Endpoint, method: str, path: str, *, idempotent: bool) -> Iterator[None]:
        """Turn requests' exceptions into ours, without their URL (it may hold a secret)."""
        where = f"{method} {path}"
        try:
            yield
        except requests.exceptions.ConnectionError as exc:  # ConnectTimeout is one too
            if not _never_sent(exc):
                raise self._lost(endpoint, where, idempotent, exc) from None
            raise TransientError(
                f"could not connect to Marketo for {where} ({type(exc).__name__})",
                code=None,
                endpoint=endpoint,
            ) from None
        except requests.exceptions.RequestException as exc:
            raise self._lost(endpoint, where, idempotent, exc) from None

    def _lost(self, endpoint: Endpoint, where: str, idempotent: bool, exc: BaseException) -> MarketoError:
        kind = type(exc).__name__
        if idempotent:
            return TransientError(f"no answer from Marketo for {where} ({kind})", code=None, endpoint=endpoint)
        return OutcomeUnknownError(
            f"the reply to {where} was lost ({kind}): Marketo may or may not have created the job",
            code=None,
            endpoint=endpoint,
        )

    def _record(self, endpoint: Endpoint, method: str, path: str, outcome: str, started: float) -> None:
        seconds = self._clock() - started
        log.debug("marketo_call", endpoint=str(endpoint), method=method, path=path, outcome=outcome,
                  ms=round(seconds * 1000, 1))
        if self._on_call is not None:
            self._on_call(CallRecord(endpoint, method, path, outcome, seconds))


def _never_sent(exc: BaseException) -> bool:
    """True when the request provably never left: no connection was made."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, u3.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (u3.NewConnectionError, u3.ConnectTimeoutError, u3.NameResolutionError))


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _parse_batch(data: Mapping[str, Any], endpoint: Endpoint) -> BatchStatus:
    result = data.get("result") or []
    if not result or not isinstance(result[0], dict) or "batchId" not in result[0]:
        error = OutcomeUnknownError if endpoint is Endpoint.IMPORT else TransientError
        raise error(f"Marketo's {endpoint} answer carried no batch", code="no-result", endpoint=endpoint)
    item = result[0]
    processed = item.get("numOfLeadsProcessed", item.get("numOfObjectsProcessed", 0))
    return BatchStatus(
        batch_id=int(item["batchId"]),
        status=str(item.get("status", "")),
        processed=int(processed or 0),
        failed=int(item.get("numOfRowsFailed") or 0),
        warned=int(item.get("numOfRowsWithWarning") or 0),
        message=str(item.get("message") or ""),
    )


__all__ = [
    "BatchStatus",
    "CallRecord",
    "ClientSettings",
    "Endpoint",
    "ImportTarget",
    "MarketoClient",
    "ObjectKind",
    "make_session",
]
