"""Who holds a port, and which port to take instead, without ever touching the holder."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import re
import socket
from collections.abc import Collection, Sequence

import psutil

# How far `next_free_port` looks above the wanted port before giving up.
PORT_SEARCH_SPAN = 100

# Words that mark an option or assignment whose value is a secret (a pattern, not a password).
_SECRET_WORDS = r"(?:pass|secret|token|key|auth|credential)"  # noqa: S105
_SECRET_OPTION = re.compile(rf"-{{1,2}}[\w-]*{_SECRET_WORDS}[\w-]*|-p", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(rf"(-{{0,2}}[\w.-]*{_SECRET_WORDS}[\w.-]*[=:])", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PortHolder:
    """The process listening on a port, as far as this user may see it."""

    pid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see (run `ss -ltnp` as its owner)"
        return f"PID {self.pid} ({self.command})"


def connect_host(bind_host: str) -> str:
    """The address a client on this machine uses to reach a server bound to `bind_host`."""
    if bind_host in ("0.0.0.0", ""):  # a wildcard: reach it on loopback
        return "127.0.0.1"
    if bind_host == "::":
        return "::1"
    return bind_host


def url_host(host: str) -> str:
    """`host` as it is written inside a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def can_bind(host: str, port: int) -> bool:
    """True when a server could listen on host:port now (same SO_REUSEADDR as uvicorn/aiohttp)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def bind_problem(host: str) -> str | None:
    """Why nothing at all can listen on `host` (not an address of this machine), or None."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"{host!r} does not resolve ({error.strerror})"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(address)
        except OSError as error:
            return f"cannot listen on {host}: {error.strerror}"
    return None


def holder_of(port: int) -> PortHolder | None:
    """The process listening on `port` on any address, or None when nobody listens."""
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return PortHolder(None, "")
    for connection in connections:
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port:
            continue
        if connection.pid is None:
            return PortHolder(None, "")
        return PortHolder(connection.pid, command_of(connection.pid))
    return None


def command_of(pid: int) -> str:
    """The command line of `pid`, secrets masked, shortened for one line of output."""
    with contextlib.suppress(psutil.Error):
        parts = psutil.Process(pid).cmdline()
        if parts:
            return describe_command(parts)
    return "command unknown"


def describe_command(parts: Sequence[str]) -> str:
    """One line for a command: values of secret-looking options masked, at most 120 characters.

    A foreign process's command line ends up in the console and the launcher's log, and some
    programs take passwords as arguments (`--password hunter2`, `token=…`).
    """
    shown: list[str] = []
    for index, part in enumerate(parts):
        if index and _SECRET_OPTION.fullmatch(parts[index - 1]):
            shown.append("***")
        elif match := _SECRET_ASSIGNMENT.match(part):
            shown.append(f"{match.group(1)}***")
        else:
            shown.append(part)
    text = " ".join(" ".join(shown).split())  # one line, even for `python -c` code
    return text if len(text) <= 120 else text[:117] + "..."


def next_free_port(host: str, wanted: int, *, avoid: Collection[int] = ()) -> int | None:
    """The first port above `wanted` that can be bound on `host` and is not in `avoid`."""
    for port in range(wanted + 1, min(wanted + 1 + PORT_SEARCH_SPAN, 65536)):
        if port not in avoid and can_bind(host, port):
            return port
    return None
