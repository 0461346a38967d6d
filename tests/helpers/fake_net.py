"""MemoryListener: a trio Listener whose connections are in-memory stream pairs."""

from __future__ import annotations

import math

import trio
import trio.testing


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts streams made by `connect()`; no kernel sockets, so autojump_clock is safe."""

    def __init__(self) -> None:
        # Unbounded on purpose: connect() must not block the test; tests open few streams.
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self.accepted = 0

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            stream = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()
