"""How long `sora2 dev` takes from the command to "all ready", cold and warm.

Cold: an empty bytecode cache (a fresh `PYTHONPYCACHEPREFIX`, so every module of the launcher,
the api, the web and their libraries is compiled again; nothing in the checkout is deleted) and
a fresh data folder. Warm: the usual caches, a data folder used before. Each run is a real
`python -m sora2 dev --no-reload` on free ports in a scratch folder, timed from the spawn to
its "all ready" line, then stopped with SIGINT. Import times say where the time goes.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench._noise import others_share, snapshot

READY = re.compile(r"all ready in ([\d.]+) s")
SERVICE_READY = re.compile(r"(api|web) ready on \S+ \(([\d.]+) s\)")
START_TIMEOUT = 120.0
TARGET_WARM_SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(folder: Path, pycache: Path | None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("API_", "WEB_", "DATABASE_", "PYTHONPYCACHEPREFIX"))
    }
    env.update(
        DATA_DIR=str(folder / "data"),
        LOG_DIR=str(folder / "logs"),
        API_PORT=str(_free_port()),
        WEB_PORT=str(_free_port()),
        NO_COLOR="1",
    )
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def time_one_start(folder: Path, pycache: Path | None = None) -> dict[str, float]:
    """Seconds from spawning `sora2 dev` to its ready line, plus each service's own figure."""
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sora2", "dev", "--no-reload"],
        cwd=folder,
        env=_environment(folder, pycache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    figures: dict[str, float] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if match := SERVICE_READY.search(line):
                figures[match.group(1)] = float(match.group(2))
            if READY.search(line):
                figures["total"] = time.perf_counter() - began
                figures["cpu"] = _tree_cpu_seconds(process.pid)
                break
            if time.perf_counter() - began > START_TIMEOUT:
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    if "total" not in figures:
        raise RuntimeError(f"sora2 dev did not get ready (exit {process.returncode})")
    return figures


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process and its live descendants have used so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _cpu_of(command: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_cpu_seconds(module: str, *, repeats: int) -> float:
    """Median CPU time of `python -c 'import module'` minus a bare interpreter's.

    CPU time rather than wall time: it hardly changes when other processes share the cores.
    """
    bare = statistics.median(_cpu_of([sys.executable, "-c", "pass"]) for _ in range(repeats))
    loaded = statistics.median(
        _cpu_of([sys.executable, "-c", f"import {module}"]) for _ in range(repeats)
    )
    return max(0.0, loaded - bare)


def _row(label: str, runs: list[dict[str, float]]) -> str:
    totals = [run["total"] for run in runs]
    cpu = statistics.median(run["cpu"] for run in runs)
    api = statistics.median(run.get("api", 0.0) for run in runs)
    web = statistics.median(run.get("web", 0.0) for run in runs)
    return (
        f"| {label} | {len(runs)} | {statistics.median(totals):.2f} s | {min(totals):.2f} s | "
        f"{max(totals):.2f} s | {cpu:.2f} s | {api:.2f} s | {web:.2f} s |"
    )


def run(quick: bool) -> str:
    warm_runs = 3 if quick else 7
    before = snapshot()
    with tempfile.TemporaryDirectory(prefix="sora2-devstack-bench-") as scratch:
        root = Path(scratch)
        cold = [time_one_start(root / "cold", pycache=root / "pycache")]
        time_one_start(root / "warm")  # fills the data folder and the caches
        warm = [time_one_start(root / "warm") for _ in range(warm_runs)]
    repeats = 3 if quick else 5
    imports = {
        name: import_cpu_seconds(module, repeats=repeats)
        for name, module in (
            ("api", "sora2.api.server"),
            ("web", "sora2.web.server"),
            ("launcher", "sora2.devstack.launcher"),
        )
    }
    noise = others_share(before, snapshot())
    warm_median = statistics.median(run["total"] for run in warm)
    verdict = "met" if warm_median <= TARGET_WARM_SECONDS else "NOT met"
    return "\n".join(
        [
            "## Dev stack",
            "",
            "Time from `sora2 dev` to its `all ready` line (api healthy, then web healthy), "
            "measured from outside by `python -m bench devstack` (`bench/devstack_bench.py`). "
            "Cold: empty bytecode cache (fresh `PYTHONPYCACHEPREFIX`) and a fresh data folder; "
            "warm: caches and data folder from an earlier run. The api column is its spawn to "
            "its first `200` from `/api/health`; the web column likewise for `/healthz` (it "
            "starts only once the api is up). CPU to ready: user + system seconds that the "
            "launcher and its services had used at that moment (median), which other load "
            "barely changes.",
            "",
            "| start | runs | median | min | max | CPU to ready | api ready | web ready |",
            "|---|---|---|---|---|---|---|---|",
            _row("cold", cold),
            _row("warm", warm),
            "",
            f"Target ≤ {TARGET_WARM_SECONDS:g} s warm: {verdict} ({warm_median:.2f} s). Other "
            f"processes used {noise:.0%} of the machine meanwhile (the noise in these figures; "
            "start-up is CPU-bound, so a busy machine stretches it).",
            "",
            "Import CPU time, warm (`python -c 'import X'` minus a bare interpreter, median of "
            f"{repeats}): api (`sora2.api.server`) {imports['api']:.2f} s, web "
            f"(`sora2.web.server`) {imports['web']:.2f} s, launcher "
            f"(`sora2.devstack.launcher`) {imports['launcher']:.2f} s.",
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
