"""The Marketo instances one daemon talks to: their settings, their names, and how they are parsed.

``marketo:`` is the default instance (named ``default``); ``instances:``
adds more by name, with the same keys. Each instance is a separate Marketo
subscription: its own token, rate window, concurrency budget and import
queue (``dispatch`` runs one stage per instance). Two names for one
subscription would split a queue Marketo counts as one, so an endpoint may
appear once.

Owns: ``MarketoSettings``, the ``marketo``/``instances`` keys and their
checks. ``config`` calls ``parse_instances`` and resolves the ``instance:``
of inboxes and routes against the names it returns.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropzone import defaults as D
from dropzone.schema import Context, Section, describe, join, os_problem

#: Instance names go into metric labels, status files and logs: short and plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")

MARKETO_KEYS = (
    "endpoint",
    "identity",
    "client_id",
    "client_secret",
    "client_secret_file",
    "poll_interval",
    "calls_per_20s",
    "max_concurrent_calls",
    "max_open_imports",
    "connect_timeout",
    "read_timeout",
    "max_retry_seconds",
    "resubmit_hold",
    "daily_quota",
    "daily_reserve",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketoSettings:
    """One Marketo instance: where, who, and how hard to use it. The client takes this as is."""

    endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str = D.DEFAULT_INSTANCE
    identity: str | None = None
    client_secret_file: Path | None = None
    poll_interval: float = D.POLL_INTERVAL_S
    calls_per_20s: int = D.CALLS_PER_20S
    max_concurrent_calls: int = D.MAX_CONCURRENT_CALLS
    max_open_imports: int = D.MAX_OPEN_IMPORTS
    connect_timeout: float = D.CONNECT_TIMEOUT_S
    read_timeout: float = D.READ_TIMEOUT_S
    max_retry_seconds: float = D.MAX_RETRY_S
    resubmit_hold: float = D.RESUBMIT_HOLD_S
    daily_quota: int = D.DAILY_QUOTA
    daily_reserve: int = D.DAILY_RESERVE

    @property
    def identity_url(self) -> str:
        return (self.identity or f"{self.endpoint.rstrip('/')}/identity").rstrip("/")

    @property
    def subscription(self) -> str:
        """The endpoint as compared between instances and journalled per batch (no secret in it)."""
        return same_endpoint_key(self.endpoint)

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "identity": self.identity_url,
            "client_id": self.client_id,
            "client_secret": D.SECRET_MASK,
        }
        if self.client_secret_file is not None:
            out["client_secret_file"] = str(self.client_secret_file)
        out.update(
            poll_interval=self.poll_interval,
            calls_per_20s=self.calls_per_20s,
            max_concurrent_calls=self.max_concurrent_calls,
            max_open_imports=self.max_open_imports,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_retry_seconds=self.max_retry_seconds,
            resubmit_hold=self.resubmit_hold,
            daily_quota=self.daily_quota,
            daily_reserve=self.daily_reserve,
        )
        return out


def same_endpoint_key(endpoint: str) -> str:
    """``HTTPS://123-ABC-456.mktorest.com:443/`` and ``https://123-abc-456.mktorest.com.`` are one instance."""
    parts = urllib.parse.urlsplit(endpoint.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != {"https": 443, "http": 80}.get(scheme):
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def parse_instances(ctx: Context, default: object, others: object) -> dict[str, MarketoSettings]:
    """``marketo:`` (required) and ``instances:`` (optional), by name, the default first."""
    found = {D.DEFAULT_INSTANCE: _settings(ctx, default, "marketo", D.DEFAULT_INSTANCE)}
    if others is None:
        return found
    if not isinstance(others, dict):
        raise ctx.error("instances", f"expected a mapping of names to instances, got {describe(others)}")
    for name, data in others.items():
        key = join("instances", str(name))
        if not isinstance(name, str) or not _NAME.match(name):
            raise ctx.error(key, "a name is letters, digits, '_', '-' and '.' (at most 63, not starting with a symbol)")
        if name == D.DEFAULT_INSTANCE:
            raise ctx.error(key, f"{D.DEFAULT_INSTANCE!r} is the name of the marketo: instance; choose another")
        settings = _settings(ctx, data, key, name)
        for other in found.values():
            if other.subscription == settings.subscription:
                where = "marketo" if other.name == D.DEFAULT_INSTANCE else join("instances", other.name)
                raise ctx.error(
                    join(key, "endpoint"),
                    f"{settings.endpoint} is already {where}.endpoint: one Marketo instance has one import "
                    "queue and one rate limit, so it must be configured once",
                )
        found[name] = settings
    return found


def _settings(ctx: Context, data: object, path: str, name: str) -> MarketoSettings:
    s = Section(ctx, data, path, MARKETO_KEYS)
    endpoint = s.url("endpoint")
    if endpoint.endswith("/rest"):
        raise s.error("endpoint", f"{endpoint!r}: give the endpoint without /rest")
    identity = s.url("identity", None) or f"{endpoint}/identity"
    client_id = s.string("client_id")
    if s.has("client_secret") and s.has("client_secret_file"):
        raise s.error("client_secret", "give client_secret or client_secret_file, not both")
    secret_file: Path | None = None
    if s.has("client_secret_file"):
        secret_file = s.path("client_secret_file")
        try:
            secret = ctx.read_file(str(secret_file)).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise s.error("client_secret_file", f"cannot read {secret_file}: {os_problem(exc)}") from None
        if not secret.strip():
            raise s.error("client_secret_file", f"{secret_file} is empty")
    elif s.has("client_secret"):
        secret = s.string("client_secret")
    else:
        raise s.error("client_secret", "is required (or client_secret_file)")
    daily_quota = s.integer("daily_quota", D.DAILY_QUOTA, low=1)
    daily_reserve = s.integer("daily_reserve", D.DAILY_RESERVE, low=0)
    if daily_reserve >= daily_quota:
        # Else no import could ever be sent: the reserve is the part of the quota left to the others.
        raise s.error("daily_reserve", f"must be less than daily_quota ({daily_quota}), got {daily_reserve}")
    return MarketoSettings(
        name=name,
        endpoint=endpoint,
        identity=identity,
        client_id=client_id,
        client_secret=secret,
        client_secret_file=secret_file,
        poll_interval=s.seconds("poll_interval", D.POLL_INTERVAL_S),
        calls_per_20s=s.integer("calls_per_20s", D.CALLS_PER_20S, low=1, high=D.MARKETO_CALLS_PER_WINDOW),
        max_concurrent_calls=s.integer(
            "max_concurrent_calls", D.MAX_CONCURRENT_CALLS, low=1, high=D.MARKETO_MAX_CONCURRENT_CALLS
        ),
        max_open_imports=s.integer("max_open_imports", D.MAX_OPEN_IMPORTS, low=1, high=D.MARKETO_MAX_OPEN_IMPORTS),
        connect_timeout=s.seconds("connect_timeout", D.CONNECT_TIMEOUT_S),
        read_timeout=s.seconds("read_timeout", D.READ_TIMEOUT_S),
        max_retry_seconds=s.seconds("max_retry_seconds", D.MAX_RETRY_S, allow_zero=True),
        resubmit_hold=s.seconds("resubmit_hold", D.RESUBMIT_HOLD_S, allow_zero=True),
        daily_quota=daily_quota,
        daily_reserve=daily_reserve,
    )


__all__ = ["MARKETO_KEYS", "MarketoSettings", "parse_instances", "same_endpoint_key"]
