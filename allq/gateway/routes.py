"""The REST v1 route table (api.md §2) and its handlers.

One table, `ROUTES`, drives both the Quart registration (`allq.gateway.app`) and the
OpenAPI document (`allq.gateway.openapi`). A handler receives a `Call` whose path
parameters, JSON body and query string are already checked, calls the gateway core, and
returns a `Reply`. Handlers call nothing but `GatewayCore`, and nothing here knows Quart:
the same table is served by `allq.gateway.lean` (the hot path) and by Quart (fallback).
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from allq.errors import AllQError, BadFormat, NotFound, TimedOut, renumber_item_error
from allq.gateway import bodies as b
from allq.gateway.bodies import Body, Field, QueryField, Reply, Schema
from allq.gateway.core import GatewayCore, JobView
from allq.gateway.errors import Overloaded

# -- overload bounds -------------------------------------------------------------------------


class Limiter:
    """Counts requests in flight and long polls waiting; past a bound, OVERLOADED at once.

    A long poll gives its in-flight slot back while it waits and holds a waiting slot
    instead, so waiting workers never starve short requests (and the reverse).
    """

    def __init__(self, *, max_inflight: int, max_waiting: int, retry_after_s: float = 1.0):
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.waiting = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        if self.inflight >= self.max_inflight:
            raise Overloaded(
                f"{self.inflight} requests in flight (limit {self.max_inflight})",
                retry_after=self.retry_after_s,
            )
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    @contextmanager
    def waiting_slot(self) -> Iterator[None]:
        if self.waiting >= self.max_waiting:
            raise Overloaded(
                f"{self.waiting} reserves waiting (limit {self.max_waiting})",
                retry_after=self.retry_after_s,
            )
        self.waiting += 1
        self.inflight -= 1
        try:
            yield
        finally:
            self.inflight += 1
            self.waiting -= 1


# -- calls and routes ------------------------------------------------------------------------


class BodyParser(Protocol):
    def parse(self, value: object, prefix: str = "") -> Any: ...

    def schema(self) -> Schema: ...


@dataclass(slots=True)
class Call:
    """One checked request: path parameters, body, query, and what handlers may use."""

    core: GatewayCore
    limiter: Limiter
    long_poll_cap_s: float
    params: dict[str, str]
    body: Any
    query: dict[str, object]
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def tube(self) -> str:
        return self.params["tube"]

    @property
    def job_id(self) -> str:
        return self.params["id"]

    @property
    def force_base64(self) -> bool:
        return self.query.get("encoding") == "base64"

    def job(self, view: JobView, *, with_lease: bool = False) -> dict[str, object]:
        return b.job_object(
            view, self.core.now(), force_base64=self.force_base64, with_lease=with_lease
        )


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    """One v1 route. `path` is OpenAPI style (`/v1/jobs/{id}`)."""

    method: str
    path: str
    name: str
    handler: Handler
    summary: str
    tag: str
    body: BodyParser | None = None
    query: tuple[QueryField, ...] = ()
    status: int = 200
    response: Schema = field(default_factory=lambda: {"type": "object"})
    auth: bool = True
    bounded: bool = True
    #: A long poll: cancelled when its client disconnects (`allq.gateway.lean`).
    waits: bool = False
    errors: tuple[int, ...] = (400,)

    @property
    def rule(self) -> str:
        """The Quart/Werkzeug rule: `{x}` -> `<x>`."""
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def check_path(name: str, value: str) -> str:
    if name == "tube":
        return b.check_tube(value, "tube")
    if name == "id":
        return b.check_job_id(value, "id")
    if name == "sid":
        b.check_server_name(value, "sid")
        return value
    raise AssertionError(name)  # pragma: no cover - the table names only these


# -- bodies ----------------------------------------------------------------------------------

_UINT32: Final = {"type": "integer", "minimum": 0, "maximum": 4_294_967_295}
_SECONDS: Final = {"type": "number", "minimum": 0, "maximum": 4_294_967_295}
_ID: Final = {"type": "string", "pattern": b.GATEWAY_JOB_ID_RE.pattern}
_LEASE: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"}
_TUBE: Final = {"type": "string", "minLength": 1, "maxLength": 200}

F_PRIORITY: Final = Field("priority", b.check_priority, _UINT32)
F_DELAY: Final = Field("delay", b.check_delay, _SECONDS)
F_LEASE: Final = Field("lease", b.check_lease, _LEASE, required=True)
_JOB_TAIL: Final = (
    Field("ttr", b.check_ttr, {**_SECONDS, "minimum": 1}),
    Field("expired_limit", b.check_expired_limit, {"type": "integer", "minimum": 1}),
    Field("max_releases", b.check_max_releases, {"type": "integer", "minimum": 0}),
    Field("parent_id", b.check_job_id, _ID),
    Field("shard_key", b.check_shard_key, {"type": "string", "minLength": 1, "maxLength": 200}),
    Field("idempotency_key", b.check_idempotency_key, {"type": "string", "maxLength": 200}),
)
JOB_BODY: Final = Body(
    (
        F_PRIORITY,
        F_DELAY,
        Field("run_at", b.check_run_at, {"type": "number", "minimum": 0}),
        *_JOB_TAIL,
    ),
    job_body=True,
)
PARENT_BODY: Final = Body(
    (
        F_PRIORITY,
        *_JOB_TAIL,
        Field("timeout", b.check_parent_timeout, {**_SECONDS, "minimum": 1}),
        Field("run_on_timeout", b.check_bool, {"type": "boolean"}),
        Field("limit", b.check_parent_limit, {"type": "integer", "minimum": 1}),
        Field("noop", b.check_bool, {"type": "boolean"}),
        Field("on_child_failure", b.check_on_child_failure, {"enum": ["wait", "bury"]}),
    ),
    job_body=True,
)
_DONE_ITEM: Final = Body((Field("id", b.check_job_id, _ID, required=True), F_LEASE))


def _done_list(minimum: int) -> Callable[[object, str], object]:
    def check(value: object, f: str) -> object:
        if not isinstance(value, list):
            raise BadFormat(f"{f} must be a list of {{id, lease}} objects", field=f)
        if not minimum <= len(value) <= b.MAX_ITEMS:
            raise BadFormat(f"{f} must hold {minimum} … {b.MAX_ITEMS} items", field=f)
        items = [_DONE_ITEM.parse(item, f"{f}[{i}].") for i, item in enumerate(value)]
        return [(str(item["id"]), str(item["lease"])) for item in items]

    return check


_DONE_SCHEMA: Final = {"type": "array", "items": _DONE_ITEM.schema(), "maxItems": 1000}
RESERVE_BODY: Final = Body(
    (
        Field("tubes", b.check_tubes, {"type": "array", "items": _TUBE}, required=True),
        Field("count", b.check_count, {"type": "integer", "minimum": 1, "maximum": 1000}),
        Field("timeout", b.check_reserve_timeout, {"type": "number", "minimum": 0, "maximum": 300}),
        Field("done", _done_list(0), _DONE_SCHEMA),
    )
)
TUBE_RESERVE_BODY: Final = Body((Field("done", _done_list(0), _DONE_SCHEMA),))
DONE_BATCH_BODY: Final = Body(
    (Field("jobs", _done_list(1), {**_DONE_SCHEMA, "minItems": 1}, required=True),)
)
LEASE_BODY: Final = Body((F_LEASE,))
RELEASE_BODY: Final = Body((F_LEASE, F_DELAY, F_PRIORITY))
BURY_BODY: Final = Body((F_LEASE, F_PRIORITY))
KICK_BODY: Final = Body((Field("bound", b.check_bound, {"type": "integer", "minimum": 1}),))
PAUSE_BODY: Final = Body((Field("seconds", b.check_pause_seconds, _SECONDS, core_name="duration"),))
THROTTLE_BODY: Final = Body(
    (Field("tps", b.check_tps, {"type": "number", "maximum": 1_000_000}, required=True),)
)
SHARD_LIMIT_BODY: Final = Body(
    (
        Field(
            "limit",
            b.check_shard_limit,
            {"type": "integer", "minimum": 0, "maximum": 1_000_000},
            required=True,
        ),
    )
)
ADD_SERVER_BODY: Final = Body(
    (
        Field("address", b.check_address, {"type": "string"}, required=True),
        Field("name", b.check_server_name, {"type": "string", "maxLength": 64}),
    )
)
#: Routes whose request is "—": an empty body or `{}` only.
NO_BODY: Final = Body()


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch put envelope: each item is clean put fields, or the error that rejected it."""

    items: list[dict[str, object] | AllQError]


class PutBody:
    """`POST /v1/tubes/{tube}/jobs`: one job, or `{"jobs": [...]}` (1 … 1000)."""

    def parse(self, value: object, prefix: str = "") -> dict[str, object] | Batch:
        if isinstance(value, dict) and "jobs" in value:
            for name in value:
                if name != "jobs":
                    raise BadFormat(f"a batch takes only 'jobs', not {name!r}", field=name)
            jobs = value["jobs"]
            if not isinstance(jobs, list):
                raise BadFormat("jobs must be a list of job objects", field="jobs")
            if not 1 <= len(jobs) <= b.MAX_ITEMS:
                raise BadFormat(f"jobs must hold 1 … {b.MAX_ITEMS} items", field="jobs")
            items: list[dict[str, object] | AllQError] = []
            for i, item in enumerate(jobs):
                try:
                    items.append(JOB_BODY.parse(item, f"jobs[{i}]."))
                except AllQError as exc:
                    items.append(exc)
            return Batch(items)
        return JOB_BODY.parse(value, prefix)

    def schema(self) -> Schema:
        single = JOB_BODY.schema()
        batch = {
            "type": "object",
            "properties": {"jobs": {"type": "array", "items": single, "maxItems": 1000}},
            "required": ["jobs"],
            "additionalProperties": False,
        }
        return {"oneOf": [single, batch]}


# -- query fields ----------------------------------------------------------------------------


def _q_encoding(text: str, f: str) -> object:
    if text != "base64":
        raise BadFormat(f'{f} must be "base64"', field=f)
    return text


def _q_count(text: str, f: str) -> object:
    return b.check_count(b.query_number(text, f), f)


def _q_timeout(text: str, f: str) -> object:
    return b.check_reserve_timeout(b.query_number(text, f), f)


def _q_lease(text: str, f: str) -> object:
    return b.check_lease(text, f)


def _q_force(text: str, f: str) -> object:
    return b.query_bool(text, f)


def _q_state(text: str, f: str) -> object:
    if text not in ("ready", "delayed", "buried"):
        raise BadFormat(f"{f} must be ready, delayed or buried", field=f)
    return text


Q_ENCODING: Final = QueryField(
    "encoding", _q_encoding, {"enum": ["base64"]}, "always give job bodies as body_b64"
)
Q_COUNT: Final = QueryField("count", _q_count, {"type": "integer", "minimum": 1, "maximum": 1000})
Q_TIMEOUT: Final = QueryField(
    "timeout", _q_timeout, {"type": "number", "minimum": 0, "maximum": 300}
)

# -- response schemas ------------------------------------------------------------------------

JOB_SCHEMA: Final = {"$ref": "#/components/schemas/Job"}
_JOBS_REPLY: Final = {
    "type": "object",
    "properties": {
        "jobs": {"type": "array", "items": JOB_SCHEMA},
        "done": {"type": "array", "items": {"$ref": "#/components/schemas/ItemResult"}},
    },
    "required": ["jobs"],
}
_ID_STATE: Final = {
    "type": "object",
    "properties": {"id": _ID, "state": {"type": "string"}},
    "required": ["id", "state"],
}


def _obj(*required: str) -> Schema:
    return {
        "type": "object",
        "properties": {name: {} for name in required},
        "required": list(required),
    }


# -- handlers: jobs --------------------------------------------------------------------------


def _remap_item_error(result: dict[str, Any], position: int, index: int) -> dict[str, Any]:
    """The core numbered batch items among those it got; give the request's index back."""
    error = result.get("error")
    if not isinstance(error, dict):
        return result
    return {**result, "error": renumber_item_error(error, position, index)}


async def put_jobs(call: Call) -> Reply:
    parsed = call.body
    if isinstance(parsed, Batch):
        valid = [(i, item) for i, item in enumerate(parsed.items) if isinstance(item, dict)]
        results = await call.core.put_batch(call.tube, [item for _, item in valid]) if valid else []
        if len(results) != len(valid):
            raise AllQError(f"the core answered {len(results)} results for {len(valid)} jobs")
        out: list[dict[str, Any]] = [
            b.item_error(item) if isinstance(item, AllQError) else {} for item in parsed.items
        ]
        for position, ((index, _), result) in enumerate(zip(valid, results, strict=True)):
            out[index] = _remap_item_error(result, position, index)
        return Reply({"jobs": out}, 201)
    result = await call.core.put(call.tube, parsed)
    duplicate = bool(result.get("duplicate", False))
    payload = {
        "id": result["id"],
        "tube": call.tube,
        "state": result["state"],
        "duplicate": duplicate,
    }
    return Reply(payload, 200 if duplicate else 201)


async def put_parent(call: Call) -> Reply:
    result = await call.core.put_parent(call.tube, call.body)
    duplicate = bool(result.get("duplicate", False))
    payload = {
        "id": result["id"],
        "tube": call.tube,
        "state": result["state"],
        "duplicate": duplicate,
    }
    return Reply(payload, 200 if duplicate else 201)


async def _reserve(
    call: Call,
    tubes: list[str],
    count: int,
    timeout_s: float,
    done: list[tuple[str, str | None]] | None,
) -> Reply:
    wait_s = min(timeout_s, call.long_poll_cap_s)
    slot = call.limiter.waiting_slot() if wait_s > 0 else nullcontext()
    with slot:
        done_results: list[dict[str, Any]] | None = None
        if done is not None:
            done_results = await call.core.done_many(done) if done else []
        try:
            views = await call.core.reserve(tubes, count=count, wait_s=wait_s)
        except TimedOut:
            views = []
        except AllQError as exc:
            if done_results is None:
                raise
            # The done part happened: the error answer still reports it.
            return b.error_reply(exc, {"done": done_results})
    payload: dict[str, object] = {"jobs": [call.job(view, with_lease=True) for view in views]}
    if done_results is not None:
        payload["done"] = done_results
    return Reply(payload)


async def reserve(call: Call) -> Reply:
    body = call.body
    return await _reserve(
        call,
        body["tubes"],
        body.get("count", 1),
        body.get("timeout", 0.0),
        body.get("done"),
    )


async def reserve_tube(call: Call) -> Reply:
    return await _reserve(
        call,
        [call.tube],
        int(call.query.get("count", 1)),  # type: ignore[call-overload]
        float(call.query.get("timeout", 0.0)),  # type: ignore[arg-type]
        call.body.get("done"),
    )


async def done_one(call: Call) -> Reply:
    await call.core.job_op("done", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": "gone"})


async def done_batch(call: Call) -> Reply:
    return Reply({"jobs": await call.core.done_many(call.body["jobs"])})


async def touch(call: Call) -> Reply:
    result = await call.core.job_op("touch", call.job_id, call.body)
    payload: dict[str, object] = {"id": call.job_id}
    if result.get("ttr_deadline") is not None:
        payload["deadline_in_s"] = round(max(0.0, result["ttr_deadline"] - call.core.now()), 3)
    return Reply(payload)


async def release(call: Call) -> Reply:
    result = await call.core.job_op("release", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": result.get("state", "ready")})


async def bury(call: Call) -> Reply:
    result = await call.core.job_op("bury", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": result.get("state", "buried")})


async def kick_job(call: Call) -> Reply:
    result = await call.core.job_op("kick_job", call.job_id, {})
    return Reply({"id": call.job_id, "state": result.get("state", "ready")})


async def get_job(call: Call) -> Reply:
    view = await call.core.job_op("peek", call.job_id, {})
    if view.get("state") == "reserved" and view.get("ttr_deadline") is None:
        # A peek carries no TTR deadline; stats_job has the time left.
        try:
            stats = await call.core.job_op("stats_job", call.job_id, {})
        except NotFound:
            stats = {}
        if isinstance(stats.get("time_left_s"), int | float):
            view = {**view, "ttr_deadline": call.core.now() + stats["time_left_s"]}
    return Reply(call.job(view))


async def delete_job(call: Call) -> Reply:
    fields = {"lease": call.query["lease"]} if "lease" in call.query else {}
    result = await call.core.job_op("delete", call.job_id, fields)
    return Reply(
        {"id": call.job_id, "state": "gone", "previous_state": result.get("previous_state")}
    )


async def children_started(call: Call) -> Reply:
    result = await call.core.job_op("set_children_started", call.job_id, {})
    return Reply({"id": call.job_id, **result})


# -- handlers: tubes -------------------------------------------------------------------------


async def list_tubes(call: Call) -> Reply:
    return Reply({"tubes": await call.core.list_tubes()})


async def tube_stats(call: Call) -> Reply:
    return Reply(await call.core.tube_stats(call.tube))


async def peek_tube(call: Call) -> Reply:
    state = str(call.query.get("state", "ready"))
    return Reply(call.job(await call.core.peek_tube(call.tube, state)))


async def kick_tube(call: Call) -> Reply:
    kicked = await call.core.kick(call.tube, int(call.body.get("bound", 1)))
    return Reply({"kicked": kicked})


async def _control(call: Call, op: str, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        return await call.core.tube_control(op, call.tube, fields)
    except AllQError as exc:
        raise b.rename_field(exc, {"duration": "seconds"}) from None


async def pause(call: Call) -> Reply:
    return Reply({"paused": True, **await _control(call, "pause", call.body)})


async def unpause(call: Call) -> Reply:
    return Reply({"paused": False, **await _control(call, "unpause", {})})


async def throttle(call: Call) -> Reply:
    result = await _control(call, "throttle", call.body)
    return Reply({"tps": call.body["tps"], **result})


async def unthrottle(call: Call) -> Reply:
    result = await _control(call, "throttle", {"tps": 0.0})
    return Reply({"tps": None, **{k: v for k, v in result.items() if k != "tps"}})


async def drain(call: Call) -> Reply:
    return Reply({"draining": True, **await _control(call, "drain", {})})


async def undrain(call: Call) -> Reply:
    return Reply({"draining": False, **await _control(call, "undrain", {})})


async def shard_limit(call: Call) -> Reply:
    result = await _control(call, "set_shard_limit", call.body)
    return Reply({"limit": call.body["limit"], **result})


_CLEARED: Final = ("ready", "delayed", "reserved", "buried", "waiting")


async def clear_tube(call: Call) -> Reply:
    result = await _control(call, "clear", {})
    deleted = sum(int(result.get(key, 0)) for key in _CLEARED)
    return Reply({"deleted": deleted, **result})


# -- handlers: cluster and operations --------------------------------------------------------


async def list_servers(call: Call) -> Reply:
    return Reply({"servers": call.core.servers()})


async def add_server(call: Call) -> Reply:
    body = call.body
    return Reply(await call.core.add_server(body["address"], body.get("name")), 201)


async def drain_server(call: Call) -> Reply:
    return Reply(await call.core.drain_server(call.params["sid"]))


async def remove_server(call: Call) -> Reply:
    force = bool(call.query.get("force", False))
    return Reply(await call.core.remove_server(call.params["sid"], force=force))


async def cluster_stats(call: Call) -> Reply:
    return Reply(await call.core.stats())


async def healthz(call: Call) -> Reply:
    # The pid tells which worker answered when several share the port.
    return Reply({"status": "ok", "pid": os.getpid()})


async def readyz(call: Call) -> Reply:
    ok, reason = call.core.ready()
    if ok:
        return Reply({"ready": True})
    return Reply({"ready": False, "reason": reason}, 503, {"Retry-After": "1"})


async def openapi(call: Call) -> Reply:
    return Reply(call.document)


# -- the table -------------------------------------------------------------------------------

_JOB_ERR: Final = (400, 404, 409, 503)

ROUTES: Final[tuple[Route, ...]] = (
    # Jobs
    Route(
        "POST",
        "/v1/tubes/{tube}/jobs",
        "put_jobs",
        put_jobs,
        'Put a job, or a batch of up to 1000 jobs ({"jobs": [...]})',
        "jobs",
        body=PutBody(),
        status=201,
        response={"oneOf": [_obj("id", "tube", "state", "duplicate"), _obj("jobs")]},
        errors=(400, 404, 409, 413, 503, 507),
    ),
    Route(
        "POST",
        "/v1/reserve",
        "reserve",
        reserve,
        "Reserve jobs from any of the tubes (long poll), finishing `done` jobs first",
        "jobs",
        body=RESERVE_BODY,
        query=(Q_ENCODING,),
        response=_JOBS_REPLY,
        errors=(400, 503),
        waits=True,
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/reserve",
        "reserve_tube",
        reserve_tube,
        "Reserve jobs from one tube (long poll)",
        "jobs",
        body=TUBE_RESERVE_BODY,
        query=(Q_COUNT, Q_TIMEOUT, Q_ENCODING),
        response=_JOBS_REPLY,
        errors=(400, 503),
        waits=True,
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/done",
        "done",
        done_one,
        "Finish a reserved job",
        "jobs",
        body=LEASE_BODY,
        response=_ID_STATE,
        errors=_JOB_ERR,
    ),
    Route(
        "POST",
        "/v1/jobs/done",
        "done_batch",
        done_batch,
        "Finish many reserved jobs",
        "jobs",
        body=DONE_BATCH_BODY,
        response=_obj("jobs"),
        errors=(400, 503),
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/touch",
        "touch",
        touch,
        "Extend a reservation by its TTR",
        "jobs",
        body=LEASE_BODY,
        response=_obj("id", "deadline_in_s"),
        errors=_JOB_ERR,
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/release",
        "release",
        release,
        "Give a reserved job back (ready, or delayed)",
        "jobs",
        body=RELEASE_BODY,
        response=_ID_STATE,
        errors=_JOB_ERR,
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/bury",
        "bury",
        bury,
        "Bury a reserved job",
        "jobs",
        body=BURY_BODY,
        response=_ID_STATE,
        errors=_JOB_ERR,
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/kick",
        "kick_job",
        kick_job,
        "Kick one buried or delayed job",
        "jobs",
        body=NO_BODY,
        response=_ID_STATE,
        errors=_JOB_ERR,
    ),
    Route(
        "GET",
        "/v1/jobs/{id}",
        "get_job",
        get_job,
        "A job in any state",
        "jobs",
        query=(Q_ENCODING,),
        response=JOB_SCHEMA,
        errors=_JOB_ERR,
    ),
    Route(
        "DELETE",
        "/v1/jobs/{id}",
        "delete_job",
        delete_job,
        "Delete a job in any state (the lease is checked when given)",
        "jobs",
        query=(QueryField("lease", _q_lease, _LEASE, "checked when given"),),
        response=_obj("id", "state", "previous_state"),
        errors=_JOB_ERR,
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/parents",
        "put_parent",
        put_parent,
        "Put a parent job that waits for its children",
        "jobs",
        body=PARENT_BODY,
        status=201,
        response=_obj("id", "tube", "state", "duplicate"),
        errors=(400, 404, 409, 413, 503, 507),
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/children-started",
        "children_started",
        children_started,
        "Declare that all children of a parent were put",
        "jobs",
        body=NO_BODY,
        response=_obj("id", "limit"),
        errors=_JOB_ERR,
    ),
    # Tubes
    Route(
        "GET",
        "/v1/tubes",
        "list_tubes",
        list_tubes,
        "Tubes, summed over servers",
        "tubes",
        response=_obj("tubes"),
        errors=(503,),
    ),
    Route(
        "GET",
        "/v1/tubes/{tube}",
        "tube_stats",
        tube_stats,
        "Tube stats summed over servers, with a per-server breakdown",
        "tubes",
        response=_obj("servers"),
        errors=(400, 404, 503),
    ),
    Route(
        "GET",
        "/v1/tubes/{tube}/peek",
        "peek_tube",
        peek_tube,
        "The next ready, delayed or buried job of a tube (first server that has one)",
        "tubes",
        query=(QueryField("state", _q_state, {"enum": ["ready", "delayed", "buried"]}), Q_ENCODING),
        response=JOB_SCHEMA,
        errors=(400, 404, 503),
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/kick",
        "kick_tube",
        kick_tube,
        "Kick up to `bound` buried (else delayed) jobs on every server",
        "tubes",
        body=KICK_BODY,
        response=_obj("kicked"),
        errors=(400, 503),
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/pause",
        "pause",
        pause,
        "Pause a tube on every server",
        "tubes",
        body=PAUSE_BODY,
        response=_obj("paused", "servers"),
        errors=(400, 503, 507),
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/unpause",
        "unpause",
        unpause,
        "Unpause a tube",
        "tubes",
        body=NO_BODY,
        response=_obj("paused", "servers"),
        errors=(400, 503),
    ),
    Route(
        "PUT",
        "/v1/tubes/{tube}/throttle",
        "throttle",
        throttle,
        "Set the cluster-wide rate of a tube (split over routable servers)",
        "tubes",
        body=THROTTLE_BODY,
        response=_obj("tps", "per_server"),
        errors=(400, 503, 507),
    ),
    Route(
        "DELETE",
        "/v1/tubes/{tube}/throttle",
        "unthrottle",
        unthrottle,
        "Remove a tube's throttle",
        "tubes",
        response=_obj("servers"),
        errors=(400, 503),
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/drain",
        "drain",
        drain,
        "Refuse new jobs on a tube",
        "tubes",
        body=NO_BODY,
        response=_obj("servers"),
        errors=(400, 503, 507),
    ),
    Route(
        "POST",
        "/v1/tubes/{tube}/undrain",
        "undrain",
        undrain,
        "Accept new jobs again",
        "tubes",
        body=NO_BODY,
        response=_obj("servers"),
        errors=(400, 503),
    ),
    Route(
        "PUT",
        "/v1/tubes/{tube}/shard-limit",
        "shard_limit",
        shard_limit,
        "Set a fair tube's per-shard reservation limit (0 = off)",
        "tubes",
        body=SHARD_LIMIT_BODY,
        response=_obj("limit"),
        errors=(400, 503, 507),
    ),
    Route(
        "DELETE",
        "/v1/tubes/{tube}",
        "clear_tube",
        clear_tube,
        "Delete every job of a tube on every server",
        "tubes",
        response=_obj("deleted"),
        errors=(400, 503),
    ),
    # Cluster
    Route(
        "GET",
        "/v1/servers",
        "list_servers",
        list_servers,
        "Servers and their health",
        "cluster",
        response=_obj("servers"),
        errors=(),
    ),
    Route(
        "POST",
        "/v1/servers",
        "add_server",
        add_server,
        "Add a server at run time",
        "cluster",
        body=ADD_SERVER_BODY,
        status=201,
        errors=(400, 409),
    ),
    Route(
        "POST",
        "/v1/servers/{sid}/drain",
        "drain_server",
        drain_server,
        "Stop putting to a server; remove it once empty",
        "cluster",
        body=NO_BODY,
        errors=(404,),
    ),
    Route(
        "DELETE",
        "/v1/servers/{sid}",
        "remove_server",
        remove_server,
        "Remove a server",
        "cluster",
        query=(
            QueryField(
                "force", _q_force, {"type": "boolean"}, "remove even if it still holds jobs"
            ),
        ),
        errors=(404, 409),
    ),
    Route(
        "GET",
        "/v1/stats",
        "cluster_stats",
        cluster_stats,
        "Cluster totals, per tube and per server",
        "cluster",
        errors=(503,),
    ),
    # Operations
    Route(
        "GET",
        "/healthz",
        "healthz",
        healthz,
        "200 while the process runs",
        "operations",
        response=_obj("status"),
        auth=False,
        bounded=False,
        errors=(),
    ),
    Route(
        "GET",
        "/readyz",
        "readyz",
        readyz,
        "200 when at least one server is up, else 503",
        "operations",
        response=_obj("ready"),
        auth=False,
        bounded=False,
        errors=(503,),
    ),
    Route("GET", "/openapi.json", "openapi", openapi, "This document", "operations", errors=()),
)
