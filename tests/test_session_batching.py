"""Session batching: many requests in one read, their answers in one write, in order.

Rules: the real server (serve + sessions + EngineShell) over MemoryListener with the
plain framing, under the autojump clock; the server side of each connection is wrapped
so the test sees every `send_all` the session makes.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
import trio.testing

from allq.session import SessionLimits
from allq.wire import codec
from allq.wire.client import connect_stream
from allq.wire.plain import PlainMessageStream
from allq.wire.transport import MessageStream
from tests.helpers.servers import memory_server
from tests.wire.helpers import encrypted_pair
from tests.wire.test_batching import CountingStream


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Recorder:
    """A transport that wraps each accepted stream in a `CountingStream`."""

    def __init__(self) -> None:
        self.streams: list[CountingStream] = []

    async def __call__(self, stream: trio.abc.Stream) -> MessageStream:
        counting = CountingStream(stream)
        self.streams.append(counting)
        return PlainMessageStream(counting)


def frames(messages: list[dict[str, Any]]) -> bytes:
    out = b""
    for message in messages:
        payload = codec.encode(message)
        out += struct.pack(">I", len(payload)) + payload
    return out


async def read_answers(stream: PlainMessageStream, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        got += await stream.receive_batch(1000)
    return got


async def test_many_requests_in_one_read_are_answered_in_order_with_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    async with memory_server(transport=recorder) as server:
        raw = await server.listener.connect()
        puts = [{"id": i, "op": "put", "tube": "t", "body": b"%d" % i} for i in range(1, 41)]
        await raw.send_all(frames(puts))  # 40 requests arrive in one read
        client = PlainMessageStream(raw)
        answers = await read_answers(client, 40)
        assert [a["id"] for a in answers] == list(range(1, 41))
        assert all(a["result"]["state"] == "ready" for a in answers)
        assert recorder.streams[0].writes == [sum(len(frames([a])) for a in answers)]
        # Applied in arrival order: the jobs come back in put order.
        reserves = [{"id": i, "op": "reserve", "tubes": ["t"]} for i in range(41, 81)]
        await raw.send_all(frames(reserves))
        answers = await read_answers(client, 40)
        assert [a["result"][0]["body"] for a in answers] == [b"%d" % i for i in range(1, 41)]
        assert len(recorder.streams[0].writes) == 2
        await client.aclose()


async def test_a_waiting_reserve_in_a_batch_does_not_hold_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        raw = await server.listener.connect()
        batch = [
            {"id": 1, "op": "reserve", "tubes": ["t"], "timeout": 10},
            {"id": 2, "op": "ping"},
            {"id": 3, "op": "put", "tube": "t"},  # delivered to the waiting reserve
            {"id": 4, "op": "cancel", "target": 1},
        ]
        await raw.send_all(frames(batch))
        client = PlainMessageStream(raw)
        answers = await read_answers(client, 4)
        ids = [a["id"] for a in answers]
        assert set(ids) == {1, 2, 3, 4}
        assert ids.index(1) < ids.index(4)  # the target's answer goes out first
        by_id = {a["id"]: a for a in answers}
        assert by_id[4]["result"]["outcome"] == "delivered"
        assert len(by_id[1]["result"]) == 1
        await client.aclose()


async def test_the_answers_before_a_goodbye_are_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        raw = await server.listener.connect()
        batch = [{"id": 1, "op": "ping"}, {"id": 2, "op": "ping"}, {"id": 0, "closing": "client"}]
        await raw.send_all(frames(batch))
        client = PlainMessageStream(raw)
        answers = await read_answers(client, 2)
        assert [a["id"] for a in answers] == [1, 2]
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await client.receive()
        await client.aclose()


class StallingStream(CountingStream):
    """Reads normally; every write blocks forever (the peer stopped reading)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await trio.sleep_forever()


async def test_a_stalled_batch_write_closes_the_connection_after_the_stall_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stalling(stream: trio.abc.Stream) -> MessageStream:
        return PlainMessageStream(StallingStream(stream))

    limits = SessionLimits(write_stall_s=5.0)
    async with memory_server(transport=stalling, session=limits) as server:
        raw = await server.listener.connect()
        start = trio.current_time()
        await raw.send_all(frames([{"id": i, "op": "ping"} for i in range(1, 11)]))
        assert await raw.receive_some() == b""  # closed by the server, nothing written
        assert trio.current_time() - start == pytest.approx(5.0)
        await trio.testing.wait_all_tasks_blocked()  # the session's cleanup has run
        assert server.stats.connections == 0
        await raw.aclose()


async def test_client_start_batch_sends_one_write(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        counting = CountingStream(await server.listener.connect())
        async with connect_stream(PlainMessageStream(counting)) as client:
            pending = await client.start_batch([("put", {"tube": "b"}) for _ in range(30)])
            assert len(counting.writes) == 1
            results = [await request.wait() for request in pending]
            assert [r["state"] for r in results] == ["ready"] * 30
            assert client.in_flight == 0
            stats = await client.request("stats_tube", tube="b")
            assert stats["ready"] == 30


class SlowAfterMarker(CountingStream):
    """Writes at once, but a write holding `MARK` returns only a second later."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        if b"MARK" in bytes(data):
            await trio.sleep(1)


async def test_an_id_is_free_once_its_answer_is_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client may reuse an id as soon as it has the answer, even while the server's
    task that wrote it is still inside its write (it used to be a protocol error)."""

    async def slow(stream: trio.abc.Stream) -> MessageStream:
        return PlainMessageStream(SlowAfterMarker(stream))

    async with memory_server(transport=slow) as server:
        worker = PlainMessageStream(await server.listener.connect())
        producer = PlainMessageStream(await server.listener.connect())
        await worker.send({"id": 1, "op": "reserve", "tubes": ["t"], "timeout": 10})
        await trio.testing.wait_all_tasks_blocked()
        await producer.send({"id": 1, "op": "put", "tube": "t", "body": b"MARK"})
        answer: dict[str, Any] = await worker.receive()  # written by the reserve's task
        assert answer["result"][0]["body"] == b"MARK"
        start = trio.current_time()
        await worker.send({"id": 1, "op": "ping"})  # reused while that task still writes
        answer = dict(await worker.receive())
        assert answer["id"] == 1
        assert answer["result"]["pong"] is True
        assert trio.current_time() - start == pytest.approx(1.0)  # after the slow write
        await worker.aclose()
        await producer.aclose()


async def test_background_requests_started_during_the_goodbye_are_dropped_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cut window's abandoned answers make the client give jobs back in background
    tasks; one that runs while the goodbye is being written must not fail the client
    (it used to raise "cannot send after the final frame" out of the context manager)."""

    class SlowWrites(CountingStream):
        slow = False

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await self.inner.send_all(data)
            if self.slow:
                await trio.sleep(0.5)  # the goodbye's write is still running meanwhile

    a, b = trio.testing.memory_stream_pair()
    slow = SlowWrites(a)
    client_stream, server_stream = await encrypted_pair(slow, b)
    async with connect_stream(client_stream) as client:
        for _ in range(5):
            client._nursery.start_soon(client._background, "ping", {})
        slow.slow = True
    assert not client.alive
    await server_stream.aclose()
