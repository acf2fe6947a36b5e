"""The launcher's parts alone: console, transcripts, crash policy, reload map, run file, ports."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from pathlib import Path

import pytest

from sora2.devstack import ports
from sora2.devstack.console import Console, Transcript
from sora2.devstack.readiness import probe
from sora2.devstack.reload import services_affected
from sora2.devstack.runs import ProcessRecord, RunFile, RunRecord, ServiceRecord
from sora2.devstack.supervise import CrashPolicy


def test_console_aligns_prefixes_and_keeps_colour_for_terminals(tmp_path: Path) -> None:
    plain = io.StringIO()
    console = Console(["api", "worker"], log_dir=tmp_path, stream=plain)
    console.line("api", "Uvicorn running\n")
    console.say("all ready")
    console.close()
    assert plain.getvalue().splitlines() == ["api    | Uvicorn running", "dev    | all ready"]

    coloured = io.StringIO()
    console = Console(["api"], log_dir=tmp_path, stream=coloured, colour=True)
    console.line("api", "hello")
    console.close()
    assert coloured.getvalue() == "\x1b[36mapi\x1b[0m | hello\n"


def test_no_color_wins_even_when_colour_is_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    console = Console(["api"], log_dir=tmp_path, stream=io.StringIO())
    assert console.colour is False
    console.close()


def test_launcher_lines_about_a_service_land_in_its_transcript(tmp_path: Path) -> None:
    console = Console(["api", "web"], log_dir=tmp_path, stream=io.StringIO())
    console.mark_start("sora2 dev api web (PID 1)")
    console.say("api killed by SIGKILL", about="api")
    console.close()
    api = (tmp_path / "api.log").read_text().splitlines()
    assert api[0].startswith("===== ")
    assert api[1] == "[sora2 dev] api killed by SIGKILL"
    assert "killed" not in (tmp_path / "web.log").read_text()


def test_transcript_rotates_by_size_and_keeps_a_few_backups(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    transcript = Transcript(path, max_bytes=100, backups=2)
    for index in range(12):
        transcript.write(f"line {index:02d} " + "x" * 30)
    transcript.close()
    assert path.stat().st_size <= 100
    assert (tmp_path / "api.log.1").exists()
    assert (tmp_path / "api.log.2").exists()
    assert not (tmp_path / "api.log.3").exists()
    assert "line 11" in path.read_text()


def test_crash_policy_backs_off_then_gives_up_within_the_window() -> None:
    policy = CrashPolicy(max_crashes=4, window=60.0, first_delay=0.25, max_delay=1.0)
    delays = [policy.record_crash(now) for now in (0.0, 1.0, 2.0)]
    assert delays == [0.25, 0.5, 1.0]
    assert policy.record_crash(3.0) is None


def test_crash_policy_forgets_crashes_older_than_the_window() -> None:
    policy = CrashPolicy(max_crashes=2, window=10.0)
    assert policy.record_crash(0.0) == 0.25
    assert policy.record_crash(100.0) == 0.25  # the first one is long forgotten


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ("api/routes.py", {"api"}),
        ("web/app.py", {"web"}),
        ("proxy/_retry.py", {"web"}),
        ("web/templates/index.html", {"web"}),
        ("settings.py", {"api", "web"}),
        ("jobs/worker.py", {"api", "web"}),
        ("devstack/launcher.py", set()),
        ("web/static/app.css", set()),
        ("api/__pycache__/x.cpython-311.pyc", set()),
    ],
)
def test_a_change_reloads_the_services_that_run_that_code(
    tmp_path: Path, changed: str, expected: set[str]
) -> None:
    path = tmp_path / changed
    assert services_affected(path, root=tmp_path, services=["api", "web"]) == expected


def test_a_change_reloads_only_services_that_are_running(tmp_path: Path) -> None:
    assert services_affected(tmp_path / "settings.py", root=tmp_path, services=["web"]) == {"web"}


def test_run_file_recognises_a_process_only_by_pid_create_time_and_command(
    tmp_path: Path,
) -> None:
    run_file = RunFile(tmp_path)
    me = ProcessRecord.of(os.getpid())
    impostor = ProcessRecord(me.pid, me.create_time + 1.0, me.cmdline)  # a reused PID
    run_file.save(RunRecord(me, str(tmp_path), (ServiceRecord("api", 1, me),)))
    assert run_file.run_holding(os.getpid()) is not None

    run_file.save(RunRecord(me, str(tmp_path), (ServiceRecord("api", 1, impostor),)))
    assert run_file.run_holding(os.getpid()) is None


def test_run_file_drops_runs_whose_processes_have_ended(tmp_path: Path) -> None:
    run_file = RunFile(tmp_path)
    gone = ProcessRecord(2**22 + 7, 0.0, ("python", "-m", "sora2", "dev"))
    run_file.save(RunRecord(gone, str(tmp_path)))
    assert run_file.runs() == []


def test_a_damaged_run_file_proves_nothing(tmp_path: Path) -> None:
    (tmp_path / "devstack.json").write_text("{not json")
    assert RunFile(tmp_path).runs() == []


def test_port_holder_and_next_free_port() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not ports.can_bind("127.0.0.1", port)
        holder = ports.holder_of(port)
        assert holder is not None
        assert holder.pid == os.getpid()
        assert holder.describe().startswith(f"PID {os.getpid()} (")
        moved = ports.next_free_port("127.0.0.1", port)
        assert moved is not None
        assert moved > port
        assert ports.can_bind("127.0.0.1", moved)


def test_a_host_that_is_not_ours_is_named_as_the_problem() -> None:
    assert ports.bind_problem("127.0.0.1") is None
    problem = ports.bind_problem("192.0.2.1")  # TEST-NET-1: never an address of this machine
    assert problem is not None
    assert "192.0.2.1" in problem


async def _serve_bytes(reply: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}', "HTTP 200"),
        (b'HTTP/1.1 503 Service Unavailable\r\n\r\n{"database":"down"}', "HTTP 503"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200", "closed before a complete HTTP response"),
    ],
)
async def test_the_health_probe_says_what_answered(reply: bytes, expected: str) -> None:
    server = await _serve_bytes(reply)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await probe(f"http://127.0.0.1:{port}/api/health")
    finally:
        server.close()
        await server.wait_closed()
    assert expected in answer.describe()
    assert answer.ready == (expected == "HTTP 200")


async def test_the_health_probe_names_a_refused_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    answer = await probe(f"http://127.0.0.1:{port}/healthz")
    assert answer.status is None
    assert "Connection refused" in answer.describe()


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["mysql", "-u", "root", "-p", "hunter2"], "mysql -u root -p ***"),
        (
            ["app", "--db-password", "hunter2", "--port", "3101"],
            "app --db-password *** --port 3101",
        ),
        (["app", "--api-key=sk-live-1"], "app --api-key=***"),
        (
            ["env", "OPENAI_API_KEY=sk-live-1", "node", "server.js"],
            "env OPENAI_API_KEY=*** node server.js",
        ),
        (["python3", "-c", "import x\nx.run()"], "python3 -c import x x.run()"),
    ],
)
def test_a_holders_command_is_shown_on_one_line_without_its_secrets(
    command: list[str], shown: str
) -> None:
    assert ports.describe_command(command) == shown
