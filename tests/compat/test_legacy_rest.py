"""The legacy AllQ REST routes (api.md §3) against a real gateway with 2 real servers.

`test_transcript` replays a recorded request/response transcript that visits every route
and checks each answer field by field (same keys, same values; `J`/`P`/... stand for the
job ids the transcript learns as it goes). The error tests check status and the legacy
error shape `{"error": "<message>"}` for each route.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import trio

from tests.client_support import serving_gateway
from tests.compat.support import compat_gateway
from tests.helpers.http import HttpClient

ID_RE = re.compile(r"s[12],[A-Za-z0-9_-]{22}")
MISSING = "s1," + "A" * 22


class Var:
    """A job id in the transcript: bound on first sight, then it must be the same id."""

    def __init__(self, name: str) -> None:
        self.name = name


J, K, L, M, P, C = (Var(n) for n in "JKLMPC")


def check(expected: Any, actual: Any, ids: dict[str, str], where: str = "") -> None:
    if isinstance(expected, Var):
        assert isinstance(actual, str), f"{where}: {actual!r} is not an id"
        assert ID_RE.fullmatch(actual), f"{where}: {actual!r} is not a job id"
        bound = ids.setdefault(expected.name, actual)
        assert bound == actual, f"{where}: {actual} is not {expected.name} = {bound}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert sorted(actual) == sorted(expected), f"{where}: fields {sorted(actual)}"
        for key, value in expected.items():
            check(value, actual[key], ids, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            check(e, a, ids, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected), f"{where}: {actual!r} is not {expected!r}"
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def path_of(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w)\}", lambda m: ids[m.group(1)], template)


B64 = base64.b64encode(b"hello \x00\xff").decode()


def job(var: Var, body: str, tube: str, *, expireds: int = 0, releases: int = 0) -> dict[str, Any]:
    return {"id": var, "body": body, "tube": tube, "expireds": expireds, "releases": releases}


# (method, path, request body, status, response): one line per request, in order.
TRANSCRIPT: list[tuple[str, str, Any, int, Any]] = [
    # put, get, touch, release with delay 0, peek, get (tube_name), bury, peek buried, kick
    ("POST", "/job", {"tube": "tr", "body": B64, "ttl": 30, "delay": 0, "priority": 5},
     200, {"action": "put", "job_id": J}),
    ("GET", "/job?tube=tr", None, 200, job(J, B64, "tr")),
    ("PUT", "/touch?job_id={J}", None, 200, {"action": "touch", "job_id": J}),
    ("PUT", "/release?job_id={J}&delay=0", None, 200, {"action": "release", "job_id": J}),
    ("GET", "/peek?tube=tr", None, 200, job(J, B64, "tr", releases=1)),
    ("GET", "/job?tube_name=tr", None, 200, job(J, B64, "tr", releases=1)),
    ("PUT", "/bury?job_id={J}", None, 200, {"action": "bury", "job_id": J}),
    ("GET", "/job?tube=tr", None, 200, {}),
    ("GET", "/peek?tube=tr&buried=true", None, 200, job(J, B64, "tr", releases=1)),
    ("PUT", "/kick?tube=tr", None, 200, {"action": "kick", "job_id": J}),
    ("GET", "/multiple_job?tube=tr&count=1", None, 200,
     {"jobs": [job(J, B64, "tr", releases=1)]}),
    ("PUT", "/done?job_id={J}", None, 200, {"action": "done", "job_id": J}),
    ("GET", "/job?tube=tr", None, 200, {}),
    ("GET", "/multiple_job?tube=tr&count=5", None, 200, {"jobs": []}),
    # release with a delay, then kick by job id
    ("POST", "/job", {"tube": "tr", "body": "k"}, 200, {"action": "put", "job_id": K}),
    ("GET", "/job?tube=tr", None, 200, job(K, "k", "tr")),
    ("PUT", "/release?job_id={K}&delay=600", None, 200, {"action": "release", "job_id": K}),
    ("GET", "/job?tube=tr", None, 200, {}),
    ("PUT", "/kick?job_id={K}", None, 200, {"action": "kick", "job_id": K}),
    ("GET", "/job?tube=tr&delete=true", None, 200, job(K, "k", "tr", releases=1)),
    ("GET", "/job?tube=tr", None, 200, {}),
    ("GET", "/peek?tube=tr", None, 200, {}),
    ("PUT", "/kick?tube=tr", None, 200, {"action": "kick"}),
    # a multi-byte body, delete of a ready job
    ("POST", "/job", {"tube": "tr", "body": "żółw ✓"}, 200, {"action": "put", "job_id": L}),
    ("DELETE", "/job?job_id={L}", None, 200, {"action": "delete", "job_id": L}),
    ("GET", "/job?tube=tr", None, 200, {}),
    # pause / unpause on every server, throttle
    ("PUT", "/pause?tube=tr", None, 200, {"action": "pause"}),
    ("POST", "/job", {"tube": "tr", "body": "m"}, 200, {"action": "put", "job_id": M}),
    ("GET", "/job?tube=tr", None, 200, {}),
    ("PUT", "/unpause?tube=tr", None, 200, {"action": "unpause"}),
    ("POST", "/throttle", {"tube": "tr", "tps": 100}, 200, {"action": "throttle", "value": "true"}),
    ("GET", "/multiple_job?tube_name=tr&count=3&delete=true", None, 200,
     {"jobs": [job(M, "m", "tr")]}),
    # parents
    ("POST", "/parent_job",
     {"tube": "trp", "body": "p", "ttl": 30, "priority": 5, "timeout": 60,
      "run_on_timeout": False, "limit": 1},
     200, {"action": "set_parent", "job_id": P, "job": job(P, "p", "trp")}),
    ("POST", "/job", {"tube": "trc", "body": "c", "parent_id": "{P}"}, 200,
     {"action": "put", "job_id": C}),
    ("PUT", "/set_children_started?job_id={P}", None, 200,
     {"action": "set_children_started", "job_id": P}),
    ("GET", "/job?tube=trc&delete=true", None, 200, job(C, "c", "trc")),
    ("GET", "/job?tube=trp&delete=true", None, 200, job(P, "p", "trp")),
    # clear
    ("POST", "/job", {"tube": "tr", "body": "gone"}, 200, {"action": "put", "job_id": Var("X")}),
    ("DELETE", "/tube?tube=tr", None, 200, {}),
    ("GET", "/peek?tube=tr", None, 200, {}),
]  # fmt: skip


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return path_of(value, ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


async def _puts_reach_both_servers_and_come_back(http: HttpClient) -> None:
    """Legacy puts spread over both servers and every one comes back by its tube. (Which
    server takes a put is the gateway's choice, the less busy of two: the transcript's
    few puts may all land on one, so this puts until both were used.)"""
    put: set[str] = set()
    for _ in range(200):
        status, body = await http.request("POST", "/job", {"tube": "spread", "body": "x"})
        assert status == 200, body
        put.add(body["job_id"])
        if {job_id.split(",")[0] for job_id in put} == {"s1", "s2"}:
            break
    assert {job_id.split(",")[0] for job_id in put} == {"s1", "s2"}
    got = set()
    for _ in put:
        status, body = await http.request("GET", "/job?tube=spread&delete=true")
        assert status == 200, body
        got.add(body["id"])
    assert got == put
    assert await http.request("GET", "/job?tube=spread") == (200, {})


async def test_transcript(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path) as g:
            http = await HttpClient.connect(g.address)
            async with http:
                ids: dict[str, str] = {}
                for n, (method, path, body, status, expected) in enumerate(TRANSCRIPT):
                    where = f"#{n} {method} {path}"
                    got = await http.request(method, path_of(path, ids), _fill(body, ids))
                    assert got[0] == status, f"{where}: {got}"
                    check(expected, got[1], ids, where)
                assert len(set(ids.values())) == len(ids)
                assert {i.split(",")[0] for i in ids.values()} <= {"s1", "s2"}
                await _puts_reach_both_servers_and_come_back(http)

                # GET /stats: one entry per server, the original's fields, throttle_size
                # (the per-server share of 100 tps) where a throttle is set.
                await http.request("POST", "/job", {"tube": "st", "body": "1"})
                status, stats = await http.request("GET", "/stats")
                assert status == 200
                assert [s["server_name"] for s in stats] == ["s1", "s2"]
                ready = 0
                for server in stats:
                    assert sorted(server) == [
                        "action_count", "job_get", "job_put", "server_name", "stats",
                    ]  # fmt: skip
                    assert all(isinstance(server[k], int) for k in ("action_count", "job_put"))
                    assert server["job_put"] >= 1
                    by_tube = {t["tube"]: t for t in server["stats"]}
                    tr = by_tube["tr"]
                    assert tr["throttle_size"] == 50.0
                    assert sorted(tr) == sorted(
                        ["tube", "ready", "reserved", "delayed", "buried", "parents",
                         "throttle_size", "avg", "tps"]
                    )  # fmt: skip
                    if "st" in by_tube:
                        assert "throttle_size" not in by_tube["st"]
                        ready += by_tube["st"]["ready"]
                assert ready == 1


BAD = "the field 'tube' is required"


async def test_errors_have_real_statuses(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with compat_gateway(tmp_path) as g:
            http = await HttpClient.connect(g.address)
            async with http:
                _, put = await http.request("POST", "/job", {"tube": "e", "body": "x"})
                ready = put["job_id"]
                _, parent = await http.request(
                    "POST", "/parent_job", {"tube": "ep", "body": "p", "timeout": 60}
                )
                cases: list[tuple[str, str, Any, int, str]] = [
                    ("POST", "/job", {}, 400, BAD),
                    ("POST", "/job", [], 400, "JSON object"),
                    ("POST", "/job", {"tube": "e", "body": "x", "bogus": 1}, 400, "bogus"),
                    ("POST", "/job", {"tube": "no spaces", "body": "x"}, 400, "tube name"),
                    ("POST", "/job", {"tube": "e", "body": 5}, 400, "body must be a string"),
                    ("POST", "/job", {"tube": "e", "ttl": "abc"}, 400, "ttl"),
                    ("POST", "/job", {"tube": "e", "ttl": 0}, 400, "ttl"),
                    ("POST", "/job", {"tube": "e", "priority": -1}, 400, "priority"),
                    ("POST", "/job", {"tube": "e", "id": "mine"}, 400, "idempotency_key"),
                    ("POST", "/job", {"tube": "e", "parent_id": MISSING}, 404, ""),
                    ("GET", "/job", None, 400, BAD),
                    ("GET", "/job?tube=e&delete=maybe", None, 400, "delete"),
                    ("GET", "/job?tube=e&tube=f", None, 400, "twice"),
                    ("GET", "/job?tube=e&tube_name=e", None, 400, "either"),
                    ("GET", "/job?tube=e&junk=1", None, 400, "junk"),
                    ("GET", "/multiple_job?tube=e&count=0", None, 400, "count"),
                    ("GET", "/multiple_job?tube=e&count=x", None, 400, "count"),
                    ("GET", "/peek?tube=e&buried=1", None, 400, "buried"),
                    ("GET", "/stats?x=1", None, 400, "'x'"),
                    ("PUT", "/touch", None, 400, "job_id"),
                    ("PUT", "/touch?job_id=junk", None, 400, "job_id"),
                    ("PUT", f"/touch?job_id={MISSING}", None, 404, ""),
                    ("PUT", "/touch?job_id=s9," + "A" * 22, None, 404, "s9"),
                    ("PUT", f"/touch?job_id={ready}", None, 409, ""),
                    ("PUT", f"/done?job_id={ready}", None, 409, ""),
                    ("PUT", f"/bury?job_id={ready}", None, 409, ""),
                    ("PUT", f"/release?job_id={ready}", None, 409, ""),
                    ("PUT", f"/release?job_id={ready}&delay=-1", None, 400, "delay"),
                    ("PUT", f"/done?job_id={MISSING}", None, 404, ""),
                    ("PUT", f"/kick?job_id={ready}", None, 404, ""),
                    ("PUT", f"/kick?tube=e&job_id={ready}", None, 400, "either"),
                    ("PUT", "/kick", None, 400, BAD),
                    ("PUT", "/pause", None, 400, BAD),
                    ("PUT", "/unpause?tube=a%20b", None, 400, "tube name"),
                    ("PUT", f"/set_children_started?job_id={ready}", None, 404, ""),
                    ("DELETE", f"/job?job_id={MISSING}", None, 404, ""),
                    ("DELETE", "/job", None, 400, "job_id"),
                    ("DELETE", "/tube", None, 400, BAD),
                    ("DELETE", "/tube?tube=e&cache_type=ready", None, 400, "cache_type"),
                    ("POST", "/parent_job", {"tube": "ep", "timeout": 0}, 400, "timeout"),
                    ("POST", "/parent_job", {"tube": "ep", "limit": "x"}, 400, "limit"),
                    ("POST", "/throttle", {"tube": "e"}, 400, "tps"),
                    ("POST", "/throttle", {"tube": "e", "tps": "fast"}, 400, "tps"),
                    ("PATCH", "/job", None, 405, "method not allowed"),
                    ("GET", "/nothing", None, 404, "not found"),
                ]
                for method, path, body, status, text in cases:
                    got = await http.request(method, path, body)
                    assert got[0] == status, (method, path, got)
                    assert sorted(got[1]) == ["error"], (method, path, got)
                    assert text in got[1]["error"], (method, path, got)
                # A rejected request changed nothing; the parent is still there.
                got = await http.request("GET", "/peek?tube=e")
                assert got == (200, {**got[1], "id": ready})
                got = await http.request("PUT", f"/set_children_started?job_id={parent['job_id']}")
                assert got[0] == 200
                # Numbers as strings (the original clients sent strings) are accepted.
                got = await http.request("POST", "/job", {"tube": "e", "ttl": "60", "delay": "0"})
                assert got[0] == 200


async def test_token_is_checked_with_the_legacy_shape(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serving_gateway(tmp_path, 2, api_token="sesame") as served:
            host, _, port = served.url.removeprefix("http://").rpartition(":")
            http = await HttpClient.connect((host, int(port)))
            async with http:
                unauthorized = (401, {"error": "unauthorized"})
                assert await http.request("GET", "/job?tube=t") == unauthorized
                assert await http.request("POST", "/job", {"tube": "t"}) == unauthorized


async def test_no_server_is_503(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serving_gateway(tmp_path, 2) as served:
            host, _, port = served.url.removeprefix("http://").rpartition(":")
            for server in served.cluster.servers:
                server.kill()
            while served.cluster.gateway.ready()[0]:  # noqa: ASYNC110 (health crosses sockets)
                await trio.sleep(0.02)
            http = await HttpClient.connect((host, int(port)))
            async with http:
                for method, route, body in [
                    ("GET", "/job?tube=t", None),
                    ("POST", "/job", {"tube": "t", "body": "x"}),
                    ("GET", "/stats", None),
                    ("PUT", "/pause?tube=t", None),
                ]:
                    status, answer = await http.request(method, route, body)
                    assert status == 503, (route, answer)
                    assert sorted(answer) == ["error"]
