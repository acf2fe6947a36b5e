"""Instructions per request under callgrind: a cost figure that other processes cannot disturb.

On a shared 2-core machine req/s and CPU time move with everyone else's load; the number of
instructions a server executes per request does not (two windows of the same server agree within
0.1 %). `--profile` reports it for a ladder from the bare pass-through up to production, so a
change to the proxy can be judged, layer by layer, even while the machine is busy.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench._processes import Server

# Under callgrind a Python server runs ~50x slower: generous start-up, modest request counts.
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class InstructionCount:
    name: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind_available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def count_instructions(
    server: Server, port: int, path: str, warmup: int, requests: int
) -> InstructionCount:
    """Run `server` under callgrind and count the instructions of `requests` GETs of `path`.

    Instrumentation starts only after start-up and `warmup` requests (imports, first-call caches
    and connection pools are not the steady state), and counting only after it is zeroed.
    """
    out_dir = server.log_path.parent / f"callgrind-{port}"
    out_dir.mkdir(parents=True, exist_ok=True)
    server.command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out", *server.command,
    ]  # fmt: skip
    server.start()
    try:
        server.wait_until(f"http://127.0.0.1:{port}{path}", None, timeout=STARTUP_TIMEOUT_S)
        _control(server.pid, "--instr=on")
        _get_many(port, path, warmup)
        _control(server.pid, "--zero")
        _get_many(port, path, requests)
        _control(server.pid, "--dump=window")
        dumps = sorted(out_dir.glob("callgrind.out.*"), key=lambda dump: dump.stat().st_mtime)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {server.name} in {out_dir}")
        return InstructionCount(server.name, requests, _summary(dumps[-1]))
    finally:
        server.stop()


def _control(pid: int, action: str) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)


def _get_many(port: int, path: str, count: int) -> None:
    """`count` GETs one after another on one kept-alive connection, each checked for a 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path} answered {response.status} under callgrind")
    finally:
        connection.close()


def _summary(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dump} has no summary line")


def instructions_section(counts: list[InstructionCount]) -> str:
    """A ladder of servers, cheapest first: each row says what its layer adds to the one above."""
    lines = [
        "### Instructions per request (callgrind, 1 connection)",
        "",
        "User-space instructions (the kernel's socket work is not counted), over sequential GETs "
        "on one kept-alive connection after a warm-up; independent of the machine's load (repeat "
        "runs agree within 0.1 %). Each row adds one layer to the row above.",
        "",
        "| server | requests counted | instructions per request | added by this layer "
        "| x first row |",
        "|---|---:|---:|---:|---:|",
    ]
    floor = counts[0].per_request if counts else 0.0
    previous = None
    for count in counts:
        added = "-" if previous is None else f"{count.per_request - previous:+,.0f}"
        ratio = f"{count.per_request / floor:.2f}" if floor else "-"
        lines.append(
            f"| {count.name} | {count.requests} | {count.per_request:,.0f} | {added} | {ratio} |"
        )
        previous = count.per_request
    return "\n".join(lines) + "\n"
