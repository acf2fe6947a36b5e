"""A TCP relay between the proxy and its backend that injects real faults on loopback.

Each accepted connection is handled by the fault at the front of `faults` (then removed), or by
`default` when the queue is empty. Health checks (`GET /api/health…`) always pass, so background
checks never consume a fault meant for a request; the proxy under test should not reuse
connections (`keepalive_timeout=0`), so that every request meets a fault of its own.

- PASS: relay both ways untouched.
- RESET_BEFORE_REQUEST: accept, then reset (RST) before reading a byte.
- RESET_AFTER_REQUEST: read the request head and body, forward them to the backend (so it acts
  on them), then reset the client's connection before any response byte.
- RESET_MID_BODY: read the request head and some body bytes, then reset (the backend gets none).
- TRUNCATE: relay, but cut the response off after `truncate_after` bytes (then close cleanly).
- STALL: accept and read, never answer.
Refusing connections is the relay being stopped; `blackhole_port` gives a port whose connects hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections import deque
from collections.abc import Iterator


class Fault(enum.Enum):
    PASS = "pass"
    RESET_BEFORE_REQUEST = "reset_before_request"
    RESET_AFTER_REQUEST = "reset_after_request"
    RESET_MID_BODY = "reset_mid_body"
    TRUNCATE = "truncate"
    STALL = "stall"


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_body(head: bytes, reader: asyncio.StreamReader) -> bytes:
    """The body of a request with a Content-Length (enough for the tests that use it)."""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return await reader.readexactly(length) if length else b""


class FaultRelay:
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.faults: deque[Fault] = deque()
        self.default = Fault.PASS
        self.truncate_after = 1024
        self.connections = 0
        self.faults_applied: list[Fault] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", port or self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (connections are now refused) and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_fault(self, head: bytes) -> Fault:
        if head.startswith(b"GET /api/health"):
            return Fault.PASS
        fault = self.faults.popleft() if self.faults else self.default
        self.faults_applied.append(fault)
        return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            fault = self._next_fault(head)
            if fault is Fault.RESET_BEFORE_REQUEST:
                _reset(writer)
                return
            if fault is Fault.RESET_MID_BODY:
                await reader.read(1)  # the proxy has started sending the body
                _reset(writer)
                return
            if fault is Fault.STALL:
                await asyncio.Event().wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
            try:
                if fault is Fault.RESET_AFTER_REQUEST:
                    up_writer.write(head + await _read_body(head, reader))
                    await up_writer.drain()
                    await up_reader.readuntil(b"\r\n\r\n")  # the backend has acted on it
                    _reset(writer)
                    return
                up_writer.write(head)
                limit = self.truncate_after if fault is Fault.TRUNCATE else None
                await asyncio.gather(
                    self._pipe(reader, up_writer, None),
                    self._pipe(up_reader, writer, limit),
                )
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> None:
        sent = 0
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if limit is not None and sent + len(data) >= limit:
                writer.write(data[: limit - sent])
                await writer.drain()
                writer.close()
                return
            writer.write(data)
            sent += len(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


@contextlib.contextmanager
def blackhole_port() -> Iterator[int]:
    """A listening socket whose accept queue is full: further connects hang (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
