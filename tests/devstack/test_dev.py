"""`sora2 dev` end to end: real processes, real ports, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.devstack.conftest import READY, DevStack, Listener, get, is_gone, wait_until


def proxy_health(web_port: int) -> int:
    try:
        status, _ = get(f"http://127.0.0.1:{web_port}/api/proxy/health", timeout=3)
    except OSError:
        return 0
    return status


@contextlib.contextmanager
def polling_page(web_port: int) -> Iterator[list[int]]:
    """A page polling the api through the proxy every 50 ms, as the video page does; yields the
    statuses it got (0 for no answer at all)."""
    statuses: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                status, _ = get(f"http://127.0.0.1:{web_port}/api/proxy/health", timeout=30)
            except OSError:
                status = 0
            statuses.append(status)
            time.sleep(0.05)  # the page's own polling interval

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield statuses
    finally:
        done.set()
        poller.join(timeout=35)


def test_stack_comes_up_and_the_page_reaches_the_api_through_the_proxy(
    shared_stack: DevStack,
) -> None:
    stack = shared_stack
    status, body = get(f"http://127.0.0.1:{stack.web_port}/api/proxy/health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert get(f"http://127.0.0.1:{stack.web_port}/")[0] == 200
    assert get(f"http://127.0.0.1:{stack.api_port}/api-docs")[0] == 200
    # The api was up before the web was started, and the summary names the working URLs.
    output = stack.output
    assert output.index("api ready on") < output.index("web ready on") < output.index(READY)
    assert f"http://127.0.0.1:{stack.web_port}/" in output
    assert f"http://127.0.0.1:{stack.api_port}/api-docs" in output
    assert f"http://127.0.0.1:{stack.web_port}/api/proxy/health" in output
    # The start-up time it reports is the real one: never more than this test saw from spawning
    # it to reading the line (slack: two 10 ms kernel ticks and the rounding to 0.01 s), and it
    # counts the interpreter's start too.
    reported = float(stack.wait_for(READY + r" ([\d.]+) s").group(1))
    assert stack.ready_seen_after is not None
    assert 0.05 < reported <= stack.ready_seen_after + 0.05


def test_every_line_is_prefixed_and_kept_in_a_transcript_per_service(
    shared_stack: DevStack,
) -> None:
    stack = shared_stack
    stack.wait_for(r"^web \| .*web listening on")
    stack.wait_for(r"^api \| .*Uvicorn running")
    assert "\x1b[" not in stack.output  # not a terminal: no colour codes
    transcript = stack.folder / "logs" / "dev" / "api.log"
    wait_until(
        lambda: "Uvicorn running" in transcript.read_text(), timeout=10, what="the transcript"
    )
    assert transcript.read_text().startswith("===== ")
    assert "sora2 dev api web" in transcript.read_text().splitlines()[0]


def test_ctrl_c_stops_web_then_api_and_leaves_no_process_behind(start_stack: Any) -> None:
    stack = start_stack("--no-reload")
    stack.wait_ready()
    started = dict(stack.started)
    assert len(started) >= 2

    assert stack.interrupt() == 0

    assert [pid for pid, process in started.items() if not is_gone(process)] == []
    output = stack.output
    assert output.index("stopping web") < output.index("stopping api") < output.index("stopped")
    assert json.loads((stack.folder / "data" / "devstack.json").read_text())["runs"] == []


def test_a_port_held_by_a_foreign_process_is_left_alone_and_the_stack_moves(
    start_stack: Any, listeners: list[Listener]
) -> None:
    api_holder, web_holder = Listener(), Listener()
    listeners.extend([api_holder, web_holder])
    stack = start_stack("--no-reload", api_port=api_holder.port, web_port=web_holder.port)
    stack.wait_ready()

    holder = f"port {api_holder.port} is held by PID {os.getpid()}"
    assert holder in stack.output
    moved_api = int(stack.wait_for(r"The api takes port (\d+) instead").group(1))
    moved_web = int(stack.wait_for(r"The web takes port (\d+) instead").group(1))
    assert {moved_api, moved_web}.isdisjoint({api_holder.port, web_holder.port})
    assert f"API_URL=http://127.0.0.1:{moved_api}" in stack.output
    # The moved web reaches the moved api, and the holders were never touched.
    assert proxy_health(moved_web) == 200
    assert api_holder.still_accepts()
    assert web_holder.still_accepts()


def test_strict_ports_refuses_a_held_port_and_starts_nothing(
    start_stack: Any, listeners: list[Listener]
) -> None:
    holder = Listener()
    listeners.append(holder)
    stack = start_stack("--strict-ports", "--no-reload", api_port=holder.port)
    assert stack.process.wait(timeout=30) == 1
    assert f"port {holder.port} for the api is held by PID {os.getpid()}" in stack.output
    assert "--strict-ports" in stack.output
    assert stack.started == {}
    assert holder.still_accepts()


def test_an_earlier_dev_of_this_checkout_is_stopped_gracefully(start_stack: Any) -> None:
    first = start_stack("--no-reload")
    first.wait_ready()
    earlier = dict(first.started)

    second = start_stack("--no-reload", api_port=first.api_port, web_port=first.web_port)
    second.wait_ready()

    assert "held by an earlier sora2 dev of this checkout" in second.output
    assert first.process.wait(timeout=5) == 0  # it stopped the way Ctrl-C stops it
    assert "stopped" in first.output
    assert all(is_gone(process) for process in earlier.values())
    # Same ports as asked: nothing had to move.
    assert "instead" not in second.output
    assert proxy_health(second.web_port) == 200
    # The transcript was appended to, not truncated: one start marker per run.
    transcript = (second.folder / "logs" / "dev" / "api.log").read_text()
    assert transcript.count("===== ") == 2


def test_a_killed_api_is_restarted_and_the_proxy_recovers(shared_stack: DevStack) -> None:
    stack = shared_stack
    api_pid = stack.service_pid("api")
    assert api_pid is not None
    mark = len(stack.lines)

    with polling_page(stack.web_port) as statuses:
        os.kill(api_pid, signal.SIGKILL)
        stack.wait_for(r"api killed by SIGKILL", after=mark)
        stack.wait_for(r"restarting api in", after=mark)
        stack.wait_for(r"api is back, ready in", after=mark)
        seen = len(statuses)
        wait_until(lambda: len(statuses) > seen + 3, timeout=15, what="polls after the restart")
    assert stack.service_pid("api") not in (None, api_pid)
    assert stack.process.poll() is None
    # While the launcher restarted the api, the page's requests waited instead of failing (a
    # request already inside the killed api when it died may fail: nothing can answer it).
    failed = [status for status in statuses if status != 200]
    assert len(failed) <= 1, statuses


def test_repeated_crashes_stop_the_stack_with_an_explanation(start_stack: Any) -> None:
    stack = start_stack("api", "--no-reload")  # the web would only add start-up time
    stack.wait_ready()
    killed: set[int] = set()

    def kill_new_api() -> bool:
        if stack.process.poll() is not None:
            return True
        pid = stack.service_pid("api")
        if pid is not None and pid not in killed:
            stack.remember_pids()
            killed.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return False

    wait_until(kill_new_api, timeout=40, what="the launcher to give up")

    assert stack.process.wait(timeout=30) == 1
    assert "5 crashes within 60 s, so it is not restarted again" in stack.output
    assert stack.leftovers() == []


def _site_with(folder: Path, code: str) -> dict[str, str]:
    """A `sitecustomize` that breaks `sora2 serve api` the way a bad install or bug would."""
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nif sys.argv[-2:] == ['serve', 'api']:\n" + code
    )
    return {"PYTHONPATH": str(site)}


def test_an_api_that_crashes_at_start_is_reported_with_its_last_lines(
    start_stack: Any, tmp_path: Path
) -> None:
    env = _site_with(
        tmp_path,
        "    print('ImportError: cannot import name frobnicate', flush=True)\n"
        "    import os\n    os._exit(3)\n",
    )
    stack = start_stack("--no-reload", env=env)

    assert stack.process.wait(timeout=30) == 1
    output = stack.output
    assert f"api exited with status 3 before http://127.0.0.1:{stack.api_port}" in output
    assert "  ImportError: cannot import name frobnicate" in output
    assert "web ready" not in output
    assert not any(line.startswith("web |") for line in stack.lines)
    assert READY not in output


def test_an_api_that_never_answers_is_reported_after_the_timeout(
    start_stack: Any, tmp_path: Path
) -> None:
    env = _site_with(
        tmp_path,
        "    import signal\n    print('stuck on something', flush=True)\n    signal.pause()\n",
    )
    stack = start_stack("--no-reload", "--timeout", "1", "--grace", "1", env=env)

    assert stack.process.wait(timeout=30) == 1
    output = stack.output
    assert "api did not answer" in output
    assert "within 1 s" in output
    assert "  stuck on something" in output
    assert stack.leftovers() == []


def test_a_code_change_reloads_only_the_affected_service(shared_stack: DevStack) -> None:
    stack = shared_stack
    assert stack.watch_root is not None
    wait_until(lambda: proxy_health(stack.web_port) == 200, timeout=15, what="a healthy stack")
    api_pid, web_pid = stack.service_pid("api"), stack.service_pid("web")
    mark = len(stack.lines)

    changed = stack.watch_root / "api" / "routes.py"
    with polling_page(stack.web_port) as statuses:
        for attempt in range(3):
            # Saved again if unnoticed: on a slow machine the watcher may still be arming. Each
            # save gets a generous wait, since a save noticed late besides would reload the api
            # a second time, in the middle of the next test (which shares this stack).
            changed.write_text(f"CHANGED = {attempt}\n")
            with contextlib.suppress(AssertionError):
                stack.wait_for(r"api: code changed \(api/routes.py\)", timeout=10, after=mark)
                break
        else:
            raise AssertionError("the change was never noticed:\n" + stack.output)
        stack.wait_for(r"api reloaded, ready in", after=mark)
        seen = len(statuses)
        wait_until(lambda: len(statuses) > seen + 3, timeout=15, what="polls after the reload")
    # The page never saw the reload: its requests waited for the new api instead of failing.
    assert set(statuses) == {200}, statuses
    assert stack.service_pid("api") not in (None, api_pid)
    assert stack.service_pid("web") == web_pid
    assert psutil.pid_exists(web_pid or 0)
    # The web kept running; its proxy finds the new api by itself.
    wait_until(lambda: proxy_health(stack.web_port) == 200, timeout=15, what="proxy recovery")


def test_the_web_alone_proxies_to_an_api_started_elsewhere(
    start_stack: Any, shared_stack: DevStack
) -> None:
    api_url = f"http://127.0.0.1:{shared_stack.api_port}"
    stack = start_stack("web", "--no-reload", env={"API_URL": api_url})
    stack.wait_ready()

    assert f"the api is not started here; the web proxies to API_URL={api_url}" in stack.output
    assert "api ready" not in stack.output
    wait_until(lambda: proxy_health(stack.web_port) == 200, timeout=15, what="the proxied api")
