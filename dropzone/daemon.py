"""The composition root: wires the four stages into one loop.

A file's path, one stage after the other, each with ``run_once(now)`` over
the journal:

1. ``intake`` (one per inbox): scan, readiness, claim;
2. ``prepare``: route once, check the header (against Marketo's describe: ``gate``), split;
3. ``dispatch`` (one per Marketo instance): submit within its queue, poll, fetch result files;
4. ``report``: status, failures and warnings files, archive.

This module owns only the loop, signals' effects (stop, reload), the
heartbeat and start-up recovery. One thread owns the journal; Marketo calls
run on each instance's own threads and hand their results back to it, and
watchdog threads only put hints on a queue. Every state is saved in
the journal before the action it enables, so a SIGKILL at any point loses
nothing.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from dropzone import __version__, health, notify
from dropzone import defaults as D
from dropzone import intake as intake_module
from dropzone.config import Config, Inbox, MarketoSettings
from dropzone.dispatch import Dispatch
from dropzone.errors import DropzoneError, Interrupted, StoreError, WouldWaitError
from dropzone.gate import Preflight
from dropzone.intake import Intake
from dropzone.jobs import ChunkState, FileState
from dropzone.marketo import MarketoClient
from dropzone.owners import assign_owners
from dropzone.pgp import Keyring
from dropzone.preflight import reloadable
from dropzone.prepare import Prepare
from dropzone.report import Report
from dropzone.store import Store
from dropzone.targetwatch import TargetWatch
from dropzone.unpacker import Unpacker

log = structlog.get_logger("dropzone.daemon")

#: Files in these states are on their way: the daemon is not idle.
IN_FLIGHT = (FileState.CLAIMING, FileState.CLAIMED, FileState.SPLIT, FileState.UNPACKED, FileState.FINISHING)


class Daemon:
    """dropzone's main loop.

    Args:
        config: the parsed configuration.
        stop: set it to stop the loop (signal handlers do).
        clock: monotonic seconds.
        reload_config: reads the configuration again (SIGHUP).
        max_idle: longest sleep when nothing is due.
    """

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_config: Callable[[], Config] | None = None,
        max_idle: float = D.MAX_IDLE_S,
    ) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        #: Set by SIGHUP; the loop reloads the configuration with ``reload_config``.
        self.reload_requested = threading.Event()
        self._reload_config = reload_config
        self.clock = clock
        self.max_idle = max_idle
        self.hints: queue.Queue[tuple[Path, str]] = queue.Queue()
        self.metrics = health.Metrics(clock=clock)
        self.watchdog = notify.Watchdog.from_env()
        self.store = Store(config.state_dir)
        Keyring.sweep(config.state_dir / D.PGP_DIRNAME)  # keyrings a crash left, agents included
        try:
            keyring = self._keyring(config)
        except BaseException:
            self.store.close()
            raise
        #: The real path of each configured inbox, outbox and archive, taken at start and on
        #: reload: a path that later leads elsewhere (a symlink swapped in) is refused.
        self.pins: dict[Path, str] = {}
        self.intakes: dict[Path, Intake] = {i.path: self._intake(i) for i in config.inboxes}
        #: Inboxes removed by a reload: their files in flight still finish and report there.
        self._retired: dict[Path, Intake] = {}
        #: Each route's import target checked against its instance (start-up, reload, hourly); wrong ones held.
        self.targets = TargetWatch(self._stage_of, self.metrics, wake=self._wake)
        self.prepare = Prepare(
            self.store, self.inbox_of, config.state_dir, config.split_max_bytes, self.metrics, self._heartbeat,
            pins=self.pins, preflight=Preflight(self._stage_of, self.targets, wake=self._wake),
            unpacker=Unpacker(config.unpack, keyring),
        )
        #: One dispatch stage per Marketo instance, by name; a reload adds, rebuilds and drains them.
        self.dispatches: dict[str, Dispatch] = {
            name: self._dispatch(settings) for name, settings in config.all_instances().items()
        }
        #: Stages of instances a reload removed or moved: they finish what they sent, then retire.
        self.draining: list[Dispatch] = []
        self._owners_unsettled = False
        self.report = Report(
            self.store, self.inbox_of, config.state_dir, self.metrics, self._heartbeat, pins=self.pins
        )
        self.last_tick = clock()
        self._gauges_at = 0.0
        self._queued: dict[str, int] = {}  # chunks waiting to be sent, by instance, as of ``_gauges_at``

    @property
    def dispatch(self) -> Dispatch:
        """The default instance's stage."""
        return self.dispatches[D.DEFAULT_INSTANCE]

    @property
    def client(self) -> MarketoClient:
        return self.dispatch.client

    def _client(self, settings: MarketoSettings) -> MarketoClient:
        return MarketoClient(
            settings,
            sleep=self._no_waiting,
            on_call=self.metrics.instance(settings.name).on_call,
            # On the instance's threads: Interrupted once a shutdown is asked for, and never a
            # heartbeat, which only the loop's own passes may give (a stuck loop must look stuck).
            tick=self._stop_check,
        )

    def _dispatch(self, settings: MarketoSettings) -> Dispatch:
        # Calls run on the instance's own threads: a slow upload or a sick instance never holds the loop.
        # The client's semaphore keeps them within max_concurrent_calls.
        calls = ThreadPoolExecutor(D.MARKETO_MAX_CONCURRENT_CALLS, thread_name_prefix=f"dropzone-{settings.name}")
        return Dispatch(
            self.store, self._client(settings), settings, self.metrics.instance(settings.name), self._heartbeat,
            calls=calls, wake=self._wake, split_max_bytes=self.config.split_max_bytes,
        )

    def _stage_of(self, name: str) -> Dispatch | None:
        """An instance's stage (its client and threads), for the pre-flight's calls."""
        return self.dispatches.get(name)

    def _wake(self) -> None:
        """A call finished (on its thread): end the loop's idle wait. A hint no inbox takes."""
        self.hints.put((Path(), ""))

    @staticmethod
    def _keyring(config: Config) -> Keyring | None:
        """A private keyring built from ``pgp.private_key_file`` (at start and on every reload), or None."""
        if config.pgp is None:
            return None
        return Keyring.build(config.pgp, config.state_dir / D.PGP_DIRNAME, source=config.source)

    def _intake(self, inbox: Inbox) -> Intake:
        return Intake(inbox, self.store, self.hints, heartbeat=self._heartbeat, pins=self.pins)

    def inbox_of(self, path: Path) -> Inbox | None:
        intake = self.intakes.get(path) or self._retired.get(path)
        return intake.inbox if intake else None

    # ---- lifecycle --------------------------------------------------------

    def _heartbeat(self) -> None:
        """The loop is alive: for /livez and systemd's watchdog (waits between retries count too)."""
        self.last_tick = self.clock()
        self.metrics.tick()
        self.watchdog.maybe_ping(self.last_tick)

    def _sleep(self, seconds: float) -> None:
        end = self.clock() + seconds
        while True:
            self._heartbeat()
            if self.stop.is_set():
                raise Interrupted
            left = end - self.clock()
            if left <= 0:
                return
            if self.stop.wait(min(left, 5.0)):
                raise Interrupted

    def _no_waiting(self, seconds: float) -> None:
        """The clients' sleep: a wait belongs to its instance (``WouldWaitError``: the stage pauses it), never
        to the loop that also serves the other instances, the inboxes and the outboxes."""
        if seconds > 0:
            raise WouldWaitError(seconds)
        self._stop_check()

    def _stop_check(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    def close(self) -> None:
        self.stop.set()  # calls still running end at their next tick (Interrupted); the journal has them
        for intake in self.intakes.values():
            intake.stop()
        for stage in self._stages():
            stage.close(self.clock())  # answers already in are recorded first
        if self.prepare.unpacker.keyring is not None:
            self.prepare.unpacker.keyring.close()
            self.prepare.unpacker.keyring = None
        self.store.close()

    def start(self) -> None:
        """Recover from the journal, start the watchers; the first pass scans every inbox."""
        self.recover()
        for intake in self.intakes.values():
            intake.prepare_folders()
            intake.start()
        self._pin_folders()
        self.targets.configure(self.config, self.clock())
        self._update_readiness()
        self.metrics.set_ready_inputs(config_loaded=True)
        log.info(
            "daemon_started", inboxes=len(self.intakes), instances=sorted(self.dispatches), version=__version__
        )
        notify.ready()
        notify.status(f"watching {len(self.intakes)} inbox(es)")

    def _pin_folders(self) -> None:
        self.pins.clear()
        self.pins.update(intake_module.pins_of(i.inbox for i in self.intakes.values()))

    def recover(self) -> None:
        """Put what a crash interrupted back on its way: claims first, then chunks, each on its instance."""
        intake_module.recover_claims(self.store)
        assign_owners(self.store, self.config.all_instances())  # at start a journal error is fatal, and said
        for dispatch in self.dispatches.values():
            dispatch.recover(self.clock())

    def _update_readiness(self) -> None:
        self.metrics.set_ready_inputs(
            state_writable=health.probe_writable(self.config.state_dir),
            watchers_alive=all(i.watcher.is_alive() for i in self.intakes.values()),
        )

    def run(self) -> None:
        """Run until ``stop`` is set."""
        self.start()
        try:
            failures = 0
            while not self.stop.is_set():
                if self.reload_requested.is_set():
                    try:
                        self.reload()
                    except Exception:
                        # What was applied stays applied; what was not is retried (owners) or told.
                        log.exception("reload_failed")
                try:
                    busy = self.run_once()
                    failures = 0
                except Interrupted:
                    break
                except Exception:
                    failures += 1
                    log.exception("loop_error", consecutive=failures)
                    if self.stop.wait(min(60.0, 2.0**failures)):
                        break
                    continue
                if not busy:
                    self.idle()
        finally:
            notify.stopping()
            log.info("daemon_stopping")
            self.close()

    def idle(self) -> None:
        """Wait until a hint arrives, a poll is due, a file's quiet period ends, or ``max_idle`` has passed."""
        self._heartbeat()
        wait = self.max_idle
        # A file's quiet period ending is a deadline like a poll's: waking then, not at the next
        # ``max_idle`` tick, is what keeps detection within the quiet period.
        due = [d.next_due() for d in self._stages()] + [i.next_due() for i in self.intakes.values()]
        soonest = min((t for t in due if t is not None), default=None)
        if soonest is not None:
            wait = min(wait, max(0.0, soonest - self.clock()))
        try:
            hint = self.hints.get(timeout=max(wait, 0.001))
        except queue.Empty:
            return
        self.hints.put(hint)

    # ---- one pass ---------------------------------------------------------

    def is_idle(self) -> bool:
        """Nothing waiting to become ready, nothing in flight."""
        now = self.clock()
        return not any(i.waiting(now)[0] for i in self.intakes.values()) and not self.store.has_files(IN_FLIGHT)

    def rescan_now(self) -> None:
        for intake in self.intakes.values():
            intake.rescan_now()

    def run_once(self) -> bool:
        """One pass of every stage; True when something was done."""
        self._heartbeat()
        self._route_hints()
        now = self.clock()
        busy = False
        if any(now >= intake.next_scan for intake in self.intakes.values()):
            self._update_readiness()  # once per scan round, not once per inbox: it writes a probe file
        for intake in list(self.intakes.values()):
            busy |= intake.run_once(now)
        busy |= self.prepare.run_once(self.clock())
        if self._owners_unsettled:
            self._settle_owners()
        for stage in self._stages():
            busy |= stage.run_once(self.clock())
        self._retire_drained(self.clock())
        busy |= self.report.run_once(self.clock())
        self._update_gauges()
        return busy

    def _route_hints(self) -> None:
        while True:
            try:
                inbox_path, rel = self.hints.get_nowait()
            except queue.Empty:
                return
            intake = self.intakes.get(inbox_path)
            if intake is not None:
                intake.hint(rel)

    def _update_gauges(self) -> None:
        now = self.clock()
        counts = [i.waiting(now) for i in self.intakes.values()]
        self.metrics.set_waiting(sum(n for n, _ in counts), min((t for _, t in counts if t is not None), default=None))
        if now >= self._gauges_at:  # counting queued chunks is O(backlog); open batches are at hand
            self._gauges_at = now + D.GAUGES_EVERY_S
            states = [ChunkState.PENDING, ChunkState.SUBMITTING]
            self._queued = {name: self.store.count_chunks(states, instance=name) for name in self.dispatches}
        for name, dispatch in self.dispatches.items():
            dispatch.metrics.set_batches(open=dispatch.open_batches(), queued=self._queued.get(name, 0))

    # ---- instances --------------------------------------------------------

    def _stages(self) -> list[Dispatch]:
        return [*self.dispatches.values(), *self.draining]

    def _reload_instances(self, wanted: dict[str, MarketoSettings]) -> list[str]:
        """Add, rebuild and drain dispatch stages to match ``wanted``; what changed, for the log.

        An instance removed, or pointed at another endpoint, keeps its stage
        running, sending nothing, until what it sent is finished or
        ``DRAIN_DEADLINE_S`` has passed (``_retire_drained``): its calls'
        answers are never thrown away. A renamed instance's unsent chunks
        follow its endpoint to the new name.
        """
        changes: list[str] = []
        now = self.clock()
        for name, stage in list(self.dispatches.items()):
            new = wanted.get(name)
            if new is None or new.subscription != stage.settings.subscription:
                self.dispatches.pop(name)
                stage.draining, stage.drain_until = True, now + D.DRAIN_DEADLINE_S
                self.draining.append(stage)
                changes.append(f"instance {'removed' if new is None else 'moved'}: {name} (finishing what it sent)")
        for name, settings in wanted.items():
            current = self.dispatches.get(name)
            if current is None:
                # Removed and added back with its endpoint: the stage still finishing its batches resumes.
                revived = next((d for d in self.draining if d.name == name and d.settings.subscription ==
                                settings.subscription), None)
                if revived is not None:
                    self.draining.remove(revived)
                    revived.draining = False
                    current = self.dispatches[name] = revived
                else:
                    self.dispatches[name] = self._dispatch(settings)
                    changes.append(f"instance added: {name}")
                    continue
            if current.settings != settings:
                current.replace_client(self._client(settings), settings)
                changes.append(f"instance changed: {name}")
        self._settle_owners(wanted)
        return changes

    def _settle_owners(self, instances: dict[str, MarketoSettings] | None = None) -> None:
        """``owners.assign_owners``; a journal error leaves it for the next pass (``_owners_unsettled``)."""
        instances = instances or self.config.all_instances()
        busy = set().union(*(d.running() for d in self._stages()))
        try:
            assign_owners(self.store, instances, draining=self._gone_endpoints(instances), busy=busy)
            self._owners_unsettled = False
        except (sqlite3.Error, StoreError) as exc:
            self._owners_unsettled = True
            log.error("journal_write_failed_will_retry", error=str(exc))

    def _gone_endpoints(self, instances: dict[str, MarketoSettings]) -> list[str]:
        """Endpoints only a draining stage still serves (a renamed instance's is served under its new name)."""
        configured = {s.subscription for s in instances.values()}
        return [d.settings.subscription for d in self.draining if d.settings.subscription not in configured]

    def _retire_drained(self, now: float) -> None:
        gone = self._gone_endpoints(self.config.all_instances())
        for stage in list(self.draining):
            if stage.running():
                continue  # its answers are collected first, whatever the deadline
            if stage.settings.subscription in gone and stage.has_open() and now < stage.drain_until:
                continue
            self.draining.remove(stage)
            stage.close(now)
            if stage.name not in self.dispatches:
                self.metrics.forget_instance(stage.name)
            # What it could not finish, and what a call put back meanwhile, now fails with the reason.
            self._settle_owners()
            log.info("instance_retired", instance=stage.name, unfinished=stage.has_open())

    # ---- reload -----------------------------------------------------------

    def reload(self) -> None:
        """Swap in a new configuration (SIGHUP); on any error keep the old one.

        A changed inbox gets a new ``Intake`` built from its new configuration
        (its candidates start a new quiet period). Files in flight keep the
        import target they were split with (it is in the journal); inboxes
        removed from the configuration still get their results.
        ``state_dir`` cannot change without a restart.
        """
        self.reload_requested.clear()
        notify.reloading()
        try:
            new = reloadable(self._reload_config, self.config)
            keyring = self._keyring(new)  # the key file is read again: a new key takes effect here
        except DropzoneError as exc:
            log.error("reload_refused_keeping_old_config", error=str(exc))
            notify.ready()
            return
        changes: list[str] = []
        old_keyring, self.prepare.unpacker.keyring = self.prepare.unpacker.keyring, keyring
        if old_keyring is not None:
            old_keyring.close()
        if (old_keyring, keyring) != (None, None):
            changes.append("pgp key imported" if keyring else "pgp removed")
        wanted = {i.path: i for i in new.inboxes}
        for path in [p for p in self.intakes if p not in wanted]:
            retired = self._retired[path] = self.intakes.pop(path)
            retired.stop()
            changes.append(f"inbox removed: {path}")
        for path, inbox in wanted.items():
            current = self.intakes.get(path)
            if current is not None and current.inbox == inbox:
                current.rescan_now()
                continue
            if current is not None:
                current.stop()
            self.intakes[path] = self._intake(inbox)
            self.intakes[path].prepare_folders()
            self.intakes[path].start()
            self._retired.pop(path, None)
            changes.append(f"inbox {'changed' if current else 'added'}: {path}")
        changes += self._reload_instances(new.all_instances())
        if new.split_max_bytes != self.config.split_max_bytes:
            self.prepare.split_max_bytes = new.split_max_bytes
            for dispatch in self.dispatches.values():
                dispatch.split_max_bytes = new.split_max_bytes  # merged imports stay within the new limit
            changes.append("split_max_bytes changed")
        if new.unpack != self.config.unpack:
            self.prepare.unpacker.limits = new.unpack
            changes.append("unpacking bounds changed")
        for name in ("http", "log"):
            if getattr(new, name) != getattr(self.config, name):
                changes.append(f"{name} changed (applies after a restart)")
        self.config = new
        self._pin_folders()  # an operator who moved a folder reloads to say so
        self.targets.configure(new, self.clock())  # a fixed target releases its files once Marketo agrees
        log.info("config_reloaded", changes=changes or ["nothing"])
        notify.ready()


__all__ = ["Daemon", "Interrupted"]
