"""Benchmark: a backlog of small files (default 1,000 one-row files) dropped at once, against the simulator.

Prints the imports Marketo received, API calls per file and the makespan (the drop to the last status
file), with coalescing on (the default) and, with ``--no-coalesce``, one import per file. A script, not
a test:

    python tests/bench/bench_coalesce.py [--files 1000] [--rows 1] [--job-seconds 2] [--no-coalesce]

The simulator enforces Marketo's limits (100 calls / 20 s → 606, 2 importing, 10 open → 1016); the
daemon runs as its own process with its defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dropzone.simulator import SimConfig, Simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1, help="rows per file")
    parser.add_argument("--job-seconds", type=float, default=2.0, help="Marketo's time per job")
    parser.add_argument("--no-coalesce", action="store_true", help="coalesce: false on the route")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dropzone-backlog-", dir=args.dir))
    for name in ("inbox", "outbox", "staging"):
        (work / name).mkdir()
    sim_config = SimConfig(
        client_id="bench", client_secret="bench-secret", queued_seconds=0.0,
        import_seconds_per_job=args.job_seconds, import_seconds_per_row=0.0,
    )
    with Simulator(sim_config) as sim:
        config = work / "dropzone.yaml"
        config.write_text(
            f"""
marketo:
  endpoint: {sim.base_url}
  client_id: bench
  client_secret: bench-secret
state_dir: state
log: {{format: json, level: info}}
inboxes:
  - path: inbox
    outbox: outbox
    quiet_period: 0.5
    routes:
      - match: "*.csv"
        object: leads
        coalesce: {"false" if args.no_coalesce else "true"}
"""
        )
        staged = []
        for i in range(args.files):
            path = work / "staging" / f"drip_{i:05d}.csv"
            path.write_text("email,firstName\n" + "".join(f"d{i}r{j}@example.com,N{j}\n" for j in range(args.rows)))
            staged.append(path)
        log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"daemon_started" not in (work / "daemon.log").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not start")
            time.sleep(0.05)
        t0 = time.monotonic()
        for path in staged:
            path.rename(work / "inbox" / path.name)
        while len(list((work / "outbox").glob("*.status.json"))) < args.files:
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"gave up after {args.timeout:.0f} s")
            time.sleep(0.2)
        makespan = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()

        jobs = sim.submissions()
        calls = [c for c in sim.calls() if not c["path"].startswith("/identity")]
        statuses = [json.loads(p.read_text()) for p in (work / "outbox").glob("*.status.json")]
        by_endpoint: dict[str, int] = {}
        for c in calls:
            by_endpoint[c.get("endpoint") or "?"] = by_endpoint.get(c.get("endpoint") or "?", 0) + 1
        print(f"files: {args.files} of {args.rows} row(s), coalesce: {not args.no_coalesce}, "
              f"job time {args.job_seconds} s")
        print(f"imports: {len(jobs)}  (files per import: {args.files / max(len(jobs), 1):.1f})")
        print(f"API calls: {len(calls)}  per file: {len(calls) / args.files:.3f}  {dict(sorted(by_endpoint.items()))}")
        print(f"makespan: {makespan:.1f} s")
        print(f"606 answers: {sum(1 for c in calls if c['code'] == '606')}  "
              f"1016 answers: {sum(1 for c in calls if c['code'] == '1016')}")
        print(f"outcomes: {sorted({s['status'] for s in statuses})}  rows imported: {len(sim.imported_rows())} "
              f"of {args.files * args.rows}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
