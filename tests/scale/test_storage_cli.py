"""`sora2 storage check` and `sora2 storage migrate` (interrupted, then resumed), and the doctor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.s3 import S3Server

OBJECTS = 300


def _env(tmp_path: Path, s3_server: S3Server, **more: str) -> dict[str, str]:
    return os.environ | s3_server.env | {"DATA_DIR": str(tmp_path), "APP_ENV": "test"} | more


def _sora2(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sora2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _fill_folder(root: Path) -> dict[str, bytes]:
    files = {}
    for n in range(OBJECTS):
        key = f"videos/user-{n % 7}/video-{n}.mp4"
        content = n.to_bytes(4, "big") * 4096
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(content)
        files[key] = content
    return files


def test_migrate_copies_everything_and_resumes_after_being_killed(
    tmp_path: Path, s3_server: S3Server
) -> None:
    files = _fill_folder(tmp_path / "media")  # the default store: DATA_DIR/media
    bucket = s3_server.new_bucket()
    env = _env(tmp_path, s3_server)
    target = f"s3://{bucket}/media"
    first = subprocess.Popen(
        [sys.executable, "-m", "sora2", "storage", "migrate", "--to", target, "--jobs", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(s3_server.keys(bucket)) < 30:
        assert first.poll() is None, "the migration ended before it could be interrupted"
        assert time.monotonic() < deadline, "the migration copied nothing"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    copied_before = len(s3_server.keys(bucket))
    assert 30 <= copied_before < OBJECTS

    second = _sora2("storage", "migrate", "--to", target, env=env)
    assert second.returncode == 0, second.stderr
    skipped = int(second.stdout.split("skipped ")[1].split()[0])
    assert skipped >= copied_before - 1  # the one in flight at the kill may be copied again
    assert f"set STORAGE_URL={target}" in second.stdout

    stored = s3_server.keys(bucket)
    assert stored == {f"media/{key}": len(content) for key, content in files.items()}
    client = s3_server.client()
    last = OBJECTS - 1
    for key in ("videos/user-0/video-0.mp4", f"videos/user-{last % 7}/video-{last}.mp4"):
        body = client.get_object(Bucket=bucket, Key=f"media/{key}")["Body"].read()
        assert body == files[key]
    assert (tmp_path / "media" / "videos").is_dir()  # the source is left as it was

    again = _sora2("storage", "migrate", "--to", target, env=env)
    assert f"copied 0 object(s) (0 bytes), skipped {OBJECTS}" in again.stdout


def test_check_reports_a_writable_bucket_and_a_missing_one(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket()
    good = _sora2("storage", "check", "--json", env=_env(tmp_path, s3_server,
                  STORAGE_URL=f"s3://{bucket}/p"))  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["writable"] is True
    assert s3_server.keys(bucket) == {}  # the probe cleans up after itself

    bad = _sora2("storage", "check", env=_env(tmp_path, s3_server, STORAGE_URL="s3://gone-bucket"))
    assert bad.returncode == 1
    assert "s3://gone-bucket" in bad.stderr
    assert "AWS_ENDPOINT_URL" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("url", ["s3://", "file://relative/x", "ftp://host/x"])
def test_bad_urls_are_refused_naming_the_form(
    tmp_path: Path, s3_server: S3Server, url: str
) -> None:
    result = _sora2("storage", "migrate", "--to", url, env=_env(tmp_path, s3_server))
    assert result.returncode == 2
    assert "s3://bucket[/prefix]" in result.stderr


def test_doctor_fails_on_a_bucket_it_cannot_write(tmp_path: Path, s3_server: S3Server) -> None:
    env = _env(tmp_path, s3_server, STORAGE_URL="s3://not-created-bucket/x", LOG_DIR=str(tmp_path))
    result = _sora2("doctor", "--json", env=env)
    findings = _findings(result)
    assert findings["storage"]["status"] == "fail"
    assert "s3://not-created-bucket/x" in findings["storage"]["detail"]
    assert result.returncode == 1
    bucket = s3_server.new_bucket()
    env["STORAGE_URL"] = f"s3://{bucket}"
    assert _findings(_sora2("doctor", "--json", env=env))["storage"]["status"] == "ok"


def _findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {item["check"]: item for item in json.loads(result.stdout)["findings"]}


def test_commands_that_used_the_bucket_exit_cleanly_every_time(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """obstore's runtime threads once aborted the process at exit (134) in half the runs."""
    env = _env(tmp_path, s3_server, STORAGE_URL=f"s3://{s3_server.new_bucket()}")
    codes = [_sora2("storage", "check", env=env).returncode for _ in range(8)]
    assert codes == [0] * 8
