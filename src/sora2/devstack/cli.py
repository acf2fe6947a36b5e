"""The `sora2 dev` and `sora2 doctor` subcommands."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from sora2.commands import CommandExit, Commands, settings_or_exit
from sora2.devstack.console import wants_colour
from sora2.devstack.launcher import SERVICES, LaunchError, LaunchOptions, launch


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _dev(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    services = SERVICES if args.service in (None, "all") else (args.service,)
    options = LaunchOptions(
        services=services,
        strict_ports=args.strict_ports,
        reload=not args.no_reload,
        start_timeout=args.timeout,
        grace=args.grace,
        **({"watch_root": args.watch_root} if args.watch_root else {}),
    )
    try:
        return launch(settings, options)
    except LaunchError as error:
        raise CommandExit(str(error), 1) from None


def _register_dev(commands: Commands) -> None:
    dev = commands.add_parser(
        "dev",
        help="run the api (with its worker) and the web for development, supervised",
        description=(
            "Starts the api, waits for its health, then the web; one prefixed console, "
            "transcripts under LOG_DIR/dev/, restarts after crashes, reloads on code changes. "
            "Ctrl-C stops the web, then the api."
        ),
    )
    dev.add_argument(
        "service", nargs="?", choices=["all", *SERVICES], help="one service only (default: all)"
    )
    dev.add_argument(
        "--strict-ports",
        action="store_true",
        help="fail when a port is held by another process instead of taking the next free one",
    )
    dev.add_argument("--no-reload", action="store_true", help="do not restart on code changes")
    dev.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help="seconds a service may take to answer its health check (default 30)",
    )
    dev.add_argument(
        "--grace",
        type=_positive_seconds,
        default=10.0,
        help="seconds a service gets to stop after SIGTERM before SIGKILL (default 10)",
    )
    dev.add_argument(
        "--watch-root",
        type=Path,
        default=None,
        help="source tree to watch for reloads (default: the sora2 package)",
    )
    dev.set_defaults(handler=_dev)


def _doctor(args: argparse.Namespace) -> int:
    # Imported here: `sora2 dev` should not pay for the doctor's imports at every start.
    from sora2.devstack.doctor import diagnose
    from sora2.devstack.report import has_problems, render_json, render_table

    # Settings are loaded inside the checks: invalid ones are a finding, not a reason to stop.
    findings = diagnose()
    if args.json:
        print(render_json(findings))
    else:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"sora2 doctor, {stamp}, in {Path.cwd()}\n")
        print(render_table(findings, colour=wants_colour(sys.stdout)))
    return 1 if has_problems(findings) else 0


def _register_doctor(commands: Commands) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check ports, api, database, settings, folders; exit 1 with fixes for problems",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(handler=_doctor)


def register(commands: Commands) -> None:
    _register_dev(commands)
    _register_doctor(commands)
