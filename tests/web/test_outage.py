"""The connection banner in a real browser: the api process is killed, then started again on the
same port; what the user typed survives throughout."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Stack, register, screenshot, unique_email

pytestmark = pytest.mark.browser

TYPED = "A lighthouse in a storm, typed before the outage"


def proxy_error(stack: Stack) -> dict[str, object]:
    """What the proxy itself answers while the api is down (the banner must say the same)."""
    try:
        urllib.request.urlopen(stack.url + "/api/proxy/auth/me", timeout=10)
    except urllib.error.HTTPError as error:
        body: dict[str, object] = json.loads(error.read())
        return body
    raise AssertionError("the proxy answered 2xx with the api stopped")


def test_the_banner_explains_an_outage_and_leaves_when_the_api_returns(
    page: Page, stack: Stack
) -> None:
    register(page, email=unique_email("ops"), nickname="Ops")
    banner = page.locator("#connection-banner")
    expect(banner).to_be_hidden()
    page.get_by_label("Prompt").fill(TYPED)

    stack.api.kill()
    started = time.monotonic()
    page.get_by_role("button", name="Generate").click()
    expect(banner).to_be_visible()
    shown_after = time.monotonic() - started
    error = proxy_error(stack)
    details = error["details"]
    assert isinstance(details, dict)
    expect(banner).to_contain_text(str(details["suggestion"]))
    expect(banner).to_contain_text(re.compile(r"Retrying in \d+ s|Checking"))
    expect(page.locator("[data-form-status]")).to_contain_text("What you typed is kept")
    expect(page.get_by_label("Prompt")).to_have_value(TYPED)
    screenshot(page, "banner")

    # A page opened while the api is down: the banner at once, no bounce to the login page,
    # and the text still in the form (a draft kept in this tab).
    page.reload()
    expect(banner).to_be_visible()
    expect(page).to_have_url(re.compile(r"/generate\?welcome=1$"))
    expect(page.get_by_label("Prompt")).to_have_value(TYPED)

    stack.api.start()
    restarted = time.monotonic()
    expect(banner).to_be_hidden(timeout=20_000)
    hidden_after = time.monotonic() - restarted
    expect(page.get_by_label("Prompt")).to_have_value(TYPED)
    print(
        f"banner shown {shown_after:.2f}s after the click; gone {hidden_after:.2f}s after restart"
    )

    # The session survived the api restart and the kept text can be sent now.
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/videos/"))
    expect(page.locator("[data-video-prompt]")).to_have_text(TYPED)
