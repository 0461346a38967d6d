"""`allq.client` against a real embedded cluster (real servers, real gateway core, real
Hypercorn on loopback): both clients, bodies as bytes, batches, typed errors, keep-alive.

Rules: real sockets and real time, every test under a generous `trio.fail_after`; the sync
client runs in a worker thread (`trio.to_thread`) while Trio serves the gateway; clients
are closed before the gateway stops (design.md pitfall 13).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

import allq.errors
from allq.client import (
    AllQ,
    ApiError,
    AsyncAllQ,
    BadTube,
    Job,
    LeaseExpired,
    NewJob,
    NotFound,
    NotReserved,
    Overloaded,
    TransportError,
    Unauthorized,
)
from allq.client.errors import error_from_response
from allq.client.http import Endpoint
from allq.client.model import encode_body
from tests.client_support import serving_gateway
from tests.helpers.cluster import eventually

BINARY = bytes(range(256))


async def reserve_all(q: AsyncAllQ, tubes: list[str], n: int) -> list[Job]:
    """`n` jobs, by priority: one reserve may answer with the jobs of one server only."""
    jobs: list[Job] = []
    while len(jobs) < n:
        jobs += await q.reserve(tubes, count=min(n - len(jobs), 1000), timeout=1)
    assert len(jobs) == n
    return sorted(jobs, key=lambda job: job.priority)


def test_bodies_go_as_text_when_utf8_else_base64() -> None:
    assert encode_body("héllo".encode()) == {"body": "héllo"}
    assert encode_body(b"\xff\x00") == {"body_b64": "/wA="}
    assert Job.from_record({"id": "s1,x", "tube": "t", "body_b64": "/wA="}).body == b"\xff\x00"
    assert Job.from_record({"id": "s1,x", "tube": "t", "body": "é"}).body == "é".encode()


def test_endpoint_parsing() -> None:
    assert Endpoint.parse("http://127.0.0.1:8090") == Endpoint("http", "127.0.0.1", 8090, "")
    assert Endpoint.parse("example.com/q/").prefix == "/q"
    assert Endpoint.parse("https://example.com").port == 443
    with pytest.raises(ValueError, match="http"):
        Endpoint.parse("ftp://x")


def test_errors_are_typed_by_code_with_status_and_retry_after() -> None:
    error = error_from_response(
        429, "2.5", json.dumps({"error": {"code": "OVERLOADED", "message": "busy"}}).encode()
    )
    assert isinstance(error, Overloaded)
    assert (error.code, error.status, error.retry_after) == ("OVERLOADED", 429, 2.5)
    lease = error_from_response(
        409, None, b'{"error": {"code": "LEASE_EXPIRED", "message": "m", "field": "lease"}}'
    )
    assert isinstance(lease, LeaseExpired)
    assert isinstance(lease, allq.errors.LeaseExpired)
    assert lease.field == "lease"
    assert lease.retry_after is None
    # Not the v1 shape (a proxy, a legacy route): typed by status.
    assert isinstance(error_from_response(404, None, b'{"error": "not found"}'), NotFound)
    odd = error_from_response(502, None, b"<html>bad gateway</html>")
    assert odd.code == "INTERNAL"
    assert odd.status == 502


async def test_async_client_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            put = await q.put("mail", "héllo".encode(), priority=7, ttr=30)
            assert put.tube == "mail"
            assert put.state == "ready"
            assert not put.duplicate
            raw = await q.put("mail", BINARY, priority=8)
            jobs = await reserve_all(q, ["mail", "other"], 2)
            assert [job.id for job in jobs] == [put.id, raw.id]
            assert [job.body for job in jobs] == ["héllo".encode(), BINARY]
            first, second = jobs
            assert first.lease is not None
            assert first.priority == 7
            assert first.attempt == 1
            assert (await q.get(first)).state == "reserved"
            assert await q.touch(first) == pytest.approx(30, abs=1)
            # done folded into the next reserve: one request
            again = await q.reserve("mail", timeout=0, done=[first])
            assert list(again) == []
            assert [(r.id, r.state, r.ok) for r in again.done] == [(first.id, "gone", True)]
            with pytest.raises(NotFound) as info:
                await q.get(first.id)
            assert (info.value.code, info.value.status) == ("NOT_FOUND", 404)
            # release with a delay, then it comes back with its counters
            assert await q.release(second, delay=0.2) == "delayed"
            peeked = await q.peek("mail", "delayed")
            assert peeked is not None
            assert peeked.id == second.id
            assert await q.peek("mail") is None
            (back,) = await q.reserve("mail", timeout=10)
            assert (back.id, back.releases, back.attempt) == (second.id, 1, 2)
            assert await q.bury(back) == "buried"
            assert await q.kick("mail", 5) == 1
            assert await q.delete(back.id) == "ready"


async def test_async_client_batches_and_tube_operations(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            items: list[bytes | str | NewJob] = [f"job {i}".encode() for i in range(1004)]
            items[1001] = NewJob(body=b"bad", priority=-1)
            results = await q.put_many("bulk", items)
            assert len(results) == 1004
            assert [i for i, r in enumerate(results) if not r.ok] == [1001]
            assert results[1001].error is not None
            assert results[1001].error.code == "BAD_FORMAT"
            jobs = await reserve_all(q, ["bulk"], 1003)
            done = await q.done_many(jobs)
            assert all(r.ok for r in done)
            assert len(done) == 1003

            await q.put("ctl", b"x")
            assert (await q.pause("ctl", 60))["paused"] is True
            assert await q.reserve("ctl", timeout=0) == []
            assert (await q.unpause("ctl"))["paused"] is False
            throttled = await q.throttle("ctl", 10)
            assert sum(throttled["per_server"].values()) == pytest.approx(10)
            await q.unthrottle("ctl")
            assert (await q.tube_stats("ctl"))["ready"] == 1
            assert "ctl" in [t["name"] for t in await q.tubes()]
            assert (await q.stats())["jobs"]["ready"] == 1
            assert {s["id"] for s in await q.servers()} == {"s1", "s2"}
            assert await q.clear("ctl") == 1
            await q.drain("ctl")
            with pytest.raises(allq.errors.Draining):
                await q.put("ctl", b"y")
            await q.undrain("ctl")
            parent = await q.parent("flow", b"p", limit=1)
            assert parent.state == "waiting"
            assert "limit" in await q.children_started(parent.id)


async def test_typed_errors_from_the_gateway(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path, api_token="sekrit") as served:
            async with AsyncAllQ(served.url) as anonymous:
                with pytest.raises(Unauthorized) as info:
                    await anonymous.put("t", b"x")
                assert info.value.status == 401
            async with AsyncAllQ(served.url, token="sekrit") as q:
                with pytest.raises(BadTube) as bad:
                    await q.put("-bad", b"x")
                assert isinstance(bad.value, allq.errors.BadTube)
                assert bad.value.status == 400
                await q.put("t", b"x")
                (job,) = await q.reserve("t", timeout=1)
                await q.done(job)
                with pytest.raises((NotFound, NotReserved, LeaseExpired)):
                    await q.done(job)
                with pytest.raises(ValueError, match="lease"):
                    await q.done(job.id)


async def test_keep_alive_reuses_one_connection_and_cancel_loses_no_job(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            await q.health()
            (connection,) = q._idle
            for _ in range(5):
                await q.stats()
            assert q._idle == [connection]

            # A waiting long poll that is cancelled closes its connection; no job is lost.
            with trio.CancelScope() as scope:

                async def cancel_when_waiting() -> None:
                    await eventually(lambda: sum(s.waiters() for s in served.cluster.servers) > 0)
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_when_waiting)
                    await q.reserve("late", timeout=30)
            assert scope.cancelled_caught
            put = await q.put("late", b"still here")
            (job,) = await q.reserve("late", timeout=10)
            assert (job.id, job.reserves) == (put.id, 1)


async def test_a_long_poll_gets_a_job_put_while_it_waits(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            got: list[Job] = []

            async def waiter() -> None:
                got.extend(await q.reserve("lp", timeout=20))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await eventually(lambda: sum(s.waiters() for s in served.cluster.servers) > 0)
                put = await q.put("lp", b"now")
            assert [job.id for job in got] == [put.id]


async def test_sync_client_round_trip_in_a_thread(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served:

            def script() -> None:
                with AllQ(served.url) as q:
                    put = q.put("sync", BINARY, ttr=20)
                    results = q.put_many("sync", [b"a", "b", NewJob(body=b"c", priority=1)])
                    assert all(r.ok for r in results)
                    jobs: list[Job] = []
                    while len(jobs) < 4:  # each reserve may answer from one server only
                        jobs += q.reserve("sync", count=4 - len(jobs), timeout=1)
                    assert sorted(j.body for j in jobs) == sorted([BINARY, b"a", b"b", b"c"])
                    binary = next(j for j in jobs if j.id == put.id)
                    assert q.touch(binary) == pytest.approx(20, abs=1)
                    assert q.release(binary, delay=0) == "ready"
                    rest = [j for j in jobs if j.id != put.id]
                    assert [r.state for r in q.done_many(rest)] == ["gone"] * 3
                    with pytest.raises(NotFound):
                        q.get(rest[0].id)
                    peeked = q.peek("sync")
                    assert peeked is not None
                    assert peeked.body == BINARY
                    assert q.peek("sync", "buried") is None
                    assert q.clear("sync") == 1
                    assert len(q._idle) == 1  # one keep-alive connection did it all

            await trio.to_thread.run_sync(script)


async def test_unreachable_gateway_is_a_transport_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with trio.fail_after(30):
        async with AsyncAllQ(f"http://127.0.0.1:{port}") as q:
            with pytest.raises(TransportError, match="cannot connect"):
                await q.stats()

        def sync_call() -> None:
            with AllQ(f"http://127.0.0.1:{port}") as q, pytest.raises(TransportError):
                q.stats()

        await trio.to_thread.run_sync(sync_call)


async def _one_shot_server(  # noqa: ASYNC128
    answers: int, *, task_status: trio.TaskStatus[int]
) -> None:
    """An HTTP server that closes each connection after one answer without saying so
    (like a keep-alive timeout): a client must notice and use a new connection."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    task_status.started(listener.socket.getsockname()[1])
    async with listener:
        for _ in range(answers):
            stream = await listener.accept()
            async with stream:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some(65536)
                body = b'{"jobs": {}, "servers": {}, "tubes": [], "unavailable": []}'
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )


async def test_a_connection_the_server_dropped_is_not_reused() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_one_shot_server, 6)
            async with AsyncAllQ(f"http://127.0.0.1:{port}") as q:
                for _ in range(3):
                    assert (await q.stats())["tubes"] == []

            def sync_calls() -> None:
                with AllQ(f"http://127.0.0.1:{port}") as q:
                    for _ in range(3):
                        assert q.stats()["tubes"] == []

            await trio.to_thread.run_sync(sync_calls)


def test_api_error_str_names_the_code() -> None:
    error = error_from_response(404, None, b'{"error": {"code": "NOT_FOUND", "message": "gone"}}')
    assert str(error) == "NOT_FOUND: gone"
    assert isinstance(error, ApiError)


async def _read_request(stream: trio.SocketStream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:  # GET requests: no body
        chunk = await stream.receive_some(65536)
        assert chunk
        data += chunk


async def _answer(stream: trio.SocketStream) -> None:
    body = b'{"status": "ok"}'
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


async def _drops_the_second_request(  # noqa: ASYNC128
    rounds: int, *, task_status: trio.TaskStatus[int]
) -> None:
    """Answers one request, then closes the connection on the next one without an answer
    (the gateway's keep-alive timeout racing a request): the client must send it again
    on a new connection."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    task_status.started(listener.socket.getsockname()[1])
    async with listener:
        for _ in range(rounds):
            async with await listener.accept() as first:
                await _read_request(first)
                await _answer(first)
                await _read_request(first)
            async with await listener.accept() as second:
                await _read_request(second)
                await _answer(second)


async def test_a_request_the_server_dropped_on_a_reused_connection_is_sent_again() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_drops_the_second_request, 2)
            async with AsyncAllQ(f"http://127.0.0.1:{port}") as q:
                assert await q.health() == {"status": "ok"}
                assert await q.health() == {"status": "ok"}

            def sync_calls() -> None:
                with AllQ(f"http://127.0.0.1:{port}") as q:
                    assert q.health() == {"status": "ok"}
                    assert q.health() == {"status": "ok"}

            await trio.to_thread.run_sync(sync_calls)
