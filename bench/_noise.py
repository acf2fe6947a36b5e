"""How much of the machine other processes used while the bench ran: the noise in its numbers.

The bench shares its 2 cores with whatever else runs (other engineers' test suites). All CPU time
the machine spent, minus what the bench and its children spent, is the others' share.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuSnapshot:
    machine_busy_s: float
    ours_s: float
    wall_s: float


def snapshot() -> CpuSnapshot:
    """Busy CPU seconds of the whole machine, and of this process and its waited-for children."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    # user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    busy_ticks = sum(ticks) - ticks[3] - ticks[4]
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return CpuSnapshot(busy_ticks / os.sysconf("SC_CLK_TCK"), ours, _uptime())


def others_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Fraction of all cores' time that processes other than the bench used between two snapshots.

    Children count only once they have been waited for: take `after` when every server is stopped.
    """
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.machine_busy_s - before.machine_busy_s) - (after.ours_s - before.ours_s)
    # Both clocks tick in hundredths of a second: over a short span the quotient can overshoot.
    return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])
