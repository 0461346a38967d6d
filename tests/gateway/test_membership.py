"""Run-time membership, settings re-applied on rejoin, throttle re-split, idempotent routing,
count collected across servers, and NO_SERVER — the gateway core over real loopback servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from allq.errors import BadFormat
from allq.gateway.errors import NoServer
from tests.helpers.cluster import LocalServer, eventually, local_cluster


async def test_add_drain_and_remove_servers_at_run_time(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=2) as cluster:
            gw = cluster.gateway
            extra = LocalServer("s3", cluster.keys, cluster.servers[0].nursery)
            await extra.start()
            added = await gw.add_server(extra.address)
            assert added["address"] == extra.address
            with pytest.raises(BadFormat):
                await gw.add_server(extra.address)
            with pytest.raises(BadFormat):
                await gw.add_server("no-port")
            await eventually(lambda: gw.links[extra.address].routable())
            assert {s["id"] for s in gw.servers()} == {"s1", "s2", "s3"}

            # drain s1: no new puts there, its jobs can still be reserved, then it goes away
            s1_job = cluster.servers[0].put("d", b"on s1")
            await gw.drain_server("s1")
            assert next(s for s in gw.servers() if s["id"] == "s1")["state"] == "draining"
            for _ in range(20):
                assert not (await gw.put("d", {}))["id"].startswith("s1,")
            jobs: list[dict[str, Any]] = []
            while not any(job["id"] == f"s1,{s1_job}" for job in jobs):
                jobs = await gw.reserve(["d"], count=50)
                for job in jobs:
                    await gw.job_op("done", job["id"], {"lease": job["lease"]})
            await eventually(lambda: "s1" not in {s["id"] for s in gw.servers()})

            # remove s2: refused while it holds jobs, unless forced
            cluster.servers[1].put("keep")
            with pytest.raises(BadFormat) as refused:
                await gw.remove_server("s2")
            assert refused.value.field == "force"
            await gw.remove_server("s2", force=True)
            assert {s["id"] for s in gw.servers()} == {"s3"}
            assert (await gw.put("d", {}))["id"].startswith("s3,")


async def test_settings_reach_a_server_that_was_down(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=2) as cluster:
            gw = cluster.gateway
            victim = cluster.servers[1]
            victim.kill()
            await eventually(lambda: not gw.links[victim.address].routable())
            assert (await gw.tube_control("pause", "cfg", {"duration": 600}))["servers"] == 1
            assert (await gw.tube_control("drain", "cfg", {}))["servers"] == 1
            reply = await gw.tube_control("throttle", "cfg", {"tps": 4.0})
            assert reply["per_server"] == {"s1": 4.0}
            await victim.start()  # a fresh, empty server on the same port

            def settled() -> bool:  # re-applied settings and the re-split throttle, all landed
                first, back = cluster.servers[0].engine, victim.engine
                if first is None or back is None or "cfg" not in back.tubes:
                    return False
                tube = back.tubes["cfg"]
                return (
                    tube.paused
                    and tube.draining
                    and tube.throttle_tps == 2.0
                    and first.tubes["cfg"].throttle_tps == 2.0
                )

            await eventually(settled)
            assert victim.engine is not None
            tube = victim.engine.tubes["cfg"]
            assert tube.paused
            assert tube.pause_until is not None
            assert 500 < tube.pause_until - victim.engine.now <= 600
            assert tube.draining


async def test_idempotent_puts_land_on_one_server_and_deduplicate(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=3) as cluster:
            gw = cluster.gateway
            for n in range(10):
                first = await gw.put("idem", {"idempotency_key": f"key-{n}"})
                again = await gw.put("idem", {"idempotency_key": f"key-{n}"})
                assert (again["id"], again["duplicate"]) == (first["id"], True)
            assert (await gw.tube_stats("idem"))["ready"] == 10


async def test_count_collects_across_servers(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=3) as cluster:
            for server in cluster.servers:
                server.put("many")
            jobs = await cluster.gateway.reserve(["many"], count=3)
            assert sorted(job["id"].split(",")[0] for job in jobs) == ["s1", "s2", "s3"]


async def test_no_routable_server_is_no_server(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=1) as cluster:
            gw = cluster.gateway
            cluster.servers[0].kill()
            await eventually(lambda: not gw.ready()[0])
            assert gw.ready() == (False, "no queue server is up")
            with pytest.raises(NoServer) as error:
                await gw.put("t", {})
            assert error.value.retry_after > 0
            with pytest.raises(NoServer):
                await gw.reserve(["t"], wait_s=1)
