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
from allq.wire.writer import FrameWriter, WriterBacked

_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1_048_576 + 65_536


class PlainMessageStream(WriterBacked):
    """`MessageStream` over any `trio.abc.Stream` with length-prefixed CBOR frames.

    Resource handling: it owns `stream` and closes it in `aclose()`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        write_timeout: float = 30.0,
    ) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._writer = FrameWriter(stream, write_timeout)
        self._closed_by_peer = False

    async def _fill(self, size: int) -> bool:
        """Read until the buffer holds `size` bytes; False on EOF."""
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(65_536, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def _buffered_frame(self) -> Message | None:
        """The next complete frame in the buffer, decoded; None if there is none."""
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length < 1 or length > self._max_frame:
            raise RemoteProtocolError(f"frame length {length} outside 1 … {self._max_frame}")
        if len(self._buffer) < _LENGTH.size + length:
            return None
        payload = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
        del self._buffer[: _LENGTH.size + length]
        return codec.decode(payload)

    async def receive(self) -> Message:
        return (await self.receive_batch(1))[0]

    async def receive_batch(self, limit: int) -> list[Message]:
        """Every complete buffered frame (at most `limit`, at least one); reads if none."""
        if self._closed_by_peer:
            raise trio.EndOfChannel
        out: list[Message] = []
        while len(out) < max(limit, 1):
            try:
                message = self._buffered_frame()
            except RemoteProtocolError:
                if out:
                    break  # raised again by the next call
                raise
            if message is not None:
                out.append(message)
                continue
            if out:
                break
            need = _LENGTH.size
            if len(self._buffer) >= _LENGTH.size:
                need += _LENGTH.unpack_from(self._buffer)[0]
            if not await self._fill(need):
                if not self._buffer:
                    self._closed_by_peer = True
                    raise trio.EndOfChannel
                if len(self._buffer) < _LENGTH.size:
                    raise trio.BrokenResourceError("EOF inside a frame length")
                raise trio.BrokenResourceError("EOF inside a frame")
        return out

    def send_nowait(self, message: Mapping[str, object], *, final: bool = False) -> None:
        """Encode and queue one message (`final` needs `send`, which also sends EOF)."""
        if final:
            raise ValueError("a final message goes through send()")
        if self._writer.broken is not None:
            raise trio.BrokenResourceError(self._writer.broken)
        payload = codec.encode(message)
        self._writer.queue(_LENGTH.pack(len(payload)) + payload)

    async def flush(self) -> None:
        await self._writer.flush()

    async def send(self, message: Mapping[str, object], *, final: bool = False) -> None:
        payload = codec.encode(message)
        if self._writer.broken is not None:
            raise trio.BrokenResourceError(self._writer.broken)
        self._writer.queue(_LENGTH.pack(len(payload)) + payload)
        await self._writer.flush()
        if final and isinstance(self._stream, trio.abc.HalfCloseableStream):
            with trio.CancelScope(shield=True):
                await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
