"""The floor for any aiohttp proxy: `aiohttp.web` + a pooled `aiohttp.ClientSession`, nothing else.

No retries, deadline, health, metrics, logs or header policy: just forward and stream back. What
our proxy costs beyond this is what its resilience features cost.
Run it as `python -m bench._passthrough --port N --upstream http://127.0.0.1:M`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_KEY = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    url = f"{request.app[UPSTREAM_KEY]}/api/{request.match_info['path']}"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers.pop("Host", None)
    body = request.content if request.body_exists else None
    async with request.app[SESSION_KEY].request(
        request.method,
        url,
        params=request.query,
        headers=headers,
        data=body,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION_KEY] = session
        yield


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM_KEY] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/api/proxy/{path:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A bare aiohttp pass-through proxy.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        create_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
