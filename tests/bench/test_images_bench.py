"""The image-to-video bench runs and reports its two ratios."""

from __future__ import annotations

import re

from bench.images_bench import run


def test_the_quick_run_reports_both_ratios_against_their_baselines() -> None:
    section = run(quick=True)

    assert section.startswith("## Image-to-video")
    rows = [line for line in section.splitlines() if line.startswith("| fit") or "clip" in line]
    assert len(rows) == 2
    for row in rows:
        ratio = float(row.rstrip(" |").rsplit("|", 1)[1])
        assert ratio > 0
    assert re.search(r"Pillow decoding it", section)
