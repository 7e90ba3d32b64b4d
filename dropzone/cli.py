"""The ``dropzone`` command: argparse subcommands, exit codes.

The only module that knows about argv and exit codes. Each subcommand parses
its arguments, calls one plain function, and lets ``DropzoneError`` surface
here, where it becomes a message on stderr and the error's ``exit_code``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dropzone import __version__
from dropzone.errors import DropzoneError

Handler = Callable[[argparse.Namespace], int]


def _cmd_split(args: argparse.Namespace) -> int:
    from dropzone import splitting

    max_bytes = args.max_bytes if args.max_bytes is not None else splitting.DEFAULT_MAX_BYTES
    args.out.mkdir(parents=True, exist_ok=True)
    result = splitting.split_file(
        args.file, args.out, fmt=args.format, max_bytes=max_bytes, encoding=args.encoding
    )
    for chunk in result.chunks:
        print(splitting.format_manifest_line(chunk))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dropzone.simulator.cli import main as simulate_main

    return simulate_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropzone",
        description="Turn flat files dropped by partners into Marketo bulk imports.",
    )
    parser.add_argument("--version", action="version", version=f"dropzone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    split = sub.add_parser(
        "split",
        help="split a CSV/TSV/SSV file into chunks under Marketo's 10 MB limit",
        description="Split FILE into chunks (header repeated, records never cut) and print the manifest.",
    )
    split.add_argument("file", type=Path, metavar="FILE")
    split.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the chunks are written")
    split.add_argument("--max-bytes", type=int, default=None, metavar="N", help="largest chunk, header included")
    split.add_argument("--format", choices=("csv", "tsv", "ssv"), default=None, help="default: from the extension")
    split.add_argument("--encoding", default=None, metavar="NAME", help="source encoding to transcode from (e.g. cp1252)")
    split.set_defaults(handler=_cmd_split)

    simulate = sub.add_parser(
        "simulate",
        help="run the bundled Marketo bulk-import simulator on 127.0.0.1",
        description="Run the Marketo bulk-import simulator. Options are passed through; see 'dropzone simulate --help'.",
        add_help=False,
    )
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    simulate.set_defaults(handler=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
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
