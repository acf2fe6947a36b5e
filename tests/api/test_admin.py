"""The admin api: every route for admins only, every change audited in its own transaction."""

from __future__ import annotations

from typing import Any

from sora2.api.providers.keys import KeyLease, KeyPool
from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, register_admin, running_api, wait_for
from tests.api.test_videos import balance, create, ledger
from tests.api.test_worker import until_status, worker_running

ADMIN_READS = [
    "/api/admin/stats",
    "/api/admin/stats/daily",
    "/api/admin/users",
    "/api/admin/videos",
    "/api/admin/jobs",
    "/api/admin/audit",
    "/api/admin/config",
]


async def audit(api: RunningApi, token: str, query: str = "") -> list[dict[str, Any]]:
    status, body, _ = await api.request("GET", f"/api/admin/audit?{query}", token=token)
    assert status == 200, body
    return list(body["items"])


async def test_every_admin_route_is_refused_to_others(api: RunningApi) -> None:
    user_token, user = await api.register()
    uid = user["user"]["id"]
    changes = [
        ("POST", f"/api/admin/users/{uid}/credits", {"amount": 5, "reason": "x"}),
        ("PUT", f"/api/admin/users/{uid}/status", {"status": "banned"}),
        ("POST", "/api/admin/videos/some-id/cancel", None),
        ("POST", "/api/admin/jobs/1/retry", None),
    ]
    for path in ADMIN_READS:
        assert (await api.request("GET", path, token=user_token))[0] == 403, path
    for method, path, body in changes:
        status, answer, _ = await api.request(method, path, token=user_token, json=body)
        assert status == 403, path
        assert answer["error"] == "Forbidden"
    assert await balance(api, user_token) == 100  # nothing changed


async def test_a_long_reason_fits_and_the_admin_stays_hidden_from_the_user(
    api: RunningApi,
) -> None:
    """Issue 12 §4: a 190-character reason plus " (by admin email)" overflowed the ledger's
    200-character description — a 500 on PostgreSQL. The admin is now a column of its own."""
    admin_token, admin = await register_admin(api)
    user_token, user = await api.register()
    reason = "Goodwill credit for the outage of 3 December; " + "r" * 144
    assert len(reason) == 190
    status, body, _ = await api.request(
        "POST",
        f"/api/admin/users/{user['user']['id']}/credits",
        token=admin_token,
        json={"amount": 40, "reason": reason},
        headers={"X-Request-ID": "req-credit-190"},
    )
    assert status == 200, body
    assert body["credits"] == 140
    _, page, _ = await api.request("GET", "/api/credits/transactions", token=user_token)
    newest = page["items"][0]
    assert (newest["type"], newest["amount"], newest["description"]) == ("admin", 40, reason)
    assert admin["email"] not in str(page)
    assert "actorId" not in newest
    [entry] = await audit(api, admin_token, "action=user.credits")
    assert entry["actor"] == admin["email"]
    assert entry["actorId"] == admin["id"]
    assert (entry["targetType"], entry["targetId"]) == ("user", user["user"]["id"])
    assert entry["reason"] == reason
    assert (entry["before"], entry["after"]) == ({"credits": 100}, {"credits": 140})
    assert entry["requestId"] == "req-credit-190"


async def test_a_refused_change_leaves_no_audit_row(api: RunningApi) -> None:
    admin_token, admin = await register_admin(api)
    user_token, user = await api.register()
    status, body, _ = await api.request(
        "POST",
        f"/api/admin/users/{user['user']['id']}/credits",
        token=admin_token,
        json={"amount": -150, "reason": "too much"},
    )
    assert status == 409
    assert body["details"]["balance"] == 100
    status, body, _ = await api.request(
        "PUT",
        f"/api/admin/users/{admin['id']}/status",
        token=admin_token,
        json={"status": "banned"},
    )
    assert status == 400
    assert body["details"]["fields"][0]["field"] == "status"
    assert await audit(api, admin_token) == []
    assert await ledger(api, user_token) == [("gift", 100)]


async def test_ban_ends_sessions_and_unban_lets_the_user_back(api: RunningApi) -> None:
    admin_token, _ = await register_admin(api)
    user_token, user = await api.register()
    uid = user["user"]["id"]
    status, body, _ = await api.request(
        "PUT",
        f"/api/admin/users/{uid}/status",
        token=admin_token,
        json={"status": "banned", "reason": "spam"},
    )
    assert (status, body["status"]) == (200, "banned")
    assert (await api.request("GET", "/api/auth/me", token=user_token))[0] == 401
    login = {"email": user["user"]["email"], "password": "correct-horse-9"}
    assert (await api.request("POST", "/api/auth/login", json=login))[0] == 403
    status, body, _ = await api.request(
        "PUT", f"/api/admin/users/{uid}/status", token=admin_token, json={"status": "active"}
    )
    assert (status, body["status"]) == (200, "active")
    assert (await api.request("POST", "/api/auth/login", json=login))[0] == 200
    entries = await audit(api, admin_token, f"targetId={uid}")
    assert [(e["action"], e["before"], e["after"], e["reason"]) for e in entries] == [
        ("user.unban", {"status": "banned"}, {"status": "active"}, None),
        ("user.ban", {"status": "active"}, {"status": "banned"}, "spam"),
    ]


async def test_users_search_by_email_nickname_or_id(api: RunningApi) -> None:
    admin_token, _ = await register_admin(api)
    _, one = await api.register(nickname="Zebra Keeper")
    _, two = await api.register()
    for search, expected in (
        ("zebra", one),
        (one["user"]["email"][:10].upper(), one),
        (two["user"]["id"], two),
    ):
        status, body, _ = await api.request(
            "GET", "/api/admin/users", token=admin_token, params={"search": search}
        )
        assert status == 200
        assert [u["id"] for u in body["items"]] == [expected["user"]["id"]], search


async def test_admin_lists_and_cancels_anyones_video_with_one_refund(api: RunningApi) -> None:
    admin_token, _ = await register_admin(api)
    user_token, user = await api.register()
    _, video = await create(api, user_token, seconds=8)
    await create(api, (await api.register())[0])  # someone else's, filtered out below
    status, body, _ = await api.request(
        "GET",
        "/api/admin/videos",
        token=admin_token,
        params={"status": "queued", "user": user["user"]["email"]},
    )
    assert status == 200
    assert [(v["id"], v["userEmail"]) for v in body["items"]] == [
        (video["id"], user["user"]["email"])
    ]
    status, cancelled, _ = await api.request(
        "POST",
        f"/api/admin/videos/{video['id']}/cancel",
        token=admin_token,
        json={"reason": "stuck"},
    )
    assert (status, cancelled["status"]) == (200, "cancelled")
    assert "administrator" in cancelled["errorMessage"]
    again, body, _ = await api.request(
        "POST", f"/api/admin/videos/{video['id']}/cancel", token=admin_token
    )
    assert (again, body["details"]["status"]) == (409, "cancelled")
    assert await balance(api, user_token) == 100
    assert await ledger(api, user_token) == [("refund", 8), ("consume", -8), ("gift", 100)]
    [entry] = await audit(api, admin_token, "action=video.cancel")
    assert (entry["targetId"], entry["reason"]) == (video["id"], "stuck")
    assert entry["before"] == {"status": "queued"}
    missing, body, _ = await api.request(
        "POST", "/api/admin/videos/no-such-video/cancel", token=admin_token
    )
    assert missing == 404


async def test_a_failed_job_is_listed_with_its_error_and_retried(
    api: RunningApi, settings: Settings, provider: ScriptedProvider
) -> None:
    admin_token, _ = await register_admin(api)
    user_token, _ = await api.register()
    _, video = await create(api, user_token)
    provider.fail_with = ("content_policy", "The prompt was refused")
    async with worker_running(settings, provider):
        await until_status(api, user_token, video["id"], "failed")
    status, jobs, _ = await api.request(
        "GET", "/api/admin/jobs", token=admin_token, params={"status": "failed"}
    )
    assert status == 200
    [job] = jobs["items"]
    assert job["videoId"] == video["id"]
    assert "refused" in (job["videoError"] or "") + (job["lastError"] or "")
    assert await balance(api, user_token) == 100  # the failure was refunded
    status, retried, _ = await api.request(
        "POST", f"/api/admin/jobs/{job['id']}/retry", token=admin_token, json={"reason": "fixed"}
    )
    assert (status, retried["status"], retried["attempts"]) == (200, "queued", 0)
    assert await balance(api, user_token) == 96  # charged again
    again, body, _ = await api.request(
        "POST", f"/api/admin/jobs/{job['id']}/retry", token=admin_token
    )
    assert (again, body["details"]["status"]) == (409, "queued")
    provider.fail_with = None
    async with worker_running(settings, provider):
        await until_status(api, user_token, video["id"], "completed")
    [entry] = await audit(api, admin_token, "action=job.retry")
    assert entry["targetId"] == str(job["id"])
    assert entry["before"]["status"] == "failed"


async def test_bad_admin_input_is_a_4xx_naming_the_field(api: RunningApi) -> None:
    admin_token, _ = await register_admin(api)
    _, user = await api.register()
    uid = user["user"]["id"]
    cases = [
        ("POST", f"/api/admin/users/{uid}/credits", {"amount": "lots", "reason": "x"}, "amount"),
        ("POST", f"/api/admin/users/{uid}/credits", {"amount": 5, "reason": "x" * 201}, "reason"),
        ("POST", f"/api/admin/users/{uid}/credits", {"amount": 5}, "reason"),
        ("POST", f"/api/admin/users/{uid}/credits", {"amount": 10**7, "reason": "x"}, "amount"),
        ("PUT", f"/api/admin/users/{uid}/status", {"status": "deleted"}, "status"),
        ("POST", "/api/admin/jobs/abc/retry", None, "job_id"),
        ("POST", "/api/admin/jobs/99999999999/retry", None, "job_id"),
        ("GET", "/api/admin/jobs?status=stuck", None, "status"),
        ("GET", "/api/admin/videos?status=lost", None, "status"),
        ("GET", "/api/admin/audit?since=yesterday", None, "since"),
        ("GET", "/api/admin/stats/daily?days=0", None, "days"),
    ]
    for method, path, body, field in cases:
        status, answer, _ = await api.request(method, path, token=admin_token, json=body)
        assert status == 422, (path, answer)
        assert answer["details"]["fields"][0]["field"] == field, (path, answer)
    status, answer, _ = await api.request(
        "POST",
        "/api/admin/users/nobody/credits",
        token=admin_token,
        json={"amount": 1, "reason": "x"},
    )
    assert status == 404
    assert await audit(api, admin_token) == []


async def test_audit_pages_and_filters(api: RunningApi) -> None:
    admin_token, admin = await register_admin(api)
    _, user = await api.register()
    uid = user["user"]["id"]
    for amount in (1, 2, 3):
        await api.request(
            "POST",
            f"/api/admin/users/{uid}/credits",
            token=admin_token,
            json={"amount": amount, "reason": f"gift {amount}"},
        )
    status, first, _ = await api.request(
        "GET", "/api/admin/audit", token=admin_token, params={"limit": 2}
    )
    assert (status, first["total"], len(first["items"])) == (200, 3, 2)
    assert [e["reason"] for e in first["items"]] == ["gift 3", "gift 2"]
    _, second, _ = await api.request(
        "GET", "/api/admin/audit", token=admin_token, params={"limit": 2, "page": 2}
    )
    assert [e["reason"] for e in second["items"]] == ["gift 1"]
    assert len(await audit(api, admin_token, f"actor={admin['email'][:8]}")) == 3
    assert await audit(api, admin_token, "actor=somebody-else") == []
    assert await audit(api, admin_token, "targetType=video") == []
    assert await audit(api, admin_token, "since=2999-01-01T00:00:00Z") == []
    assert len(await audit(api, admin_token, "until=2999-01-01T00:00:00")) == 3


async def test_stats_count_users_videos_credits_and_the_queue(api: RunningApi) -> None:
    admin_token, _ = await register_admin(api)
    user_token, _ = await api.register()
    await create(api, user_token, seconds=8)
    status, stats, _ = await api.request("GET", "/api/admin/stats", token=admin_token)
    assert status == 200, stats
    assert stats["users"]["total"] == 2
    assert stats["users"]["admins"] == 1
    assert stats["videos"]["queued"] == 1
    assert stats["videosToday"]["queued"] == 1
    assert stats["credits"]["issued"] == 200
    assert stats["credits"]["spent"] == 8
    assert stats["queue"]["depth"] == 1
    assert stats["queue"]["oldestWaitSeconds"] >= 0
    status, daily, _ = await api.request("GET", "/api/admin/stats/daily", token=admin_token)
    assert status == 200
    assert len(daily["days"]) == 30
    assert daily["videos"]["queued"][-1] == 1
    assert daily["creditsSpent"][-1] == 8
    for name in ("videos", "credits", "queueWait"):
        assert daily["charts"][name].startswith("<svg")
    assert 'data-series="queued" data-value="1"' in daily["charts"]["videos"]


class PoolProvider(ScriptedProvider):
    """The scripted provider reporting a real key pool: one key fine, one resting, one refused."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = KeyPool(
            [
                "sk-live-aaaaaaaaaaaaaaaa1111",
                "sk-live-bbbbbbbbbbbbbbbb2222",
                "sk-live-cccccccccccc3333",
            ]
        )
        self.pool.rate_limited(KeyLease(1, "", ""), retry_after=120)
        self.pool.refused(KeyLease(2, "", ""), status=401, code="invalid_api_key")

    def health(self) -> dict[str, Any]:
        return {"status": "ok", **self.pool.health()}


async def test_keys_are_masked_with_their_state_and_config_hides_every_secret(
    database_url: str, tmp_path: Any
) -> None:
    settings = make_settings(
        database_url,
        tmp_path,
        openai_api_keys=["sk-live-aaaaaaaaaaaaaaaa1111"],
        jwt_secret="jwt-" + "s3cr3t" * 8,
    )
    async with running_api(settings, PoolProvider()) as api:
        admin_token, _ = await register_admin(api)
        _, stats, _ = await api.request("GET", "/api/admin/stats", token=admin_token)
        keys = stats["provider"]["keys"]
        assert [(k["key"], k["state"]) for k in keys] == [
            ("#1 sk-…1111", "ok"),
            ("#2 sk-…2222", "resting"),
            ("#3 sk-…3333", "disabled"),
        ]
        assert keys[1]["restingUntil"] is not None
        assert keys[2]["reason"] == "401 invalid_api_key"
        assert "aaaaaaaa" not in str(stats)
        status, config, _ = await api.request("GET", "/api/admin/config", token=admin_token)
        assert status == 200
        shown = config["settings"]
        assert shown["JWT_SECRET"] == "••••"
        assert shown["OPENAI_API_KEYS"] == ["sk-…1111"]
        assert shown["SIGNUP_CREDITS"] == 100
        text = str(config)
        assert "s3cr3t" not in text
        assert "aaaaaaaa" not in text


async def test_two_admins_adjusting_at_once_are_both_ledgered_and_audited(
    api: RunningApi,
) -> None:
    import asyncio

    admin_token, _ = await register_admin(api)
    user_token, user = await api.register()
    results = await asyncio.gather(
        *(
            api.request(
                "POST",
                f"/api/admin/users/{user['user']['id']}/credits",
                token=admin_token,
                json={"amount": 10, "reason": f"batch {n}"},
            )
            for n in range(5)
        )
    )
    assert [r[0] for r in results] == [200] * 5
    assert await balance(api, user_token) == 150
    entries = await audit(api, admin_token, "action=user.credits")
    assert sorted(e["after"]["credits"] - e["before"]["credits"] for e in entries) == [10] * 5

    async def ledger_complete() -> bool:
        return len(await ledger(api, user_token)) == 6

    await wait_for(ledger_complete)
