"""One typed `Settings` object for every part, read from the environment or a `.env` file.

Every variable of DESIGN.md lives here, with the aliases the earlier system used (`PORT`,
`NODE_ENV`, `NEXT_PUBLIC_API_URL`, `OPENAI_API_KEY`), so an old `.env` keeps working.
"""

from __future__ import annotations

import ipaddress
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

AppEnv = Literal["development", "test", "production"]
VideoProviderName = Literal["local", "openai"]

MIN_JWT_SECRET_LENGTH = 32
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")


class SettingsError(Exception):
    """Settings that cannot work, with one readable line per problem."""


def _aliases(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    app_env: AppEnv = Field("development", validation_alias=_aliases("APP_ENV", "NODE_ENV"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_aliases("LOG_LEVEL")
    )

    api_host: str = Field("127.0.0.1", validation_alias=_aliases("API_HOST"))
    api_port: int = Field(3101, ge=1, le=65535, validation_alias=_aliases("API_PORT", "PORT"))
    web_host: str = Field("127.0.0.1", validation_alias=_aliases("WEB_HOST"))
    web_port: int = Field(3200, ge=1, le=65535, validation_alias=_aliases("WEB_PORT"))
    api_url: str = Field(
        "http://127.0.0.1:3101", validation_alias=_aliases("API_URL", "NEXT_PUBLIC_API_URL")
    )
    # Several apis behind the web's proxy (comma-separated); when set, it replaces `api_url`.
    api_urls_list: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_aliases("API_URLS")
    )
    frontend_url: str = Field("http://localhost:3200", validation_alias=_aliases("FRONTEND_URL"))

    database_url: str | None = Field(None, validation_alias=_aliases("DATABASE_URL"))
    jwt_secret: str | None = Field(None, validation_alias=_aliases("JWT_SECRET"), repr=False)
    data_dir: Path = Field(Path("data"), validation_alias=_aliases("DATA_DIR"))
    log_dir: Path = Field(Path("logs"), validation_alias=_aliases("LOG_DIR"))

    proxy_max_attempts: int = Field(3, ge=1, le=10, validation_alias=_aliases("PROXY_MAX_ATTEMPTS"))
    proxy_retry_delay_ms: int = Field(
        100, ge=0, le=60_000, validation_alias=_aliases("PROXY_RETRY_DELAY_MS")
    )
    proxy_request_timeout_ms: int = Field(
        30_000, ge=10, le=3_600_000, validation_alias=_aliases("PROXY_REQUEST_TIMEOUT_MS")
    )
    proxy_connect_timeout_ms: int = Field(
        1_000, ge=10, le=60_000, validation_alias=_aliases("PROXY_CONNECT_TIMEOUT_MS")
    )
    proxy_idle_timeout_ms: int = Field(
        30_000, ge=10, le=3_600_000, validation_alias=_aliases("PROXY_IDLE_TIMEOUT_MS")
    )
    proxy_health_check_ttl_ms: int = Field(
        5_000, ge=50, le=600_000, validation_alias=_aliases("PROXY_HEALTH_CHECK_TTL_MS")
    )
    proxy_startup_grace_ms: int = Field(
        10_000, ge=0, le=600_000, validation_alias=_aliases("PROXY_STARTUP_GRACE_MS")
    )
    proxy_max_body_bytes: int = Field(
        52_428_800, ge=0, validation_alias=_aliases("PROXY_MAX_BODY_BYTES")
    )
    proxy_circuit_failure_threshold: int = Field(
        5, ge=1, le=1_000, validation_alias=_aliases("PROXY_CIRCUIT_FAILURE_THRESHOLD")
    )
    proxy_circuit_open_ms: int = Field(
        500, ge=10, le=600_000, validation_alias=_aliases("PROXY_CIRCUIT_OPEN_MS")
    )
    proxy_retry_budget_ratio: float = Field(
        0.2, ge=0.0, le=1.0, validation_alias=_aliases("PROXY_RETRY_BUDGET_RATIO")
    )
    # With several apis (API_URLS): which one a request goes to.
    proxy_balance: Literal["least_outstanding", "round_robin"] = Field(
        "least_outstanding", validation_alias=_aliases("PROXY_BALANCE")
    )
    proxy_pool_size: int = Field(
        8_192, ge=1, le=1_000_000, validation_alias=_aliases("PROXY_POOL_SIZE")
    )
    # Set by `sora2 dev` for the web it starts: a file that exists while the launcher restarts
    # the api on purpose (devstack/restart_signal.py). Not for hand configuration.
    api_restart_signal: Path | None = Field(
        None, validation_alias=_aliases("SORA2_API_RESTART_SIGNAL")
    )
    proxy_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_aliases("PROXY_TRUSTED_PROXIES")
    )

    video_provider: VideoProviderName = Field("local", validation_alias=_aliases("VIDEO_PROVIDER"))
    openai_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_aliases("OPENAI_API_KEYS", "OPENAI_API_KEY"),
        repr=False,
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=_aliases("OPENAI_BASE_URL")
    )
    # The openai provider: how long one upstream call may stay silent before it counts as transient.
    openai_timeout_ms: int = Field(
        60_000, ge=100, le=3_600_000, validation_alias=_aliases("OPENAI_TIMEOUT_MS")
    )

    @field_validator("app_env", mode="before")
    @classmethod
    def _normalise_env(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("proxy_trusted_proxies", "openai_api_keys", "api_urls_list", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("proxy_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("api_urls_list")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        urls = [cls._http_url(item) for item in value]
        if len(set(urls)) != len(urls):
            raise ValueError("API_URLS names the same api more than once")
        return urls

    @field_validator("api_url", "frontend_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} must be an absolute http(s) URL such as http://127.0.0.1:3101"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _production_needs_a_secret(self) -> Settings:
        weak = not self.jwt_secret or len(self.jwt_secret) < MIN_JWT_SECRET_LENGTH
        if self.app_env == "production" and weak:
            raise ValueError(
                f"JWT_SECRET must be set to at least {MIN_JWT_SECRET_LENGTH} random characters "
                "in production (generate one: python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            )
        return self

    @model_validator(mode="after")
    def _openai_needs_a_key(self) -> Settings:
        # With MODELS_FILE the catalog names its providers and their key variables itself.
        if self.video_provider == "openai" and not self.openai_api_keys and not self.models_file:
            raise ValueError(
                "VIDEO_PROVIDER=openai needs at least one key: set OPENAI_API_KEYS "
                "(comma-separated) or OPENAI_API_KEY, or use VIDEO_PROVIDER=local"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def api_urls(self) -> list[str]:
        """Every api the web's proxy (and the share page) may reach, in order: `API_URLS` when
        set, else the one `API_URL`."""
        return list(self.api_urls_list) or [self.api_url]

    @property
    def api_origin(self) -> str:
        """`API_URL` reduced to scheme://host[:port]: the only place the proxy may reach."""
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def web_open_files_needed(self) -> int:
        """Open files the web needs at full load: two per proxied connection (the client's and
        the backend's), plus room for its own files, listeners and health checks."""
        return 2 * self.proxy_pool_size + 256

    @property
    def frontend_origin(self) -> str:
        parts = urlsplit(self.frontend_url)
        return f"{parts.scheme}://{parts.netloc}"

    @cached_property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: `DATABASE_URL`, or a SQLite file under `DATA_DIR`."""
        url = self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'sora2.db').resolve()}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    def resolved_jwt_secret(self) -> str:
        """`JWT_SECRET`, or in development/test one generated once and kept under `DATA_DIR`."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / ".jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        path.write_text(secret)
        path.chmod(0o600)
        return secret

    # --- api: accounts, credits, jobs (owned by the api; see docs/configuration.md "API") ---
    api_embedded_worker: bool | None = Field(None, validation_alias=_aliases("API_EMBEDDED_WORKER"))
    signup_credits: int = Field(
        100, ge=0, le=1_000_000, validation_alias=_aliases("SIGNUP_CREDITS")
    )
    # Overrides of the built-in catalog's prices (`sora2.catalog`); MODELS_FILE prices its own.
    video_prices: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, validation_alias=_aliases("VIDEO_PRICES")
    )
    models_file: Path | None = Field(None, validation_alias=_aliases("MODELS_FILE"))
    input_reference_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        le=100 * 1024 * 1024,
        validation_alias=_aliases("INPUT_REFERENCE_MAX_BYTES"),
    )
    access_token_ttl_seconds: int = Field(
        900, ge=10, le=86_400, validation_alias=_aliases("ACCESS_TOKEN_TTL_SECONDS")
    )
    refresh_token_ttl_days: int = Field(
        30, ge=1, le=365, validation_alias=_aliases("REFRESH_TOKEN_TTL_DAYS")
    )
    refresh_reuse_grace_seconds: float = Field(
        10.0, ge=0, le=300, validation_alias=_aliases("REFRESH_REUSE_GRACE_SECONDS")
    )
    password_hash_memory_kib: int = Field(
        65_536, ge=1_024, le=1_048_576, validation_alias=_aliases("PASSWORD_HASH_MEMORY_KIB")
    )
    rate_limit_window_seconds: int = Field(
        900, ge=1, le=86_400, validation_alias=_aliases("RATE_LIMIT_WINDOW_SECONDS")
    )
    login_limit_per_ip: int = Field(30, ge=1, validation_alias=_aliases("LOGIN_LIMIT_PER_IP"))
    login_limit_per_account: int = Field(
        10, ge=1, validation_alias=_aliases("LOGIN_LIMIT_PER_ACCOUNT")
    )
    register_limit_per_ip: int = Field(10, ge=1, validation_alias=_aliases("REGISTER_LIMIT_PER_IP"))
    generate_limit_per_user: int = Field(
        60, ge=1, validation_alias=_aliases("GENERATE_LIMIT_PER_USER")
    )
    worker_concurrency: int = Field(2, ge=1, le=64, validation_alias=_aliases("WORKER_CONCURRENCY"))
    worker_lease_seconds: float = Field(
        30.0, ge=0.5, le=3_600, validation_alias=_aliases("WORKER_LEASE_SECONDS")
    )
    worker_idle_poll_ms: int = Field(
        500, ge=10, le=60_000, validation_alias=_aliases("WORKER_IDLE_POLL_MS")
    )
    worker_provider_poll_ms: int = Field(
        1_000, ge=10, le=60_000, validation_alias=_aliases("WORKER_PROVIDER_POLL_MS")
    )
    job_max_attempts: int = Field(5, ge=1, le=100, validation_alias=_aliases("JOB_MAX_ATTEMPTS"))
    job_retry_base_ms: int = Field(
        2_000, ge=1, le=3_600_000, validation_alias=_aliases("JOB_RETRY_BASE_MS")
    )
    job_retry_max_ms: int = Field(
        120_000, ge=1, le=86_400_000, validation_alias=_aliases("JOB_RETRY_MAX_MS")
    )
    # An upstream `Retry-After` is obeyed up to this many seconds (a huge one must not park a job).
    job_retry_after_max_seconds: float = Field(
        300.0, ge=0, le=86_400, validation_alias=_aliases("JOB_RETRY_AFTER_MAX_SECONDS")
    )
    # A video not final this long after it was created fails and is refunded.
    job_deadline_seconds: float = Field(
        10_800.0, ge=1, le=30 * 86_400, validation_alias=_aliases("JOB_DEADLINE_SECONDS")
    )
    sse_poll_interval_ms: int = Field(
        1_000, ge=10, le=60_000, validation_alias=_aliases("SSE_POLL_INTERVAL_MS")
    )
    sse_heartbeat_seconds: float = Field(
        15.0, ge=0.05, le=300, validation_alias=_aliases("SSE_HEARTBEAT_SECONDS")
    )

    # --- mail and password reset (see docs/configuration.md "Mail and password reset") ---
    smtp_url: str | None = Field(None, validation_alias=_aliases("SMTP_URL"), repr=False)
    smtp_ca_file: Path | None = Field(None, validation_alias=_aliases("SMTP_CA_FILE"))
    smtp_timeout_seconds: float = Field(
        10.0, gt=0, le=300, validation_alias=_aliases("SMTP_TIMEOUT_SECONDS")
    )
    mail_from: str = Field("Sora2 <no-reply@localhost>", validation_alias=_aliases("MAIL_FROM"))
    password_reset_ttl_minutes: int = Field(
        30, ge=1, le=1_440, validation_alias=_aliases("PASSWORD_RESET_TTL_MINUTES")
    )
    forgot_limit_per_email: int = Field(
        3, ge=1, validation_alias=_aliases("FORGOT_LIMIT_PER_EMAIL")
    )
    forgot_limit_per_ip: int = Field(10, ge=1, validation_alias=_aliases("FORGOT_LIMIT_PER_IP"))
    share_limit_per_ip: int = Field(600, ge=1, validation_alias=_aliases("SHARE_LIMIT_PER_IP"))

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
            raise ValueError(
                "must look like smtp://host:25, smtp+starttls://user:pass@host:587 or "
                "smtps://user:pass@host:465"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value.strip()

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        from email.utils import parseaddr

        _name, address = parseaddr(value)
        if "@" not in address or any(ch in value for ch in "\r\n"):
            raise ValueError(f"{value!r} must be an address such as 'Sora2 <no-reply@example.com>'")
        return value.strip()

    @field_validator("models_file", mode="before")
    @classmethod
    def _unset_when_blank(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("video_prices", mode="before")
    @classmethod
    def _price_table(cls, value: object) -> object:
        """`sora-2=1,sora-2-pro=3`: credits per second of video, by model."""
        if not isinstance(value, str):
            return value
        table: dict[str, object] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            model, sep, price = item.strip().partition("=")
            if not sep:
                raise ValueError(f"{item!r} must look like model=credits_per_second (sora-2=1)")
            table[model.strip()] = price.strip()
        return table

    @field_validator("video_prices")
    @classmethod
    def _prices_not_negative(cls, value: dict[str, int]) -> dict[str, int]:
        if any(price < 0 for price in value.values()):
            raise ValueError("prices cannot be negative")
        return value

    # --- storage (see docs/configuration.md "Storage" and docs/deployment.md) ---
    storage_url: str | None = Field(None, validation_alias=_aliases("STORAGE_URL"))

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        return check_storage_url(value) if value and value.strip() else None

    @property
    def resolved_storage_url(self) -> str:
        """`STORAGE_URL`, or the folder `DATA_DIR/media` as a file URL."""
        return self.storage_url or (self.data_dir / "media").resolve().as_uri()

    @property
    def runs_embedded_worker(self) -> bool:
        """`API_EMBEDDED_WORKER`, or by default: the api runs a worker itself in development."""
        if self.api_embedded_worker is None:
            return self.is_development
        return self.api_embedded_worker


def check_storage_url(value: str) -> str:
    """`file:///absolute/folder` or `s3://bucket[/prefix]`, or a ValueError saying so."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
        return value
    if parts.scheme == "s3" and parts.netloc and not parts.query:
        return value
    raise ValueError(
        f"{value!r} must be file:///absolute/folder or s3://bucket[/prefix] "
        "(S3 endpoint and keys come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY)"
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line per invalid variable, named as the user writes it in the environment."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"  {field.upper()}: {message}")
    return "Invalid settings:\n" + "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into a `SettingsError` a person can act on."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
