"""The local line protocol (api.md §4) against a real gateway with 2 real servers.

Every original action with its reply shape (the `response` node, the top-level `job` /
`jobs` node, string values), the v1 operations under their v1 names, errors on one line
with the connection kept, oversized lines, idle connections, the unix socket, the
connection limit, and 200 concurrent connections each pipelining requests.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import trio

from tests.compat.support import LineClient, compat_gateway

ID_RE = re.compile(r"s[12],[A-Za-z0-9_-]{22}")
MISSING = "s1," + "A" * 22


def line_job(job_id: str, body: str, tube: str, releases: str = "0") -> dict[str, str]:
    return {"job_id": job_id, "body": body, "tube": tube, "expireds": "0", "releases": releases}


def code(reply: Any) -> str:
    assert sorted(reply) == ["error"], reply
    assert sorted(reply["error"]) in (["code", "message"], ["code", "field", "message"])
    return str(reply["error"]["code"])


async def test_original_actions(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path) as g:
            c = await LineClient.tcp(g.line_tcp)
            async with c.stream:
                put = await c.call("put", {"tube": "a", "body": "b1", "ttl": 30, "priority": 5})
                job_id = put["response"]["job_id"]
                assert ID_RE.fullmatch(job_id)
                assert put == {
                    "response": {"action": "put", "job_id": job_id},
                    "job": {"job_id": job_id},
                }
                got = await c.call("get", {"tube": "a"})
                expected = line_job(job_id, "b1", "a")
                assert got == {"response": {"action": "get", "job": expected}, "job": expected}
                touched = await c.call("touch", {"job_id": job_id})
                assert touched == {"response": {"action": "touch", "job_id": job_id}}
                released = await c.call("release", {"job_id": job_id, "delay": "0"})
                assert released == {"response": {"action": "release", "job_id": job_id}}
                peeked = await c.call("peek", {"tube": "a"})
                expected = line_job(job_id, "b1", "a", releases="1")
                assert peeked == {"response": {"action": "peek", "job": expected}, "job": expected}
                assert (await c.call("get", {"tube": "a"}))["job"] == expected
                buried = await c.call("bury", {"job_id": job_id})
                assert buried == {"response": {"action": "bury", "job_id": job_id}}
                peeked = await c.call("peek", {"tube": "a", "buried": "true"})
                assert peeked["job"]["job_id"] == job_id
                kicked = await c.call("kick", {"tube": "a"})
                assert kicked == {"response": {"action": "kick", "job_id": job_id}}
                many = await c.call("get_multiple_jobs", {"tube": "a", "count": "5"})
                assert many == {
                    "response": {"action": "get", "jobs": [expected]},
                    "jobs": [expected],
                }
                done = await c.call("done", {"job_id": job_id})
                assert done == {"response": {"action": "done", "job_id": job_id}}
                empty = await c.call("get", {"tube": "a"})
                assert empty == {"response": {"action": "get", "job": {}}, "job": {}}
                assert await c.call("peek", {"tube": "a"}) == {
                    "response": {"action": "peek", "job": {}},
                    "job": {},
                }

                # get with delete: reserved and finished at once
                await c.call("put", {"tube": "a", "body": "b2"})
                got = await c.call("get", {"tube": "a", "delete": True})
                assert got["job"]["body"] == "b2"
                assert (await c.call("peek", {"tube": "a"}))["job"] == {}

                # delete, kick by id, pause/unpause, throttle, clear
                job_id = (await c.call("put", {"tube": "a", "body": "b3", "delay": 600}))[
                    "response"
                ]["job_id"]
                assert await c.call("kick", {"job_id": job_id}) == {
                    "response": {"action": "kick", "job_id": job_id}
                }
                assert await c.call("delete", {"job_id": job_id, "tube": "a"}) == {
                    "response": {"action": "delete", "job_id": job_id}
                }
                assert await c.call("pause", {"tube": "a"}) == {"response": {"action": "pause"}}
                await c.call("put", {"tube": "a", "body": "b4"})
                assert (await c.call("get", {"tube": "a"}))["job"] == {}
                assert await c.call("unpause", {"tube": "a"}) == {"response": {"action": "unpause"}}
                assert await c.call("throttle", {"tube": "a", "tps": 10}) == {
                    "response": {"action": "throttle", "value": "true"}
                }
                stats = await c.call("stats")
                assert sorted(stats) == ["s1", "s2"]
                for server in stats.values():
                    assert sorted(server["global"]) == ["action_count", "job_get", "job_put"]
                    assert server["a"]["throttle_size"] == "5.0"
                    assert all(isinstance(v, str) for v in server["a"].values())
                assert sum(int(s["a"]["ready"]) for s in stats.values()) == 1
                assert await c.call("clear", {"tube": "a", "cache_type": "all"}) == {}
                assert (await c.call("peek", {"tube": "a"}))["job"] == {}
                assert await c.call("ping") == {"s1": "true", "s2": "true"}

                # parents
                parent = await c.call(
                    "set_parent_job",
                    {"tube": "p", "body": "pp", "timeout": 60, "run_on_timeout": "false"},
                )
                pid = parent["response"]["job_id"]
                assert parent == {
                    "response": {
                        "action": "set_parent",
                        "job_id": pid,
                        "job": line_job(pid, "pp", "p"),
                    },
                    "job": line_job(pid, "pp", "p"),
                }
                await c.call("put", {"tube": "pc", "body": "c", "parent_id": pid})
                assert await c.call("set_children_started", {"job_id": pid}) == {
                    "response": {"action": "set_children_started", "job_id": pid}
                }
                assert (await c.call("get", {"tube": "pc", "delete": True}))["job"]["body"] == "c"
                assert (await c.call("get", {"tube": "p"}))["job"]["job_id"] == pid


async def test_errors_keep_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path, max_line_bytes=1000) as g:
            c = await LineClient.tcp(g.line_tcp)
            async with c.stream:
                put = await c.call("put", {"tube": "e", "body": "x"})
                ready = put["job"]["job_id"]
                cases: list[tuple[str, dict[str, Any] | None, str]] = [
                    ("put", {}, "BAD_FORMAT"),
                    ("put", {"tube": "e", "bogus": 1}, "BAD_FORMAT"),
                    ("put", {"tube": "bad tube"}, "BAD_TUBE"),
                    ("put", {"tube": "e", "parent_id": MISSING}, "NOT_FOUND"),
                    ("get", {"tube": "e", "delete": "yes"}, "BAD_FORMAT"),
                    ("get_multiple_jobs", {"tube": "e", "count": 0}, "BAD_FORMAT"),
                    ("done", {"job_id": ready}, "NOT_RESERVED"),
                    ("done", {"job_id": MISSING}, "NOT_FOUND"),
                    ("touch", {}, "BAD_FORMAT"),
                    ("release", {"job_id": ready}, "NOT_RESERVED"),
                    ("bury", {"job_id": "junk"}, "BAD_FORMAT"),
                    ("delete", {"job_id": MISSING}, "NOT_FOUND"),
                    ("kick", {"job_id": ready}, "NOT_FOUND"),
                    ("set_children_started", {"job_id": ready}, "NOT_FOUND"),
                    ("throttle", {"tube": "e"}, "BAD_FORMAT"),
                    ("pause", {}, "BAD_FORMAT"),
                    ("clear", {"tube": "e", "cache_type": "ready"}, "BAD_FORMAT"),
                    ("set_parent_job", {"tube": "e", "timeout": -1}, "BAD_FORMAT"),
                    ("peek", {"tube": "e", "buried": 2}, "BAD_FORMAT"),
                    ("stats", {"x": 1}, "BAD_FORMAT"),
                    ("fly", {}, "BAD_FORMAT"),
                    ("reserve", {"tubes": []}, "BAD_FORMAT"),
                    ("done", {"job_id": ready, "lease": "A" * 22}, "LEASE_EXPIRED"),
                    ("get_job", {"id": MISSING}, "NOT_FOUND"),
                    ("add_server", {"address": "h:1"}, "BAD_FORMAT"),
                ]
                for action, params, expected in cases:
                    assert code(await c.call(action, params)) == expected, (action, params)
                for raw in [
                    b"not json\n",
                    b"[1, 2]\n",
                    b'{"action": 5}\n',
                    b'{"action": "get", "params": []}\n',
                    b'{"action": "get", "extra": 1}\n',
                    b"\xff\xfe\n",
                ]:
                    await c.send_raw(raw)
                    assert code(await c.reply()) == "BAD_FORMAT", raw
                # An oversized line: JOB_TOO_BIG once, its rest skipped, then service as usual.
                huge = json.dumps({"action": "put", "params": {"tube": "e", "body": "x" * 5000}})
                await c.send_raw(huge[:2000].encode())
                await c.send_raw(huge[2000:].encode() + b"\n\n\r\n")
                await c.send(action="ping")
                assert code(await c.reply()) == "JOB_TOO_BIG"
                assert await c.reply() == {"s1": "true", "s2": "true"}  # blank lines: no reply
                await c.send_raw(b"x" * 1500 + b"\n")
                assert code(await c.reply()) == "JOB_TOO_BIG"
                # Nothing was stored by the rejected requests.
                assert (await c.call("get", {"tube": "e", "delete": True}))["job"][
                    "job_id"
                ] == ready
                assert (await c.call("get", {"tube": "e"}))["job"] == {}


async def test_v1_operations(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path) as g:
            c = await LineClient.unix(g.line_socket)
            async with c.stream:
                batch = await c.call(
                    "put", {"tube": "v", "jobs": [{"body": "1"}, {"body": "2", "priority": 1}]}
                )
                assert [job["state"] for job in batch["jobs"]] == ["ready", "ready"]
                first = await c.call("reserve", {"tubes": ["v"], "count": 1, "timeout": 1})
                (job,) = first["jobs"]
                # Priority orders jobs per server; the batch may spread over both servers.
                assert job["body"] in ("1", "2")
                other_body = {"1": "2", "2": "1"}[job["body"]]
                assert {"id", "lease", "state", "tube"} <= set(job)
                touched = await c.call("touch", {"job_id": job["id"], "lease": job["lease"]})
                assert touched["id"] == job["id"]
                assert touched["deadline_in_s"] > 0
                done = await c.call("done", {"job_id": job["id"], "lease": job["lease"]})
                assert done == {"id": job["id"], "state": "gone"}
                rest = await c.call("reserve_tube", {"tube": "v", "count": 5, "timeout": 0})
                (other,) = rest["jobs"]
                view = await c.call("get_job", {"job_id": other["id"], "encoding": "base64"})
                assert view["body_b64"] == base64.b64encode(other_body.encode()).decode()
                assert view["state"] == "reserved"
                released = await c.call(
                    "release", {"job_id": other["id"], "lease": other["lease"], "delay": 60}
                )
                assert released == {"id": other["id"], "state": "delayed"}
                peek = await c.call("peek_tube", {"tube": "v", "state": "delayed"})
                assert peek["id"] == other["id"]
                assert await c.call("kick_tube", {"tube": "v", "bound": 5}) == {"kicked": 1}
                tubes = await c.call("list_tubes")
                assert {"name": "v", "ready": 1}.items() <= tubes["tubes"][0].items()
                # A blocking reserve answers when a job arrives through another connection.
                async with trio.open_nursery() as nursery:
                    results: list[Any] = []

                    async def wait() -> None:
                        results.append(await c.call("reserve", {"tubes": ["w"], "timeout": 10}))

                    nursery.start_soon(wait)
                    while not any(s.waiters() for s in g.served.cluster.servers):  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    other_conn = await LineClient.tcp(g.line_tcp)
                    async with other_conn.stream:
                        await other_conn.call("put", {"tube": "w", "body": "late"})
                assert [job["body"] for job in results[0]["jobs"]] == ["late"]


async def test_idle_connections_stay_and_the_limit_holds(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path, max_connections=3) as g:
            clients = [await LineClient.tcp(g.line_tcp) for _ in range(3)]
            for c in clients:
                assert await c.call("ping") == {"s1": "true", "s2": "true"}
            extra = await LineClient.unix(g.line_socket)
            async with extra.stream:
                assert code(await extra.reply()) == "OVERLOADED"
                assert await extra.stream.receive_some(10) == b""  # then closed
            await trio.sleep(3.5)  # longer than the original's 3 s read timeout
            for c in clients:
                assert (await c.call("get", {"tube": "idle"}))["job"] == {}
            await clients[0].aclose()
            while True:  # the slot is given back once the gateway sees the close
                again = await LineClient.tcp(g.line_tcp)
                async with again.stream:
                    await again.send("ping")
                    reply = await again.reply()
                if "error" not in reply:
                    break
            for c in clients[1:]:
                await c.aclose()


async def test_200_connections_pipelining(tmp_path: Path) -> None:
    connections, per_connection = 200, 10
    with trio.fail_after(35):
        async with compat_gateway(tmp_path) as g:
            seen: list[str] = []

            async def one(n: int) -> None:
                c = await (LineClient.unix(g.line_socket) if n % 2 else LineClient.tcp(g.line_tcp))
                async with c.stream:
                    lines = b"".join(
                        json.dumps(
                            {"action": "put", "params": {"tube": "pipe", "body": f"{n}-{i}"}}
                        ).encode()
                        + b"\n"
                        for i in range(per_connection)
                    )
                    await c.send_raw(lines)  # every put at once, then the replies in order
                    ids = [(await c.reply())["job"]["job_id"] for _ in range(per_connection)]
                    assert len(set(ids)) == per_connection
                    gets = b"".join(
                        b'{"action": "get", "params": {"tube": "pipe", "delete": true}}\n'
                        for _ in range(per_connection)
                    )
                    await c.send_raw(gets)
                    for _ in range(per_connection):
                        job = (await c.reply())["job"]
                        if job:
                            seen.append(job["body"])

            async with trio.open_nursery() as nursery:
                for n in range(connections):
                    nursery.start_soon(one, n)
            c = await LineClient.tcp(g.line_tcp)
            async with c.stream:
                while True:  # what the racing gets missed is still queued
                    job = (await c.call("get", {"tube": "pipe", "delete": True}))["job"]
                    if not job:
                        break
                    seen.append(job["body"])
            expected = {f"{n}-{i}" for n in range(connections) for i in range(per_connection)}
            assert len(seen) == len(expected)
            assert set(seen) == expected
