"""The operator's pages in a real Chromium against real api and web processes, with a real SMTP
server on loopback: forgot and reset password, share links, the admin console."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fakes.smtp import SmtpServer, smtp_server
from tests.web.conftest import (
    EXPECT_TIMEOUT_MS,
    Stack,
    register,
    screenshot,
    start_stack,
    unique_email,
)

pytestmark = pytest.mark.browser

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/reset-password\?token=[A-Za-z0-9_%-]+)")


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    with smtp_server("plain", tmp_path_factory.mktemp("smtp")) as server:
        yield server


@pytest.fixture(scope="module")
def operator_stack(tmp_path_factory: pytest.TempPathFactory, mail: SmtpServer) -> Iterator[Stack]:
    running = start_stack(
        tmp_path_factory.mktemp("operator-stack"),
        SMTP_URL=mail.url,
        MAIL_FROM="Sora2 <reset@example.com>",
        WORKER_PROVIDER_POLL_MS="100",
    )
    yield running
    running.web.stop()
    running.api.stop()


@pytest.fixture
def site(browser: Browser, operator_stack: Stack) -> Iterator[BrowserContext]:
    created = browser.new_context(
        base_url=operator_stack.url, viewport={"width": 1280, "height": 900}
    )
    created.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield created
    created.close()


@pytest.fixture
def tab(site: BrowserContext) -> Iterator[Page]:
    opened = site.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield opened
    assert errors == [], f"the page threw or broke its CSP: {errors}"


def sora2_command(stack: Stack, *args: str) -> str:
    """`sora2 …` against the stack's database, as an operator at its shell would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "sora2", *args],
        env=stack.api.env,
        cwd=stack.api.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_forgotten_password_is_reset_through_the_mailed_link(
    tab: Page, site: BrowserContext, mail: SmtpServer
) -> None:
    email = unique_email("forgot")
    register(tab, email=email, nickname="Forgetful")
    already = len(mail.inbox.messages)
    site.clear_cookies()  # signed out, as someone who forgot their password is
    tab.goto("/login")
    tab.get_by_role("link", name="Forgot your password?").click()
    tab.wait_for_url("**/forgot-password")
    tab.get_by_label("Email").fill(email)
    tab.get_by_role("button", name="Send the link").click()
    expect(tab.locator("[data-forgot-sent]")).to_contain_text("If an account uses this email")
    # The same answer for an address nobody uses.
    tab.get_by_label("Email").fill(unique_email("nobody"))
    tab.get_by_role("button", name="Send the link").click()
    expect(tab.locator("[data-forgot-sent]")).to_contain_text("If an account uses this email")
    message = mail.inbox.wait_for(already + 1)[already]
    assert message["To"] == email
    text = message.get_body(("plain",))
    assert text is not None
    found = LINK.search(text.get_content())
    assert found, text.get_content()
    tab.goto(found.group(1))
    expect(tab).to_have_url(re.compile(r"/reset-password$"))  # the token left the address bar
    tab.get_by_label("New password", exact=True).fill("new-secret-42")
    tab.get_by_label("Repeat the new password").fill("new-secret-42")
    screenshot(tab, "reset-password")
    tab.get_by_role("button", name="Change password").click()
    tab.wait_for_url("**/login?password_reset=1")
    expect(tab.locator("[data-form-status]")).to_contain_text("Your password was reset")
    tab.get_by_label("Email").fill(email)
    tab.get_by_label("Password").fill("new-secret-42")
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/generate")
    # The link worked once.
    tab.goto(unquote(found.group(1)))
    tab.get_by_label("New password", exact=True).fill("third-secret-9")
    tab.get_by_label("Repeat the new password").fill("third-secret-9")
    tab.get_by_role("button", name="Change password").click()
    expect(tab.locator("[data-form-status]")).to_contain_text("invalid, expired or already used")
