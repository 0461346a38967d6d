"""The pipelining client against tiny fake responders over memory streams.

Rules: the responder is test code speaking raw messages through the server end of an
encrypted (or plain) stream pair, so each test fixes the order of answers; one loopback
TCP smoke test uses real time with a generous `fail_after` and no autojump clock.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from allq import errors
from allq.wire.client import ConnectionLost, Pool, connect_stream, open_client, open_pool
from allq.wire.handshake import ReplayCache
from allq.wire.stream import EncryptedMessageStream, HandshakeFailed, server_handshake
from allq.wire.transport import LocalProtocolError, Message, MessageStream
from tests.wire.helpers import ALLOW, CLIENT, SERVER, STRANGER, encrypted_pair

Responder = Callable[[MessageStream], Awaitable[None]]


async def run_with(responder: Responder, body: Callable[[Any], Awaitable[None]]) -> None:
    client_stream, server_stream = await encrypted_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, server_stream)
        async with connect_stream(client_stream) as client:
            await body(client)
        nursery.cancel_scope.cancel()
    await server_stream.aclose()


async def test_pipelined_requests_answered_out_of_order() -> None:
    n = 10

    async def responder(stream: MessageStream) -> None:
        got = [await stream.receive() for _ in range(n)]
        for request in reversed(got):
            await stream.send({"id": request["id"], "result": {"echo": request["value"]}})

    async def body(client: Any) -> None:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await client.request("ping", value=i)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        assert results == {i: {"echo": i} for i in range(n)}
        assert client.in_flight == 0

    await run_with(responder, body)


async def test_errors_are_typed() -> None:
    async def responder(stream: MessageStream) -> None:
        while True:
            request = await stream.receive()
            if request["id"] == 0:
                return
            if request["op"] == "peek":
                await stream.send(
                    {
                        "id": request["id"],
                        "error": "NOT_FOUND",
                        "message": "gone",
                        "field": "job_id",
                    }
                )
            elif request["op"] == "put":
                await stream.send(
                    {"id": request["id"], "error": "DRAINING", "message": "later", "retry_after": 2}
                )
            else:
                await stream.send({"id": request["id"], "error": "NEW_CODE", "message": "?"})

    async def body(client: Any) -> None:
        with pytest.raises(errors.NotFound) as info:
            await client.request("peek", job_id="1")
        assert info.value.field == "job_id"
        with pytest.raises(errors.Draining) as drain:
            await client.request("put", tube="t")
        assert drain.value.retry_after == 2.0  # type: ignore[attr-defined]
        with pytest.raises(errors.Internal, match="NEW_CODE"):
            await client.request("x")

    await run_with(responder, body)


async def test_connection_lost_fails_every_inflight_request() -> None:
    async def responder(stream: MessageStream) -> None:
        for _ in range(3):
            await stream.receive()
        await stream.aclose()  # EOF without a final frame

    async def body(client: Any) -> None:
        failures: list[BaseException] = []

        async def one() -> None:
            try:
                await client.request("ping")
            except ConnectionLost as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert len(failures) == 3
        assert "truncated" in str(failures[0])
        assert not client.alive
        with pytest.raises(ConnectionLost):
            await client.request("ping")

    await run_with(responder, body)


async def test_server_closing_frame_reported() -> None:
    async def responder(stream: MessageStream) -> None:
        await stream.receive()
        await stream.send({"id": 0, "event": "shutting_down", "grace": 10})
        await stream.send(
            {"id": 0, "closing": "revoked", "error": "UNAUTHORIZED", "message": "key removed"},
            final=True,
        )
        await stream.aclose()

    async def body(client: Any) -> None:
        with pytest.raises(ConnectionLost, match="revoked") as info:
            await client.request("ping")
        assert info.value.closing is not None
        assert info.value.closing["error"] == "UNAUTHORIZED"
        assert client.shutting_down == 10.0
        await client.closed.wait()

    await run_with(responder, body)


async def test_reserve_cancel_answers_target_first() -> None:
    async def responder(stream: MessageStream) -> None:
        reserve = await stream.receive()
        assert reserve["op"] == "reserve"
        assert reserve["tubes"] == ["a", "b"]
        cancel = await stream.receive()
        assert cancel == {"id": cancel["id"], "op": "cancel", "target": reserve["id"]}
        await stream.send({"id": reserve["id"], "error": "CANCELLED", "message": "cancelled"})
        await stream.send({"id": cancel["id"], "result": {"outcome": "cancelled"}})

    async def body(client: Any) -> None:
        pending = await client.start_reserve(["a", "b"], timeout=30, owner="w1")
        assert await pending.cancel() == "cancelled"
        with pytest.raises(errors.Cancelled):
            await pending.wait()

    await run_with(responder, body)


async def test_abandoned_reserve_is_cancelled_and_its_jobs_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Message] = []

    async def responder(stream: MessageStream) -> None:
        reserve = await stream.receive()
        cancel = await stream.receive()
        seen.append(cancel)
        job = {"id": "s1,5", "lease": "L" * 22, "body": b"x"}
        await stream.send({"id": reserve["id"], "result": [job]})
        await stream.send({"id": cancel["id"], "result": {"outcome": "delivered"}})
        unreserve = await stream.receive()
        seen.append(unreserve)
        await stream.send({"id": unreserve["id"], "result": {}})

    async def body(client: Any) -> None:
        with trio.move_on_after(0.5) as scope:
            await client.request("reserve", tubes=["a"], timeout=30)
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert len(seen) == 2
        assert seen[0]["op"] == "cancel"
        assert seen[1]["op"] == "unreserve"
        assert seen[1]["job_id"] == "s1,5"
        assert seen[1]["lease"] == "L" * 22

    await run_with(responder, body)


async def test_answer_buffered_when_waiter_cancelled_returns_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = await encrypted_pair()
    async with connect_stream(client_stream) as client:
        pending = await client.start_reserve(["a"])
        reserve = await server_stream.receive()
        job = {"id": "s1,9", "lease": "Z" * 22}
        await server_stream.send({"id": reserve["id"], "result": [job]})
        await trio.testing.wait_all_tasks_blocked()  # the answer sits in the slot
        with trio.CancelScope() as scope:
            scope.cancel()
            await pending.wait()
        with trio.fail_after(5):  # virtual time: fails fast if no unreserve comes
            unreserve = await server_stream.receive()
        assert unreserve["op"] == "unreserve"
        assert (unreserve["job_id"], unreserve["lease"]) == ("s1,9", "Z" * 22)
        await server_stream.send({"id": unreserve["id"], "result": {}})
    await server_stream.aclose()


async def test_semaphore_is_not_over_released_on_send_failure() -> None:
    client_stream, server_stream = await encrypted_pair()
    async with connect_stream(client_stream, max_inflight=1) as client:
        with pytest.raises(LocalProtocolError):
            await client.request("put", body=object())
        with pytest.raises(LocalProtocolError):
            await client.request("put", body=object())
        assert client._inflight.value == 1
        await server_stream.aclose()
        await client.closed.wait()
        with pytest.raises(ConnectionLost):
            await client.request("ping")
        assert client._inflight.value == 1


async def test_client_says_goodbye_with_a_final_frame() -> None:
    client_stream, server_stream = await encrypted_pair()
    async with connect_stream(client_stream) as client:
        assert client.alive
    assert await server_stream.receive() == {"id": 0, "closing": "client"}
    with pytest.raises(trio.EndOfChannel):
        await server_stream.receive()
    await server_stream.aclose()


async def test_client_cancelled_by_its_owner_still_says_goodbye() -> None:
    """A gateway shutting down cancels its links; servers must see a clean close."""
    client_stream, server_stream = await encrypted_pair()
    with trio.CancelScope() as scope:
        async with connect_stream(client_stream):
            scope.cancel()
            with trio.CancelScope(shield=True):  # let the reader task see its Cancelled first
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_forever()
    assert await server_stream.receive() == {"id": 0, "closing": "client"}
    with pytest.raises(trio.EndOfChannel):
        await server_stream.receive()
    await server_stream.aclose()


async def test_body_exception_is_not_wrapped_in_a_group() -> None:
    client_stream, server_stream = await encrypted_pair()
    with pytest.raises(KeyError):
        async with connect_stream(client_stream):
            raise KeyError("mine")
    await server_stream.aclose()


async def test_max_inflight_limits_the_pipeline() -> None:
    client_stream, server_stream = await encrypted_pair()
    async with (
        connect_stream(client_stream, max_inflight=2) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client.request, "ping")
        nursery.start_soon(client.request, "ping")
        nursery.start_soon(client.request, "ping")
        await trio.testing.wait_all_tasks_blocked()
        first = [await server_stream.receive(), await server_stream.receive()]
        assert client.in_flight == 2
        await server_stream.send({"id": first[0]["id"], "result": {}})
        third = await server_stream.receive()
        for request in (first[1], third):
            await server_stream.send({"id": request["id"], "result": {}})
    await server_stream.aclose()


async def test_pipelining_over_the_plain_framing() -> None:
    plain = pytest.importorskip("allq.wire.plain")
    a, b = trio.testing.memory_stream_pair()
    server_stream = plain.PlainMessageStream(b)

    async def responder() -> None:
        got = [await server_stream.receive() for _ in range(3)]
        for request in reversed(got):
            await server_stream.send({"id": request["id"], "result": {"n": request["n"]}})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder)
        async with connect_stream(plain.PlainMessageStream(a)) as client:
            results = {}

            async def one(i: int) -> None:
                results[i] = await client.request("ping", n=i)

            async with trio.open_nursery() as inner:
                for i in range(3):
                    inner.start_soon(one, i)
            assert results == {i: {"n": i} for i in range(3)}
    await server_stream.aclose()


async def test_pool_spreads_requests() -> None:
    pairs = [await encrypted_pair() for _ in range(2)]
    async with connect_stream(pairs[0][0]) as c1, connect_stream(pairs[1][0]) as c2:
        pool = Pool([c1, c2])
        first = await pool.start("ping")
        second = await pool.start("ping")
        assert {first.client, second.client} == {c1, c2}
        for client_stream, server_stream in pairs:
            del client_stream
            request = await server_stream.receive()
            await server_stream.send({"id": request["id"], "result": {}})
        assert await first.wait() == {}
        assert await second.wait() == {}
    for _, server_stream in pairs:
        await server_stream.aclose()


async def test_loopback_tcp_smoke() -> None:
    """The one real-socket test: handshake, pool, request over 127.0.0.1 (real time)."""
    replay = ReplayCache()

    async def handler(tcp: trio.SocketStream) -> None:
        try:
            stream: EncryptedMessageStream = await server_handshake(
                tcp, SERVER, ALLOW, replay, time.time
            )
        except HandshakeFailed:
            return
        async with stream.transport_stream:
            try:
                while True:
                    request = await stream.receive()
                    if request["id"] == 0:
                        return
                    await stream.send({"id": request["id"], "result": {"pong": True}})
            except (trio.EndOfChannel, trio.BrokenResourceError):
                return

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            async with open_pool("127.0.0.1", port, CLIENT, SERVER.public, size=2) as pool:
                assert await pool.request("ping") == {"pong": True}
                assert len(pool.clients) == 2
            with pytest.raises(HandshakeFailed, match="refused"):
                async with open_client("127.0.0.1", port, STRANGER, SERVER.public):
                    pass
            async with open_client("127.0.0.1", port, CLIENT, SERVER.public) as client:
                assert await client.request("ping") == {"pong": True}
            nursery.cancel_scope.cancel()


async def test_goodbye_after_the_peer_broke_the_protocol_is_skipped_quietly() -> None:
    """A server killed mid-stream leaves the engine in ERROR: closing must not raise."""
    client_stream, server_stream = await encrypted_pair()
    with trio.CancelScope() as scope:
        async with connect_stream(client_stream):
            await server_stream.transport_stream.aclose()  # EOF without a final frame
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_answer_that_arrives_while_the_sender_is_still_writing_returns_its_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reserve's frame is queued, its write has not returned yet, the answer (with a
    # job) arrives and is routed, and then the sender is cancelled: the job must go back.
    # (A 4-server spike left such jobs reserved until their TTR.)
    client_stream, server_stream = await encrypted_pair()
    assert isinstance(client_stream, EncryptedMessageStream)
    gate = trio.Event()
    real_send = client_stream.send

    async def send_held_at_the_gate(message: Message, *, final: bool = False) -> None:
        if message.get("op") != "reserve":
            await real_send(message, final=final)
            return
        client_stream.send_nowait(message, final=final)
        await client_stream.flush()  # written: the server can answer
        await gate.wait()  # ... but the sender has not returned yet

    client_stream.send = send_held_at_the_gate  # type: ignore[method-assign,assignment]
    async with connect_stream(client_stream) as client:
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def requester() -> None:
                with scope:
                    await client.request("reserve", tubes=["a"], timeout=30)

            nursery.start_soon(requester)
            reserve = await server_stream.receive()
            job = {"id": "s1,7", "lease": "Q" * 22, "body": b"x"}
            await server_stream.send({"id": reserve["id"], "result": [job]})
            await trio.testing.wait_all_tasks_blocked()  # routed while the sender waits
            scope.cancel()
        with trio.fail_after(5):  # virtual time: fails fast if no unreserve comes
            unreserve = await server_stream.receive()
        assert unreserve["op"] == "unreserve"
        assert (unreserve["job_id"], unreserve["lease"]) == ("s1,7", "Q" * 22)
        await server_stream.send({"id": unreserve["id"], "result": {}})
    await server_stream.aclose()
