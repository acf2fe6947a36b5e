"""The short fault soak (PostgreSQL): videos through two `sora2 serve worker` processes while
upstream, the database link and the workers fail at random; every paid-work invariant holds.
The longer one is `python -m bench soak`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sora2.settings import Settings
from tests.api.conftest import is_postgres
from tests.fakes.soak import SoakPlan, new_seed, run_soak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning"),
]


async def test_a_short_fault_soak_keeps_every_paid_work_invariant(
    settings: Settings, tmp_path: Path
) -> None:
    if not is_postgres(settings):
        pytest.skip("the soak runs on PostgreSQL: two worker processes and a cut database link")
    seed = new_seed()
    print(f"soak seed {seed}")  # rerun one with SoakPlan(seed=…)
    report = await run_soak(
        SoakPlan(seed=seed), database_url=str(settings.database_url), workdir=tmp_path / "soak"
    )
    print("\n".join(report.lines()))
    assert sum(report.videos.values()) == SoakPlan.videos
    assert sum(report.faults.values()) > 0
    assert report.violations == [], "\n".join(report.lines())
