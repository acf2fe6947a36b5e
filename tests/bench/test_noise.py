"""The bench reports how much of the machine other processes took while it measured."""

from __future__ import annotations

import os

from bench._noise import CpuSnapshot, others_share, snapshot


def test_others_share_is_machine_time_minus_the_bench_own() -> None:
    cores = os.cpu_count() or 1
    before = CpuSnapshot(machine_busy_s=100.0, ours_s=10.0, wall_s=1000.0)
    # 10 s of wall time: the machine was busy 6 core-seconds more, 2 of them the bench's own.
    after = CpuSnapshot(machine_busy_s=106.0, ours_s=12.0, wall_s=1010.0)
    assert others_share(before, after) == 4.0 / (10.0 * cores)


def test_snapshots_of_this_machine_move_forward() -> None:
    first = snapshot()
    sum(range(200_000))  # some CPU of our own
    second = snapshot()
    assert second.wall_s >= first.wall_s
    assert second.ours_s >= first.ours_s
    assert 0.0 <= others_share(first, second) <= 1.0
