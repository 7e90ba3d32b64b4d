"""systemd's service notification protocol (``sd_notify``), in the standard library only.

Owns: telling the service manager where the daemon is in its life
(``READY=1`` after the start-up scan, ``WATCHDOG=1`` from the main loop,
``RELOADING=1``, ``STOPPING=1``, a free-text ``STATUS=``) and reading the
watchdog interval the manager asked for. Does not own *when* to say any of
this: the daemon decides.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET``: a filesystem path, or an abstract name written
``@name``. When the variable is unset (not run by systemd, a container, a
test) every call is a cheap no-op returning False, so callers never need to
ask first. Sending never raises: a lost notification must not take the daemon
down, and systemd's own watchdog notices a daemon that stopped pinging.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "Watchdog",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL instead of the "@"; no file on disk.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock:… and relative paths: not something a service of ours is handed


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (``"READY=1"``, …) as one datagram to ``$NOTIFY_SOCKET``.

    Args:
        fields: ``KEY=VALUE`` strings, one per line of the message.
        env: the environment to read; ``os.environ`` when None.

    Returns:
        True when the datagram was sent; False when ``NOTIFY_SOCKET`` is unset,
        unusable, or the send failed.
    """
    environ = os.environ if env is None else env
    address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """Start-up is done (journal recovered, first scan finished): systemd marks the unit active."""
    return notify("READY=1", env=env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun; systemd stops expecting watchdog pings."""
    return notify("STOPPING=1", env=env)


def reloading(env: Mapping[str, str] | None = None) -> bool:
    """A reload has begun; send ``ready()`` when it is done.

    ``MONOTONIC_USEC`` is required with ``Type=notify-reload`` and harmless
    with ``Type=notify``: systemd uses it to tell this reload from a later one.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", env=env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    """The main loop is alive; must arrive at least every ``WatchdogSec``."""
    return notify("WATCHDOG=1", env=env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """One line shown by ``systemctl status``; line breaks would end the field, so they become spaces."""
    return notify("STATUS=" + " ".join(text.splitlines()), env=env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``, or None when no watchdog is armed.

    Reads ``WATCHDOG_USEC``; when ``WATCHDOG_PID`` is set and is not this
    process (a wrapper started us, or we were forked), the watchdog is someone
    else's and None is returned. Ping every half interval, as sd_watchdog_enabled(3) advises.
    """
    environ = os.environ if env is None else env
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


@dataclass
class Watchdog:
    """Rate-limits ``WATCHDOG=1`` to one per half interval, so the loop can call ``maybe_ping`` every tick.

    Args:
        interval: ``watchdog_interval()``; None disables pinging.
        env: the environment ``notify`` reads; ``os.environ`` when None.
    """

    interval: float | None
    env: Mapping[str, str] | None = None
    _next: float = field(default=float("-inf"), init=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Watchdog:
        return cls(watchdog_interval(env), env)

    def maybe_ping(self, now: float) -> bool:
        """Ping when half the interval has passed since the last ping; ``now`` is monotonic seconds."""
        if self.interval is None or now < self._next:
            return False
        self._next = now + self.interval / 2
        return watchdog(self.env)
