"""What both ways of serving the v1 route table share: the app state and one request pipeline.

A v1 request is served by `allq.gateway.lean` (a lean ASGI path, the usual case) or by
Quart (`allq.gateway.app`, for what the lean path leaves: HEAD, wrong methods, unknown
paths). Both turn the request into `(route, path params, query items, raw body)` and call
`answer_route`, so checks, limits and handlers are one piece of code; both answer errors
with the replies built here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from allq.errors import AllQError, BadFormat, JobTooBig, Unauthorized
from allq.errors import NotFound as NotFoundError
from allq.gateway.bodies import Reply, error_reply, parse_json, parse_query
from allq.gateway.core import GatewayCore
from allq.gateway.metrics import CountingLimiter, GatewayMetrics
from allq.gateway.request_schemas import check_path
from allq.gateway.route import Call, Route

#: Seconds a client has to send a whole request body.
BODY_TIMEOUT_S = 30.0
#: Paths outside /v1/ that answer errors in the v1 shape.
V1_SHAPED = ("/v1/", "/openapi.json", "/metrics")
#: The v1 code of each status `http_error_reply` answers (for the errors-by-code counter).
HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "BAD_FORMAT", 408: "BAD_FORMAT", 413: "JOB_TOO_BIG"}


@dataclass(slots=True)
class GatewayApp:
    """What the app keeps: `app.extensions["allq"]`."""

    core: GatewayCore
    limiter: CountingLimiter
    long_poll_cap_s: float
    api_token: str | None
    document: dict[str, Any]
    metrics: GatewayMetrics


def v1_shaped(path: str) -> bool:
    return path == "/" or path.startswith(V1_SHAPED)


def token_ok(header: str, token: str) -> bool:
    """`header` is `Bearer <token>` (scheme case-insensitive)."""
    scheme, _, credentials = header.partition(" ")
    given = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
    wanted = hashlib.sha256(token.encode("utf-8")).digest()
    # Both sides hashed first: the comparison takes the same time whatever the lengths.
    return hmac.compare_digest(given, wanted) and scheme.lower() == "bearer"


def unauthorized_reply(path: str) -> Reply:
    if v1_shaped(path):
        return error_reply(Unauthorized("a valid 'Authorization: Bearer' token is needed"))
    return Reply({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="allq"'})


def http_error_reply(
    path: str, method: str, status: int, description: str | None, allow: str = ""
) -> Reply:
    """The answer to an HTTP-level error (404, 405, 408, 413, ...) on `path`."""
    headers = {"Allow": allow} if allow else {}
    if not v1_shaped(path):
        text = "not found" if status == 404 else (description or "error").lower()
        return Reply({"error": text}, status, headers)
    error: AllQError
    if status == 404:
        error = NotFoundError(f"no route {path}")
    elif status == 413:
        error = JobTooBig("the request body is larger than the gateway's request limit")
    elif status == 405:
        error = BadFormat(f"{method} is not allowed on {path} (allowed: {allow})")
    elif status < 500:
        error = BadFormat(description or "bad request")
    else:
        error = AllQError(description or "internal error")
    return Reply({"error": error.to_record()}, status, headers)


async def answer_route(
    route: Route,
    state: GatewayApp,
    params: Mapping[str, str],
    query_items: Iterable[tuple[str, str]],
    raw_body: bytes,
) -> Reply:
    """Check the request for `route` (in-flight slot, path, query, body), then run it.

    Raises `AllQError` for a rejected request; nothing has reached the core then.
    """
    bound = state.limiter.request() if route.bounded else nullcontext()
    with bound:
        checked = {name: check_path(name, value) for name, value in params.items()}
        query = parse_query(query_items, route.query)
        if route.body is not None:
            body = route.body.parse(parse_json(raw_body))
        elif raw_body.strip():
            raise BadFormat(f"{route.method} {route.path} takes no request body")
        else:
            body = None
        call = Call(
            core=state.core,
            limiter=state.limiter,
            long_poll_cap_s=state.long_poll_cap_s,
            params=checked,
            body=body,
            query=query,
            document=state.document,
        )
        return await route.handler(call)
