"""Failover end to end: real `allq server` processes, a real `allq gateway` process, HTTP.

Rules: real processes and sockets, real time, every wait bounded by `trio.fail_after`;
all processes are stopped (or killed) at the end of each test.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.helpers.cluster import make_keys
from tests.helpers.http import HttpClient
from tests.helpers.processes import AllqProcess, gateway_args, server_args


@dataclass
class ProcessCluster:
    keys: Path
    servers: list[AllqProcess]
    ports: list[int]
    gateway: AllqProcess
    address: tuple[str, int]


async def servers_up(client: HttpClient, expected: set[str]) -> None:
    while True:
        status, body = await client.request("GET", "/v1/servers")
        assert status == 200
        up = {s["id"] for s in body["servers"] if s["state"] in ("up", "suspect")}
        if expected <= up:
            return
        await trio.sleep(0.05)  # polling the API under test: it has no event to wait on


@asynccontextmanager
async def process_cluster(
    tmp_path: Path, n: int = 3, gateway_extra: tuple[str, ...] = ()
) -> AsyncIterator[ProcessCluster]:
    keys = make_keys(tmp_path / "keys")
    servers: list[AllqProcess] = []
    gateway: AllqProcess | None = None
    try:
        servers = [
            AllqProcess(tmp_path / f"s{i}.log", *server_args(keys, f"s{i}"))
            for i in range(1, n + 1)
        ]
        ports = [(await server.address())[1] for server in servers]
        gateway = AllqProcess(
            tmp_path / "gateway.log",
            *gateway_args(keys, [f"127.0.0.1:{p}" for p in ports], *gateway_extra),
        )
        address = await gateway.address()
        yield ProcessCluster(keys, servers, ports, gateway, address)
    finally:
        if gateway is not None:
            assert gateway.stop() == 0, gateway.log()
        for server in servers:
            server.stop()


async def test_killing_a_server_mid_load_fails_fast_and_it_rejoins(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with process_cluster(tmp_path) as cluster:
            admin = await HttpClient.connect(cluster.address)
            await servers_up(admin, {"s1", "s2", "s3"})
            statuses: list[tuple[str, int]] = []
            killed = trio.Event()
            after_kill_ok = 0

            async def worker(n: int) -> None:
                nonlocal after_kill_ok
                client = await HttpClient.connect(cluster.address)
                done: list[dict[str, Any]] = []
                for _ in range(60):
                    status, _ = await client.request(
                        "POST", "/v1/tubes/load/jobs", {"body": f"w{n}"}
                    )
                    statuses.append(("put", status))
                    status, body = await client.request(
                        "POST", "/v1/reserve", {"tubes": ["load"], "timeout": 0.5, "done": done}
                    )
                    statuses.append(("reserve", status))
                    done = (
                        [{"id": j["id"], "lease": j["lease"]} for j in body.get("jobs", [])]
                        if status == 200
                        else []
                    )
                    if killed.is_set() and status == 200:
                        after_kill_ok += 1
                await client.aclose()

            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(worker, n)
                while len(statuses) < 100:  # noqa: ASYNC110 (progress of the load, not an event)
                    await trio.sleep(0.01)
                cluster.servers[0].process.kill()  # kill -9 s1 mid-load
                killed.set()
            bad = [(op, s) for op, s in statuses if s not in (200, 201, 503)]
            assert bad == [], bad
            assert after_kill_ok > 50, "puts and reserves went on on the other servers"

            # A request for a job of the dead server fails fast with 503 and Retry-After.
            start = trio.current_time()
            status, body = await admin.request("GET", "/v1/jobs/s1," + "A" * 22)
            assert status == 503
            assert body["error"]["code"] == "NO_SERVER"
            assert trio.current_time() - start < 2.0

            # The server comes back on the same port and rejoins.
            cluster.servers[0].kill()
            cluster.servers[0] = AllqProcess(
                tmp_path / "s1-again.log", *server_args(cluster.keys, "s1", cluster.ports[0])
            )
            await cluster.servers[0].address()
            await servers_up(admin, {"s1", "s2", "s3"})
            status, body = await admin.request("POST", "/v1/tubes/after/pause", {})
            assert status == 200
            assert body["servers"] == 3
            await admin.aclose()


async def test_requester_disconnecting_mid_reserve_loses_no_job(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with process_cluster(tmp_path, n=2) as cluster:
            admin = await HttpClient.connect(cluster.address)
            await servers_up(admin, {"s1", "s2"})
            leaver = await trio.open_tcp_stream(*cluster.address)  # raw: we only send
            body = json.dumps({"tubes": ["dc"], "timeout": 30}).encode()
            await leaver.send_all(
                b"POST /v1/reserve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await waiting_reservers(admin, 1)
            await leaver.aclose()  # gone while its reserve waits on both servers
            await waiting_reservers(admin, 0)
            status, put = await admin.request("POST", "/v1/tubes/dc/jobs", {"body": "kept"})
            assert status == 201
            status, answer = await admin.request("POST", "/v1/reserve", {"tubes": ["dc"]})
            assert status == 200
            (job,) = answer["jobs"]
            assert job["id"] == put["id"]
            assert job["reserves"] == 1  # never handed to the requester that left
            await admin.aclose()


async def waiting_reservers(client: HttpClient, per_server: int) -> None:
    while True:
        _, stats = await client.request("GET", "/v1/stats")
        if all(s["waiting_reservers"] == per_server for s in stats["servers"].values()):
            return
        await trio.sleep(0.05)  # polling the API under test: it has no event to wait on


async def test_a_hung_server_is_marked_down_and_its_requests_freed(tmp_path: Path) -> None:
    """SIGSTOP: the server keeps its sockets but answers nothing; only probes can tell."""
    with trio.fail_after(60):
        async with process_cluster(
            tmp_path,
            n=2,
            gateway_extra=("--probe-interval", "0.2", "--probe-timeout", "0.5",
                           "--fail-after", "2", "--request-timeout", "30"),
        ) as cluster:  # fmt: skip
            admin = await HttpClient.connect(cluster.address)
            await servers_up(admin, {"s1", "s2"})
            stuck = await HttpClient.connect(cluster.address)
            hung = cluster.servers[0].process
            hung.send_signal(signal.SIGSTOP)
            try:
                start = trio.current_time()
                status, body = await stuck.request("GET", "/v1/jobs/s1," + "A" * 22)
                elapsed = trio.current_time() - start
                # freed when s1 was marked down, long before the 30 s request timeout
                assert (status, body["error"]["code"]) == (503, "NO_SERVER")
                assert elapsed < 10
                _, servers = await admin.request("GET", "/v1/servers")
                s1 = next(s for s in servers["servers"] if s["id"] == "s1")
                assert (s1["state"], s1["in_flight"]) == ("down", 0)
                status, put = await admin.request("POST", "/v1/tubes/h/jobs", {"body": "x"})
                assert (status, put["id"].split(",")[0]) == (201, "s2")
            finally:
                hung.send_signal(signal.SIGCONT)
            await servers_up(admin, {"s1", "s2"})
            await stuck.aclose()
            await admin.aclose()
