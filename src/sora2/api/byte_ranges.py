"""`Range: bytes=…` (RFC 9110 §14.1.2 and §14.2), parsed for a representation of a known size.

One range, or several that overlap or touch, is answered with 206 and that range. Several
disjoint ranges get the whole file (200): RFC 9110 lets a server ignore `Range`, and no player
asks for more than one. A header that does not parse is a 400; a range entirely past the end a 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGITS = re.compile(r"[0-9]{1,19}")
# More parts than any client needs: past this the header is ignored rather than worked through.
MAX_RANGES = 64


class MalformedRange(ValueError):
    """The header is not `bytes=` followed by ranges such as `0-99`, `100-` or `-500`."""


class UnsatisfiableRange(ValueError):
    """No requested range overlaps the representation."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def _number(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise MalformedRange(f"{text!r} is not a byte position")
    return int(text)


def _one(spec: str, size: int) -> ByteRange | None:
    """One `first-last`, `first-` or `-suffix`; None when it lies outside the representation."""
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        raise MalformedRange(f"{spec!r} has no '-'")
    if not first_text:  # the last N bytes
        suffix = _number(last_text)
        return ByteRange(max(0, size - suffix), size) if suffix and size else None
    first = _number(first_text)
    last = _number(last_text) if last_text else None
    if last is not None and last < first:
        raise MalformedRange(f"{spec!r} ends before it starts")
    if first >= size:
        return None
    return ByteRange(first, size if last is None else min(size, last + 1))


def parse_range(header: str, size: int) -> ByteRange | None:
    """The range to send for `header`, or None to send the whole representation."""
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        raise MalformedRange("only byte ranges are served")
    parts = [part.strip() for part in specs.split(",") if part.strip()]
    if not parts:
        raise MalformedRange("no range given")
    if len(parts) > MAX_RANGES:
        return None
    wanted = sorted(
        (found for found in (_one(part, size) for part in parts) if found is not None),
        key=lambda r: r.start,
    )
    if not wanted:
        raise UnsatisfiableRange(f"no range lies within the {size} bytes")
    merged = wanted[0]
    for following in wanted[1:]:
        if following.start > merged.end:
            return None  # disjoint ranges: the whole file
        merged = ByteRange(merged.start, max(merged.end, following.end))
    return merged
