"""A pool of upstream API keys: round-robin, rest on 429, disable on 401/403.

Keys are secrets: they live only in `_KeyState.secret`; everything that leaves the pool (health,
logs, error messages) names a key by its masked label (`sk-…abcd`) and its position.
The pool is driven from one event loop and never awaits, so it needs no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sora2.api.providers.base import ErrorKind, ProviderError

logger = logging.getLogger(__name__)

# A 429 without Retry-After rests the key 1 s, then 2 s, 4 s… up to a minute, until it succeeds.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# A key out of quota (429 `insufficient_quota`) will not recover in seconds: rest it longer.
QUOTA_REST_SECONDS = 300.0
# Keys shorter than this would give too much away if their end were shown.
_MIN_LENGTH_TO_SHOW_TAIL = 16


def mask_key(secret: str) -> str:
    """`sk-…abcd`: enough to tell keys apart, never enough to use one."""
    prefix = "sk-" if secret.startswith("sk-") else ""
    tail = secret[-4:] if len(secret) >= _MIN_LENGTH_TO_SHOW_TAIL else ""
    return f"{prefix}…{tail}"


@dataclass(frozen=True, slots=True)
class KeyLease:
    """One key handed out for one call; report the outcome back to the pool with it."""

    index: int
    label: str
    secret: str

    def __repr__(self) -> str:  # the secret must never reach a log through a repr
        return f"KeyLease(index={self.index}, label={self.label!r})"


@dataclass(slots=True)
class _KeyState:
    secret: str
    label: str
    resting_until: float = 0.0
    backoff_seconds: float = 0.0
    disabled_reason: str | None = None
    successes: int = 0
    rate_limits: int = 0

    def is_usable(self, now: float) -> bool:
        return self.disabled_reason is None and self.resting_until <= now


class KeyPool:
    """Hands out usable keys in turn and remembers which ones rest or were refused."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        variable: str = "OPENAI_API_KEYS",
        max_rest_seconds: float = QUOTA_REST_SECONDS,
    ):
        unique = list(dict.fromkeys(secret.strip() for secret in secrets if secret.strip()))
        if not unique:
            raise ValueError(f"the key pool needs at least one API key (set {variable})")
        self.variable = variable  # where the keys come from, for the messages that name it
        self._keys = [
            _KeyState(secret, f"#{n + 1} {mask_key(secret)}") for n, secret in enumerate(unique)
        ]
        self._clock = clock
        self._next = 0
        # A `Retry-After` is obeyed up to this (JOB_RETRY_AFTER_MAX_SECONDS): `1e11` must not
        # rest the key for ever, refusing every start, poll and upstream stop of this process.
        self.max_rest_seconds = max_rest_seconds

    def __len__(self) -> int:
        return len(self._keys)

    def acquire(self) -> KeyLease:
        """The next usable key after the last one handed out.

        Raises TRANSIENT (with `retry_after` = time until the first key wakes) when every usable
        key rests, so jobs wait rather than fail; FINAL when every key has been refused.
        """
        now = self._clock()
        for step in range(len(self._keys)):
            index = (self._next + step) % len(self._keys)
            key = self._keys[index]
            if key.is_usable(now):
                self._next = index + 1
                return KeyLease(index, key.label, key.secret)
        raise self.unavailable()

    def unavailable(self) -> ProviderError:
        """Why no key is usable: TRANSIENT while some only rest, FINAL once all are refused."""
        now = self._clock()
        wake_times = [key.resting_until for key in self._keys if key.disabled_reason is None]
        if not wake_times:
            return ProviderError(
                ErrorKind.FINAL,
                "no_usable_key",
                f"all {len(self._keys)} API keys were refused by the provider (401/403); "
                f"replace them in {self.variable} and restart",
            )
        wait = max(min(wake_times) - now, 0.0)
        return ProviderError(
            ErrorKind.RATE_LIMITED,
            "all_keys_resting",
            f"every API key is rate limited; the first one is usable again in {wait:.1f}s",
            retry_after=wait,
        )

    def succeeded(self, lease: KeyLease) -> None:
        key = self._keys[lease.index]
        key.successes += 1
        key.backoff_seconds = 0.0

    def rate_limited(
        self, lease: KeyLease, *, retry_after: float | None, out_of_quota: bool = False
    ) -> float:
        """Rest the key for the provider's `Retry-After`, else a doubling backoff; returns it."""
        key = self._keys[lease.index]
        key.rate_limits += 1
        now = self._clock()
        # Calls in flight together on one key all see the same 429: that is one refusal,
        # so only the first report of a burst doubles the backoff.
        if key.resting_until <= now:
            key.backoff_seconds = min(
                max(key.backoff_seconds * 2, FIRST_BACKOFF_SECONDS), MAX_BACKOFF_SECONDS
            )
        if retry_after is not None:
            rest = retry_after
        elif out_of_quota:
            rest = QUOTA_REST_SECONDS
        else:
            rest = key.backoff_seconds
        rest = min(rest, self.max_rest_seconds)
        key.resting_until = max(key.resting_until, now + rest)
        logger.warning("API key %s rate limited: resting %.1fs", key.label, rest)
        return rest

    def refused(self, lease: KeyLease, *, status: int, code: str | None) -> None:
        """Take the key out of rotation until restart: the provider will not accept it."""
        key = self._keys[lease.index]
        # Only our own words: the provider's message may quote part of the key back.
        key.disabled_reason = f"{status} {code or 'refused'}"
        logger.error(
            "API key %s refused by the provider (%s): disabled; replace it in %s",
            key.label,
            key.disabled_reason,
            self.variable,
        )

    def health(self) -> dict[str, Any]:
        """Pool state for `/api/health`: masked labels, never a key."""
        now = self._clock()
        items = [self._describe(key, now) for key in self._keys]
        return {
            "total": len(items),
            "usable": sum(1 for item in items if item["state"] == "ok"),
            "resting": sum(1 for item in items if item["state"] == "resting"),
            "disabled": sum(1 for item in items if item["state"] == "disabled"),
            "keys": items,
        }

    @staticmethod
    def _describe(key: _KeyState, now: float) -> dict[str, Any]:
        item: dict[str, Any] = {"key": key.label, "successes": key.successes}
        item["rateLimits"] = key.rate_limits
        if key.disabled_reason is not None:
            item.update(state="disabled", reason=key.disabled_reason)
        elif key.resting_until > now:
            item.update(state="resting", restingForSeconds=round(key.resting_until - now, 1))
        else:
            item["state"] = "ok"
        return item
