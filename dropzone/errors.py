"""Every error dropzone raises on purpose.

``str(exc)`` is always a sentence an operator can act on, and never carries a
client secret or an access token.

* DropzoneError                 base
  x ConfigError                 bad YAML or setting; names the key (exit 2)
  x InputError                  a partner file we will not send; goes to the outbox
    + SplitError                the file cannot be cut into valid chunks (carries a line number)
    + UnknownFieldError         a header column that is no field of the Marketo object (pre-flight)
  x DescribeUnavailableError    Marketo's description of an object or import target could not be had or read
  x StoreError                  the journal is unusable, or another daemon holds it
  x DecryptUnavailableError     gpg or our PGP key failed us, not the partner's file (tried again later)
  x MarketoError                carries Marketo's code (a string), its message and any Retry-After
    + TransientError            not executed, or a GET that can be repeated: 604, 608, 611, 614, a
                                refused connection; on GETs also 502/713/719, any HTTP error or
                                unreadable reply. Retried, then raised (``retry_after`` if given)
    + ThrottledError            606 / 615 / HTTP 429: the rate or concurrency window; retried, then raised
    + TryLaterError             Marketo asks us to come back later (not executed)
      + QueueFullError          1016 (and 1029): the instance's import queue is full
      + ListBusyError           1019: the target static list is being imported to
    + QuotaExceededError        607: no call will work before ``resume_at``
    + MisconfiguredError        the integration, not the file, is wrong: 603 (role or IP allow-list),
                                610, 616, 1026; ``scope`` "route" for 1008/1009/1013/1025 on a submit
      + AuthError               Identity refused the credentials, or 601/602 would not clear
    + RejectedError             Marketo refused this request: retrying the same request cannot help
      + BatchNotFoundError      status/failures/warnings: Marketo does not know the batch (1003/1013)
    + OutcomeUnknownError       an import POST whose bytes may have reached Marketo and whose answer
                                did not say "not executed"; ``reason`` says why, briefly
"""

from __future__ import annotations

import datetime as _dt
from typing import ClassVar


class DropzoneError(Exception):
    """Base class; ``exit_code`` is what the CLI returns when one escapes."""

    exit_code: ClassVar[int] = 1


class ConfigError(DropzoneError):
    exit_code: ClassVar[int] = 2


class InputError(DropzoneError):
    """A partner file that must not be sent as it is.

    ``line`` is the 1-based line number in the source file where the problem
    was found, when there is one.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class SplitError(InputError):
    pass


class UnknownFieldError(InputError):
    """A header column Marketo's describe does not know (``fieldcheck``): before the file is
    rejected for it, a describe a few minutes old is fetched again (an admin may just have added
    the field)."""


class DescribeUnavailableError(DropzoneError):
    """Marketo's description of an object, or of an import target, could not be had or read.

    Never a reason to reject a file: its header goes unchecked (with a note), a target check
    answers "unknown". ``reason`` is short, for status notes and logs.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(DropzoneError):
    pass


class DecryptUnavailableError(DropzoneError):
    """gpg, its agent or our private key failed (not the partner's file): the file stays claimed and is tried again.

    ``stalled``: gpg ran and wrote nothing for ``DECRYPT_STALL_S``: likely ours (a stuck agent), but a file
    can cause it too (many bogus key packets for our key), so prepare counts these per file.
    """

    def __init__(self, message: str, *, stalled: bool = False) -> None:
        super().__init__(message)
        self.stalled = stalled


class MarketoError(DropzoneError):
    """An answer (or a non-answer) from Marketo that ended a call.

    ``code`` is Marketo's error code as a string ("606"), or ``"HTTP 413"``
    style for HTTP-level errors, a short label ("reply not JSON") for replies
    that could not be read, or ``None`` for network failures. ``retry_after``
    is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(
        self, message: str, *, code: str | None = None, endpoint: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint
        self.retry_after = retry_after


class TransientError(MarketoError):
    pass


class ThrottledError(MarketoError):
    pass


class TryLaterError(MarketoError):
    """Not a failure of the request: Marketo asks us to come back later."""


class QueueFullError(TryLaterError):
    pass


class ListBusyError(TryLaterError):
    pass


class QuotaExceededError(MarketoError):
    def __init__(
        self, message: str, *, resume_at: _dt.datetime, code: str | None = "607", endpoint: str = ""
    ) -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.resume_at = resume_at


class MisconfiguredError(MarketoError):
    """The integration is set up wrong (in Marketo's admin or in ``marketo:``/a route), not the file.

    Retrying the file cannot help and failing it would be wrong: pause and let
    an operator fix what the message names. ``scope`` is ``"instance"`` when
    every call is affected, ``"route"`` when only imports with this route's
    parameters (partition, list, program, status) are.
    """

    exit_code: ClassVar[int] = 3

    def __init__(self, message: str, *, code: str | None = None, endpoint: str = "", scope: str = "instance") -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.scope = scope


class AuthError(MisconfiguredError):
    """Identity refused the client id/secret, or Marketo kept refusing fresh tokens."""


class RejectedError(MarketoError):
    pass


class BatchNotFoundError(RejectedError):
    """Marketo's own answer that it does not know this batch (unknown, or past its 7 days): the batch is over."""


class OutcomeUnknownError(MarketoError):
    """An import POST whose answer does not say whether Marketo created the job.

    Its bytes may have reached Marketo (a lost or late reply, a 5xx, a reply
    that is not JSON or has no batchId). Raised only for calls that create
    something: the caller, who holds the journal, decides whether to
    resubmit. ``reason`` is short and stable ("HTTP 502", "reply not JSON",
    "connection lost after sending", "deadline passed"...), for status notes.
    """

    def __init__(self, message: str, *, reason: str, code: str | None = None, endpoint: str = "") -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.reason = reason


class WouldWaitError(DropzoneError):
    """A call would have to wait ``retry_after`` seconds first (its instance's rate window, a retry's
    backoff, a token being renewed), and its caller asked not to be held.

    The daemon's clients raise it instead of sleeping, so one instance's
    throttling or trouble never holds the loop that serves the others. Raised
    only where nothing has been sent, or where Marketo said it did not run the
    request: the caller simply comes back after ``retry_after``.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Marketo asks to wait {retry_after:.1f} s")
        self.retry_after = retry_after


class Interrupted(BaseException):
    """Shutdown was asked for while waiting: unwinds the current step so the loop can exit.

    A ``BaseException``, so that no ``except Exception`` on the way (one bad
    item must never stop the rest) can swallow a shutdown.
    """
