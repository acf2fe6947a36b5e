"""The `sora2` command: serve one service, run the dev stack, diagnose, manage the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sora2.settings import Settings, SettingsError, load_settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.service == "api":
        from sora2.api.server import serve as serve_api

        serve_api(settings)
    elif args.service == "web":
        from sora2.web.server import serve as serve_web

        serve_web(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=["api", "web"])
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"sora2: {error}", file=sys.stderr)
        return 2
    code: int = args.handler(args, settings)
    return code
