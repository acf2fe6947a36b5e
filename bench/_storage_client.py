"""One S3 client measured in its own process: `python -m bench._storage_client CLIENT …`.

Prints one JSON line: upload seconds, ranged-read and whole-read seconds, the process's CPU
seconds for each phase, and its peak RSS growth. Run by `bench/storage_bench.py`; the process is
fresh for every client so memory and CPU belong to that client alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PART = 8 * 1024 * 1024
CONCURRENCY = 4
READ_CHUNK = 256 * 1024
RANGE_BYTES = 1024 * 1024


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(work: Callable[[], Awaitable[int]]) -> dict[str, float]:
    cpu, start = _cpu(), time.perf_counter()
    moved = await work()
    return {"seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "bytes": moved}


def _offsets(size: int, count: int) -> list[int]:
    rng = random.Random(7)
    return [rng.randrange(0, size - RANGE_BYTES) for _ in range(count)]


async def _obstore(args: argparse.Namespace) -> dict[str, Any]:
    import obstore
    from obstore.store import LocalStore, S3Store

    store: LocalStore | S3Store = (
        LocalStore(args.folder, mkdir=True)
        if args.folder
        else S3Store(args.bucket, client_options={"allow_http": True})
    )
    size = Path(args.file).stat().st_size

    async def upload() -> int:
        await obstore.put_async(
            store, "bench.bin", Path(args.file), use_multipart=True,
            chunk_size=PART, max_concurrency=CONCURRENCY,
        )  # fmt: skip
        return size

    async def ranges() -> int:
        total = 0
        for offset in _offsets(size, args.ranges):
            result = await obstore.get_async(
                store, "bench.bin", options={"range": (offset, offset + RANGE_BYTES)}
            )
            async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                total += len(chunk)
        return total

    async def whole() -> int:
        total = 0
        result = await obstore.get_async(store, "bench.bin")
        async for chunk in result.stream(min_chunk_size=READ_CHUNK):
            total += len(chunk)
        return total

    return await _phases(upload, ranges, whole)


async def _aioboto3(args: argparse.Namespace) -> dict[str, Any]:
    import aioboto3
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

    size = Path(args.file).stat().st_size
    config = TransferConfig(
        multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY
    )
    async with aioboto3.Session().client("s3") as client:

        async def upload() -> int:
            await client.upload_file(args.file, args.bucket, "bench.bin", Config=config)
            return size

        async def ranges() -> int:
            total = 0
            for offset in _offsets(size, args.ranges):
                answer = await client.get_object(
                    Bucket=args.bucket, Key="bench.bin",
                    Range=f"bytes={offset}-{offset + RANGE_BYTES - 1}",
                )  # fmt: skip
                async for chunk in answer["Body"].iter_chunks(READ_CHUNK):
                    total += len(chunk)
            return total

        async def whole() -> int:
            total = 0
            answer = await client.get_object(Bucket=args.bucket, Key="bench.bin")
            async for chunk in answer["Body"].iter_chunks(READ_CHUNK):
                total += len(chunk)
            return total

        return await _phases(upload, ranges, whole)


async def _phases(
    upload: Callable[[], Awaitable[int]],
    ranges: Callable[[], Awaitable[int]],
    whole: Callable[[], Awaitable[int]],
) -> dict[str, Any]:
    baseline = _peak_rss_kib()
    _reset_peak()
    baseline = min(baseline, _peak_rss_kib())
    report: dict[str, Any] = {"upload": await _measure(upload)}
    report["upload"]["peak_rss_growth_kib"] = _peak_rss_kib() - baseline
    _reset_peak()
    baseline = _peak_rss_kib()
    report["ranges"] = await _measure(ranges)
    report["whole"] = await _measure(whole)
    report["read_peak_rss_growth_kib"] = _peak_rss_kib() - baseline
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("client", choices=["obstore", "aioboto3"])
    parser.add_argument("--bucket", default="")
    parser.add_argument("--folder", default="", help="obstore only: a local folder instead")
    parser.add_argument("--file", required=True)
    parser.add_argument("--ranges", type=int, default=32)
    args = parser.parse_args()
    run = _obstore if args.client == "obstore" else _aioboto3
    print(json.dumps(asyncio.run(run(args))), flush=True)
    # obstore's runtime threads may still be handing over a result: let them leave Python
    # before the interpreter finalizes (see sora2.api.storage.objects).
    time.sleep(0.1)


if __name__ == "__main__":
    main()
