"""Development reload: watch the package's source and restart only the services a change affects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import watchfiles

import sora2

PACKAGE_ROOT = Path(sora2.__file__).resolve().parent

# Which top-level parts of the package each service runs. A change elsewhere in the package
# (settings, logging, the CLI, a part added later) may reach both, so both restart.
_PARTS_OF: Mapping[str, frozenset[str]] = {
    "api": frozenset({"api"}),
    "web": frozenset({"web", "proxy"}),
}
# The launcher's own code: a change there needs `sora2 dev` itself restarted, not a service.
_NOT_A_SERVICE = frozenset({"devstack"})
# Static assets are read from disk on every request; a restart would gain nothing.
_RELOADING_SUFFIXES = frozenset({".py", ".html", ".jinja", ".j2", ".ini", ".mako", ".toml"})


def services_affected(path: Path, *, root: Path, services: Iterable[str]) -> set[str]:
    """Which of `services` must restart after `path` (a file under `root`) changed."""
    if path.suffix not in _RELOADING_SUFFIXES:
        return set()
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return set()
    top = relative.parts[0] if len(relative.parts) > 1 else ""
    if top in _NOT_A_SERVICE or "__pycache__" in relative.parts:
        return set()
    running = set(services)
    owners = {name for name, parts in _PARTS_OF.items() if top in parts}
    return (owners or running) & running


ReloadCallback = Callable[[str, Sequence[str]], None]


async def watch_and_reload(
    *,
    root: Path,
    services: Sequence[str],
    on_change: ReloadCallback,
    stop: asyncio.Event,
) -> None:
    """Calls `on_change(service, changed_files)` for each service a batch of changes affects."""
    async for changes in watchfiles.awatch(
        root, stop_event=stop, debounce=200, step=50, recursive=True
    ):
        affected: dict[str, list[str]] = {}
        for _, changed in changes:
            path = Path(changed)
            for service in services_affected(path, root=root, services=services):
                affected.setdefault(service, []).append(_short(path, root))
        for service in services:  # api before web, as at start
            if service in affected:
                on_change(service, affected[service])


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return path.name
