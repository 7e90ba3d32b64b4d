"""Every error dropzone raises on purpose.

``str(exc)`` is always a sentence an operator can act on, and never carries a
client secret or an access token.

* DropzoneError                 base
  x ConfigError                 bad YAML or setting; names the key (exit 2)
  x InputError                  a partner file we will not send; goes to the outbox
    + SplitError                the file cannot be cut into valid chunks (carries a line number)
  x StoreError                  the journal is unusable, or another daemon holds it
  x MarketoError                carries Marketo's code (a string) and message
    + TransientError            502, 604, 608, 611, 614, 713, 719, 5xx, resets: retried, then raised
    + ThrottledError            606 / 615: the rate or concurrency window; retried, then raised
    + TryLaterError             the import queue is full (1016) or the list is busy (1019)
      + QueueFullError          1016
      + ListBusyError           1019
    + QuotaExceededError        607: no call will work before ``resume_at``
    + AuthError                 Identity refused the credentials, or 601/602 would not clear
    + RejectedError             Marketo refused this request: retrying the same request cannot help
    + OutcomeUnknownError       a POST whose reply was lost: Marketo may or may not have the job
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


class StoreError(DropzoneError):
    pass


class MarketoError(DropzoneError):
    """An answer (or a non-answer) from Marketo that ended a call.

    ``code`` is Marketo's error code as a string ("606"), or ``"HTTP 413"``
    style for HTTP-level errors, or ``None`` for network failures.
    """

    def __init__(self, message: str, *, code: str | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint


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


class AuthError(MarketoError):
    exit_code: ClassVar[int] = 3


class RejectedError(MarketoError):
    pass


class OutcomeUnknownError(MarketoError):
    """The request went out and its answer was lost.

    Raised only for calls that create something (import submissions): the
    caller, who holds the journal, decides whether to resubmit.
    """


class Interrupted(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """Shutdown was asked for while waiting: unwinds the current step so the loop can exit.

    A ``BaseException``, so that no ``except Exception`` on the way (one bad
    item must never stop the rest) can swallow a shutdown.
    """
