"""`--profile`: sample a server under load with py-spy and say where its time goes, by function."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE_HZ = 250
TOP_FUNCTIONS = 20
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Paths are shortened to what identifies the code: the package path inside the environment.
_PATH_ANCHORS = ("site-packages/", "/src/", "/lib/python3.11/")


@dataclass(frozen=True)
class Samples:
    """Collapsed stacks from py-spy (`frame;frame;… count`), counted per function."""

    total: int
    requests: int
    """Requests served while sampling: each sample stands for 1/rate s of Python running."""
    self_counts: Counter[str]
    inclusive_counts: Counter[str]
    raw_path: Path


def record_profile(pid: int, load: Callable[[], int], out_dir: Path, cpu: int) -> Samples:
    """Sample `pid` with py-spy while `load()` runs (it returns how many requests it made)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]' (make bench does)")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "proxy-profile.txt"
    # py-spy pauses the process for each sample (--nonblocking tears stacks apart); that is
    # why the profile has its own load run, apart from the runs whose numbers are reported.
    # --gil keeps only the thread running Python: a thread asleep (the log flusher) or the loop
    # waiting in epoll is not time the proxy spends.
    sampler = subprocess.Popen(
        ["taskset", "-c", str(cpu), py_spy, "record", "--pid", str(pid), "--rate",
         str(SAMPLE_RATE_HZ), "--gil", "--format", "raw", "--output", str(raw_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    requests = 0
    try:
        requests = load()
    finally:
        sampler.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits.
        _, stderr = sampler.communicate(timeout=30)
    if not raw_path.exists():
        raise RuntimeError(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-500:]}")
    return parse_collapsed(raw_path, requests)


def parse_collapsed(raw_path: Path, requests: int) -> Samples:
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_name(frame) for frame in stack.split(";")]
        total += count
        self_counts[functions[-1]] += count
        for function in set(functions):
            inclusive_counts[function] += count
    return Samples(total, requests, self_counts, inclusive_counts, raw_path)


def function_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for anchor in _PATH_ANCHORS:
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    return f"{match['function']} ({path})"


def package_of(function: str) -> str:
    """`f (sora2/proxy/_proxy.py)` -> `sora2/proxy`; `info (logging/__init__.py)` -> `logging`."""
    path = function.rsplit(" (", 1)[-1].rstrip(")")
    parts = path.split("/")
    if len(parts) == 1:
        return "python (other)"
    depth = 2 if parts[0] == "sora2" and len(parts) > 2 else 1
    return "/".join(parts[:depth])


def by_package(counts: Counter[str]) -> Counter[str]:
    packages: Counter[str] = Counter()
    for function, count in counts.items():
        packages[package_of(function)] += count
    return packages


def without_entry_frames(inclusive: Counter[str]) -> Counter[str]:
    """Drop the frames every sample of the main thread shares (runpy, main, run_app…)."""
    if not inclusive:
        return inclusive
    top = max(inclusive.values())
    return Counter({name: count for name, count in inclusive.items() if count < top})


def profile_section(samples: Samples, cpu_us_per_request: float) -> str:
    """Markdown: the top functions by own time and by time including callees.

    py-spy pauses the process for every sample, which stretches it: the samples give each
    function's share, and the µs come from the CPU per request measured without the sampler.
    """
    if not samples.total:
        return "### Where the proxy's time goes\n\npy-spy collected no samples.\n"
    lines = [
        "### Where the proxy's time goes (py-spy, 64 connections)",
        "",
        f"{samples.total} samples of the thread holding the GIL at {SAMPLE_RATE_HZ} Hz over "
        f"{samples.requests:,} requests; µs/request = share x the {cpu_us_per_request:.0f} µs "
        "of CPU per request measured without the sampler. Collapsed stacks: "
        f"`{samples.raw_path.name}` under `bench/results/` (flamegraph.pl or speedscope read it).",
        "`run_app`'s own time is uvloop's event loop in C and the socket system calls it makes.",
        "",
    ]
    for title, counts in (
        ("Own time by package (whose code the time is spent in)", by_package(samples.self_counts)),
        ("Own time (the function itself)", samples.self_counts),
        ("Inclusive time (with what it calls; start-up frames above the loop left out)",
         without_entry_frames(samples.inclusive_counts)),
    ):  # fmt: skip
        lines += [f"**{title}**", "", "| code | share | µs/request |", "|---|---:|---:|"]
        for function, count in counts.most_common(TOP_FUNCTIONS):
            name = function.replace("|", "\\|")
            share = count / samples.total
            lines.append(f"| `{name}` | {share:.1%} | {share * cpu_us_per_request:.1f} |")
        lines.append("")
    return "\n".join(lines)
