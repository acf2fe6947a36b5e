"""The `sora2` command: serve one service, run the dev stack, diagnose, manage the database.

Each domain contributes its own subcommands through a ``register(commands)`` function, so this
module only assembles them. Handlers load settings themselves (``settings_or_exit``): a command
such as ``sora2 doctor`` must still run, and explain, when the settings are invalid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeAlias

from sora2.settings import Settings, SettingsError, load_settings

# What each domain's `register(commands)` receives (a string: argparse's class is not generic at
# runtime on Python 3.11).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandExit(Exception):
    """Raised by a handler to end the command with a message and an exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def settings_or_exit() -> Settings:
    """The validated settings, or a `CommandExit` naming every invalid variable."""
    try:
        return load_settings()
    except SettingsError as error:
        raise CommandExit(str(error)) from None


def catalog_or_exit(settings: Settings, *, need_keys: bool = True) -> None:
    """Every service reads the model catalog: a broken one stops it at start, one line a problem.
    (The web shows the catalog but calls no provider, so it does not need their keys.)"""
    from sora2.catalog import CatalogError, load_catalog

    try:
        load_catalog(settings, need_keys=need_keys)
    except CatalogError as error:
        raise CommandExit(str(error)) from None


def _serve(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    catalog_or_exit(settings, need_keys=args.service != "web")
    if args.service == "api":
        from sora2.api.server import serve as serve_api

        serve_api(settings)
    elif args.service == "web":
        from sora2.web.server import serve as serve_web

        serve_web(settings)
    elif args.service == "worker":
        from sora2.api.cli import serve_worker

        return serve_worker(args)
    return 0


def _register_serve(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=["api", "web", "worker"])
    serve.set_defaults(handler=_serve)


def _register_api(commands: Commands) -> None:
    from sora2.api.cli import register

    register(commands)


def _register_devstack(commands: Commands) -> None:
    from sora2.devstack.cli import register

    register(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora2", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_serve(commands)
    _register_api(commands)
    _register_devstack(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CommandExit as error:
        print(f"sora2: {error}", file=sys.stderr)
        return error.code
    return code
