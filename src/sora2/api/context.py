"""Everything a request handler needs that lives as long as the app: built once at start."""

from __future__ import annotations

from dataclasses import dataclass

from sora2.api.auth.client_ip import ClientAddress
from sora2.api.auth.ratelimit import RateLimiter, rate_limiter
from sora2.api.auth.security import AccessTokens, Passwords
from sora2.api.db import Database
from sora2.api.db.rows import Rows, rows_for
from sora2.api.events import VideoEvents
from sora2.api.live import LiveProgress
from sora2.api.mail import Mailer
from sora2.api.metrics import ApiMetrics
from sora2.api.providers.base import VideoProvider
from sora2.api.storage import Storage
from sora2.catalog import Catalog, load_catalog
from sora2.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    database: Database
    passwords: Passwords
    tokens: AccessTokens
    limiter: RateLimiter
    client_address: ClientAddress
    storage: Storage
    mailer: Mailer
    catalog: Catalog
    live: LiveProgress
    events: VideoEvents
    metrics: ApiMetrics
    # The hot routes' driver-level reads (None: an in-memory SQLite database).
    rows: Rows | None = None
    provider: VideoProvider | None = None

    @classmethod
    def build(cls, settings: Settings, *, database: Database | None = None) -> ApiContext:
        database = database or Database(settings.resolved_database_url)
        events, metrics = VideoEvents(), ApiMetrics()
        metrics.count_statements(database)
        rows = rows_for(database.url, counted=metrics.database_queries.inc)
        return cls(
            settings=settings,
            database=database,
            passwords=Passwords(memory_kib=settings.password_hash_memory_kib),
            tokens=AccessTokens(
                secret=settings.resolved_jwt_secret(),
                ttl_seconds=settings.access_token_ttl_seconds,
            ),
            limiter=rate_limiter(database, rows, window_seconds=settings.rate_limit_window_seconds),
            client_address=ClientAddress(settings.proxy_trusted_proxies),
            storage=media_storage(settings),
            mailer=Mailer.from_settings(settings),
            catalog=load_catalog(settings),
            live=LiveProgress(
                database,
                events,
                poll_interval=settings.sse_poll_interval_ms / 1000,
                heartbeat=settings.sse_heartbeat_seconds,
                metrics=metrics,
            ),
            events=events,
            metrics=metrics,
            rows=rows,
        )


def media_storage(settings: Settings) -> Storage:
    """The store `STORAGE_URL` names; files being written wait in `DATA_DIR/scratch`."""
    return Storage.from_url(settings.resolved_storage_url, scratch=settings.data_dir / "scratch")
