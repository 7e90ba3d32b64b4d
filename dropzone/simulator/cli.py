"""Command line for the standalone simulator (``dropzone simulate`` / ``python -m dropzone.simulator``).

Knobs come from defaults, then ``--config YAML`` (any ``SimConfig`` field,
e.g. lead_fields, program_member_fields, custom_objects, lists, programs,
channels, partitions), then flags. The client secret may come
from ``DROPZONE_SIM_CLIENT_SECRET`` so it stays off the process list. Prints
``simulator listening on http://127.0.0.1:PORT`` once bound, so a parent can
learn the port of ``--port 0``, and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from .catalog import ASSET_NOT_FOUND_MODES
from .codes import ENDPOINTS
from .config import SimConfig, load_overrides
from .faults import validate_kind
from .simulator import Simulator

SECRET_ENV = "DROPZONE_SIM_CLIENT_SECRET"  # noqa: S105 (a variable name, not a secret)
CLIENT_ID_ENV = "DROPZONE_SIM_CLIENT_ID"


def _fault_rate(text: str) -> tuple[str, float]:
    kind, sep, rate = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KIND=P, got {text!r}")
    try:
        validate_kind(kind, random_rate=True)
        return kind, float(rate)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dropzone simulate",
        description="Fake Marketo bulk import API (and its describe and target endpoints) on 127.0.0.1.",
    )
    p.add_argument("--port", type=int, default=None, help="port to bind (0 = any free port; default 0)")
    p.add_argument("--client-id", default=None, help=f"accepted client_id (or ${CLIENT_ID_ENV})")
    p.add_argument("--client-secret", default=None, help=f"accepted client_secret (prefer ${SECRET_ENV})")
    p.add_argument("--config", metavar="YAML", help="YAML mapping of SimConfig fields (schemas, lists, programs...)")
    p.add_argument("--token-ttl", type=float, help="token lifetime in seconds (3600)")
    p.add_argument("--zero-expires-in", action="store_true", default=None, help="re-issued tokens report expires_in 0")
    p.add_argument("--allow-query-token", action="store_true", default=None, help="accept ?access_token=")
    p.add_argument(
        "--allow-form-token", action="store_true", default=None, help="accept a multipart access_token field"
    )
    p.add_argument("--queued-seconds", type=float, help="dwell in Queued once a slot frees")
    p.add_argument("--job-seconds", type=float, help="import time per job")
    p.add_argument("--row-seconds", type=float, help="import time per row")
    p.add_argument("--instant", action="store_true", default=None, help="all dwell times zero")
    p.add_argument("--max-file-bytes", type=int, help="file part must be smaller than this (10485760)")
    p.add_argument("--rate-limit", type=int, help="calls per rate window (100)")
    p.add_argument("--rate-window", type=float, help="rate window in seconds (20)")
    p.add_argument("--max-concurrent", type=int, help="in-flight calls before 615 (10)")
    p.add_argument("--daily-quota", type=int, help="calls per day before 607 (unlimited)")
    p.add_argument(
        "--usage-denied", action="store_true", default=None, help="refuse /rest/v1/stats/usage.json with 603"
    )
    p.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="ENDPOINT",
        choices=[e for e in ENDPOINTS if e not in ("identity", "other")],
        help="answer this endpoint with 603 Access denied (repeatable; e.g. describe_leads, list, program)",
    )
    p.add_argument(
        "--asset-not-found",
        choices=ASSET_NOT_FOUND_MODES,
        help="Asset API answer for an unknown program or channel: a warning (default) or 702",
    )
    p.add_argument("--unknown-fields", choices=("reject", "ignore"), help="unknown header column: 1006 or ignore")
    p.add_argument("--failures-200", action="store_true", default=None, help="no failure rows: 200 empty, not 404")
    p.add_argument(
        "--fault-rate",
        type=_fault_rate,
        action="append",
        default=[],
        metavar="KIND=P",
        help="random fault probability per API call (repeatable)",
    )
    p.add_argument("--seed", type=int, help="seed for tokens, requestIds and random faults")
    p.add_argument("--record", metavar="PATH", help="append JSON lines of submissions and imported rows here")
    p.add_argument("--background-jobs", type=int, default=0, metavar="N", help="queue N foreign jobs at start")
    return p


_FLAG_TO_FIELD = {
    "port": "port",
    "token_ttl": "token_ttl",
    "zero_expires_in": "zero_expires_in",
    "allow_query_token": "accept_query_token",
    "allow_form_token": "accept_form_token",
    "queued_seconds": "queued_seconds",
    "job_seconds": "import_seconds_per_job",
    "row_seconds": "import_seconds_per_row",
    "instant": "instant",
    "max_file_bytes": "max_file_bytes",
    "rate_limit": "rate_limit",
    "rate_window": "rate_window",
    "max_concurrent": "max_concurrent",
    "daily_quota": "daily_quota",
    "usage_denied": "usage_denied",
    "unknown_fields": "unknown_fields",
    "asset_not_found": "asset_not_found",
    "seed": "seed",
    "record": "record_path",
}


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SimConfig:
    """Defaults, then the YAML file, then flags. Raises ValueError with a readable message."""
    env = dict(os.environ) if environ is None else environ
    knobs: dict[str, Any] = load_overrides(args.config) if args.config else {}
    for flag, name in _FLAG_TO_FIELD.items():
        value = getattr(args, flag)
        if value is not None:
            knobs[name] = value
    if args.failures_200:
        knobs["failures_404"] = False
    if args.deny:
        knobs["denied_endpoints"] = [*knobs.get("denied_endpoints", ()), *args.deny]
    if args.fault_rate:
        knobs["fault_rates"] = {**knobs.get("fault_rates", {}), **dict(args.fault_rate)}
    client_id = args.client_id or knobs.pop("client_id", None) or env.get(CLIENT_ID_ENV)
    secret = args.client_secret or knobs.pop("client_secret", None) or env.get(SECRET_ENV)
    if not client_id or not secret:
        raise ValueError(f"need --client-id (or ${CLIENT_ID_ENV}) and --client-secret (or ${SECRET_ENV})")
    return SimConfig(client_id=client_id, client_secret=secret, **knobs)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT; 0 on a clean stop, 2 on bad arguments."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:
        # A wrapper passing options through argparse.REMAINDER may leave its separator in.
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"dropzone simulate: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            # The handler only sets the event; the main thread does the shutdown.
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    sim = Simulator(cfg)
    try:
        sim.start()
    except OSError as exc:
        print(f"dropzone simulate: cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        if args.background_jobs:
            sim.add_background_jobs(args.background_jobs)
        print(f"simulator listening on {sim.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
