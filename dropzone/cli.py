"""The ``dropzone`` command: argparse subcommands, exit codes.

The only module that knows about argv and exit codes. Each subcommand parses
its arguments, calls one plain function, and lets ``DropzoneError`` surface
here, where it becomes a message on stderr and the error's ``exit_code``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dropzone import __version__
from dropzone.errors import DropzoneError

Handler = Callable[[argparse.Namespace], int]


def _cmd_split(args: argparse.Namespace) -> int:
    from dropzone import defaults, splitting

    max_bytes = args.max_bytes if args.max_bytes is not None else defaults.SPLIT_MAX_BYTES
    result = splitting.split_file(
        args.file, None if args.check else args.out, fmt=args.format, max_bytes=max_bytes, encoding=args.encoding
    )
    for chunk in result.chunks:
        print(splitting.format_manifest_line(chunk))
    return 0


def _load(args: argparse.Namespace) -> Any:
    from dropzone import config as config_module

    return config_module.load(args.config)


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate the configuration, the folders and (unless --offline) the credentials, the reads pre-flight
    needs and the import targets (``access``)."""
    import dataclasses
    import json

    from dropzone import access
    from dropzone.marketo import MarketoClient
    from dropzone.preflight import check_paths

    cfg = _load(args)
    problems = check_paths(cfg)
    print(json.dumps(cfg.redacted(), indent=2, default=str))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    if cfg.pgp is not None:
        import tempfile

        from dropzone.pgp import Keyring

        # A throwaway keyring: the running daemon's own is never touched. A bad key is a ConfigError (exit 2).
        with tempfile.TemporaryDirectory(prefix="dz-check-") as scratch:
            keyring = Keyring.build(cfg.pgp, Path(scratch), source=cfg.source)
            keyring.close()
        print(f"pgp: the private key {keyring.fingerprint} decrypts")
    refused = 0
    for name, settings in ([] if args.offline else cfg.all_instances().items()):
        # One Identity call per instance, no retries: the operator is waiting for an answer.
        client = MarketoClient(dataclasses.replace(settings, max_retry_seconds=0))
        try:
            client.check_credentials()
            print(f"marketo instance {name}: credentials accepted by Identity")
            report = access.check_instance(client, cfg)
        except DropzoneError as exc:
            refused += 1
            print(f"problem: marketo instance {name}: {exc}", file=sys.stderr)
            continue
        finally:
            client.close()
        for line in report.fine:
            print(line)
        for line in report.warnings:
            print(f"warning: {line}", file=sys.stderr)
        for line in report.problems:
            print(f"problem: {line}", file=sys.stderr)
        refused += len(report.problems)
    if refused:
        return 1
    print("configuration OK")
    return 0


def _redact_secrets(cfg: Any) -> None:
    from dropzone import logs

    for settings in cfg.all_instances().values():
        logs.redactor.add(settings.client_secret)
    if cfg.pgp is not None and cfg.pgp.passphrase:
        logs.redactor.add(cfg.pgp.passphrase)


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the current step and exit. Second: exit now."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _cmd_run(args: argparse.Namespace) -> int:
    from dropzone import logs
    from dropzone.daemon import Daemon
    from dropzone.errors import ConfigError
    from dropzone.preflight import check_paths

    cfg = _load(args)
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)  # ours to create, unlike the partners' folders
    except OSError as exc:
        raise ConfigError(f"{cfg.source}: state_dir: cannot create {cfg.state_dir}: {exc.strerror}") from None
    problems = check_paths(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    logs.configure(json=cfg.log.json, level=cfg.log.level.value)
    _redact_secrets(cfg)

    def reload_config() -> Any:
        new = _load(args)
        _redact_secrets(new)
        return new

    stop = threading.Event()
    _install_signal_handlers(stop)
    daemon = Daemon(cfg, stop=stop, reload_config=reload_config)
    # Handlers only set events: the loop acts on them (no work inside a signal handler).
    signal.signal(signal.SIGHUP, lambda signum, frame: daemon.reload_requested.set())
    server = None
    if cfg.http is not None:
        from dropzone import healthserver

        server = healthserver.HealthServer(daemon.metrics, cfg.http.host, cfg.http.port)
        try:
            server.start()
        except OSError as exc:
            daemon.close()
            raise ConfigError(
                f"{cfg.source}: http.listen: cannot listen on {cfg.http.listen}: {exc.strerror}"
            ) from None
    try:
        daemon.run()
    finally:
        if server is not None:
            server.stop()
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the running daemon answers /livez and /readyz with 200 (for HEALTHCHECK and cron)."""
    from dropzone import healthserver

    cfg = _load(args)
    if cfg.http is None:
        print("dropzone health needs an 'http' section in the configuration (http: {listen: 127.0.0.1:9108})",
              file=sys.stderr)
        return 1
    code, message = healthserver.check(healthserver.base_url(cfg.http.host, cfg.http.port), args.timeout)
    print(message)
    return code


def _cmd_demo(args: argparse.Namespace) -> int:
    from dropzone import logs
    from dropzone.demo import run_demo

    cfg = _load(args)
    logs.configure(json=cfg.log.json, level=cfg.log.level.value)
    _redact_secrets(cfg)
    stop = threading.Event()
    _install_signal_handlers(stop)
    run_demo(cfg, stop, samples=not args.no_samples)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Files in flight and recent outcomes, from the journal (read-only, works while the daemon runs)."""
    from dropzone.jobs import ChunkState, FileState
    from dropzone.store import Store

    cfg = _load(args)
    store = Store(cfg.state_dir, lock=False)
    try:
        in_flight = store.files(
            [FileState.CLAIMING, FileState.CLAIMED, FileState.SPLIT, FileState.UNPACKED, FileState.FINISHING]
        )
        print(f"in flight: {len(in_flight)}")
        for row in in_flight:
            chunks = store.chunks_of(row.id)
            states = ", ".join(f"{c.index}:{c.state}" + (f"#{c.batch_id}" if c.batch_id else "") for c in chunks)
            print(f"  {row.received_at}  {row.state:<9}  {row.relpath}  [{states}]")
        recent = [r for r in store.files([FileState.DONE], limit=args.recent)]
        print(f"recent outcomes: {len(recent)}")
        for row in recent:
            print(f"  {row.finished_at}  {row.outcome:<8}  {row.relpath}" + (f"  ({row.error})" if row.error else ""))
        waiting, sent = [ChunkState.PENDING], [ChunkState.SUBMITTING, ChunkState.SUBMITTED, ChunkState.FETCHING]
        for name in sorted(set(cfg.all_instances()) | store.chunk_instances([*waiting, *sent])):
            known = "" if name in cfg.all_instances() else " (not configured)"
            print(
                f"instance {name}{known}: {store.count_chunks(waiting, instance=name)} chunk(s) waiting, "
                f"{store.count_chunks(sent, instance=name)} sent and not finished"
            )
        totals = ", ".join(f"{k}={v}" for k, v in sorted(store.counts().items()))
        print(f"totals: {totals or 'none'}")
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropzone",
        description="Turn flat files dropped by partners into Marketo bulk imports.",
    )
    parser.add_argument("--version", action="version", version=f"dropzone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground", description="Watch the inboxes and import.")
    run.add_argument("--config", type=Path, required=True, metavar="FILE")
    run.set_defaults(handler=_cmd_run)

    demo = sub.add_parser(
        "demo",
        help="run the daemon against the bundled simulator, with sample files",
        description=(
            "Start the simulator at marketo.endpoint (http://127.0.0.1:PORT), drop sample files, run the daemon."
        ),
    )
    demo.add_argument("--config", type=Path, default=Path("config.example.yaml"), metavar="FILE")
    demo.add_argument("--no-samples", action="store_true", help="do not drop the sample files")
    demo.set_defaults(handler=_cmd_demo)

    check = sub.add_parser(
        "check",
        help="validate a configuration, its folders and the Marketo credentials",
        description="Exit 0 when the configuration is valid, its folders usable and Identity accepts the credentials.",
    )
    check.add_argument("--config", type=Path, required=True, metavar="FILE")
    check.add_argument("--offline", action="store_true", help="do not call Marketo's Identity endpoint")
    check.set_defaults(handler=_cmd_check)

    health_cmd = sub.add_parser(
        "health", help="ask a running daemon whether it is alive and ready (its http endpoint)"
    )
    health_cmd.add_argument("--config", type=Path, required=True, metavar="FILE")
    health_cmd.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    health_cmd.set_defaults(handler=_cmd_health)

    status = sub.add_parser("status", help="files in flight and recent outcomes, from the journal")
    status.add_argument("--config", type=Path, required=True, metavar="FILE")
    status.add_argument("--recent", type=int, default=20, metavar="N", help="how many recent outcomes (default 20)")
    status.set_defaults(handler=_cmd_status)

    split = sub.add_parser(
        "split",
        help="split a CSV/TSV/SSV file into chunks under Marketo's 10 MB limit",
        description="Split FILE into chunks (header repeated, records never cut) and print the manifest.",
    )
    split.add_argument("file", type=Path, metavar="FILE")
    where = split.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="where the chunks are written")
    where.add_argument("--check", action="store_true", help="check the file and print the manifest, writing nothing")
    split.add_argument("--max-bytes", type=int, default=None, metavar="N", help="largest chunk, header included")
    split.add_argument("--format", choices=("csv", "tsv", "ssv"), default=None, help="default: from the extension")
    split.add_argument(
        "--encoding", default=None, metavar="NAME", help="source encoding to transcode from (e.g. cp1252)"
    )
    split.set_defaults(handler=_cmd_split)

    # Listed for --help only: main() hands "simulate" to the simulator's own parser.
    sub.add_parser(
        "simulate",
        help="run the bundled Marketo bulk-import simulator on 127.0.0.1",
        description=(
            "Run the Marketo bulk-import simulator. Options are passed through; see 'dropzone simulate --help'."
        ),
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["simulate"]:
        # The simulator owns its options; argparse.REMAINDER would not pass options through.
        from dropzone.simulator.cli import main as simulate_main

        return simulate_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DropzoneError as exc:
        print(f"dropzone: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
