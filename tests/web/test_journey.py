"""A new user's whole journey in a real Chromium against the real api and web processes:
register → generate → watch progress → play → download → cancel a second → gallery → profile."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import Page, Route, expect

from tests.web.conftest import Stack, register, screenshot, unique_email

pytestmark = pytest.mark.browser

HOSTILE_PROMPT = 'A red kite over dunes <img src=x onerror="window.__pwned=1"> & "quotes"'


def prices(page: Page) -> dict[str, int]:
    choices = json.loads(page.locator("body").get_attribute("data-choices") or "{}")
    table: dict[str, int] = choices["creditsPerSecond"]
    return table


def balance_badge(page: Page) -> int:
    expect(page.locator("[data-balance-badge]")).to_have_text(re.compile(r"^\d+ credits?$"))
    return int((page.locator("[data-balance-badge]").text_content() or "").split()[0])


def generate(page: Page, prompt: str, *, model: str, seconds: int, size: str) -> str:
    """Submit the generate form; the id of the video whose page it lands on."""
    page.goto("/generate")
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Model").select_option(model)
    page.get_by_label("Length").select_option(str(seconds))
    page.get_by_label("Size").select_option(size)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/videos/[A-Za-z0-9_-]+$"))
    return page.url.rsplit("/", 1)[1]


def watch_until_ready(page: Page, timeout: float = 60) -> list[tuple[str, int]]:
    """The (status, progress) pairs the page showed while the video rendered."""
    badge, bar = page.locator("[data-video-status]"), page.locator("[data-progress]")
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = badge.text_content() or ""
        progress = int(float(bar.get_attribute("value") or 0))
        if not seen or seen[-1] != (status, progress):
            seen.append((status, progress))
        if status in ("Ready", "Failed", "Cancelled"):
            return seen
        page.wait_for_timeout(50)
    raise AssertionError(f"the video never finished; the page showed {seen}")


def test_signed_out_visitors_are_sent_to_sign_in_and_back(page: Page) -> None:
    page.goto("/gallery?status=completed")
    page.wait_for_url("**/login?next=%2Fgallery%3Fstatus%3Dcompleted")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("link", name="Sign up")).to_be_visible()
    screenshot(page, "login")


def test_a_new_user_generates_watches_downloads_and_cancels(
    page: Page, stack: Stack, tmp_path
) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Turn a sentence into a video")
    screenshot(page, "landing")
    register(page, email=unique_email("ada"), nickname="Ada <b>Lovelace</b>")
    table = prices(page)
    start_balance = balance_badge(page)
    assert start_balance == 100

    # The form shows the cost against the balance before anything is sent.
    page.get_by_label("Length").select_option("4")
    page.get_by_label("Model").select_option("sora-2")
    first_cost = table["sora-2"] * 4
    expect(page.locator("[data-cost]")).to_contain_text(f"costs {first_cost} credit")
    expect(page.locator("[data-cost]")).to_contain_text(f"Your balance: {start_balance} credits")
    page.get_by_label("Prompt").fill("abc")
    expect(page.locator("[data-counter]")).to_have_text("3 / 2000")
    screenshot(page, "generate")

    events: list[str] = []
    page.on(
        "request", lambda request: events.append(request.url) if "/events" in request.url else None
    )
    first = generate(page, HOSTILE_PROMPT, model="sora-2", seconds=4, size="1280x720")
    # The prompt is shown as the user typed it, as text: no element, no script.
    expect(page.locator("[data-video-prompt]")).to_have_text(HOSTILE_PROMPT)
    assert page.locator("[data-video-prompt] img").count() == 0
    shown = watch_until_ready(page)
    assert shown[-1][0] == "Ready", shown
    assert any(status in ("Queued", "Rendering") for status, _ in shown), shown
    assert any(f"/api/proxy/videos/{first}/events" in url for url in events), (
        "progress is live (SSE)"
    )
    assert page.evaluate("window.__pwned") is None

    # The player plays the MP4, streamed with Range through the proxy.
    video = page.locator("[data-player] video")
    expect(video).to_be_visible()
    page.evaluate("document.querySelector('[data-player] video').muted = true")
    page.evaluate("document.querySelector('[data-player] video').play()")
    page.wait_for_function(
        "() => { const v = document.querySelector('[data-player] video');"
        " return v.readyState >= 2 && v.currentTime > 0; }"
    )
    screenshot(page, "video")

    # Download: an attachment whose bytes are an MP4.
    link = page.get_by_role("link", name="Download MP4")
    href = link.get_attribute("href") or ""
    answer = page.request.get(href)
    assert answer.ok
    assert answer.headers["content-disposition"].startswith("attachment")
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / "download.mp4"
    download_info.value.save_as(saved)
    assert saved.read_bytes()[4:8] == b"ftyp"
    assert download_info.value.suggested_filename.endswith(".mp4")

    # A second, longer one, cancelled while it runs: the refund is shown.
    second_cost = table["sora-2-pro"] * 12
    second = generate(
        page, "A slow pan across a glacier", model="sora-2-pro", seconds=12, size="720x1280"
    )
    cancel = page.get_by_role("button", name="Cancel and refund")
    cancel.click()
    expect(page.locator("[data-video-status]")).to_have_text("Cancelled")
    expected_balance = start_balance - first_cost
    expect(page.locator("[data-video-notice]")).to_have_text(
        f"Cancelled. {second_cost} credits refunded; your balance is {expected_balance} credits."
    )
    expect(page.locator("[data-balance-badge]")).to_have_text(f"{expected_balance} credits")
    expect(cancel).to_be_hidden()

    # The gallery shows both, with their states; the finished one has a real thumbnail.
    page.goto("/gallery")
    cards = page.locator(".video-card")
    expect(cards).to_have_count(2)
    expect(page.locator(f'.video-card[data-video-id="{first}"] .status-badge')).to_have_text(
        "Ready"
    )
    expect(page.locator(f'.video-card[data-video-id="{second}"] .status-badge')).to_have_text(
        "Cancelled"
    )
    thumbnail = page.locator(f'.video-card[data-video-id="{first}"] img')
    expect(thumbnail).to_be_visible()
    page.wait_for_function(
        "(id) => { const img = document.querySelector(`.video-card[data-video-id='${id}'] img`);"
        " return img && img.complete && img.naturalWidth > 0; }",
        arg=first,
    )
    expect(page.locator(f'.video-card[data-video-id="{first}"]')).to_contain_text(HOSTILE_PROMPT)
    screenshot(page, "gallery")
    page.get_by_label("Show").select_option("cancelled")
    expect(cards).to_have_count(1)
    expect(page).to_have_url(re.compile(r"/gallery\?status=cancelled$"))

    # The profile tells the same story in credits.
    page.goto("/profile")
    expect(page.locator("[data-profile-balance]")).to_have_text(f"{expected_balance} credits")
    rows = page.locator("[data-transactions] tr")
    expect(rows).to_have_count(4)
    expect(page.locator('[data-transactions] tr[data-type="refund"]')).to_contain_text(
        f"+{second_cost}"
    )
    expect(page.get_by_label("Nickname")).to_have_value("Ada <b>Lovelace</b>")
    screenshot(page, "profile")


def test_the_session_is_out_of_reach_of_scripts(page: Page, stack: Stack) -> None:
    register(page, email=unique_email("eve"), nickname="Eve")
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("window.localStorage.length") == 0
    stored = page.evaluate("JSON.stringify(window.sessionStorage)")
    assert "token" not in stored.lower()
    cookies = page.context.cookies()
    assert cookies, "the api set session cookies"
    assert all(cookie["httpOnly"] for cookie in cookies)
    assert all(cookie["sameSite"] in ("Lax", "Strict") for cookie in cookies)
    response = page.goto("/generate")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_a_wrong_password_is_explained_on_the_form(page: Page, stack: Stack) -> None:
    email = unique_email("grace")
    register(page, email=email, nickname="Grace")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?signed_out=1")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not-the-password-1")
    page.get_by_role("button", name="Sign in").click()
    status = page.locator("[data-form-status]")
    expect(status).to_contain_text(re.compile("password", re.IGNORECASE))
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.get_by_label("Email")).to_have_value(email)
    page.get_by_label("Password").fill("correct-horse-9")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/generate")


def test_phones_in_dark_mode_get_one_dark_column(browser, stack: Stack) -> None:
    context = browser.new_context(
        base_url=stack.url, color_scheme="dark", viewport={"width": 390, "height": 844}
    )
    try:
        page = context.new_page()
        register(page, email=unique_email("nox"), nickname="Nox")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 150, f"dark background expected, got {background}"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        boxes = [page.get_by_label(name).bounding_box() for name in ("Model", "Length", "Size")]
        assert all(box is not None for box in boxes)
        assert len({round(box["x"]) for box in boxes if box}) == 1, "fields stack in one column"
        screenshot(page, "generate-phone-dark")
    finally:
        context.close()


def test_sign_in_works_from_the_keyboard_alone(page: Page, stack: Stack) -> None:
    email = unique_email("kay")
    register(page, email=email, nickname="Kay")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?signed_out=1")
    page.get_by_label("Email").focus()
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type("correct-horse-9")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url("**/generate")


def test_regenerate_and_delete_ask_first_and_do_what_they_say(page: Page, stack: Stack) -> None:
    register(page, email=unique_email("rex"), nickname="Rex")
    cost = prices(page)["sora-2"] * 8
    original = generate(page, "A metronome ticking", model="sora-2", seconds=8, size="1280x720")
    page.get_by_role("button", name="Cancel and refund").click()
    expect(page.locator("[data-video-status]")).to_have_text("Cancelled")

    page.get_by_role("button", name="Regenerate").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Regenerate this video?")
    expect(dialog).to_contain_text(f"for {cost} credits")
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(re.compile(f"/videos/{original}$"))

    page.get_by_role("button", name="Regenerate").click()
    page.get_by_role("dialog").get_by_role("button", name="Regenerate").click()
    page.wait_for_url(lambda url: "/videos/" in url and not url.endswith(original))
    expect(page.locator("[data-video-prompt]")).to_have_text("A metronome ticking")
    expect(page.locator("[data-balance-badge]")).to_have_text(f"{100 - cost} credits")
    page.get_by_role("button", name="Cancel and refund").click()
    expect(page.locator("[data-video-status]")).to_have_text("Cancelled")

    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r"/gallery"))
    expect(page.locator(".video-card")).to_have_count(1)
    expect(page.locator(f'.video-card[data-video-id="{original}"]')).to_be_visible()
    expect(page.locator("[data-gallery-status]")).to_have_text("Video deleted. 1 video")
    expect(page).to_have_url(re.compile(r"/gallery$"))


def test_generating_again_after_a_lost_answer_makes_one_video(page: Page, stack: Stack) -> None:
    register(page, email=unique_email("lost"), nickname="Lost")
    cost = prices(page)["sora-2"] * 4
    answers_lost: list[str | None] = []

    def lose_the_first_answer(route: Route) -> None:
        if answers_lost:
            route.continue_()
            return
        route.fetch()  # the api creates and charges the video...
        answers_lost.append(route.request.headers.get("idempotency-key"))
        route.abort("connectionreset")  # ...and the browser never hears of it

    page.route("**/api/proxy/videos", lose_the_first_answer)
    page.goto("/generate")
    page.get_by_label("Prompt").fill("A lighthouse in fog")
    page.get_by_label("Length").select_option("4")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    assert len(answers_lost) == 1
    assert answers_lost[0]  # the form sent a key with its request

    page.get_by_role("button", name="Generate").click()  # what anyone does next
    page.wait_for_url(re.compile(r"/videos/[A-Za-z0-9_-]+$"))
    expect(page.locator("[data-balance-badge]")).to_have_text(f"{100 - cost} credits")
    page.goto("/gallery")
    expect(page.locator(".video-card")).to_have_count(1)


def test_the_profile_saves_a_nickname_and_changes_the_password(page: Page, stack: Stack) -> None:
    email = unique_email("pat")
    register(page, email=email, nickname="Pat")
    page.goto("/profile")
    expect(page.locator("[data-profile-email]")).to_have_text(email)
    nickname = page.get_by_label("Nickname")
    expect(nickname).to_have_value("Pat")
    nickname.fill("Patricia <i>")
    page.get_by_role("button", name="Save nickname").click()
    expect(page.locator("#nickname-form [data-form-status]")).to_have_text("Nickname saved.")
    page.reload()
    expect(page.get_by_label("Nickname")).to_have_value("Patricia <i>")

    form = page.locator("#password-form")
    page.get_by_label("Current password").fill("not-it-123")
    page.get_by_label("New password", exact=True).fill("brand-new-pass-7")
    page.get_by_label("Repeat the new password").fill("brand-new-pass-7")
    form.get_by_role("button", name="Change password").click()
    expect(form.locator('[data-error-for="currentPassword"]')).to_have_text(
        "Current password is wrong."
    )
    expect(page.get_by_label("Current password")).to_be_focused()
    page.get_by_label("Current password").fill("correct-horse-9")
    form.get_by_role("button", name="Change password").click()
    expect(form.locator("[data-form-status]")).to_contain_text("Password changed")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?signed_out=1")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("brand-new-pass-7")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/generate")


def test_the_gallery_pages_filters_and_updates_itself(page: Page, stack: Stack) -> None:
    register(page, email=unique_email("gal"), nickname="Gal")
    body = {"model": "sora-2", "seconds": 4, "size": "1280x720"}
    # The oldest renders (first in the queue); twelve newer ones are cancelled at once.
    running = page.request.post("/api/proxy/videos", data={**body, "prompt": "Still rendering"})
    assert running.status == 202, running.text()
    oldest = running.json()["id"]
    for number in range(12):
        made = page.request.post("/api/proxy/videos", data={**body, "prompt": f"Clip {number}"})
        assert made.status == 202, made.text()
        cancelled = page.request.post(f"/api/proxy/videos/{made.json()['id']}/cancel")
        assert cancelled.ok, cancelled.text()

    page.goto("/gallery")
    expect(page.locator(".video-card")).to_have_count(12)
    expect(page.locator(".video-card").first).to_contain_text("Clip 11")  # newest first
    expect(page.locator("[data-page-label]")).to_have_text("Page 1 of 2")
    expect(page.locator("[data-gallery-status]")).to_have_text("13 videos")
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()

    page.get_by_role("button", name="Next").click()
    expect(page).to_have_url(re.compile(r"/gallery\?page=2$"))
    expect(page.locator("[data-page-label]")).to_have_text("Page 2 of 2")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    card = page.locator(".video-card")
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("data-video-id", oldest)
    # It turns Ready on its own, thumbnail and all: the page keeps itself up to date.
    expect(card.locator(".status-badge")).to_have_text("Ready", timeout=60_000)
    expect(card.locator("img")).to_be_visible()

    page.get_by_label("Show").select_option("completed")
    expect(page).to_have_url(re.compile(r"/gallery\?status=completed$"))
    expect(page.locator(".video-card")).to_have_count(1)
    expect(page.locator("[data-pager]")).to_be_hidden()
    page.get_by_label("Show").select_option("failed")
    expect(page.locator("[data-gallery-status]")).to_have_text("No failed videos.")
