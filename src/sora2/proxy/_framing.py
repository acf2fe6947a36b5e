"""Where a response body ends, read as its bytes arrive, without decoding them (RFC 9112 §6-7).

The event-stream relay (`_event_stream.py`) passes a chunked body on exactly as it came, framing
included, because the client's response is chunked too: nothing is decoded, copied into new
chunks or kept per stream but a few integers. It only has to know where the last chunk starts
(that one, and any trailer, is left for aiohttp's own end of the response) and when the body is
over. A body with a Content-Length ends after that many bytes; one with neither ends with its
connection.
"""

from __future__ import annotations

import enum

# aiohttp's limit on a line of the head; a chunk-size line is held to it too.
MAX_LINE_BYTES = 8190


class InvalidFraming(ValueError):
    """Bytes that are not a chunked body: the response cannot be passed on any further."""


class _State(enum.Enum):
    SIZE = 1  # reading a chunk-size line
    DATA = 2  # inside a chunk's data (and its closing CRLF)
    TRAILER = 3  # after the last chunk: trailer lines up to an empty one
    LENGTH = 4  # a body of known length
    UNTIL_CLOSE = 5  # a body that ends with the connection
    DONE = 6
    INVALID = 7  # not a chunked body from some point on: nothing more is passed


class BodyFraming:
    """Feed it each packet of the body; it says which bytes to pass on and when the body ended.
    `payload` counts the body's own bytes (chunk data, not framing), as a client would."""

    __slots__ = ("_left", "_line", "_state", "chunked", "invalid", "payload")

    def __init__(self, *, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.invalid = ""  # why the body stopped being a chunked body, once it did
        self._line = b""  # a chunk-size line cut by the end of a packet, held back
        self._left = 0
        self.payload = 0
        if chunked:
            self._state = _State.SIZE
        elif length is not None:
            self._left = length
            self._state = _State.LENGTH if length else _State.DONE
        else:
            self._state = _State.UNTIL_CLOSE

    @property
    def ends_with_connection(self) -> bool:
        return self._state is _State.UNTIL_CLOSE

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> bytes:
        """The bytes of `data` to pass on: all of them, except the last chunk and what follows
        it, and a chunk-size line not yet complete (passed on with the next packet). Where the
        bytes stop being a chunked body, what came before is still passed on and `invalid`
        says why."""
        state = self._state
        if state is _State.UNTIL_CLOSE:
            self.payload += len(data)
            return data
        if state is _State.LENGTH:
            piece = data[: self._left]
            self._left -= len(piece)
            self.payload += len(piece)
            if not self._left:
                self._state = _State.DONE
            return piece
        if state is _State.DONE or state is _State.INVALID:
            return b""
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> bytes:
        passed: list[bytes] = []
        try:
            self._frame(data, passed)
        except InvalidFraming as error:
            self.invalid = str(error)
            self._state = _State.INVALID
        if len(passed) == 1:
            return passed[0]
        return b"".join(passed)

    def _frame(self, data: bytes, passed: list[bytes]) -> None:
        """Appends to `passed` the bytes of `data` to pass on (see `feed`)."""
        start = 0  # where the bytes of `data` still to pass on begin
        position = 0
        end = len(data)
        while position < end and self._state is not _State.DONE:
            if self._state is _State.DATA:
                taken = min(self._left, end - position)
                position += taken
                self._left -= taken
                if not self._left:
                    self._state = _State.SIZE
            elif self._state is _State.SIZE:
                newline = data.find(b"\n", position)
                if newline < 0:
                    passed.append(data[start:position])
                    start = end
                    self._hold(data[position:])
                    break
                line = self._line + data[position : newline + 1]
                try:
                    size = _chunk_size(line)
                except InvalidFraming:
                    passed.append(data[start:position])
                    raise
                if size:
                    if self._line:  # the held-back start of this line goes first
                        passed.append(data[start:position])
                        passed.append(self._line)
                        start = position
                    self._line = b""
                    self.payload += size
                    self._left = size + 2  # the data and its CRLF
                    self._state = _State.DATA
                    position = newline + 1
                else:
                    self._line = b""
                    passed.append(data[start:position])
                    start = end  # the last chunk and anything after it are not passed on
                    position = newline + 1
                    self._state = _State.TRAILER
            else:  # TRAILER: nothing of it is passed on
                start = end
                newline = data.find(b"\n", position)
                if newline < 0:
                    self._hold(data[position:])
                    break
                line = self._line + data[position:newline]
                self._line = b""
                position = newline + 1
                if not line.rstrip(b"\r"):
                    self._state = _State.DONE
        if start < end:
            passed.append(data[start:])

    def _hold(self, partial_line: bytes) -> None:
        self._line += partial_line
        if len(self._line) > MAX_LINE_BYTES:
            raise InvalidFraming("a chunk-size or trailer line over 8190 bytes")


def _chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (`1a;ext=x\\r\\n` → 26)."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(_HEX_DIGITS):
        raise InvalidFraming(f"not a chunk size: {line[:32]!r}")
    return int(digits, 16)


_HEX_DIGITS = b"0123456789abcdefABCDEF"
