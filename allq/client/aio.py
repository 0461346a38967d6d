"""`AsyncAllQ`: the Trio client over REST v1, h11 on Trio sockets with keep-alive.

One connection per request in flight, taken from a small pool of idle keep-alive
connections (new ones are opened as needed, at most `max_connections` at once); a long
poll holds its connection while it waits. Answers are read by Content-Length (h11), and
every request has a deadline: `timeout_s` plus the time the gateway may hold it.

Resource handling: the client owns its connections; `aclose()` (or `async with`) closes
the idle ones, and a connection in use is closed when its request ends.

Cancellation: cancelling a request closes its connection at once (its state is unknown),
so the gateway sees the client go (a cancelled long poll loses no job, api.md §2). A
request cancelled after it was sent may or may not have been applied.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

import h11
import trio

from allq.client import ops
from allq.client.errors import NotFound, TransportError
from allq.client.http import (
    DEFAULT_MAX_IDLE,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    IDLE_LIMIT_S,
    Endpoint,
    dropped,
    request_headers,
)
from allq.client.model import ItemResult, Job, JobRef, NewJob, Put, Reserved

T = TypeVar("T")
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class _Retry(Exception):
    """A reused connection failed before any byte of an answer: send again."""


class _Connection:
    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = math.inf
        self.reused = False

    @property
    def socket(self) -> trio.socket.SocketType:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            return stream.transport_stream.socket
        return stream.socket

    def abort(self) -> None:
        """Close now, without awaiting (safe in `except`/`finally` while cancelled)."""
        self.socket.close()

    async def exchange(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str | None, bytes]:
        received = False
        try:
            out = self.h11.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                out += self.h11.send(h11.Data(data=body)) or b""
            out += self.h11.send(h11.EndOfMessage()) or b""
            await self.stream.send_all(out or b"")
            status, retry_after, chunks = 0, None, []
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await self.stream.receive_some(65536)
                    received = received or bool(data)
                    self.h11.receive_data(bytes(data))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"retry-after":
                            retry_after = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return status, retry_after, b"".join(chunks)
                elif isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("the gateway closed the connection")
        except _IO_ERRORS as exc:
            if self.reused and not received:
                raise _Retry from exc
            raise TransportError(f"request failed: {str(exc) or type(exc).__name__}") from exc

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class AsyncAllQ:
    """Trio client for the allq gateway's REST v1 API.

    Args:
        url: the gateway, e.g. ``http://127.0.0.1:8090`` (a path prefix is kept).
        token: the API token (sent as ``Authorization: Bearer``), if the gateway needs one.
        timeout_s: deadline of each request, on top of a long poll's own wait.
        max_connections: connections in use at once (each request in flight holds one).
        max_idle: idle keep-alive connections kept for reuse.
        ssl_context: for ``https://`` URLs (default: the system's trust store).

    Raises (from every method): an `ApiError` subclass named after the error code
    (`NotFound`, `LeaseExpired`, `NoServer`, ...), or `TransportError`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = 100,
        max_idle: int = DEFAULT_MAX_IDLE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[_Connection] = []
        self._ssl = ssl_context
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncAllQ:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()
        await trio.lowlevel.checkpoint()

    async def _open(self) -> _Connection:
        ep = self.endpoint
        try:
            if ep.scheme == "https":
                context = self._ssl or ssl.create_default_context()
                stream: Any = await trio.open_ssl_over_tcp_stream(
                    ep.host, ep.port, ssl_context=context, https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(ep.host, ep.port)
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.url}: {exc}") from exc
        return _Connection(stream)

    async def _checkout(self, *, fresh: bool = False) -> _Connection:
        now = trio.current_time()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if now - connection.idle_since > IDLE_LIMIT_S or dropped(connection.socket):
                connection.abort()
                continue
            connection.reused = True
            return connection
        return await self._open()

    def _checkin(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_idle or not connection.reusable():
            connection.abort()
            return
        connection.idle_since = trio.current_time()
        self._idle.append(connection)

    async def _exchange(self, op: ops.Op[T]) -> tuple[int, str | None, bytes]:
        body = op.encoded()
        headers = request_headers(self.endpoint, self.token, body, has_body=op.body is not None)
        target = self.endpoint.prefix + op.path
        for attempt in (1, 2):
            connection = await self._checkout(fresh=attempt > 1)
            try:
                answer = await connection.exchange(op.method, target, headers, body)
            except _Retry as retry:
                connection.abort()
                if attempt == 2:  # pragma: no cover - a fresh connection is never "reused"
                    raise TransportError(f"request failed: {retry.__cause__}") from retry
                continue  # the gateway closed the idle connection: send it again
            except BaseException:
                connection.abort()
                raise
            self._checkin(connection)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(self, op: ops.Op[T]) -> T:
        """Send one operation and return its parsed answer (raising typed errors)."""
        if self._closed:
            raise TransportError("the client is closed")
        limit = self.timeout_s + op.wait_s
        with trio.move_on_after(limit) as scope:
            async with self._limiter:
                status, retry_after, raw = await self._exchange(op)
        if scope.cancelled_caught:
            raise TransportError(f"no answer from {self.url} within {limit:g} s")
        payload = ops.decode(status, retry_after, raw)
        try:
            return op.parse(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"unexpected answer from the gateway: {exc!r}") from None

    # -- jobs -------------------------------------------------------------------------------

    async def put(self, tube: str, body: bytes | str, **options: Any) -> Put:
        """Put one job. Options: priority, delay, run_at, ttr, expired_limit,
        max_releases, parent_id, shard_key, idempotency_key."""
        return await self.call(ops.put(tube, body, **options))

    async def put_many(self, tube: str, jobs: Iterable[bytes | str | NewJob]) -> list[ItemResult]:
        """Put many jobs, 1000 per request; one result per job, in order (errors included,
        not raised: one bad job does not fail the others)."""
        results: list[ItemResult] = []
        for chunk in ops.chunks(list(jobs)):
            chunk_results: list[ItemResult] = await self.call(ops.put_batch(tube, chunk))
            results.extend(chunk_results)
        return results

    async def parent(self, tube: str, body: bytes | str, **options: Any) -> Put:
        """Put a parent job (options: priority, ttr, timeout, run_on_timeout, limit, noop,
        on_child_failure, ...)."""
        return await self.call(ops.put_parent(tube, body, **options))

    put_parent = parent

    async def reserve(
        self,
        tubes: str | Iterable[str],
        *,
        count: int = 1,
        timeout: float = 0.0,  # noqa: ASYNC109 (the gateway's long-poll wait, not a deadline)
        done: Iterable[JobRef | tuple[str, str]] = (),
    ) -> Reserved:
        """Reserve up to `count` jobs, waiting up to `timeout` s; `done` jobs are finished
        first in the same request (their results in `.done`)."""
        return await self.call(ops.reserve(tubes, count=count, timeout=timeout, done=done))

    async def done(self, job: JobRef, lease: str | None = None) -> str:
        return await self.call(ops.done(job, lease))

    async def done_many(self, jobs: Iterable[JobRef | tuple[str, str]]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for chunk in ops.chunks(ops.done_items(jobs)):
            chunk_results: list[ItemResult] = await self.call(ops.done_batch(chunk))
            results.extend(chunk_results)
        return results

    async def touch(self, job: JobRef, lease: str | None = None) -> float | None:
        """Extend the reservation; returns the seconds left (deadline_in_s)."""
        return await self.call(ops.touch(job, lease))

    async def release(
        self,
        job: JobRef,
        lease: str | None = None,
        *,
        delay: float | None = None,
        priority: int | None = None,
    ) -> str:
        return await self.call(ops.release(job, lease, delay=delay, priority=priority))

    async def bury(
        self, job: JobRef, lease: str | None = None, *, priority: int | None = None
    ) -> str:
        return await self.call(ops.bury(job, lease, priority=priority))

    async def kick_job(self, job: JobRef) -> str:
        return await self.call(ops.kick_job(job))

    async def get(self, job: JobRef) -> Job:
        return await self.call(ops.get(job))

    async def delete(self, job: JobRef, lease: str | None = None) -> str | None:
        """Delete a job in any state; returns its previous state."""
        return await self.call(ops.delete(job, lease))

    async def children_started(self, job: JobRef) -> dict[str, Any]:
        return await self.call(ops.children_started(job))

    # -- tubes ------------------------------------------------------------------------------

    async def peek(self, tube: str, state: str = "ready") -> Job | None:
        """The next ready, delayed or buried job of a tube, or None."""
        try:
            return await self.call(ops.peek(tube, state))
        except NotFound:
            return None

    async def kick(self, tube: str, bound: int = 1) -> int:
        return await self.call(ops.kick(tube, bound))

    async def pause(self, tube: str, seconds: float | None = None) -> dict[str, Any]:
        return await self.call(ops.pause(tube, seconds))

    async def unpause(self, tube: str) -> dict[str, Any]:
        return await self.call(ops.unpause(tube))

    async def throttle(self, tube: str, tps: float) -> dict[str, Any]:
        return await self.call(ops.throttle(tube, tps))

    async def unthrottle(self, tube: str) -> dict[str, Any]:
        return await self.call(ops.unthrottle(tube))

    async def drain(self, tube: str) -> dict[str, Any]:
        return await self.call(ops.drain(tube))

    async def undrain(self, tube: str) -> dict[str, Any]:
        return await self.call(ops.undrain(tube))

    async def clear(self, tube: str) -> int:
        """Delete every job of a tube on every server; returns how many."""
        return await self.call(ops.clear(tube))

    async def tube_stats(self, tube: str) -> dict[str, Any]:
        return await self.call(ops.tube_stats(tube))

    async def tubes(self) -> list[dict[str, Any]]:
        return await self.call(ops.tubes())

    # -- cluster ----------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        return await self.call(ops.stats())

    async def servers(self) -> list[dict[str, Any]]:
        return await self.call(ops.servers())

    async def health(self) -> dict[str, Any]:
        return await self.call(ops.health())
