"""The `sora2` command: serve one service, run the dev stack, diagnose, manage the database.

Each domain contributes its own subcommands through a ``register(commands)`` function, so this
module only assembles them. It is a leaf: only the entry point imports it; what the domains'
commands share lives in `sora2.commands`. Handlers load settings themselves
(``settings_or_exit``): a command such as ``sora2 doctor`` must still run, and explain, when the
settings are invalid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sora2.api.cli import register as register_api
from sora2.api.storage.cli import register as register_storage
from sora2.commands import CommandExit, Commands, catalog_or_exit, settings_or_exit
from sora2.devstack.cli import register as register_devstack


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of processes") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 process")
    return value


def _serve(args: argparse.Namespace) -> int:
    from sora2.serving import default_workers

    settings = settings_or_exit()
    catalog_or_exit(settings, need_keys=args.service != "web")
    workers = args.workers or default_workers(production=settings.is_production)
    if args.service == "api":
        from sora2.api.server import RefusedToStart
        from sora2.api.server import serve as serve_api

        try:
            return serve_api(settings, workers=workers)
        except RefusedToStart as error:
            raise CommandExit(str(error), 1) from None
    if args.service == "web":
        from sora2.web.server import serve as serve_web

        return serve_web(settings, workers=workers)
    if args.workers is not None:
        raise CommandExit(
            "--workers applies to `serve api` and `serve web`; "
            "run `sora2 serve worker` once per worker process instead"
        )
    from sora2.api.cli import serve_worker

    return serve_worker(args)


def _register_serve(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=["api", "web", "worker"])
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="api and web: N processes sharing the port with SO_REUSEPORT, nothing shared "
        "between them (default: one per core in production, one in development)",
    )
    serve.set_defaults(handler=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora2", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_serve(commands)
    register_api(commands)
    register_storage(commands)
    register_devstack(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CommandExit as error:
        print(f"sora2: {error}", file=sys.stderr)
        return error.code
    return code
