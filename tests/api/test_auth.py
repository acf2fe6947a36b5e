"""Accounts and sessions against the running api, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from sora2.api.auth.client_ip import ClientAddress
from sora2.api.db import Database
from sora2.api.users.models import User
from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import PASSWORD, RunningApi, running_api


async def test_register_gives_the_signup_gift_and_signs_in(api: RunningApi) -> None:
    token, body = await api.register(email="Ana@Example.com")
    assert body["user"]["email"] == "ana@example.com"
    assert body["user"]["credits"] == 100
    status, me, _ = await api.request("GET", "/api/auth/me", token=token)
    assert status == 200
    assert me["email"] == "ana@example.com"
    status, ledger, _ = await api.request("GET", "/api/credits/transactions", token=token)
    assert [(t["type"], t["amount"], t["balanceAfter"]) for t in ledger["items"]] == [
        ("gift", 100, 100)
    ]


async def test_session_cookies_are_httponly_lax_and_work_without_a_bearer(api: RunningApi) -> None:
    email = "cookie@example.com"
    await api.register(email=email)
    api.http.cookie_jar.clear()
    status, _, response = await api.request(
        "POST", "/api/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert status == 200
    cookies = response.headers.getall("Set-Cookie")
    assert len(cookies) == 2
    for cookie in cookies:
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie  # only in production
    status, me, _ = await api.request("GET", "/api/auth/me")
    assert status == 200
    assert me["email"] == email


async def test_a_browser_gets_its_session_in_cookies_only(
    api: RunningApi, settings: Settings
) -> None:
    email = "browser@example.com"
    _, registered = await api.register(email=email)
    # An API client's sign-up (no Origin) gets both tokens in the body.
    assert registered["accessToken"]
    assert registered["refreshToken"]
    api.http.cookie_jar.clear()
    status, body, _ = await api.request(
        "POST",
        "/api/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": settings.frontend_origin},
    )
    assert status == 200
    # Nothing a page script could read: the session is in the HttpOnly cookies alone.
    assert body["accessToken"] is None
    assert body["refreshToken"] is None
    status, me, _ = await api.request("GET", "/api/auth/me")
    assert status == 200
    assert me["email"] == email


async def test_email_is_unique_whatever_its_case(api: RunningApi) -> None:
    await api.register(email="bob@example.com")
    status, body, _ = await api.request(
        "POST",
        "/api/auth/register",
        json={"email": "BOB@example.com", "password": PASSWORD, "nickname": "Bob"},
    )
    assert status == 409
    assert body["error"] == "Conflict"
    assert "already exists" in body["message"]


async def test_bad_sign_up_fields_are_named_in_the_error(api: RunningApi) -> None:
    status, body, response = await api.request(
        "POST",
        "/api/auth/register",
        json={"email": "not-an-email", "password": "short", "nickname": "x", "role": "admin"},
        headers={"X-Request-ID": "req-123"},
    )
    assert status == 422
    fields = {item["field"] for item in body["details"]["fields"]}
    assert fields == {"email", "password", "role"}
    assert "role: is not a known field" in body["message"]
    assert body["requestId"] == "req-123" == response.headers["X-Request-ID"]


async def test_a_body_that_is_not_json_is_a_400(api: RunningApi) -> None:
    status, body, _ = await api.request(
        "POST",
        "/api/auth/login",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert body["error"] == "Bad Request"
    assert "not valid JSON" in body["message"]


async def test_wrong_password_and_unknown_email_look_and_take_the_same(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    # A real-sized hash (16 MiB), so the hashing that must happen on both paths dominates.
    hashing = make_settings(database_url, tmp_path, password_hash_memory_kib=16_384)
    async with running_api(hashing, ScriptedProvider()) as api:
        await api.register(email="carol@example.com")

        async def attempt(email: str) -> tuple[float, dict[str, str]]:
            # CPU seconds of this process (the api runs in it, hashing in a worker thread): the
            # work a sign-in does, which other processes on the machine cannot stretch.
            started = time.process_time()
            status, body, _ = await api.request(
                "POST", "/api/auth/login", json={"email": email, "password": "Wrong-pass-1"}
            )
            assert status == 401
            return time.process_time() - started, body

        known, unknown = [], []
        for _ in range(5):
            known.append(await attempt("carol@example.com"))
            unknown.append(await attempt("nobody@example.com"))
    assert known[0][1]["message"] == unknown[0][1]["message"] == "Wrong email or password."
    # An unknown email skipping the hash would cost a tenth of a known one's work.
    known_work = min(cpu for cpu, _ in known)
    unknown_work = min(cpu for cpu, _ in unknown)
    assert unknown_work > known_work * 0.6, (known_work, unknown_work)


async def test_refresh_rotates_and_a_reused_token_ends_the_session(api: RunningApi) -> None:
    _, first = await api.register()
    old_refresh = first["refreshToken"]
    status, second, _ = await api.request(
        "POST", "/api/auth/refresh", json={"refreshToken": old_refresh}
    )
    assert status == 200
    assert second["refreshToken"] != old_refresh
    # The old token comes back (stolen): refused, and the whole family dies with it.
    status, body, _ = await api.request(
        "POST", "/api/auth/refresh", json={"refreshToken": old_refresh}
    )
    assert status == 401
    assert "already used" in body["message"]
    status, _, _ = await api.request(
        "POST", "/api/auth/refresh", json={"refreshToken": second["refreshToken"]}
    )
    assert status == 401
    status, _, _ = await api.request("GET", "/api/auth/me", token=second["accessToken"])
    assert status == 401


async def test_refresh_works_from_the_cookie(api: RunningApi) -> None:
    await api.register()
    status, body, _ = await api.request("POST", "/api/auth/refresh")
    assert status == 200
    status, _me, _ = await api.request("GET", "/api/auth/me", token=body["accessToken"])
    assert status == 200


async def test_logout_revokes_the_access_and_refresh_tokens(api: RunningApi) -> None:
    token, body = await api.register()
    status, _, response = await api.request("POST", "/api/auth/logout", token=token)
    assert status == 200
    assert all("Max-Age=0" in c for c in response.headers.getall("Set-Cookie"))
    status, _, _ = await api.request("GET", "/api/auth/me", token=token)
    assert status == 401
    status, _, _ = await api.request(
        "POST", "/api/auth/refresh", json={"refreshToken": body["refreshToken"]}
    )
    assert status == 401


async def test_password_change_ends_other_sessions_only(api: RunningApi) -> None:
    email = "dave@example.com"
    token_a, _ = await api.register(email=email)
    _, login_b, _ = await api.request(
        "POST", "/api/auth/login", json={"email": email, "password": PASSWORD}
    )
    status, body, _ = await api.request(
        "PUT",
        "/api/users/password",
        token=token_a,
        json={"currentPassword": "Wrong-pass-1", "newPassword": "new-pass-2024"},
    )
    assert status == 400
    assert "currentPassword" in body["message"]
    status, _, _ = await api.request(
        "PUT",
        "/api/users/password",
        token=token_a,
        json={"currentPassword": PASSWORD, "newPassword": "new-pass-2024"},
    )
    assert status == 200
    assert (await api.request("GET", "/api/auth/me", token=token_a))[0] == 200
    assert (await api.request("GET", "/api/auth/me", token=login_b["accessToken"]))[0] == 401
    old = await api.request("POST", "/api/auth/login", json={"email": email, "password": PASSWORD})
    new = await api.request(
        "POST", "/api/auth/login", json={"email": email, "password": "new-pass-2024"}
    )
    assert (old[0], new[0]) == (401, 200)


async def test_profile_edit_changes_the_nickname(api: RunningApi) -> None:
    token, _ = await api.register()
    status, body, _ = await api.request(
        "PUT", "/api/users/profile", token=token, json={"nickname": "Neo"}
    )
    assert status == 200
    assert body["nickname"] == "Neo"
    assert (await api.request("GET", "/api/users/profile", token=token))[1]["nickname"] == "Neo"


async def test_garbage_and_missing_tokens_are_401_in_the_error_shape(api: RunningApi) -> None:
    for token in (None, "garbage", "a.b.c"):
        status, body, _ = await api.request("GET", "/api/auth/me", token=token)
        assert status == 401
        assert set(body) == {"error", "message", "details", "requestId"}


async def test_login_limits_per_address_and_per_account(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    limited = make_settings(database_url, tmp_path, login_limit_per_ip=3, login_limit_per_account=2)
    async with running_api(limited, ScriptedProvider()) as api:
        await api.register(email="eve@example.com")
        wrong = {"email": "eve@example.com", "password": "Wrong-pass-1"}
        # Per account: failures from different addresses (as the trusted local proxy reports them).
        for n in range(2):
            headers = {"X-Forwarded-For": f"203.0.113.{n}"}
            status, _, _ = await api.request("POST", "/api/auth/login", json=wrong, headers=headers)
            assert status == 401
        status, body, response = await api.request(
            "POST", "/api/auth/login", json=wrong, headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert body["error"] == "Too Many Requests"
        assert "this account" in body["message"]
        # Per address: a fourth attempt from one address is refused whatever the account.
        headers = {"X-Forwarded-For": "198.51.100.7"}
        statuses = []
        for n in range(4):
            other = {"email": f"someone{n}@example.com", "password": "Wrong-pass-1"}
            statuses.append(
                (await api.request("POST", "/api/auth/login", json=other, headers=headers))[0]
            )
        assert statuses == [401, 401, 401, 429]


async def test_register_limit_counts_each_address_separately(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    limited = make_settings(database_url, tmp_path, register_limit_per_ip=1)
    async with running_api(limited, ScriptedProvider()) as api:
        first = await api.request(
            "POST",
            "/api/auth/register",
            json={"email": "a1@example.com", "password": PASSWORD, "nickname": "A"},
            headers={"X-Forwarded-For": "192.0.2.1"},
        )
        second = await api.request(
            "POST",
            "/api/auth/register",
            json={"email": "a2@example.com", "password": PASSWORD, "nickname": "A"},
            headers={"X-Forwarded-For": "192.0.2.1"},
        )
        other = await api.request(
            "POST",
            "/api/auth/register",
            json={"email": "a3@example.com", "password": PASSWORD, "nickname": "A"},
            headers={"X-Forwarded-For": "192.0.2.2"},
        )
        assert (first[0], second[0], other[0]) == (201, 429, 201)


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    addresses = ClientAddress(["10.0.0.0/8"])
    assert addresses.of("127.0.0.1", "203.0.113.5") == "203.0.113.5"
    assert addresses.of("10.1.2.3", "198.51.100.1, 203.0.113.5") == "203.0.113.5"
    assert addresses.of("10.1.2.3", "203.0.113.5, 10.9.9.9") == "203.0.113.5"
    # A caller on the internet cannot choose its address by sending the header itself.
    assert addresses.of("198.51.100.20", "127.0.0.1") == "198.51.100.20"


async def test_production_cookies_are_secure(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    production = make_settings(database_url, tmp_path, app_env="production")
    async with running_api(production, ScriptedProvider()) as api:
        _, _, response = await api.request(
            "POST",
            "/api/auth/register",
            json={"email": "prod@example.com", "password": PASSWORD, "nickname": "P"},
        )
        cookies = response.headers.getall("Set-Cookie")
        assert len(cookies) == 2
        assert all("Secure" in cookie for cookie in cookies)


async def test_the_database_itself_refuses_a_negative_balance(settings: Settings) -> None:
    database = Database(settings.resolved_database_url)
    try:
        async with database.session() as session:
            user = User(email="neg@example.com", password_hash="x", nickname="N", credits=5)
            session.add(user)
            await session.commit()
            with pytest.raises(IntegrityError):
                await session.execute(update(User).where(User.id == user.id).values(credits=-1))
    finally:
        await database.dispose()


async def test_two_tabs_refreshing_at_once_stay_signed_in(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    graceful = make_settings(database_url, tmp_path, refresh_reuse_grace_seconds=30)
    async with running_api(graceful, ScriptedProvider()) as api:
        _, body = await api.register()
        payload = {"refreshToken": body["refreshToken"]}
        results = await asyncio.gather(
            *(api.request("POST", "/api/auth/refresh", json=payload) for _ in range(2))
        )
        assert [status for status, _, _ in results] == [200, 200]
        for _, renewed, _ in results:
            assert (await api.request("GET", "/api/auth/me", token=renewed["accessToken"]))[
                0
            ] == 200
