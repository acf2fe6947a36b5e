"""Header rules of a well-behaved HTTP intermediary (RFC 9110 §7.6): drop, add, rewrite."""

from __future__ import annotations

import ipaddress
import os
import re

from multidict import CIMultiDict, CIMultiDictProxy

from sora2.proxy._config import Network
from sora2.proxy._relay import has_raw_bytes

# What the proxy's own responses say in `Server`: no product versions to look up exploits for.
SERVER = "sora2"

# Never forwarded in either direction (RFC 9110 §7.6.1), plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROPPED = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
}
_RESPONSE_DROPPED = HOP_BY_HOP | {
    "x-request-id",
    # CORS is decided by the proxy alone, so a backend can never widen it to a foreign origin.
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_COOKIE_API_PATH = re.compile(r"(;\s*path\s*=\s*)/api(?=/|;|\s|$)", re.IGNORECASE)


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("connection", ()):
        tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


class _RandomIds:
    """128-bit random ids in hex, as `secrets.token_hex(16)` gives, from the same source
    (`os.urandom`) drawn 256 ids at a time: a getrandom system call per request was a fifth of
    the proxy's system calls beyond the bare pass-through's."""

    _ID_BYTES = 16
    _POOL_BYTES = 256 * _ID_BYTES

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0
        # A forked child must not hand out the ids its parent already drew.
        os.register_at_fork(after_in_child=self._discard)

    def _discard(self) -> None:
        self._pool = b""
        self._next = 0

    def new(self) -> str:
        start = self._next
        if start >= len(self._pool):
            self._pool = os.urandom(self._POOL_BYTES)
            start = 0
        self._next = start + self._ID_BYTES
        return self._pool[start : self._next].hex()


_random_ids = _RandomIds()


def request_id_from(headers: CIMultiDictProxy[str]) -> str:
    """The caller's `X-Request-ID` when it is sane (short, no odd characters), else a fresh one."""
    supplied = headers.get("x-request-id")
    if supplied is not None and _REQUEST_ID.match(supplied):
        return supplied
    return _random_ids.new()


def is_trusted(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    if not peer or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str,
    request_id: str,
    trusted: tuple[Network, ...],
    via: str,
) -> CIMultiDict[str]:
    """End-to-end request headers plus `X-Forwarded-*`, `Via` and `X-Request-ID` for the backend."""
    dropped = _REQUEST_DROPPED
    named = _connection_tokens(incoming)
    if named:
        dropped = dropped | named
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if name.lower() not in dropped
    )
    peer_address = peer or ""
    if is_trusted(peer, trusted):
        prior = incoming.get("x-forwarded-for")
        headers["X-Forwarded-For"] = f"{prior}, {peer_address}" if prior else peer_address
        headers["X-Forwarded-Proto"] = incoming.get("x-forwarded-proto", scheme)
        headers["X-Forwarded-Host"] = incoming.get("x-forwarded-host", host)
    else:
        headers["X-Forwarded-For"] = peer_address
        headers["X-Forwarded-Proto"] = scheme
        headers["X-Forwarded-Host"] = host
    prior_via = incoming.get("via")
    headers["Via"] = f"{prior_via}, {via}" if prior_via else via
    headers["X-Request-ID"] = request_id
    return headers


def rewrite_cookie_path(set_cookie: str, public_prefix: str) -> str:
    """`Path=/api/...` → `Path=/api/proxy/...`, so the browser sends the cookie back through us."""
    return _COOKIE_API_PATH.sub(lambda match: match.group(1) + public_prefix, set_cookie)


def rewrite_location(
    location: str, *, api_url: str, upstream_prefix: str, public_prefix: str
) -> str:
    """A redirect into the backend's `/api/` becomes one into the proxy's prefix (like nginx's
    `proxy_redirect default`); redirects anywhere else pass unchanged."""
    for base in (api_url + upstream_prefix, upstream_prefix):
        if location == base or location.startswith(base + "/") or location.startswith(base + "?"):
            return public_prefix + location[len(base) :]
    return location


def downstream_response_headers(
    upstream: CIMultiDictProxy[str],
    *,
    request_id: str,
    via: str,
    api_url: str,
    upstream_prefix: str,
    public_prefix: str,
) -> tuple[CIMultiDict[str], bool]:
    """The backend's end-to-end response headers, with cookie paths and redirects made to work;
    and whether any of them holds bytes that are not UTF-8 (see _relay.py)."""
    dropped = _RESPONSE_DROPPED
    named = _connection_tokens(upstream)
    if named:
        dropped = dropped | named
    headers: CIMultiDict[str] = CIMultiDict()
    raw_bytes = False
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered in dropped:
            continue
        if not value.isascii():
            raw_bytes = raw_bytes or has_raw_bytes(value)
        if lowered == "set-cookie":
            value = rewrite_cookie_path(value, public_prefix)
        elif lowered == "location":
            value = rewrite_location(
                value, api_url=api_url, upstream_prefix=upstream_prefix, public_prefix=public_prefix
            )
        headers.add(name, value)
    prior_via = upstream.get("via")
    headers["Via"] = f"{prior_via}, {via}" if prior_via else via
    headers["X-Request-ID"] = request_id
    if "server" not in headers:
        headers["Server"] = SERVER  # not aiohttp's, which names its version and Python's
    return headers, raw_bytes
