"""The api's FastAPI application: routes, OpenAPI docs at `/api-docs`, health, metrics.

`create_app(settings)` builds everything from settings; tests may hand in a provider (a fake of
the external video service). At start the schema is migrated (development, test) or checked
(production refuses to start with pending migrations), and the embedded worker starts when
`API_EMBEDDED_WORKER` (default: on in development) says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from sora2 import __version__
from sora2.api.admin.routes import router as admin_router
from sora2.api.auth.reset_routes import router as password_reset_router
from sora2.api.auth.routes import router as auth_router
from sora2.api.catalog.routes import router as models_router
from sora2.api.context import ApiContext
from sora2.api.credits.routes import router as credits_router
from sora2.api.db.migrate import prepare_schema
from sora2.api.errors import install_error_handlers
from sora2.api.health.routes import router as health_router
from sora2.api.hot_routes import HotRoutes
from sora2.api.middleware import RequestContextMiddleware
from sora2.api.providers.base import VideoProvider
from sora2.api.shares.routes import owner_router as share_owner_router
from sora2.api.shares.routes import public_router as shared_router
from sora2.api.users.routes import router as users_router
from sora2.api.videos.routes import router as videos_router
from sora2.settings import Settings

logger = logging.getLogger("sora2.api")


def create_app(
    settings: Settings, *, provider: VideoProvider | None = None, hot_routes: bool = True
) -> FastAPI:
    """The api. `hot_routes=False` leaves every request to FastAPI's routes: tests compare the
    two paths' answers."""
    context = ApiContext.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await prepare_schema(context.database, apply=not settings.is_production)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(context.database.dispose)
            if context.rows is not None:
                stack.push_async_callback(context.rows.close)
            stack.push_async_callback(context.mailer.drain)
            await stack.enter_async_context(context.live.running())
            context.provider = provider or _provider_for_health(context)
            if provider is None and context.provider is not None:
                stack.push_async_callback(context.provider.close)
            if settings.runs_embedded_worker:
                from sora2.api.jobs.worker import Worker

                if context.provider is None:  # say why, loudly: a worker cannot run without one
                    context.provider = _provider_from_catalog(context)
                worker = Worker(
                    settings=settings,
                    database=context.database,
                    storage=context.storage,
                    provider=context.provider,
                    metrics=context.metrics,
                    events=context.events,
                )
                await stack.enter_async_context(worker.running())
                logger.info("embedded worker started")
            yield

    app = FastAPI(
        title="Sora2 API",
        version=__version__,
        description="Accounts, credits and text-to-video generation. Errors share one JSON shape.",
        docs_url="/api-docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.context = context
    install_error_handlers(app)
    for router in (
        health_router,
        auth_router,
        password_reset_router,
        users_router,
        credits_router,
        models_router,
        videos_router,
        share_owner_router,
        shared_router,
        admin_router,
    ):
        app.include_router(router)

    @app.get("/api-docs.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    if hot_routes and context.rows is not None:
        # Innermost of our middleware: the hot routes' answers get CORS, ids, logs and metrics.
        app.add_middleware(HotRoutes, context=context, rows=context.rows)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[settings.frontend_origin],
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Range"],
        expose_headers=["X-Request-ID", "Retry-After", "Content-Range", "Content-Disposition"],
        max_age=600,
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=context.metrics,
        show_internals=settings.is_development,
    )
    return app


def _provider_for_health(context: ApiContext) -> VideoProvider | None:
    """The provider, or None (logged, and shown by `/api/health`) when it cannot be set up.

    Without an embedded worker the api needs the provider only to report its state, so a broken
    provider set-up must not keep accounts and the gallery from working.
    """
    try:
        return _provider_from_catalog(context)
    except Exception as error:
        if context.settings.runs_embedded_worker:
            raise
        logger.error("video providers unavailable: %s", error)
        return None


def _provider_from_catalog(context: ApiContext) -> VideoProvider:
    from sora2.api.providers.factory import create_provider

    return create_provider(context.settings, context.catalog)
