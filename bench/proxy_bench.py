"""The proxy benchmark: our proxy against the backend directly, nginx, FastAPI + httpx and a bare
aiohttp pass-through, all measured in one run on the same backend (`python -m bench proxy`).

Placement on this 2-core machine: the server under test alone on core 1; wrk (one thread), curl
and the backend share core 0. For "direct" the backend itself is the server under test, so it
moves to core 1. Every proxy runs all the time but only the one under load does any work.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import PROFILE_ENV, _nginx, _noise
from bench._backend import SMALL_JSON
from bench._instructions import callgrind_available, count_instructions, instructions_section
from bench._processes import Server, free_port, http_get
from bench._profile import profile_section, record_profile
from bench._syscalls import (
    SyscallCount,
    count_syscalls,
    strace_available,
    syscalls_section,
)
from bench._wrk import Wrk, WrkResult

LOAD_CPU = 0
SERVER_CPU = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MIB = 1024 * 1024
# The children must import this checkout's bench and sora2, whatever the caller's cwd.
CHILD_PYTHON_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}

DIRECT = "direct (backend)"
OURS = "sora2 proxy"
OURS_TWO = "sora2 proxy, 2 backends"
NGINX = "nginx proxy_pass"
FASTAPI = "FastAPI + httpx"
BARE = "bare aiohttp pass-through"


@dataclass(frozen=True)
class Plan:
    seconds: int
    rounds: int
    """Each load run is repeated in rounds that visit every target in turn, so a burst of
    activity from other processes on the shared machine hits one round, not one target."""
    warmup_seconds: int
    download_bytes: int
    failfast_seconds: int
    callgrind_warmup: int
    callgrind_requests: int


FULL = Plan(
    seconds=3,
    rounds=5,
    warmup_seconds=2,
    download_bytes=256 * MIB,
    failfast_seconds=2,
    callgrind_warmup=100,
    callgrind_requests=300,
)
QUICK = Plan(
    seconds=1,
    rounds=1,
    warmup_seconds=1,
    download_bytes=32 * MIB,
    failfast_seconds=1,
    callgrind_warmup=20,
    callgrind_requests=50,
)


@dataclass
class Download:
    megabytes_per_s: float
    rss_growth_bytes: int


@dataclass
class LoadRun:
    wrk: WrkResult
    server_cpu_seconds: float


@dataclass
class Measurement:
    one_runs: list[WrkResult] = field(default_factory=list)
    many_runs: list[LoadRun] = field(default_factory=list)
    download: Download | None = None
    failfast_runs: list[WrkResult] = field(default_factory=list)
    failfast_status: str = ""

    # The best round is reported: other tenants of the machine only ever slow a run down, so the
    # fastest round is the closest to what the server does on its own.
    @property
    def one(self) -> WrkResult | None:
        return max(self.one_runs, key=lambda run: run.rate, default=None)

    @property
    def best_many(self) -> LoadRun | None:
        return max(self.many_runs, key=lambda run: run.wrk.rate, default=None)

    @property
    def many(self) -> WrkResult | None:
        best = self.best_many
        return best.wrk if best else None

    @property
    def failfast(self) -> WrkResult | None:
        return min(self.failfast_runs, key=lambda run: run.p99_us, default=None)

    @property
    def cpu_us_per_request(self) -> float:
        best = self.best_many
        if best is None or not best.wrk.requests:
            return 0.0
        return best.server_cpu_seconds / best.wrk.requests * 1e6

    @property
    def core_busy(self) -> float:
        best = self.best_many
        if best is None or not best.wrk.duration_s:
            return 0.0
        return best.server_cpu_seconds / best.wrk.duration_s


@dataclass
class Target:
    name: str
    server: Server
    base_url: str
    """URL prefix that maps to the backend's `/api/`."""
    result: Measurement = field(default_factory=Measurement)

    @property
    def small_url(self) -> str:
        return f"{self.base_url}bench/small"


# ---------------------------------------------------------------------------------------------
# Tools and processes


def ensure_tools() -> None:
    """wrk, nginx and curl come from Debian; install them with apt when absent and allowed."""
    missing = [tool for tool in ("wrk", "nginx", "curl", "taskset") if shutil.which(tool) is None]
    if (os.cpu_count() or 0) < 2:
        raise SystemExit("the proxy bench pins load and server on separate cores: it needs 2")
    if not missing:
        return
    packages = {"wrk": "wrk", "nginx": "nginx", "curl": "curl", "taskset": "util-linux"}
    wanted = sorted({packages[tool] for tool in missing})
    if os.geteuid() != 0:
        raise SystemExit(
            f"the proxy bench needs {', '.join(missing)}: apt-get install {' '.join(wanted)}"
        )
    print(f"installing {' '.join(wanted)} with apt-get", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *wanted], check=True, capture_output=True)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def build_servers(workdir: Path) -> tuple[Server, list[Target], list[Server]]:
    """The backend, every target, and the servers that only serve a target (a second backend
    for our proxy over `API_URLS`, also on the load core)."""
    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend = Server(
        "backend",
        python_module("bench._backend", "--port", str(backend_port)),
        cpu=LOAD_CPU,
        log_path=workdir / "backend.log",
        env=CHILD_PYTHON_ENV,
    )
    targets = [Target(DIRECT, backend, f"{backend_url}/api/")]
    for make_proxy in PROXIES:
        port = free_port()
        server = make_proxy(workdir, port, backend_url)
        targets.append(Target(server.name, server, proxy_base_url(port)))
    second_port = free_port()
    second = Server(
        "backend-2",
        python_module("bench._backend", "--port", str(second_port)),
        cpu=LOAD_CPU,
        log_path=workdir / "backend-2.log",
        env=CHILD_PYTHON_ENV,
    )
    port = free_port()
    over_two = sora2_server(workdir, port, f"{backend_url},http://127.0.0.1:{second_port}")
    over_two.name = OURS_TWO
    targets.insert(2, Target(OURS_TWO, over_two, proxy_base_url(port)))
    return backend, targets, [second]


def proxy_base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/proxy/"


def sora2_server(workdir: Path, port: int, backend_url: str) -> Server:
    return Server(
        OURS,
        python_module("sora2", "serve", "web", "--workers", "1"),
        cpu=SERVER_CPU,
        log_path=workdir / f"sora2-web-{port}.console.log",
        env=production_web_env(workdir, port, backend_url),
    )


def bare_server(workdir: Path, port: int, backend_url: str) -> Server:
    return Server(
        BARE,
        python_module("bench._passthrough", "--port", str(port), "--upstream", backend_url),
        cpu=SERVER_CPU,
        log_path=workdir / f"passthrough-{port}.log",
        env=CHILD_PYTHON_ENV,
    )


def nginx_server(workdir: Path, port: int, backend_url: str) -> Server:
    config = _nginx.write_config(
        workdir / f"nginx-{port}", port, backend_url.removeprefix("http://")
    )
    return Server(NGINX, _nginx.command(config), SERVER_CPU, workdir / f"nginx-{port}.console.log")


def fastapi_server(workdir: Path, port: int, backend_url: str) -> Server:
    return Server(
        FASTAPI,
        python_module("bench._fastapi_httpx", "--port", str(port), "--upstream", backend_url),
        cpu=SERVER_CPU,
        log_path=workdir / f"fastapi-httpx-{port}.log",
        env=CHILD_PYTHON_ENV,
    )


# Every proxy compared, in the tables' order: each builds its server on a port before a backend.
PROXIES: tuple[Callable[[Path, int, str], Server], ...] = (
    sora2_server,
    nginx_server,
    fastapi_server,
    bare_server,
)


def production_web_env(workdir: Path, port: int, backend_url: str) -> dict[str, str]:
    """`sora2 serve web` as deployed: production mode, INFO access lines to a log file.
    `backend_url` may list several apis, comma-separated (`API_URLS`)."""
    return {
        "APP_ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        ("API_URLS" if "," in backend_url else "API_URL"): backend_url,
        "LOG_LEVEL": "INFO",
        "LOG_DIR": str(workdir / "logs"),
        "DATA_DIR": str(workdir / "data"),
        **CHILD_PYTHON_ENV,
    }


@contextmanager
def running(workdir: Path) -> Iterator[tuple[Server, list[Target]]]:
    backend, targets, helpers = build_servers(workdir)
    with ExitStack() as stack:
        for helper in helpers:
            stack.callback(helper.stop)
            helper.start()
        for target in targets:
            stack.callback(target.server.stop)
            target.server.start()
        for target in targets:
            target.server.wait_until(target.small_url, SMALL_JSON)
        yield backend, targets


# ---------------------------------------------------------------------------------------------
# Measurements


def measure_small_json(wrk: Wrk, target: Target, plan: Plan) -> None:
    target.result.one_runs.append(wrk.run(target.small_url, connections=1, seconds=plan.seconds))
    before = target.server.cpu_seconds()
    many = wrk.run(target.small_url, connections=64, seconds=plan.seconds)
    target.result.many_runs.append(LoadRun(many, target.server.cpu_seconds() - before))


@contextmanager
def placed(backend: Server, target: Target) -> Iterator[None]:
    """Measured directly, the backend is the server under test and gets core 1 to itself."""
    if target.server is backend:
        backend.pin(SERVER_CPU)
    try:
        yield
    finally:
        backend.pin(LOAD_CPU)


def measure_download(target: Target, plan: Plan) -> None:
    url = f"{target.base_url}bench/download?bytes={plan.download_bytes}"
    baseline = target.server.reset_peak_rss()
    completed = subprocess.run(
        ["taskset", "-c", str(LOAD_CPU), "curl", "-sS", "-o", "/dev/null",
         "-w", "%{http_code} %{size_download} %{speed_download}", url],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    fields = completed.stdout.split()
    if completed.returncode != 0 or len(fields) != 3:
        raise RuntimeError(f"{target.name}: curl failed on {url}: {completed.stderr.strip()}")
    status, size, speed = fields
    if status != "200" or int(size) != plan.download_bytes:
        raise RuntimeError(f"{target.name}: download gave HTTP {status}, {size} bytes")
    growth = max(0, target.server.peak_rss() - baseline)
    target.result.download = Download(float(speed) / 1e6, growth)


def open_circuit(target: Target) -> str:
    """With the backend gone, drive requests until the proxy's answer settles; return it."""
    deadline = time.monotonic() + 15
    answer = ""
    while time.monotonic() < deadline:
        status, body = http_get(target.small_url, timeout=10)
        answer = f"{status} {error_title(body)}".strip()
        # Ours opens its circuit after a few connect failures: wait for the fail-fast answer.
        if target.name != OURS or b"Backend API Unavailable" in body:
            return answer
    return answer


def error_title(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    return str(document.get("error", "")) if isinstance(document, dict) else ""


def measure_failfast(wrk: Wrk, target: Target, plan: Plan) -> None:
    run = wrk.run(target.small_url, connections=1, seconds=plan.failfast_seconds)
    target.result.failfast_runs.append(run)


def run_all(workdir: Path, plan: Plan, profile: bool) -> tuple[list[Target], str]:
    wrk = Wrk(workdir, cpu=LOAD_CPU)
    profile_markdown = ""
    with running(workdir) as (backend, targets):
        proxies = targets[1:]
        for target in targets:
            with placed(backend, target):
                # Warm up: pools filled, code paths and allocator caches hot.
                wrk.run(target.small_url, connections=64, seconds=plan.warmup_seconds)
        for round_number in range(1, plan.rounds + 1):
            progress(f"small JSON, round {round_number} of {plan.rounds}")
            for target in targets:
                with placed(backend, target):
                    measure_small_json(wrk, target, plan)
        progress("downloads")
        for target in targets:
            with placed(backend, target):
                measure_download(target, plan)
        if profile:
            backend_url = targets[0].base_url.removesuffix("/api/")
            profile_markdown = profile_proxy(wrk, workdir, backend_url, proxies, plan)
        backend.stop()
        for target in proxies:
            target.result.failfast_status = open_circuit(target)
        for round_number in range(1, plan.rounds + 1):
            progress(f"backend down, round {round_number} of {plan.rounds}")
            for target in proxies:
                measure_failfast(wrk, target, plan)
    return targets, profile_markdown


def profile_proxy(
    wrk: Wrk, workdir: Path, backend_url: str, proxies: list[Target], plan: Plan
) -> str:
    """py-spy on our proxy under load, then instructions per request for ours and the floor."""
    ours = next(target for target in proxies if target.name == OURS)
    progress("profiling sora2 proxy with py-spy")
    samples = record_profile(
        ours.server.pid,
        lambda: wrk.run(ours.small_url, 64, plan.seconds).requests,
        RESULTS_DIR,
        LOAD_CPU,
    )
    sections = [profile_section(samples, ours.result.cpu_us_per_request)]
    if strace_available():
        progress("counting system calls of sora2 proxy and the bare pass-through with strace")
        sections.append(
            syscalls_section(
                [
                    count_load_syscalls(wrk, workdir, target, plan)
                    for target in proxies
                    if target.name in (OURS, BARE)
                ]
            )
        )
    if not callgrind_available():
        sections.append(
            "Instructions per request: valgrind is not installed (apt install valgrind)."
        )
        return "\n".join(sections)
    counts = []
    for port, server in cost_ladder(workdir, backend_url):
        progress(f"counting instructions of {server.name} under callgrind")
        counts.append(
            count_instructions(
                server,
                port,
                "/api/proxy/bench/small",
                plan.callgrind_warmup,
                plan.callgrind_requests,
            )
        )
    sections.append(instructions_section(counts))
    return "\n".join(sections)


def count_load_syscalls(wrk: Wrk, workdir: Path, target: Target, plan: Plan) -> SyscallCount:
    def load() -> int:
        return wrk.run(target.small_url, 64, plan.seconds).requests

    out = workdir / f"strace-{target.server.pid}.txt"
    return count_syscalls(target.name, target.server.pid, load, out)


def cost_ladder(workdir: Path, backend_url: str) -> list[tuple[int, Server]]:
    """From the bare pass-through up to production, one layer at a time, each on a fresh port."""
    ports = [free_port() for _ in range(4)]
    proxy_only = Server(
        "sora2 proxy alone on a bare app, no logging",
        python_module("bench._proxy_only", "--port", str(ports[1]), "--upstream", backend_url),
        cpu=SERVER_CPU,
        log_path=workdir / f"proxy-only-{ports[1]}.log",
        env=CHILD_PYTHON_ENV,
    )
    quiet = sora2_server(workdir, ports[2], backend_url)
    quiet.name = "sora2 serve web without the access log (LOG_LEVEL=WARNING)"
    quiet.env = {**quiet.env, "LOG_LEVEL": "WARNING"}
    production = sora2_server(workdir, ports[3], backend_url)
    production.name = "sora2 serve web as in production (the table's sora2 proxy)"
    return [
        (ports[0], bare_server(workdir, ports[0], backend_url)),
        (ports[1], proxy_only),
        (ports[2], quiet),
        (ports[3], production),
    ]


def progress(message: str) -> None:
    print(f"  proxy bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Report

# Issue 2's targets for our proxy (benchmark goals, not tests).
TARGET_ADDED_P50_US = 250.0
TARGET_RATE_64 = 5_000.0
TARGET_NGINX_SHARE = 0.10
TARGET_CPU_US = 200.0
TARGET_FAILFAST_P99_US = 2_000.0


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def errors_note(result: WrkResult | None) -> str:
    if result is None or not (result.non_2xx_3xx or result.socket_errors):
        return ""
    return f" ⚠ {result.non_2xx_3xx} non-2xx, {result.socket_errors} socket errors"


def small_json_table(targets: list[Target]) -> list[str]:
    direct = targets[0].result
    nginx = next(t for t in targets if t.name == NGINX).result
    lines = [
        "| path | 1 conn req/s | p50 µs | p99 µs | added p50 µs | 64 conn req/s | p50 µs "
        "| p99 µs | x direct | x nginx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        one, many = target.result.one, target.result.many
        if one is None or many is None or direct.one is None or direct.many is None:
            continue
        added = "-" if target.name == DIRECT else f"{one.p50_us - direct.one.p50_us:+.0f}"
        nginx_rate = nginx.many.rate if nginx.many else 0.0
        lines.append(
            f"| {target.name} | {one.rate:,.0f} | {one.p50_us:.0f} | {one.p99_us:.0f} | {added} "
            f"| {many.rate:,.0f} | {many.p50_us:.0f} | {many.p99_us:.0f} "
            f"| {ratio(many.rate, direct.many.rate)} | {ratio(many.rate, nginx_rate)} |"
            f"{errors_note(one)}{errors_note(many)}"
        )
    return lines


def cost_table(targets: list[Target], plan: Plan) -> list[str]:
    size = f"{plan.download_bytes // MIB} MiB"
    lines = [
        f"| path | CPU µs/req (64 conn) | its core busy | {size} download MB/s "
        "| peak RSS growth MiB | backend down: answer | p50 µs | p99 µs |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for target in targets:
        result = target.result
        cells = [target.name, f"{result.cpu_us_per_request:.0f}", f"{result.core_busy:.0%}"]
        if result.download is None:
            cells += ["-", "-"]
        else:
            cells += [
                f"{result.download.megabytes_per_s:,.0f}",
                f"{result.download.rss_growth_bytes / MIB:.1f}",
            ]
        if result.failfast is None:
            cells += ["-", "-", "-"]
        else:
            cells += [
                result.failfast_status,
                f"{result.failfast.p50_us:.0f}",
                f"{result.failfast.p99_us:.0f}",
            ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def measured(result: WrkResult | None) -> WrkResult:
    if result is None:
        raise RuntimeError("a measurement the report needs was not taken")
    return result


def targets_table(targets: list[Target]) -> list[str]:
    by_name = {target.name: target.result for target in targets}
    ours, direct, nginx = by_name[OURS], by_name[DIRECT], by_name[NGINX]
    ours_one, ours_many, ours_failfast = (
        measured(ours.one),
        measured(ours.many),
        measured(ours.failfast),
    )
    added = ours_one.p50_us - measured(direct.one).p50_us
    nginx_rate = measured(nginx.many).rate
    share = ours_many.rate / nginx_rate if nginx_rate else 0.0
    rows = [
        ("p50 added latency, 1 connection", f"≤ {TARGET_ADDED_P50_US:.0f} µs",
         f"{added:.0f} µs", added <= TARGET_ADDED_P50_US),
        ("req/s at 64 connections", f"≥ {TARGET_RATE_64:,.0f}", f"{ours_many.rate:,.0f}",
         ours_many.rate >= TARGET_RATE_64),
        ("share of nginx at 64 connections", f"≥ {TARGET_NGINX_SHARE:.2f} x", f"{share:.2f} x",
         share >= TARGET_NGINX_SHARE),
        ("CPU per request", f"≤ {TARGET_CPU_US:.0f} µs", f"{ours.cpu_us_per_request:.0f} µs",
         ours.cpu_us_per_request <= TARGET_CPU_US),
        ("fail-fast p99, circuit open", f"≤ {TARGET_FAILFAST_P99_US / 1000:.0f} ms",
         f"{ours_failfast.p99_us / 1000:.2f} ms", ours_failfast.p99_us <= TARGET_FAILFAST_P99_US),
    ]  # fmt: skip
    lines = ["| target (issue 2) | goal | measured | |", "|---|---|---|---|"]
    lines += [f"| {what} | {goal} | {got} | {'met' if ok else '**missed**'} |"
              for what, goal, got, ok in rows]  # fmt: skip
    return lines


def machine_line(plan: Plan, others_share: float) -> str:
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"Machine: {cpu_model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {tool_version(['nginx', '-v'])}, "
        f"{tool_version(['wrk', '-v']).split(' [')[0]}; other processes used "
        f"{others_share:.0%} of the machine's CPU during the run (load average at the end {load}); "
        f"commit {git_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{plan.rounds} round(s) of {plan.seconds} s per wrk run ({plan.failfast_seconds} s with "
        "the backend down); each row shows its fastest round (lowest p99 with the backend down)."
    )


def tool_version(command: list[str]) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    text = (completed.stdout + completed.stderr).strip().splitlines()
    return text[0].replace("nginx version: ", "") if text else command[0]


def git_commit() -> str:
    completed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return completed.stdout.strip() or "unknown"


def render(targets: list[Target], plan: Plan, profile_markdown: str, others_share: float) -> str:
    lines = [
        "## Proxy",
        "",
        machine_line(plan, others_share),
        "Placement: the server under test alone on core 1; wrk (1 thread), curl and the backend on "
        "core 0 (for *direct*, the backend alone on core 1).",
        "",
        "### Small JSON (GET, 76-byte body)",
        "",
        *small_json_table(targets),
        "",
        "### Cost per request, a download, and the backend down",
        "",
        *cost_table(targets, plan),
        "",
        "### Our proxy against the issue's targets",
        "",
        *targets_table(targets),
        "",
    ]
    if profile_markdown:
        lines += [profile_markdown, ""]
    return "\n".join(lines)


def save_raw(targets: list[Target]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {target.name: asdict(target.result) for target in targets}
    (RESULTS_DIR / "proxy.json").write_text(json.dumps(data, indent=2) + "\n")


def run(quick: bool) -> str:
    ensure_tools()
    plan = QUICK if quick else FULL
    profile = os.environ.get(PROFILE_ENV) == "1"
    before = _noise.snapshot()
    with tempfile.TemporaryDirectory(prefix="sora2-proxy-bench-") as workdir:
        targets, profile_markdown = run_all(Path(workdir), plan, profile)
    others = _noise.others_share(before, _noise.snapshot())
    save_raw(targets)
    return render(targets, plan, profile_markdown, others)
