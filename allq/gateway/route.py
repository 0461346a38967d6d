"""What a v1 route is and what its handler gets: `Route`, `Call`, and the in-flight `Limiter`.

`Route` is one entry of the table (`allq.gateway.routes.ROUTES`): method, path, handler, the
body and query it takes and what the OpenAPI document says of it. `Call` is the request a
handler receives once path parameters, body and query are checked (`allq.gateway.front`,
`allq.gateway.line`). `Limiter` bounds the requests in flight and the long polls waiting;
a call carries it so that a long poll can trade its slot. Nothing here knows Quart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from allq.gateway import bodies as b
from allq.gateway.bodies import QueryField, Reply, Schema
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
