"""The web service's aiohttp application: pages, `/static`, `/healthz`, `/metrics` and
`/api/proxy/…`."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sora2.logs import request_id_var
from sora2.proxy import Proxy, mount_proxy
from sora2.settings import Settings
from sora2.web.pages import add_pages, render_not_found
from sora2.web.proxy_setup import proxy_config
from sora2.web.security import site_middleware
from sora2.web.share_page import add_share_page

PROXY_KEY = web.AppKey("proxy", Proxy)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": "web"})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[PROXY_KEY].metrics.registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _server_without_versions(_: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's default `Server` names its version and Python's: an attacker's shopping list."""
    if response.headers.get("Server", "").startswith("Python/"):
        response.headers["Server"] = "sora2"


def create_app(settings: Settings) -> web.Application:
    proxy = Proxy(proxy_config(settings), request_id_var=request_id_var)
    app = web.Application(
        client_max_size=settings.proxy_max_body_bytes + 1,
        middlewares=[site_middleware(proxy.public_prefix, render_not_found)],
    )
    app[PROXY_KEY] = proxy
    app.on_response_prepare.append(_server_without_versions)
    mount_proxy(app, proxy)
    add_pages(app, settings)
    add_share_page(app, settings)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app
