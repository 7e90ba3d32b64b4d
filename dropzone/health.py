"""Health and metrics: what the daemon reports about itself.

Owns: the Prometheus metrics (``Metrics``, on a private registry so tests and
two daemons in one process never share counters) and the liveness and
readiness rules. ``healthserver`` serves them over HTTP and holds the client
side of ``dropzone health``. Does not own when things happen: the daemon calls
the ``Metrics`` methods; this module never reaches into the daemon.

Marketo metrics and readiness are per instance (``Metrics.instance(name)``,
an ``instance`` label, a check per instance); file metrics are not.

Threads: the daemon's loop writes, the server's threads read. prometheus_client
is thread-safe; the few readiness fields here (the instances' too) are guarded
by one lock.
Times are monotonic seconds from an injected clock (the daemon's).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from dropzone.defaults import DEFAULT_INSTANCE
from dropzone.jobs import Outcome

if TYPE_CHECKING:  # `dropzone health` (a HEALTHCHECK every 30 s) need not import requests
    from dropzone.marketo import CallRecord

__all__ = [
    "DEFAULT_LIVE_WITHIN",
    "DEFAULT_MARKETO_GRACE",
    "Check",
    "InstanceMetrics",
    "Metrics",
    "probe_writable",
]

DEFAULT_LIVE_WITHIN: Final = 300.0
"""Seconds without a loop tick before /livez fails (systemd's WatchdogSec= is the same).
The loop ticks in its retry sleeps too, so the longest silence is one blocking call:
an upload within read_timeout (120 s by default)."""
_IDENTITY: Final = "identity"
"""``marketo.Endpoint.IDENTITY``: a call there that succeeded brought a new access token."""
DEFAULT_MARKETO_GRACE: Final = 300.0
"""Seconds Marketo may stay unreachable before /readyz fails; blips are retried anyway."""


@dataclass(frozen=True, slots=True)
class Check:
    """One health rule's verdict; ``detail`` says why, for people."""

    name: str
    ok: bool
    detail: str


def _answered(outcome: str) -> bool:
    """Did Marketo answer? "ok" and Marketo's own codes ("606", "1016") are answers;
    "HTTP 503", "HTTP 401" and exception names (no answer, or not Marketo's API answering) are not."""
    return outcome == "ok" or outcome.isdigit()


class InstanceMetrics:
    """One Marketo instance's share of ``Metrics``: what its client and its dispatch report.

    Get it from ``Metrics.instance(name)``; give ``on_call`` to that instance's
    ``MarketoClient``. After ``Metrics.forget_instance(name)`` the view is detached
    and drops what it is told, so a late call from a removed instance's client
    cannot bring its series back; ``Metrics.instance(name)`` then makes a fresh one.
    """

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self._m = metrics
        # All below guarded by metrics._lock.
        self._attached = True
        self._ok_at: float | None = None
        self._failing_since: float | None = None
        self._last_poll: float | None = None
        self._misconfigured: str | None = None
        self._quota_pause: str | None = None
        self._calls: set[tuple[str, str]] = set()  # (endpoint, code) series to remove when forgotten

    def api_call(self, endpoint: str, outcome: str) -> None:
        """One HTTP exchange with Marketo. ``endpoint`` must be a small fixed set
        (``marketo.Endpoint``), never a path with ids in it: each value is a time series."""
        m, endpoint = self._m, str(endpoint)
        now = m.clock()
        with m._lock:
            if not self._attached:
                return
            m.api_calls.labels(endpoint, outcome, self.name).inc()
            self._calls.add((endpoint, outcome))
            if endpoint == _IDENTITY and outcome == "ok":
                m.token_refreshes.labels(self.name).inc()
            if _answered(outcome):
                self._ok_at = now
                self._failing_since = None
            elif self._failing_since is None:
                self._failing_since = now

    def on_call(self, record: CallRecord) -> None:
        """``MarketoClient(on_call=view.on_call)``: the same as ``api_call``."""
        self.api_call(str(record.endpoint), record.outcome)

    def poll_succeeded(self) -> None:
        """A batch status poll got Marketo's answer."""
        now = self._m.clock()
        with self._m._lock:
            if self._attached:
                self._last_poll = now

    def set_batches(self, *, open: int, queued: int) -> None:
        """Imports open at Marketo, and chunks waiting to be submitted, on this instance."""
        m = self._m
        with m._lock:
            if self._attached:
                m.batches_open.labels(self.name).set(open)
                m.batches_queued.labels(self.name).set(queued)

    def set_misconfigured(self, reason: str | None) -> None:
        """Marketo refuses this integration itself (603, credentials): not ready until it clears."""
        m = self._m
        with m._lock:
            if self._attached:
                self._misconfigured = reason
                m.integration_refused.labels(self.name).set(1 if reason else 0)

    def set_quota(self, *, ours: int, instance: int | None, paused: str | None) -> None:
        """Calls today (ours; the instance's from usage.json, None when unknown), and why new imports
        wait for the quota's reset (None: they do not)."""
        with self._m._lock:
            if self._attached:
                self._m.api_calls_today.labels(self.name).set(ours)
                self._m.instance_calls_today.labels(self.name).set(math.nan if instance is None else instance)
                self._quota_pause = paused

    def _checks(self, now: float, grace: float) -> list[Check]:
        """This instance's readiness checks; the caller holds the lock."""
        default = self.name == DEFAULT_INSTANCE
        suffix = "" if default else f":{self.name}"
        who = "" if default else f"instance {self.name}: "
        checks = []
        if self._misconfigured is not None:
            checks.append(Check(f"marketo_access{suffix}", False,
                                f"{who}Marketo refuses this integration: {self._misconfigured}"))
        if self._quota_pause is not None:
            # A deliberate pause, not a fault: shown, never failing (the reserve is the customer's).
            checks.append(Check(f"marketo_quota{suffix}", True, f"{who}{self._quota_pause}"))
        ok_at, failing_since = self._ok_at, self._failing_since
        if failing_since is not None:
            failing_for = now - failing_since
            last = "never answered" if ok_at is None else f"last answered {now - ok_at:.0f} s ago"
            checks.append(Check(f"marketo{suffix}", failing_for < grace,
                                f"{who}calls failing for {failing_for:.0f} s (grace {grace:g} s); {last}"))
        elif ok_at is None:
            # An idle daemon makes no calls; no evidence of trouble is not trouble.
            checks.append(Check(f"marketo{suffix}", True, f"{who}no call yet"))
        else:
            checks.append(Check(f"marketo{suffix}", True, f"{who}last answered {now - ok_at:.0f} s ago"))
        return checks


class _PollAges:
    """``dropzone_seconds_since_last_successful_poll{instance}``, computed at scrape time
    (what ``Gauge.set_function`` does, which labelled gauges lack)."""

    NAME: Final = "dropzone_seconds_since_last_successful_poll"
    DOC: Final = "Seconds since a batch status poll on this instance last succeeded; NaN before the first."

    def __init__(self, ages: Callable[[], list[tuple[str, float]]]) -> None:
        self._ages = ages

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.DOC, labels=["instance"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.DOC, labels=["instance"])
        for name, age in self._ages():
            family.add_metric([name], age)
        yield family


class Metrics:
    """The daemon's counters and gauges, and the inputs of /livez and /readyz.

    Marketo metrics carry an ``instance`` label, one series per instance; the
    file metrics do not. Each instance reports through ``instance(name)``; the
    default instance's (``DEFAULT_INSTANCE``, the configuration's ``marketo:``)
    exists from the start.

    Args:
        clock: monotonic seconds; the daemon passes its own.
        live_within: seconds without ``tick()`` after which the daemon is not live.
        marketo_grace: seconds of failed Marketo calls (since the last answer) before not ready.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        live_within: float = DEFAULT_LIVE_WITHIN,
        marketo_grace: float = DEFAULT_MARKETO_GRACE,
    ) -> None:
        self.clock = clock
        self.live_within = live_within
        self.marketo_grace = marketo_grace
        self._lock = threading.Lock()
        # Creation counts as a tick: start-up (journal recovery, first scan) is not a hang.
        self._last_tick = clock()
        self._waiting_since: float | None = None
        self._config_loaded = False
        self._state_writable = False
        self._watchers_alive = False
        self._instances: dict[str, InstanceMetrics] = {}
        self._wrong_targets: list[str] = []

        self.registry = CollectorRegistry()
        r = self.registry
        self.files = Counter(
            "dropzone_files", "Files finished, by outcome (Complete, Partial, Failed, Rejected).",
            ["outcome"], registry=r,
        )
        for outcome in Outcome:  # present at 0, so rate() and alerts work before the first file
            self.files.labels(outcome.value)
        self.rows_imported = Counter(
            "dropzone_rows_imported", "Rows Marketo processed (rows with warnings included).", registry=r
        )
        self.rows_failed = Counter("dropzone_rows_failed", "Rows Marketo failed (in the failures file).", registry=r)
        self.rows_warned = Counter(
            "dropzone_rows_warned", "Rows imported with a warning (in the warnings file).", registry=r
        )
        self.batches_open = Gauge(
            "dropzone_batches_open", "Imports submitted to this Marketo instance and not finished (queued or "
            "importing there).", ["instance"], registry=r,
        )
        self.batches_queued = Gauge(
            "dropzone_batches_queued", "Chunks split and waiting for dropzone to submit them to this instance.",
            ["instance"], registry=r,
        )
        self.files_waiting = Gauge(
            "dropzone_files_waiting", "Files seen in the inboxes and not yet claimed (upload not complete yet).",
            registry=r,
        )
        Gauge(
            "dropzone_oldest_waiting_file_age_seconds", "Seconds the oldest waiting file has waited; 0 when none.",
            registry=r,
        ).set_function(self._oldest_waiting_age)
        self.api_calls = Counter(
            "dropzone_api_calls",
            "Marketo API calls by endpoint, code and instance: ok, Marketo's code (606, 1016, ...), "
            "'HTTP <status>' or the error's class name when Marketo did not answer.",
            ["endpoint", "code", "instance"], registry=r,
        )
        self.token_refreshes = Counter(
            "dropzone_token_refreshes", "Access tokens obtained from an instance's Identity service (the first "
            "one included).", ["instance"], registry=r,
        )
        self.chunks_split = Counter(
            "dropzone_chunks_split", "Chunks made from files over split_max_bytes (a file sent whole adds nothing).",
            registry=r,
        )
        r.register(_PollAges(self._poll_ages))
        self.integration_refused = Gauge(
            "dropzone_marketo_integration_refused",
            "1 while this Marketo instance refuses this integration itself (603 access denied, IP allow-list, bad "
            "credentials): submissions to it are paused, no file fails for it.", ["instance"], registry=r,
        )
        self.api_calls_today = Gauge(
            "dropzone_api_calls_today", "dropzone's calls to this Marketo instance that may count toward its daily "
            "quota, since its last reset (midnight US Central).", ["instance"], registry=r,
        )
        self.instance_calls_today = Gauge(
            "dropzone_instance_calls_today", "Every integration's calls to this Marketo instance today, as "
            "/rest/v1/stats/usage.json last said; NaN when unknown.", ["instance"], registry=r,
        )
        Gauge(
            "dropzone_seconds_since_last_tick", "Seconds since the main loop last started a pass.", registry=r,
        ).set_function(lambda: self._since(self._last_tick))
        self.instance(DEFAULT_INSTANCE)

    # ---- instances -------------------------------------------------------------

    def instance(self, name: str) -> InstanceMetrics:
        """The view of instance ``name``, made on first use (its series start at 0, its checks appear)."""
        with self._lock:
            view = self._instances.get(name)
            if view is None:
                view = self._instances[name] = InstanceMetrics(self, name)
                for gauge in (self.token_refreshes, self.batches_open, self.batches_queued, self.integration_refused,
                              self.api_calls_today):
                    gauge.labels(name)
                self.instance_calls_today.labels(name).set(math.nan)
            return view

    def instance_names(self) -> list[str]:
        """The instances known, the default first, then by name: the order of /readyz."""
        with self._lock:
            return [view.name for view in self._views()]

    def forget_instance(self, name: str) -> None:
        """An instance left the configuration: drop its state, its series and its checks.
        Unknown names are ignored."""
        with self._lock:
            view = self._instances.pop(name, None)
            if view is None:
                return
            view._attached = False
            for endpoint, code in view._calls:
                self.api_calls.remove(endpoint, code, name)
            for gauge in (self.token_refreshes, self.batches_open, self.batches_queued, self.integration_refused,
                          self.api_calls_today, self.instance_calls_today):
                gauge.remove(name)

    # ---- what the daemon calls -----------------------------------------------

    def tick(self) -> None:
        """Each pass of the main loop (and while it sleeps in a retry): the daemon is live."""
        self._last_tick = self.clock()

    def file_finished(self, outcome: str, *, rows_processed: int, rows_failed: int, rows_warned: int) -> None:
        """A file's status file was written; ``outcome`` is a ``jobs.Outcome`` value."""
        self.files.labels(str(outcome)).inc()
        self.rows_imported.inc(rows_processed)
        self.rows_failed.inc(rows_failed)
        self.rows_warned.inc(rows_warned)

    def file_split(self, chunks: int) -> None:
        """A file was split into ``chunks`` chunks; one chunk is no split."""
        if chunks > 1:
            self.chunks_split.inc(chunks)

    def set_waiting(self, count: int, oldest_since: float | None) -> None:
        """Files waiting in the inboxes, and the clock reading when the oldest was first seen
        (the age is computed at scrape time, so it keeps growing if the loop stalls)."""
        self.files_waiting.set(count)
        self._waiting_since = oldest_since if count else None

    def set_ready_inputs(
        self,
        *,
        config_loaded: bool | None = None,
        state_writable: bool | None = None,
        watchers_alive: bool | None = None,
    ) -> None:
        """Update the readiness inputs given; the others keep their value (all start False)."""
        with self._lock:
            if config_loaded is not None:
                self._config_loaded = config_loaded
            if state_writable is not None:
                self._state_writable = state_writable
            if watchers_alive is not None:
                self._watchers_alive = watchers_alive

    def set_wrong_targets(self, problems: list[str]) -> None:
        """Import targets Marketo says are wrong (each naming its key): their files are held; not ready."""
        with self._lock:
            self._wrong_targets = list(problems)

    # ---- verdicts ------------------------------------------------------------

    def liveness(self) -> Check:
        age = self.clock() - self._last_tick
        ok = age <= self.live_within
        return Check("loop", ok, f"last tick {age:.1f} s ago (limit {self.live_within:g} s)")

    def readiness(self) -> list[Check]:
        """The loop, the configuration, the journal, the watchers, then each Marketo instance.

        Each instance has its own checks, so an operator sees which one is in
        trouble: ``marketo`` (answering, within ``marketo_grace``) and, while it
        refuses the integration, ``marketo_access``; for an instance other than
        the default they are ``marketo:NAME`` and ``marketo_access:NAME``. Any
        failing check makes the whole daemon not ready, one instance's too: it
        cannot do all the work it was configured for. ``marketo_quota`` (``:NAME``)
        appears while new imports wait for the daily quota's reset, and never
        fails: that pause leaves the reserve to the customer's other integrations.
        ``targets`` appears, failing, while Marketo says a route's import target is wrong.
        """
        now = self.clock()
        with self._lock:
            checks = [
                self.liveness(),
                Check("config", self._config_loaded, "loaded" if self._config_loaded else "not loaded yet"),
                Check("state", self._state_writable,
                      "state_dir writable" if self._state_writable else "state_dir not writable (or not checked yet)"),
                Check("watchers", self._watchers_alive,
                      "all alive" if self._watchers_alive else "an inbox watcher is dead (or not started yet)"),
            ]
            if self._wrong_targets:
                # Only while there are some, like marketo_access: their routes' files are held, not failed.
                checks.append(Check("targets", False, "; ".join(self._wrong_targets)))
            for view in self._views():
                checks += view._checks(now, self.marketo_grace)
        return checks

    def _views(self) -> list[InstanceMetrics]:
        """The default instance first, then by name; the caller holds the lock."""
        return sorted(self._instances.values(), key=lambda v: (v.name != DEFAULT_INSTANCE, v.name))

    def _poll_ages(self) -> list[tuple[str, float]]:
        with self._lock:
            polls = [(view.name, view._last_poll) for view in self._views()]
        return [(name, self._since(last)) for name, last in polls]

    def _since(self, then: float | None) -> float:
        return math.nan if then is None else max(0.0, self.clock() - then)

    def _oldest_waiting_age(self) -> float:
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, self.clock() - since)


def probe_writable(path: Path) -> bool:
    """Create, write and remove a file in ``path``: the honest answer to "can the journal be written?"."""
    probe = path / f".dropzone-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True

