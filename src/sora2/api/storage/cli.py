"""`sora2 storage check [--json]` and `sora2 storage migrate --to URL`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field

from sora2.api.storage.objects import Storage, StorageUnavailable, copy_object
from sora2.commands import CommandExit, Commands, settings_or_exit
from sora2.settings import Settings, check_storage_url

MIGRATE_CONCURRENCY = 8


def register(commands: Commands) -> None:
    storage = commands.add_parser("storage", help="where videos, thumbnails and images live")
    actions = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="write, read back and delete a small object; exit 1 if the store fails"
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_check)
    migrate = actions.add_parser(
        "migrate",
        help="copy every stored file to another store (run it again to resume)",
        description=(
            "Copies every object from the current store (STORAGE_URL, or --from) to --to. "
            "Objects already there with the same size are skipped, so an interrupted run "
            "resumes where it stopped. Nothing is deleted; afterwards set STORAGE_URL to the "
            "new store and restart the api and the workers."
        ),
    )
    migrate.add_argument("--to", required=True, metavar="URL", help="file:///folder or s3://…")
    migrate.add_argument(
        "--from", dest="source", metavar="URL", help="default: the current STORAGE_URL"
    )
    migrate.add_argument(
        "--jobs",
        type=int,
        default=MIGRATE_CONCURRENCY,
        metavar="N",
        help=f"objects copied at once (default {MIGRATE_CONCURRENCY})",
    )
    migrate.set_defaults(handler=_migrate)


def _store(settings: Settings, url: str, option: str) -> Storage:
    try:
        checked = check_storage_url(url)
    except ValueError as error:
        raise CommandExit(f"{option}: {error}") from None
    return Storage.from_url(checked, scratch=settings.data_dir / "scratch")


def _check(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    storage = Storage.from_url(settings.resolved_storage_url, scratch=settings.data_dir / "scratch")
    try:
        asyncio.run(storage.probe())
    except StorageUnavailable as error:
        fix = (
            "check the bucket exists and AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
            if storage.url.startswith("s3://")
            else "check the folder exists and this user may write to it"
        )
        if args.json:
            print(json.dumps({"url": storage.url, "writable": False, "message": str(error),
                              "fix": fix}))  # fmt: skip
            return 1
        raise CommandExit(f"{error}; {fix}", 1) from None
    if args.json:
        print(json.dumps({"url": storage.url, "writable": True, "message": "writable"}))
    else:
        print(f"{storage.url}: reachable and writable")
    return 0


@dataclass
class _Tally:
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    failed: list[str] = field(default_factory=list)


async def _copy_all(source: Storage, target: Storage, jobs: int) -> _Tally:
    tally = _Tally()
    slots = asyncio.Semaphore(jobs)

    async def one(key: str, size: int) -> None:
        async with slots:
            there = await target.stat(key)
            if there is not None and there.size == size:
                tally.skipped += 1
                return
            try:
                tally.bytes_copied += await copy_object(source, target, key)
                tally.copied += 1
            except FileNotFoundError:
                tally.skipped += 1  # deleted meanwhile: nothing to copy
            except StorageUnavailable as error:
                tally.failed.append(f"{key}: {error}")

    listed = [item async for item in source.objects()]
    async with asyncio.TaskGroup() as group:
        for key, size in listed:
            group.create_task(one(key, size))
    return tally


def _migrate(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    if args.jobs < 1:
        raise CommandExit("--jobs must be at least 1")
    source = _store(settings, args.source or settings.resolved_storage_url, "--from")
    target = _store(settings, args.to, "--to")
    if source.url == target.url:
        raise CommandExit(f"--to is the store in use already ({source.url})")
    print(f"copying {source.url} → {target.url}", file=sys.stderr)
    try:
        asyncio.run(target.probe())
        tally = asyncio.run(_copy_all(source, target, args.jobs))
    except StorageUnavailable as error:
        raise CommandExit(f"{error}; run the command again to resume", 1) from None
    print(
        f"copied {tally.copied} object(s) ({tally.bytes_copied} bytes), "
        f"skipped {tally.skipped} already there"
    )
    if tally.failed:
        for line in tally.failed[:20]:
            print(f"  failed: {line}", file=sys.stderr)
        raise CommandExit(
            f"{len(tally.failed)} object(s) could not be copied; run the command again to resume",
            1,
        )
    print(f"done: set STORAGE_URL={target.url} and restart the api and the workers")
    return 0
