"""Run the benchmarks: `python -m bench [names…] [--quick] [--profile]`.

Every `bench/<name>_bench.py` module is a benchmark named `<name>`; it exposes
`run(quick: bool) -> str` returning one markdown section. They are discovered by file name so
each domain adds its own module without touching this runner.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import PROFILE_ENV

BENCH_DIR = Path(__file__).resolve().parent
MODULE_SUFFIX = "_bench"


def available_benchmarks() -> list[str]:
    """Names of the benchmark modules in this directory, sorted."""
    return sorted(
        path.stem.removesuffix(MODULE_SUFFIX) for path in BENCH_DIR.glob(f"*{MODULE_SUFFIX}.py")
    )


def load_runner(name: str) -> Callable[[bool], str]:
    module = importlib.import_module(f"bench.{name}{MODULE_SUFFIX}")
    runner = getattr(module, "run", None)
    if not callable(runner) or len(inspect.signature(runner).parameters) != 1:
        raise SystemExit(
            f"bench/{name}{MODULE_SUFFIX}.py must define `def run(quick: bool) -> str`"
        )
    return runner  # type: ignore[no-any-return]


def parse_args(argv: Sequence[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks and print their results as markdown sections.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"benchmarks to run (default: all). Available: {', '.join(names) or 'none'}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs: a smoke test of the numbers"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample the proxy under load with py-spy and report where its time goes",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in names]
    if unknown:
        parser.error(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names) or 'none'}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    names = available_benchmarks()
    args = parse_args(argv, names)
    if args.profile:
        os.environ[PROFILE_ENV] = "1"
    failed = [name for name in args.names or names if not run_one(name, args.quick)]
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_one(name: str, quick: bool) -> bool:
    """Run one benchmark and print its section; a failure is reported and the others still run."""
    started = time.monotonic()
    print(f"<!-- bench {name}: running -->", file=sys.stderr, flush=True)
    try:
        section = load_runner(name)(quick)
    except (Exception, SystemExit) as error:
        traceback.print_exc(file=sys.stderr)
        print(f"## {name}: failed\n\n{type(error).__name__}: {error}\n", flush=True)
        return False
    print(section.rstrip() + "\n", flush=True)
    elapsed = time.monotonic() - started
    print(f"<!-- bench {name}: {elapsed:.1f} s -->", file=sys.stderr, flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
