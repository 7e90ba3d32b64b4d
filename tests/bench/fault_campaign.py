"""Fault campaign: the daemon against the simulator's fault knobs, no kills; everything must complete.

Two runs, each with its own simulator and folders:

* ``faults``: seeded random faults on API calls (606, 615, 604, 608, HTTP 500/502/503, a reset after
  processing (the reply is lost), a reset before processing, slow answers, some slower than the
  daemon's read timeout), other integrations' jobs filling Marketo's queue in bursts (1016 for us),
  and access tokens living a few seconds;
* ``zero_expires_in``: Identity hands a live token back with ``expires_in: 0`` (it dies a second
  later), tokens living a few seconds.

The files are dropped at once, then a daemon starts and runs until every file has a status
file, then gets SIGTERM (exit 0 expected). Same checks as the crash campaign (no row lost, one
``Complete`` status per file, duplicates no more than the rows of batches marked ``resubmitted``),
then per run: API calls per file, calls by answer (from ``Simulator.calls()``), and time lost
waiting (from the daemon's JSON log: ``marketo_retry.delay``, ``marketo_pause.seconds``,
``token_expiring_waiting.seconds``).

    python tests/bench/fault_campaign.py [--files 100] [--zero-files 25] [--seed 1] [--token-ttl 4]
                                         [--fault-rate KIND=P ...] [--keep]

Exits non-zero when a check fails (the work folder is then kept and printed).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dropzone.simulator import SimConfig, Simulator
from tests.bench._campaign import (
    CLIENT_ID,
    CLIENT_SECRET,
    check,
    drop,
    log_events,
    make_batch,
    run_to_completion,
    stage,
    write_config,
)

# Per API call; one draw each (seeded). About one call in six gets a fault.
DEFAULT_FAULT_RATES: dict[str, float] = {
    "606": 0.01,
    "615": 0.02,
    "604": 0.02,
    "608": 0.02,
    "http500": 0.01,
    "http502": 0.01,
    "http503": 0.01,
    "reset": 0.02,
    "reset_before": 0.02,
    "slow:1.5": 0.02,
    "slow:6": 0.005,  # beyond the daemon's 5 s read timeout
}
READ_TIMEOUT_S = 5.0


class QueueFiller:
    """Other integrations: every few seconds, a burst of background jobs into Marketo's queue."""

    def __init__(self, sim: Simulator, rng: random.Random, *, burst: int, every: float, job_seconds: float) -> None:
        self.sim, self.rng, self.burst, self.every, self.job_seconds = sim, rng, burst, every, job_seconds
        self.added = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaign-queue-filler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # A full burst at once, so the daemon's first submissions meet a full queue; then random ones.
        self.added += len(self.sim.add_background_jobs(self.burst, seconds=self.job_seconds))
        while not self._stop.wait(self.rng.uniform(0.5 * self.every, 1.5 * self.every)):
            n = self.rng.randint(max(1, self.burst // 2), self.burst)
            self.added += len(self.sim.add_background_jobs(n, seconds=self.job_seconds))


def answer_label(call: Mapping[str, Any]) -> str:
    """A call's answer as the campaign reports it: ok, a Marketo code, HTTP n, or a reset."""
    code = call.get("code")
    if code is None:
        return "reset_before (no answer)"
    if not call.get("delivered", True):
        return "reset (answer lost)"
    if isinstance(code, int):
        return "ok" if code == 200 else f"HTTP {code}"
    return str(code)


def run_phase(
    name: str,
    work: Path,
    sim_config: SimConfig,
    *,
    files_count: int,
    seed: int,
    drain_timeout: float | None,
    filler: dict[str, float] | None,
) -> dict[str, Any]:
    """One daemon run against one simulator: drop ``files_count`` files, run to completion, check."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "daemon.log"
    failures: list[str] = []
    files = make_batch(rng, name[:1], files_count)
    t0 = time.monotonic()
    with Simulator(sim_config) as sim:
        config = write_config(work, sim.base_url, max_retry_seconds=60, read_timeout=READ_TIMEOUT_S)
        drop(work, stage(work, files))
        timeout = drain_timeout if drain_timeout is not None else 120.0 + 6.0 * files_count
        background = 0
        if filler:
            with QueueFiller(
                sim,
                random.Random(seed + 1),
                burst=int(filler["burst"]),
                every=filler["every"],
                job_seconds=filler["job_seconds"],
            ) as qf:
                makespan = run_to_completion(work, config, log, files, timeout, failures)
            background = qf.added
        else:
            makespan = run_to_completion(work, config, log, files, timeout, failures)
        verdict = check(work, sim, files, failures)
        calls = sim.calls()
    api = [c for c in calls if c["endpoint"] != "identity"]
    by_answer = Counter(answer_label(c) for c in api)
    events = list(log_events(log))
    retry = sum(float(e.get("delay", 0)) for e in events if e.get("event") == "marketo_retry")
    pause = sum(float(e.get("seconds", 0)) for e in events if e.get("event") == "marketo_pause")
    token_wait = sum(float(e.get("seconds", 0)) for e in events if e.get("event") == "token_expiring_waiting")
    return {
        "phase": name,
        "files": verdict.files,
        "rows": verdict.rows,
        "rows_lost": verdict.rows_lost,
        "duplicate_rows": verdict.duplicate_rows,
        "resubmitted_batches": verdict.resubmitted_batches,
        "resubmitted_rows": verdict.resubmitted_rows,
        "api_calls": len(api),
        "identity_calls": len(calls) - len(api),
        "calls_per_file": round(len(api) / max(1, verdict.files), 2),
        "by_answer": dict(by_answer.most_common()),
        "retry_seconds": round(retry, 1),
        "retries": sum(1 for e in events if e.get("event") == "marketo_retry"),
        "pause_seconds": round(pause, 1),
        "pauses": sum(1 for e in events if e.get("event") == "marketo_pause"),
        "token_wait_seconds": round(token_wait, 1),
        "background_jobs": background,
        "makespan_seconds": round(makespan, 1),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "failures": failures,
        "work": str(work),
    }


def run_campaign(
    *,
    files: int = 12,
    zero_files: int | None = None,
    seed: int = 1,
    token_ttl: float = 4.0,
    fault_rates: Mapping[str, float] | None = None,
    burst: int = 10,
    burst_every: float = 8.0,
    background_job_seconds: float = 1.0,
    job_seconds: float = 0.3,
    work_dir: Path | None = None,
    drain_timeout: float | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Both runs; returns {"phases": [...], "failures": [...], "work": ...}.

    ``work_dir`` None: a temporary folder, removed afterwards unless a check failed or ``keep``.
    """
    work = Path(tempfile.mkdtemp(prefix="dropzone-faults-")) if work_dir is None else work_dir
    zero_files = max(3, files // 4) if zero_files is None else zero_files
    base = SimConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        instant=False,
        queued_seconds=0.05,
        import_seconds_per_job=job_seconds,
        import_seconds_per_row=0.0,
        token_ttl=token_ttl,
        seed=seed,
    )
    phases = [
        run_phase(
            "faults",
            work / "faults",
            base.with_overrides(fault_rates=dict(DEFAULT_FAULT_RATES if fault_rates is None else fault_rates)),
            files_count=files,
            seed=seed,
            drain_timeout=drain_timeout,
            filler={"burst": burst, "every": burst_every, "job_seconds": background_job_seconds},
        )
    ]
    if zero_files:
        phases.append(
            run_phase(
                "zero_expires_in",
                work / "zero",
                base.with_overrides(zero_expires_in=True),
                files_count=zero_files,
                seed=seed + 100,
                drain_timeout=drain_timeout,
                filler=None,
            )
        )
    failures = [f"{p['phase']}: {f}" for p in phases for f in p["failures"]]
    if work_dir is None and not failures and not keep:
        shutil.rmtree(work, ignore_errors=True)
        return {"phases": phases, "failures": failures, "work": None}
    return {"phases": phases, "failures": failures, "work": str(work)}


def print_figures(result: dict[str, Any]) -> None:
    for p in result["phases"]:
        print(f"[{p['phase']}]")
        print(f"  files / rows:        {p['files']} / {p['rows']}")
        print(f"  rows lost:           {p['rows_lost']}")
        print(f"  duplicate rows:      {p['duplicate_rows']}")
        print(f"  resubmitted batches: {p['resubmitted_batches']} ({p['resubmitted_rows']} rows)")
        print(
            f"  API calls:           {p['api_calls']} ({p['calls_per_file']} per file) + {p['identity_calls']} identity"
        )
        print(f"  answers:             {', '.join(f'{k}: {v}' for k, v in p['by_answer'].items())}")
        print(f"  background jobs:     {p['background_jobs']}")
        print(f"  retry waits:         {p['retries']} retries, {p['retry_seconds']} s")
        print(f"  pauses:              {p['pauses']} pauses, {p['pause_seconds']} s")
        print(f"  token waits:         {p['token_wait_seconds']} s")
        print(f"  makespan / wall:     {p['makespan_seconds']} s / {p['wall_seconds']} s")
    for failure in result["failures"]:
        print(f"FAIL: {failure}")
    print("OK: every check passed" if not result["failures"] else f"FAILED; work folder kept: {result['work']}")


def parse_rate(text: str) -> tuple[str, float]:
    kind, sep, p = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KIND=P, got {text!r}")
    return kind, float(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=12, help="files for the fault run")
    parser.add_argument("--zero-files", type=int, default=None, help="files for the expires_in 0 run (default files/4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token-ttl", type=float, default=4.0)
    parser.add_argument(
        "--fault-rate",
        type=parse_rate,
        action="append",
        default=None,
        metavar="KIND=P",
        help="replaces the default rates (repeatable), e.g. --fault-rate 606=0.05",
    )
    parser.add_argument("--burst", type=int, default=10, help="most background jobs per burst")
    parser.add_argument("--burst-every", type=float, default=8.0, help="mean seconds between bursts")
    parser.add_argument("--drain-timeout", type=float, default=None, help="per run; default 120 s + 6 s per file")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the daemon child is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rates = dict(args.fault_rate) if args.fault_rate else DEFAULT_FAULT_RATES
    print(
        f"fault campaign: {args.files} files, seed {args.seed}, token ttl {args.token_ttl} s, rates {rates}", flush=True
    )
    result = run_campaign(
        files=args.files,
        zero_files=args.zero_files,
        seed=args.seed,
        token_ttl=args.token_ttl,
        fault_rates=rates,
        burst=args.burst,
        burst_every=args.burst_every,
        work_dir=args.dir,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
    )
    print_figures(result)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
