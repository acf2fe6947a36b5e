"""`BodyFraming`: which bytes of a response body the event-stream relay passes on, packet by
packet, and where the body ends, however the packets are cut."""

from __future__ import annotations

import pytest

from sora2.proxy._framing import BodyFraming

EVENT = b"data: one\n\n"
CHUNKED = b"b\r\n" + EVENT + b"\r\n" + b"4;ext=1\r\nabcd\r\n" + b"0\r\nTrailer: x\r\n\r\n"
# What goes on: every chunk as it came, not the last one (aiohttp ends the response itself).
PASSED = CHUNKED[: CHUNKED.index(b"0\r\n")]


def fed(framing: BodyFraming, packets: list[bytes]) -> tuple[bytes, list[bool]]:
    passed, ended = b"", []
    for packet in packets:
        passed += framing.feed(packet)
        ended.append(framing.done)
    return passed, ended


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_a_chunked_body_cut_anywhere_passes_the_same_bytes_and_ends_once(cut: int) -> None:
    framing = BodyFraming(chunked=True, length=None)
    passed, ended = fed(framing, [CHUNKED[:cut], CHUNKED[cut:]])
    assert passed == PASSED
    assert ended == [False, True]
    assert framing.payload == len(EVENT) + 4


def test_a_chunked_body_byte_by_byte() -> None:
    framing = BodyFraming(chunked=True, length=None)
    passed, ended = fed(framing, [bytes([byte]) for byte in CHUNKED])
    assert passed == PASSED
    assert ended.index(True) == len(CHUNKED) - 1


def test_a_whole_chunk_in_one_packet_is_passed_on_as_the_same_object() -> None:
    framing = BodyFraming(chunked=True, length=None)
    packet = b"b\r\n" + EVENT + b"\r\n"
    assert framing.feed(packet) is packet
    assert not framing.done


def test_bytes_after_the_end_are_not_passed_on() -> None:
    framing = BodyFraming(chunked=True, length=None)
    assert framing.feed(b"0\r\n\r\nHTTP/1.1 200 OK\r\n") == b""
    assert framing.done
    assert framing.feed(b"more") == b""


@pytest.mark.parametrize(
    "size_line", [b"zz\r\n", b"0x1a\r\n", b"\r\n", b"1_0\r\n", b"-1\r\n", b"1" * 17 + b"\r\n"]
)
def test_a_chunk_size_that_is_not_one_ends_the_body_after_what_came_before(
    size_line: bytes,
) -> None:
    framing = BodyFraming(chunked=True, length=None)
    good = b"3\r\nabc\r\n"
    assert framing.feed(good + size_line + b"more\r\n") == good
    assert "not a chunk size" in framing.invalid
    assert framing.feed(b"3\r\nabc\r\n") == b""


def test_an_endless_chunk_size_line_is_refused() -> None:
    framing = BodyFraming(chunked=True, length=None)
    for _ in range(8):
        framing.feed(b"1" * 1000)  # 8,000 bytes of a size line: still within the limit
    assert not framing.invalid
    framing.feed(b"1" * 1000)
    assert "over 8190 bytes" in framing.invalid


def test_a_chunked_body_stays_chunked_once_complete() -> None:
    """The relay may start after the whole body came: it must still see it was chunked (it
    was framed a second time, once)."""
    framing = BodyFraming(chunked=True, length=None)
    framing.feed(b"3\r\nabc\r\n0\r\n\r\n")
    assert framing.done
    assert framing.chunked


def test_a_sized_body_ends_after_its_length() -> None:
    framing = BodyFraming(chunked=False, length=6)
    assert fed(framing, [b"abc", b"defXYZ"]) == (b"abcdef", [False, True])
    assert framing.payload == 6


def test_an_empty_sized_body_is_over_at_once() -> None:
    assert BodyFraming(chunked=False, length=0).done


def test_a_body_without_framing_runs_until_the_connection_ends() -> None:
    framing = BodyFraming(chunked=False, length=None)
    assert framing.ends_with_connection
    assert fed(framing, [b"abc", b"def"]) == (b"abcdef", [False, False])
