"""REST v1 request parsing and response shapes (api.md §1).

Requests: strict JSON (UTF-8, no NaN/Infinity, no duplicate keys), an object at the top,
unknown fields rejected with BAD_FORMAT naming them, then each field checked in the order
its `Body` lists it. `body` (a JSON string, stored as its UTF-8 bytes) and `body_b64`
(strict standard base64) become one `body: bytes` field; giving both is BAD_FORMAT.
Query strings are checked the same way (`QueryField`), repeated names are BAD_FORMAT.

Responses: `json_response`, `error_response` (`{"error": {"code", "message", "field"?}}`
with the status of `V1_HTTP_STATUS`, plus `Retry-After` on 429/503) and `job_object`
(the job object of api.md §1, derived times from the core's clock).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from quart import Response

from allq.errors import AllQError, BadFormat
from allq.gateway.errors import V1_HTTP_STATUS
from allq.tubes.config import UINT32_MAX
from allq.tubes.validate import (
    IDEMPOTENCY_KEY_RE,
    LOCAL_ID_RE,
    MAX_BATCH,
    MAX_RESERVE_COUNT,
    MAX_RESERVE_TIMEOUT,
    boolean,
    duration,
    integer,
    is_number,
    lease,
    shard_key,
    tube_list,
    tube_name,
)

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
#: Gateway job ids: `<server_id>,<local_id>`. The server id part is checked loosely here
#: (URL-safe, no comma); the core answers NOT_FOUND for a server it does not know.
GATEWAY_JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:~-]{1,64}," + LOCAL_ID_RE.pattern)
SERVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:~-]{1,64}")
_NUMBER_RE: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INT_RE: Final = re.compile(r"-?[0-9]{1,20}")

Check = Callable[[object, str], object]
Schema = dict[str, Any]


# -- strict JSON ---------------------------------------------------------------------------


def _no_constant(name: str) -> object:
    raise BadFormat(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise BadFormat(f"field {key!r} is given twice", field=key)
        result[key] = value
    return result


def parse_json(raw: bytes) -> object:
    """The request body as JSON; an empty body is None (routes decide whether that's {})."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFormat("the request body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, AllQError):
            raise
        raise BadFormat(f"the request body is not valid JSON: {exc}") from None


# -- field checks (value, field path) -> clean value ---------------------------------------


def check_priority(v: object, f: str) -> object:
    return integer(v, f, 0, UINT32_MAX)


def check_delay(v: object, f: str) -> object:
    return duration(v, f, 0, UINT32_MAX)


def check_run_at(v: object, f: str) -> object:
    if not is_number(v) or not math.isfinite(float(v)) or float(v) < 0:  # type: ignore[arg-type]
        raise BadFormat(f"{f} must be a finite unix time ≥ 0", field=f)
    return float(v)  # type: ignore[arg-type]


def check_ttr(v: object, f: str) -> object:
    return duration(v, f, 1, UINT32_MAX)


def check_expired_limit(v: object, f: str) -> object:
    return integer(v, f, 1, 1_000_000)


def check_max_releases(v: object, f: str) -> object:
    return integer(v, f, 0, 2_000_000)


def check_job_id(v: object, f: str) -> str:
    if not isinstance(v, str) or not GATEWAY_JOB_ID_RE.fullmatch(v):
        raise BadFormat(f"{f} must be a job id '<server_id>,<22-character id>'", field=f)
    return v


def check_shard_key(v: object, f: str) -> object:
    return shard_key(v, f)


def check_idempotency_key(v: object, f: str) -> object:
    if not isinstance(v, str) or not IDEMPOTENCY_KEY_RE.fullmatch(v):
        raise BadFormat(f"{f} must be 1-200 printable ASCII characters (0x21-0x7E)", field=f)
    return v


def check_parent_timeout(v: object, f: str) -> object:
    return duration(v, f, 1, UINT32_MAX)


def check_bool(v: object, f: str) -> object:
    return boolean(v, f)


def check_parent_limit(v: object, f: str) -> object:
    return integer(v, f, 1, 1_000_000)


def check_on_child_failure(v: object, f: str) -> object:
    if not isinstance(v, str) or v not in ("wait", "bury"):
        raise BadFormat(f'{f} must be "wait" or "bury"', field=f)
    return v


def check_lease(v: object, f: str) -> object:
    return lease(v, f)


def check_tube(v: object, f: str) -> str:
    return tube_name(v, f)


def check_tubes(v: object, f: str) -> object:
    return tube_list(v, f)


def check_count(v: object, f: str) -> object:
    return integer(v, f, 1, MAX_RESERVE_COUNT)


def check_reserve_timeout(v: object, f: str) -> object:
    return duration(v, f, 0, MAX_RESERVE_TIMEOUT)


def check_bound(v: object, f: str) -> object:
    return integer(v, f, 1, 1_000_000)


def check_pause_seconds(v: object, f: str) -> object:
    return duration(v, f, 0, UINT32_MAX)


def check_tps(v: object, f: str) -> object:
    if not is_number(v) or not math.isfinite(float(v)) or float(v) > 1_000_000:  # type: ignore[arg-type]
        raise BadFormat(f"{f} must be a finite number ≤ 1000000", field=f)
    return float(v)  # type: ignore[arg-type]


def check_shard_limit(v: object, f: str) -> object:
    return integer(v, f, 0, 1_000_000)


def check_address(v: object, f: str) -> object:
    if isinstance(v, str):
        host, sep, port = v.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if (
            sep
            and host
            and len(v) <= 300
            and not any(c.isspace() or c in "/,?#@" for c in host)
            and _INT_RE.fullmatch(port)
            and 1 <= int(port) <= 65535
        ):
            return v
    raise BadFormat(f"{f} must be 'host:port'", field=f)


def check_server_name(v: object, f: str) -> object:
    if not isinstance(v, str) or not SERVER_NAME_RE.fullmatch(v):
        raise BadFormat(f"{f} must be 1-64 characters of letters, digits and _ . : ~ -", field=f)
    return v


# -- bodies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One request field: its check, its JSON Schema and, when it differs, the core's name."""

    name: str
    check: Check
    schema: Schema
    required: bool = False
    core_name: str | None = None


@dataclass(frozen=True, slots=True)
class Body:
    """A JSON object request body. `job_body` adds `body` | `body_b64` (-> `body: bytes`)."""

    fields: tuple[Field, ...] = ()
    job_body: bool = False

    def parse(self, value: object, prefix: str = "") -> dict[str, object]:
        """Check `value` (None means an empty body, read as {}); keys in core vocabulary."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            where = prefix.rstrip(".") or "the request body"
            raise BadFormat(f"{where} must be a JSON object", field=prefix.rstrip(".") or None)
        known = {fld.name: fld for fld in self.fields}
        for name in value:
            if name not in known and not (self.job_body and name in ("body", "body_b64")):
                raise BadFormat(f"unknown field {name!r}", field=f"{prefix}{name}")
        for fld in self.fields:
            if fld.required and fld.name not in value:
                raise BadFormat(f"the field {fld.name!r} is required", field=f"{prefix}{fld.name}")
        clean: dict[str, object] = {}
        if self.job_body:
            body = job_body(value, prefix)
            if body is not None:
                clean["body"] = body
        for fld in self.fields:
            if fld.name in value:
                clean[fld.core_name or fld.name] = fld.check(value[fld.name], prefix + fld.name)
        if "delay" in clean and "run_at" in clean:
            raise BadFormat("give either delay or run_at, not both", field=f"{prefix}run_at")
        return clean

    def schema(self) -> Schema:
        properties: dict[str, Schema] = {}
        if self.job_body:
            properties["body"] = {"type": "string", "description": "stored as its UTF-8 bytes"}
            properties["body_b64"] = {
                "type": "string",
                "contentEncoding": "base64",
                "description": "standard base64 of arbitrary bytes; not with body",
            }
        properties.update({fld.name: fld.schema for fld in self.fields})
        schema: Schema = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        required = [fld.name for fld in self.fields if fld.required]
        if required:
            schema["required"] = required
        return schema


def job_body(value: Mapping[str, object], prefix: str = "") -> bytes | None:
    """`body` (UTF-8 string) or `body_b64` (strict base64) as bytes; None when neither."""
    if "body" in value and "body_b64" in value:
        raise BadFormat("give either body or body_b64, not both", field=f"{prefix}body_b64")
    if "body" in value:
        text = value["body"]
        if not isinstance(text, str):
            raise BadFormat(
                f"{prefix}body must be a string (use body_b64 for bytes)", field=f"{prefix}body"
            )
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadFormat(f"{prefix}body holds a lone surrogate", field=f"{prefix}body") from None
    if "body_b64" in value:
        text = value["body_b64"]
        if not isinstance(text, str) or not text.isascii():
            raise BadFormat(f"{prefix}body_b64 must be a base64 string", field=f"{prefix}body_b64")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadFormat(
                f"{prefix}body_b64 is not standard padded base64", field=f"{prefix}body_b64"
            ) from None
    return None


# -- query strings ---------------------------------------------------------------------------


def query_number(text: str, f: str) -> int | float:
    """A decimal number from a query string: an int when it has no fraction or exponent."""
    if not _NUMBER_RE.fullmatch(text) or len(text) > 40:
        raise BadFormat(f"{f} must be a number, got {text[:40]!r}", field=f)
    return int(text) if _INT_RE.fullmatch(text) else float(text)


def query_bool(text: str, f: str) -> bool:
    if text not in ("true", "false"):
        raise BadFormat(f"{f} must be true or false", field=f)
    return text == "true"


@dataclass(frozen=True, slots=True)
class QueryField:
    name: str
    check: Callable[[str, str], object]
    schema: Schema
    description: str = ""


def parse_query(
    items: Iterable[tuple[str, str]], fields: Iterable[QueryField]
) -> dict[str, object]:
    known = {fld.name: fld for fld in fields}
    clean: dict[str, object] = {}
    for name, text in items:
        fld = known.get(name)
        if fld is None:
            raise BadFormat(f"unknown query parameter {name!r}", field=name)
        if name in clean:
            raise BadFormat(f"query parameter {name!r} is given twice", field=name)
        clean[name] = fld.check(text, name)
    return clean


# -- responses -------------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """A handler's answer: status, JSON payload and extra headers."""

    payload: object
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def json_bytes(payload: object) -> bytes:
    """The compact UTF-8 JSON text of every v1 answer."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def json_response(payload: object, status: int = 200, headers: Mapping[str, str] = {}) -> Response:
    response = Response(json_bytes(payload), status=status, content_type=JSON_CONTENT_TYPE)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def reply_response(reply: Reply) -> Response:
    return json_response(reply.payload, reply.status, reply.headers)


def retry_after_header(seconds: float) -> str:
    """Delay-seconds for `Retry-After` (an integer, at least 1)."""
    if not math.isfinite(seconds):
        return "1"
    return str(max(1, math.ceil(seconds)))


def error_payload(exc: AllQError) -> dict[str, object]:
    return {"error": exc.to_record()}


def error_status(exc: AllQError) -> int:
    return V1_HTTP_STATUS.get(exc.code, 500)


def error_reply(exc: AllQError, extra: Mapping[str, object] = {}) -> Reply:
    """The v1 error answer: `{"error": {...}, **extra}`, its status and headers."""
    status = error_status(exc)
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers["Retry-After"] = retry_after_header(getattr(exc, "retry_after", 1.0))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="allq"'
    return Reply({**error_payload(exc), **extra}, status, headers)


def error_response(exc: AllQError, extra: Mapping[str, object] = {}) -> Response:
    return reply_response(error_reply(exc, extra))


def _seconds(value: float) -> float:
    return round(max(0.0, value), 3)


def render_body(body: object, *, force_base64: bool) -> dict[str, str]:
    data = body if isinstance(body, bytes) else b""
    if not force_base64:
        try:
            return {"body": data.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"body_b64": base64.b64encode(data).decode("ascii")}


def job_object(
    view: Mapping[str, Any], now: float, *, force_base64: bool, with_lease: bool
) -> dict[str, object]:
    """The job object of api.md §1 from a core job view (semantics.md §14)."""
    job: dict[str, object] = {"id": view["id"], "tube": view["tube"]}
    job.update(render_body(view.get("body", b""), force_base64=force_base64))
    state = view.get("state")
    job["state"] = state
    job["priority"] = view.get("priority")
    job["ttr"] = view.get("ttr")
    if with_lease and view.get("lease") is not None:
        job["lease"] = view["lease"]
    if state == "reserved" and view.get("ttr_deadline") is not None:
        job["deadline_in_s"] = _seconds(float(view["ttr_deadline"]) - now)
    if state == "delayed" and view.get("due_at") is not None:
        job["delay_left_s"] = _seconds(float(view["due_at"]) - now)
    created = view.get("created_at")
    job["age_s"] = _seconds(now - float(created)) if created is not None else 0.0
    for counter in ("reserves", "timeouts", "releases", "buries", "kicks"):
        job[counter] = view.get(counter, 0)
    for optional in ("parent_id", "shard_key"):
        if view.get(optional) is not None:
            job[optional] = view[optional]
    return job


def rename_field(exc: AllQError, renames: Mapping[str, str]) -> AllQError:
    """Point an error's `field` at the REST name when the core used its own name."""
    if exc.field is not None:
        exc.field = renames.get(exc.field, exc.field)
    return exc


def item_error(exc: AllQError) -> dict[str, object]:
    return {"error": exc.to_record()}


MAX_ITEMS: Final = MAX_BATCH
