"""`/s/{token}`: a shared video, rendered on the server with OpenGraph and Twitter meta so the
link unfurls in chat apps (whose crawlers run no script).

The page server asks the api for the shared video (`GET /api/shared/{token}`: prompt, model,
length, size; nothing of the owner) and plays the file through the proxy. It forwards the
visitor's address, so the api's per-address limit counts visitors, not this server.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp
from aiohttp import web

from sora2.settings import Settings
from sora2.web.pages import RENDERER_KEY, Page, render_not_found

logger = logging.getLogger("sora2.web.share")

SHARE_PAGE = Page("shared.html", "Shared video", "shared")
PROXY_PREFIX = "/api/proxy"
LOOKUP_TIMEOUT_SECONDS = 5.0
# Tokens are URL-safe base64 of 32 random bytes (43 characters); anything else names nothing.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class TooManyRequests(Exception):
    """The api's per-address limit refused this visitor: say so rather than "unavailable"."""


class SharedVideos:
    """Looks shared videos up in the api, over one connection pool: in each api of `API_URLS`
    in turn until one answers (the lookup is a read, safe to ask again elsewhere)."""

    def __init__(self, settings: Settings) -> None:
        self.api_urls = settings.api_urls
        self.frontend_url = settings.frontend_url
        self._http: aiohttp.ClientSession | None = None

    async def lookup(self, token: str, *, visitor: str | None) -> dict[str, Any] | None:
        """The shared video, None when the api says 404; raises when no api answers."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT_SECONDS)
            )
        headers = {"Accept": "application/json"}
        if visitor:
            headers["X-Forwarded-For"] = visitor
        *others, last = self.api_urls
        for api_url in others:
            try:
                return await self._ask(api_url, token, headers)
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                logger.warning("shared video lookup: %s unreachable (%s)", api_url, error)
            except aiohttp.ClientResponseError as error:
                if error.status < 500:
                    raise
                logger.warning("shared video lookup: %s answered %d", api_url, error.status)
        return await self._ask(last, token, headers)

    async def _ask(
        self, api_url: str, token: str, headers: dict[str, str]
    ) -> dict[str, Any] | None:
        assert self._http is not None
        async with self._http.get(f"{api_url}/api/shared/{token}", headers=headers) as answer:
            if answer.status == 404:
                return None
            if answer.status == 429:
                raise TooManyRequests()
            answer.raise_for_status()
            found: dict[str, Any] = await answer.json()
            return found

    async def close(self, _app: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()


SHARED_VIDEOS_KEY = web.AppKey("shared_videos", SharedVideos)


def meta_for(shared: dict[str, Any], *, token: str, frontend_url: str) -> dict[str, str]:
    """The OpenGraph and Twitter properties of a shared video, with absolute URLs."""
    prompt = str(shared["prompt"])
    title = prompt if len(prompt) <= 70 else prompt[:69] + "…"
    width, _, height = str(shared["size"]).partition("x")
    base = f"{frontend_url}{PROXY_PREFIX}/shared/{token}"
    description = f"A {shared['seconds']} s video made with {shared['model']} on Sora2."
    return {
        "og:type": "video.other",
        "og:site_name": "Sora2",
        "og:title": title,
        "og:description": description,
        "og:url": f"{frontend_url}/s/{token}",
        "og:image": f"{base}/thumbnail",
        "og:image:type": "image/jpeg",
        "og:image:width": width,
        "og:image:height": height,
        "og:video": f"{base}/content",
        "og:video:secure_url": f"{base}/content",
        "og:video:type": "video/mp4",
        "og:video:width": width,
        "og:video:height": height,
        "twitter:card": "summary_large_image",
        "twitter:title": title,
        "twitter:description": description,
        "twitter:image": f"{base}/thumbnail",
    }


async def _shared_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    if not _TOKEN.match(token):
        return await render_not_found(request)
    videos = request.app[SHARED_VIDEOS_KEY]
    renderer = request.app[RENDERER_KEY]
    try:
        shared = await videos.lookup(token, visitor=request.remote)
    except TooManyRequests:
        return renderer.render(SHARE_PAGE, status=429, shared=None, limited=True, meta={})
    except (aiohttp.ClientError, TimeoutError) as error:
        logger.warning("shared video lookup failed: %s", type(error).__name__)
        return renderer.render(SHARE_PAGE, status=503, shared=None, limited=False, meta={})
    if shared is None:
        return await render_not_found(request)
    width, _, height = str(shared["size"]).partition("x")
    return renderer.render(
        SHARE_PAGE,
        shared=shared,
        token=token,
        width=width,
        height=height,
        media=f"{PROXY_PREFIX}/shared/{token}",
        meta=meta_for(shared, token=token, frontend_url=videos.frontend_url),
    )


def add_share_page(app: web.Application, settings: Settings) -> None:
    app[SHARED_VIDEOS_KEY] = videos = SharedVideos(settings)
    app.on_cleanup.append(videos.close)
    app.router.add_get("/s/{token}", _shared_page)
