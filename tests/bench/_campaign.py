"""Shared pieces of the crash and fault campaigns (``crash_campaign.py``, ``fault_campaign.py``).

Generates partner files of the three kinds with unique row keys, writes a daemon configuration
for an in-process simulator, starts ``python -m dropzone run`` as a subprocess, and checks the
outcome against the simulator's record: every row imported, exactly one final status per file,
duplicates only where a status file admits a resubmission.

Not a test module (pytest collects only ``test_*.py``); both campaign scripts import it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropzone.simulator import Simulator

CLIENT_ID = "campaign"
CLIENT_SECRET = "campaign-secret-never-logged"  # the simulator's, not a real secret
KINDS = ("leads", "customobject", "programmember")


@dataclass(frozen=True)
class DroppedFile:
    """One partner file: its name in the inbox, its bytes, and the row keys it carries."""

    name: str
    kind: str
    text: str
    keys: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.keys)


def make_file(rng: random.Random, tag: str, kind: str, min_rows: int = 20, max_rows: int = 150) -> DroppedFile:
    """A file of ``kind`` whose row keys all contain ``tag`` (so keys are unique across files).

    Leads: CSV with a quoted line break in every record; custom objects (car_c): TSV keyed by vin;
    program members: SSV keyed by email.
    """
    rows = rng.randint(min_rows, max_rows)
    if kind == "leads":
        keys = tuple(f"l{tag}r{i}@example.com" for i in range(rows))
        body = "".join(f'{k},"First\n{i}","Last, {i}"\n' for i, k in enumerate(keys))
        return DroppedFile(f"leads_{tag}.csv", kind, "email,firstName,lastName\n" + body, keys)
    if kind == "customobject":
        keys = tuple(f"VIN{tag}X{i}" for i in range(rows))
        body = "".join(f"c{i % 7}\tmake{i % 3}\tmodel\t{k}\n" for i, k in enumerate(keys))
        return DroppedFile(f"cars_{tag}.tsv", kind, "color\tmake\tmodel\tvin\n" + body, keys)
    if kind == "programmember":
        keys = tuple(f"m{tag}r{i}@example.com" for i in range(rows))
        body = "".join(f"{k};Name {i}\n" for i, k in enumerate(keys))
        return DroppedFile(f"members_{tag}.ssv", kind, "email;firstName\n" + body, keys)
    raise ValueError(f"unknown kind {kind!r}")


def make_batch(rng: random.Random, prefix: str, count: int) -> list[DroppedFile]:
    """``count`` files cycling through the three kinds, tagged ``<prefix>n<index>``."""
    return [make_file(rng, f"{prefix}n{n}", KINDS[n % 3]) for n in range(count)]


def write_config(
    work: Path,
    base_url: str,
    *,
    poll_interval: float = 0.3,
    max_retry_seconds: float = 30,
    split_max_bytes: int = 3000,
    scan_interval: float = 0.5,
    read_timeout: float = 10,
    log_level: str = "info",
    resubmit_hold: float = 2.0,
) -> Path:
    """The daemon's configuration: one inbox, the three routes, JSON log lines."""
    for name in ("inbox", "outbox", "archive", "staging"):
        (work / name).mkdir(parents=True, exist_ok=True)
    path = work / "dropzone.yaml"
    path.write_text(
        f"""
marketo:
  endpoint: {base_url}
  client_id: {CLIENT_ID}
  client_secret: ${{CAMPAIGN_SECRET}}
  poll_interval: {poll_interval}
  max_retry_seconds: {max_retry_seconds}
  read_timeout: {read_timeout}
  # The simulator's jobs take a second or two: a possibly-created copy is waited out that long.
  resubmit_hold: {resubmit_hold}
state_dir: state
split_max_bytes: {split_max_bytes}
log: {{format: json, level: {log_level}}}
inboxes:
  - path: inbox
    outbox: outbox
    archive: archive
    quiet_period: 0.1
    scan_interval: {scan_interval}
    routes:
      - match: "leads_*.csv"
        object: leads
      - match: "cars_*.tsv"
        object: customobject
        apiName: car_c
      - match: "*.ssv"
        object: programmember
        programId: 1044
        programMemberStatus: Registered
""",
        encoding="utf-8",
    )
    return path


def stage(work: Path, files: list[DroppedFile]) -> list[Path]:
    """Write files under ``staging/`` (to be renamed into the inbox atomically)."""
    paths = []
    for f in files:
        path = work / "staging" / f.name
        path.write_text(f.text, encoding="utf-8", newline="")
        paths.append(path)
    return paths


def drop(work: Path, staged: list[Path]) -> None:
    """Rename staged files into the inbox: each appears complete, at once."""
    for path in staged:
        path.rename(work / "inbox" / path.name)


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m dropzone run --config CONFIG``, stdout and stderr appended to ``log``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["CAMPAIGN_SECRET"] = CLIENT_SECRET
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dropzone", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def started_count(log: Path) -> int:
    """How many times a daemon logged ``daemon_started`` (its signal handlers are in place)."""
    return log.read_bytes().count(b'"daemon_started"') if log.exists() else 0


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until truthy; False at the deadline (the caller records the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def status_names(work: Path) -> set[str]:
    return {p.relative_to(work / "outbox").as_posix() for p in (work / "outbox").rglob("*.status.json")}


def stop_daemon(proc: subprocess.Popen[bytes], failures: list[str], timeout: float = 15.0) -> None:
    """SIGTERM; record a failure unless it exits 0 within ``timeout`` (then SIGKILL it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        failures.append(f"daemon did not exit within {timeout:.0f} s of SIGTERM")
        return
    if code != 0:
        failures.append(f"daemon exited {code} after SIGTERM (0 expected)")


def run_to_completion(
    work: Path, config: Path, log: Path, files: list[DroppedFile], timeout: float, failures: list[str]
) -> float:
    """Start the daemon, wait until every file has a status file (or the deadline), SIGTERM it.

    Returns the seconds it took from spawn until the last status appeared (or the deadline).
    """
    before = started_count(log)
    t0 = time.monotonic()
    proc = start_daemon(config, log)
    try:
        if not wait_for(lambda: started_count(log) > before or proc.poll() is not None, timeout=30):
            failures.append("daemon did not log daemon_started within 30 s")
        if proc.poll() is not None:
            failures.append(f"daemon exited {proc.returncode} on its own")
            return time.monotonic() - t0
        wanted = {f"{f.name}.status.json" for f in files}
        if not wait_for(lambda: wanted <= status_names(work), timeout=timeout, interval=0.2):
            missing = wanted - status_names(work)
            failures.append(f"{len(missing)} files without a status after {timeout:.0f} s, e.g. {sorted(missing)[:3]}")
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            stop_daemon(proc, failures)
    return elapsed


def log_events(log: Path) -> Iterator[dict[str, Any]]:
    """The daemon's JSON log lines (anything else, e.g. a traceback on stderr, is skipped)."""
    if not log.exists():
        return
    with log.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


@dataclass
class Verdict:
    """What the checks found; ``failures`` empty means every check passed."""

    files: int = 0
    rows: int = 0
    rows_lost: int = 0
    duplicate_rows: int = 0
    resubmitted_batches: int = 0
    resubmitted_rows: int = 0
    failures: list[str] = field(default_factory=list)


def row_key(entry: dict[str, Any]) -> str | None:
    row = entry["row"]
    return row.get("vin") if entry["kind"] == "customobject" else row.get("email")


def check(work: Path, sim: Simulator, files: list[DroppedFile], failures: list[str]) -> Verdict:
    """Compare outbox, inbox and archive with the dropped files, and the simulator's imported rows."""
    v = Verdict(files=len(files), rows=sum(f.rows for f in files), failures=failures)
    by_name = {f.name: f for f in files}

    # Exactly one final status per file, under its plain name (no stamped re-write), all Complete.
    found = status_names(work)
    wanted = {f"{name}.status.json" for name in by_name}
    extra = sorted(found - wanted)
    if extra:
        failures.append(f"{len(extra)} unexpected status files (a file reported twice?), e.g. {extra[:3]}")
    for name in sorted(wanted & found):
        f = by_name[name.removesuffix(".status.json")]
        doc = json.loads((work / "outbox" / name).read_text(encoding="utf-8"))
        if doc.get("status") != "Complete":
            failures.append(f"{f.name}: status {doc.get('status')!r}, error {doc.get('error')!r}")
        elif not doc.get("rowsTotal") == doc.get("rowsProcessed") == f.rows:
            failures.append(
                f"{f.name}: rowsTotal {doc.get('rowsTotal')}, rowsProcessed {doc.get('rowsProcessed')},"
                f" expected {f.rows}"
            )
        for batch in doc.get("batches", []):
            again = int(batch.get("resubmitted", 0) or 0)
            if again:
                v.resubmitted_batches += 1
                v.resubmitted_rows += int(batch.get("rows", 0)) * again
    other_outputs = sorted(
        p.name for p in (work / "outbox").rglob("*") if p.is_file() and not p.name.endswith(".status.json")
    )
    if other_outputs:
        failures.append(f"unexpected failures/warnings files: {other_outputs[:3]}")

    # Nothing left in the inbox; every original archived once, byte for byte.
    leftovers = sorted(str(p.relative_to(work / "inbox")) for p in (work / "inbox").rglob("*") if p.is_file())
    if leftovers:
        failures.append(f"{len(leftovers)} files left in the inbox, e.g. {leftovers[:3]}")
    archived = Counter(p.name for p in (work / "archive").rglob("*") if p.is_file())
    if set(archived) != set(by_name) or any(n > 1 for n in archived.values()):
        odd = sorted(set(archived) ^ set(by_name)) + sorted(n for n, c in archived.items() if c > 1)
        failures.append(f"archive differs from the dropped files: {odd[:5]}")
    else:
        for p in (work / "archive").rglob("*"):
            if p.is_file() and p.read_text(encoding="utf-8") != by_name[p.name].text:
                failures.append(f"archived {p.name} differs from what was dropped")

    # Every row reached the simulator; duplicates only as many as admitted resubmissions.
    imported = Counter(row_key(r) for r in sim.imported_rows())
    keys = [k for f in files for k in f.keys]
    keyset = set(keys)
    v.rows_lost = sum(1 for k in keys if imported[k] == 0)
    v.duplicate_rows = sum(imported[k] - 1 for k in keys if imported[k] > 1)
    strangers = sum(c for k, c in imported.items() if k not in keyset)
    if v.rows_lost:
        failures.append(f"{v.rows_lost} rows never reached Marketo")
    if v.duplicate_rows > v.resubmitted_rows:
        failures.append(
            f"{v.duplicate_rows} duplicate rows but only {v.resubmitted_rows} rows in batches marked resubmitted"
        )
    if strangers:
        failures.append(f"{strangers} imported rows that no dropped file contains")
    return v
