"""The gateway core against 3 real queue servers on loopback (real time, fail_after guards).

Rules: no HTTP here: the core's methods are called directly; servers are real
`serve()` instances with real keys and sockets (tests/helpers/cluster.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from allq.errors import NotFound
from allq.gateway.errors import NoServer
from tests.helpers.cluster import eventually, local_cluster

pytestmark = pytest.mark.filterwarnings("error")


async def test_puts_spread_and_every_job_comes_back(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            ids = [(await gw.put("t", {"body": f"{i}".encode()}))["id"] for i in range(60)]
            servers = {job_id.split(",")[0] for job_id in ids}
            assert servers == {"s1", "s2", "s3"}
            seen = set()
            for _ in ids:
                jobs = await gw.reserve(["t"], wait_s=0)
                assert len(jobs) == 1
                seen.add(jobs[0]["id"])
                await gw.job_op("done", jobs[0]["id"], {"lease": jobs[0]["lease"]})
            assert seen == set(ids)
            assert await gw.reserve(["t"], wait_s=0) == []


async def test_no_false_empty_when_only_one_server_has_the_job(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            for server in cluster.servers:  # a job on exactly one server, each time
                server.put("lonely", server.name.encode())
                for _ in range(5):  # whatever order the servers are asked in
                    jobs = await gw.reserve(["lonely"], wait_s=0)
                    assert [job["body"] for job in jobs] == [server.name.encode()]
                    await gw.job_op("release", jobs[0]["id"], {"lease": jobs[0]["lease"]})
                job = (await gw.reserve(["lonely"]))[0]
                await gw.job_op("done", job["id"], {"lease": job["lease"]})


async def test_long_poll_picks_up_a_new_job_on_any_server(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            got: list[object] = []

            async def worker() -> None:
                got.extend(await gw.reserve(["lp"], wait_s=20))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker)
                await trio.sleep(0.3)  # the worker is waiting on every server by now
                start = trio.current_time()
                cluster.servers[2].put("lp", b"late")
            assert len(got) == 1
            assert trio.current_time() - start < 1.0
            # nothing stranded: the other two servers' waits are cancelled
            await eventually(lambda: all(s.waiters() == 0 for s in cluster.servers))
            assert (await gw.tube_stats("lp"))["reserved"] == 1


async def test_children_go_to_the_parents_server(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            parent = await gw.put_parent("p", {"limit": 2})
            server = parent["id"].split(",")[0]
            children = [await gw.put("c", {"parent_id": parent["id"]}) for _ in range(4)]
            assert {child["id"].split(",")[0] for child in children} == {server}
            stats = await gw.job_op("stats_job", parent["id"], {})
            assert stats["children_started"] == 4
            with pytest.raises(NotFound):
                await gw.put("c", {"parent_id": "s9," + "A" * 22})


async def test_tube_wide_operations_reach_every_server_and_stats_add_up(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            for _ in range(30):
                await gw.put("wide", {})
            stats = await gw.tube_stats("wide")
            assert stats["ready"] == 30
            assert sum(s["ready"] for s in stats["servers"].values()) == 30
            assert (await gw.tube_control("pause", "wide", {}))["servers"] == 3
            assert await gw.reserve(["wide"], wait_s=0) == []
            assert all(
                s.engine is not None and s.engine.tubes["wide"].paused for s in cluster.servers
            )
            assert (await gw.tube_control("unpause", "wide", {}))["servers"] == 3
            reply = await gw.tube_control("throttle", "wide", {"tps": 3.0})
            assert reply["per_server"] == {"s1": 1.0, "s2": 1.0, "s3": 1.0}
            cleared = await gw.tube_control("clear", "wide", {})
            assert cleared["ready"] == 30
            assert cleared["servers"] == 3
            assert (await gw.tube_stats("wide"))["ready"] == 0


async def test_server_down_fails_fast_and_rejoins(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            victim = cluster.servers[0]
            job = await gw.put("t", {"idempotency_key": "k-1"})
            while not job["id"].startswith("s1,"):
                job = await gw.put("t", {})
            waiting: list[object] = []

            async def wait_forever() -> None:
                waiting.extend(await gw.reserve(["never"], wait_s=25))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_forever)
                await trio.sleep(0.3)
                victim.kill()
                # requests to the dead server fail fast with NO_SERVER …
                while gw.links[victim.address].routable():
                    await gw.changed.wait()
                with pytest.raises(NoServer):
                    await gw.job_op("peek", job["id"], {})
                # … and puts and reserves carry on with the others
                for _ in range(10):
                    put = await gw.put("t", {})
                    assert not put["id"].startswith("s1,")
                # the dead server comes back on the same port and rejoins
                await victim.start()
                while not gw.links[victim.address].routable():
                    await gw.changed.wait()
                nursery.cancel_scope.cancel()
            assert waiting == []
            await gw.tube_control("pause", "t", {})
            assert victim.engine is not None
            assert victim.engine.tubes["t"].paused


async def test_done_many_batches_per_server_in_order_with_errors_per_item(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            for i in range(30):
                await gw.put("d", {"body": f"{i}".encode()})
            jobs = await gw.reserve(["d"], count=30, wait_s=0)
            jobs += await gw.reserve(["d"], count=30, wait_s=0)
            jobs += await gw.reserve(["d"], count=30, wait_s=0)
            assert len(jobs) == 30
            assert {job["id"].split(",")[0] for job in jobs} == {"s1", "s2", "s3"}
            first, second = jobs[0], jobs[1]
            items: list[tuple[str, str | None]] = [(job["id"], job["lease"]) for job in jobs]
            items += [
                (first["id"], first["lease"]),  # again: the first one finished it
                ("s9," + first["id"].split(",")[1], None),  # no such server
                (second["id"], "L" * 22),  # a wrong lease, after the right one
            ]
            results = await gw.done_many(items)
            assert results[:30] == [{"id": job["id"], "state": "gone"} for job in jobs]
            assert [r["id"] for r in results[30:]] == [i for i, _ in items[30:]]
            assert [r["error"]["code"] for r in results[30:]] == ["NOT_FOUND"] * 3
            stats = await gw.tube_stats("d")
            assert (stats["reserved"], stats["total_completed"]) == (0, 30)
            # a server that is down: its items answer NO_SERVER, the others are done
            await gw.put("d", {})
            mine: list[dict[str, Any]] = []
            while len({job["id"].split(",")[0] for job in mine}) < 2:
                await gw.put("d", {})
                mine += await gw.reserve(["d"], count=10, wait_s=0)
            victim = next(s for s in cluster.servers if mine[0]["id"].startswith(f"{s.name},"))
            victim.kill()
            while gw.links[victim.address].routable():
                await gw.changed.wait()
            results = await gw.done_many([(job["id"], job["lease"]) for job in mine])
            on_victim = [job["id"].startswith(f"{victim.name},") for job in mine]
            codes = [r.get("error", {}).get("code", r.get("state")) for r in results]
            assert codes == ["NO_SERVER" if dead else "gone" for dead in on_victim]


async def test_reserve_asks_the_server_of_the_put_first(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            asked: list[str] = []
            for link in gw.links.values():
                real = link.call

                async def spy(op: str, *args: Any, _real: Any = real, _key: str = link.key,
                              **fields: Any) -> Any:  # fmt: skip
                    if op == "reserve":
                        asked.append(_key)
                    return await _real(op, *args, **fields)

                link.call = spy  # type: ignore[method-assign,assignment]
            by_name = {server.name: server.address for server in cluster.servers}
            for i in range(20):
                put = await gw.put("h", {"body": f"{i}".encode()})
                asked.clear()
                (job,) = await gw.reserve(["h"], wait_s=0)
                assert job["id"] == put["id"]
                assert asked == [by_name[put["id"].split(",")[0]]]  # one request, the right one
                await gw.job_op("done", job["id"], {"lease": job["lease"]})


async def test_a_wrong_hint_costs_a_request_never_a_false_empty(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with local_cluster(tmp_path) as cluster:
            gw = cluster.gateway
            put = await gw.put("w", {})
            hinted = next(s for s in cluster.servers if put["id"].startswith(f"{s.name},"))
            other = next(s for s in cluster.servers if s is not hinted)
            # the hinted job goes away behind the gateway's back; another server gets one
            assert hinted.shell is not None
            hinted.shell.call("delete", {"job_id": put["id"].split(",")[1]})
            other.put("w", b"elsewhere")
            assert gw.hints.likely(hinted.address, ["w"]) == 1
            (job,) = await gw.reserve(["w"], wait_s=0)
            assert job["body"] == b"elsewhere"
            assert gw.hints.likely(hinted.address, ["w"]) == 0  # the empty answer reset it
