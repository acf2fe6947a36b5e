"""`python -m bench storage`: obstore (what sora2 uses) against aioboto3 on one S3 server.

Each client runs in its own fresh process pinned to core 1 (`bench/_storage_client.py`), against
moto's S3 server on core 0: a 256 MiB object (32 MiB with `--quick`) uploaded from a file
(multipart, 8 MiB parts, 4 in flight, as sora2 does), then 32 ranged reads of 1 MiB at random
offsets, then one whole streamed read. Reported: throughput, the client's CPU seconds, and the
growth of its peak RSS (VmHWM) during the upload and during the reads: flat memory shows as a
growth far below the object's size. obstore on a local folder is the floor for the reads.
Rounds alternate the clients; each row keeps its fastest round (the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench._processes import free_port

FULL_MIB = 256
QUICK_MIB = 32
ROUNDS = 3
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
}


def _start_moto(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
         "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto's S3 server did not start")


def _new_bucket(endpoint: str) -> str:
    import boto3  # type: ignore[import-untyped]

    name = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=name)
    return name


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_REGION"],
    }


def _run_client(client: str, env: dict[str, str], file: Path, *target: str) -> dict[str, Any]:
    result = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-m", "bench._storage_client", client,
         "--file", str(file), *target],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{client} failed ({result.returncode}): {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _mb_per_s(phase: dict[str, float]) -> float:
    return phase["bytes"] / phase["seconds"] / 1e6


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rounds, key=lambda r: r["upload"]["seconds"] + r["whole"]["seconds"])


def _row(name: str, report: dict[str, Any]) -> str:
    up, ranges, whole = report["upload"], report["ranges"], report["whole"]
    return (
        f"| {name} | {_mb_per_s(up):.0f} | {up['cpu']:.2f} | "
        f"{up['peak_rss_growth_kib'] / 1024:.0f} | {_mb_per_s(ranges):.0f} | "
        f"{_mb_per_s(whole):.0f} | {ranges['cpu'] + whole['cpu']:.2f} | "
        f"{report['read_peak_rss_growth_kib'] / 1024:.0f} |"
    )


def run(quick: bool) -> str:
    mib = QUICK_MIB if quick else FULL_MIB
    rounds = 1 if quick else ROUNDS
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = os.environ | CREDENTIALS | {"AWS_ENDPOINT_URL": endpoint}
    moto = _start_moto(port)
    results: dict[str, list[dict[str, Any]]] = {"obstore": [], "aioboto3": [], "local": []}
    try:
        with tempfile.TemporaryDirectory(prefix="sora2-storage-bench-") as workdir:
            file = Path(workdir) / "object.bin"
            with file.open("wb") as out:
                for _ in range(mib):
                    out.write(os.urandom(1024 * 1024))
            for number in range(rounds):
                order = ["obstore", "aioboto3"] if number % 2 == 0 else ["aioboto3", "obstore"]
                for client in order:
                    bucket = _new_bucket(endpoint)
                    results[client].append(_run_client(client, env, file, "--bucket", bucket))
                folder = Path(workdir) / f"folder-{number}"
                results["local"].append(_run_client("obstore", env, file, "--folder", str(folder)))
    finally:
        moto.terminate()
        moto.wait(10)
    table = [
        "| client | upload MB/s | upload CPU s | upload peak RSS growth MiB | 32 ranged reads "
        "of 1 MiB, MB/s | whole read MB/s | read CPU s | read peak RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|",
        _row("obstore 0.12 → moto S3", _best(results["obstore"])),
        _row("aioboto3 15 → moto S3", _best(results["aioboto3"])),
        _row("obstore 0.12 → local folder", _best(results["local"])),
    ]
    return (
        f"## Storage: obstore against aioboto3 ({mib} MiB object, best of {rounds})\n\n"
        + "\n".join(table)
        + "\n\nmoto's server (Python) is the S3 end: its own speed caps the throughputs, so "
        "compare the clients' CPU and memory first.\n"
    )
