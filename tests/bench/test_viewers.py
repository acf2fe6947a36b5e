"""The streams bench's viewers must see what a browser's EventSource sees, or no figure holds:
events split anywhere by the network, chunked bodies, refusals and silent servers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from bench._viewers import delivery_seconds, open_viewers, percentile
from bench.streams_bench import THROUGH_WEB, Ordinary, Plan, Round, report

from tests.fakes.servers import RunningServer, start_app

EVENTS = (
    b"id: queued-0\nevent: progress\ndata: {}\n\n"
    b": keep-alive\n\n"
    b"id: in_progress-10\nevent: progress\ndata: {}\n\n"
    b"id: in_progress-20\nevent: progress\ndata: {}\n\n"
)


async def _split_stream(request: web.Request) -> web.StreamResponse:
    """The events in pieces of 7 bytes, each its own chunk: ids are cut mid-line."""
    if request.headers.get("Authorization") != "Bearer good":
        return web.Response(status=401)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(EVENTS), 7):
        await response.write(EVENTS[start : start + 7])
        await asyncio.sleep(0.001)  # separate reads on the client's side
    await asyncio.sleep(30)  # held open, as a live stream is
    return response


async def _silent(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(30)
    return response


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    app = web.Application()
    app.router.add_get("/events", _split_stream)
    app.router.add_get("/silent", _silent)
    running = await start_app(app)
    try:
        yield running
    finally:
        await running.stop()


async def test_viewers_record_each_progress_once_whatever_the_splits(
    server: RunningServer,
) -> None:
    viewers = await open_viewers(server.port, [("/events", "good")] * 20, wave=5, timeout=5)
    try:
        assert all(viewer.held for viewer in viewers)

        async def all_arrived() -> bool:
            return all(set(viewer.arrivals) == {10, 20} for viewer in viewers)

        async with asyncio.timeout(5):
            while not await all_arrived():
                await asyncio.sleep(0.01)
    finally:
        for viewer in viewers:
            viewer.close()


async def test_refused_and_silent_streams_are_not_held(server: RunningServer) -> None:
    viewers = await open_viewers(
        server.port, [("/events", "bad"), ("/silent", "good")], wave=2, timeout=0.5
    )
    assert [viewer.held for viewer in viewers] == [False, False]
    assert viewers[0].status == 401


def test_delivery_counts_a_viewer_that_never_received_as_infinitely_late() -> None:
    class Seen:
        def __init__(self, arrivals: dict[int, float]) -> None:
            self.arrivals = arrivals

    viewers = [Seen({10: 1.5}), Seen({10: 1.2}), Seen({})]
    delays = delivery_seconds(viewers, 10, sent_at=1.0)  # type: ignore[arg-type]
    assert delays[:2] == pytest.approx([0.2, 0.5])
    assert math.isinf(delays[2])
    assert percentile(delays, 0.5) == pytest.approx(0.5)
    assert math.isinf(percentile(delays, 0.99))


def test_the_report_names_each_target_and_its_verdict() -> None:
    quick = Ordinary([1.0, 2.0, 60.0], errors=0)
    round_ = Round(
        route=THROUGH_WEB,
        viewers=500,
        held=256,
        open_seconds=1.0,
        baseline=quick,
        loaded=quick,
        web_kib_per_viewer=12.0,
        api_kib_per_viewer=20.0,
        web_open_ms_per_viewer=0.5,
        api_open_ms_per_viewer=1.0,
        web_change_us_per_viewer=30,
        api_change_us_per_viewer=40,
        statements_per_second=1.2,
        poller_queries_per_second=1.0,
        delivery_p99_s=[0.05, math.inf],
        delivery_p50_s=[0.02, 0.03],
        still_held=256,
    )
    text = report([round_], Plan((500,), 1, 1, 2), others=0.1)
    route = "web → proxy → api"
    assert f"| 500 viewers held | {route} | 256 | **missed** |" in text
    assert f"| ordinary p99 ≤ 50 ms while open, no error | {route} | 60.0 ms, 0 errors | " in text
    assert f"| a change reaches 99 % within 1 s | {route} | never ms | **missed** |" in text
    assert f"| ≤ 20 KiB web RSS per viewer | {route} | 12.0 KiB | met |" in text
