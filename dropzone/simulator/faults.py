"""Fault injection (pure): which call gets which fault.

Two sources: counted injections (``inject("606", times=2, endpoint="import")``),
consumed in order by the matching calls, and seeded random rates drawn once
per API call. Identity calls only get counted faults aimed at them.

Kinds:
    "<digits>"        Marketo envelope error with that code (HTTP 200)
    "http413" … "http504"   that HTTP status, non-JSON body
    "reset"           the request is processed, then the socket closes unanswered
    "reset_before"    the socket closes before processing (nothing happens)
    "slow:<seconds>"  the answer is delayed, then processed normally
    "job_failed"      (imports) the job is created and later ends Failed
    "expires_in_0"    (identity) the token is answered with expires_in 0 and dies ~1 s later
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from .codes import ENDPOINTS, HTTP_FAULTS

_ENDPOINT_ONLY = {"job_failed": "import", "expires_in_0": "identity"}


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it names a fault, else raise ValueError."""
    if kind.isdigit() or kind in HTTP_FAULTS or kind in ("reset", "reset_before") or kind in _ENDPOINT_ONLY:
        return kind
    if kind.startswith("slow:"):
        try:
            seconds = float(kind[5:])
        except ValueError:
            pass
        else:
            if seconds >= 0:
                return kind
    raise ValueError(f"unknown fault kind {kind!r}")


def slow_seconds(kind: str) -> float:
    return float(kind[5:]) if kind.startswith("slow:") else 0.0


@dataclass
class _Injection:
    kind: str
    remaining: int
    endpoint: str | None


class FaultPlan:
    """Decides the fault, if any, for each call."""

    def __init__(self, rates: Mapping[str, float], rng: random.Random) -> None:
        for kind in rates:
            validate_kind(kind)
            if kind in _ENDPOINT_ONLY:
                raise ValueError(f"{kind!r} can be injected but has no random rate")
        # Sorted so a seed gives the same draws whatever the dict order.
        self._rates = sorted(rates.items())
        self._rng = rng
        self._pending: list[_Injection] = []

    def inject(self, kind: str, times: int = 1, endpoint: str | None = None) -> None:
        validate_kind(kind)
        if times < 1:
            raise ValueError("times must be at least 1")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS} or None")
        only = _ENDPOINT_ONLY.get(kind)
        if only and endpoint not in (None, only):
            raise ValueError(f"{kind!r} applies to {only!r} calls only")
        self._pending.append(_Injection(kind, times, endpoint or only))

    def clear(self) -> None:
        self._pending.clear()

    def pending(self) -> list[tuple[str, int, str | None]]:
        return [(i.kind, i.remaining, i.endpoint) for i in self._pending]

    def draw(self, endpoint: str) -> str | None:
        """The fault for one call to ``endpoint``, consuming it; None for a clean call."""
        for injection in self._pending:
            if self._matches(injection, endpoint):
                injection.remaining -= 1
                if injection.remaining == 0:
                    self._pending.remove(injection)
                return injection.kind
        if endpoint == "identity" or not self._rates:
            return None
        # One draw per API call keeps a seeded run reproducible for a serial client.
        r = self._rng.random()
        for kind, p in self._rates:
            if r < p:
                return kind
            r -= p
        return None

    @staticmethod
    def _matches(injection: _Injection, endpoint: str) -> bool:
        if injection.endpoint is None:
            return endpoint != "identity"
        return injection.endpoint == endpoint
