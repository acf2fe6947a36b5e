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
    _pass_request_bodies_as_sent(app)
    prefix = proxy.public_prefix
    app.router.add_route("*", prefix, proxy.handle, expect_handler=_expect_later)
    # [\s\S] rather than '.': a path with an encoded newline must reach the proxy's own check
    # (and its clear 400), not fall through to a bare 404.
    app.router.add_route(
        "*", prefix + "/{tail:[\\s\\S]*}", proxy.handle, expect_handler=_expect_later
    )


def _pass_request_bodies_as_sent(app: web.Application) -> None:
    """aiohttp's server decompresses request bodies sent with `Content-Encoding` by default; a
    proxy must forward them byte for byte, labelled as sent. The switch is a server argument,
    so it is set on the application's handler arguments (which `AppRunner` reads) unless the
    application chose otherwise."""
    handler_args = dict(app._handler_args or {})
    handler_args.setdefault("auto_decompress", False)
    app._handler_args = handler_args


async def _expect_later(request: web.Request) -> web.StreamResponse | None:
    """aiohttp answers `Expect: 100-continue` as soon as a route matches, before any check; the
    proxy sends it itself once the request has passed them. Other expectations get 417."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return web.HTTPExpectationFailed(text="Unknown Expect: " + request.headers["Expect"])
    return None
