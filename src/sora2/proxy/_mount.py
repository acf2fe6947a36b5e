"""Mounting a `Proxy` on an `aiohttp.web.Application`: routes plus start/stop with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sora2.proxy._proxy import Proxy


def mount_proxy(app: web.Application, proxy: Proxy) -> None:
    """Route every method under `proxy.public_prefix` to `proxy`, which lives as long as `app`."""

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
        await proxy.close()

    app.cleanup_ctx.append(lifecycle)
    prefix = proxy.public_prefix
    app.router.add_route("*", prefix, proxy.handle)
    # [\s\S] rather than '.': a path with an encoded newline must reach the proxy's own check
    # (and its clear 400), not fall through to a bare 404.
    app.router.add_route("*", prefix + "/{tail:[\\s\\S]*}", proxy.handle)
