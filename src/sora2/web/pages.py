"""The server-rendered pages: one Jinja2 template each, filled in by a small ES module.

Pages carry no user data of their own: the browser fetches everything through `/api/proxy/…`
with the session cookie (HttpOnly, set by the api), which the page server never reads. What a
script needs from the server (the video id, the price table, the choices the api
accepts) travels in `data-*` attributes, because the Content-Security-Policy forbids inline
scripts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from sora2.catalog import PROMPT_MAX_CHARS, Catalog, load_catalog
from sora2.settings import Settings

TEMPLATES_DIR = Path(str(resources.files("sora2.web") / "templates"))
STATIC_DIR = Path(str(resources.files("sora2.web") / "static"))

_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Ids the api hands out are UUIDs or integers; anything else cannot name a video.
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Page:
    template: str
    title: str
    script: str
    signed_in_only: bool = False
    """Whether the page's script sends a visitor without a session to the login page."""


PAGES: dict[str, Page] = {
    "/": Page("landing.html", "Text to video", "landing"),
    "/login": Page("login.html", "Sign in", "login"),
    "/register": Page("register.html", "Create your account", "register"),
    "/forgot-password": Page("forgot_password.html", "Forgot your password", "forgot-password"),
    "/reset-password": Page("reset_password.html", "Choose a new password", "reset-password"),
    "/pricing": Page("pricing.html", "Pricing", "pricing"),
    "/generate": Page("generate.html", "Generate a video", "generate", signed_in_only=True),
    "/gallery": Page("gallery.html", "Your videos", "gallery", signed_in_only=True),
    "/profile": Page("profile.html", "Your profile", "profile", signed_in_only=True),
}
VIDEO_PAGE = Page("video.html", "Video", "video", signed_in_only=True)
# The admin console: one template, one script, a view each. The pages hold no data; the api
# answers only administrators (403 for anyone else), and the script says so.
ADMIN_VIEWS: dict[str, tuple[str, str]] = {
    "/admin": ("dashboard", "Dashboard"),
    "/admin/users": ("users", "Users"),
    "/admin/videos": ("videos", "Videos"),
    "/admin/jobs": ("jobs", "Jobs"),
    "/admin/audit": ("audit", "Audit log"),
    "/admin/keys": ("keys", "Provider keys"),
    "/admin/config": ("config", "Configuration"),
}
NOT_FOUND_PAGE = Page("not_found.html", "Page not found", "common")


def static_version(directory: Path = STATIC_DIR) -> str:
    """A short digest of every static file, appended to asset URLs so a release busts caches."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def create_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class PageRenderer:
    """Renders pages with what every template needs (asset version, page id, choices)."""

    def __init__(
        self,
        environment: jinja2.Environment,
        version: str,
        *,
        catalog: Catalog,
        signup_credits: int,
        cache: bool = True,
    ) -> None:
        self.environment = environment
        self.cache = cache
        self.version = version
        self.catalog = catalog
        self.signup_credits = signup_credits
        self.choices = json.dumps(
            {
                "models": catalog.public(),
                "creditsPerSecond": catalog.prices(),
                "promptMaxChars": PROMPT_MAX_CHARS,
                "signupCredits": signup_credits,
            }
        )
        self._rendered: dict[str, str] = {}

    def render(self, page: Page, *, status: int = 200, **context: Any) -> web.Response:
        return web.Response(
            text=self.html(page, **context),
            status=status,
            content_type="text/html",
            # Pages are the same for everyone, but a shared cache has no business keeping them.
            headers={"Cache-Control": "no-cache, private"},
        )

    def html(self, page: Page, **context: Any) -> str:
        if self.cache and not context:
            # A page without per-request values is the same every time: render it once.
            cached = self._rendered.get(page.template)
            if cached is None:
                cached = self._rendered[page.template] = self._render(page)
            return cached
        return self._render(page, **context)

    def _render(self, page: Page, **context: Any) -> str:
        return self.environment.get_template(page.template).render(
            title=page.title,
            script=page.script,
            signed_in_only=page.signed_in_only,
            version=self.version,
            choices=self.choices,
            models=list(self.catalog.models.values()),
            default_model=self.catalog.default,
            prompt_max=PROMPT_MAX_CHARS,
            signup_credits=self.signup_credits,
            **context,
        )


RENDERER_KEY = web.AppKey("page_renderer", PageRenderer)


def _page_handler(page: Page) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return request.app[RENDERER_KEY].render(page)

    return handle


async def _video_page(request: web.Request) -> web.Response:
    video_id = request.match_info["video_id"]
    if not _VIDEO_ID.match(video_id):
        raise web.HTTPNotFound()
    return request.app[RENDERER_KEY].render(VIDEO_PAGE, video_id=video_id)


def _admin_page(path: str, view: str, label: str) -> Handler:
    page = Page("admin.html", f"Admin · {label}", "admin", signed_in_only=True)
    views = [(where, name) for where, (_, name) in ADMIN_VIEWS.items()]

    async def handle(request: web.Request) -> web.Response:
        return request.app[RENDERER_KEY].render(page, view=view, admin_path=path, admin_views=views)

    return handle


async def render_not_found(request: web.Request) -> web.Response:
    return request.app[RENDERER_KEY].render(NOT_FOUND_PAGE, status=404, path=request.path)


def static_files(directory: Path = STATIC_DIR) -> dict[str, Path]:
    """Every file under `directory` by its URL path: the only files `/static/` serves, so no
    request path, however encoded, can name anything else."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


STATIC_FILES_KEY = web.AppKey("static_files", dict[str, Path])


async def _static_file(request: web.Request) -> web.StreamResponse:
    """One file under `STATIC_DIR`; revalidated on every use (cheap 304s), because ES modules
    import each other by plain URL and must never mix versions across a release."""
    path = request.app[STATIC_FILES_KEY].get(request.match_info["filename"])
    if path is None:
        raise web.HTTPNotFound()
    headers = {"Cache-Control": "no-cache"}
    # With `nosniff`, a module served under a guessed type would not run: say it exactly.
    content_type = _CONTENT_TYPES.get(path.suffix)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


def add_pages(app: web.Application, settings: Settings) -> None:
    app[RENDERER_KEY] = PageRenderer(
        create_environment(),
        static_version(),
        # The same catalog the api charges by (`sora2.catalog`); the generate page also prefers
        # what the api itself answers, should the two processes be configured apart.
        catalog=load_catalog(settings, need_keys=False),
        signup_credits=settings.signup_credits,
        # In development a template edit shows on the next request; elsewhere pages render once.
        cache=not settings.is_development,
    )
    app[STATIC_FILES_KEY] = static_files()
    for path, page in PAGES.items():
        app.router.add_get(path, _page_handler(page))
    app.router.add_get("/videos/{video_id}", _video_page)
    for path, (view, label) in ADMIN_VIEWS.items():
        app.router.add_get(path, _admin_page(path, view, label))
    app.router.add_get("/static/{filename:.+}", _static_file)
