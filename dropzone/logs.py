"""Logging setup: structlog for our events, the same chain for stdlib records.

The only module that calls ``structlog.configure``. Output is one JSON object
per line when stdout is not a terminal (systemd, containers), readable
key=value lines on a terminal. Secrets are redacted by a processor as a
backstop; the first defence is that no code passes them to a logger.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Things that look like secrets even when we were not told their value:
# Marketo tokens (uuid:pod) and credentials in query strings or headers.
_PATTERNS = (
    re.compile(r"(?i)(client_secret|access_token)=[^&\s\"']+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._:\-]+"),
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[a-z0-9]+\b"),
)


class RedactSecrets:
    """Replace known secret values, and anything shaped like a token, in every string of an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        return _PATTERNS[2].sub(REDACTED, text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {key: self._clean(value) for key, value in event_dict.items()}


#: The process-wide redactor; the daemon adds the configured secret to it.
redactor = RedactSecrets()


def configure(*, json: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Set up structlog and route stdlib logging (watchdog, urllib3) through it.

    Args:
        json: JSON lines when True, console when False, by TTY when None.
        level: minimum level name.
        stream: where lines go; stdout by default.
    """
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Redaction must run last before rendering, after exception info turned into text.
    # Frames' locals hold tokens and secrets: tracebacks carry code lines only.
    no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    tail: list[Any] = [structlog.processors.ExceptionRenderer(no_locals)] if json else []
    tail.append(redactor)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs every request line at DEBUG, query string included.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    # watchdog logs every inotify event at DEBUG: a busy inbox would drown the daemon's own lines.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, root.level))
