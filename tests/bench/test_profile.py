"""`--profile` turns py-spy's collapsed stacks into per-function time per request."""

from __future__ import annotations

from pathlib import Path

from bench._profile import parse_collapsed, profile_section


def test_own_and_inclusive_time_per_function(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "main (/x/src/sora2/cli.py:3);handle (/x/src/sora2/proxy/_proxy.py:10);"
        "send (/v/lib/python3.11/site-packages/aiohttp/client.py:5) 60\n"
        "main (/x/src/sora2/cli.py:3);handle (/x/src/sora2/proxy/_proxy.py:12) 30\n"
        "main (/x/src/sora2/cli.py:3) 10\n"
    )
    samples = parse_collapsed(raw, requests=1000)

    assert samples.total == 100
    assert samples.self_counts["send (aiohttp/client.py)"] == 60
    assert samples.self_counts["handle (sora2/proxy/_proxy.py)"] == 30
    assert samples.inclusive_counts["handle (sora2/proxy/_proxy.py)"] == 90

    section = profile_section(samples, cpu_us_per_request=500.0)
    # A function's share of the samples, applied to the CPU measured per request.
    assert "| `send (aiohttp/client.py)` | 60.0% | 300.0 |" in section
    # The frame every sample shares says nothing about where time goes.
    inclusive = section.split("Inclusive time", 1)[1]
    assert "main (sora2/cli.py)" not in inclusive
    assert "`handle (sora2/proxy/_proxy.py)` | 90.0%" in inclusive


def test_own_time_adds_up_by_package(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (/v/lib/python3.11/site-packages/aiohttp/web.py:1);"
        "handle (/x/src/sora2/proxy/_proxy.py:10) 30\n"
        "run (/v/lib/python3.11/site-packages/aiohttp/web.py:1);"
        "info (/usr/lib/python3.11/logging/__init__.py:5) 20\n"
        "run (/v/lib/python3.11/site-packages/aiohttp/web.py:1) 50\n"
    )
    section = profile_section(parse_collapsed(raw, requests=1), cpu_us_per_request=100.0)
    by_package = section.split("Own time by package", 1)[1].split("Own time (", 1)[0]
    assert "| `aiohttp` | 50.0% |" in by_package
    assert "| `sora2/proxy` | 30.0% |" in by_package
    assert "| `logging` | 20.0% |" in by_package
