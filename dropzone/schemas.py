"""Marketo's describes, per instance and object: fetched off the loop, cached, refreshed.

Prepare asks ``Schemas.lookup(target, now)`` for the schema a file's header is checked against:

* **known**: checked now. A describe older than ``refresh_after`` is fetched again in the background,
  the one held used meanwhile; ``recheck`` fetches it again first when a file names an unknown
  column and the describe is more than a few minutes old (an admin may just have added the field).
* **pending**: nothing known yet and a fetch running (or due): the file stays claimed and is looked
  at again next pass; the fetch's end wakes the loop.
* **unavailable**: Marketo will not say (603, 610, a malformed or hostile reply, a spent daily
  quota, no answer for ``deadline``): the file goes ahead unchecked, with the reason for its status file. A describe
  outage never holds files; the describe is asked again ``retry_after`` later.

Fetches run on the instance's executor with the instance's own client (its token, rate window,
concurrency budget and daily count are shared with the imports). The client never waits: a
``WouldWaitError`` (a rate window, a backoff) only sets when the fetch is tried again. Only the
loop's thread calls in here.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Protocol

import structlog

from dropzone import calls, describe, throttle
from dropzone import defaults as D
from dropzone.calls import Attempt
from dropzone.describe import Schema
from dropzone.errors import (
    DescribeUnavailableError,
    MarketoError,
    MisconfiguredError,
    QuotaExceededError,
    WouldWaitError,
)
from dropzone.kinds import ObjectKind
from dropzone.marketo import MarketoClient
from dropzone.replies import Endpoint
from dropzone.targets import ImportTarget

log = structlog.get_logger("dropzone.schemas")

#: An object of one instance: its kind, and a custom object's API name.
Key = tuple[ObjectKind, str]


class Stage(Protocol):
    """What the pre-flight uses of an instance's dispatch stage: its current client and its threads."""

    @property
    def client(self) -> MarketoClient: ...

    @property
    def calls(self) -> Executor: ...


@dataclass(frozen=True, slots=True)
class Lookup:
    """What ``Schemas.lookup`` knows: a schema, "not yet" (``pending``), or why there is none."""

    schema: Schema | None = None
    pending: bool = False
    unavailable: str | None = None


def key_of(target: ImportTarget) -> Key:
    return target.kind, target.api_name or ""


def fetch(client: MarketoClient, key: Key) -> Schema:
    """Describe one object with ``client`` (on an instance's thread); no retries inside: the cache schedules them."""
    kind, api_name = key

    def read(path: str) -> dict[str, object]:
        return client.get_json(Endpoint.DESCRIBE, path, retry_for=0.0)

    match kind:
        case ObjectKind.LEADS:
            return describe.lead_schema(read(describe.LEAD_DESCRIBE))
        case ObjectKind.CUSTOM_OBJECT:
            return describe.custom_object_schema(read(describe.custom_object_describe(api_name)), api_name)
        case ObjectKind.PROGRAM_MEMBER:
            # A program-member file names lead fields and program-member (custom) fields (contract doc §3.3).
            leads = describe.lead_schema(read(describe.LEAD_DESCRIBE))
            members = describe.program_member_schema(read(describe.PROGRAM_MEMBER_DESCRIBE))
            return leads.plus(members, "program member")


def why_unavailable(error: BaseException) -> str:
    """A short reason for a status note and the log: never a secret (replies' texts are scrubbed)."""
    if isinstance(error, DescribeUnavailableError):
        return error.reason
    if isinstance(error, MisconfiguredError) and error.code == "603":
        return ("Marketo denied access (603): the API user's role needs read permission for this object "
                "('Read-Only Lead' for leads and program members, 'Read-Only Custom Object' for custom objects), "
                "or an IP allow-list refuses this host")
    if isinstance(error, MarketoError):
        return f"Marketo answered {error.code}" if error.code else "Marketo did not answer"
    return f"dropzone could not read it ({type(error).__name__})"


@dataclass
class _Entry:
    schema: Schema | None = None
    fetched_at: float = 0.0
    #: The last time the schema was confirmed, or a confirmation tried (``recheck``).
    checked_at: float = 0.0
    unavailable: str | None = None
    failing_since: float | None = None
    failures: int = 0
    next_try: float = 0.0
    future: Future[Attempt[Schema]] | None = None
    #: A file waits for this fetch (``recheck``): ``lookup`` answers pending until it ends.
    forced: bool = False


class Schemas:
    """One Marketo instance's describes, by object.

    Args:
        name: the instance, for the log.
        client: the instance's current client (a reload may replace it).
        calls: the instance's executor.
        wake: called from the fetch's thread when it ends (ends the loop's idle wait).
    """

    def __init__(
        self,
        name: str,
        client: Callable[[], MarketoClient],
        calls: Executor,
        *,
        wake: Callable[[], None] = lambda: None,
        refresh_after: float = D.DESCRIBE_REFRESH_S,
        recheck_after: float = D.DESCRIBE_RECHECK_S,
        deadline: float = D.DESCRIBE_DEADLINE_S,
        retry_after: float = D.DESCRIBE_RETRY_S,
    ) -> None:
        self.name = name
        self._client = client
        self._calls = calls
        self._wake = wake
        self.refresh_after, self.recheck_after = refresh_after, recheck_after
        self.deadline, self.retry_after = deadline, retry_after
        self._entries: dict[Key, _Entry] = {}

    def lookup(self, target: ImportTarget, now: float) -> Lookup:
        """The schema to check a file of ``target`` against, "pending", or why there is none (see the module)."""
        key = key_of(target)
        entry = self._entries.setdefault(key, _Entry())
        self._collect(key, entry, now)
        due = entry.schema is None or entry.forced or now - entry.fetched_at >= self.refresh_after
        if due and entry.future is None and now >= entry.next_try:
            self._start(key, entry, now)
        if entry.forced or (entry.schema is None and entry.unavailable is None):
            return Lookup(pending=True)
        if entry.schema is not None:
            return Lookup(schema=entry.schema)
        return Lookup(unavailable=entry.unavailable)

    def recheck(self, target: ImportTarget, now: float) -> bool:
        """A file names a column the schema lacks: True when the describe is fetched again first (the file
        waits for it), False when it is recent enough to reject the file now."""
        entry = self._entries.get(key_of(target))
        if entry is None or entry.schema is None:
            return False
        if entry.forced or now - max(entry.fetched_at, entry.checked_at) < self.recheck_after:
            return entry.forced
        entry.forced, entry.next_try = True, min(entry.next_try, now)
        log.info("describe_recheck", instance=self.name, object=entry.schema.what)
        if entry.future is None:
            self._start(key_of(target), entry, now)
        return True

    def _start(self, key: Key, entry: _Entry, now: float) -> None:
        client = self._client()
        entry.future = calls.start(self._calls, lambda: fetch(client, key))
        entry.future.add_done_callback(lambda _f: self._wake())
        if entry.failing_since is None:
            entry.failing_since = now  # cleared by an answer; the deadline runs from the first attempt
        self._collect(key, entry, now)  # an inline executor has answered already

    def _collect(self, key: Key, entry: _Entry, now: float) -> None:
        future = entry.future
        if future is None or not future.done():
            return
        entry.future = None
        attempt = future.result()  # Interrupted (a shutdown) is raised here, on the loop's thread
        error = attempt.error
        if error is None and attempt.value is not None:
            if entry.schema is None or entry.schema != attempt.value:
                log.info("describe_fetched", instance=self.name, object=attempt.value.what,
                         fields=len(attempt.value.fields))
            entry.schema, entry.fetched_at, entry.checked_at = attempt.value, now, now
            entry.unavailable, entry.failing_since, entry.failures, entry.forced = None, None, 0, False
            return
        if isinstance(error, WouldWaitError):
            entry.next_try = now + error.retry_after  # the instance asks to wait: not a failure
            return
        entry.failures += 1
        reason = why_unavailable(error) if error is not None else "no describe came back"
        # 603 and friends, a reply not to be trusted, a spent daily quota (607: the imports wait for its reset
        # anyway, pending like any other): asking again soon would not help.
        lasting = isinstance(error, (DescribeUnavailableError, MisconfiguredError, QuotaExceededError)) or error is None
        since = now if entry.failing_since is None else entry.failing_since
        if not lasting and now - since < self.deadline:
            retry_after = getattr(error, "retry_after", None)
            entry.next_try = now + max(throttle.backoff(entry.failures - 1, cap=15.0), float(retry_after or 0.0))
            log.info("describe_retry_later", instance=self.name, object=key[0].value, error=reason)
            return
        # Unavailable: files go ahead unchecked (or with the schema held, if there is one) until it answers.
        entry.failing_since, entry.failures, entry.forced = None, 0, False
        entry.checked_at, entry.next_try = now, now + self.retry_after
        if entry.schema is None:
            if entry.unavailable != reason:
                log.warning("describe_unavailable_headers_unchecked", instance=self.name, object=key[0].value,
                            reason=reason)
            entry.unavailable = reason
        else:
            log.warning("describe_refresh_failed_keeping_the_last", instance=self.name, object=entry.schema.what,
                        reason=reason)


__all__ = ["Lookup", "Schemas", "Stage", "fetch", "key_of", "why_unavailable"]
