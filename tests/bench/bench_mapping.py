"""Benchmark: splitting with a route's column mapping, against the byte-copying split of the same file.

A script, not a test (pytest must not collect it):

    PYTHONPATH=. python tests/bench/bench_mapping.py [--mb 50] [--plain] [--repeat 3] [--dir DIR]

Generates ``bench_split``'s lead file (every field quoted, doubled quotes,
delimiters, ~1% multi-line notes; ``--plain``: no quotes, ASCII), then
splits it into 9.5 MB chunks, each plan in a child process (peak RSS read
with ``os.wait4``): no mapping, a rename only (the header changes, records
are copied byte for byte), a dropped column (the multi-line notes), a
constant added, and both. Prints MB/s of the source for each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_split import HEADER, generate

PLANS: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, str]]]] = {
    "no mapping": ([], []),
    "rename only": ([("firstName", "FirstName"), ("postalCode", "zip")], []),
    "drop notes": ([("notes", None)], []),
    "add constant": ([], [("leadSource", "Expo 2026")]),
    "drop + rename + constant": ([("notes", None), ("postalCode", "zip")], [("leadSource", "Expo 2026")]),
}


def child(src: Path, out: Path, plan_name: str) -> None:
    from dropzone.mapping import build_plan
    from dropzone.splitting import split

    columns, constants = PLANS[plan_name]
    plan = build_plan(HEADER, columns, constants)
    out.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def open_chunk(index: int) -> Iterator[BinaryIO]:
        with open(out / f"part{index:04d}.csv", "wb") as f:
            yield f

    def header_check(fields: list[str]) -> object:
        return plan if plan.rewrites_records else list(plan.names)

    start = time.perf_counter()
    with open(src, "rb", buffering=0) as source:
        result = split(source, open_chunk, header_check=header_check)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    json.dump({"seconds": seconds, "chunks": len(result.chunks), "rows": result.rows}, sys.stdout)


def run(src: Path, work: Path, plan_name: str) -> tuple[float, float, dict[str, float]]:
    out = work / "chunks"
    cmd = [sys.executable, __file__, "--child", str(src), str(out), plan_name]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    report = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    shutil.rmtree(out, ignore_errors=True)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{plan_name}: child failed")
    summary = json.loads(report)
    return summary["seconds"], usage.ru_maxrss / 1024, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("SRC", "OUT", "PLAN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.child[2])
        return
    work = Path(tempfile.mkdtemp(prefix="bench_mapping_", dir=args.dir))
    try:
        src = work / "leads.csv"
        size = generate(src, args.mb, args.plain)
        mb = size / 1e6
        print(f"{mb:.0f} MB, {'plain' if args.plain else 'quoted'}; best of {args.repeat}")
        for name in PLANS:
            runs = [run(src, work, name) for _ in range(args.repeat)]
            best = min(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            rows = runs[0][2]["rows"]
            print(f"  {name:26s} {mb / best:7.1f} MB/s  {best:6.2f} s  peak RSS {peak:5.0f} MB  {rows} rows")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
