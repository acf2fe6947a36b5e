"""The api's FastAPI application: routes, OpenAPI docs at `/api-docs`, health."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from sora2 import __version__
from sora2.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Sora2 API",
        version=__version__,
        docs_url="/api-docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings

    @app.get("/api-docs.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "timestamp": datetime.now(UTC).isoformat(),
            "version": __version__,
            "checks": {},
        }

    @app.get("/api/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/health/ready", tags=["health"])
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app
