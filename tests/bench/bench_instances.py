"""Benchmark: what a fault on one Marketo instance costs another, in one daemon.

Two simulators stand for two instances: ``default`` (A) and ``sandbox`` (B),
each with its own inbox. For each scenario, ``--files`` small files are
dropped into B's inbox (and as many into A's, except in the baseline), a real
``dropzone run`` process imports them, and the script times how long B's files
take to all have a status. A script, not a test:

    python tests/bench/bench_instances.py [--files 30] [--job-seconds 0.5] [--scenarios ...]

Scenarios (A's trouble lasts the whole run):

* ``baseline``: A idle;            * ``healthy``: A busy and healthy;
* ``1016``: every import on A answers "queue full";
* ``606``: every call on A answers "rate limit exceeded";
* ``607``: every call on A answers "daily quota reached";
* ``revoked``: A's credentials are refused by Identity;
* ``slow``: every call on A takes ``--slow`` seconds to answer (a sick, not a refusing, instance).

Prints B's makespan per scenario and its ratio to the baseline (goal: 1.0 within noise for the
refusing faults), the calls each simulator saw, and how A's files ended.
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

from dropzone.simulator import Fault, SimConfig, Simulator

SCENARIOS = ("baseline", "healthy", "1016", "606", "607", "revoked", "slow")


def _config(work: Path, a: Simulator, b: Simulator, *, a_secret: str) -> Path:
    path = work / "dropzone.yaml"
    path.write_text(
        f"""
marketo:
  endpoint: {a.base_url}
  client_id: bench-a
  client_secret: {a_secret}
  poll_interval: 2
instances:
  sandbox:
    endpoint: {b.base_url}
    client_id: bench-b
    client_secret: bench-b-secret
    poll_interval: 2
state_dir: state
log: {{format: json, level: info}}
inboxes:
  - path: inbox_a
    outbox: outbox_a
    quiet_period: 0.3
    scan_interval: 2
    routes: [{{match: "*.csv", object: leads}}]
  - path: inbox_b
    outbox: outbox_b
    instance: sandbox
    quiet_period: 0.3
    scan_interval: 2
    routes: [{{match: "*.csv", object: leads}}]
"""
    )
    return path


def _stage(work: Path, side: str, count: int) -> list[Path]:
    staged = []
    for i in range(count):
        path = work / "staging" / f"{side}_{i:03d}.csv"
        path.write_text("email,firstName\n" + "".join(f"{side}{i}r{j}@example.com,N{j}\n" for j in range(10)))
        staged.append(path)
    return staged


def run(scenario: str, files: int, job_seconds: float, slow: float, root: Path | None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"dropzone-bench-inst-{scenario}-", dir=root))
    for name in ("inbox_a", "outbox_a", "inbox_b", "outbox_b", "staging"):
        (work / name).mkdir()
    sims = [
        SimConfig(client_id=cid, client_secret=f"{cid}-secret", queued_seconds=0.0,
                  import_seconds_per_job=job_seconds, import_seconds_per_row=0.0)
        for cid in ("bench-a", "bench-b")
    ]
    with Simulator(sims[0]) as a, Simulator(sims[1]) as b:
        match scenario:
            case "1016":
                a.arm(Fault("1016", endpoint="import", times=None))
            case "606" | "607":
                a.arm(Fault(scenario, times=None))
            case "slow":
                a.arm(Fault(f"slow:{slow}", times=None))
        config = _config(work, a, b, a_secret="wrong-secret" if scenario == "revoked" else "bench-a-secret")
        staged_b = _stage(work, "b", files)
        staged_a = [] if scenario == "baseline" else _stage(work, "a", files)
        log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "dropzone", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"daemon_started" not in (work / "daemon.log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{scenario}: the daemon did not start; see {work / 'daemon.log'}")
                time.sleep(0.05)
            t0 = time.monotonic()
            for path in staged_a:
                path.rename(work / "inbox_a" / path.name)
            for path in staged_b:
                path.rename(work / "inbox_b" / path.name)
            while len(list((work / "outbox_b").glob("*.status.json"))) < files:
                if time.monotonic() - t0 > 900:
                    raise SystemExit(f"{scenario}: B's files did not finish in 15 minutes; see {work}")
                time.sleep(0.05)
            makespan = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
        statuses_a = [json.loads(p.read_text())["status"] for p in (work / "outbox_a").glob("*.status.json")]
        result: dict[str, object] = {
            "scenario": scenario,
            "b_makespan": makespan,
            "b_calls": len(b.calls()),
            "a_calls": len(a.calls()),
            "a_done": f"{len(statuses_a)}/{len(staged_a)}" + (f" {sorted(set(statuses_a))}" if statuses_a else ""),
        }
    shutil.rmtree(work)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--job-seconds", type=float, default=0.5)
    parser.add_argument("--slow", type=float, default=3.0, help="seconds each call on A takes (scenario slow)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    scenarios = list(dict.fromkeys(["baseline", *args.scenarios]))
    print(f"{args.files} files of 10 rows per instance, jobs of {args.job_seconds} s, 2 slots per instance")
    print(f"{'scenario':<10} {'B makespan':>11} {'vs baseline':>12} {'B calls':>8} {'A calls':>8}  A's files")
    base = None
    for scenario in scenarios:
        r = run(scenario, args.files, args.job_seconds, args.slow, args.dir)
        makespan = float(r["b_makespan"])  # type: ignore[arg-type]
        base = base or makespan
        print(f"{scenario:<10} {makespan:>10.1f}s {makespan / base:>11.2f}x {r['b_calls']:>8} {r['a_calls']:>8}  "
              f"{r['a_done']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
