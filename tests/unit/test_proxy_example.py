"""The usage example in `sora2/proxy/__init__.py` runs, and says what it does."""

from __future__ import annotations

import doctest

import sora2.proxy


def test_the_proxy_usage_example_runs_as_written() -> None:
    result = doctest.testmod(sora2.proxy, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
