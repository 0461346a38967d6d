"""1,000 concurrent long-polling workers against a real gateway process (real time).

Rules: 2 real `allq server` processes and a real `allq gateway` process; 1,000 HTTP
keep-alive connections from this process, each long-polling `POST /v1/reserve`; once all
wait, one batch put of 1,000 jobs; every worker must get exactly one distinct job and
finish it, with zero errors. Bounded by `fail_after`.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.gateway.test_failover import process_cluster, servers_up
from tests.helpers.http import HttpClient

WORKERS = 1000


async def test_thousand_long_poll_workers_zero_errors(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with process_cluster(tmp_path, n=2) as cluster:
            admin = await HttpClient.connect(cluster.address)
            await servers_up(admin, {"s1", "s2"})
            got: list[str] = []
            errors: list[object] = []
            connected = 0
            all_connected = trio.Event()

            async def worker() -> None:
                nonlocal connected
                client = await HttpClient.connect(cluster.address)
                connected += 1
                if connected == WORKERS:
                    all_connected.set()
                try:
                    status, body = await client.request(
                        "POST", "/v1/reserve", {"tubes": ["spike"], "timeout": 60}
                    )
                    if status != 200 or len(body["jobs"]) != 1:
                        errors.append((status, body))
                        return
                    job = body["jobs"][0]
                    got.append(job["id"])
                    status, body = await client.request(
                        "POST", f"/v1/jobs/{job['id']}/done", {"lease": job["lease"]}
                    )
                    if status != 200:
                        errors.append((status, body))
                except (OSError, trio.BrokenResourceError) as exc:
                    errors.append(repr(exc))  # reported below, with every other error
                finally:
                    await client.aclose()

            async with trio.open_nursery() as nursery:
                for _ in range(WORKERS):
                    nursery.start_soon(worker)
                await all_connected.wait()
                while True:  # every worker is waiting on both servers
                    _, stats = await admin.request("GET", "/v1/stats")
                    waiting = [s["waiting_reservers"] for s in stats["servers"].values()]
                    if waiting == [WORKERS, WORKERS]:
                        break
                    await trio.sleep(0.1)  # polling the system under test
                status, body = await admin.request(
                    "POST",
                    "/v1/tubes/spike/jobs",
                    {"jobs": [{"body": str(i)} for i in range(WORKERS)]},
                )
                assert status == 201
                assert all("id" in item for item in body["jobs"])
            assert errors == []
            assert len(got) == WORKERS
            assert len(set(got)) == WORKERS
            status, stats = await admin.request("GET", "/v1/tubes/spike")
            assert (stats["ready"], stats["reserved"], stats["total_completed"]) == (0, 0, WORKERS)
            await admin.aclose()
