"""Fault injection (pure): which call gets which misbehaviour.

Two sources: armed faults (``Simulator.arm(Fault(...))``; ``inject(kind, times,
endpoint)`` is the short form), consumed in arming order by the calls they
match, and seeded random rates drawn once per API call (``SimConfig.fault_rates``).
Identity calls only get armed faults aimed at them.

A ``Fault`` lasts for the next ``times`` matching calls, or for ``seconds`` of
simulator clock from arming, or whichever ends first when both are given;
``times=None`` with no ``seconds`` keeps it armed until ``disarm``/``clear_faults``.
Leaving ``times`` out means 1, or "no count" when ``seconds`` is given.

Each kind acts at one stage of a call, and is only consumed by a call that
reaches that stage (a call takes at most one fault per stage):

    edge     drawn as the call arrives (codes, HTTP pages, resets, delays, and
             the delivery faults trickle and oversize)
    refuse   after the token, the 606/607 limits (so it counts toward them)
    created  after an import created its job
    status   while a successful status body is built

Kinds (``endpoint=None`` means any API call, i.e. not identity, unless the kind
belongs to one endpoint, which is then implied):

    "<digits>"        Marketo envelope error with that code (HTTP 200); nothing happens
    "http413" … "http504"   that HTTP status, HTML body; nothing happens
    "http429"         HTTP 429 Too Many Requests, HTML body, ``Retry-After: <retry_after>``
                      (param retry_after: int seconds or None for no header; default 20)
    "reset"           the call is processed, then the socket closes unanswered
    "reset_before"    the socket closes before processing (nothing happens)
    "slow:<seconds>"  the answer is delayed, then processed normally
    "job_failed"      (import) the job is created and later ends Failed
    "expires_in_0"    (identity) the token is answered with expires_in 0 and dies ~1 s later
    "trickle"         processed normally; the headers go out at once, the body at
                      ``bytes_per_second`` (float > 0, default 1.0). The call counts as
                      done (615 gate, call log ``t_end``) once processed: only the
                      bytes are slow, as behind a congested proxy
    "oversize"        processed normally; the body is padded to ``size`` bytes
                      (default 4 MiB): JSON with whitespace (same value, exactly
                      ``size``), a failures/warnings CSV by repeating its data rows
                      (at least ``size``), anything else with trailing newlines
    "refuse"          (stage refuse) Marketo's 603 envelope, HTTP 200; param flavour:
                      "access_denied" (message "Access denied"), "ip_allowlist"
                      or "permission" (same code, a message naming the cause) [INF]
    "create_then"     (import, stage created) the job exists, but the reply is
                      param reply: "502" | "503" | "504" (HTML page), "not_json"
                      (200, an HTML page) or "truncated" (200, half the JSON)
    "malformed_status" (status) param shape: "failed_string" (numOfRowsFailed "n/a"),
                      "processed_null" (numOfLeadsProcessed / numOfObjectsProcessed
                      null) or "errors_dict" (success false, errors an object)
    "bare_status"     (status of program-member batches only) result holds only
                      batchId, importId, status (the swagger schema)
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from .codes import ENDPOINTS, HTTP_FAULTS

EDGE, REFUSE, CREATED, STATUS = "edge", "refuse", "created", "status"

REFUSAL_FLAVOURS = ("access_denied", "ip_allowlist", "permission")
CREATE_REPLIES = ("502", "503", "504", "not_json", "truncated")
STATUS_SHAPES = ("failed_string", "processed_null", "errors_dict")
DEFAULT_OVERSIZE = 4 * 1024 * 1024
DEFAULT_RETRY_AFTER = 20


def _choice(options: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def _positive_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _retry_after(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


@dataclass(frozen=True)
class _Param:
    default: Any
    valid: Callable[[Any], bool]
    hint: str


@dataclass(frozen=True)
class _Kind:
    stage: str = EDGE
    # The only endpoint it applies to (implied when none is given).
    only: str | None = None
    # The call is still processed normally after an edge fault of this kind.
    proceeds: bool = False
    # May be a random rate (SimConfig.fault_rates).
    random: bool = True
    allow_identity: bool = True
    params: Mapping[str, _Param] = field(default_factory=dict)


_PLAIN = _Kind()
_KINDS: dict[str, _Kind] = {
    **{name: _PLAIN for name in HTTP_FAULTS},
    "http429": _Kind(params={"retry_after": _Param(DEFAULT_RETRY_AFTER, _retry_after, "an int >= 0 or None")}),
    "reset": _Kind(proceeds=True),
    "reset_before": _PLAIN,
    "job_failed": _Kind(only="import", proceeds=True, random=False),
    "expires_in_0": _Kind(only="identity", proceeds=True, random=False),
    "trickle": _Kind(
        proceeds=True,
        random=False,
        params={"bytes_per_second": _Param(1.0, _positive_number, "a number > 0")},
    ),
    "oversize": _Kind(
        proceeds=True, random=False, params={"size": _Param(DEFAULT_OVERSIZE, _positive_int, "an int > 0")}
    ),
    "refuse": _Kind(
        stage=REFUSE,
        random=False,
        allow_identity=False,
        params={"flavour": _Param("access_denied", _choice(REFUSAL_FLAVOURS), f"one of {REFUSAL_FLAVOURS}")},
    ),
    "create_then": _Kind(
        stage=CREATED,
        only="import",
        random=False,
        params={"reply": _Param("502", _choice(CREATE_REPLIES), f"one of {CREATE_REPLIES}")},
    ),
    "malformed_status": _Kind(
        stage=STATUS,
        only="status",
        random=False,
        params={"shape": _Param("failed_string", _choice(STATUS_SHAPES), f"one of {STATUS_SHAPES}")},
    ),
    "bare_status": _Kind(stage=STATUS, only="status", random=False),
}


def _kind(name: str) -> _Kind:
    if name.isdigit():
        return _PLAIN
    if name.startswith("slow:"):
        try:
            seconds = float(name[5:])
        except ValueError:
            seconds = -1.0
        if seconds >= 0 and math.isfinite(seconds):
            return _Kind(proceeds=True)
    spec = _KINDS.get(name)
    if spec is None:
        raise ValueError(f"unknown fault kind {name!r}")
    return spec


def validate_kind(kind: str, *, random_rate: bool = False) -> str:
    """Return ``kind`` if it names a fault (one that may be a random rate, if asked), else raise ValueError."""
    if random_rate and not _kind(kind).random:
        raise ValueError(f"{kind!r} can be armed but has no random rate")
    _kind(kind)
    return kind


def slow_seconds(kind: str) -> float:
    return float(kind[5:]) if kind.startswith("slow:") else 0.0


def proceeds(kind: str) -> bool:
    """Whether a call that drew edge fault ``kind`` is still processed normally."""
    return _kind(kind).proceeds


class _Unset(enum.Enum):
    TOKEN = 0


_UNSET: Final = _Unset.TOKEN


@dataclass(frozen=True, init=False)
class Fault:
    """One armed misbehaviour: ``Fault(kind, endpoint=..., times=..., seconds=..., **params)``.

    Raises ValueError for an unknown kind, parameter or endpoint, a bad value,
    ``times < 1`` or ``seconds <= 0``. See the module docstring for the kinds.
    """

    kind: str
    endpoint: str | None
    times: int | None
    seconds: float | None
    params: Mapping[str, Any]

    def __init__(
        self,
        kind: str,
        *,
        endpoint: str | None = None,
        times: int | Literal[_Unset.TOKEN] | None = _UNSET,
        seconds: float | None = None,
        **params: Any,
    ) -> None:
        spec = _kind(kind)
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS} or None, not {endpoint!r}")
        if spec.only and endpoint not in (None, spec.only):
            raise ValueError(f"{kind!r} applies to {spec.only!r} calls only")
        if endpoint == "identity" and not spec.allow_identity:
            raise ValueError(f"{kind!r} does not apply to identity calls")
        if times is _UNSET:
            times = 1 if seconds is None else None
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise ValueError("times must be an int of at least 1, or None")
        if seconds is not None and not _positive_number(seconds):
            raise ValueError("seconds must be a number > 0, or None")
        unknown = sorted(set(params) - set(spec.params))
        if unknown:
            raise ValueError(f"{kind!r} takes no parameter {unknown[0]!r}; it takes {sorted(spec.params) or 'none'}")
        full: dict[str, Any] = {}
        for name, param in spec.params.items():
            value = params.get(name, param.default)
            if not param.valid(value):
                raise ValueError(f"{kind!r}: {name} must be {param.hint}, not {value!r}")
            full[name] = value
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "endpoint", endpoint or spec.only)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "seconds", None if seconds is None else float(seconds))
        object.__setattr__(self, "params", MappingProxyType(full))

    @property
    def stage(self) -> str:
        return _kind(self.kind).stage

    def param(self, name: str) -> Any:
        return self.params[name]

    def matches(self, endpoint: str) -> bool:
        if self.endpoint is None:
            return endpoint != "identity"
        return self.endpoint == endpoint


@dataclass
class _Armed:
    id: int
    fault: Fault
    remaining: int | None
    until: float | None


class FaultPlan:
    """Decides the faults, if any, for each call."""

    def __init__(self, rates: Mapping[str, float], rng: random.Random) -> None:
        for kind in rates:
            validate_kind(kind, random_rate=True)
        # Sorted so a seed gives the same draws whatever the dict order.
        self._rates = sorted(rates.items())
        self._rng = rng
        self._armed: list[_Armed] = []
        self._ids = itertools.count(1)

    def arm(self, fault: Fault, now: float) -> int:
        """Arm ``fault`` from ``now``; returns its id (for ``disarm``)."""
        until = None if fault.seconds is None else now + fault.seconds
        armed = _Armed(next(self._ids), fault, fault.times, until)
        self._armed.append(armed)
        return armed.id

    def inject(self, kind: str, times: int = 1, endpoint: str | None = None, *, now: float = 0.0) -> None:
        """The short form: the next ``times`` matching calls get ``kind`` (no parameters)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self.arm(Fault(kind, endpoint=endpoint, times=times), now)

    def disarm(self, fault_id: int) -> bool:
        """Forget one armed fault; False if it was already used up, expired or unknown."""
        before = len(self._armed)
        self._armed = [a for a in self._armed if a.id != fault_id]
        return len(self._armed) != before

    def clear(self) -> None:
        self._armed.clear()

    def armed(self, now: float) -> list[dict[str, Any]]:
        """The faults still armed, oldest first."""
        self._expire(now)
        return [
            {
                "id": a.id,
                "kind": a.fault.kind,
                "endpoint": a.fault.endpoint,
                "remaining": a.remaining,
                "seconds_left": None if a.until is None else a.until - now,
                "params": dict(a.fault.params),
            }
            for a in self._armed
        ]

    def draw(self, endpoint: str, now: float) -> Fault | None:
        """The edge fault for one call to ``endpoint``, consuming it; None for a clean call."""
        armed = self.take(EDGE, endpoint, now)
        if armed is not None or endpoint == "identity" or not self._rates:
            return armed
        # One draw per API call keeps a seeded run reproducible for a serial client.
        r = self._rng.random()
        for kind, p in self._rates:
            if r < p:
                return Fault(kind)
            r -= p
        return None

    def take(
        self, stage: str, endpoint: str, now: float, accept: Callable[[Fault], bool] | None = None
    ) -> Fault | None:
        """Consume the oldest armed fault of ``stage`` for ``endpoint`` that ``accept``s; None if none."""
        self._expire(now)
        for armed in self._armed:
            fault = armed.fault
            if fault.stage != stage or not fault.matches(endpoint) or (accept and not accept(fault)):
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._armed.remove(armed)
            return fault
        return None

    def _expire(self, now: float) -> None:
        self._armed = [a for a in self._armed if a.until is None or now < a.until]
