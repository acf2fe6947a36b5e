"""Settings: DESIGN's variables, the earlier system's aliases, and messages a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from sora2.settings import SettingsError, load_settings
from sora2.web.proxy_setup import proxy_config

ENVIRONMENT = (
    "APP_ENV",
    "NODE_ENV",
    "API_PORT",
    "PORT",
    "API_URL",
    "NEXT_PUBLIC_API_URL",
    "JWT_SECRET",
    "OPENAI_API_KEYS",
    "OPENAI_API_KEY",
    "DATABASE_URL",
    "PROXY_TRUSTED_PROXIES",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_design() -> None:
    settings = load_settings()
    assert settings.app_env == "development"
    assert (settings.api_port, settings.web_port) == (3101, 3200)
    assert settings.api_url == "http://127.0.0.1:3101"
    assert settings.frontend_url == "http://localhost:3200"
    assert settings.proxy_max_attempts == 3
    assert settings.proxy_request_timeout_ms == 30_000
    assert settings.proxy_health_check_ttl_ms == 5_000
    assert settings.proxy_max_body_bytes == 52_428_800
    assert settings.video_provider == "local"
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_aliases_of_the_earlier_system_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_ENV", "test")
    monkeypatch.setenv("PORT", "4101")
    monkeypatch.setenv("NEXT_PUBLIC_API_URL", "http://127.0.0.1:4101/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-one")
    settings = load_settings()
    assert settings.app_env == "test"
    assert settings.api_port == 4101
    assert settings.api_url == "http://127.0.0.1:4101"
    assert settings.openai_api_keys == ["sk-one"]


def test_key_pool_and_trusted_proxies_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEYS", "sk-a, sk-b,,sk-c")
    monkeypatch.setenv("PROXY_TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/8")
    settings = load_settings()
    assert settings.openai_api_keys == ["sk-a", "sk-b", "sk-c"]
    assert settings.proxy_trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert "sk-a" not in repr(settings)


def test_postgres_urls_get_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://user@127.0.0.1:5432/test")
    assert load_settings().resolved_database_url == "postgresql+asyncpg://user@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("API_PORT", "70000", "API_PORT: Input should be less than or equal to 65535"),
        ("API_URL", "localhost:3101", "API_URL: 'localhost:3101' must be an absolute http(s) URL"),
        ("APP_ENV", "staging", "APP_ENV: Input should be 'development', 'test' or 'production'"),
        ("PROXY_TRUSTED_PROXIES", "not-an-ip", "is not an IP address or network"),
    ],
)
def test_invalid_values_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert expected in str(raised.value)


def test_production_refuses_a_missing_or_weak_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(SettingsError, match="JWT_SECRET must be set"):
        load_settings()
    monkeypatch.setenv("JWT_SECRET", "short")
    with pytest.raises(SettingsError, match="JWT_SECRET must be set"):
        load_settings()
    monkeypatch.setenv("JWT_SECRET", "k" * 48)
    assert load_settings().is_production


def test_development_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    first = settings.resolved_jwt_secret()
    assert len(first) >= 32
    assert load_settings(data_dir=tmp_path / "data").resolved_jwt_secret() == first


def test_api_urls_lists_every_api_and_defaults_to_api_url() -> None:
    several = load_settings(api_urls_list=" http://10.0.0.1:3101/ , http://10.0.0.2:3101")
    assert several.api_urls == ["http://10.0.0.1:3101", "http://10.0.0.2:3101"]
    assert load_settings(api_url="http://10.0.0.9:3101").api_urls == ["http://10.0.0.9:3101"]
    with pytest.raises(SettingsError, match="API_URLS"):
        load_settings(api_urls_list="http://10.0.0.1:3101,10.0.0.2")


def test_the_web_proxy_balances_as_proxy_balance_says() -> None:
    settings = load_settings(
        api_urls_list="http://10.0.0.1:3101,http://10.0.0.2:3101", proxy_balance="round_robin"
    )
    config = proxy_config(settings)
    assert config.backend_urls == ("http://10.0.0.1:3101", "http://10.0.0.2:3101")
    assert config.balance.strategy == "round_robin"
    assert proxy_config(load_settings()).api_urls == ()
