"""The plain development framing: u32 big-endian length + one strict CBOR map, no crypto.

It implements `MessageStream` so the server shell and its tests can run without keys.
It is never offered on a network port by the `allq` command: the encrypted protocol of
`allq.wire.stream` is. A final message is followed by EOF; EOF at a frame boundary is a
clean close, EOF inside a frame is a failure.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import trio

from allq.wire import codec
from allq.wire.transport import Message, RemoteProtocolError

_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1_048_576 + 65_536


class PlainMessageStream:
    """`MessageStream` over any `trio.abc.Stream` with length-prefixed CBOR frames.

    Resource handling: it owns `stream` and closes it in `aclose()`.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._write_lock = trio.StrictFIFOLock()
        self._closed_by_peer = False

    async def _fill(self, size: int) -> bool:
        """Read until the buffer holds `size` bytes; False on EOF."""
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(65_536, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def receive(self) -> Message:
        if self._closed_by_peer:
            raise trio.EndOfChannel
        if not await self._fill(_LENGTH.size):
            if self._buffer:
                raise trio.BrokenResourceError("EOF inside a frame length")
            self._closed_by_peer = True
            raise trio.EndOfChannel
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length < 1 or length > self._max_frame:
            raise RemoteProtocolError(f"frame length {length} outside 1 … {self._max_frame}")
        if not await self._fill(_LENGTH.size + length):
            raise trio.BrokenResourceError("EOF inside a frame")
        payload = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
        del self._buffer[: _LENGTH.size + length]
        return codec.decode(payload)

    async def send(self, message: Mapping[str, object], *, final: bool = False) -> None:
        payload = codec.encode(message)
        async with self._write_lock:
            await self._stream.send_all(_LENGTH.pack(len(payload)) + payload)
            if final and isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
