"""Crash campaign: N rounds of dropping files and SIGKILLing the daemon at a seeded random moment.

Each round stages M new files (leads CSV with quoted line breaks, custom-object TSV, program-member
SSV; every row key unique), starts ``python -m dropzone run`` against an in-process simulator
(real job times), renames the files into the inbox at a random moment of the daemon's life, and
SIGKILLs it at another. After the last round a daemon runs until every file has a status file,
then gets SIGTERM (exit 0 expected). Checks, against the simulator's record:

* no row lost (every row key was imported by Marketo at least once);
* every file has exactly one ``*.status.json`` (no stamped second report), ``Complete``, with the
  right row counts; inbox empty, every original archived once;
* duplicate rows (imported more than once) no more than the rows of batches whose status says
  ``resubmitted`` (the kill fell between a POST and its journal write).

    python tests/bench/crash_campaign.py [--rounds 10] [--files-per-round 3] [--seed 1]
                                         [--kill-min 0.3] [--kill-max 2.5] [--keep]

Exits non-zero when a check fails (the work folder is then kept and printed).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dropzone.simulator import SimConfig, Simulator
from tests.bench._campaign import (
    CLIENT_ID,
    CLIENT_SECRET,
    DroppedFile,
    check,
    drop,
    log_events,
    make_batch,
    run_to_completion,
    stage,
    start_daemon,
    started_count,
    write_config,
)


def run_campaign(
    *,
    rounds: int = 10,
    files_per_round: int = 3,
    seed: int = 1,
    kill_min: float = 0.3,
    kill_max: float = 2.5,
    work_dir: Path | None = None,
    drain_timeout: float | None = None,
    job_seconds: float = 0.3,
    progress: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the campaign; returns the figures and ``failures`` (empty when every check passed).

    ``work_dir`` None: a temporary folder, removed afterwards unless a check failed or ``keep``.
    """
    if not 0 <= kill_min <= kill_max:
        raise ValueError("need 0 <= kill_min <= kill_max")
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="dropzone-crash-")) if work_dir is None else work_dir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "daemon.log"
    failures: list[str] = []
    files: list[DroppedFile] = []
    kills = kills_after_start = 0
    t0 = time.monotonic()
    sim_config = SimConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        instant=False,
        queued_seconds=0.05,
        import_seconds_per_job=job_seconds,
        import_seconds_per_row=0.0,
        seed=seed,
    )
    with Simulator(sim_config) as sim:
        config = write_config(work, sim.base_url)
        for r in range(rounds):
            batch = make_batch(rng, f"r{r}", files_per_round)
            files.extend(batch)
            staged = stage(work, batch)
            kill_at = rng.uniform(kill_min, kill_max)
            drop_at = rng.uniform(0.0, kill_at)
            before = started_count(log)
            spawned = time.monotonic()
            proc = start_daemon(config, log)
            try:
                time.sleep(max(0.0, spawned + drop_at - time.monotonic()))
                drop(work, staged)
                time.sleep(max(0.0, spawned + kill_at - time.monotonic()))
                if proc.poll() is not None:
                    failures.append(f"round {r}: daemon exited {proc.returncode} before its SIGKILL")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            kills += 1
            kills_after_start += started_count(log) > before
            if progress and (r + 1) % 10 == 0:
                print(
                    f"  round {r + 1}/{rounds}: {len(files)} files dropped, {len(sim.submissions())} batches so far",
                    flush=True,
                )
        timeout = drain_timeout if drain_timeout is not None else 120.0 + 3.0 * len(files)
        drain = run_to_completion(work, config, log, files, timeout, failures)
        verdict = check(work, sim, files, failures)
        batches = len(sim.submissions())
    events = list(log_events(log))
    result: dict[str, Any] = {
        "kills": kills,
        "kills_after_start": kills_after_start,
        "files": verdict.files,
        "rows": verdict.rows,
        "batches": batches,
        "rows_lost": verdict.rows_lost,
        "duplicate_rows": verdict.duplicate_rows,
        "resubmitted_batches": verdict.resubmitted_batches,
        "resubmitted_rows": verdict.resubmitted_rows,
        "resubmits_after_crash": sum(1 for e in events if e.get("event") == "chunk_resubmitting_after_crash"),
        "drain_seconds": round(drain, 1),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "failures": failures,
        "work": str(work),
    }
    if work_dir is None and not failures and not keep:
        shutil.rmtree(work, ignore_errors=True)
        result["work"] = None
    return result


def print_figures(result: dict[str, Any]) -> None:
    print(f"kills:               {result['kills']} ({result['kills_after_start']} after daemon_started)")
    print(f"files:               {result['files']}  ({result['batches']} batches accepted by Marketo)")
    print(f"rows:                {result['rows']}")
    print(f"rows lost:           {result['rows_lost']}")
    print(f"duplicate rows:      {result['duplicate_rows']}")
    print(
        f"resubmitted batches: {result['resubmitted_batches']} ({result['resubmitted_rows']} rows; "
        f"{result['resubmits_after_crash']} resubmits on restart)"
    )
    print(f"final drain:         {result['drain_seconds']} s")
    print(f"wall time:           {result['wall_seconds']} s")
    for failure in result["failures"]:
        print(f"FAIL: {failure}")
    print("OK: every check passed" if not result["failures"] else f"FAILED; work folder kept: {result['work']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--files-per-round", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-min", type=float, default=0.3, help="earliest SIGKILL, seconds after spawn")
    parser.add_argument("--kill-max", type=float, default=2.5, help="latest SIGKILL, seconds after spawn")
    parser.add_argument("--job-seconds", type=float, default=0.3, help="simulated import time per batch")
    parser.add_argument("--drain-timeout", type=float, default=None, help="default 120 s + 3 s per file")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder even when all is well")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the daemon child is stopped rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"crash campaign: {args.rounds} rounds x {args.files_per_round} files, seed {args.seed}, "
        f"SIGKILL {args.kill_min}-{args.kill_max} s after spawn",
        flush=True,
    )
    result = run_campaign(
        rounds=args.rounds,
        files_per_round=args.files_per_round,
        seed=args.seed,
        kill_min=args.kill_min,
        kill_max=args.kill_max,
        work_dir=args.dir,
        drain_timeout=args.drain_timeout,
        job_seconds=args.job_seconds,
        progress=True,
        keep=args.keep,
    )
    print_figures(result)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
