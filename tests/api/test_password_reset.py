"""Password reset by mail, sent through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import select, update

from sora2.api.auth.reset_models import PasswordResetToken
from sora2.api.db import Database
from sora2.api.db.base import utcnow
from sora2.devstack.doctor import check_mail
from sora2.settings import load_settings
from tests.api.conftest import empty_tables, make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import PASSWORD, RunningApi, running_api
from tests.fakes.smtp import IGNORE_AUTH_WARNING, Mode, SmtpServer, smtp_server

pytestmark = pytest.mark.filterwarnings(IGNORE_AUTH_WARNING)
NEW_PASSWORD = "brand-new-secret-7"
LINK = re.compile(r"http://app\.example:3200/reset-password\?token=([A-Za-z0-9_%-]+)")


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server("plain", tmp_path) as server:
        yield server


@asynccontextmanager
async def api_with_mail(
    database_url: str, tmp_path: Path, server: SmtpServer, **overrides: Any
) -> AsyncIterator[RunningApi]:
    settings = make_settings(
        database_url,
        tmp_path,
        smtp_url=server.url,
        smtp_ca_file=server.ca_file,
        mail_from="Sora2 <reset@app.example>",
        **overrides,
    )
    await empty_tables(settings.resolved_database_url)
    async with running_api(settings, ScriptedProvider()) as api:
        yield api


async def forgot(api: RunningApi, email: str, **kwargs: Any) -> tuple[int, Any]:
    status, body, _ = await api.request(
        "POST", "/api/auth/password/forgot", json={"email": email}, **kwargs
    )
    return status, body


def token_in(message: Any) -> str:
    text = message.get_body(("plain",)).get_content()
    found = LINK.search(text)
    assert found, text
    return unquote(found.group(1))


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
async def test_the_reset_mail_goes_out_over_each_transport(
    database_url: str, tmp_path: Path, mode: Mode
) -> None:
    with smtp_server(mode, tmp_path) as server:
        async with api_with_mail(database_url, tmp_path, server) as api:
            _, account = await api.register()
            email = account["user"]["email"]
            status, body = await forgot(api, email.upper())
            assert status == 202, body
            [message] = await asyncio.to_thread(server.inbox.wait_for, 1)
    assert message["To"] == email
    assert message["From"] == "Sora2 <reset@app.example>"
    assert message["Subject"] == "Reset your Sora2 password"
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    token = token_in(message)
    assert len(token) >= 40
    assert token in unquote(html)
    assert server.inbox.logins == ([] if mode == "plain" else ["mailer"])


async def test_a_token_resets_the_password_once_and_ends_every_session(
    database_url: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    async with api_with_mail(database_url, tmp_path, smtp) as api:
        old_token, account = await api.register()
        email = account["user"]["email"]
        await forgot(api, email)
        [message] = await asyncio.to_thread(smtp.inbox.wait_for, 1)
        token = token_in(message)
        async with _database(api) as database, database.session() as session:
            stored = (await session.execute(select(PasswordResetToken.token_hash))).scalars()
            assert list(stored) == [hashlib.sha256(token.encode()).hexdigest()]
        status, body, _ = await api.request(
            "POST", "/api/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
        )
        assert status == 200, body
        assert (await api.request("GET", "/api/auth/me", token=old_token))[0] == 401
        old = {"email": email, "password": PASSWORD}
        assert (await api.request("POST", "/api/auth/login", json=old))[0] == 401
        new = {"email": email, "password": NEW_PASSWORD}
        assert (await api.request("POST", "/api/auth/login", json=new))[0] == 200
        status, body, _ = await api.request(
            "POST", "/api/auth/password/reset", json={"token": token, "password": "other-pass-8"}
        )
        assert status == 400
        assert body["details"]["fields"][0]["field"] == "token"


@asynccontextmanager
async def _database(api: RunningApi) -> AsyncIterator[Database]:
    database = Database(api.settings.resolved_database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_an_expired_token_is_refused(
    database_url: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    async with api_with_mail(database_url, tmp_path, smtp) as api:
        _, account = await api.register()
        await forgot(api, account["user"]["email"])
        [message] = await asyncio.to_thread(smtp.inbox.wait_for, 1)
        async with _database(api) as database, database.session() as session:
            await session.execute(update(PasswordResetToken).values(expires_at=utcnow()))
            await session.commit()
        status, body, _ = await api.request(
            "POST",
            "/api/auth/password/reset",
            json={"token": token_in(message), "password": NEW_PASSWORD},
        )
        assert status == 400
        assert "expired" in body["message"]


async def test_known_and_unknown_emails_get_the_same_answer_and_only_one_mail(
    database_url: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    async with api_with_mail(database_url, tmp_path, smtp) as api:
        _, account = await api.register()
        known = await forgot(api, account["user"]["email"])
        unknown = await forgot(api, "nobody-here@example.com")
        assert known == unknown
        assert known[0] == 202
        await asyncio.to_thread(smtp.inbox.wait_for, 1)
        await forgot(api, account["user"]["email"])
        messages = await asyncio.to_thread(smtp.inbox.wait_for, 2)
    assert [m["To"] for m in messages] == [account["user"]["email"]] * 2


async def test_the_answer_never_waits_for_the_mail_server(
    database_url: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    """A slow mail server must not make a known email's answer slower than an unknown one's."""
    smtp.inbox.release.clear()
    async with api_with_mail(database_url, tmp_path, smtp) as api:
        _, account = await api.register()
        status, _ = await forgot(api, account["user"]["email"])
        assert status == 202
        assert await asyncio.to_thread(smtp.inbox.held.wait, 10)
        assert smtp.inbox.messages == []  # answered while the server still holds the mail
        smtp.inbox.release.set()
        await asyncio.to_thread(smtp.inbox.wait_for, 1)


async def test_requests_are_limited_per_email_and_per_address(
    database_url: str, tmp_path: Path, smtp: SmtpServer
) -> None:
    async with api_with_mail(
        database_url, tmp_path, smtp, forgot_limit_per_email=2, forgot_limit_per_ip=5
    ) as api:
        assert [(await forgot(api, "a@example.com"))[0] for _ in range(3)] == [202, 202, 429]
        # Every request counts against the address, the refused one too.
        assert (await forgot(api, "b@example.com"))[0] == 202
        assert (await forgot(api, "c@example.com"))[0] == 202
        status, body = await forgot(api, "d@example.com")
        assert status == 429
        assert (
            "Retry-After"
            in (
                await api.request(
                    "POST", "/api/auth/password/forgot", json={"email": "e@example.com"}
                )
            )[2].headers
        )
        assert "address" in body["message"]


async def test_bad_reset_input_names_the_field(api: RunningApi) -> None:
    cases = [
        ("forgot", {}, "email"),
        ("forgot", {"email": "not an email"}, "email"),
        ("forgot", {"email": "a@example.com", "extra": 1}, "extra"),
        ("reset", {"token": "x", "password": "short"}, "password"),
        ("reset", {"token": "", "password": NEW_PASSWORD}, "token"),
        ("reset", {"token": "x" * 201, "password": NEW_PASSWORD}, "token"),
        ("reset", {"password": NEW_PASSWORD}, "token"),
    ]
    for route, body, field in cases:
        status, answer, _ = await api.request("POST", f"/api/auth/password/{route}", json=body)
        assert status == 422, (route, body, answer)
        assert answer["details"]["fields"][0]["field"] == field
    status, answer, _ = await api.request(
        "POST", "/api/auth/password/reset", json={"token": "made-up", "password": NEW_PASSWORD}
    )
    assert (status, answer["details"]["fields"][0]["field"]) == (400, "token")


async def test_development_without_smtp_logs_the_link(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, tmp_path, app_env="development")
    await empty_tables(settings.resolved_database_url)
    async with running_api(settings, ScriptedProvider()) as api:
        _, account = await api.register()
        with caplog.at_level(logging.WARNING, logger="sora2.api.mail"):
            await forgot(api, account["user"]["email"])

            async def logged() -> bool:
                return "reset-password?token=" in caplog.text

            from tests.api.harness import wait_for

            await wait_for(logged)
    assert LINK.search(caplog.text)


def test_doctor_flags_production_without_mail(tmp_path: Path) -> None:
    base: dict[str, Any] = {"data_dir": tmp_path, "jwt_secret": "p" * 48}
    [finding] = check_mail(load_settings(app_env="production", **base))
    assert finding.status == "fail"
    assert "SMTP_URL" in finding.detail
    [finding] = check_mail(load_settings(app_env="development", **base))
    assert finding.status == "warn"
    [finding] = check_mail(
        load_settings(app_env="production", smtp_url="smtps://u:secret@mail.example:465", **base)
    )
    assert finding.status == "ok"
    assert "secret" not in finding.detail
