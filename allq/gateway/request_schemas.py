"""What a v1 request may carry: path parameters, bodies and query fields, each with its check.

Each body (`Body`, `PutBody`) and query field (`QueryField`) both checks a value (clean
fields, or `BadFormat` naming the field) and gives its JSON Schema, so the route table
(`allq.gateway.routes`) that names them drives the checks and `/openapi.json` alike. The
generic machinery and the per-value checks are `allq.gateway.bodies`; this module holds
the v1 shapes made of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from allq.errors import AllQError, BadFormat
from allq.gateway import bodies as b
from allq.gateway.bodies import Body, Field, QueryField, Schema

# -- path parameters -------------------------------------------------------------------------


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
JOB_ID_SCHEMA: Final = {"type": "string", "pattern": b.GATEWAY_JOB_ID_RE.pattern}
_LEASE: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"}
_TUBE: Final = {"type": "string", "minLength": 1, "maxLength": 200}

F_PRIORITY: Final = Field("priority", b.check_priority, _UINT32)
F_DELAY: Final = Field("delay", b.check_delay, _SECONDS)
F_LEASE: Final = Field("lease", b.check_lease, _LEASE, required=True)
_JOB_TAIL: Final = (
    Field("ttr", b.check_ttr, {**_SECONDS, "minimum": 1}),
    Field("expired_limit", b.check_expired_limit, {"type": "integer", "minimum": 1}),
    Field("max_releases", b.check_max_releases, {"type": "integer", "minimum": 0}),
    Field("parent_id", b.check_job_id, JOB_ID_SCHEMA),
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
_DONE_ITEM: Final = Body((Field("id", b.check_job_id, JOB_ID_SCHEMA, required=True), F_LEASE))


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
Q_LEASE: Final = QueryField("lease", _q_lease, _LEASE, "checked when given")
Q_STATE: Final = QueryField("state", _q_state, {"enum": ["ready", "delayed", "buried"]})
Q_FORCE: Final = QueryField(
    "force", _q_force, {"type": "boolean"}, "remove even if it still holds jobs"
)
