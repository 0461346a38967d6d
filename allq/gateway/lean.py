"""`LeanRoutes`: the v1 route table served straight from ASGI, in front of Quart.

Why: Quart's per-request machinery (request and response objects, contexts, URL adapter,
a message task per request) cost about as much CPU as the work of a put or a reserve
(performance.md: "a lean path for the hot routes is legitimate"). This middleware wraps
`app.asgi_app` and answers every request whose method and path match a `ROUTES` entry
exactly; everything else (HEAD, a wrong method, unknown paths, the legacy API, metrics,
the dashboard) goes on to Quart. Checks, limits and handlers are `front.answer_route`, the
same code Quart's views call, so both paths answer alike (tests/gateway/test_lean.py).

Per request: match (a dict for fixed paths, then patterns), token, body (bounded by
`max_body_bytes`, 413 as soon as Content-Length or the bytes read pass it; 408 past
`BODY_TIMEOUT_S`), `answer_route`, one JSON answer. Routes that wait (long-poll reserves)
also watch for `http.disconnect` and are cancelled when the client leaves, so a reserve
whose client is gone hands its job back; a short request just finishes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import trio

from allq.errors import AllQError, Unauthorized
from allq.gateway.bodies import JSON_CONTENT_TYPE, Reply, error_reply, json_bytes
from allq.gateway.front import (
    BODY_TIMEOUT_S,
    HTTP_ERROR_CODES,
    GatewayApp,
    answer_route,
    http_error_reply,
    token_ok,
    unauthorized_reply,
)
from allq.gateway.route import Route

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

_CONTENT_TYPE = JSON_CONTENT_TYPE.encode("latin-1")


class _BodyTooBig(Exception):
    pass


class _ClientGone(Exception):
    pass


class RouteTable:
    """Method + path -> (route, path parameters), matching what Werkzeug's rules match."""

    def __init__(self, routes: tuple[Route, ...]):
        self._fixed: dict[tuple[str, str], Route] = {}
        patterns: list[tuple[int, re.Pattern[str], Route]] = []
        for route in routes:
            if not route.path_params:
                self._fixed[(route.method, route.path)] = route
                continue
            parts = re.split(r"\{(\w+)\}", route.path)
            # Werkzeug's default converter: one non-empty segment without "/".
            pattern = "".join(
                re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)"
                for i, part in enumerate(parts)
            )
            fixed_chars = sum(len(part) for part in parts[::2])
            patterns.append((fixed_chars, re.compile(pattern), route))
        # More fixed text first: a fixed segment wins over a parameter, as in Werkzeug.
        patterns.sort(key=lambda item: -item[0])
        self._patterns: dict[str, list[tuple[re.Pattern[str], Route]]] = {}
        for _, regex, route in patterns:
            self._patterns.setdefault(route.method, []).append((regex, route))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._fixed.get((method, path))
        if route is not None:
            return route, {}
        for regex, candidate in self._patterns.get(method, ()):
            found = regex.fullmatch(path)
            if found is not None:
                return candidate, found.groupdict()
        return None


class LeanRoutes:
    """ASGI middleware: `ROUTES` requests answered here, the rest passed to `fallback`."""

    def __init__(
        self,
        fallback: ASGIApp,
        state: GatewayApp,
        routes: tuple[Route, ...],
        *,
        max_body_bytes: int,
    ):
        self.fallback = fallback
        self.state = state
        self.table = RouteTable(routes)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.table.match(scope["method"], scope["path"])
            if found is not None:
                route, params = found
                started = time.perf_counter()
                try:
                    await self._serve(route, params, scope, receive, send)
                finally:  # observability: latency per route, errors included
                    self.state.metrics.request_done(route.name, time.perf_counter() - started)
                return
        await self.fallback(scope, receive, send)

    async def _serve(
        self,
        route: Route,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        path: str = scope["path"]
        token = self.state.api_token
        if token and route.auth and not token_ok(_header(scope, b"authorization"), token):
            self.state.metrics.error(Unauthorized.code)
            await _send_reply(send, unauthorized_reply(path))
            return
        try:
            raw = await self._read_body(scope, receive)
        except _BodyTooBig:
            await self._http_error(send, path, scope["method"], 413, None)
            return
        except trio.TooSlowError:
            await self._http_error(send, path, scope["method"], 408, "request body timed out")
            return
        except _ClientGone:
            return
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if not route.waits:
            await _send_reply(send, await self._answer(route, params, query, raw))
            return
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            replies.append(await self._answer(route, params, query, raw))
            nursery.cancel_scope.cancel()
        # No reply: the client left and the long poll was cancelled; nobody to answer.
        for reply in replies:
            await _send_reply(send, reply)

    async def _answer(
        self, route: Route, params: dict[str, str], query: list[tuple[str, str]], raw: bytes
    ) -> Reply:
        try:
            return await answer_route(route, self.state, params, query, raw)
        except AllQError as exc:
            self.state.metrics.error(exc.code)
            return error_reply(exc)
        except ExceptionGroup as group:
            # A core nursery may group errors (design.md pitfall 19): answer the first one.
            first = _first_leaf(group)
            if isinstance(first, AllQError):
                self.state.metrics.error(first.code)
                return error_reply(first)
            return self._unexpected(route, group)
        except Exception as exc:
            return self._unexpected(route, exc)

    def _unexpected(self, route: Route, exc: Exception) -> Reply:
        self.state.metrics.error("INTERNAL")
        logger.error("unexpected error on %s %s", route.method, route.path, exc_info=exc)
        return error_reply(AllQError(f"internal error: {type(exc).__name__}"))

    async def _http_error(
        self, send: Send, path: str, method: str, status: int, description: str | None
    ) -> None:
        self.state.metrics.error(HTTP_ERROR_CODES.get(status, "BAD_FORMAT"))
        await _send_reply(send, http_error_reply(path, method, status, description))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _BodyTooBig
        chunks: list[bytes] = []
        size = 0
        with trio.fail_after(BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _BodyTooBig
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _send_reply(send: Send, reply: Reply) -> None:
    body = json_bytes(reply.payload)
    headers = [(b"content-type", _CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
    for name, value in reply.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
