"""The web service's aiohttp application: pages, `/healthz`, `/metrics` and `/api/proxy/…`."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sora2.proxy import Proxy, ProxyConfig, mount_proxy
from sora2.settings import Settings

PROXY_KEY = web.AppKey("proxy", Proxy)

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sora2</title></head>
<body><main><h1>Sora2</h1><p>Text-to-video generation. The API is reachable through
<a href="/api/proxy/health">/api/proxy/health</a>.</p></main></body></html>
"""


async def _index(_: web.Request) -> web.Response:
    return web.Response(text=_PLACEHOLDER, content_type="text/html")


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": "web"})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[PROXY_KEY].metrics.registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.proxy_max_body_bytes + 1)
    proxy = Proxy(ProxyConfig.from_settings(settings))
    app[PROXY_KEY] = proxy
    mount_proxy(app, proxy)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app
