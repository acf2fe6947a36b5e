"""Sign-in rate limiting as the user sees it: the api's 429 becomes a countdown on the form."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import (
    LOGIN_ATTEMPTS_PER_ACCOUNT,
    Stack,
    register,
    screenshot,
    unique_email,
)

pytestmark = pytest.mark.browser


def test_too_many_wrong_passwords_show_the_wait(page: Page, stack: Stack) -> None:
    email = unique_email("mallory")
    register(page, email=email, nickname="Mallory")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?signed_out=1")
    status = page.locator("[data-form-status]")
    button = page.get_by_role("button", name="Sign in")
    page.get_by_label("Email").fill(email)
    for _ in range(LOGIN_ATTEMPTS_PER_ACCOUNT + 2):
        page.get_by_label("Password").fill("wrong-password-1")
        button.click()
        expect(status).to_contain_text(re.compile("password|Try again", re.IGNORECASE))
        if "Try again" in (status.text_content() or ""):
            break
    expect(status).to_contain_text(re.compile(r"Too many sign-in attempts\. Try again in \d+ s\."))
    seconds = int(re.findall(r"in (\d+) s", status.text_content() or "")[0])
    assert seconds > 0
    expect(button).to_be_disabled()
    screenshot(page, "login-rate-limited")
