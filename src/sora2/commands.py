"""What every domain's commands share: the subcommand registry type, the error that ends a command,
and settings loaded so that a bad variable becomes a message rather than a traceback.

A leaf: it imports only `sora2.settings` (and, when called, `sora2.catalog`, a leaf too), so
`sora2.cli` (which assembles the commands) and each domain's `cli` module (which contributes them)
both depend on it and never on each other.
"""

from __future__ import annotations

import argparse
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
