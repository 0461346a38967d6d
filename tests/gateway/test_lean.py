"""The lean ASGI path (`allq.gateway.lean`): it serves the v1 table, like Quart would.

Requests are driven straight through ASGI callables so each test controls every message
(body chunks, slow bodies, disconnects) and can send the same request to the lean path and
to the Quart app behind it, comparing the answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import trio
import trio.testing

from allq.gateway.front import BODY_TIMEOUT_S
from allq.gateway.lean import LeanRoutes, RouteTable
from allq.gateway.routes import ROUTES
from tests.gateway.fakes import FakeCore
from tests.gateway.rest import TOKEN, make_app

Message = MutableMapping[str, Any]


class Exchange:
    """One ASGI request: what was sent, and what the app answered."""

    def __init__(self, messages: list[Message]) -> None:
        self.incoming = messages
        self.outgoing: list[Message] = []

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.outgoing.append(message)

    @property
    def status(self) -> int:
        return int(self.outgoing[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.outgoing[0]["headers"]}

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.outgoing[1:]))


def scope(
    method: str, path: str, *, query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8090),
        "extensions": {},
    }


def body_messages(body: bytes) -> list[Message]:
    return [{"type": "http.request", "body": body, "more_body": False}]


AsgiApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def run(app: AsgiApp, request_scope: dict[str, Any], messages: list[Message]) -> Exchange:
    exchange = Exchange(messages)
    with trio.fail_after(60):
        await app(request_scope, exchange.receive, exchange.send)
    return exchange


def apps(**overrides: Any) -> tuple[FakeCore, LeanRoutes, AsgiApp]:
    """The fake core, the lean path, and the Quart app behind it."""
    core = FakeCore()
    app = make_app(core, **overrides)
    lean = app.asgi_app
    assert isinstance(lean, LeanRoutes)
    return core, lean, lean.fallback


# -- matching ---------------------------------------------------------------------------------


def _sample_path(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "s1,00000001" if m[1] == "id" else "work", path)


def test_route_table_matches_what_werkzeug_matches() -> None:
    _, _, quart = apps()
    adapter = quart.__self__.url_map.bind("localhost")  # type: ignore[attr-defined]
    table = RouteTable(ROUTES)
    for route in ROUTES:
        path = _sample_path(route.path)
        endpoint, params = adapter.match(path, method=route.method)
        found = table.match(route.method, path)
        assert found is not None, path
        assert (found[0].name, found[1]) == (endpoint, params), path
    for method, path in [
        ("GET", "/v1/tubes/work/jobs"),  # a path of the table, another method
        ("POST", "/v1/tubes//jobs"),
        ("POST", "/v1/tubes/a/b/jobs"),
        ("POST", "/v1/reserve/"),
        ("GET", "/nothing"),
    ]:
        assert table.match(method, path) is None, (method, path)


async def test_v1_requests_never_reach_quart_and_the_rest_does() -> None:
    core, lean, quart = apps()
    reached: list[str] = []

    async def counting(request_scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(request_scope["path"])
        await quart(request_scope, receive, send)

    lean.fallback = counting
    put = await run(lean, scope("POST", "/v1/tubes/work/jobs"), body_messages(b'{"body":"x"}'))
    assert put.status == 201
    got = await run(lean, scope("POST", "/v1/reserve"), body_messages(b'{"tubes":["work"]}'))
    assert got.json["jobs"][0]["body"] == "x"
    assert reached == []
    head = await run(lean, scope("HEAD", "/healthz"), body_messages(b""))
    assert head.status == 200
    assert reached == ["/healthz"]
    assert [name for name, _ in core.calls if name in ("put", "reserve")] == ["put", "reserve"]


# -- the same answers as Quart ---------------------------------------------------------------

SAME_ANSWER_CASES = [
    ("POST", "/v1/tubes/work/jobs", b'{"body":"x","priority":7}', b""),
    ("POST", "/v1/tubes/work/jobs", b'{"body":"x","nope":1}', b""),
    ("POST", "/v1/tubes/work/jobs", b'{"body":"x","body":"y"}', b""),
    ("POST", "/v1/tubes/work/jobs", b"[1,2]", b""),
    ("POST", "/v1/tubes/bad%20name/jobs", b'{"body":"x"}', b""),
    ("POST", "/v1/tubes/work/jobs", b"\xff", b""),
    ("POST", "/v1/reserve", b'{"tubes":["work"],"count":0}', b""),
    ("POST", "/v1/reserve", b'{"tubes":["work"]}', b"encoding=hex"),
    ("POST", "/v1/reserve", b'{"tubes":["work"]}', b"encoding=base64&encoding=base64"),
    ("POST", "/v1/tubes/work/reserve", b"", b"count=2&timeout=0"),
    ("POST", "/v1/jobs/s9,00000001/done", b"", b""),
    ("POST", "/v1/jobs/not-an-id/done", b"", b""),
    ("POST", "/v1/jobs/done", b'{"jobs":[]}', b""),
    ("GET", "/v1/tubes", b"", b""),
    ("GET", "/v1/tubes", b"{}", b""),
    ("GET", "/healthz", b"", b""),
]


@pytest.mark.parametrize(("method", "path", "body", "query"), SAME_ANSWER_CASES)
async def test_lean_answers_like_quart(method: str, path: str, body: bytes, query: bytes) -> None:
    answers = []
    for via in ("lean", "quart"):
        core, lean, quart = apps()
        app = lean if via == "lean" else quart
        exchange = await run(app, scope(method, path, query=query), body_messages(body))
        headers = {k: v for k, v in exchange.headers.items() if k not in ("date", "server")}
        answers.append((exchange.status, headers, exchange.json, core.calls))
    assert answers[0] == answers[1]


async def test_token_checked_like_quart() -> None:
    for headers in ((), ((b"authorization", b"Bearer wrong"),), ((b"authorization", b"Basic x"),)):
        answers = []
        for via in ("lean", "quart"):
            core, lean, quart = apps(api_token=TOKEN)
            app = lean if via == "lean" else quart
            request_scope = scope("POST", "/v1/tubes/work/jobs", headers=headers)
            exchange = await run(app, request_scope, body_messages(b'{"body":"x"}'))
            answers.append((exchange.status, exchange.headers, exchange.json, core.jobs))
        assert answers[0] == answers[1]
        assert answers[0][0] == 401
        assert answers[0][3] == {}
    good = ((b"authorization", f"Bearer {TOKEN}".encode()),)
    core, lean, _ = apps(api_token=TOKEN)
    ok = await run(lean, scope("POST", "/v1/tubes/work/jobs", headers=good), body_messages(b"{}"))
    assert ok.status == 201
    assert len(core.jobs) == 1
    health = await run(lean, scope("GET", "/healthz"), body_messages(b""))
    assert health.status == 200  # public without a token


# -- bodies -----------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_refused_before_reading() -> None:
    core, lean, _ = apps(max_body_bytes=100)
    request_scope = scope("POST", "/v1/tubes/work/jobs", headers=((b"content-length", b"101"),))
    exchange = await run(lean, request_scope, [])  # no body message is ever read
    assert exchange.status == 413
    assert exchange.json["error"]["code"] == "JOB_TOO_BIG"
    assert core.jobs == {}


async def test_streamed_body_over_the_limit_is_refused() -> None:
    core, lean, _ = apps(max_body_bytes=100)
    chunks: list[Message] = [
        {"type": "http.request", "body": b'{"body":"' + b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"x" * 60 + b'"}', "more_body": False},
    ]
    exchange = await run(lean, scope("POST", "/v1/tubes/work/jobs"), chunks)
    assert exchange.status == 413
    assert core.jobs == {}


async def test_body_in_chunks_within_the_limit_is_joined() -> None:
    core, lean, _ = apps(max_body_bytes=100)
    chunks: list[Message] = [
        {"type": "http.request", "body": b'{"bo', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b'dy":"hello"}', "more_body": False},
    ]
    exchange = await run(lean, scope("POST", "/v1/tubes/work/jobs"), chunks)
    assert exchange.status == 201
    assert [job.body for job in core.jobs.values()] == [b"hello"]


async def test_slow_body_times_out_with_408(autojump_clock: trio.testing.MockClock) -> None:
    core, lean, _ = apps()
    # The start of a body, then nothing.
    chunks: list[Message] = [{"type": "http.request", "body": b'{"body":', "more_body": True}]
    started = trio.current_time()
    exchange = await run(lean, scope("POST", "/v1/tubes/work/jobs"), chunks)
    assert trio.current_time() - started == pytest.approx(BODY_TIMEOUT_S)
    assert exchange.status == 408
    assert exchange.json["error"]["code"] == "BAD_FORMAT"
    assert core.jobs == {}


async def test_client_gone_before_the_body_gets_no_answer() -> None:
    core, lean, _ = apps()
    exchange = await run(lean, scope("POST", "/v1/tubes/work/jobs"), [{"type": "http.disconnect"}])
    assert exchange.outgoing == []
    assert core.jobs == {}


# -- long polls -------------------------------------------------------------------------------


async def test_waiting_reserve_is_cancelled_when_its_client_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, lean, _ = apps()
    gone = trio.Event()

    async def receive() -> Message:
        if not sent_body:
            sent_body.append(True)
            return body_messages(b'{"tubes":["work"],"timeout":100}')[0]
        await gone.wait()
        return {"type": "http.disconnect"}

    sent_body: list[bool] = []
    outgoing: list[Message] = []

    async def send(message: Message) -> None:
        outgoing.append(message)

    async def leave_later() -> None:
        await trio.sleep(5)
        gone.set()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave_later)
        await lean(scope("POST", "/v1/reserve"), receive, send)
    assert trio.current_time() - started == pytest.approx(5)  # not the 100 s asked
    assert outgoing == []
    assert lean.state.limiter.waiting == 0
    assert lean.state.limiter.inflight == 0


async def test_waiting_reserve_answers_when_a_job_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, lean, _ = apps()
    answered: list[Exchange] = []

    async def reserve() -> None:
        body = body_messages(b'{"tubes":["work"],"timeout":100}')
        answered.append(await run(lean, scope("POST", "/v1/reserve"), body))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reserve)
        await trio.sleep(3)
        put = await run(lean, scope("POST", "/v1/tubes/work/jobs"), body_messages(b'{"body":"x"}'))
        assert put.status == 201
    assert answered[0].status == 200
    assert [job["body"] for job in answered[0].json["jobs"]] == ["x"]
