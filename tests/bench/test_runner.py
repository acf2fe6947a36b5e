"""`python -m bench` finds `<name>_bench.py` modules, runs the chosen ones, prints sections."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from bench.__main__ import BENCH_DIR

REPO_ROOT = BENCH_DIR.parent


@pytest.fixture
def sample_benchmark() -> Iterator[str]:
    """A throw-away benchmark module dropped next to the real ones, removed afterwards."""
    name = "zz_runner_sample"
    module = BENCH_DIR / f"{name}_bench.py"
    module.write_text(
        "def run(quick: bool) -> str:\n    return f'## Sample\\n\\nquick={quick}\\n'\n"
    )
    try:
        yield name
    finally:
        module.unlink()


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_runs_a_discovered_benchmark_and_prints_its_section(sample_benchmark: str) -> None:
    result = run_bench(sample_benchmark, "--quick")
    assert result.returncode == 0, result.stderr
    assert "## Sample" in result.stdout
    assert "quick=True" in result.stdout


def test_lists_discovered_benchmarks_in_help(sample_benchmark: str) -> None:
    result = run_bench("--help")
    assert result.returncode == 0
    assert sample_benchmark in result.stdout


def test_unknown_name_is_refused_with_the_available_ones(sample_benchmark: str) -> None:
    result = run_bench("no-such-bench")
    assert result.returncode == 2
    assert "unknown benchmark no-such-bench" in result.stderr
    assert sample_benchmark in result.stderr


def test_a_failing_benchmark_is_reported_and_the_others_still_run(sample_benchmark: str) -> None:
    broken = BENCH_DIR / "zz_runner_broken_bench.py"
    broken.write_text("def run(quick: bool) -> str:\n    raise RuntimeError('wrk is missing')\n")
    try:
        result = run_bench("zz_runner_broken", sample_benchmark)
    finally:
        broken.unlink()
    assert result.returncode == 1
    assert "## zz_runner_broken: failed" in result.stdout
    assert "RuntimeError: wrk is missing" in result.stdout
    assert "## Sample" in result.stdout
    assert "benchmarks that failed: zz_runner_broken" in result.stderr
