"""Access tokens: a token verified once is remembered, but never past its expiry."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from sora2.api.auth import security
from sora2.api.auth.security import AccessTokens

SECRET = "unit-secret-" + "x" * 40


def test_a_remembered_token_is_refused_once_it_has_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = AccessTokens(secret=SECRET, ttl_seconds=60)
    token = tokens.issue(user_id="u1", session_id="s1")
    claims = tokens.read(token)
    assert claims is not None
    assert (claims.user_id, claims.session_id) == ("u1", "s1")
    assert tokens.read(token) == claims  # the second read is answered from memory

    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert tokens.read(token) is None


def test_a_token_signed_otherwise_or_altered_is_refused_even_next_to_a_remembered_one() -> None:
    tokens = AccessTokens(secret=SECRET, ttl_seconds=60)
    token = tokens.issue(user_id="u1", session_id="s1")
    assert tokens.read(token) is not None

    forged = AccessTokens(secret="another-" + "y" * 40, ttl_seconds=60)
    assert tokens.read(forged.issue(user_id="u1", session_id="s1")) is None
    assert tokens.read(token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None


def test_past_the_memory_limit_the_oldest_token_is_forgotten_and_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(security, "VERIFIED_TOKENS_KEPT", 2)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    tokens = AccessTokens(secret=SECRET, ttl_seconds=60)
    first, second, third = (tokens.issue(user_id=f"u{i}", session_id="s") for i in range(3))
    for token in (first, second, third):
        assert tokens.read(token) is not None
    assert decoded == [first, second, third]

    assert tokens.read(third) is not None  # remembered
    assert tokens.read(first) is not None  # forgotten when the third came: checked again
    assert decoded == [first, second, third, first]
