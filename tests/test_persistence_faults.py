"""Disk faults at the server level (persistence.md §9, §12 P6 and P2 under `always`).

Rules: the real server (serve + sessions + EngineShell) over MemoryListener, its journal a
real `LogWriter` over the fault-injecting `MemoryStorage`; real time (the storage calls
run in worker threads as in production). "Acknowledged" = the client got a success
answer; after the fault the storage is recovered and the jobs compared.
"""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from allq.store.log import SyncMode, open_log_writer
from allq.store.recovery import recover
from allq.store.storage import MemoryStorage
from tests.helpers.servers import Harness, memory_server


@asynccontextmanager
async def journaled_server(
    storage: MemoryStorage, sync: SyncMode = "always"
) -> AsyncIterator[Harness]:
    async with memory_server() as server:
        engine = server.shell.engine
        engine.changelog.enabled = True
        async with open_log_writer(
            storage,
            server_id="s1",
            version="test",
            seqs=engine.sequences,
            first_seq=1,
            prev=0,
            sync=sync,
            segment_bytes=4096,
        ) as writer:
            server.shell.journal = writer
            yield server


def recovered_ids(storage: MemoryStorage) -> set[str]:
    result = recover(storage)
    storage.unlock()
    live: set[str] = set()
    for change in result.changes:
        if change["t"] == "put":
            live.add(str(change["id"]))
        elif change["t"] == "delete":
            live.discard(str(change["id"]))
    return live


async def check_write_failed(server: Harness, kept: str) -> None:
    """Every mutation INTERNAL, reads working (§9)."""
    client = await server.client()
    requests: list[tuple[str, dict[str, Any]]] = [
        ("put", {"tube": "t", "body": b"later"}),
        ("delete", {"job_id": kept}),
        ("pause", {"tube": "t"}),
        ("kick", {"tube": "t", "bound": 1}),
    ]
    for op, fields in requests:
        answer = await client.call(op, **fields)
        assert answer.get("error") == "INTERNAL", (op, answer)
        assert "restart required" in answer["message"]
    assert (await client.result("ping"))["pong"] is True
    assert "jobs" in await client.result("stats")
    peeked = await client.result("peek", job_id=kept)
    assert peeked["id"] == kept
    assert (await client.result("stats_tube", tube="t"))["ready"] >= 1
    await client.aclose()


async def test_a_put_that_cannot_be_written_gets_internal_and_everything_after() -> None:
    storage = MemoryStorage(1)
    async with journaled_server(storage) as server:
        client = await server.client()
        first = await client.result("put", tube="t", body=b"one")
        storage.fail_write(1, errno.ENOSPC)
        answer = await client.call("put", tube="t", body=b"two")
        assert answer["error"] == "INTERNAL"
        assert server.shell.journal is not None
        assert server.shell.journal.write_failed
        await check_write_failed(server, first["id"])
        await client.aclose()
    storage.power_loss()
    assert recovered_ids(storage) == {first["id"]}


async def test_a_failed_fdatasync_under_always_acknowledges_nothing_after_it() -> None:
    storage = MemoryStorage(2)
    async with journaled_server(storage) as server:
        client = await server.client()
        first = await client.result("put", tube="t", body=b"one")
        storage.fail_fdatasync(1, errno.EIO)
        answer = await client.call("put", tube="t", body=b"two")
        assert answer["error"] == "INTERNAL"
        await check_write_failed(server, first["id"])
        await client.aclose()
    storage.power_loss()
    assert first["id"] in recovered_ids(storage)


async def test_short_writes_are_completed_and_acknowledged() -> None:
    storage = MemoryStorage(3)
    storage.short_writes = True
    async with journaled_server(storage) as server:
        client = await server.client()
        ids = {(await client.result("put", tube="t", body=b"x" * n))["id"] for n in range(30)}
        await client.aclose()
    assert recovered_ids(storage) == ids


async def test_failed_segment_creation_fails_the_server_for_good() -> None:
    storage = MemoryStorage(4)
    async with journaled_server(storage) as server:
        client = await server.client()
        storage.fail_create(1, errno.ENOSPC)  # the next segment, prepared when half full
        acknowledged: set[str] = set()
        for n in range(200):
            answer = await client.call("put", tube="t", body=b"y" * 100 + str(n).encode())
            if "error" in answer:
                assert answer["error"] == "INTERNAL"
                break
            acknowledged.add(answer["result"]["id"])
        else:
            raise AssertionError("no put failed")
        await check_write_failed(server, min(acknowledged))
        await client.aclose()
    storage.power_loss()
    assert acknowledged <= recovered_ids(storage)


async def test_power_loss_under_always_keeps_every_acknowledged_put() -> None:
    rng = random.Random(5)
    for round_ in range(3):
        storage = MemoryStorage(round_)
        acknowledged: set[str] = set()
        cut: list[tuple[set[str], MemoryStorage]] = []
        async with journaled_server(storage) as server:

            async def putter(client: Any, index: int, acknowledged: set[str]) -> None:
                for n in range(40):
                    body = f"{index}-{n}".encode() * rng.randint(1, 20)
                    answer = await client.call("put", tube=f"t{index % 3}", body=body)
                    acknowledged.add(answer["result"]["id"])

            clients = [await server.client() for _ in range(20)]
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(putter, clients[index], index, acknowledged)
                for _ in range(5):
                    await trio.sleep(rng.uniform(0.001, 0.02))
                    # a power loss now: what the disk holds, and what was acknowledged
                    cut.append((set(acknowledged), storage.survivor()))
            for client in clients:
                await client.aclose()
        assert len(acknowledged) == 800
        for known, survivor in cut:
            assert known <= recovered_ids(survivor)
        storage.power_loss()
        assert recovered_ids(storage) == acknowledged
