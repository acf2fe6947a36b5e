"""What of a request may be written to a log line: its query with only harmless values."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode


def redact_query(query: str, loggable: frozenset[str]) -> str:
    """The query string with every value replaced by `***` unless its name is in `loggable`
    (compared case-insensitively). An allowlist: a parameter nobody has thought about, a token
    or an e-mail address, is hidden by default."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(name, value if name.lower() in loggable else "***") for name, value in pairs], safe="*"
    )
