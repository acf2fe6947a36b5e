"""The web's memory per held event stream, alone: `python -m bench._web_memory [N] [--trace]`.

The real web application (`create_app`, production settings, the servers' garbage-collector
tuning and start-up freeze, uvloop) runs in this process; a raw backend in another answers every
request with the api's event-stream head (the same ten headers, chunked) and a first event; N
viewers (`bench/_viewers.py`, a JWT-sized token) come from a third. Prints the RSS growth per
viewer held and, with `--trace`, the `tracemalloc` snapshot diff grouped by traceback (largest
first). No database, no api, no other load: the streams bench's web figure without its noise.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import tracemalloc
from multiprocessing.queues import Queue

import uvloop
from aiohttp import web

from bench._viewers import open_viewers, raise_open_file_limit

HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 05:18:16 GMT\r\nserver: uvicorn\r\n"
    b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\nvary: Origin\r\n"
    b"x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n"
    b"referrer-policy: no-referrer\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENT = b'id: queued-0\nevent: progress\ndata: {"id":"x","status":"queued","progress":0}\n\n'
HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
TOKEN = "eyJ" + "x" * 300  # as long as the api's access tokens


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _EventBackend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.WriteTransport)
        if data.startswith(b"GET /api/health"):
            self.transport.write(HEALTH)
        elif b"\r\n\r\n" in data:
            self.transport.write(HEAD + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n")


def _backend(port: int) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_EventBackend, "127.0.0.1", port, backlog=8192)
        await asyncio.Event().wait()

    asyncio.run(serve())


def _viewers(port: int, count: int, held: Queue[int]) -> None:
    raise_open_file_limit()

    async def watch() -> None:
        streams = [("/api/proxy/videos/abc/events", TOKEN)] * count
        viewers = await open_viewers(port, streams, wave=200, timeout=60)
        held.put(sum(1 for viewer in viewers if viewer.held))
        await asyncio.Event().wait()

    asyncio.run(watch())


async def _until_listening(port: int, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _measure(count: int, trace: bool) -> None:
    from sora2.serving import freeze_startup_objects, tune_garbage_collector
    from sora2.settings import load_settings
    from sora2.web.app import create_app

    spawn = multiprocessing.get_context("spawn")
    backend_port, web_port = _free_port(), _free_port()
    backend = spawn.Process(target=_backend, args=(backend_port,), daemon=True)
    backend.start()
    await _until_listening(backend_port)
    folder = tempfile.mkdtemp(prefix="sora2-web-memory-")
    settings = load_settings(
        app_env="production",
        jwt_secret="s" * 40,
        api_url=f"http://127.0.0.1:{backend_port}",
        web_port=web_port,
        data_dir=folder,
        log_dir=folder,
        frontend_url=f"http://127.0.0.1:{web_port}",
    )
    tune_garbage_collector()
    runner = web.AppRunner(create_app(settings), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", web_port, backlog=8192).start()
    freeze_startup_objects()
    await asyncio.sleep(1)  # the proxy's first health check, and its allocations, are done
    gc.collect()
    if trace:
        tracemalloc.start(12)
    before, snapshot = _rss(), tracemalloc.take_snapshot() if trace else None
    held_queue: Queue[int] = spawn.Queue()
    viewers = spawn.Process(target=_viewers, args=(web_port, count, held_queue), daemon=True)
    viewers.start()
    held = await asyncio.get_running_loop().run_in_executor(None, held_queue.get)
    await asyncio.sleep(2)  # the last viewers' first events are through
    gc.collect()
    print(f"{held} viewers held: web RSS {(_rss() - before) / held / 1024:.1f} KiB per viewer")
    if snapshot is not None:
        _print_trace(tracemalloc.take_snapshot().compare_to(snapshot, "traceback"), held)
    viewers.kill()
    backend.kill()


def _print_trace(stats: list[tracemalloc.StatisticDiff], held: int) -> None:
    print(f"Python objects: {sum(stat.size_diff for stat in stats) / held / 1024:.1f} KiB")
    for stat in stats[:25]:
        print(f"{stat.size_diff / held:8.0f} B {stat.count_diff / held:5.1f} objects")
        for line in stat.traceback.format()[-8:]:
            print("      ", line)


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2000
    uvloop.run(_measure(count, "--trace" in sys.argv))


if __name__ == "__main__":
    main()
