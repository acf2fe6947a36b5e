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
    self_counts: Counter[str]
    inclusive_counts: Counter[str]
    raw_path: Path


def record_profile(pid: int, load: Callable[[], object], out_dir: Path, cpu: int) -> Samples:
    """Sample `pid` with py-spy for as long as `load()` runs; py-spy itself runs on `cpu`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]' (make bench does)")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "proxy-profile.txt"
    # --nonblocking: the proxy is never paused, so its numbers under sampling stay honest.
    sampler = subprocess.Popen(
        ["taskset", "-c", str(cpu), py_spy, "record", "--pid", str(pid), "--rate",
         str(SAMPLE_RATE_HZ), "--format", "raw", "--output", str(raw_path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        load()
    finally:
        sampler.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits.
        _, stderr = sampler.communicate(timeout=30)
    if not raw_path.exists():
        raise RuntimeError(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-500:]}")
    return parse_collapsed(raw_path)


def parse_collapsed(raw_path: Path) -> Samples:
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
    return Samples(total, self_counts, inclusive_counts, raw_path)


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


def profile_section(samples: Samples, cpu_us_per_request: float) -> str:
    """Markdown: the top functions by own time and by time including callees."""
    if not samples.total:
        return "### Where the proxy's time goes\n\npy-spy collected no samples.\n"
    lines = [
        "### Where the proxy's time goes (py-spy, 64 connections)",
        "",
        f"{samples.total} samples at {SAMPLE_RATE_HZ} Hz; µs/request = share of samples x "
        f"{cpu_us_per_request:.0f} µs CPU per request. Collapsed stacks: "
        f"`{samples.raw_path.name}` under `bench/results/` (flamegraph.pl or speedscope read it).",
        "",
    ]
    for title, counts in (
        ("Own time (the function itself)", samples.self_counts),
        ("Inclusive time (with what it calls)", samples.inclusive_counts),
    ):
        lines += [f"**{title}**", "", "| function | share | µs/request |", "|---|---:|---:|"]
        for function, count in counts.most_common(TOP_FUNCTIONS):
            share = count / samples.total
            name = function.replace("|", "\\|")
            lines.append(f"| `{name}` | {share:.1%} | {share * cpu_us_per_request:.1f} |")
        lines.append("")
    return "\n".join(lines)
