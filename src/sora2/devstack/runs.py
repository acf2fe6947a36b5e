"""The run file: the processes a `sora2 dev` of this checkout started, so a later one may stop them.

`DATA_DIR/devstack.json` lists every live launcher of this checkout with the PID, create time
and command line of itself and of each service it runs. A PID alone proves nothing (PIDs are
reused), so a process counts as ours only when all three still match; anything else holding a
port is foreign and is never signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

RUN_FILE_NAME = "devstack.json"


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        process = psutil.Process(pid)
        return cls(pid, process.create_time(), tuple(process.cmdline()))

    def is_running(self) -> bool:
        """True when `pid` is still the very process recorded (not a reuse of its number)."""
        try:
            process = psutil.Process(self.pid)
            same = (
                process.create_time() == self.create_time
                and tuple(process.cmdline()) == self.cmdline
            )
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@dataclasses.dataclass(frozen=True)
class ServiceRecord:
    name: str
    port: int
    process: ProcessRecord


@dataclasses.dataclass(frozen=True)
class RunRecord:
    launcher: ProcessRecord
    checkout: str
    services: tuple[ServiceRecord, ...] = ()

    def with_service(self, service: ServiceRecord) -> RunRecord:
        others = tuple(item for item in self.services if item.name != service.name)
        return dataclasses.replace(self, services=(*others, service))

    def without_service(self, name: str) -> RunRecord:
        kept = tuple(item for item in self.services if item.name != name)
        return dataclasses.replace(self, services=kept)

    def holds_pid(self, pid: int) -> bool:
        return any(item.process.pid == pid and item.process.is_running() for item in self.services)


class RunFile:
    """Reads and updates the run file under an exclusive lock, dropping runs that have ended."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RUN_FILE_NAME
        self._lock_path = data_dir / f".{RUN_FILE_NAME}.lock"

    def runs(self) -> list[RunRecord]:
        with self._locked():
            return self._read_live()

    def save(self, run: RunRecord) -> None:
        with self._locked():
            runs = [item for item in self._read_live() if item.launcher.pid != run.launcher.pid]
            self._write([*runs, run])

    def remove(self, launcher_pid: int) -> None:
        with self._locked():
            runs = [item for item in self._read_live() if item.launcher.pid != launcher_pid]
            self._write(runs)

    def run_holding(self, pid: int) -> RunRecord | None:
        """The recorded run whose service is the (verified) process `pid`."""
        return next((run for run in self.runs() if run.holds_pid(pid)), None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_live(self) -> list[RunRecord]:
        try:
            document = json.loads(self.path.read_text())
            runs = [_run_from_json(item) for item in document.get("runs", [])]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # missing or damaged: nothing of ours can be proven to run
        return [run for run in runs if _still_relevant(run)]

    def _write(self, runs: list[RunRecord]) -> None:
        document = {"runs": [dataclasses.asdict(run) for run in runs]}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(self.path)


def _still_relevant(run: RunRecord) -> bool:
    """A run matters while its launcher or any of its services is alive."""
    return run.launcher.is_running() or any(item.process.is_running() for item in run.services)


def _process_from_json(data: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(int(data["pid"]), float(data["create_time"]), tuple(data["cmdline"]))


def _run_from_json(data: dict[str, Any]) -> RunRecord:
    services = tuple(
        ServiceRecord(str(item["name"]), int(item["port"]), _process_from_json(item["process"]))
        for item in data.get("services", [])
    )
    return RunRecord(_process_from_json(data["launcher"]), str(data["checkout"]), services)


def stop_previous_run(run: RunRecord, *, grace: float) -> None:
    """Stop an earlier `sora2 dev` of this checkout as Ctrl-C would, then make sure it is gone.

    The launcher is asked first (SIGTERM), since it stops its services in order. If it is gone
    already (killed with SIGKILL, say), its services are stopped directly, group by group.
    """
    if run.launcher.is_running():
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.launcher.pid, signal.SIGTERM)
        # The launcher stops each service with its own grace; allow for all of them.
        _wait_until_gone([run.launcher], timeout=grace * (len(run.services) + 1) + 2)
    for service in run.services:
        if service.process.is_running():
            stop_group(service.process, grace=grace)


def stop_group(process: ProcessRecord, *, grace: float) -> None:
    """SIGTERM to the process group led by `process`, a grace period, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    if not _wait_until_gone([process], timeout=grace):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        _wait_until_gone([process], timeout=2)


def _wait_until_gone(processes: list[ProcessRecord], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(item.is_running() for item in processes):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # polling another process's exit: there is nothing to wait on
    return True
