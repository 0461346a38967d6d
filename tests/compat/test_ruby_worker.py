"""1,000 jobs through the legacy REST routes, driven the way the original's Ruby clients
(Backburner-allq over the `allq_rest` gem) behave: base64-encoded JSON bodies put with
`POST /job`, workers polling `GET /job?tube=` and sleeping a random while when it answers
`{}`, and `DELETE /job?job_id=` once a job is performed. None may be lost or repeated.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import trio

from allq.client.raw import JsonHttp
from tests.compat.support import compat_gateway
from tests.helpers.http import HttpClient

JOBS = 1000
WORKERS = 8
TUBE = "backburner.worker.queue.default"


def encode(n: int) -> str:
    payload = {"class": "ImageJob", "args": [n, "żółw"]}
    return base64.b64encode(json.dumps(payload).encode()).decode()


async def test_ruby_style_workers_lose_nothing(tmp_path: Path) -> None:
    # 3,000 legacy requests: ~15 s on an idle 2-core box, 30-40 s on a busy one; the guard
    # only catches a hang (real time, generous, design.md).
    with trio.fail_after(120):
        async with compat_gateway(tmp_path) as g:
            performed: list[int] = []
            produced = trio.Event()

            async def producer() -> None:
                http = await JsonHttp.connect(g.address)
                try:
                    for n in range(JOBS):
                        body = {"tube": TUBE, "body": encode(n), "ttl": 120, "priority": 5}
                        status, answer = await http.request("POST", "/job", body)
                        assert status == 200
                        assert answer["action"] == "put"
                finally:
                    await http.aclose()
                produced.set()

            async def worker() -> None:
                http = await JsonHttp.connect(g.address)
                try:
                    while not (produced.is_set() and len(performed) >= JOBS):
                        status, job = await http.request("GET", f"/job?tube={TUBE}")
                        assert status == 200
                        if not job:
                            await trio.sleep(random.random() * 0.05)  # the gem's rand() * 3
                            continue
                        payload = json.loads(base64.b64decode(job["body"]))
                        assert payload["class"] == "ImageJob"
                        performed.append(payload["args"][0])
                        status, deleted = await http.request("DELETE", f"/job?job_id={job['id']}")
                        assert (status, deleted) == (200, {"action": "delete", "job_id": job["id"]})
                finally:
                    await http.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                for _ in range(WORKERS):
                    nursery.start_soon(worker)
            assert sorted(performed) == list(range(JOBS))  # none lost, none twice
            http = await HttpClient.connect(g.address)
            async with http:
                _, stats = await http.request("GET", "/stats")
                left = [t for s in stats for t in s["stats"] if t["tube"] == TUBE]
                assert {s["server_name"] for s in stats} == {"s1", "s2"}
                for tube in left:
                    assert (tube["ready"], tube["reserved"], tube["delayed"]) == (0, 0, 0)
                assert sum(s["job_put"] for s in stats) == JOBS
