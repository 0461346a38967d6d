"""Batched reads and coalesced writes: `receive_batch`, `send_nowait` + `flush`, FrameWriter.

Rules: virtual time (`autojump_clock`) wherever a deadline is asserted; write counts are
observed with a wrapper stream that records every `send_all`; no sleeps stand in for
synchronisation (tasks meet on events and on the stream itself).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from allq.wire.connection import FramingError
from allq.wire.writer import FrameWriter
from tests.wire.helpers import ForwardingStream, encrypted_pair


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class CountingStream(ForwardingStream):
    """Wraps a stream and records the size of every `send_all`."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.writes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)


async def counted_pair() -> tuple[CountingStream, trio.abc.Stream]:
    a, b = trio.testing.memory_stream_pair()
    return CountingStream(a), b


async def test_receive_batch_returns_every_frame_of_one_read_in_order() -> None:
    client, server = await encrypted_pair()
    for ident in range(1, 8):
        client.send_nowait({"id": ident, "op": "ping"})
    await client.flush()
    first = await server.receive_batch(3)  # the limit is respected
    rest = await server.receive_batch(100)
    assert [m["id"] for m in first] == [1, 2, 3]
    assert [m["id"] for m in rest] == [4, 5, 6, 7]
    await client.aclose()
    await server.aclose()


async def test_an_error_after_good_frames_comes_with_the_next_call() -> None:
    raw, server_end = trio.testing.memory_stream_pair()
    client, server = await encrypted_pair(raw, server_end)
    client.send_nowait({"id": 1, "op": "ping"})
    client.send_nowait({"id": 2, "op": "ping"})
    await client.flush()
    await raw.send_all(b"\x00\x00\x00\x05xxxxx")  # L = 5 < 18: a framing error
    assert [m["id"] for m in await server.receive_batch(100)] == [1, 2]
    with pytest.raises(FramingError, match="below"):
        await server.receive_batch(100)
    await server.aclose()


async def test_frames_queued_by_many_tasks_in_one_tick_share_writes() -> None:
    counting, server_end = await counted_pair()
    client, server = await encrypted_pair(counting, server_end)
    before = len(counting.writes)

    async with trio.open_nursery() as nursery:
        for ident in range(1, 51):
            nursery.start_soon(client.send, {"id": ident, "op": "ping"})
    # The first sender writes its frame; the 49 queued meanwhile go out in one write.
    assert len(counting.writes) - before <= 2
    got: list[object] = []
    while len(got) < 50:
        got += [m["id"] for m in await server.receive_batch(100)]
    assert sorted(got) == list(range(1, 51))  # type: ignore[type-var]
    await client.aclose()
    await server.aclose()


async def test_send_nowait_then_flush_is_one_write() -> None:
    counting, server_end = await counted_pair()
    client, server = await encrypted_pair(counting, server_end)
    before = len(counting.writes)
    for ident in range(1, 101):
        client.send_nowait({"id": ident, "op": "ping"})
    await client.flush()
    assert len(counting.writes) - before == 1
    await client.flush()  # nothing queued: no write
    assert len(counting.writes) - before == 1
    await client.aclose()
    await server.aclose()


async def test_a_cancelled_waiter_still_gets_its_frame_out() -> None:
    a, b = trio.testing.lockstep_stream_pair()  # every write waits for the reader
    client, server = await encrypted_pair(a, b)
    cancelled = False

    async def waiter(scope: trio.CancelScope, queued: trio.Event) -> None:
        nonlocal cancelled
        with scope:
            client.send_nowait({"id": 2, "op": "ping"})
            queued.set()
            await client.flush()  # the first writer is blocked: this waits
        cancelled = scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, {"id": 1, "op": "ping"})
        await trio.testing.wait_all_tasks_blocked()  # the first write is under way
        scope, queued = trio.CancelScope(), trio.Event()
        nursery.start_soon(waiter, scope, queued)
        await queued.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        got: list[object] = []
        while len(got) < 2:
            got += [m["id"] for m in await server.receive_batch(100)]
    assert cancelled
    assert got == [1, 2]
    await client.aclose()
    await server.aclose()


async def test_a_stalled_write_breaks_the_writer_and_every_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.lockstep_stream_pair()  # nobody reads b: writes block
    writer = FrameWriter(a, write_timeout=7.0)
    errors: list[BaseException] = []
    start = trio.current_time()

    async def send(frame: bytes) -> None:
        writer.queue(frame)
        try:
            await writer.flush()
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, b"first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, b"second")
    assert len(errors) == 2
    assert "write blocked for 7 s" in str(errors[0])
    assert trio.current_time() - start == pytest.approx(7.0)
    assert writer.broken is not None
    writer.queue(b"later")
    with pytest.raises(trio.BrokenResourceError):
        await writer.flush()
    await a.aclose()
    await b.aclose()
