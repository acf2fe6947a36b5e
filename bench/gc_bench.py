"""Garbage-collector pauses with thousands of live viewers (`python -m bench gc`).

Each configuration runs in a fresh process that imports the api and the web (their start-up
heap), then holds `viewers` live object graphs the size of a viewer's (a request, its headers,
a task's frames and futures, buffers: ~200 containers, some in reference cycles), then serves
`REQUESTS` short requests' worth of allocations (containers, some cyclic, dropped at once) while
`gc.callbacks` times every collection. "default" is Python's own collector (700, 10, 10, nothing
frozen); "tuned" is what `sora2 serve` does (`sora2.serving.GC_THRESHOLDS`, start-up objects
frozen). It measures the collector alone, not a server, so it takes seconds.
"""

from __future__ import annotations

import gc
import importlib
import json
import subprocess
import sys
import time

VIEWERS = (1_000, 5_000)
QUICK_VIEWERS = (1_000,)
REQUESTS = 20_000
QUICK_REQUESTS = 5_000
CONTAINERS_PER_VIEWER = 200
CONTAINERS_PER_REQUEST = 150


class _Node:
    __slots__ = ("children", "owner", "payload")

    def __init__(self, owner: object, payload: object) -> None:
        self.owner = owner
        self.payload = payload
        self.children: list[object] = []


def _graph(size: int) -> _Node:
    """`size` containers, each pointing back at the root (a cycle, as tasks and frames make)."""
    root = _Node(None, {})
    for index in range(size - 1):
        node = _Node(root, {"i": index, "name": "x-header"} if index % 2 else [index])
        root.children.append(node)
    return root


def _measure(viewers: int, requests: int, tuned: bool) -> dict[str, float]:
    for module in ("sora2.api.app", "sora2.web.app"):
        importlib.import_module(module)  # the start-up heap, as a server has it
    from sora2.serving import freeze_startup_objects, tune_garbage_collector

    if tuned:
        tune_garbage_collector()
        freeze_startup_objects()
    held = [_graph(CONTAINERS_PER_VIEWER) for _ in range(viewers)]
    pauses: list[float] = []
    started = [0.0]

    def timer(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(timer)
    began = time.perf_counter()
    for _ in range(requests):
        _graph(CONTAINERS_PER_REQUEST)
    elapsed = time.perf_counter() - began
    gc.callbacks.remove(timer)
    del held
    pauses.sort()
    return {
        "collections": len(pauses),
        "total_ms": sum(pauses) * 1000,
        "p99_ms": pauses[int(len(pauses) * 0.99)] * 1000 if pauses else 0.0,
        "max_ms": pauses[-1] * 1000 if pauses else 0.0,
        "elapsed_s": elapsed,
    }


def _in_child(viewers: int, requests: int, tuned: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.gc_bench", str(viewers), str(requests)]
    if tuned:
        command.append("tuned")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def run(quick: bool) -> str:
    requests = QUICK_REQUESTS if quick else REQUESTS
    lines = [
        "## Garbage-collector pauses with live viewers",
        "",
        f"`python -m bench gc{' --quick' if quick else ''}`: {requests:,} requests' allocations "
        f"({CONTAINERS_PER_REQUEST} containers each) while N viewers "
        f"({CONTAINERS_PER_VIEWER} containers each) are held.",
        "",
        "| viewers | collector | collections | total pause | p99 pause | longest pause "
        "| run time |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for viewers in QUICK_VIEWERS if quick else VIEWERS:
        for tuned in (False, True):
            result = _in_child(viewers, requests, tuned)
            lines.append(
                f"| {viewers:,} | {'tuned' if tuned else 'default'} | "
                f"{result['collections']:,.0f} | {result['total_ms']:,.0f} ms | "
                f"{result['p99_ms']:.2f} ms | {result['max_ms']:.1f} ms | "
                f"{result['elapsed_s']:.2f} s |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]), int(sys.argv[2]), "tuned" in sys.argv[3:])))
