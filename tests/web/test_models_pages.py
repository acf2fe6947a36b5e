"""The catalog in Chromium: the generate page built from GET /api/models, a video made from an
image (with its crop preview) and then remixed, the gallery's marks, and the pricing page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.web.conftest import Stack, register, screenshot, unique_email
from tests.web.test_journey import balance_badge, watch_until_ready

pytestmark = pytest.mark.browser


def a_photo(folder: Path) -> Path:
    """Wide (3:1): a red and a blue edge that a 16:9 crop cuts away, green between them."""
    path = folder / "beach.png"
    image = Image.new("RGB", (600, 200), (30, 200, 60))
    image.paste((220, 30, 30), (0, 0, 100, 200))
    image.paste((30, 60, 220), (500, 0, 600, 200))
    image.save(path)
    return path


def test_a_video_made_from_an_image_is_remixed_and_both_are_marked_in_the_gallery(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    register(page, email=unique_email("image"), nickname="Imogen")
    model = page.get_by_label("Model")
    # The picker is the api's catalog: names and prices per second.
    expect(model.locator("option")).to_have_text(
        ["Sora 2 · 1 credit/s", "Sora 2 Pro · 3 credits/s"]
    )
    page.get_by_label("Prompt").fill("A kite lifting off the beach")
    page.get_by_label("Length").select_option("4")
    page.get_by_label("Size").select_option("1280x720")
    page.set_input_files("#input-reference", a_photo(tmp_path))

    preview = page.locator("[data-crop-preview]")
    expect(preview).to_be_visible()
    expect(preview).to_have_attribute("data-size", "1280x720")
    assert (preview.get_attribute("width"), preview.get_attribute("height")) == ("320", "180")
    # The preview is what the api will crop: the middle of the picture, green, edge to edge.
    centre = page.evaluate(
        """() => { const c = document.querySelector('[data-crop-preview]');
                   const d = c.getContext('2d');
                   return [Array.from(d.getImageData(2, 90, 1, 1).data),
                           Array.from(d.getImageData(160, 90, 1, 1).data)]; }"""
    )
    for red, green, _blue, _alpha in centre:
        assert green > 150 > red
    page.get_by_label("Size").select_option("720x1280")
    expect(preview).to_have_attribute("data-size", "720x1280")
    expect(page.locator("[data-crop-caption]")).to_have_text("beach.png, cropped to 720\u00d71280")
    page.get_by_label("Size").select_option("1280x720")
    expect(page.locator("[data-cost]")).to_contain_text(
        "This video costs 4 credits. Your balance: 100"
    )
    screenshot(page, "generate-from-image")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/videos/[A-Za-z0-9_-]+$"))
    source_id = page.url.rsplit("/", 1)[1]

    expect(page.locator("[data-input-reference]")).to_be_visible()
    assert watch_until_ready(page)[-1][0] == "Ready"
    served = page.locator("[data-input-reference-image]")
    expect(served).to_have_js_property("naturalWidth", 1280)

    page.get_by_role("button", name="Remix").click()
    dialog = page.locator("[data-remix-dialog]")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("New prompt")).to_have_value("A kite lifting off the beach")
    dialog.get_by_label("New prompt").fill("The same kite at night, lanterns below")
    dialog.get_by_role("button", name="Remix").click()
    page.wait_for_url(lambda url: "/videos/" in url and not url.endswith(source_id))
    remix_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("[data-video-prompt]")).to_have_text(
        "The same kite at night, lanterns below"
    )
    expect(page.locator("[data-remix-source-link]")).to_have_attribute(
        "href", f"/videos/{source_id}"
    )
    assert watch_until_ready(page)[-1][0] == "Ready"
    assert balance_badge(page) == 100 - 4 - 4

    page.goto("/gallery")
    remix_card = page.locator(f"li[data-video-id='{remix_id}']")
    source_card = page.locator(f"li[data-video-id='{source_id}']")
    expect(source_card.locator("[data-origin='image']")).to_have_text("From an image")
    expect(remix_card.locator("[data-origin='remix']")).to_have_attribute(
        "href", f"/videos/{source_id}"
    )
    screenshot(page, "gallery-with-origins")
    remix_card.locator("[data-origin='remix']").click()
    page.wait_for_url(f"**/videos/{source_id}")


def test_a_bad_image_is_refused_on_the_page_with_nothing_charged(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    register(page, email=unique_email("badimage"), nickname="Ned")
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"not really a picture")
    page.get_by_label("Prompt").fill("Anything")

    page.set_input_files("#input-reference", fake)

    expect(page.locator("[data-error-for='input_reference']")).to_have_text(
        "notes.png could not be read as an image."
    )
    expect(page.locator("[data-crop-preview]")).to_be_hidden()
    assert balance_badge(page) == 100


def test_the_pricing_page_shows_each_models_prices_and_the_gift(page: Page, stack: Stack) -> None:
    page.goto("/pricing")

    expect(page.get_by_role("heading", name="Pricing")).to_be_visible()
    expect(page.locator("[data-signup-credits]")).to_contain_text("100 free credits")
    pro = page.locator("tr[data-model='sora-2-pro']")
    expect(pro.locator("[data-per-second]")).to_have_text("3")
    expect(pro.locator("[data-length]")).to_have_text(
        ["4 s: 12 credits", "8 s: 24 credits", "12 s: 36 credits"]
    )
    screenshot(page, "pricing")
