"""Persistence through the real `allq server` process (persistence.md §12 P1, P3, P5, P7, P10).

Rules: real processes, real files, real TCP with real keys, real time with generous
guards; every process is stopped or killed and reaped. `kill -9` is SIGKILL for real.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from allq.errors import AllQError, TimedOut
from allq.wire.client import Client, open_client
from allq.wire.keyfiles import keygen, load_public_key, load_secret_key
from tests.helpers.processes import AllqProcess, server_args

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keygen(tmp_path / "keys", clients=1, force=False)
    return tmp_path / "keys"


def start(keys: Path, data: Path, log: Path, port: int = 0, *extra: str) -> AllqProcess:
    return AllqProcess(log, *server_args(keys, "p1", port), "--data-dir", str(data), *extra)


def run_server_once(keys: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """A server that is expected to refuse to start (it would serve forever otherwise)."""
    return subprocess.run(
        [sys.executable, "-m", "allq", *server_args(keys, "p1"), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@asynccontextmanager
async def client_of(keys: Path, server: AllqProcess) -> AsyncIterator[Client]:
    host, port = await server.address()
    client_keys = load_secret_key(keys / "client-1.key")
    async with open_client(host, port, client_keys, load_public_key(keys / "server.pub")) as client:
        yield client


def job_record(stats: dict[str, Any]) -> dict[str, Any]:
    """What must survive a restart (the reserves counter may under-count, §17)."""
    keep = ("id", "tube", "priority", "ttr", "expired_limit", "max_releases", "parent_id",
            "shard_key", "idempotency_key", "created_at", "due_at", "buried_at", "timeouts",
            "releases", "buries", "kicks", "limit", "children_started", "children_completed",
            "timeout_at", "body_bytes")  # fmt: skip
    record = {key: stats.get(key) for key in keep}
    record["state"] = "ready" if stats["state"] == "reserved" else stats["state"]
    return record


async def snapshot(client: Client) -> dict[str, Any]:
    tubes: list[str] = (await client.request("list_tubes"))["tubes"]
    jobs: dict[str, Any] = {}
    settings = {}
    order: dict[str, list[str]] = {}
    for tube in tubes:
        stats = await client.request("stats_tube", tube=tube)
        settings[tube] = (stats["paused"], stats["draining"], stats["throttle_tps"])
    for job_id in sorted(await all_ids(client, tubes)):
        jobs[job_id] = job_record(await client.request("stats_job", job_id=job_id))
    for tube in tubes:
        if tube == "work":
            continue  # its reserved job comes back in ready (R11), so its head may change
        try:
            order[tube] = [(await client.request("peek_ready", tube=tube))["id"]]
        except AllQError:
            order[tube] = []
    return {"jobs": jobs, "settings": settings, "heads": order}


async def all_ids(client: Client, tubes: list[str]) -> set[str]:
    """Every live job id, found through stats_job of ids the test recorded."""
    return set(KNOWN)


KNOWN: list[str] = []


async def populate(client: Client) -> None:
    KNOWN.clear()

    async def put(op: str = "put", **fields: Any) -> str:
        job_id = str((await client.request(op, **fields))["id"])
        KNOWN.append(job_id)
        return job_id

    for n in range(4):
        await put(tube="work", body=bytes([n]) * 10, priority=10 - n)
    await put(tube="work", body=b"\x00\xff binary", priority=1, idempotency_key="key-1")
    await put(tube="later", body=b"d", delay=500)
    await put(tube="fq-fair", body=b"f", shard_key="tenant-a")
    parent = await put("put_parent", tube="flow", limit=2, timeout=900)
    await put(tube="kids", parent_id=parent)
    noop = await put("put_parent", tube="flow", noop=True, timeout=900)
    await put(tube="kids", parent_id=noop)
    held = (await client.request("reserve", tubes=["work"]))[0]  # stays reserved
    buried = (await client.request("reserve", tubes=["work"]))[0]
    await client.request("bury", job_id=buried["id"], lease=buried["lease"], priority=7)
    released = (await client.request("reserve", tubes=["work"]))[0]
    await client.request("release", job_id=released["id"], lease=released["lease"], priority=3)
    done = (await client.request("reserve", tubes=["kids"]))[0]
    await client.request("done", job_id=done["id"], lease=done["lease"])
    KNOWN.remove(done["id"])
    await client.request("pause", tube="later", duration=800)
    await client.request("throttle", tube="work", tps=2.5)
    await client.request("drain", tube="fq-fair")
    assert held["id"] in KNOWN


@pytest.mark.parametrize("stop", ["graceful", "kill -9"])
async def test_restart_keeps_every_state(keys: Path, tmp_path: Path, stop: str) -> None:
    data = tmp_path / "data"
    with trio.fail_after(60):
        first = start(keys, data, tmp_path / "first.log")
        async with client_of(keys, first) as client:
            await populate(client)
            before = await snapshot(client)
        if stop == "graceful":
            assert first.stop() == 0
        else:
            first.process.send_signal(signal.SIGKILL)
            first.kill()
        second = start(keys, data, tmp_path / "second.log")
        try:
            async with client_of(keys, second) as client:
                after = await snapshot(client)
                duplicate = await client.request("put", tube="work", idempotency_key="key-1")
                assert duplicate["duplicate"] is True
                stats = await client.request("stats")
                assert stats["persistence"]["mode"] == "wal"
        finally:
            second.stop()
    assert after == before
    assert "recovered" in second.log()


async def test_kill_9_under_load_loses_no_acknowledged_job(keys: Path, tmp_path: Path) -> None:
    """P1: producers with idempotency keys, workers finishing jobs, SIGKILL mid-load."""
    data = tmp_path / "data"
    acked: dict[str, str] = {}  # idempotency key -> job id, put acknowledged
    attempted: list[str] = []  # every key sent (an unanswered put may still have landed)
    finished: set[str] = set()  # done sent (acknowledged or not: it may have landed)
    for sync in ("always", "interval", "never"):
        server = start(keys, data, tmp_path / f"{sync}.log", 0, "--sync", sync)
        mode = sync
        try:
            with trio.fail_after(60):
                async with client_of(keys, server) as client:

                    async def producer(name: str, mode: str = mode) -> None:
                        for n in range(10_000):
                            key = f"{mode}-{name}-{n}"
                            attempted.append(key)
                            result = await client.request("put", tube="load", idempotency_key=key)
                            acked[key] = result["id"]

                    async def worker() -> None:
                        while True:
                            try:
                                jobs = await client.request("reserve", tubes=["load"], timeout=1)
                            except TimedOut:
                                continue
                            finished.add(jobs[0]["id"])  # before: it may land unanswered
                            await client.request(
                                "done", job_id=jobs[0]["id"], lease=jobs[0]["lease"]
                            )

                    with trio.move_on_after(random.uniform(0.5, 1.0)):
                        async with trio.open_nursery() as nursery:
                            for name in ("a", "b", "c"):
                                nursery.start_soon(producer, name)
                            nursery.start_soon(worker)
                    server.process.send_signal(signal.SIGKILL)  # mid-load
        except* (trio.BrokenResourceError, AllQError):
            pass  # requests in flight when the server died: not acknowledged
        finally:
            server.kill()
    assert acked, "the load put nothing"
    restarted = start(keys, data, tmp_path / "final.log")
    try:
        with trio.fail_after(60):
            async with client_of(keys, restarted) as client:
                stored = await client.request("stats_tube", tube="load")
                held = stored["ready"] + stored["reserved"]
                live: set[str] = set()
                for key in attempted:  # every re-put below is a dedup probe
                    again = await client.request("put", tube="load", idempotency_key=key)
                    if key in acked:
                        assert again["duplicate"] is True, f"acknowledged put {key} was lost"
                        assert again["id"] == acked[key]
                    elif not again["duplicate"]:
                        continue  # never stored: the probe itself just made it
                    if again["state"] != "gone":
                        live.add(again["id"])
                    else:
                        assert again["id"] in finished, f"job {again['id']} vanished, no done"
                assert held == len(live), "a job nobody put, or a lost one"
    finally:
        restarted.stop()


async def test_second_server_on_the_same_directory_refuses(keys: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start(keys, data, tmp_path / "first.log")
    try:
        with trio.fail_after(60):
            await first.address()
            result = run_server_once(keys, data)
        assert result.returncode == 1
        assert f"is in use by another allq server (pid {first.process.pid})" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        first.stop()


async def test_corrupt_log_refuses_to_start_naming_file_and_offset(
    keys: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = start(keys, data, tmp_path / "first.log")
    with trio.fail_after(60):
        async with client_of(keys, first) as client:
            for n in range(3):
                await client.request("put", tube="t", body=b"body-%d" % n)
    assert first.stop() == 0
    segment = min(data.glob("log-*.aql"))
    raw = bytearray(segment.read_bytes())
    where = raw.index(b"body-0")
    raw[where] ^= 0x01  # one flipped bit in a body, followed by more records
    segment.write_bytes(bytes(raw))
    result = run_server_once(keys, data)
    assert result.returncode == 1
    assert segment.name in result.stderr
    assert "offset" in result.stderr
    assert "--repair" in result.stderr
    assert "Traceback" not in result.stderr


async def test_memory_only_server_says_so(keys: Path, tmp_path: Path) -> None:
    server = AllqProcess(tmp_path / "memory.log", *server_args(keys, "m1"))
    try:
        with trio.fail_after(60):
            async with client_of(keys, server) as client:
                stats = await client.request("stats")
                assert stats["persistence"]["mode"] == "memory"
    finally:
        server.stop()
    assert "persistence is off" in server.log()
