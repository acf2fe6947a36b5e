"""`python -m bench soak`: the fault soak at length (about a minute of faults).

Videos go through two `sora2 serve worker` processes on PostgreSQL (a scratch database on
`SORA2_TEST_POSTGRES`, default `postgresql://postgres@127.0.0.1:5432/postgres`) against the fake
Videos API, while upstream answers fail at random (create timeouts, 5xx, 429 with odd
`Retry-After`, resets after the work was done), the workers' database link is cut and workers are
SIGKILLed or SIGTERMed and restarted. Then the paid-work invariants are checked (the target is 0
violations). `SOAK_SEED=<n>` reruns one seed; the engine is `tests/fakes/soak.py`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tests.fakes.soak import SoakPlan, SoakReport, new_seed, run_soak, scratch_database

ADMIN_DSN = os.environ.get("SORA2_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _soak(plan: SoakPlan, workdir: Path) -> SoakReport:
    async with scratch_database(ADMIN_DSN) as url:
        return await run_soak(plan, database_url=url, workdir=workdir)


def run(quick: bool) -> str:
    seed = int(os.environ.get("SOAK_SEED") or new_seed())
    print(f"soak seed {seed}", file=sys.stderr, flush=True)
    if quick:
        plan = SoakPlan(seed=seed)
    else:
        plan = SoakPlan(seed=seed, videos=60, users=4, storm_seconds=60.0, settle_seconds=90.0)
    with tempfile.TemporaryDirectory() as folder:
        report = asyncio.run(_soak(plan, Path(folder)))
    lines = [
        "## Fault soak",
        "",
        f"{plan.videos} videos, {plan.workers} worker processes, {plan.storm_seconds:.0f} s of "
        f"faults (upstream fault rate {plan.upstream_fault_rate:.0%}). "
        f"Rerun with `SOAK_SEED={seed} python -m bench soak`.",
        "",
        "```",
        *report.lines(),
        "```",
    ]
    return "\n".join(lines)
