"""Our RFC 9110 `Range` parser (the api no longer borrows Starlette's private one)."""

from __future__ import annotations

import pytest

from sora2.api.byte_ranges import (
    MAX_RANGES,
    ByteRange,
    MalformedRange,
    UnsatisfiableRange,
    parse_range,
)

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 100)),
        ("bytes=500-", ByteRange(500, 1000)),
        ("bytes=-200", ByteRange(800, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),  # a suffix longer than the file: all of it
        ("bytes=990-5000", ByteRange(990, 1000)),  # clipped to the end
        ("BYTES = 0-0", ByteRange(0, 1)),  # the unit is case-insensitive
        ("bytes=0-9, 10-19", ByteRange(0, 20)),  # touching ranges coalesce
        ("bytes=50-60,0-55", ByteRange(0, 61)),  # overlapping, in any order
        ("bytes=0-9,,", ByteRange(0, 10)),  # empty list elements are allowed
        ("bytes=0-9,2000-", ByteRange(0, 10)),  # an unsatisfiable part is dropped
    ],
)
def test_satisfiable_ranges(header: str, expected: ByteRange) -> None:
    assert parse_range(header, SIZE) == expected


def test_disjoint_ranges_mean_the_whole_file() -> None:
    assert parse_range("bytes=0-9,100-109", SIZE) is None


def test_too_many_ranges_are_ignored() -> None:
    header = "bytes=" + ",".join(f"{n}-{n}" for n in range(0, 2 * MAX_RANGES + 2, 2))
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    "header",
    [
        "lines=1-2",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=abc",
        "bytes=5-1",
        "bytes=1-2-3",
        "bytes=--5",
        "bytes=+1-2",
        "bytes=\u0661-\u0662",  # digits, but not ASCII ones
        "bytes=99999999999999999999-",  # longer than any size
    ],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(MalformedRange):
        parse_range(header, SIZE)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_ranges_outside_the_file(header: str) -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, SIZE)


def test_an_empty_file_satisfies_no_range() -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range("bytes=-5", 0)


def test_content_range_names_the_last_byte_inclusively() -> None:
    assert ByteRange(10, 20).content_range(SIZE) == "bytes 10-19/1000"
