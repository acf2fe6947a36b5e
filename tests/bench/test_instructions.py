"""Instruction counts read from callgrind's dump and shown as a ladder of layers."""

from __future__ import annotations

from pathlib import Path

from bench._instructions import InstructionCount, _summary, instructions_section


def test_reads_the_total_from_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\ndesc: Trigger: dump window\nevents: Ir\nsummary: 210391653\n")
    assert _summary(dump) == 210_391_653


def test_each_layer_shows_what_it_adds_and_its_ratio_to_the_floor() -> None:
    section = instructions_section(
        [
            InstructionCount("bare", requests=100, instructions=50_000_000),
            InstructionCount("proxy", requests=100, instructions=60_000_000),
            InstructionCount("production", requests=100, instructions=75_000_000),
        ]
    )
    assert "| bare | 100 | 500,000 | - | 1.00 |" in section
    assert "| proxy | 100 | 600,000 | +100,000 | 1.20 |" in section
    assert "| production | 100 | 750,000 | +150,000 | 1.50 |" in section
