"""Loopback tests of `serve_rest` and `WorkerPool` with a real HTTP/1.1 client.

The client drives an `h11.Connection` over `trio.open_tcp_stream` and reads each response
by Content-Length (Hypercorn does not honour `Connection: close`, design.md pitfall 14);
every read has a deadline (pitfall 15), and client streams are closed before shutdown so
the graceful drain is quick (pitfall 13). Real time, generous `fail_after` (pitfall 23).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from allq.gateway.serve import WorkerPool, hypercorn_config, listening_socket, serve_rest
from tests.gateway.fakes import FakeCore
from tests.gateway.rest import make_app
from tests.helpers.http import HttpClient


async def connect(address: tuple[str, int]) -> HttpClient:
    return await HttpClient.connect(address)


async def test_serve_rest_on_port_0_serves_long_polls_and_stops_gracefully() -> None:
    core = FakeCore()
    stop = trio.Event()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[tuple[str, int]]) -> None:  # noqa: ASYNC128
        try:
            await serve_rest(
                make_app(core),
                port=0,
                shutdown_trigger=stop.wait,
                graceful_timeout_s=0.5,
                keep_alive_timeout_s=0.3,
                task_status=task_status,
            )
        finally:
            stopped.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(run)
            assert host == "127.0.0.1"
            assert port > 0
            client = await connect((host, port))
            async with client:
                assert (await client.request("GET", "/healthz"))[0] == 200
                results: list[tuple[int, Any]] = []

                async def long_poll() -> None:
                    results.append(
                        await client.request("POST", "/v1/reserve", {"tubes": ["t"], "timeout": 5})
                    )

                async with trio.open_nursery() as inner:
                    inner.start_soon(long_poll)
                    # Longer than the keep-alive timeout: a waiting request is not idle.
                    await trio.sleep(0.6)
                    other = await connect((host, port))
                    async with other:
                        status, put = await other.request("POST", "/v1/tubes/t/jobs", {"body": "x"})
                        assert status == 201
                ((status, answer),) = results
                assert status == 200
                assert [job["id"] for job in answer["jobs"]] == [put["id"]]
                status, missing = await client.request("GET", "/nowhere")
                assert (status, missing) == (404, {"error": "not found"})
            start = trio.current_time()
            stop.set()
            await stopped.wait()
            assert trio.current_time() - start < 5


async def _worker(sock: socket.socket, shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    await serve_rest(
        make_app(FakeCore()), sock=sock, shutdown_trigger=shutdown_trigger, graceful_timeout_s=0.5
    )


async def test_worker_pool_serves_one_port_from_several_processes() -> None:
    sock = listening_socket("127.0.0.1", 0)
    address = sock.getsockname()
    pool = WorkerPool(2, _worker, sock)
    try:
        pool.start()
        pids: set[int] = set()
        with trio.fail_after(60):
            while len(pids) < 2:
                try:
                    client = await connect(address)
                except OSError:
                    await trio.sleep(0.1)
                    continue
                async with client:
                    status, health = await client.request("GET", "/healthz")
                assert status == 200
                pids.add(health["pid"])
        assert pids == {p.pid for p in pool.processes}
    finally:
        with trio.move_on_after(30, shield=True):
            code = await trio.to_thread.run_sync(pool.stop, 20.0)
        sock.close()
    assert code == 0
    assert [p.exitcode for p in pool.processes] == [0, 0]


def test_access_log_given_to_hypercorn_only_when_it_would_write() -> None:
    logger = logging.getLogger("allq.gateway.access")
    before = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert hypercorn_config(graceful_timeout_s=1).accesslog is logger
        assert hypercorn_config(graceful_timeout_s=1, access_log=False).accesslog is None
        logger.setLevel(logging.WARNING)
        assert hypercorn_config(graceful_timeout_s=1).accesslog is None
    finally:
        logger.setLevel(before)
