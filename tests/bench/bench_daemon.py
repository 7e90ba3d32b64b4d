"""Benchmark: 100 small files and one large file dropped at once, against the simulator.

Prints the makespan against the ideal (total Marketo job time / 2 import slots), the number of
1016 answers, API calls per file and the daemon's peak RSS. A script, not a test:

    python tests/bench/bench_daemon.py [--small 100] [--big-mb 200] [--job-seconds 0.5]

Goal (issue 4): at least 0.9 of the ideal, zero 1016, peak RSS under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dropzone.simulator import SimConfig, Simulator


def write_big(path: Path, megabytes: int) -> int:
    rows = 0
    target = megabytes * 1_000_000
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("email,firstName,lastName,company\n")
        written = 0
        block = []
        while written < target:
            block.append(f'big{rows}@example.com,"First {rows}","Last, ""{rows}""\nsecond line",Acme {rows % 97}\n')
            rows += 1
            if len(block) == 10_000:
                text = "".join(block)
                out.write(text)
                written += len(text)
                block = []
        out.write("".join(block))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--calls-per-20s", type=int, default=None, help="the API budget (default: dropzone's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dropzone-bench-", dir=args.dir))
    for name in ("inbox", "outbox", "staging"):
        (work / name).mkdir()
    sim_config = SimConfig(
        client_id="bench",
        client_secret="bench-secret",
        queued_seconds=0.0,
        import_seconds_per_job=args.job_seconds,
        import_seconds_per_row=0.0,
    )
    with Simulator(sim_config) as sim:
        config = work / "dropzone.yaml"
        config.write_text(
            f"""
marketo:
  endpoint: {sim.base_url}
  client_id: bench
  client_secret: bench-secret
  poll_interval: 5
{f"  calls_per_20s: {args.calls_per_20s}" if args.calls_per_20s else ""}
state_dir: state
log: {{format: json, level: info}}
inboxes:
  - path: inbox
    outbox: outbox
    quiet_period: 0.5
    scan_interval: 5
    routes:
      - match: "*.csv"
        object: leads
"""
        )
        # Prepare every file outside the inbox, then rename them all in at once.
        staged = []
        for i in range(args.small):
            path = work / "staging" / f"small_{i:03d}.csv"
            path.write_text("email,firstName\n" + "".join(f"s{i}r{j}@example.com,N{j}\n" for j in range(20)))
            staged.append(path)
        big_rows = write_big(work / "staging" / "big.csv", args.big_mb) if args.big_mb else 0
        if args.big_mb:
            staged.append(work / "staging" / "big.csv")
        print(f"files: {args.small} small + 1 of {args.big_mb} MB ({big_rows} rows)", flush=True)

        log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"daemon_started" not in (work / "daemon.log").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not start")
            time.sleep(0.05)
        t0 = time.monotonic()
        t0_sim = time.time()  # the simulator keeps wall-clock times
        for path in staged:
            path.rename(work / "inbox" / path.name)
        expected = len(staged)
        peak_kb = 0
        while True:
            done = len(list((work / "outbox").glob("*.status.json")))
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak_kb = max(peak_kb, int(line.split()[1]))
            except OSError:
                pass
            if done >= expected:
                break
            if time.monotonic() - t0 > 3600:
                raise SystemExit("gave up after an hour")
            time.sleep(0.1)
        makespan = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        peak_kb = max(peak_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

        jobs = sim.submissions()
        calls = [c for c in sim.calls() if not c["path"].startswith("/identity")]
        ideal = len(jobs) * args.job_seconds / 2
        statuses = [json.loads(p.read_text())["status"] for p in (work / "outbox").glob("*.status.json")]
        print(f"batches: {len(jobs)} (job time {args.job_seconds} s each, 2 slots)")
        # Where the time went: before Marketo's first job started, slots idle between, after its last.
        starts = sorted(j["started_at"] for j in jobs if j["started_at"] is not None)
        ends = sorted(j["finished_at"] for j in jobs if j["finished_at"] is not None)
        if starts and ends:
            busy = sum(j["finished_at"] - j["started_at"] for j in jobs if j["finished_at"] and j["started_at"])
            span = ends[-1] - starts[0]
            print(f"Marketo's slots: first job started {starts[0] - t0_sim:.1f} s after the drop, "
                  f"busy {busy / (2 * span):.2f} of the {span:.1f} s until its last job ended, "
                  f"results written {makespan - (ends[-1] - t0_sim):.1f} s after that")
        print(f"makespan: {makespan:.1f} s   ideal: {ideal:.1f} s   efficiency: {ideal / makespan:.2f}")
        print(f"1016 answers: {sum(1 for c in calls if c['code'] == '1016')}")
        print(f"API calls: {len(calls)}  per file: {len(calls) / expected:.1f}")
        print(f"daemon peak RSS: {peak_kb / 1024:.0f} MB")
        print(f"outcomes: {sorted(set(statuses))}  rows imported: {len(sim.imported_rows())}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
