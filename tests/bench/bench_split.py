"""Benchmark: splitting a big quote-heavy CSV against plain ``cp`` of the same file.

A script, not a test (pytest must not collect it):

    python tests/bench/bench_split.py [--mb 400] [--dir DIR] [--repeat 3] [--plain] [--floor]

Generates a CSV of about ``--mb`` MB (every field quoted, doubled quotes,
delimiters and ~1% multi-line values inside quotes, accented UTF-8 names;
``--plain``: no quotes and ASCII only, the other end of what partners send),
then, alternately, times ``cp`` of it and ``split_file`` of it in a child
process whose peak RSS is read with ``os.wait4``.  By default both read and
write the page cache (the file was just written); ``--sync`` adds the time
to get the output onto disk to both.  Prints MB/s for each, the
split/cp time ratio (goal <= 2, issue 12) and the split's peak RSS (goal < 100 MB).
``--floor`` also times, alone, each pass over every byte the split cannot do
without (reading, the UTF-8 check, finding where records end): their sum is
as fast as this splitter can go in CPython, the kernel copying the chunks
beside them on another core.
Output files are deleted after each run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

FIRST = ["Ann", "Zoë", "José", "Łukasz", "Søren", "Małgorzata", "François", "Bob", "Çağla", "Jü"]
LAST = ["O'Brien", "Müller", "Dvořák", "Smith, Jr.", "Nguyễn", "García", "Lee", "Kowalski"]
NOTES = [
    "",
    "called back",
    'said "not now", try Q3',
    "VIP; handle with care",
    "tab\there",
    "multi-line\nnote\r\nwith CRLF",  # the ~1% case below
]


HEADER = ["email", "firstName", "lastName", "company", "address", "postalCode", "score", "notes"]


def _plain(value: str) -> str:
    """``value`` with nothing csv would quote and nothing beyond ASCII."""
    value = "".join(" " if c in ',"\t\r\n' else c for c in value)
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()


def generate(path: Path, mb: int, plain: bool = False) -> int:
    rng = random.Random(42)
    unit = io.StringIO()
    writer = csv.writer(unit, quoting=csv.QUOTE_MINIMAL if plain else csv.QUOTE_ALL, lineterminator="\r\n")
    for i in range(20_000):
        note = NOTES[5] if rng.random() < 0.01 else rng.choice(NOTES[:5])
        row = [
            f"lead{i}@example.com",
            rng.choice(FIRST),
            rng.choice(LAST),
            f'{rng.choice(LAST)} & "{rng.choice(FIRST)}" Ltd',
            f"{rng.randint(1, 999)} Main St, Apt {rng.randint(1, 99)}",
            str(rng.randint(10000, 99999)),
            f"{rng.random():.6f}",
            note,
        ]
        writer.writerow([_plain(v) for v in row] if plain else row)
    chunk = unit.getvalue().encode("utf-8")
    assert not plain or (b'"' not in chunk and chunk.isascii())
    header = ",".join(HEADER if plain else (f'"{name}"' for name in HEADER))
    target = mb * 1_000_000
    with open(path, "wb") as f:
        f.write(header.encode() + b"\r\n")
        written = 0
        while written < target:
            f.write(chunk)
            written += len(chunk)
    return path.stat().st_size


def floor(src: Path, repeat: int) -> dict[str, float]:
    """Best seconds of each unavoidable pass over the file, alone; each includes the read."""
    from dropzone.charsets import Utf8Check
    from dropzone.defaults import SPLIT_BLOCK_BYTES
    from dropzone.records import Quotes

    def timed(make: Callable[[], Callable[[bytes], object]]) -> float:
        best = float("inf")
        for _ in range(repeat):
            step = make()
            start = time.perf_counter()
            with open(src, "rb", buffering=0) as f:
                while block := f.read(SPLIT_BLOCK_BYTES):
                    step(block)
            best = min(best, time.perf_counter() - start)
        return best

    def utf8_check() -> Callable[[bytes], object]:
        check = Utf8Check()
        return lambda block: check.feed(block, False)

    # Blocks are cut anywhere, so Quotes may start inside a quoted field:
    # its answer is wrong, its cost is the same.
    return {"read": timed(lambda: len), "utf-8 check": timed(utf8_check), "record ends": timed(lambda: Quotes)}


def time_cp(src: Path, work: Path, sync: bool) -> float:
    dst = work / "copy.csv"
    os.sync()  # earlier runs' writeback must not land in this timing
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if sync:
        os.sync()
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def time_split(
    src: Path, work: Path, max_bytes: int | None, sync: bool
) -> tuple[float, float, float, dict[str, float]]:
    """(wall seconds, seconds inside split_file, peak RSS MB, child's summary)."""
    out = work / "chunks"
    cmd = [sys.executable, __file__, "--child", str(src), str(out)]
    if max_bytes:
        cmd += ["--max-bytes", str(max_bytes)]
    if sync:
        cmd += ["--sync"]
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    report = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"split child failed with exit code {proc.returncode}")
    summary = json.loads(report)
    return wall, summary["seconds"], usage.ru_maxrss / 1024, summary  # ru_maxrss is KiB on Linux


def child(src: Path, out: Path, max_bytes: int | None, sync: bool) -> None:
    from dropzone.defaults import SPLIT_MAX_BYTES as DEFAULT_MAX_BYTES
    from dropzone.splitting import split_file

    start = time.perf_counter()
    result = split_file(src, out, max_bytes=max_bytes or DEFAULT_MAX_BYTES)
    if sync:
        os.sync()
    seconds = time.perf_counter() - start
    json.dump({"seconds": seconds, "chunks": len(result.chunks), "rows": result.rows}, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=400, help="size of the generated file (default 400)")
    parser.add_argument("--dir", type=Path, help="where to put it (default: a new temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    parser.add_argument("--max-bytes", type=int, default=None)
    parser.add_argument("--plain", action="store_true", help="no quotes, ASCII only (the cheap end)")
    parser.add_argument("--floor", action="store_true", help="also time each unavoidable pass alone")
    parser.add_argument(
        "--sync", action="store_true", help="count getting the output onto disk (sync) in both timings"
    )
    parser.add_argument("--child", nargs=2, type=Path, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.max_bytes, args.sync)
        return

    work = Path(tempfile.mkdtemp(prefix="bench_split_", dir=args.dir))
    try:
        free = shutil.disk_usage(work).free
        if free < 3 * args.mb * 1_000_000:
            raise SystemExit(f"only {free / 1e9:.1f} GB free in {work}; need 3x {args.mb} MB")
        src = work / "leads.csv"
        t = time.perf_counter()
        size = generate(src, args.mb, args.plain)
        print(f"generated {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s: {src}")
        mb = size / 1e6
        cps, splits, walls, rss = [], [], [], []
        for run in range(args.repeat):
            cps.append(time_cp(src, work, args.sync))
            wall, inner, peak, summary = time_split(src, work, args.max_bytes, args.sync)
            walls.append(wall)
            splits.append(inner)
            rss.append(peak)
            print(
                f"run {run + 1}: cp {cps[-1]:.2f} s, split {inner:.2f} s "
                f"(wall {wall:.2f} s incl. interpreter start), peak RSS {peak:.0f} MB, "
                f"{summary['chunks']} chunks, {summary['rows']} rows"
            )
        cp, sp = min(cps), min(splits)
        print(f"cp:    {cp:.2f} s  {mb / cp:7.0f} MB/s")
        print(f"split: {sp:.2f} s  {mb / sp:7.0f} MB/s  (wall {min(walls):.2f} s)")
        print(f"ratio split/cp: {sp / cp:.2f}  (goal <= 2)")
        print(f"peak RSS of split: {max(rss):.0f} MB  (goal < 100)")
        if args.floor:
            passes = floor(src, args.repeat)
            read = passes.pop("read")
            print(f"floor, each pass alone (best of {args.repeat}, page cache):")
            print(f"  read:          {read:.2f} s  {mb / read:7.0f} MB/s")
            for name, seconds in passes.items():
                net = seconds - read
                print(f"  {name + ':':14s} {net:.2f} s  {mb / net:7.0f} MB/s  ({net / cp:.1f}x cp)")
            least = read + sum(seconds - read for seconds in passes.values())
            print(f"  together: {least:.2f} s, {least / cp:.1f}x cp (the copy runs beside them)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
