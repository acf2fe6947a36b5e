"""The connection banner in a real browser: the api process is killed, then started again on the
same port. Two tabs watch: one following a video's progress, one with a half-written prompt."""

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
    # Tab 1 follows a long video's progress over server-sent events.
    page.get_by_label("Prompt").fill("A very long sunrise")
    page.get_by_label("Model").select_option("sora-2-pro")
    page.get_by_label("Length").select_option("12")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/videos/"))
    expect(page.locator("[data-live-state]")).to_have_text("Live")
    streams: list[float] = []
    page.on("request", lambda r: streams.append(time.monotonic()) if "/events" in r.url else None)
    # Tab 2 has a prompt half written.
    writer = page.context.new_page()
    writer.goto("/generate")
    writer.get_by_label("Prompt").fill(TYPED)

    stack.api.kill()
    killed = time.monotonic()
    writer.get_by_role("button", name="Generate").click()
    banner = writer.locator("#connection-banner")
    expect(banner).to_be_visible()
    shown_after = time.monotonic() - killed
    details = proxy_error(stack)["details"]
    assert isinstance(details, dict)
    expect(banner).to_contain_text(str(details["suggestion"]))
    expect(banner).to_contain_text(re.compile(r"Retrying in \d+ s|Checking"))
    expect(writer.locator("[data-form-status]")).to_contain_text("What you typed is kept")
    expect(writer.get_by_label("Prompt")).to_have_value(TYPED)
    # The watching tab notices its stream is gone and says so, banner included.
    expect(page.locator("#connection-banner")).to_be_visible()
    expect(page.locator("[data-live-state]")).to_contain_text(re.compile("reconnecting", re.I))
    screenshot(writer, "banner")

    # A page opened while the api is down: the banner at once, no bounce to the login page,
    # and the text still in the form (a draft kept in this tab).
    writer.reload()
    expect(banner).to_be_visible()
    expect(writer).to_have_url(re.compile(r"/generate$"))
    expect(writer.get_by_label("Prompt")).to_have_value(TYPED)

    stack.api.start()
    restarted = time.monotonic()
    expect(banner).to_be_hidden(timeout=20_000)
    hidden_after = time.monotonic() - restarted
    expect(writer.get_by_label("Prompt")).to_have_value(TYPED)
    # The watching tab clears its banner and follows the video live again.
    expect(page.locator("#connection-banner")).to_be_hidden(timeout=20_000)
    expect(page.locator("[data-live-state]")).to_have_text("Live", timeout=20_000)
    assert any(at > restarted for at in streams), "the event stream was opened again"
    print(f"banner shown {shown_after:.2f}s after the kill; gone {hidden_after:.2f}s after restart")

    # The session survived the api restart and the kept text can be sent now.
    writer.get_by_role("button", name="Generate").click()
    writer.wait_for_url(re.compile(r"/videos/"))
    expect(writer.locator("[data-video-prompt]")).to_have_text(TYPED)
