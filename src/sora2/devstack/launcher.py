"""`sora2 dev`: choose ports, start the api then the web, supervise both, stop both in order.

The services run as `python -m sora2 serve api|web` processes in development mode; the launcher
knows them only by their command, their port and their health URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psutil

from sora2.devstack import ports
from sora2.devstack.console import Console
from sora2.devstack.process import ServiceProcess
from sora2.devstack.reload import PACKAGE_ROOT, watch_and_reload
from sora2.devstack.restart_signal import ENV_NAME as RESTART_SIGNAL_ENV
from sora2.devstack.restart_signal import RestartSignal
from sora2.devstack.runs import ProcessRecord, RunFile, RunRecord, ServiceRecord, stop_previous_run
from sora2.devstack.supervise import CrashLoop, ServiceFailure, ServiceSpec, Supervisor
from sora2.settings import Settings

SERVICES = ("api", "web")
HEALTH_PATHS = {"api": "/api/health", "web": "/healthz"}
READY_MESSAGE = "all ready in"  # what tools (and the benchmark) wait for

T = TypeVar("T")


class LaunchError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    services: tuple[str, ...] = SERVICES
    strict_ports: bool = False
    reload: bool = True
    start_timeout: float = 30.0
    grace: float = 10.0
    watch_root: Path = PACKAGE_ROOT


@dataclasses.dataclass(frozen=True)
class PortChoice:
    service: str
    host: str
    wanted: int
    port: int

    @property
    def moved(self) -> bool:
        return self.port != self.wanted

    @property
    def base_url(self) -> str:
        return f"http://{ports.url_host(ports.connect_host(self.host))}:{self.port}"


def launch(settings: Settings, options: LaunchOptions) -> int:
    """Runs the stack in the foreground until Ctrl-C or SIGTERM; the exit status."""
    started_at = time.monotonic() - _seconds_since_process_start()
    console = Console(options.services, log_dir=settings.log_dir / "dev")
    run_file = RunFile(settings.data_dir)
    try:
        console.mark_start(f"sora2 dev {' '.join(options.services)} (PID {os.getpid()})")
        if not settings.is_development:
            console.say(
                f"APP_ENV={settings.app_env} is set, but sora2 dev always runs the services in "
                "development; for production use sora2 serve api|web|worker"
            )
        choices = _choose_ports(settings, options, run_file, console)
        specs = _service_specs(settings, options, choices, console)
        return asyncio.run(_run(settings, specs, options, console, run_file, started_at))
    except KeyboardInterrupt:
        # Ctrl-C before the services started (while ports were checked): nothing to stop.
        console.say("interrupted")
        return 130
    finally:
        console.close()


def _seconds_since_process_start() -> float:
    """How long this process has run (interpreter start and imports count), by the kernel's
    clock: /proc/uptime minus the process's start, both counted from boot. (psutil's create_time
    adds the boot time, which Linux gives in whole seconds: it overstated start-up by up to 1 s.)
    Off Linux, 0: the figure then counts from here."""
    try:
        with open("/proc/self/stat") as stat:
            # Fields after the command name (which may hold spaces) start at field 3, state.
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            running_since_boot = float(uptime.read().split()[0])
        return max(0.0, running_since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# --- ports -----------------------------------------------------------------------------------


def _choose_ports(
    settings: Settings, options: LaunchOptions, run_file: RunFile, console: Console
) -> dict[str, PortChoice]:
    wanted = {
        "api": (settings.api_host, settings.api_port),
        "web": (settings.web_host, settings.web_port),
    }
    choices: dict[str, PortChoice] = {}
    for service in options.services:
        host, port = wanted[service]
        taken = {choice.port for choice in choices.values()}
        chosen = _choose_port(service, host, port, taken, options, run_file, console)
        choices[service] = PortChoice(service, host, port, chosen)
    return choices


def _choose_port(
    service: str,
    host: str,
    port: int,
    taken: set[int],
    options: LaunchOptions,
    run_file: RunFile,
    console: Console,
) -> int:
    problem = ports.bind_problem(host)
    if problem is not None:
        variable = f"{service.upper()}_HOST"
        raise LaunchError(f"{variable}: {problem}. Use 127.0.0.1 (or 0.0.0.0 for every interface).")
    if port not in taken and ports.can_bind(host, port):
        return port
    holder = ports.holder_of(port) if port not in taken else None
    if holder is not None and holder.pid is not None:
        previous = run_file.run_holding(holder.pid)
        if previous is not None:
            _stop_previous(previous, service, port, options, console)
            if _wait_for_port(host, port, timeout=options.grace + 2):
                return port
            holder = ports.holder_of(port)
    return _move_port(service, host, port, taken, holder, options, console)


def _stop_previous(
    previous: RunRecord, service: str, port: int, options: LaunchOptions, console: Console
) -> None:
    console.say(
        f"port {port} ({service}) is held by an earlier sora2 dev of this checkout "
        f"(launcher PID {previous.launcher.pid}); stopping it gracefully"
    )
    stop_previous_run(previous, grace=options.grace)


def _wait_for_port(host: str, port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not ports.can_bind(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # polling a kernel state; nothing to wait on
    return True


def _move_port(
    service: str,
    host: str,
    port: int,
    taken: set[int],
    holder: ports.PortHolder | None,
    options: LaunchOptions,
    console: Console,
) -> int:
    if port in taken:
        who = "the other service of this stack (API_PORT and WEB_PORT are equal)"
    elif holder is None:
        who = "a socket whose owner could not be found (bound but not listening?)"
    else:
        who = holder.describe()
    variable = f"{service.upper()}_PORT"
    if options.strict_ports:
        raise LaunchError(
            f"port {port} for the {service} is held by {who}; left alone (--strict-ports). "
            f"Stop that process, or choose another port: {variable}=<port> sora2 dev"
        )
    moved = ports.next_free_port(host, port, avoid=taken)
    if moved is None:
        raise LaunchError(
            f"port {port} for the {service} is held by {who}, and no port up to "
            f"{port + ports.PORT_SEARCH_SPAN} is free; set {variable} to a free port"
        )
    console.say(
        f"port {port} is held by {who}; not touching it. The {service} takes port {moved} instead."
    )
    return moved


# --- service commands ------------------------------------------------------------------------


def _service_specs(
    settings: Settings,
    options: LaunchOptions,
    choices: Mapping[str, PortChoice],
    console: Console,
) -> list[ServiceSpec]:
    base = _development_environment(settings)
    specs = []
    for service in options.services:
        choice = choices[service]
        env = dict(base)
        if service == "api":
            env.update(API_HOST=choice.host, API_PORT=str(choice.port))
            if "web" in choices:
                env["FRONTEND_URL"] = _frontend_url(settings, choices["web"], console)
        else:
            env.update(WEB_HOST=choice.host, WEB_PORT=str(choice.port))
            if "api" in choices:
                env["API_URL"] = _api_url(settings, choices["api"], console)
                env["API_URLS"] = ""  # the web proxies to the api started here, not a list
                env[RESTART_SIGNAL_ENV] = str(_restart_signal_path(settings))
        argv = (sys.executable, "-m", "sora2", "serve", service)
        health = choice.base_url + HEALTH_PATHS[service]
        specs.append(ServiceSpec(service, argv, env, choice.port, health))
    return specs


def _restart_signal_path(settings: Settings) -> Path:
    """One per launcher: two `sora2 dev` of one checkout never read each other's."""
    return settings.data_dir.resolve() / f"api-restarting.{os.getpid()}"


def _development_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NODE_ENV", None)  # an alias of APP_ENV; ours must be the one that counts
    env.pop("PORT", None)  # an alias of API_PORT, which the launcher sets per service
    env.update(
        APP_ENV="development",
        PYTHONUNBUFFERED="1",
        DATA_DIR=str(settings.data_dir.resolve()),
        LOG_DIR=str(settings.log_dir.resolve()),
    )
    return env


def _api_url(settings: Settings, api: PortChoice, console: Console) -> str:
    url = api.base_url
    if api.moved or urlsplit(settings.api_url).port != api.port:
        console.say(f"the web proxies to the api at API_URL={url}")
    return url


def _frontend_url(settings: Settings, web: PortChoice, console: Console) -> str:
    if not web.moved:
        return settings.frontend_url
    parts = urlsplit(settings.frontend_url)
    url = urlunsplit((parts.scheme, f"{parts.hostname}:{web.port}", "", "", ""))
    console.say(f"the api allows the moved web as FRONTEND_URL={url}")
    return url


# --- running ---------------------------------------------------------------------------------


async def _run(
    settings: Settings,
    specs: Sequence[ServiceSpec],
    options: LaunchOptions,
    console: Console,
    run_file: RunFile,
    started_at: float,
) -> int:
    stop = asyncio.Event()
    restart_signal = None
    if {spec.name for spec in specs} >= {"api", "web"}:
        restart_signal = RestartSignal(_restart_signal_path(settings))
    supervisors = [
        _supervisor(
            spec, options, console, run_file, restart_signal if spec.name == "api" else None
        )
        for spec in specs
    ]
    _handle_stop_signals(stop, supervisors, console)
    run_file.save(RunRecord(ProcessRecord.of(os.getpid()), str(Path.cwd())))
    # Watching starts first, so a change saved while the services come up is not missed.
    reloader = None
    if options.reload:
        reloader = asyncio.ensure_future(_reload(supervisors, options, stop))
    try:
        for supervisor in supervisors:
            try:
                seconds = await _unless_stopped(supervisor.start(), stop)
            except ServiceFailure as failure:
                log = console.transcript_path(supervisor.name)
                console.say(failure.explain(log), about=supervisor.name)
                return 1
            if seconds is None:
                return 0
            console.say(
                f"{supervisor.name} ready on {supervisor.spec.health_url} ({seconds:.2f} s)"
            )
        _print_summary(settings, specs, options, console, time.monotonic() - started_at)
        return await _supervise(supervisors, stop, console)
    finally:
        stop.set()
        if reloader is not None:
            reloader.cancel()
            await asyncio.gather(reloader, return_exceptions=True)
        await _stop_all(supervisors, console)
        if restart_signal is not None:
            restart_signal.clear()
        run_file.remove(os.getpid())


def _supervisor(
    spec: ServiceSpec,
    options: LaunchOptions,
    console: Console,
    run_file: RunFile,
    restart_signal: RestartSignal | None,
) -> Supervisor:
    def record(process: ServiceProcess) -> None:
        with contextlib.suppress(psutil.Error):
            service = ServiceRecord(spec.name, spec.port, ProcessRecord.of(process.pid))
            current = _current_run(run_file)
            run_file.save(current.with_service(service))

    return Supervisor(
        spec,
        console=console,
        start_timeout=options.start_timeout,
        grace=options.grace,
        on_started=record,
        restart_signal=restart_signal,
    )


def _current_run(run_file: RunFile) -> RunRecord:
    pid = os.getpid()
    found = next((run for run in run_file.runs() if run.launcher.pid == pid), None)
    return found or RunRecord(ProcessRecord.of(pid), str(Path.cwd()))


def _handle_stop_signals(
    stop: asyncio.Event, supervisors: Sequence[Supervisor], console: Console
) -> None:
    """First Ctrl-C/SIGTERM/SIGHUP: stop in order, gracefully. Second: kill everything at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if not stop.is_set():
            console.say(f"{signum.name}: stopping (again to kill at once)")
            stop.set()
            return
        console.say(f"{signum.name} again: killing every service now")
        for supervisor in supervisors:
            supervisor.kill_now()

    # SIGHUP: the terminal was closed; stop as gracefully as for Ctrl-C.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """The result of `work`, or None when `stop` is set first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when="FIRST_COMPLETED")
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _supervise(
    supervisors: Sequence[Supervisor], stop: asyncio.Event, console: Console
) -> int:
    tasks = {asyncio.ensure_future(item.supervise()): item for item in supervisors}
    stopped = asyncio.ensure_future(stop.wait())
    try:
        waiting: set[asyncio.Future[Any]] = {stopped, *tasks}
        done, _ = await asyncio.wait(waiting, return_when="FIRST_COMPLETED")
        for task in tasks:
            if task not in done:
                continue
            error = task.exception()
            if isinstance(error, CrashLoop):
                name = tasks[task].name
                console.say(error.explain(console.transcript_path(name)), about=name)
                return 1
            if error is not None:
                raise error
        return 0
    finally:
        stop.set()
        stopped.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _reload(
    supervisors: Sequence[Supervisor], options: LaunchOptions, stop: asyncio.Event
) -> None:
    by_name = {item.name: item for item in supervisors}
    await watch_and_reload(
        root=options.watch_root,
        services=list(by_name),
        on_change=lambda name, changed: by_name[name].request_reload(changed),
        stop=stop,
    )


async def _stop_all(supervisors: Sequence[Supervisor], console: Console) -> None:
    """The web first (it depends on the api), then the api; each given its grace period."""
    for supervisor in reversed(supervisors):
        if supervisor.process is not None and supervisor.process.returncode is None:
            console.say(f"stopping {supervisor.name} (PID {supervisor.process.pid})")
        await supervisor.stop()
    console.say("stopped")


def _print_summary(
    settings: Settings,
    specs: Sequence[ServiceSpec],
    options: LaunchOptions,
    console: Console,
    elapsed: float,
) -> None:
    urls = {spec.name: spec.health_url.removesuffix(HEALTH_PATHS[spec.name]) for spec in specs}
    lines = [f"{READY_MESSAGE} {elapsed:.2f} s"]
    if "web" in urls:
        lines.append(f"  app        {urls['web']}/")
    if "api" in urls:
        lines.append(f"  API docs   {urls['api']}/api-docs")
    if "web" in urls:
        lines.append(f"  health     {urls['web']}/api/proxy/health  (the api, through the proxy)")
    else:
        lines.append(f"  health     {urls['api']}/api/health")
    if "api" not in urls:
        lines.append(
            f"  the api is not started here; the web proxies to API_URL={settings.api_url}; "
            "start the api with: sora2 dev api"
        )
    lines.append(f"  console    {console.log_dir}/<service>.log")
    if options.reload:
        lines.append(f"reloading on changes under {options.watch_root}; Ctrl-C stops everything")
    else:
        lines.append("Ctrl-C stops everything")
    console.say("\n".join(lines))
