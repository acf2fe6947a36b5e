"""The session cookies: HttpOnly, SameSite=Lax, Secure in production, path `/`.

Path `/` (not `/api/auth/…`) so the browser sends them through the web's `/api/proxy/…` too.
"""

from __future__ import annotations

from fastapi import Response

from sora2.api.deps import ACCESS_COOKIE, REFRESH_COOKIE
from sora2.settings import Settings


def set_session_cookies(
    response: Response, settings: Settings, *, access_token: str, refresh_token: str
) -> None:
    common = {"httponly": True, "samesite": "lax", "secure": settings.is_production, "path": "/"}
    response.set_cookie(
        ACCESS_COOKIE,
        access_token,
        max_age=settings.access_token_ttl_seconds,
        **common,  # type: ignore[arg-type]
    )
    response.set_cookie(
        REFRESH_COOKIE,
        refresh_token,
        max_age=settings.refresh_token_ttl_days * 86_400,
        **common,  # type: ignore[arg-type]
    )


def clear_session_cookies(response: Response, settings: Settings) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(
            name, path="/", httponly=True, samesite="lax", secure=settings.is_production
        )
