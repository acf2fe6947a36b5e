"""The operator's pages in a real Chromium against real api and web processes, with a real SMTP
server on loopback: forgot and reset password, share links, the admin console."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
    watched_page,
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
        # Videos stay queued until a test runs a worker (`worker_process`): the admin console
        # needs some to cancel, and a fault to fail one.
        API_EMBEDDED_WORKER="false",
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
    with watched_page(site) as opened:
        yield opened


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


@contextmanager
def worker_process(stack: Stack, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`sora2 serve worker` on the stack's database, stopped (SIGTERM) at the end."""
    with (stack.api.workdir / "worker.out").open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "sora2", "serve", "worker"],
            env=stack.api.env | env,
            cwd=stack.api.workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def generate(tab: Page, prompt: str) -> str:
    """Submit the generate form (4 s, the defaults); the new video's id."""
    tab.goto("/generate")
    tab.get_by_label("Prompt").fill(prompt)
    tab.get_by_role("button", name="Generate").click()
    tab.wait_for_url(re.compile(r"/videos/[A-Za-z0-9_-]+$"))
    return tab.url.rsplit("/", 1)[1]


def status_of(page: Page, url: str) -> int:
    answer = page.goto(url)
    assert answer is not None
    return answer.status


def make_video(tab: Page, stack: Stack, prompt: str) -> str:
    """A finished 4 s video of a new user (the local renderer); its id."""
    register(tab, email=unique_email("sharer"), nickname="Sharer")
    video_id = generate(tab, prompt)
    with worker_process(stack):
        expect(tab.locator("[data-video-status]")).to_have_text("Ready", timeout=90_000)
    return video_id


def test_a_video_is_shared_watched_by_anyone_and_revoked(
    tab: Page, site: BrowserContext, browser: Browser, operator_stack: Stack
) -> None:
    prompt = 'A paper boat on a rain gutter <b>"bold"</b>'
    make_video(tab, operator_stack, prompt)
    site.grant_permissions(["clipboard-read", "clipboard-write"])
    panel = tab.locator("[data-share]")
    expect(panel).to_contain_text("Not shared")
    panel.get_by_role("button", name="Create a share link").click()
    link = tab.get_by_label("Your new link (shown only now: copy it)")
    expect(link).to_have_value(re.compile(r"/s/[A-Za-z0-9_-]{40,}$"))
    url = link.input_value()
    panel.get_by_role("button", name="Copy").click()
    expect(panel.locator("[data-share-copied]")).to_have_text("Copied.")
    assert tab.evaluate("navigator.clipboard.readText()") == url
    screenshot(tab, "video-shared")
    # Reloaded, the page says "shared" and no longer has the link.
    tab.reload()
    expect(panel).to_contain_text("Shared: anyone with the link")
    expect(link).to_be_hidden()

    stranger = browser.new_context(base_url=operator_stack.url)
    try:
        visitor = stranger.new_page()
        assert status_of(visitor, url) == 200
        expect(visitor.get_by_role("heading", level=1)).to_have_text(prompt)
        expect(visitor.locator(".shared-meta")).to_have_text("sora-2 · 4 s · 1280x720")
        meta = visitor.locator('meta[property="og:video"]')
        token = url.rsplit("/", 1)[1]
        assert (
            meta.get_attribute("content")
            == f"{operator_stack.url}/api/proxy/shared/{token}/content"
        )
        og_image = visitor.locator('meta[property="og:image"]').get_attribute("content")
        assert og_image == f"{operator_stack.url}/api/proxy/shared/{token}/thumbnail"
        assert visitor.locator('meta[name="twitter:card"]').get_attribute("content")
        # It plays: the browser fetched the file (with Range) and knows its length.
        visitor.wait_for_function(
            "(v => v.readyState >= 1 && v.duration > 3)(document.querySelector('video'))"
        )
        assert "sharer" not in visitor.content()  # no account data
        screenshot(visitor, "shared-video")

        # "New link" ends the old one.
        panel.get_by_role("button", name="New link").click()
        expect(link).to_have_value(re.compile(r"/s/"))
        assert link.input_value() != url
        assert status_of(visitor, url) == 404
        newer = link.input_value()
        panel.get_by_role("button", name="Revoke").click()
        expect(panel).to_contain_text("Not shared")
        assert status_of(visitor, newer) == 404
    finally:
        stranger.close()


def admin_tab(browser: Browser, stack: Stack) -> tuple[BrowserContext, Page, str]:
    """A new account made admin by `sora2 user set-role` at the stack's shell, signed in."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    email = unique_email("admin")
    register(page, email=email, nickname="Operator")
    sora2_command(stack, "user", "set-role", email, "admin", "--reason", "on call")
    return context, page, email


def open_view(page: Page, path: str) -> None:
    page.goto(path)
    expect(page.locator("[data-admin-body]")).to_be_visible()


def confirm(page: Page, *, reason: str, amount: str | None = None) -> None:
    dialog = page.locator("[data-admin-dialog]")
    if amount is not None:
        dialog.get_by_label("Credits to add").fill(amount)
    dialog.get_by_label("Reason").fill(reason)
    dialog.locator("[data-dialog-ok]").click()


def test_the_admin_console_runs_the_service(
    tab: Page, browser: Browser, operator_stack: Stack
) -> None:
    victim = unique_email("customer")
    register(tab, email=victim, nickname="Customer")
    generate(tab, "A lighthouse in a storm, admin test one")
    generate(tab, "A lighthouse in a storm, admin test two")
    tab.goto("/admin")
    expect(tab.locator("[data-admin-status]")).to_contain_text("for administrators")
    expect(tab.get_by_role("link", name="Admin")).to_be_hidden()

    context, admin, _ = admin_tab(browser, operator_stack)
    try:
        open_view(admin, "/admin")
        expect(admin.get_by_role("link", name="Admin", exact=True).first).to_be_visible()
        expect(admin.locator("[data-figures]")).to_contain_text("in the works")
        bars = admin.locator('[data-chart="videos"] svg rect[data-series="queued"]')
        expect(bars.last).to_have_attribute("data-value", re.compile(r"^[1-9]"))
        expect(admin.locator('[data-chart="credits"] svg')).to_be_visible()
        expect(admin.locator('[data-chart="queueWait"] svg')).to_be_visible()
        screenshot(admin, "admin-dashboard")

        # Users: search, a credit adjustment (the reason is required), ban and unban.
        open_view(admin, "/admin/users")
        admin.get_by_label("Search").fill(victim)
        admin.get_by_role("button", name="Apply").click()
        user_row = admin.locator("tbody tr", has_text=victim)
        expect(user_row).to_contain_text("92")  # 100 less two 4 s videos
        user_row.get_by_role("button", name="Credits…").click()
        confirm(admin, reason="", amount="15")
        expect(admin.locator("[data-admin-dialog] [data-error-for=reason]")).to_be_visible()
        confirm(admin, reason="Sorry for the wait", amount="15")
        expect(admin.locator("[data-admin-notice]")).to_have_text(f"{victim} now has 107 credits.")
        user_row.get_by_role("button", name="Ban…").click()
        confirm(admin, reason="testing the ban")
        expect(user_row).to_contain_text("banned")
        tab.goto("/gallery")
        tab.wait_for_url("**/login?next=*")  # the ban ended the customer's session
        user_row.get_by_role("button", name="Unban…").click()
        confirm(admin, reason="")
        expect(user_row).to_contain_text("active")
        screenshot(admin, "admin-users")

        # Videos: filters, and a cancel that refunds the owner.
        open_view(admin, "/admin/videos")
        admin.get_by_label("Status").select_option("queued")
        admin.get_by_label("User").fill(victim)
        admin.get_by_role("button", name="Apply").click()
        rows = admin.locator("tbody tr")
        expect(rows).to_have_count(2)
        rows.filter(has_text="admin test one").get_by_role("button", name="Cancel…").click()
        confirm(admin, reason="stuck in the queue")
        expect(admin.locator("[data-admin-notice]")).to_contain_text(f"refunded to {victim}")
        expect(rows).to_have_count(1)

        # Jobs: a real fault fails the other video (its render folder cannot be made), then an
        # admin retries it and it completes.
        renders = operator_stack.api.workdir / "data" / "local-provider"
        moved = renders.with_name("local-provider.aside")
        if renders.exists():
            renders.rename(moved)
        renders.write_text("not a folder")
        with worker_process(operator_stack, JOB_MAX_ATTEMPTS="1"):
            open_view(admin, "/admin/jobs")
            failed = admin.locator("tbody tr", has_text=victim)
            for _ in range(100):
                if failed.count():
                    break
                admin.wait_for_timeout(200)
                admin.get_by_role("button", name="Apply").click()
            expect(failed).to_contain_text("Cannot write the render job")
        renders.unlink()
        if moved.exists():
            moved.rename(renders)
        failed.get_by_role("button", name="Retry…").click()
        confirm(admin, reason="storage fixed")
        expect(admin.locator("[data-admin-notice]")).to_contain_text("is queued again")
        with worker_process(operator_stack):
            admin.get_by_label("Status").select_option("done")
            done = admin.locator("tbody tr", has_text=victim)
            for _ in range(300):
                admin.get_by_role("button", name="Apply").click()
                if done.count() == 2:
                    break
                admin.wait_for_timeout(200)
            expect(done).to_have_count(2)
        screenshot(admin, "admin-jobs")

        # The audit log has every change, the command line's included.
        open_view(admin, "/admin/audit")
        log = admin.locator("[data-table]")
        for action in (
            "user.role",
            "user.credits",
            "user.ban",
            "user.unban",
            "video.cancel",
            "job.retry",
        ):
            expect(log).to_contain_text(action)
        expect(log).to_contain_text("cli:")
        expect(log).to_contain_text("Sorry for the wait")

        open_view(admin, "/admin/keys")
        expect(admin.locator("[data-provider]")).to_contain_text("local")
        open_view(admin, "/admin/config")
        config = admin.locator("[data-config]")
        expect(config.locator("tr", has_text="JWT_SECRET")).to_contain_text("••••")
        assert operator_stack.api.env["JWT_SECRET"] not in admin.content()
        screenshot(admin, "admin-config")
    finally:
        context.close()
