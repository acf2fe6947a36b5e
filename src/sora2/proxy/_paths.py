"""Which paths may be forwarded: only ones that stay under the backend's `/api/`.

The raw (still percent-encoded) path is what is forwarded, so the backend sees exactly what the
client sent; what is checked is every decoding of it, because a server that decodes once more
(`%252e%252e` → `%2e%2e` → `..`) must not be handed an escape either.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

_MAX_DECODINGS = 3
# Segments of unreserved and sub-delim characters only, no '%' and no dot-only segment: nothing
# to decode, nothing to escape with. Nearly every real path is this, and needs one match.
# A segment may not be a dot segment, nor one with parameters (`..;x`: Tomcat and Jetty take it
# for `..`).
_PLAIN = re.compile(r"(/(?!\.{1,2}(?:[/;]|$))[A-Za-z0-9_\-.~!$&'()*+,;=@]+)*/?")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePath(ValueError):
    """A path that would leave `/api/` or reach another host; `reason` says which rule it broke."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_decoded(path: str) -> None:
    if _CONTROL.search(path):
        raise UnsafePath("control characters")
    if "\\" in path:
        raise UnsafePath("a backslash")
    if "//" in path:
        raise UnsafePath("an empty segment ('//')")
    if _SCHEME.match(path.removeprefix("/")):
        raise UnsafePath("a URL scheme")
    if any(_is_dot_segment(segment) for segment in path.split("/")):
        raise UnsafePath("a '.' or '..' segment")


def _is_dot_segment(segment: str) -> bool:
    """`.` or `..`, also with path parameters (`..;x`) or spelt with look-alike dots (full-width
    U+FF0E, which some servers fold to ASCII after checking)."""
    bare = segment.split(";", 1)[0]
    if not bare.isascii():
        bare = unicodedata.normalize("NFKC", bare)
    return bare in (".", "..")


def checked_upstream_path(raw_path: str) -> str:
    """The raw path after the proxy prefix (empty or starting with '/'), unchanged, if no
    decoding of it escapes; otherwise `UnsafePath`."""
    if _PLAIN.fullmatch(raw_path):
        return raw_path
    if raw_path and not raw_path.startswith("/"):
        raise UnsafePath("no '/' after the proxy prefix")
    candidate = raw_path
    for _ in range(_MAX_DECODINGS):
        _check_decoded(candidate)
        try:
            decoded = unquote(candidate, errors="strict")
        except UnicodeDecodeError:
            raise UnsafePath("percent-encoding that is not UTF-8") from None
        if decoded == candidate:
            return raw_path
        candidate = decoded
    raise UnsafePath("too many levels of percent-encoding")
