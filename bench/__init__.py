"""Benchmarks: `make bench` runs them and prints their tables."""

# `python -m bench --profile` sets it; benchmarks able to profile read it, so `run(quick)` stays
# the one interface every benchmark module implements.
PROFILE_ENV = "SORA2_BENCH_PROFILE"
