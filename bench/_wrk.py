"""Runs wrk pinned to the load core and reads its summary as numbers, via a Lua `done` hook."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# wrk's own report rounds latencies for display; this hook prints the raw microseconds.
_SUMMARY_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_SUMMARY {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"non_2xx_3xx":%d,"socket_errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_us: float
    p99_us: float
    max_us: float
    non_2xx_3xx: int
    socket_errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


class Wrk:
    def __init__(self, workdir: Path, cpu: int) -> None:
        self._script = workdir / "summary.lua"
        self._script.write_text(_SUMMARY_SCRIPT)
        self._cpu = cpu

    def run(
        self, url: str, connections: int, seconds: float, headers: Sequence[str] = ()
    ) -> WrkResult:
        """`headers`: extra request headers, each as `Name: value`."""
        # One wrk thread: the load generator owns exactly one core.
        command = [
            "taskset", "-c", str(self._cpu), "wrk", "-t1", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(self._script),
            *(part for header in headers for part in ("-H", header)), url,
        ]  # fmt: skip
        completed = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=seconds + 30
        )
        for line in completed.stdout.splitlines():
            if line.startswith("BENCH_SUMMARY "):
                data = json.loads(line.removeprefix("BENCH_SUMMARY "))
                return WrkResult(
                    requests=data["requests"],
                    duration_s=data["duration_us"] / 1e6,
                    p50_us=float(data["p50_us"]),
                    p99_us=float(data["p99_us"]),
                    max_us=float(data["max_us"]),
                    non_2xx_3xx=data["non_2xx_3xx"],
                    socket_errors=data["socket_errors"],
                )
        raise RuntimeError(
            f"wrk gave no summary for {url} (exit {completed.returncode}): "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
