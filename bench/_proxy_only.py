"""Our proxy mounted alone on a bare `aiohttp.web` app: no pages, no middleware, no logging set up.

Between the bare pass-through and `sora2 serve web` this isolates what the proxy library itself
costs from what the web app around it (routes, middleware) and the access log add.
Run it as `python -m bench._proxy_only --port N --upstream http://127.0.0.1:M`.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from sora2.proxy import Proxy, ProxyConfig, mount_proxy


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    mount_proxy(app, Proxy(ProxyConfig(api_url=upstream)))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Our proxy alone on a bare aiohttp app.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )


if __name__ == "__main__":
    main()
