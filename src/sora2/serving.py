"""Several copies of one server on one port: `sora2 serve api|web --workers N`.

Each copy is a forked process that binds its own listening socket with `SO_REUSEPORT`; the kernel
spreads new connections over them. Nothing is shared between copies (no socket handed down, no
memory), so a copy that dies takes only its own connections with it and the others keep
answering. The parent only supervises: it restarts a copy that dies, forwards SIGTERM/SIGINT, and
gives up when a copy cannot even start (a port held by another program, migrations pending).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

# A copy that exits with an error sooner than this after starting failed to start (a signal is not
# a failure to start): restarting it would only loop.
START_FAILURE_SECONDS = 5.0
STOP_GRACE_SECONDS = 15.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Connections the kernel completes and queues for a server before it takes them (`listen()`'s
# backlog). Thousands of pages open their event streams at once (after a deploy or a restart,
# every viewer reconnects within a second); with a full queue the kernel drops the SYNs and the
# client waits a second or more before trying again. At 2,048, 5,000 simultaneous viewers held
# only ~3,000 connections. The kernel caps it at net.core.somaxconn (4,096 on most systems
# today; docs/deployment.md says how to raise it).
LISTEN_BACKLOG = 8192
# The garbage collector's youngest generation is collected after this many allocations (Python's
# default: 700). Each live viewer is a few hundred objects (a request, its response, tasks,
# futures, buffers); with thousands of them the default collects young objects many times per
# second, each time walking whatever survived. A larger first threshold does the same work in
# fewer, still short pauses (bench/gc_bench.py measures them).
GC_THRESHOLDS = (10_000, 10, 10)

ServeOne = Callable[[socket.socket | None, int], None]
"""Runs one copy: given its socket (None: bind as usual) and its number (0 when alone)."""


def default_workers(*, production: bool) -> int:
    """One process per core in production; one in development (reloads and logs stay simple)."""
    return (os.cpu_count() or 1) if production else 1


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes may bind to the same address too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def tune_garbage_collector() -> None:
    """Called first thing in a serving process: see `GC_THRESHOLDS`."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """Called once a server has started: everything alive by then (modules, the app, its
    settings, pools) lives as long as the process, so it is moved out of the collector's sight
    (`gc.freeze`). Full collections then walk only what requests created, which with thousands of
    viewers shortens the rare long pause of a full collection."""
    gc.collect()
    gc.freeze()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies, even by SIGKILL, so a copy never keeps
    serving, unsupervised, after the command that started it is gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_copy(serve_one: ServeOne, host: str, port: int, number: int) -> None:
    _die_with_parent()
    # The parent's wake-up pipe and handlers are not this process's business.
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    try:
        sock = reuse_port_socket(host, port)
    except OSError as error:
        print(f"sora2: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        sys.exit(1)
    try:
        serve_one(sock, number)
    finally:
        # A forked process ends with os._exit, skipping atexit: flush the buffered log lines here.
        logging.shutdown()


class _Copies:
    def __init__(self, serve_one: ServeOne, host: str, port: int, count: int) -> None:
        self._context = multiprocessing.get_context("fork")
        self._serve_one = serve_one
        self._host, self._port = host, port
        self._copies: dict[int, tuple[BaseProcess, float]] = {}
        self.count = count

    def start(self, number: int) -> None:
        process = self._context.Process(
            target=_run_copy,
            args=(self._serve_one, self._host, self._port, number),
            name=f"copy-{number}",
        )
        process.start()
        self._copies[number] = (process, time.monotonic())

    def sentinels(self) -> list[int]:
        return [process.sentinel for process, _ in self._copies.values()]

    def ended(self) -> list[tuple[int, int, float]]:
        """(number, exit code, seconds it ran) of each copy that has exited, forgotten here."""
        gone = []
        for number, (process, started) in list(self._copies.items()):
            if process.exitcode is not None:
                gone.append((number, process.exitcode, time.monotonic() - started))
                del self._copies[number]
        return gone

    def stop(self) -> None:
        for process, _ in self._copies.values():
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process, _ in self._copies.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()


def run_copies(serve_one: ServeOne, *, host: str, port: int, count: int, name: str) -> int:
    """Runs `count` copies of a server on `host:port`; returns the command's exit status."""
    if count <= 1:
        serve_one(None, 0)
        return 0
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stopping.append(received))
    copies = _Copies(serve_one, host, port, count)
    print(f"sora2: {name}: {count} processes on {host}:{port} (SO_REUSEPORT)", file=sys.stderr)
    for number in range(1, count + 1):
        copies.start(number)
    try:
        while not stopping:
            wait([*copies.sentinels(), wake_read], timeout=None)
            for number, code, ran in copies.ended():
                if stopping:
                    break
                if ran < START_FAILURE_SECONDS and code > 0:
                    print(
                        f"sora2: {name} process {number} failed to start (exit {code}); "
                        "stopping the others",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"sora2: {name} process {number} ended (exit {code}); starting it again",
                    file=sys.stderr,
                )
                copies.start(number)
            with contextlib.suppress(BlockingIOError):
                wake_read.recv(64)
        return 0
    finally:
        copies.stop()
        signal.set_wakeup_fd(-1)
        wake_read.close()
        wake_write.close()
