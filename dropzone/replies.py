"""Reading Marketo's replies: what an answer says, trusting none of it.

Pure: bytes, a status and headers in; a value or a ``dropzone.errors``
exception out. Whatever the reply holds (HTML from a gateway, JSON of the
wrong shape, a counter that reads "n/a"), the only exceptions that leave are
``MarketoError``s, and each says whether the request may have been executed.

The rules, from ``shared/docs/marketo-bulk-import.md`` (§5, §9):

* Only Marketo's 6xx codes, and 1016/1019/1029, mean "not executed". An
  import POST answered anything else that is not a clean accept or refusal
  (a 5xx, 502/713/719, a reply that is not JSON or carries no batchId) may
  have created the job: ``OutcomeUnknownError``.
* A GET's HTTP error or unreadable reply says nothing about the batch:
  ``TransientError``. Only Marketo's own "no such batch" ends one.
* Errors are told apart by Marketo's code (a string), never by message text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from dropzone import defaults as D
from dropzone import throttle
from dropzone.errors import (
    AuthError,
    BatchNotFoundError,
    ListBusyError,
    MisconfiguredError,
    OutcomeUnknownError,
    QueueFullError,
    QuotaExceededError,
    RejectedError,
    ThrottledError,
    TransientError,
)


class Endpoint(enum.StrEnum):
    """What a call was for; used in errors, logs and metrics."""

    IDENTITY = "identity"
    IMPORT = "import"
    STATUS = "status"
    FAILURES = "failures"
    WARNINGS = "warnings"
    USAGE = "usage"
    DESCRIBE = "describe"  # an object's fields (pre-flight of headers)
    TARGETS = "targets"  # lists, programs, channels, partitions (target checks)


@dataclass(frozen=True, slots=True)
class Where:
    """One call, for messages: never a URL (its query may hold a secret)."""

    endpoint: Endpoint
    method: str
    path: str

    @property
    def creates(self) -> bool:
        return self.endpoint is Endpoint.IMPORT

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """One batch as Marketo reports it (after a submit or a status call).

    A counter is None when the reply did not carry it (program-member status
    replies may not): unknown, which is not 0.
    """

    batch_id: int
    status: str
    processed: int | None = None
    failed: int | None = None
    warned: int | None = None
    message: str = ""

    @property
    def is_finished(self) -> bool:
        return self.status in ("Complete", "Failed")


class TokenRefusedError(Exception):
    """Marketo said 600/601/602 for the token sent: refresh it and send again (nothing was executed)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# Marketo's codes, as the strings it sends.
TOKEN_CODES = frozenset({"600", "601", "602"})
#: 6xx: "the entire request failed and was not executed", so sending again is safe.
NOT_EXECUTED_RETRY_CODES = frozenset({"604", "608", "611", "614"})
#: Transient, but not 6xx: an import POST answered with one may have created the job.
AMBIGUOUS_CODES = frozenset({"502", "713", "719"})
THROTTLE_CODES = frozenset({"606", "615"})
QUOTA_CODE = "607"
QUEUE_FULL_CODES = frozenset({"1016", "1029"})
LIST_BUSY_CODE = "1019"
#: Marketo's answer for an unknown or expired batchId is undocumented [INF]:
#: 1003 is what it is taken to be (and the simulator's default); 1013 "Object
#: not found" is the other plausible one.
BATCH_NOT_FOUND_CODES = frozenset({"1003", "1013"})

_MISCONFIGURED: dict[str, tuple[str, str]] = {
    "603": (
        "instance",
        "Marketo denied access (603): the API user's role lacks a permission this call needs "
        "(Admin > Users & Roles: 'Read-Write Lead' for leads and program members, 'Read-Write Custom Object' "
        "for custom objects), or Admin > Web Services > IP Restrictions does not allow this host",
    ),
    "610": (
        "instance",
        "Marketo found no such resource (610): marketo.endpoint must be the REST API endpoint from "
        "Admin > Web Services without '/rest' (https://<munchkin-id>.mktorest.com)",
    ),
    "616": ("instance", "Marketo says the subscription type does not allow this API (616)"),
    "1026": (
        "instance",
        "Marketo says custom objects are not enabled (1026) for this subscription; check the route's apiName "
        "and Admin > Marketo Custom Objects",
    ),
    "1008": (
        "route",
        "Marketo denied access to the route's partition (1008): give the API user's role access to that "
        "workspace/partition, or fix partitionName",
    ),
    "1009": ("route", "Marketo needs a partitionName (1009): the instance has several lead partitions"),
    "1013": ("route", "Marketo found no such object (1013): check the route's listId or programId"),
    "1025": ("route", "Marketo found no such program member status (1025): check programMemberStatus"),
}

_TOKEN_SHAPE = re.compile(r"[!-~]{1,1024}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MESSAGE_MAX = 200


def _quote(text: object, scrub: Callable[[str], str]) -> str:
    """Marketo's text, made safe to put in a message: one short line, no secret."""
    # Scrubbed before it is cut: a secret cut in half would not be recognised.
    line = scrub(" ".join(str(text).split()))
    if len(line) > _MESSAGE_MAX:
        line = line[: _MESSAGE_MAX - 1] + "…"
    return line


def _bad_reply(where: Where, reason: str, detail: str = "", *, retry_after: float | None = None) -> NoReturn:
    """A reply that could not be read: for an import, nobody knows whether the job exists."""
    tail = f" ({detail})" if detail else ""
    if where.creates:
        raise OutcomeUnknownError(
            f"{where}: {reason}{tail}; Marketo may or may not have created the job",
            reason=reason,
            endpoint=where.endpoint,
        )
    raise TransientError(f"{where}: {reason}{tail}", code=reason, endpoint=where.endpoint, retry_after=retry_after)


def retry_after(headers: Mapping[str, str], now_utc: dt.datetime) -> float | None:
    """Retry-After in seconds (delta or HTTP date), clamped to ``D.RETRY_AFTER_MAX_S``; None if absent or unreadable."""
    raw = (headers.get("Retry-After") or "").strip()
    if not raw:
        return None
    seconds: float
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now_utc).total_seconds()
    return min(max(seconds, 0.0), D.RETRY_AFTER_MAX_S)


def interpret(
    where: Where,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    file: bool,
    now_utc: dt.datetime,
    scrub: Callable[[str], str],
) -> Any:
    """What an API reply (not Identity's) says.

    Returns the envelope (a dict) of a successful JSON reply, or for a
    failures/warnings file its bytes, None when there are no rows. Raises a
    ``MarketoError`` (or ``TokenRefusedError``) otherwise.
    """
    after = retry_after(headers, now_utc)
    if status != 200:
        _http_error(where, status, after, file=file)
        return None  # failures/warnings 404: no rows
    if file:
        if not content:
            return None
        data = _envelope(content)
        if data is None:
            head = content[:64].lstrip().lower()
            if "html" in headers.get("Content-Type", "").lower() or head.startswith((b"<!doctype html", b"<html")):
                # A gateway's error page, not a delimited file.
                _bad_reply(where, "reply is HTML", retry_after=after)
            # The file itself: raw bytes, decoded by the caller as UTF-8
            # (requests would guess ISO-8859-1 for text without a charset).
            return content
    else:
        try:
            data = json.loads(content)
        except ValueError:  # UnicodeDecodeError included
            _bad_reply(where, "reply not JSON", retry_after=after)
        if not isinstance(data, dict):
            _bad_reply(where, "reply malformed", "not a JSON object")
    success = data.get("success")
    errors = data.get("errors")
    if success is True or (success is None and not errors):
        if file:
            _bad_reply(where, "reply malformed", "a JSON answer where a file was expected")
        return data
    if success is not False and success is not None:
        _bad_reply(where, "reply malformed", "'success' is not true or false")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        _bad_reply(where, "reply malformed", "an error reply without a readable 'errors' list")
    first = errors[0]
    code = first.get("code")
    if isinstance(code, bool) or not isinstance(code, (str, int)) or not str(code).strip().isdigit():
        _bad_reply(where, "reply malformed", "an error without a numeric code")
    _raise_code(where, str(code).strip(), _quote(first.get("message", ""), scrub), now_utc)


def _envelope(content: bytes) -> dict[str, Any] | None:
    """The JSON envelope a failures/warnings call may answer with instead of the file (a 601, say)."""
    if content.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(content)
    except ValueError:
        return None
    return data if isinstance(data, dict) and ("success" in data or "errors" in data) else None


def _http_error(where: Where, status: int, after: float | None, *, file: bool) -> None:
    """Raise for a non-200 answer, or return for the one that means "no rows"."""
    label = f"HTTP {status}"
    if file and status == 404:
        # Documented for custom objects ("If no failure file exists, it returns
        # an HTTP 404"), observed for leads; its body is undocumented.
        return
    if 300 <= status < 400:
        raise MisconfiguredError(
            f"{where} was redirected ({label}): marketo.endpoint must be the final https:// URL of the REST API",
            code=label,
            endpoint=where.endpoint,
        )
    if not where.creates:
        # A GET: whatever stood in the way (proxy, gateway, rate limiter) says
        # nothing about the batch; ask again later.
        raise TransientError(f"Marketo answered {label} on {where}", code=label, endpoint=where.endpoint,
                             retry_after=after)
    if status in (413, 414):
        raise RejectedError(
            f"Marketo refused the upload as too large ({label}) on {where}; chunks must be under 10 MB",
            code=label,
            endpoint=where.endpoint,
        )
    if status == 429:
        # Refused before it was run: a rate limiter in front of Marketo.
        raise ThrottledError(f"{label} on {where}", code=label, endpoint=where.endpoint, retry_after=after)
    if status in (401, 403, 404, 405, 407):
        raise MisconfiguredError(
            f"{where} was refused with {label} before reaching Marketo's import: check marketo.endpoint "
            "(https://<munchkin-id>.mktorest.com, without '/rest') and any proxy in between",
            code=label,
            endpoint=where.endpoint,
        )
    # A 5xx (502 is "likely a timeout"), a 408, or anything else: the job may exist.
    raise OutcomeUnknownError(
        f"Marketo answered {label} on {where}; it may or may not have created the job",
        reason=label,
        code=label,
        endpoint=where.endpoint,
    )


def _raise_code(where: Where, code: str, text: str, now_utc: dt.datetime) -> NoReturn:
    message = f"Marketo error {code} on {where}: {text}" if text else f"Marketo error {code} on {where}"
    endpoint = where.endpoint
    if code in TOKEN_CODES:
        raise TokenRefusedError(code)
    if where.endpoint in (Endpoint.STATUS, Endpoint.FAILURES, Endpoint.WARNINGS) and code in BATCH_NOT_FOUND_CODES:
        raise BatchNotFoundError(message + "; Marketo does not know this batch (unknown, or older than 7 days)",
                                 code=code, endpoint=endpoint)
    if code in _MISCONFIGURED:
        scope, advice = _MISCONFIGURED[code]
        raise MisconfiguredError(f"{advice} [{where}: {text}]" if text else f"{advice} [{where}]",
                                 code=code, endpoint=endpoint, scope=scope)
    if code in NOT_EXECUTED_RETRY_CODES:
        raise TransientError(message, code=code, endpoint=endpoint)
    if code in AMBIGUOUS_CODES:
        if where.creates:
            raise OutcomeUnknownError(message + "; Marketo may or may not have created the job",
                                      reason=f"Marketo error {code}", code=code, endpoint=endpoint)
        raise TransientError(message, code=code, endpoint=endpoint)
    if code in THROTTLE_CODES:
        raise ThrottledError(message, code=code, endpoint=endpoint)
    if code == QUOTA_CODE:
        raise QuotaExceededError(
            message + "; Marketo resets the daily quota at midnight US Central time",
            resume_at=throttle.next_quota_reset(now_utc),
            endpoint=endpoint,
        )
    if code in QUEUE_FULL_CODES:
        raise QueueFullError(message, code=code, endpoint=endpoint)
    if code == LIST_BUSY_CODE:
        raise ListBusyError(message, code=code, endpoint=endpoint)
    if where.creates:
        # An explicit refusal of this request (bad file, bad parameter): no job.
        raise RejectedError(message, code=code, endpoint=endpoint)
    # On a GET any other code is about the call, not the batch.
    raise TransientError(message, code=code, endpoint=endpoint)


def _count(value: object) -> int | None:
    """A non-negative integer, or None for anything else (bools and "2.0" included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_batch(
    data: Mapping[str, Any], where: Where, *, scrub: Callable[[str], str], batch_id: int | None = None
) -> BatchStatus:
    """The batch in a submit or status envelope; ``batch_id`` is the one a status call asked about.

    Its ``message`` reaches the partner's status file: it is made one short line with no secret.
    """
    result = data.get("result")
    if not isinstance(result, list) or not result or not isinstance(result[0], dict):
        _bad_reply(where, "no batchId in reply", "no result")
    item: dict[str, Any] = result[0]
    got = _count(item.get("batchId"))
    if not got:
        _bad_reply(where, "no batchId in reply", "batchId missing or not a positive integer")
    if batch_id is not None and got != batch_id:
        _bad_reply(where, "reply malformed", f"answered for batch {got}")
    status = item.get("status")
    if not isinstance(status, str) or not status.strip():
        _bad_reply(where, "reply malformed", "status missing")
    counters: list[int | None] = []
    for names in (("numOfLeadsProcessed", "numOfObjectsProcessed"), ("numOfRowsFailed",), ("numOfRowsWithWarning",)):
        present = [n for n in names if item.get(n) is not None]
        if not present:
            counters.append(None)  # not given: unknown, never 0
            continue
        value = _count(item[present[0]])
        if value is None:
            _bad_reply(where, "reply malformed", f"{present[0]} is not a count")
        counters.append(value)
    message = item.get("message")
    return BatchStatus(
        batch_id=got,
        status=status.strip(),
        processed=counters[0],
        failed=counters[1],
        warned=counters[2],
        message=_quote(message, scrub) if isinstance(message, str) else "",
    )


def parse_usage(data: Mapping[str, Any], where: Where) -> int:
    """The instance's API calls today, from a ``/rest/v1/stats/usage.json`` envelope.

    The shape is inferred: our docs and seeds only name the endpoint, so this reads
    Adobe's public example (``result: [{"date": "2026-11-30", "total": 1234, "users":
    [{"userId": ..., "count": ...}]}]``). The latest ``date`` is today; an empty
    ``result`` is a day without calls. Anything else is an error, never a guess:
    a wrong count would pause imports, or let them starve the other integrations.
    """
    result = data.get("result")
    if not isinstance(result, list):
        _bad_reply(where, "reply malformed", "no result list")
    days: list[tuple[str, int]] = []
    for item in result:
        if not isinstance(item, dict):
            _bad_reply(where, "reply malformed", "a result that is not an object")
        day, total = item.get("date"), _count(item.get("total"))
        if not isinstance(day, str) or not _DATE.fullmatch(day.strip()):
            _bad_reply(where, "reply malformed", "date missing or not YYYY-MM-DD")
        if total is None:
            _bad_reply(where, "reply malformed", "total is not a count")
        days.append((day.strip(), total))
    return max(days)[1] if days else 0


def parse_identity(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    client_id: str,
    now_utc: dt.datetime,
    scrub: Callable[[str], str],
) -> tuple[str, float]:
    """The access token and its remaining seconds, from Identity's OAuth-shaped reply."""
    where = Where(Endpoint.IDENTITY, "GET", "/oauth/token")
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if status in (400, 401):
        said = ""
        if isinstance(body, dict):
            said = _quote(body.get("error_description") or body.get("error") or "", scrub)
        raise AuthError(
            f"Marketo Identity refused client id {client_id!r}{': ' + said if said else ''} (HTTP {status}); "
            "check marketo.client_id and the client secret (Admin > LaunchPoint > View Details)",
            code=f"HTTP {status}",
            endpoint=where.endpoint,
        )
    if status in (403, 404, 405) or 300 <= status < 400:
        raise MisconfiguredError(
            f"Marketo Identity answered HTTP {status}: check marketo.identity "
            "(https://<munchkin-id>.mktorest.com/identity) and IP restrictions",
            code=f"HTTP {status}",
            endpoint=where.endpoint,
        )
    if status != 200:
        raise TransientError(f"Marketo Identity answered HTTP {status}", code=f"HTTP {status}",
                             endpoint=where.endpoint, retry_after=retry_after(headers, now_utc))
    if not isinstance(body, dict):
        _bad_reply(where, "reply not JSON")
    token = body.get("access_token")
    if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
        # Also keeps a token that would break (or inject) a header line out.
        _bad_reply(where, "reply malformed", "no usable access_token")
    raw = body.get("expires_in")
    expires_in = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0.0
    # Unreadable (NaN, negative) reads as "about to expire": it is then waited out, never trusted.
    return token, expires_in if math.isfinite(expires_in) and expires_in > 0 else 0.0


__all__ = [
    "BatchStatus",
    "Endpoint",
    "TokenRefusedError",
    "Where",
    "interpret",
    "parse_batch",
    "parse_identity",
    "parse_usage",
]
