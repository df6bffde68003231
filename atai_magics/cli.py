"""The ``atai-magics`` console script: manage the embedded local backend from a shell.

::

    atai-magics local start [--home DIR] [--port N] [--concurrency N] [--faults SPEC]
    atai-magics local status [--home DIR] [--json]     exit 3 when not running (as LSB status)
    atai-magics local stop [--home DIR]
    atai-magics local reset [--home DIR] [--yes]

Every subcommand calls ``atai_magics.local.server``, the same API the extension uses. The
token is never printed: only the path of the file that holds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from atai_magics import __version__
from atai_magics.local import server
from atai_magics.local.faults import FaultSpec

__all__ = ["main"]

EXIT_NOT_RUNNING = 3


def _fault_spec(text: str) -> FaultSpec:
    try:
        return FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 (any free port) and 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atai-magics", description="Archetype AI Batch API tools for notebooks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local = commands.add_parser("local", help="the embedded local backend")
    actions = local.add_subparsers(dest="action", required=True, metavar="ACTION")

    # --home on every subcommand, so several backends can live side by side.
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        type=Path,
        default=None,
        help=f"state directory (default: ${server.ENV_HOME}, else {server.default_home()})",
    )

    start = actions.add_parser("start", parents=[home], help="start it, or reuse a running one")
    start.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (0: any free)")
    start.add_argument("--concurrency", type=_positive, default=2, help="jobs run at once")
    start.add_argument(
        "--faults",
        type=_fault_spec,
        default=FaultSpec(),
        metavar="SPEC",
        help='inject faults, e.g. "error_rate=0.1,rate_limit_rate=0.05,latency_ms=50,'
        'drop_rate=0.02,crash_rate=0.0" (keys also: retry_after, seed)',
    )
    start.add_argument("--wait", type=float, default=15.0, help=argparse.SUPPRESS)

    status = actions.add_parser("status", parents=[home], help="is it running, where, jobs")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    actions.add_parser("stop", parents=[home], help="stop it (SIGTERM, then SIGKILL)")

    reset = actions.add_parser("reset", parents=[home], help="stop it and delete its state")
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    return parser


def _print_status(st: server.ServerStatus) -> None:
    jobs = ", ".join(f"{n} {name}" for name, n in st.jobs.items() if n) or (
        "none" if st.jobs else "unknown"
    )
    rows = [
        ("running", "yes" if st.running else "no"),
        ("url", st.url or "-"),
        ("pid", str(st.pid) if st.pid is not None else "-"),
        ("home", str(st.home)),
        ("token_file", str(st.token_file)),
    ]
    if st.running:
        rows += [("started_at", st.started_at or "-"), ("faults", st.faults or "off")]
        rows.append(("jobs", jobs))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _run(args: argparse.Namespace) -> int:
    if args.action == "start":
        info = server.start(
            args.home,
            port=args.port,
            concurrency=args.concurrency,
            faults=args.faults,
            wait=args.wait,
        )
        verb = "Already running" if info.reused else "Started"
        print(f"{verb}: {info.url} (pid {info.pid})")
        print(f"home:       {info.home}")
        print(f"token_file: {info.token_file}")
        return 0
    if args.action == "status":
        st = server.status(args.home)
        if args.json:
            print(json.dumps(st.to_json(), indent=2))
        else:
            _print_status(st)
        return 0 if st.running else EXIT_NOT_RUNNING
    if args.action == "stop":
        pid = server.stop(args.home)
        print(f"Stopped (pid {pid})." if pid is not None else "Not running.")
        return 0
    if args.action == "reset":
        home = (args.home or server.default_home()).expanduser().resolve()
        question = f"Stop the local backend and delete all its jobs and files in {home}?"
        if not args.yes and not _confirm(question):
            print("Nothing deleted.")
            return 1
        removed = server.reset(home)
        print(f"Reset {home}: removed {len(removed)} item(s); the token is kept.")
        return 0
    raise AssertionError(args.action)  # argparse only lets known actions through


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``atai-magics`` and ``python -m atai_magics.cli``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (server.LocalServerError, OSError, ValueError) as exc:
        print(f"atai-magics: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
