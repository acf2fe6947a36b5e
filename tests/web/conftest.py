"""Real processes for the browser tests: the api and the web on ephemeral ports, and Debian's
Chromium driven by Playwright.

One stack serves the whole session (data in a temporary folder, SQLite, the local video
provider, the api's in-process worker): starting the api is the slowest step here. Tests keep
out of each other's way by each signing up their own user.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.debian import CHROMIUM_ARGS
from tests.fakes.servers import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
START_TIMEOUT = 60.0
EXPECT_TIMEOUT_MS = 15_000
LOGIN_ATTEMPTS_PER_ACCOUNT = 5
"""The stack's sign-in limit per account, low so the rate-limit test reaches it quickly."""


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# What `sora2 serve NAME` runs, without the command-line layer: these tests are about the
# services, and must not depend on every domain's subcommands importing cleanly.
_SERVE = (
    "from sora2.settings import load_settings\n"
    "from sora2.{name}.server import serve\n"
    "serve(load_settings())\n"
)


@dataclass
class Service:
    """One service process (`sora2 serve NAME`), restartable on the same port."""

    name: str
    port: int
    health_path: str
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> Path:
        return self.workdir / f"{self.name}.out"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        with self.output.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVE.format(name=self.name)],
                env=self.env,
                cwd=self.workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_200(self.url + self.health_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.output.read_text(errors="replace")[-3000:]
                self.stop()
                raise AssertionError(f"the {self.name} did not come up:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """An abrupt stop, as a crash would be: SIGKILL to the process we started."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Stack:
    api: Service
    web: Service

    @property
    def url(self) -> str:
        return self.web.url


def start_stack(workdir: Path, **extra_env: str) -> Stack:
    api_port, web_port = free_port(), free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    env = {
        **os.environ,
        "APP_ENV": "development",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(web_port),
        "API_URL": f"http://127.0.0.1:{api_port}",
        "FRONTEND_URL": web_url,
        "DATA_DIR": str(workdir / "data"),
        "LOG_DIR": str(workdir / "logs"),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "VIDEO_PROVIDER": "local",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # Quicker, not different: a cheaper (still Argon2id) hash for the many sign-ups, and
        # the worker and event streams polling more often, so tests wait less for a job.
        "PASSWORD_HASH_MEMORY_KIB": "8192",
        "WORKER_IDLE_POLL_MS": "100",
        "SSE_POLL_INTERVAL_MS": "250",
        # Every test signs up its own user from 127.0.0.1: the per-address limits would soon
        # refuse them (the per-account sign-in limit stays, for the rate-limit test).
        "REGISTER_LIMIT_PER_IP": "1000",
        "LOGIN_LIMIT_PER_IP": "1000",
        **extra_env,
    }
    for name in ("DATABASE_URL", "PORT", "NODE_ENV", "NEXT_PUBLIC_API_URL", "API_URLS"):
        env.pop(name, None)
    api = Service("api", api_port, "/api/health", env, workdir)
    web = Service("web", web_port, "/healthz", env, workdir)
    # Both at once: the web needs nothing from the api to start (its proxy learns the api's
    # health as it goes), and the api's start-up is the slow part.
    api.launch()
    web.launch()
    try:
        api.wait_ready()
        web.wait_ready()
    except AssertionError:
        web.stop()
        api.stop()
        raise
    return Stack(api, web)


@pytest.fixture(scope="package")
def browser(chromium_executable: Path) -> Iterator[Browser]:
    # Playwright's sync API runs its own event loop for as long as it lives, and pytest-asyncio
    # cannot start one beside it: the browser ends with this folder, whose async tests run first
    # (test_http_pages.py sorts before the browser modules).
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium_executable), args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        tmp_path_factory.mktemp("stack"), LOGIN_LIMIT_PER_ACCOUNT=str(LOGIN_ATTEMPTS_PER_ACCOUNT)
    )
    yield running
    running.web.stop()
    running.api.stop()


@pytest.fixture
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) pointed at the stack."""
    created = browser.new_context(
        base_url=stack.url, accept_downloads=True, viewport={"width": 1280, "height": 800}
    )
    created.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield created
    created.close()


@contextmanager
def watched_page(context: BrowserContext) -> Iterator[Page]:
    """A new page that fails the test if it throws or its Content Security Policy blocks
    anything: the policy must never have to block anything of ours (that would be a broken
    feature)."""
    opened = context.new_page()
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


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    with watched_page(context) as opened:
        yield opened


def screenshot(page: Page, name: str) -> None:
    """Keep a picture of the page under test-artifacts/web/ (git-ignored) for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def unique_email(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}@example.com"


def register(page: Page, *, email: str, password: str = "correct-horse-9", nickname: str) -> None:
    """Sign up through the register page, ending on the generate page."""
    page.goto("/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Nickname").fill(nickname)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Repeat the password").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/generate?welcome=1")
