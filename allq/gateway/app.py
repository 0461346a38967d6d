"""`create_app`: the REST v1 front (api.md §1-2) as a Quart-Trio app over a `GatewayCore`.

There is no module-level app. Every route comes from `routes.ROUTES`; each is wrapped so
that, in order: the bearer token is checked (before_request, every route but /healthz and
/readyz, unknown paths included), an in-flight slot is taken (429 OVERLOADED at once past
`max_inflight`), path parameters, query and JSON body are checked, then the handler runs
(`front.answer_route`). Requests that match a `ROUTES` entry exactly are answered by the
same pipeline before Quart sees them (`allq.gateway.lean.LeanRoutes`, wrapped around
`app.asgi_app`); Quart serves the rest: HEAD, wrong methods, unknown paths, legacy routes,
metrics and the dashboard.

Errors: `AllQError` -> `{"error": {"code","message","field"?}}` with `V1_HTTP_STATUS` (and
`Retry-After` on 429/503); Werkzeug's HTTP errors (404, 405, 413, 408) -> the v1 shape
under /v1/ (and the other v1 operation paths), `{"error": "<text>"}` elsewhere; anything
else -> 500 INTERNAL, logged. Handlers are registered for leaf types: quart-trio unwraps
ExceptionGroups raised by a handler and tries each member (design.md pitfall 19).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from allq import __version__
from allq.errors import AllQError, Unauthorized
from allq.gateway.bodies import error_response, reply_response
from allq.gateway.core import GatewayCore
from allq.gateway.front import (
    BODY_TIMEOUT_S,
    HTTP_ERROR_CODES,
    GatewayApp,
    answer_route,
    http_error_reply,
    token_ok,
    unauthorized_reply,
    v1_shaped,
)
from allq.gateway.lean import LeanRoutes
from allq.gateway.metrics import CountingLimiter, GatewayMetrics
from allq.gateway.openapi import build_document
from allq.gateway.route import Route
from allq.gateway.routes import ROUTES

logger = logging.getLogger(__name__)

#: Added to the long-poll cap for Quart's RESPONSE_TIMEOUT (which, in quart-trio 0.12,
#: bounds sending the response; the long poll itself is bounded by the cap).
RESPONSE_MARGIN_S = 30.0

__all__ = ["GatewayApp", "create_app"]


def _view(route: Route, state: GatewayApp) -> Callable[..., Awaitable[Response]]:
    """The Quart view of `route` (reached for what `LeanRoutes` passes on, e.g. HEAD)."""

    async def view(**params: str) -> Response:
        started = time.perf_counter()
        try:
            data = await request.get_data(cache=False, as_text=False)
            raw = data if isinstance(data, bytes) else data.encode()
            query = request.args.items(multi=True)
            return reply_response(await answer_route(route, state, params, query, raw))
        finally:  # observability: latency per route, errors included
            state.metrics.request_done(route.name, time.perf_counter() - started)

    view.__name__ = route.name
    view.__qualname__ = f"v1.{route.name}"
    return view


def _http_error(exc: HTTPException) -> Response:
    allow = ""
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        allow = ", ".join(sorted(exc.valid_methods))
    status = exc.code or 500
    # Outside the v1 shape the answer is the error's short name ("method not allowed").
    description = (exc.description or exc.name) if v1_shaped(request.path) else exc.name
    reply = http_error_reply(request.path, request.method, status, description, allow)
    return reply_response(reply)


def create_app(
    core: GatewayCore,
    *,
    api_token: str | None,
    max_body_bytes: int,
    max_inflight: int,
    max_waiting: int,
    long_poll_cap_s: float,
) -> QuartTrio:
    """The REST v1 app over `core` (see the module docstring).

    `max_body_bytes`: larger requests get 413 JOB_TOO_BIG. `max_inflight` / `max_waiting`:
    bounds on requests in flight and on waiting long polls (429 OVERLOADED past them).
    `long_poll_cap_s`: the longest a reserve waits, whatever its `timeout` (≤ 300 asked).
    """
    if max_body_bytes < 1 or max_inflight < 1 or max_waiting < 0:
        raise ValueError("max_body_bytes and max_inflight must be ≥ 1, max_waiting ≥ 0")
    if not long_poll_cap_s > 0:
        raise ValueError("long_poll_cap_s must be > 0")
    if api_token is not None and not api_token:
        raise ValueError("api_token must not be empty (give None for no token)")

    # No automatic /static route: the dashboard's files are served by `observability`.
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    app.config["RESPONSE_TIMEOUT"] = long_poll_cap_s + RESPONSE_MARGIN_S
    limiter = CountingLimiter(max_inflight=max_inflight, max_waiting=max_waiting)
    state = GatewayApp(
        core=core,
        limiter=limiter,
        long_poll_cap_s=long_poll_cap_s,
        api_token=api_token,
        document=build_document(ROUTES, auth=api_token is not None, version=__version__),
        metrics=GatewayMetrics(limiter),
    )
    app.extensions["allq"] = state
    public = frozenset(route.path for route in ROUTES if not route.auth)

    for route in ROUTES:
        app.add_url_rule(
            route.rule,
            endpoint=route.name,
            view_func=_view(route, state),
            methods=[route.method],
            provide_automatic_options=False,
        )

    # The other fronts served by the same app (each its own module, registered here).
    from allq.gateway.legacy import register_legacy_routes
    from allq.gateway.observability import register_observability

    register_legacy_routes(app, state)
    public |= register_observability(app, state)  # the dashboard page and its files

    @app.before_request
    async def check_token() -> Response | None:
        if api_token is None or request.path in public:
            return None
        if token_ok(request.headers.get("Authorization", ""), api_token):
            return None
        state.metrics.error(Unauthorized.code)
        return reply_response(unauthorized_reply(request.path))

    async def on_allq_error(exc: AllQError) -> Response:
        state.metrics.error(exc.code)
        return error_response(exc)

    async def on_http_error(exc: HTTPException) -> Response:
        response = _http_error(exc)
        status = response.status_code
        state.metrics.error(
            HTTP_ERROR_CODES.get(status, "BAD_FORMAT" if status < 500 else "INTERNAL")
        )
        return response

    async def on_unexpected(exc: Exception) -> Response:
        state.metrics.error("INTERNAL")
        logger.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(AllQError(f"internal error: {type(exc).__name__}"))

    app.register_error_handler(AllQError, on_allq_error)
    app.register_error_handler(HTTPException, on_http_error)
    app.register_error_handler(Exception, on_unexpected)
    # The v1 table's own requests skip Quart's request machinery (see allq.gateway.lean).
    app.asgi_app = LeanRoutes(  # type: ignore[method-assign,assignment]
        app.asgi_app, state, ROUTES, max_body_bytes=max_body_bytes
    )
    return app
