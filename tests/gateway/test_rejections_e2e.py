"""Rejected REST requests change nothing on real servers (semantics.md §13.1).

Rules: the REST app over the real gateway core over 2 real loopback servers; each
server's full engine snapshot (tests/helpers/engines.snapshot) is compared before and
after a series of requests that must all be rejected — by the REST layer, the core or a
server — each with its documented status and code.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import trio

from tests.gateway.rest import Rest, make_app
from tests.helpers.cluster import local_cluster
from tests.helpers.engines import diff, snapshot

MISSING = "A" * 22


def state(cluster: Any) -> list[dict[str, object]]:
    shots = []
    for server in cluster.servers:
        shot = snapshot(server.engine)
        shot.pop("now")  # real time moves on; everything else must not
        shots.append(shot)
    return shots


async def test_rejected_requests_leave_every_server_unchanged(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=2) as cluster:
            rest = Rest(make_app(cluster.gateway, max_body_bytes=4 * 1024 * 1024))
            ready = (await rest.post("/v1/tubes/t/jobs", {"body": "a"})).json["id"]
            held = (await rest.post("/v1/tubes/t/jobs", {"body": "b"})).json["id"]
            job = None
            while job is None or job["id"] != held:
                if job is not None:
                    await rest.post(f"/v1/jobs/{job['id']}/release", {"lease": job["lease"]})
                job = (await rest.post("/v1/reserve", {"tubes": ["t"]})).json["jobs"][0]
            server_of_held = held.split(",")[0]
            big = base64.b64encode(b"x" * (1_048_576 + 1)).decode()
            rejected: list[tuple[str, str, Any, int, str]] = [
                ("POST", "/v1/tubes/t/jobs", {"body": "x", "bogus": 1}, 400, "BAD_FORMAT"),
                ("POST", "/v1/tubes/t/jobs", {"priority": 2**32}, 400, "BAD_FORMAT"),
                ("POST", "/v1/tubes/bad name/jobs", {"body": "x"}, 400, "BAD_TUBE"),
                ("POST", "/v1/tubes/t/jobs", {"body_b64": big}, 413, "JOB_TOO_BIG"),
                ("POST", "/v1/tubes/fq-t/jobs", {"body": "x"}, 400, "BAD_FORMAT"),
                (
                    "POST",
                    "/v1/tubes/t/jobs",
                    {"parent_id": f"{server_of_held},{MISSING}"},
                    404,
                    "NOT_FOUND",
                ),
                ("POST", "/v1/tubes/t/jobs", {"parent_id": f"nosuch,{MISSING}"}, 404, "NOT_FOUND"),
                ("POST", "/v1/tubes/t/jobs", {"jobs": []}, 400, "BAD_FORMAT"),
                ("POST", f"/v1/jobs/{held}/done", {"lease": MISSING}, 409, "LEASE_EXPIRED"),
                ("POST", f"/v1/jobs/{ready}/touch", {"lease": MISSING}, 409, "LEASE_EXPIRED"),
                (
                    "POST",
                    f"/v1/jobs/{server_of_held},{MISSING}/done",
                    {"lease": MISSING},
                    404,
                    "NOT_FOUND",
                ),
                ("POST", f"/v1/jobs/{held}/done", {}, 400, "BAD_FORMAT"),
                (
                    "POST",
                    f"/v1/jobs/{held}/release",
                    {"lease": job["lease"], "delay": -1},
                    400,
                    "BAD_FORMAT",
                ),
                ("POST", "/v1/reserve", {"tubes": []}, 400, "BAD_FORMAT"),
                ("POST", "/v1/reserve", {"tubes": ["t"], "count": 0}, 400, "BAD_FORMAT"),
                ("POST", "/v1/reserve", {"tubes": ["t"], "timeout": 301}, 400, "BAD_FORMAT"),
                ("PUT", "/v1/tubes/t/shard-limit", {"limit": 2}, 400, "BAD_FORMAT"),
                ("PUT", "/v1/tubes/t/throttle", {"tps": "fast"}, 400, "BAD_FORMAT"),
                ("GET", f"/v1/jobs/{held[:-1]}", None, 400, "BAD_FORMAT"),
            ]
            before = state(cluster)
            for method, path, body, status, code in rejected:
                answer = await rest.request(method, path, body)
                assert (answer.status, answer.code) == (status, code), (method, path, answer.json)
            after = state(cluster)
            for server_before, server_after in zip(before, after, strict=True):
                assert server_before == server_after, diff(server_before, server_after)
            # and the held job is still held under its lease
            done = await rest.post(f"/v1/jobs/{held}/done", {"lease": job["lease"]})
            assert done.status == 200
