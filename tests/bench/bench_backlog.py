"""Benchmark: what a backlog of many small files costs the loop, and how fast one file is noticed.

A script, not a test; each mode runs a real ``python -m dropzone run`` against the bundled
simulator (instant jobs, a rate limit Marketo-side high enough that the daemon's own budget,
100 calls / 20 s here, is what limits the sending):

    python tests/bench/bench_backlog.py backlog   [--files 10000] [--statuses 100] [--profile OUT]
    python tests/bench/bench_backlog.py uploading [--files 10000] [--window 10] [--profile OUT]
    python tests/bench/bench_backlog.py inflight  [--files 10000] [--window 10] [--profile OUT]
    python tests/bench/bench_backlog.py latency   [--files 20] [--quiet 1]

* ``backlog``: ``--files`` one-row files renamed into one inbox at once. Prints the seconds until
  every file is claimed (journalled and out of the inbox), until the first ``--statuses`` and the
  last have a status file, the API calls per file (small files share imports: coalescing), the
  daemon's CPU seconds and peak RSS, and its CPU use over ``--window`` seconds once the first
  statuses are in (still working through the backlog: ``inflight`` has the cost of idle passes).
* ``uploading``: ``--files`` files whose route waits for a marker that never comes: tracked,
  never ready. Prints the daemon's CPU use over ``--window`` seconds once they are all tracked,
  and the time per pass it implies (the loop sleeps ``max_idle``, 1 s, between passes).
* ``inflight``: ``--files`` one-row files while Marketo's jobs outlast the run: ten imports open,
  every other file split and pending. Prints the daemon's CPU use over ``--window`` seconds once
  all are split, and the time per pass it implies: what a pass with nothing new costs the
  dispatch stage with every file in flight.
* ``latency``: ``--files`` files, one at a time, written and closed outside the inbox, then
  renamed in; the time from the rename to the simulator's submission (its wall clock).
  Goal (issue 12): at most quiet period + 0.5 s.

Goals (issue 12): claim 10,000 ready files in under 10 s; a pass with nothing new O(1) in the
files tracked or in flight; peak RSS under 150 MB.

``--profile OUT`` runs the daemon under cProfile and writes its stats to OUT (read them with
``python -m pstats OUT``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dropzone.simulator import SimConfig, Simulator

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def visible_entries(folder: Path) -> int:
    with os.scandir(folder) as it:
        return sum(1 for e in it if not e.name.startswith("."))


def claimed_in_journal(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(con.execute("SELECT COUNT(*) FROM files WHERE state != 'claiming'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def write_config(work: Path, sim: Simulator, *, quiet: float, scan_interval: float, marker: bool) -> Path:
    config = work / "dropzone.yaml"
    config.write_text(
        f"""
marketo:
  endpoint: {sim.base_url}
  client_id: bench
  client_secret: bench-secret
  poll_interval: 5
  calls_per_20s: 100
  max_open_imports: 10
state_dir: state
log: {{format: json, level: info}}
inboxes:
  - path: inbox
    outbox: outbox
    quiet_period: {quiet}
    scan_interval: {scan_interval}
    routes:
      - match: "*.csv"
        object: leads
{"        marker: true" if marker else ""}
"""
    )
    return config


@contextmanager
def daemon(work: Path, config: Path, profile: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    """A started ``dropzone run``; SIGTERMed (and its profile written) on the way out."""
    log_path = work / "daemon.log"
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "dropzone", "run", "--config", str(config)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"daemon_started" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not start; see {log_path}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def simulator(*, instant: bool = True, job_seconds: float = 1.0) -> Simulator:
    return Simulator(
        SimConfig(client_id="bench", client_secret="bench-secret", instant=instant, rate_limit=100_000,
                  queued_seconds=0.0, import_seconds_per_job=job_seconds)
    )


def in_state(db: Path, state: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(con.execute("SELECT COUNT(*) FROM files WHERE state=?", (state,)).fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def stage(work: Path, count: int) -> list[Path]:
    staging = work / "staging"
    staging.mkdir(exist_ok=True)
    staged = []
    for i in range(count):
        path = staging / f"one_{i:05d}.csv"
        path.write_text(f"email,firstName\nr{i}@example.com,N{i}\n")
        staged.append(path)
    return staged


def idle_cpu(pid: int, window: float) -> tuple[float, float]:
    """CPU seconds per wall second over ``window``, and the pass time it implies (1 s sleeps between)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    rate = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    # Each pass costs p seconds and is followed by a 1 s sleep: rate = p / (1 + p).
    return rate, rate / (1 - rate) if rate < 1 else float("inf")


def statuses_in(outbox: Path) -> list[float]:
    """The modification times of the status files written so far (wall clock)."""
    if not outbox.exists():
        return []
    with os.scandir(outbox) as it:
        return [e.stat().st_mtime for e in it if e.name.endswith(".status.json")]


def run_backlog(args: argparse.Namespace, work: Path) -> None:
    staged = stage(work, args.files)
    with simulator() as sim:
        config = write_config(work, sim, quiet=0.5, scan_interval=30, marker=False)
        with daemon(work, config, args.profile) as proc:
            inbox, outbox, db = work / "inbox", work / "outbox", work / "state" / "journal.sqlite3"
            cpu0 = cpu_seconds(proc.pid)
            t0, wall0 = time.monotonic(), time.time()
            for path in staged:
                path.rename(inbox / path.name)
            renamed = time.monotonic() - t0
            claimed_at = first_k_at = last_at = None
            rate, in_flight = None, False
            while time.monotonic() - t0 < args.timeout:
                now = time.monotonic() - t0
                if claimed_at is None and visible_entries(inbox) == 0 and claimed_in_journal(db) >= args.files:
                    claimed_at = now
                    claim_cpu = cpu_seconds(proc.pid) - cpu0
                    print(f"claimed all {args.files}: {claimed_at:.1f} s (daemon CPU {claim_cpu:.1f} s)", flush=True)
                written = statuses_in(outbox)
                if first_k_at is None and len(written) >= min(args.statuses, args.files):
                    first_k_at = now
                    print(f"first {args.statuses} statuses: {first_k_at:.1f} s", flush=True)
                if len(written) >= args.files:
                    last_at = max(written) - wall0
                    print(f"last status: {last_at:.1f} s", flush=True)
                    break
                if claimed_at is not None and first_k_at is not None and rate is None:
                    # Every file in flight, the loop waiting on Marketo and the API budget most of the time.
                    in_flight = True
                    rate, _ = idle_cpu(proc.pid, args.window)
                    continue
                time.sleep(0.1)
            if rate is None:
                rate, _ = idle_cpu(proc.pid, args.window)
            total = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            rss = peak_rss_mb(proc.pid)
            done = len(statuses_in(outbox))
            claimed = claimed_in_journal(db)
        submitted = len(sim.submissions())
        api_calls = sum(1 for c in sim.calls() if not c["path"].startswith("/identity"))
    print(f"files: {args.files} one-row files (renamed in within {renamed:.1f} s)")
    print(f"seconds to claim all: {_seconds(claimed_at)}   goal < 10")
    print(f"seconds to the first {args.statuses} statuses: {_seconds(first_k_at)}")
    print(f"seconds to the last status: {_seconds(last_at)}")
    print(f"after {total:.0f} s: {claimed} claimed, {done} statuses, {submitted} imports")
    print(f"API calls per file: {api_calls / args.files:.3f} ({api_calls} calls, identity not counted)")
    when = "with files in flight" if in_flight else "after the last status"
    print(f"daemon CPU: {cpu:.1f} s over {total:.0f} s; {when}: {rate:.2f} CPU s per s")
    print(f"daemon peak RSS: {rss:.0f} MB   goal < 150")


def _seconds(value: float | None) -> str:
    return "not within the run" if value is None else f"{value:.1f}"


def run_uploading(args: argparse.Namespace, work: Path) -> None:
    staged = stage(work, args.files)
    with simulator() as sim:
        config = write_config(work, sim, quiet=0.5, scan_interval=30, marker=True)
        with daemon(work, config, args.profile) as proc:
            base_rate, base_pass = idle_cpu(proc.pid, args.window)
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            for path in staged:
                path.rename(work / "inbox" / path.name)
            # Every name tracked: watchdog's events have been taken, a quiet period has passed.
            time.sleep(max(5.0, args.files / 2000))
            settle = time.monotonic() - t0
            settle_cpu = cpu_seconds(proc.pid) - cpu0
            rate, per_pass = idle_cpu(proc.pid, args.window)
            rss = peak_rss_mb(proc.pid)
    print(f"files: {args.files} tracked, waiting for markers that never come")
    print(f"empty inbox: {base_rate:.3f} CPU s per s (a pass: {base_pass * 1000:.1f} ms)")
    print(f"first {settle:.0f} s after the drop: {settle_cpu:.1f} CPU s")
    print(f"with {args.files} tracked: {rate:.3f} CPU s per s (a pass: {per_pass * 1000:.1f} ms)")
    print(f"daemon peak RSS: {rss:.0f} MB")


def run_inflight(args: argparse.Namespace, work: Path) -> None:
    staged = stage(work, args.files)
    # Jobs that outlast the run: the ten queue slots stay taken, every other file waits, split and pending.
    with simulator(instant=False, job_seconds=3600.0) as sim:
        config = write_config(work, sim, quiet=0.5, scan_interval=30, marker=False)
        with daemon(work, config, args.profile) as proc:
            base_rate, base_pass = idle_cpu(proc.pid, args.window)
            db = work / "state" / "journal.sqlite3"
            t0 = time.monotonic()
            for path in staged:
                path.rename(work / "inbox" / path.name)
            while in_state(db, "split") < args.files:
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"only {in_state(db, 'split')} of {args.files} split within {args.timeout} s")
                time.sleep(0.2)
            split_at = time.monotonic() - t0
            rate, per_pass = idle_cpu(proc.pid, args.window)
            rss = peak_rss_mb(proc.pid)
        imports = len(sim.submissions())
    print(f"files: {args.files}, all split {split_at:.0f} s after the drop; {imports} imports open, the rest pending")
    print(f"nothing in flight: {base_rate:.3f} CPU s per s (a pass: {base_pass * 1000:.1f} ms)")
    print(f"with {args.files} in flight: {rate:.3f} CPU s per s (a pass: {per_pass * 1000:.1f} ms)")
    print(f"daemon peak RSS: {rss:.0f} MB   goal < 150")


def run_latency(args: argparse.Namespace, work: Path) -> None:
    staging = work / "staging"
    staging.mkdir()
    with simulator() as sim:
        config = write_config(work, sim, quiet=args.quiet, scan_interval=30, marker=False)
        with daemon(work, config, args.profile):
            latencies = []
            for i in range(args.files):
                path = staging / f"late_{i:03d}.csv"
                with open(path, "w") as f:
                    f.write(f"email,firstName\nl{i}@example.com,N{i}\n")
                before = len(sim.submissions())
                renamed_at = time.time()
                path.rename(work / "inbox" / path.name)
                deadline = time.monotonic() + 30
                while len(sim.submissions()) <= before:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{path.name} was not submitted within 30 s")
                    time.sleep(0.005)
                latencies.append(sim.submissions()[before]["submitted_at"] - renamed_at)
                time.sleep(0.3 + (i % 7) / 10)  # drops at varied phases of the loop's timers
    goal = args.quiet + 0.5
    print(f"files: {args.files}, quiet_period {args.quiet} s, one at a time")
    print(
        f"rename to submission: median {statistics.median(latencies):.2f} s, worst {max(latencies):.2f} s"
        f"   goal <= {goal:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", choices=("backlog", "uploading", "inflight", "latency"))
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--statuses", type=int, default=100, help="backlog: time the first this many statuses")
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which idle CPU is measured")
    parser.add_argument("--quiet", type=float, default=1.0, help="latency: the inbox's quiet period")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.files is None:
        args.files = 20 if args.mode == "latency" else 10_000
    if args.profile is not None:
        args.profile = args.profile.resolve()
    work = Path(tempfile.mkdtemp(prefix="dropzone-backlog-", dir=args.dir))
    for name in ("inbox", "outbox"):
        (work / name).mkdir()
    try:
        modes = {"backlog": run_backlog, "uploading": run_uploading, "inflight": run_inflight, "latency": run_latency}
        modes[args.mode](args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
