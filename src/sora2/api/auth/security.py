"""Password hashing (Argon2id), access tokens (JWT) and refresh tokens (random, stored hashed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import argon2
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from sora2.api.db.base import utcnow

ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a token kind, not a secret
JWT_ALGORITHM = "HS256"
# Verified access tokens remembered per process; past this many the oldest is forgotten.
VERIFIED_TOKENS_KEPT = 4096


PARALLELISM = 1


def decoy_hash(*, memory_kib: int) -> str:
    """An Argon2id hash of no password at all: our parameters with a random salt and digest.

    Checking a password against it costs exactly what checking a real hash does (the cost lies in
    the parameters, and the digest is compared only at the end), and building it costs nothing,
    where hashing a throwaway password took a third of a second of every api start.
    """
    parameters = f"m={memory_kib},t={argon2.DEFAULT_TIME_COST},p={PARALLELISM}"
    salt = _unpadded_base64(secrets.token_bytes(argon2.DEFAULT_RANDOM_SALT_LENGTH))
    digest = _unpadded_base64(secrets.token_bytes(argon2.DEFAULT_HASH_LENGTH))
    return f"$argon2id$v={argon2.low_level.ARGON2_VERSION}${parameters}${salt}${digest}"


def _unpadded_base64(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


class Passwords:
    """Argon2id hashing off the event loop, and a decoy hash so unknown emails cost the same."""

    def __init__(self, *, memory_kib: int) -> None:
        hasher = Argon2Hasher(memory_cost=memory_kib, parallelism=PARALLELISM)
        self._hasher = PasswordHash((hasher,))
        self._decoy = decoy_hash(memory_kib=memory_kib)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Checks `password`; with no hash (unknown account) checks a decoy and says no."""
        target = password_hash if password_hash is not None else self._decoy
        ok = await asyncio.to_thread(self._hasher.verify, password, target)
        return ok and password_hash is not None


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    session_id: str
    token_id: str


class AccessTokens:
    """Issues and checks access tokens.

    Checking a token with PyJWT costs about 90 µs of CPU, a twentieth of a whole read request,
    and a client sends the same token for its whole life (15 minutes by default). So each token
    that passed the full check is remembered with its claims and expiry, and a later request with
    the very same string is only checked against that expiry. Nothing about the token can change
    meanwhile (it is signed); whether its session was revoked is the database's answer, asked on
    every request all the same (`sora2.api.deps`).
    """

    def __init__(self, *, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._verified: dict[str, tuple[AccessClaims, int]] = {}

    def issue(self, *, user_id: str, session_id: str) -> str:
        now = utcnow()
        claims = {
            "sub": user_id,
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "typ": ACCESS_TOKEN_TYPE,
            "iat": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def read(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unexpired access token; None for anything else."""
        known = self._verified.get(token)
        if known is not None:
            claims, expires = known
            if time.time() < expires:  # PyJWT's rule too: expired once `exp` <= now
                return claims
            del self._verified[token]
            return None
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["sub", "sid", "jti", "exp"]},
            )
        except jwt.PyJWTError:
            return None
        if payload.get("typ") != ACCESS_TOKEN_TYPE:
            return None
        claims = AccessClaims(str(payload["sub"]), str(payload["sid"]), str(payload["jti"]))
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # dicts keep insertion order
        self._verified[token] = (claims, int(payload["exp"]))
        return claims


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are high-entropy random strings: a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def refresh_expiry(days: int) -> datetime:
    return utcnow() + timedelta(days=days)
