"""The trio shell: handshakes and EncryptedMessageStream over memory and lockstep streams.

Rules: time is virtual (`autojump_clock`), so the 5 s handshake and 30 s frame deadlines
are asserted at exact instants; a "raw" peer is a plain memory stream driven by hand, so
tests can see every byte the code under test wrote (zero bytes on refusal).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from allq.wire.connection import FramingError, MessageError
from allq.wire.handshake import HELLO_SIZE, ReplayCache
from allq.wire.stream import (
    EncryptedMessageStream,
    HandshakeFailed,
    client_handshake,
    server_handshake,
)
from allq.wire.transport import LocalProtocolError
from tests.wire.helpers import (
    ALLOW,
    CLIENT,
    NOW,
    SERVER,
    STRANGER,
    ForwardingStream,
    client_conn,
    encrypted_pair,
)
from tests.wire.test_codec import messages


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer writes until it closes."""
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def refused(
    raw_bytes: bytes, *, eof: bool = True, replay: ReplayCache | None = None
) -> tuple[HandshakeFailed, bytes]:
    """Send raw bytes to `server_handshake`; return its failure and what it wrote."""
    client_end, server_end = trio.testing.memory_stream_pair()
    cache = replay if replay is not None else ReplayCache()
    failure: list[HandshakeFailed] = []

    async def serve() -> None:
        with pytest.raises(HandshakeFailed) as info:
            await server_handshake(server_end, SERVER, ALLOW, cache, lambda: NOW)
        failure.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_end.send_all(raw_bytes)
        if eof:
            await client_end.send_eof()
        written = await read_all(client_end)
    await client_end.aclose()
    return failure[0], written


async def test_handshake_and_messages_both_ways() -> None:
    client, server = await encrypted_pair()
    assert server.peer_public == CLIENT.public
    assert server.peer_name == "client-1"
    assert server.peer_fingerprint == CLIENT.fingerprint
    assert client.peer_public == SERVER.public
    await client.send({"id": 1, "op": "put", "tube": "t", "body": b"\x00\x01"})
    assert await server.receive() == {"id": 1, "op": "put", "tube": "t", "body": b"\x00\x01"}
    await server.send({"id": 0, "event": "shutting_down", "grace": 10})
    await server.send({"id": 1, "result": {"id": "1", "state": "ready", "duplicate": False}})
    assert (await client.receive())["event"] == "shutting_down"
    assert (await client.receive())["result"]["state"] == "ready"  # type: ignore[index]
    await server.send({"id": 0, "closing": "shutdown"}, final=True)
    await server.aclose()
    assert await client.receive() == {"id": 0, "closing": "shutdown"}
    with pytest.raises(trio.EndOfChannel):
        await client.receive()
    await client.aclose()


async def test_unknown_client_gets_zero_bytes_and_eof() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    replay = ReplayCache()

    async def serve() -> None:
        with pytest.raises(HandshakeFailed) as info:
            await server_handshake(server_end, SERVER, ALLOW, replay, lambda: NOW)
        assert info.value.reason == "not allowed"
        assert info.value.fingerprint == STRANGER.fingerprint

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(HandshakeFailed) as info:
            await client_handshake(client_end, STRANGER, SERVER.public, lambda: NOW)
        assert info.value.reason == "refused"
    assert len(replay) == 0


async def test_refusals_write_nothing() -> None:
    conn = client_conn(STRANGER)
    failure, written = await refused(conn.start(int(NOW)))
    assert (failure.reason, written) == ("not allowed", b"")
    failure, written = await refused(client_conn().start(int(NOW) - 121))
    assert (failure.reason, written) == ("clock skew", b"")
    failure, written = await refused(client_conn().start(int(NOW))[:219])
    assert (failure.reason, written) == ("short hello", b"")
    failure, written = await refused(b"GET / HTTP/1.1\r\n" * 20)
    assert (failure.reason, written) == ("bad magic", b"")


async def test_replayed_hello_refused_and_cache_unchanged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    replay = ReplayCache()
    hello = client_conn().start(int(NOW))
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_end.send_all, hello)
        await server_handshake_until_welcome(server_end, replay)
    assert len(replay) == 1
    failure, written = await refused(hello, replay=replay)
    assert (failure.reason, written) == ("replay", b"")
    assert len(replay) == 1
    await client_end.aclose()


async def server_handshake_until_welcome(server_end: trio.abc.Stream, replay: ReplayCache) -> None:
    """Run the server handshake until it waits for the client header, then abandon it."""
    with trio.move_on_after(1):
        await server_handshake(server_end, SERVER, ALLOW, replay, lambda: NOW)
    await server_end.aclose()


async def test_slow_loris_cut_at_five_seconds(autojump_clock: trio.testing.MockClock) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    hello = client_conn().start(int(NOW))
    start = trio.current_time()

    async def drip() -> None:
        for byte in hello[:200]:
            await client_end.send_all(bytes([byte]))
            await trio.sleep(0.1)  # virtual time: 200 bytes would take 20 s

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        with pytest.raises(HandshakeFailed, match="timeout"):
            await server_handshake(server_end, SERVER, ALLOW, ReplayCache(), lambda: NOW)
        assert trio.current_time() - start == pytest.approx(5.0)
        nursery.cancel_scope.cancel()
    assert await client_end.receive_some() == b""  # closed, zero bytes


async def test_client_header_never_sent_times_out(autojump_clock: trio.testing.MockClock) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(client_conn().start(int(NOW)))
    start = trio.current_time()
    with pytest.raises(HandshakeFailed, match="timeout") as info:
        await server_handshake(server_end, SERVER, ALLOW, ReplayCache(), lambda: NOW)
    assert trio.current_time() - start == pytest.approx(5.0)
    assert info.value.fingerprint == CLIENT.fingerprint
    assert len(await client_end.receive_some()) == 160  # WELCOME ‖ header, then EOF
    assert await client_end.receive_some() == b""


async def test_client_times_out_on_silent_server(autojump_clock: trio.testing.MockClock) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    with pytest.raises(HandshakeFailed, match="timeout"):
        await client_handshake(client_end, CLIENT, SERVER.public, lambda: NOW)
    assert trio.current_time() == pytest.approx(5.0)
    assert len(await server_end.receive_some()) == HELLO_SIZE
    assert await server_end.receive_some() == b""


async def test_client_detects_wrong_server_key() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    other_server = client_conn().keys  # any key that is not SERVER's

    async def serve() -> None:
        with pytest.raises(HandshakeFailed):
            await server_handshake(server_end, SERVER, ALLOW, ReplayCache(), lambda: NOW)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(HandshakeFailed):
            await client_handshake(client_end, CLIENT, other_server.public, lambda: NOW)


async def test_frame_deadline(autojump_clock: trio.testing.MockClock) -> None:
    client, server = await encrypted_pair()
    raw: trio.abc.Stream = client.transport_stream
    frame = client.connection.send({"id": 1, "op": "ping"})
    await raw.send_all(frame[:5])
    start = trio.current_time()
    with pytest.raises(FramingError, match="30 s"):
        await server.receive()
    assert trio.current_time() - start == pytest.approx(30.0)
    await client.aclose()
    await server.aclose()


async def test_idle_is_not_a_frame_deadline(autojump_clock: trio.testing.MockClock) -> None:
    client, server = await encrypted_pair()
    with trio.move_on_after(100) as scope:
        await server.receive()
    assert scope.cancelled_caught  # waiting between frames has no deadline here
    await client.send({"id": 1, "op": "ping"})
    assert await server.receive() == {"id": 1, "op": "ping"}
    await client.aclose()
    await server.aclose()


async def test_tampered_frame_on_the_stream() -> None:
    client, server = await encrypted_pair()
    frame = bytearray(client.connection.send({"id": 1, "op": "ping"}))
    frame[-1] ^= 1
    await client.transport_stream.send_all(bytes(frame))
    with pytest.raises(FramingError):
        await server.receive()
    with pytest.raises(FramingError):
        await server.receive()  # sticky
    with pytest.raises(LocalProtocolError):
        await server.send({"id": 0, "closing": "protocol"}, final=True)
    await client.aclose()
    await server.aclose()


async def test_truncation_is_not_a_clean_close() -> None:
    client, server = await encrypted_pair()
    await client.send({"id": 1, "op": "ping"})
    await client.aclose()
    assert await server.receive() == {"id": 1, "op": "ping"}
    with pytest.raises(FramingError, match="truncated"):
        await server.receive()
    await server.aclose()


async def test_message_error_then_final_protocol_frame() -> None:
    client, server = await encrypted_pair()
    await client.send({"id": 1, "op": "ping"})
    client.connection.forget(1)
    await client.send({"id": 1, "op": "ping"})
    assert await server.receive() == {"id": 1, "op": "ping"}
    with pytest.raises(MessageError):
        await server.receive()
    await server.send(
        {"id": 0, "closing": "protocol", "error": "BAD_FORMAT", "message": "dup id"}, final=True
    )
    await server.aclose()
    assert (await client.receive())["closing"] == "protocol"
    with pytest.raises(trio.EndOfChannel):
        await client.receive()
    await client.aclose()


async def test_concurrent_sends_are_whole_frames() -> None:
    client, server = await encrypted_pair()

    async def sender(base: int) -> None:
        for i in range(20):
            await client.send({"id": base + i, "op": "put", "body": bytes(5000)})

    async with trio.open_nursery() as nursery:
        for base in (1, 101, 201):
            nursery.start_soon(sender, base)
        got = [await server.receive() for _ in range(60)]
    assert sorted(m["id"] for m in got) == sorted(  # type: ignore[type-var]
        b + i for b in (1, 101, 201) for i in range(20)
    )
    await client.aclose()
    await server.aclose()


async def test_send_after_close_and_busy_receive() -> None:
    client, server = await encrypted_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive()
        nursery.cancel_scope.cancel()
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.send({"id": 1, "op": "ping"})
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive()


async def test_lockstep_streams() -> None:
    a, b = trio.testing.lockstep_stream_pair()
    client, server = await encrypted_pair(a, b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, {"id": 1, "op": "put", "body": bytes(70_000)})
        assert (await server.receive())["body"] == bytes(70_000)
    await client.aclose()
    await server.aclose()


class ChunkingStream(ForwardingStream):
    """Wraps a stream and splits every write at the given cut points (with checkpoints)."""

    def __init__(self, inner: trio.abc.Stream, sizes: list[int]) -> None:
        super().__init__(inner)
        self.sizes = sizes or [1]
        self.turn = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        while view:
            size = self.sizes[self.turn % len(self.sizes)]
            self.turn += 1
            await self.inner.send_all(view[:size])
            view = view[size:]
            await trio.lowlevel.checkpoint()


@settings(max_examples=15, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(1, 300), max_size=6))
async def test_random_chunking_through_the_stream(
    batch: list[dict[str, Any]], sizes: list[int]
) -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await encrypted_pair(ChunkingStream(a, sizes), ChunkingStream(b, sizes))
    requests = [{**m, "id": i + 1, "op": "x"} for i, m in enumerate(batch)]
    async with trio.open_nursery() as nursery:

        async def send_all() -> None:
            for r in requests:
                await client.send(r)
            await client.send({"id": 0, "closing": "client"}, final=True)

        nursery.start_soon(send_all)
        got = [await server.receive() for _ in range(len(requests) + 1)]
    assert got == [*requests, {"id": 0, "closing": "client"}]
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    await client.aclose()
    await server.aclose()


async def test_oversized_length_prefix_rejected_on_server() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    results: dict[str, EncryptedMessageStream] = {}

    async def serve() -> None:
        results["s"] = await server_handshake(
            server_end, SERVER, ALLOW, ReplayCache(), lambda: NOW, max_frame=1000
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        results["c"] = await client_handshake(client_end, CLIENT, SERVER.public, lambda: NOW)
    await client_end.send_all(struct.pack(">I", 1001))
    with pytest.raises(FramingError, match="cap"):
        await results["s"].receive()
    await results["s"].aclose()
    await results["c"].aclose()


async def test_a_send_cancelled_mid_write_finishes_its_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancelled caller must not break the stream for everyone else on it."""
    client_end, server_end = trio.testing.lockstep_stream_pair()
    client, server = await encrypted_pair(client_end, server_end)
    scope = trio.CancelScope()
    outcome: list[str] = []

    async def cancelled_sender() -> None:
        with scope:
            await client.send({"id": 1, "op": "put", "body": bytes(100_000)})
            outcome.append("sent")
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled_sender)
        await trio.testing.wait_all_tasks_blocked()  # blocked mid-write: nobody reads yet
        scope.cancel()
        first = await server.receive()  # reading lets the shielded write finish
    assert outcome == ["cancelled"]  # the caller learns it was cancelled, after the write
    assert first["body"] == bytes(100_000)

    async def receive_second() -> None:
        second = await server.receive()
        assert second == {"id": 2, "op": "ping"}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_second)
        await client.send({"id": 2, "op": "ping"})  # the stream still works
    await client.aclose()
    await server.aclose()


async def test_a_write_blocked_past_the_stall_timeout_breaks_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    client, server = await encrypted_pair(client_end, server_end)
    start = trio.current_time()
    with pytest.raises(trio.BrokenResourceError, match="write blocked"):
        await client.send({"id": 1, "op": "ping"})  # the peer never reads
    assert trio.current_time() - start == pytest.approx(30.0)
    with pytest.raises(trio.BrokenResourceError):
        await client.send({"id": 2, "op": "ping"})
    await client.aclose()
    await server.aclose()
