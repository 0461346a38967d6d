"""The message-stream interface the server and clients speak through.

A `MessageStream` carries whole protocol messages (CBOR maps, as Python dicts) in both
directions. Two implementations exist: the plain development framing of `allq.wire.plain`
(u32 length + CBOR, no crypto, for tests of the engine and server shell) and the encrypted
stream of the wire protocol (wire.md). The server's session code only sees this interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

#: One decoded protocol message: a CBOR map with text keys.
Message = dict[str, object]


class MessageStream(Protocol):
    """A bidirectional stream of messages.

    `receive()` raises `trio.EndOfChannel` on a clean close by the peer (final frame or
    EOF at a frame boundary where the framing allows it) and `trio.BrokenResourceError`
    when the stream failed; `RemoteProtocolError` when the peer sent something invalid.
    `send()` may be called from several tasks: implementations serialize writes and
    coalesce the frames queued meanwhile into one write; `send_nowait()` + `flush()` let
    one task answer a whole batch with one write.
    """

    #: Seconds a write may stay blocked before the stream counts as broken.
    write_timeout: float

    async def receive(self) -> Message: ...

    async def receive_batch(self, limit: int) -> list[Message]:
        """Every complete message already buffered (1 … `limit`); reads only if none."""
        ...

    def send_nowait(self, message: Mapping[str, object], *, final: bool = False) -> None:
        """Encode and queue one message, in order; the next flush or send writes it."""
        ...

    async def flush(self) -> None:
        """Write every queued message (one write for all of them where possible)."""
        ...

    async def send(self, message: Mapping[str, object], *, final: bool = False) -> None: ...

    async def aclose(self) -> None: ...


class ProtocolError(Exception):
    """Base of protocol misuse errors (h11 style)."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the connection cannot continue."""
