"""Security headers for everything the web service serves itself (pages, static files, health).

Proxied responses are the backend's and pass through untouched; everything else gets a strict
Content-Security-Policy: scripts and styles only from our own origin, never inline, so text a
user typed can never run as code even if a template slipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

NotFoundRenderer = Callable[[web.Request], Awaitable[web.Response]]


def site_middleware(proxy_prefix: str, render_not_found: NotFoundRenderer) -> Middleware:
    """Adds `SECURITY_HEADERS` to every response outside `proxy_prefix`, and answers unknown
    paths there with a page rather than aiohttp's bare text. The proxy's own paths are left
    alone: its answers are the backend's, and its 404s are the api's JSON."""
    prefix = proxy_prefix.rstrip("/")

    @web.middleware
    async def site(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == prefix or path.startswith(prefix + "/"):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = await render_not_found(request)
        except web.HTTPException as error:
            error.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    return site
