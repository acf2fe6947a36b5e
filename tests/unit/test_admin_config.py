"""The admin console's view of the settings shows every one of them and no secret."""

from __future__ import annotations

from pathlib import Path

from sora2.api.admin.config import masked_settings
from sora2.settings import load_settings


def test_every_secret_is_masked_and_the_rest_is_shown(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        jwt_secret="jwt-" + "Zq9" * 16,
        database_url="postgresql://sora:Db-Pass-77@db.internal:5432/sora",
        smtp_url="smtps://mailer:Mail-Pass-88@mail.example:465",
        openai_api_keys=["sk-proj-AAAABBBBCCCCDDDD4321", "short"],
        video_provider="openai",
    )
    shown = masked_settings(settings)
    text = repr(shown)
    for secret in ("Zq9Zq9", "Db-Pass-77", "Mail-Pass-88", "AAAABBBB", "short"):
        assert secret not in text, secret
    assert shown["JWT_SECRET"] == "••••"
    assert shown["DATABASE_URL"] == "postgresql+asyncpg://sora:••••@db.internal:5432/sora"
    assert shown["SMTP_URL"] == "smtps://mailer:••••@mail.example:465"
    assert shown["OPENAI_API_KEYS"] == ["sk-…4321", "…"]
    assert shown["API_URL"] == "http://127.0.0.1:3101"
    assert shown["SIGNUP_CREDITS"] == 100
    assert shown["DATA_DIR"] == str(tmp_path)
    assert set(shown) >= {name.upper() for name in type(settings).model_fields}
