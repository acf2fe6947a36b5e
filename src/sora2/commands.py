"""What every domain's commands share: the subcommand registry type, the error that ends a command,
and settings loaded so that a bad variable becomes a message rather than a traceback.

A leaf: it imports only `sora2.settings`, so `sora2.cli` (which assembles the commands) and each
domain's `cli` module (which contributes them) both depend on it and never on each other.
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
