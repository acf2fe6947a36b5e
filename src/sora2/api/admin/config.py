"""The running configuration for the admin console, with every secret masked.

A setting is secret when its name says so (secret, key, password, token): shown as `••••`, API keys
as `sk-…abcd` (their last four characters), and any URL has its password replaced, whatever the
setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sora2.api.providers.keys import mask_key
from sora2.settings import Settings

_SECRET_NAME = re.compile(r"secret|key|password|token|credential", re.IGNORECASE)
MASK = "••••"


def mask_secret(value: str) -> str:
    """Only whether it is set: no part of a signing secret or password is shown."""
    return MASK if value else ""


def mask_url(value: str) -> str:
    """The URL with any password replaced by the mask (the user name stays, to be recognised)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _shown(name: str, value: Any, *, secret: bool) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_shown(name, item, secret=secret) for item in value]
    if isinstance(value, dict):
        return {key: _shown(name, item, secret=secret) for key, item in value.items()}
    text = str(value)
    if name == "openai_api_keys":
        return mask_key(text)
    if _is_url(text):
        # A URL may carry a password, and a token in its query: both go.
        return mask_url(text.split("?", 1)[0]) if secret else mask_url(text)
    return mask_secret(text) if secret else text


def _is_url(text: str) -> bool:
    return "://" in text and bool(urlsplit(text).netloc)


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its environment variable's name, secrets masked. A setting is secret
    when its name says so, or when it is kept out of the settings' repr (`repr=False`)."""
    shown: dict[str, Any] = {}
    fields = type(settings).model_fields
    for name in sorted(fields):
        secret = bool(_SECRET_NAME.search(name)) or not fields[name].repr
        shown[name.upper()] = _shown(name, getattr(settings, name), secret=secret)
    shown["DATABASE_URL"] = mask_url(settings.resolved_database_url)
    return shown
