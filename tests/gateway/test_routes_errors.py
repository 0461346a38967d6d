"""REST v1 rejections, error mapping, auth and overload, against the in-memory FakeCore.

Rejections by the REST layer must not reach the core (`core.calls` stays empty).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio
import trio.testing

from allq.errors import AllQError, BadFormat, NotFound, error_from_code
from allq.gateway.errors import V1_HTTP_STATUS, NoServer, Overloaded
from tests.gateway.fakes import FakeCore
from tests.gateway.rest import TOKEN, Rest, make_app

JOB = "s1," + "0" * 21 + "1"
LEASE = "L" * 22


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def rest(core: FakeCore) -> Rest:
    return Rest(make_app(core))


REJECTED: list[tuple[str, str, Any, str, str | None]] = [
    # method, path, JSON body, code, field
    ("POST", "/v1/tubes/t/jobs", {"body": "x", "nope": 1}, "BAD_FORMAT", "nope"),
    ("POST", "/v1/tubes/t/jobs", [1, 2], "BAD_FORMAT", None),
    ("POST", "/v1/tubes/t/jobs", "text", "BAD_FORMAT", None),
    ("POST", "/v1/tubes/t/jobs", {"body": "x", "body_b64": "eA=="}, "BAD_FORMAT", "body_b64"),
    ("POST", "/v1/tubes/t/jobs", {"body_b64": "eA"}, "BAD_FORMAT", "body_b64"),
    ("POST", "/v1/tubes/t/jobs", {"body_b64": "e A=="}, "BAD_FORMAT", "body_b64"),
    ("POST", "/v1/tubes/t/jobs", {"body_b64": "é"}, "BAD_FORMAT", "body_b64"),
    ("POST", "/v1/tubes/t/jobs", {"body": 5}, "BAD_FORMAT", "body"),
    ("POST", "/v1/tubes/t/jobs", {"priority": -1}, "BAD_FORMAT", "priority"),
    ("POST", "/v1/tubes/t/jobs", {"priority": 2**32}, "BAD_FORMAT", "priority"),
    ("POST", "/v1/tubes/t/jobs", {"priority": "1"}, "BAD_FORMAT", "priority"),
    ("POST", "/v1/tubes/t/jobs", {"priority": True}, "BAD_FORMAT", "priority"),
    ("POST", "/v1/tubes/t/jobs", {"ttr": 0}, "BAD_FORMAT", "ttr"),
    ("POST", "/v1/tubes/t/jobs", {"delay": 1, "run_at": 5}, "BAD_FORMAT", "run_at"),
    ("POST", "/v1/tubes/t/jobs", {"run_at": -1}, "BAD_FORMAT", "run_at"),
    ("POST", "/v1/tubes/t/jobs", {"expired_limit": 0}, "BAD_FORMAT", "expired_limit"),
    ("POST", "/v1/tubes/t/jobs", {"parent_id": "nope"}, "BAD_FORMAT", "parent_id"),
    ("POST", "/v1/tubes/t/jobs", {"idempotency_key": "a b"}, "BAD_FORMAT", "idempotency_key"),
    ("POST", "/v1/tubes/t/jobs", {"shard_key": ""}, "BAD_FORMAT", "shard_key"),
    ("POST", "/v1/tubes/t/jobs", {"jobs": []}, "BAD_FORMAT", "jobs"),
    ("POST", "/v1/tubes/t/jobs", {"jobs": [{}] * 1001}, "BAD_FORMAT", "jobs"),
    ("POST", "/v1/tubes/t/jobs", {"jobs": [{}], "x": 1}, "BAD_FORMAT", "x"),
    ("POST", "/v1/tubes/-bad/jobs", {"body": "x"}, "BAD_TUBE", "tube"),
    ("POST", "/v1/tubes/a%20b/jobs", {"body": "x"}, "BAD_TUBE", "tube"),
    ("POST", "/v1/tubes/.../jobs", {"body": "x"}, "BAD_TUBE", "tube"),
    ("POST", "/v1/tubes/t/parents", {"delay": 1}, "BAD_FORMAT", "delay"),
    ("POST", "/v1/tubes/t/parents", {"on_child_failure": "x"}, "BAD_FORMAT", "on_child_failure"),
    ("POST", "/v1/reserve", {}, "BAD_FORMAT", "tubes"),
    ("POST", "/v1/reserve", {"tubes": []}, "BAD_FORMAT", "tubes"),
    ("POST", "/v1/reserve", {"tubes": ["ok", "b/d"]}, "BAD_TUBE", "tubes[1]"),
    ("POST", "/v1/reserve", {"tubes": ["t"], "count": 0}, "BAD_FORMAT", "count"),
    ("POST", "/v1/reserve", {"tubes": ["t"], "count": 1001}, "BAD_FORMAT", "count"),
    ("POST", "/v1/reserve", {"tubes": ["t"], "timeout": 300.5}, "BAD_FORMAT", "timeout"),
    ("POST", "/v1/reserve", {"tubes": ["t"], "done": [{"id": JOB}]}, "BAD_FORMAT", "done[0].lease"),
    ("POST", "/v1/jobs/done", {"jobs": []}, "BAD_FORMAT", "jobs"),
    ("POST", "/v1/jobs/done", {"jobs": [{"id": "x", "lease": LEASE}]}, "BAD_FORMAT", "jobs[0].id"),
    ("POST", f"/v1/jobs/{JOB}/done", {}, "BAD_FORMAT", "lease"),
    ("POST", f"/v1/jobs/{JOB}/done", {"lease": "short"}, "BAD_FORMAT", "lease"),
    ("POST", "/v1/jobs/not-an-id/done", {"lease": LEASE}, "BAD_FORMAT", "id"),
    ("POST", f"/v1/jobs/{JOB}/release", {"lease": LEASE, "delay": -1}, "BAD_FORMAT", "delay"),
    ("POST", f"/v1/jobs/{JOB}/kick", {"x": 1}, "BAD_FORMAT", "x"),
    ("POST", "/v1/tubes/t/kick", {"bound": 0}, "BAD_FORMAT", "bound"),
    ("POST", "/v1/tubes/t/pause", {"seconds": -1}, "BAD_FORMAT", "seconds"),
    ("POST", "/v1/tubes/t/pause", {"duration": 1}, "BAD_FORMAT", "duration"),
    ("PUT", "/v1/tubes/t/throttle", {}, "BAD_FORMAT", "tps"),
    ("PUT", "/v1/tubes/t/throttle", {"tps": 1e7}, "BAD_FORMAT", "tps"),
    ("PUT", "/v1/tubes/t/shard-limit", {"limit": -1}, "BAD_FORMAT", "limit"),
    ("POST", "/v1/servers", {"address": "nohost"}, "BAD_FORMAT", "address"),
    ("POST", "/v1/servers", {"address": "h:1", "name": "a/b"}, "BAD_FORMAT", "name"),
]


@pytest.mark.parametrize(("method", "path", "body", "code", "field"), REJECTED)
async def test_bad_requests_are_rejected_before_the_core(
    rest: Rest, core: FakeCore, method: str, path: str, body: Any, code: str, field: str | None
) -> None:
    answer = await rest.request(method, path, body)
    assert (answer.status, answer.code, answer.field) == (V1_HTTP_STATUS[code], code, field)
    assert set(answer.json) == {"error"}
    assert core.calls == []


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"a": NaN}', b'{"body": "x", "body": "y"}', b"\xff\xfe", b"[" * 50_000, b"nul"],
)
async def test_malformed_json_is_bad_format(rest: Rest, core: FakeCore, raw: bytes) -> None:
    answer = await rest.post("/v1/tubes/t/jobs", data=raw)
    assert (answer.status, answer.code) == (400, "BAD_FORMAT")
    assert core.calls == []


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/tubes/t/reserve", {"count": "0"}, "count"),
        ("/v1/tubes/t/reserve", {"count": "two"}, "count"),
        ("/v1/tubes/t/reserve", {"timeout": "nan"}, "timeout"),
        ("/v1/tubes/t/reserve", {"timeout": "301"}, "timeout"),
        ("/v1/tubes/t/reserve", {"wait": "1"}, "wait"),
        ("/v1/reserve", {"encoding": "hex"}, "encoding"),
    ],
)
async def test_bad_query_parameters(
    rest: Rest, core: FakeCore, path: str, query: dict[str, str], field: str
) -> None:
    body = {"tubes": ["t"]} if path == "/v1/reserve" else None
    answer = await rest.post(path, body, query=query)
    assert (answer.status, answer.code, answer.field) == (400, "BAD_FORMAT", field)
    assert core.calls == []


async def test_repeated_query_parameters_and_bodies_on_bodyless_routes(rest: Rest) -> None:
    answer = await rest.delete(f"/v1/jobs/{JOB}?lease={LEASE}&lease={LEASE}")
    assert (answer.status, answer.field) == (400, "lease")
    answer = await rest.request("DELETE", "/v1/tubes/t", data=b'{"x": 1}')
    assert answer.code == "BAD_FORMAT"
    assert (await rest.post(f"/v1/jobs/{JOB}/kick", data=b"{}")).status == 404  # {} is fine


async def test_requests_above_the_size_limit_are_413_job_too_big(core: FakeCore) -> None:
    rest = Rest(make_app(core, max_body_bytes=1000))
    answer = await rest.post("/v1/tubes/t/jobs", {"body": "x" * 2000})
    assert (answer.status, answer.code) == (413, "JOB_TOO_BIG")
    small = await rest.post("/v1/tubes/t/jobs", {"body": "x" * 100})
    assert small.status == 201


async def test_unknown_paths_and_methods(rest: Rest) -> None:
    v1 = await rest.get("/v1/nothing")
    assert (v1.status, v1.code) == (404, "NOT_FOUND")
    other = await rest.get("/nothing")
    assert (other.status, other.json) == (404, {"error": "not found"})
    wrong = await rest.request("PATCH", "/v1/tubes/t/jobs")
    assert (wrong.status, wrong.code) == (405, "BAD_FORMAT")
    assert wrong.headers["Allow"] == "POST"


# -- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(V1_HTTP_STATUS))
async def test_every_code_maps_to_its_status(rest: Rest, core: FakeCore, code: str) -> None:
    error = {"OVERLOADED": Overloaded("busy"), "NO_SERVER": NoServer("down")}.get(code)
    core.fail_with(error or error_from_code(code, f"{code} happened", "f"))
    answer = await rest.get(f"/v1/jobs/{JOB}")
    assert (answer.status, answer.code) == (V1_HTTP_STATUS[code], code)
    assert answer.json["error"]["message"]
    if answer.status in (429, 503):
        assert int(answer.headers["Retry-After"]) >= 1


async def test_retry_after_comes_from_the_exception(rest: Rest, core: FakeCore) -> None:
    core.fail_with(NoServer("server s1 is down", retry_after=2.5))
    answer = await rest.post("/v1/tubes/t/jobs", {"body": "x"})
    assert (answer.status, answer.code, answer.headers["Retry-After"]) == (503, "NO_SERVER", "3")
    core.fail_with(Overloaded("busy", retry_after=7))
    answer = await rest.post("/v1/reserve", {"tubes": ["t"]})
    assert (answer.status, answer.headers["Retry-After"]) == (429, "7")


async def test_errors_inside_exception_groups_map_by_their_leaf(rest: Rest, core: FakeCore) -> None:
    core.fail_with(ExceptionGroup("wrapped", [NotFound("job gone", field="job_id")]))
    answer = await rest.get(f"/v1/jobs/{JOB}")
    assert (answer.status, answer.code, answer.field) == (404, "NOT_FOUND", "job_id")
    core.fail_with(BaseExceptionGroup("nested", [ExceptionGroup("inner", [NoServer("down")])]))
    answer = await rest.get(f"/v1/jobs/{JOB}")
    assert (answer.status, answer.code) == (503, "NO_SERVER")
    assert answer.headers["Retry-After"] == "1"


async def test_unexpected_errors_are_500_internal(rest: Rest, core: FakeCore) -> None:
    core.fail_with(RuntimeError("bug"))
    answer = await rest.get("/v1/tubes")
    assert (answer.status, answer.code) == (500, "INTERNAL")
    core.fail_with(ExceptionGroup("g", [ValueError("bug")]))
    answer = await rest.get("/v1/tubes")
    assert (answer.status, answer.code) == (500, "INTERNAL")


async def test_core_field_names_map_back(rest: Rest, core: FakeCore) -> None:
    core.fail_with(BadFormat("bad duration", field="duration"))
    answer = await rest.post("/v1/tubes/t/pause", {"seconds": 5})
    assert answer.field == "seconds"
    # A batch item the core rejects keeps its index in the request.
    answer = await rest.post(
        "/v1/tubes/t/jobs", {"jobs": [{"ttr": 0}, {"priority": 666}, {"body": "ok"}]}
    )
    results = answer.json["jobs"]
    assert results[0]["error"]["field"] == "jobs[0].ttr"
    assert results[1]["error"]["field"] == "jobs[1].priority"
    assert results[2]["state"] == "ready"


async def test_core_sees_typed_arguments(rest: Rest, core: FakeCore) -> None:
    await rest.post(
        "/v1/tubes/t/jobs", {"body_b64": base64.b64encode(b"\x00\x01").decode(), "delay": 1.0004}
    )
    await rest.post("/v1/tubes/t/pause", {"seconds": 2})
    await rest.put("/v1/tubes/t/throttle", {"tps": 3})
    assert core.calls[0] == ("put", ("t", {"body": b"\x00\x01", "delay": 1.0}))
    assert core.calls[1] == ("tube_control", ("pause", "t", {"duration": 2}))
    assert core.calls[2] == ("tube_control", ("throttle", "t", {"tps": 3.0}))


async def test_a_reserve_error_after_done_still_reports_the_done_part(
    rest: Rest, core: FakeCore
) -> None:
    job_id = (await rest.post("/v1/tubes/t/jobs", {"body": "x"})).json["id"]
    lease = (await rest.post("/v1/reserve", {"tubes": ["t"]})).json["jobs"][0]["lease"]

    real_reserve = core.reserve

    async def failing_reserve(*args: Any, **kwargs: Any) -> Any:
        raise NoServer("all servers down")

    core.reserve = failing_reserve  # type: ignore[method-assign]
    answer = await rest.post(
        "/v1/reserve", {"tubes": ["t"], "done": [{"id": job_id, "lease": lease}]}
    )
    core.reserve = real_reserve  # type: ignore[method-assign]
    assert (answer.status, answer.code) == (503, "NO_SERVER")
    assert answer.json["done"] == [{"id": job_id, "state": "gone"}]


async def test_readyz_is_503_with_the_reason(rest: Rest, core: FakeCore) -> None:
    core.is_ready = (False, "no server is up")
    answer = await rest.get("/readyz")
    assert (answer.status, answer.json) == (503, {"ready": False, "reason": "no server is up"})


async def test_cluster_routes(rest: Rest, core: FakeCore) -> None:
    added = await rest.post("/v1/servers", {"address": "10.0.0.5:7700", "name": "s2"})
    assert added.status == 201
    assert core.calls[-1] == ("add_server", ("10.0.0.5:7700", "s2"))
    assert (await rest.post("/v1/servers/s1/drain")).status == 200
    assert (await rest.post("/v1/servers/zz/drain")).code == "NOT_FOUND"
    assert (await rest.delete("/v1/servers/s1", query={"force": "true"})).status == 200
    last: Any = core.calls[-1]
    assert last == ("remove_server", ("s1", True))
    assert (await rest.delete("/v1/servers/s1", query={"force": "yes"})).field == "force"


# -- auth -------------------------------------------------------------------------------------


async def test_bearer_token(core: FakeCore) -> None:
    app = make_app(core, api_token=TOKEN)
    anonymous = Rest(app)
    for path in ("/v1/tubes", "/v1/nothing", "/openapi.json"):
        answer = await anonymous.get(path)
        assert (answer.status, answer.code) == (401, "UNAUTHORIZED"), path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    legacy = await anonymous.get("/stats")
    assert (legacy.status, legacy.json) == (401, {"error": "unauthorized"})
    for header in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer"):
        answer = await anonymous.get("/v1/tubes", headers={"Authorization": header})
        assert answer.status == 401, header
    assert (await anonymous.get("/healthz")).status == 200
    assert (await anonymous.get("/readyz")).status == 200
    assert core.calls == []
    authed = Rest(app, token=TOKEN)
    assert (await authed.get("/v1/tubes")).status == 200
    assert (await authed.get("/openapi.json")).json["security"] == [{"bearer": []}]


# -- overload ---------------------------------------------------------------------------------


async def test_in_flight_bound_answers_429_at_once(core: FakeCore) -> None:
    app = make_app(core, max_inflight=1)
    rest = Rest(app)
    release = trio.Event()
    entered = trio.Event()

    async def slow_list() -> list[dict[str, Any]]:
        entered.set()
        await release.wait()
        return []

    core.list_tubes = slow_list  # type: ignore[method-assign]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rest.get, "/v1/tubes")
            await entered.wait()
            answer = await rest.get("/v1/stats")
            assert (answer.status, answer.code) == (429, "OVERLOADED")
            assert answer.headers["Retry-After"] == "1"
            assert (await rest.get("/healthz")).status == 200  # not bounded
            release.set()
    assert (await rest.get("/v1/stats")).status == 200
    assert app.extensions["allq"].limiter.inflight == 0


async def test_waiting_bound_sheds_long_polls_but_not_short_requests(core: FakeCore) -> None:
    app = make_app(core, max_inflight=1, max_waiting=1)
    rest = Rest(app)
    limiter = app.extensions["allq"].limiter
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rest.post, "/v1/reserve", {"tubes": ["w"], "timeout": 30})
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.waiting == 1
            second = await rest.post("/v1/reserve", {"tubes": ["w"], "timeout": 30})
            assert (second.status, second.code) == (429, "OVERLOADED")
            assert "Retry-After" in second.headers
            # The waiting poll gave its in-flight slot back: short requests still pass.
            assert (await rest.post("/v1/reserve", {"tubes": ["w"], "timeout": 0})).status == 200
            assert (await rest.post("/v1/tubes/w/jobs", {"body": "x"})).status == 201
    assert (limiter.inflight, limiter.waiting) == (0, 0)


async def test_long_polls_are_capped(core: FakeCore) -> None:
    rest = Rest(make_app(core, long_poll_cap_s=0.05))
    with trio.fail_after(5):
        answer = await rest.post("/v1/reserve", {"tubes": ["t"], "timeout": 300})
    assert answer.json == {"jobs": []}
    assert core.calls[-1] == ("reserve", (["t"], 1, 0.05))


def test_create_app_checks_its_settings(core: FakeCore) -> None:
    for bad in ({"max_inflight": 0}, {"long_poll_cap_s": 0}, {"api_token": ""}):
        with pytest.raises(ValueError):
            make_app(core, **bad)


async def test_allq_error_base_is_internal(rest: Rest, core: FakeCore) -> None:
    core.fail_with(AllQError("odd"))
    assert (await rest.get("/v1/stats")).code == "INTERNAL"
