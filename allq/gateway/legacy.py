"""The original AllQ actions over the gateway core, and the legacy REST API (api.md §3).

Two fronts speak the original AllQ client's vocabulary: the root-path REST routes
registered here, and the line protocol (`allq.gateway.line`). Like the original client's
HTTP front, a legacy route turns its request into an original action name and a params
map; `run_action` checks the params, calls the `GatewayCore` (nothing else) and returns
the original's `response` node (semantics.md §19 for the mapping). Each front then shapes
that node its own way: `rest_payload` here, `line_payload` in the line module.

Params: the original's field names (`ttl` for ttr, `tube_name` for `tube`). Numbers may
be JSON numbers or decimal strings (the original sent strings), booleans `true`/`false`
or those strings. Every value is then checked as in v1; an unknown field is BAD_FORMAT
naming it, except the few the original sent that allq has no use for (`IGNORED`).

Job hashes (canonical form, REST shape): `{"id", "body" | "body_b64", "tube",
"expireds", "releases"}`; `{}` is "no job". `body_b64` appears only for stored bytes that
are not UTF-8 (never for a job put through a legacy front).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from quart import Response, request

from allq.errors import AllQError, BadFormat, NotFound, TimedOut, error_from_code
from allq.gateway import bodies as b
from allq.gateway.core import GatewayCore, JobView

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from allq.gateway.front import GatewayApp

log = logging.getLogger(__name__)

Job = dict[str, Any]
#: Fields the original sent that allq accepts and ignores (action -> names).
IGNORED: Final[Mapping[str, frozenset[str]]] = {
    "delete": frozenset({"tube"}),
    "clear": frozenset({"cache_type"}),
}


# -- params ------------------------------------------------------------------------------------


def _number(value: object, f: str) -> object:
    """A JSON number, or a decimal string as the original clients sent (then the v1 check)."""
    if isinstance(value, str):
        return b.query_number(value.strip(), f)
    return value


def _flag(value: object, f: str) -> bool:
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise BadFormat(f"{f} must be true or false", field=f)
    return value


class Params:
    """One action's params, checked field by field on access."""

    def __init__(self, action: str, raw: Mapping[str, object], allowed: frozenset[str]) -> None:
        known = allowed | IGNORED.get(action, frozenset())
        for name in raw:
            if name not in known:
                raise BadFormat(f"{action} takes no field {name!r}", field=name)
        self.raw = raw

    def has(self, name: str) -> bool:
        return name in self.raw

    def tube(self) -> str:
        if "tube" in self.raw and "tube_name" in self.raw:
            raise BadFormat("give either tube or tube_name, not both", field="tube_name")
        name = "tube_name" if "tube_name" in self.raw else "tube"
        if name not in self.raw:
            raise BadFormat("the field 'tube' is required", field="tube")
        return b.check_tube(self.raw[name], name)

    def job_id(self) -> str:
        if "job_id" not in self.raw:
            raise BadFormat("the field 'job_id' is required", field="job_id")
        return b.check_job_id(self.raw["job_id"], "job_id")

    def number(self, name: str, check: b.Check) -> Any:
        if name not in self.raw:
            return None
        return check(_number(self.raw[name], name), name)

    def flag(self, name: str) -> bool:
        return name in self.raw and _flag(self.raw[name], name)

    def body(self) -> bytes:
        return b.job_body(self.raw) or b""


_JOB_FIELDS: Final = (
    ("ttl", "ttr", b.check_ttr),
    ("priority", "priority", b.check_priority),
    ("expired_limit", "expired_limit", b.check_expired_limit),
    ("max_releases", "max_releases", b.check_max_releases),
)
_TEXT_FIELDS: Final = (
    ("parent_id", b.check_job_id),
    ("shard_key", b.check_shard_key),
    ("idempotency_key", b.check_idempotency_key),
)


def _job_fields(p: Params) -> dict[str, object]:
    """Put fields in the core's vocabulary (body as bytes)."""
    if p.has("id"):
        raise BadFormat(
            "a caller-supplied job id is not supported: use idempotency_key", field="id"
        )
    fields: dict[str, object] = {"body": p.body()}
    for name, core_name, check in _JOB_FIELDS:
        value = p.number(name, check)
        if value is not None:
            fields[core_name] = value
    for name, text_check in _TEXT_FIELDS:
        if p.has(name):
            fields[name] = text_check(p.raw[name], name)
    return fields


# -- jobs --------------------------------------------------------------------------------------


def legacy_job(view: JobView) -> Job:
    """A core job view as the original's job hash (REST field names, integer counters)."""
    job: Job = {"id": view["id"]}
    job.update(b.render_body(view.get("body", b""), force_base64=False))
    job["tube"] = view["tube"]
    job["expireds"] = int(view.get("timeouts", 0))
    job["releases"] = int(view.get("releases", 0))
    return job


async def _reserve(core: GatewayCore, tube: str, count: int, delete: bool) -> list[Job]:
    """A non-blocking reserve; with `delete`, each job is finished at once (a completion)."""
    try:
        views = await core.reserve([tube], count=count, wait_s=0.0)
    except TimedOut:
        return []
    if not delete or not views:
        return [legacy_job(view) for view in views]
    results = await core.done_many([(view["id"], view.get("lease")) for view in views])
    kept = [legacy_job(v) for v, r in zip(views, results, strict=True) if "error" not in r]
    failed = [r["error"] for r in results if "error" in r]
    for error in failed:  # those jobs stay reserved and come back when their TTR ends
        log.warning("get with delete: done failed after the reserve: %s", error)
    if failed and not kept:
        raise error_from_code(failed[0].get("code", "INTERNAL"), failed[0].get("message", ""))
    return kept


# -- actions -----------------------------------------------------------------------------------

Node = dict[str, Any]
Run = Callable[[GatewayCore, Params], Awaitable[Node]]


async def _put(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    fields = _job_fields(p)
    if p.has("delay"):
        fields["delay"] = p.number("delay", b.check_delay)
    result = await core.put(tube, fields)
    return {"action": "put", "job_id": result["id"]}


async def _put_parent(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    fields = _job_fields(p)
    for name, check in (("timeout", b.check_parent_timeout), ("limit", b.check_parent_limit)):
        if p.has(name):
            fields[name] = p.number(name, check)
    for name in ("run_on_timeout", "noop"):
        if p.has(name):
            fields[name] = p.flag(name)
    if p.has("on_child_failure"):
        fields["on_child_failure"] = b.check_on_child_failure(
            p.raw["on_child_failure"], "on_child_failure"
        )
    result = await core.put_parent(tube, fields)
    body = fields["body"]
    job = legacy_job({"id": result["id"], "tube": tube, "body": body})
    return {"action": "set_parent", "job_id": result["id"], "job": job}


async def _get(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    count = p.number("count", b.check_count) or 1
    jobs = await _reserve(core, tube, count, p.flag("delete"))
    if count > 1:
        return {"action": "get", "jobs": jobs}
    return {"action": "get", "job": jobs[0] if jobs else {}}


async def _get_multiple(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    count = p.number("count", b.check_count) or 1
    return {"action": "get", "jobs": await _reserve(core, tube, count, p.flag("delete"))}


async def _peek(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    state = "buried" if p.flag("buried") else "ready"
    try:
        job = legacy_job(await core.peek_tube(tube, state))
    except NotFound:
        job = {}
    return {"action": "peek", "job": job}


def _job_op(action: str, op: str, extra: tuple[tuple[str, b.Check], ...] = ()) -> Run:
    async def run(core: GatewayCore, p: Params) -> Node:
        job_id = p.job_id()
        fields = {name: p.number(name, check) for name, check in extra if p.has(name)}
        await core.job_op(op, job_id, fields)
        return {"action": action, "job_id": job_id}

    return run


async def _kick(core: GatewayCore, p: Params) -> Node:
    if p.has("job_id"):
        if p.has("tube") or p.has("tube_name"):
            raise BadFormat("give either tube or job_id, not both", field="job_id")
        job_id = p.job_id()
        await core.job_op("kick_job", job_id, {})
        return {"action": "kick", "job_id": job_id}
    tube = p.tube()
    # Kick one job, buried first (as `kick` with bound 1), and name it: peek, then kick
    # that job; another client may kick it first, so look again a few times.
    for state in ("buried", "delayed"):
        for _ in range(5):
            try:
                view = await core.peek_tube(tube, state)
            except NotFound:
                break
            try:
                await core.job_op("kick_job", view["id"], {})
            except NotFound:
                continue
            return {"action": "kick", "job_id": view["id"]}
    return {"action": "kick"}


def _tube_op(action: str) -> Run:
    async def run(core: GatewayCore, p: Params) -> Node:
        await core.tube_control(action, p.tube(), {})
        return {"action": action}

    return run


async def _throttle(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    if not p.has("tps"):
        raise BadFormat("the field 'tps' is required", field="tps")
    await core.tube_control("throttle", tube, {"tps": p.number("tps", b.check_tps)})
    return {"action": "throttle", "value": "true"}


async def _clear(core: GatewayCore, p: Params) -> Node:
    tube = p.tube()
    if p.has("cache_type") and p.raw["cache_type"] != "all":
        raise BadFormat('cache_type must be "all": clear removes every job', field="cache_type")
    result = await core.tube_control("clear", tube, {})
    return {"action": "clear", **{k: v for k, v in result.items() if k != "servers"}}


async def _stats(core: GatewayCore, p: Params) -> Node:
    stats = await core.stats()
    tubes: dict[str, list[dict[str, Any]]] = {sid: [] for sid in stats["servers"]}
    puts: dict[str, int] = dict.fromkeys(stats["servers"], 0)
    for summary in stats["tubes"]:
        try:
            per_server = (await core.tube_stats(summary["name"]))["servers"]
        except NotFound:  # collected meanwhile
            continue
        for sid, s in per_server.items():
            entry: dict[str, Any] = {"tube": summary["name"]}
            for key in ("ready", "reserved", "delayed", "buried"):
                entry[key] = int(s.get(key, 0))
            entry["parents"] = int(s.get("waiting", 0))
            if s.get("throttle_tps") is not None:
                entry["throttle_size"] = s["throttle_tps"]
            entry["avg"] = round(float(s.get("avg_work_s") or 0.0), 3)
            entry["tps"] = round(float(s.get("completions_per_s", 0.0)), 3)
            tubes.setdefault(sid, []).append(entry)
            puts[sid] = puts.get(sid, 0) + int(s.get("total_puts", 0))
    servers = []
    for sid in sorted(tubes):
        ops = stats["servers"].get(sid, {}).get("ops", {})
        servers.append(
            {
                "server_name": sid,
                "action_count": sum(int(n) for n in ops.values()),
                "job_put": puts.get(sid, 0),
                "job_get": int(ops.get("reserve", 0)),
                "stats": tubes[sid],
            }
        )
    return {"action": "stats", "servers": servers}


async def _ping(core: GatewayCore, p: Params) -> Node:
    servers = {str(s["id"]): s["state"] != "down" for s in core.servers() if s.get("id")}
    return {"action": "ping", "servers": servers}


@dataclass(frozen=True, slots=True)
class Action:
    run: Run
    fields: frozenset[str]


def _fields(*names: str) -> frozenset[str]:
    return frozenset(names)


_PUT_FIELDS: Final = _fields(
    "tube", "body", "body_b64", "ttl", "priority", "parent_id", "shard_key",
    "expired_limit", "max_releases", "idempotency_key", "id",
)  # fmt: skip
_JOB: Final = _fields("job_id")

#: The original AllQ client's actions (api.md §4): name -> implementation and fields.
ACTIONS: Final[Mapping[str, Action]] = {
    "put": Action(_put, _PUT_FIELDS | {"delay"}),
    "set_parent_job": Action(
        _put_parent,
        _PUT_FIELDS | {"timeout", "run_on_timeout", "limit", "noop", "on_child_failure"},
    ),
    "get": Action(_get, _fields("tube", "tube_name", "delete", "count")),
    "get_multiple_jobs": Action(_get_multiple, _fields("tube", "tube_name", "delete", "count")),
    "peek": Action(_peek, _fields("tube", "tube_name", "buried")),
    "done": Action(_job_op("done", "done"), _JOB),
    "delete": Action(_job_op("delete", "delete"), _JOB),
    "touch": Action(_job_op("touch", "touch"), _JOB),
    "release": Action(
        _job_op("release", "release", (("delay", b.check_delay), ("priority", b.check_priority))),
        _JOB | {"delay", "priority"},
    ),
    "bury": Action(_job_op("bury", "bury"), _JOB),
    "set_children_started": Action(_job_op("set_children_started", "set_children_started"), _JOB),
    "kick": Action(_kick, _fields("tube", "tube_name", "job_id")),
    "pause": Action(_tube_op("pause"), _fields("tube", "tube_name")),
    "unpause": Action(_tube_op("unpause"), _fields("tube", "tube_name")),
    "throttle": Action(_throttle, _fields("tube", "tube_name", "tps")),
    "clear": Action(_clear, _fields("tube", "tube_name")),
    "stats": Action(_stats, frozenset()),
    "ping": Action(_ping, frozenset()),
}


async def run_action(core: GatewayCore, action: str, raw: Mapping[str, object]) -> Node:
    """Run one original action; returns its `response` node (canonical job hashes)."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise BadFormat(f"unknown action {action[:64]!r}", field="action")
    return await spec.run(core, Params(action, raw, spec.fields))


# -- the REST front ----------------------------------------------------------------------------


def rest_payload(response: Node) -> object:
    """The legacy REST body of an action's response node (api.md §3)."""
    action = response["action"]
    if action in ("get", "peek") and "job" in response:
        return response["job"]
    if action == "get":
        return {"jobs": response["jobs"]}
    if action == "stats":
        return response["servers"]
    if action == "clear":
        return {}
    return response


def legacy_error(exc: AllQError) -> Response:
    """`{"error": "<message>"}` with the status of the error's code (not 200, unlike the
    original), and `Retry-After` on 429/503."""
    status = b.error_status(exc)
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = b.retry_after_header(getattr(exc, "retry_after", 1.0))
    return b.json_response({"error": exc.message}, status, headers)


@dataclass(frozen=True, slots=True)
class LegacyRoute:
    method: str
    path: str
    action: str
    query: frozenset[str]
    json_body: bool = False


_TUBE_Q: Final = _fields("tube", "tube_name")
LEGACY_ROUTES: Final[tuple[LegacyRoute, ...]] = (
    LegacyRoute("POST", "/job", "put", frozenset(), json_body=True),
    LegacyRoute("GET", "/job", "get", _TUBE_Q | {"delete"}),
    LegacyRoute("GET", "/multiple_job", "get_multiple_jobs", _TUBE_Q | {"count", "delete"}),
    LegacyRoute("GET", "/peek", "peek", _TUBE_Q | {"buried"}),
    LegacyRoute("GET", "/stats", "stats", frozenset()),
    LegacyRoute("PUT", "/touch", "touch", _JOB),
    LegacyRoute("PUT", "/done", "done", _JOB),
    LegacyRoute("PUT", "/bury", "bury", _JOB),
    LegacyRoute("PUT", "/release", "release", _JOB | {"delay"}),
    LegacyRoute("PUT", "/kick", "kick", _TUBE_Q | {"job_id"}),
    LegacyRoute("PUT", "/pause", "pause", _TUBE_Q),
    LegacyRoute("PUT", "/unpause", "unpause", _TUBE_Q),
    LegacyRoute("PUT", "/set_children_started", "set_children_started", _JOB),
    LegacyRoute("DELETE", "/job", "delete", _JOB | {"tube"}),
    LegacyRoute("DELETE", "/tube", "clear", _TUBE_Q | {"cache_type"}),
    LegacyRoute("POST", "/parent_job", "set_parent_job", frozenset(), json_body=True),
    LegacyRoute("POST", "/throttle", "throttle", frozenset(), json_body=True),
)


def _query(items: list[tuple[str, str]], allowed: frozenset[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for name, value in items:
        if name not in allowed:
            raise BadFormat(f"unknown query parameter {name!r}", field=name)
        if name in params:
            raise BadFormat(f"query parameter {name!r} is given twice", field=name)
        params[name] = value
    return params


def _view(route: LegacyRoute, state: GatewayApp) -> Callable[[], Awaitable[Response]]:
    async def view() -> Response:
        try:
            with state.limiter.request():
                params = _query(list(request.args.items(multi=True)), route.query)
                if route.json_body:
                    data = await request.get_data(cache=False, as_text=False)
                    body = b.parse_json(data if isinstance(data, bytes) else data.encode())
                    if not isinstance(body, dict):
                        raise BadFormat("the request body must be a JSON object")
                    params.update(body)
                response = await run_action(state.core, route.action, params)
        except AllQError as exc:
            return legacy_error(exc)
        return b.json_response(rest_payload(response))

    view.__name__ = f"legacy_{route.method.lower()}_{route.path.strip('/')}"
    return view


def register_legacy_routes(app: QuartTrio, state: GatewayApp) -> None:
    """Add the original AllQ client's REST routes (api.md §3) at the root path of `app`."""
    for route in LEGACY_ROUTES:
        view = _view(route, state)
        app.add_url_rule(
            route.path,
            endpoint=view.__name__,
            view_func=view,
            methods=[route.method],
            provide_automatic_options=False,
        )
