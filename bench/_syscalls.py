"""`--profile`: system calls and context switches per request, counted with strace under load.

CPU time per request moves with the machine's load; what the kernel is asked to do per request
does not. `strace -c -f` on a running server during a wrk run counts every system call of every
thread; /proc's context-switch counters say whether threads wake each other up. Both are divided
by the requests wrk completed. strace slows the server down, so the counts, not its timings,
are reported.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The columns of `strace -c`: % time, seconds, usecs/call, calls, [errors], syscall.
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(?P<calls>\d+)\s+(?:\d+\s+)?(?P<name>\w+)$")
SHOWN = 6


@dataclass
class SyscallCount:
    name: str
    requests: int
    calls: dict[str, int] = field(default_factory=dict)
    threads: int = 0
    switches_per_request: float = 0.0
    """Context switches (voluntary + involuntary, all threads) per request, measured untraced."""

    def per_request(self, count: int) -> float:
        return count / self.requests if self.requests else 0.0


def strace_available() -> bool:
    return shutil.which("strace") is not None


def parse_strace_summary(text: str) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match and match["name"] != "total":
            calls[match["name"]] = int(match["calls"])
    return calls


def _context_switches(pid: int) -> tuple[int, int]:
    """Voluntary + involuntary switches summed over the process's threads, and the threads."""
    total = 0
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:  # voluntary_… and nonvoluntary_…
                total += int(line.split()[1])
    return total, len(tasks)


def count_syscalls(name: str, pid: int, load: Callable[[], int], out: Path) -> SyscallCount:
    """Count `pid`'s context switches during one `load()` (it returns the requests it made),
    then its system calls (all threads) during another: under strace every call is a switch."""
    switches_before, _ = _context_switches(pid)
    untraced = load()
    switches_after, threads = _context_switches(pid)
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        requests = load()
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches and writes its summary
        tracer.wait(timeout=30)
    count = SyscallCount(name, requests, parse_strace_summary(out.read_text()), threads=threads)
    count.switches_per_request = (switches_after - switches_before) / max(untraced, 1)
    return count


def syscalls_section(counts: list[SyscallCount]) -> str:
    names = sorted(
        {name for count in counts for name in count.calls},
        key=lambda name: -max(count.per_request(count.calls.get(name, 0)) for count in counts),
    )[:SHOWN]
    lines = [
        "### System calls per request (strace -c -f, wrk at 64 connections)",
        "",
        "| server | threads | all calls | " + " | ".join(names) + " | context switches |",
        "|---|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for count in counts:
        cells = [f"{count.per_request(count.calls.get(name, 0)):.2f}" for name in names]
        lines.append(
            f"| {count.name} | {count.threads} | {count.per_request(sum(count.calls.values())):.2f}"
            f" | {' | '.join(cells)} | {count.switches_per_request:.3f} |"
        )
    return "\n".join(lines) + "\n"
