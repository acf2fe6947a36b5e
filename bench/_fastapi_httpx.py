"""The common recipe: a FastAPI catch-all route forwarding with one shared `httpx.AsyncClient`.

What most "FastAPI reverse proxy" answers suggest: build the upstream request, `send(stream=True)`,
return a `StreamingResponse` over `aiter_raw()` and close the upstream response afterwards.
Run it as `python -m bench._fastapi_httpx --port N --upstream http://127.0.0.1:M` (uvicorn with
uvloop and httptools, its fastest setting).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "host"}
)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(upstream: str) -> FastAPI:
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=30.0)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/api/proxy/{path:path}", methods=METHODS)
    async def proxy(path: str, request: Request) -> StreamingResponse:
        headers = [(k, v) for k, v in request.headers.raw if k.decode().lower() not in HOP_BY_HOP]
        has_body = request.method not in ("GET", "HEAD", "OPTIONS", "DELETE")
        upstream_request = client.build_request(
            request.method,
            httpx.URL(path=f"/api/{path}", query=request.url.query.encode()),
            headers=headers,
            content=request.stream() if has_body else None,
        )
        upstream_response = await client.send(upstream_request, stream=True)
        return StreamingResponse(
            upstream_response.aiter_raw(),
            status_code=upstream_response.status_code,
            headers={
                k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP
            },
            background=BackgroundTask(upstream_response.aclose),
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="The FastAPI + httpx proxy recipe.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
