"""CORS and cross-site write protection: only the app's own origins, never reflection."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from sora2.proxy._config import Network
from sora2.proxy._headers import forwarded_proto

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSED = "X-Request-ID, Retry-After, Content-Disposition, Content-Range, ETag, Location"
PREFLIGHT_MAX_AGE = "600"


@dataclass(slots=True)
class CorsDecision:
    allowed_origin: str | None = None
    """The origin to answer with credentials, when the request came from an allowed one."""
    forbidden: bool = False
    """A data-changing request from a foreign origin: refuse it (CSRF)."""
    preflight: bool = False
    """An allowed preflight the proxy answers itself."""
    request_headers: str = field(default="")

    def apply(self, headers: CIMultiDict[str]) -> None:
        # Every answer depends on Origin (another origin would get other CORS headers, or a
        # 403), so every answer says so: a shared cache must not hand one origin's to another.
        vary = headers.get("Vary")
        if vary is None:
            headers["Vary"] = "Origin"
        elif "origin" not in vary.lower() and vary.strip() != "*":
            headers["Vary"] = f"{vary}, Origin"
        if self.allowed_origin is None:
            return
        headers["Access-Control-Allow-Origin"] = self.allowed_origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = _EXPOSED

    def preflight_response(self, request_id: str) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict(
            {
                "Access-Control-Allow-Methods": _ALLOWED_METHODS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                "X-Request-ID": request_id,
            }
        )
        if self.request_headers:
            headers["Access-Control-Allow-Headers"] = self.request_headers
        self.apply(headers)
        return web.Response(status=204, headers=headers)


_NO_ORIGIN = CorsDecision()


class CorsPolicy:
    def __init__(
        self,
        allowed_origins: frozenset[str],
        *,
        allowed_headers: frozenset[str],
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.allowed_origins = allowed_origins
        self.allowed_headers = frozenset(name.lower() for name in allowed_headers)
        self.trusted_proxies = trusted_proxies

    def decide(self, request: web.Request) -> CorsDecision:
        origin = request.headers.get("Origin")
        if origin is None:
            return _NO_ORIGIN
        allowed = origin in self.allowed_origins or origin == self._own_origin(request)
        is_preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if not allowed:
            return CorsDecision(forbidden=is_preflight or request.method not in _SAFE_METHODS)
        return CorsDecision(
            allowed_origin=origin,
            preflight=is_preflight,
            request_headers=self._allowed_request_headers(request) if is_preflight else "",
        )

    def _own_origin(self, request: web.Request) -> str:
        """The page's own origin, as the browser sees it: behind a trusted TLS-terminating
        proxy, the scheme is that proxy's `X-Forwarded-Proto`."""
        scheme = forwarded_proto(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            trusted=self.trusted_proxies,
        )
        return f"{scheme}://{request.host}"

    def _allowed_request_headers(self, request: web.Request) -> str:
        """Of the headers a preflight asks for, the ones the configuration allows; the browser
        refuses the request if any it needs is missing."""
        asked = request.headers.get("Access-Control-Request-Headers", "")
        names = (name.strip() for name in asked.split(","))
        return ", ".join(name for name in names if name.lower() in self.allowed_headers)
