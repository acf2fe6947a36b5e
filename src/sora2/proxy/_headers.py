"""Header rules of a well-behaved HTTP intermediary (RFC 9110 §7.6): drop, add, rewrite."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from urllib.parse import urlsplit

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
_FORWARDED_PROTOS = frozenset({"http", "https"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


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


def forwarded_proto(
    incoming: CIMultiDictProxy[str], *, peer: str | None, scheme: str, trusted: tuple[Network, ...]
) -> str:
    """The scheme the client used: a trusted proxy's `X-Forwarded-Proto` when it is http or
    https (anything else is ignored), else the scheme of the connection to us."""
    if trusted and "x-forwarded-proto" in incoming and is_trusted(peer, trusted):
        claimed = incoming["x-forwarded-proto"].strip().lower()
        if claimed in _FORWARDED_PROTOS:
            return claimed
    return scheme


def _forwarded_node(address: str) -> str:
    """An RFC 7239 node: IPv6 addresses bracketed and quoted."""
    return f'"[{address}]"' if ":" in address else address or "unknown"


_TOKEN = re.compile(r"[A-Za-z0-9.\-_~!$&'*+^`|]+")


def _forwarded_host(host: str) -> str:
    """A quoted-string when the host is not a plain token (a port's ':' is not one)."""
    return host if _TOKEN.fullmatch(host) else '"' + host + '"'


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
    """End-to-end request headers plus `X-Forwarded-*`, `Forwarded`, `Via` and `X-Request-ID`
    for the backend. What earlier proxies said is kept (every header line, joined) only when
    they are trusted; from anyone else it is replaced by what this proxy saw itself."""
    dropped = _REQUEST_DROPPED
    named = _connection_tokens(incoming)
    if named:
        dropped = dropped | named
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if name.lower() not in dropped
    )
    peer_address = peer or ""
    proto = scheme
    prior_for = prior_forwarded = ""
    if trusted and is_trusted(peer, trusted):
        prior_for = ", ".join(incoming.getall("x-forwarded-for", ()))
        prior_forwarded = ", ".join(incoming.getall("forwarded", ()))
        proto = forwarded_proto(incoming, peer=peer, scheme=scheme, trusted=trusted)
        host = incoming.get("x-forwarded-host", host)
    headers["X-Forwarded-For"] = f"{prior_for}, {peer_address}" if prior_for else peer_address
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = host
    element = f"for={_forwarded_node(peer_address)};host={_forwarded_host(host)};proto={proto}"
    headers["Forwarded"] = f"{prior_forwarded}, {element}" if prior_forwarded else element
    prior_via = incoming.get("via")
    headers["Via"] = f"{prior_via}, {via}" if prior_via else via
    headers["X-Request-ID"] = request_id
    return headers


@functools.lru_cache(maxsize=8)
def _cookie_path_pattern(upstream_prefix: str) -> re.Pattern[str]:
    # The attribute's name is case-insensitive (RFC 6265 §5.2); the path itself is not.
    return re.compile(r"(;\s*(?i:path)\s*=\s*)" + re.escape(upstream_prefix) + r"(?=/|;|\s|$)")


def rewrite_cookie_path(set_cookie: str, upstream_prefix: str, public_prefix: str) -> str:
    """`Path=/api/...` → `Path=/api/proxy/...`, so the browser sends the cookie back through us."""
    pattern = _cookie_path_pattern(upstream_prefix)
    return pattern.sub(lambda match: match.group(1) + public_prefix, set_cookie)


def _same_backend(netloc: str, scheme: str, api: tuple[str, str, int | None]) -> bool:
    """Whether `scheme://netloc` names the backend; loopback names are one another's aliases."""
    api_scheme, api_host, api_port = api
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if port != (api_port or (443 if api_scheme == "https" else 80)):
        return False
    return host == api_host or (host in _LOOPBACK_NAMES and api_host in _LOOPBACK_NAMES)


def rewrite_location(
    location: str, *, api_url: str, upstream_prefix: str, public_prefix: str
) -> str:
    """A redirect into the backend's `/api/` becomes one into the proxy's prefix (like nginx's
    `proxy_redirect default`); redirects anywhere else pass unchanged. The backend may name
    itself in any form: `/api/…`, `http://127.0.0.1:3101/api/…`, `HTTP://LOCALHOST:3101/api/…`,
    `//127.0.0.1:3101/api/…`; the path prefix is matched case-sensitively, as paths are."""
    path = location
    if not location.startswith("/") or location.startswith("//"):
        scheme, separator, rest = location.partition("//")
        if not separator or (scheme and scheme.lower() not in ("http:", "https:")):
            return location
        netloc, slash, tail = rest.partition("/")
        api = urlsplit(api_url)
        api_host = (api.hostname or "").lower()
        effective = scheme[:-1].lower() if scheme else (api.scheme or "http")
        if not _same_backend(netloc, effective, (api.scheme, api_host, api.port)):
            return location
        path = slash + tail
    if path == upstream_prefix or path.startswith((upstream_prefix + "/", upstream_prefix + "?")):
        return public_prefix + path[len(upstream_prefix) :]
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
            value = rewrite_cookie_path(value, upstream_prefix, public_prefix)
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
