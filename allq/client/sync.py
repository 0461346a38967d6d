"""`AllQ`: the synchronous client over REST v1, on the standard library's `http.client`.

Why `http.client` and not `AsyncAllQ` on a private Trio thread: it needs no background
thread or event loop in the caller's process (scripts, web apps, forked workers, handler
threads of `allq.worker` all just work), it keeps connections alive and reads answers by
Content-Length, and each call is a plain blocking call whose Ctrl-C is an ordinary
KeyboardInterrupt. The request/answer logic is shared with `AsyncAllQ` (`allq.client.ops`).

Thread safety: an `AllQ` may be shared by threads; each request takes an idle keep-alive
connection from a small pool (or opens one) and gives it back when done.

Timeouts: `timeout_s` (plus a long poll's own wait) bounds each socket operation.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

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
#: What a reused connection closed by the gateway looks like before any answer.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class AllQ:
    """Synchronous client for the allq gateway's REST v1 API (same methods as AsyncAllQ).

    Args:
        url: the gateway, e.g. ``http://127.0.0.1:8090``.
        token: the API token (``Authorization: Bearer``), if the gateway needs one.
        timeout_s: socket timeout of each request, on top of a long poll's own wait.
        max_idle: idle keep-alive connections kept for reuse.
        ssl_context: for ``https://`` URLs.

    Raises (from every method): an `ApiError` subclass named after the error code, or
    `TransportError`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_idle: int = DEFAULT_MAX_IDLE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    def __enter__(self) -> AllQ:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.scheme == "https":
            return http.client.HTTPSConnection(
                ep.host, ep.port, timeout=timeout, context=self._ssl or ssl.create_default_context()
            )
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _checkout(
        self, timeout: float, *, fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        while not fresh:
            with self._lock:
                if not self._idle:
                    break
                since, connection = self._idle.pop()
            if now - since > IDLE_LIMIT_S or dropped(connection.sock):
                connection.close()
                continue
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            return connection, True
        return self._open(timeout), False

    def _checkin(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle and connection.sock:
                self._idle.append((time.monotonic(), connection))
                return
        connection.close()

    def _exchange(self, op: ops.Op[T]) -> tuple[int, str | None, bytes]:
        body = op.encoded()
        headers = dict(
            request_headers(self.endpoint, self.token, body, has_body=op.body is not None)
        )
        target = self.endpoint.prefix + op.path
        timeout = self.timeout_s + op.wait_s
        for attempt in (1, 2):
            connection, reused = self._checkout(timeout, fresh=attempt > 1)
            try:
                connection.request(op.method, target, body=body, headers=headers)
                response = connection.getresponse()
            except _STALE as exc:
                connection.close()
                if reused and attempt == 1:
                    continue  # the gateway closed the idle connection: send it again
                raise TransportError(f"request to {self.url} failed: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise TransportError(f"request to {self.url} failed: {exc}") from exc
            except BaseException:
                connection.close()
                raise
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise TransportError(f"reading the answer of {self.url} failed: {exc}") from exc
            except BaseException:
                connection.close()
                raise
            self._checkin(connection)
            return response.status, response.getheader("Retry-After"), raw
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, op: ops.Op[T]) -> T:
        """Send one operation and return its parsed answer (raising typed errors)."""
        if self._closed:
            raise TransportError("the client is closed")
        status, retry_after, raw = self._exchange(op)
        payload = ops.decode(status, retry_after, raw)
        try:
            return op.parse(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"unexpected answer from the gateway: {exc!r}") from None

    # -- jobs -------------------------------------------------------------------------------

    def put(self, tube: str, body: bytes | str, **options: Any) -> Put:
        """Put one job. Options: priority, delay, run_at, ttr, expired_limit,
        max_releases, parent_id, shard_key, idempotency_key."""
        return self.call(ops.put(tube, body, **options))

    def put_many(self, tube: str, jobs: Iterable[bytes | str | NewJob]) -> list[ItemResult]:
        """Put many jobs, 1000 per request; one result per job, in order."""
        results: list[ItemResult] = []
        for chunk in ops.chunks(list(jobs)):
            chunk_results: list[ItemResult] = self.call(ops.put_batch(tube, chunk))
            results.extend(chunk_results)
        return results

    def parent(self, tube: str, body: bytes | str, **options: Any) -> Put:
        return self.call(ops.put_parent(tube, body, **options))

    put_parent = parent

    def reserve(
        self,
        tubes: str | Iterable[str],
        *,
        count: int = 1,
        timeout: float = 0.0,
        done: Iterable[JobRef | tuple[str, str]] = (),
    ) -> Reserved:
        return self.call(ops.reserve(tubes, count=count, timeout=timeout, done=done))

    def done(self, job: JobRef, lease: str | None = None) -> str:
        return self.call(ops.done(job, lease))

    def done_many(self, jobs: Iterable[JobRef | tuple[str, str]]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for chunk in ops.chunks(ops.done_items(jobs)):
            chunk_results: list[ItemResult] = self.call(ops.done_batch(chunk))
            results.extend(chunk_results)
        return results

    def touch(self, job: JobRef, lease: str | None = None) -> float | None:
        return self.call(ops.touch(job, lease))

    def release(
        self,
        job: JobRef,
        lease: str | None = None,
        *,
        delay: float | None = None,
        priority: int | None = None,
    ) -> str:
        return self.call(ops.release(job, lease, delay=delay, priority=priority))

    def bury(self, job: JobRef, lease: str | None = None, *, priority: int | None = None) -> str:
        return self.call(ops.bury(job, lease, priority=priority))

    def kick_job(self, job: JobRef) -> str:
        return self.call(ops.kick_job(job))

    def get(self, job: JobRef) -> Job:
        return self.call(ops.get(job))

    def delete(self, job: JobRef, lease: str | None = None) -> str | None:
        return self.call(ops.delete(job, lease))

    def children_started(self, job: JobRef) -> dict[str, Any]:
        return self.call(ops.children_started(job))

    # -- tubes ------------------------------------------------------------------------------

    def peek(self, tube: str, state: str = "ready") -> Job | None:
        try:
            return self.call(ops.peek(tube, state))
        except NotFound:
            return None

    def kick(self, tube: str, bound: int = 1) -> int:
        return self.call(ops.kick(tube, bound))

    def pause(self, tube: str, seconds: float | None = None) -> dict[str, Any]:
        return self.call(ops.pause(tube, seconds))

    def unpause(self, tube: str) -> dict[str, Any]:
        return self.call(ops.unpause(tube))

    def throttle(self, tube: str, tps: float) -> dict[str, Any]:
        return self.call(ops.throttle(tube, tps))

    def unthrottle(self, tube: str) -> dict[str, Any]:
        return self.call(ops.unthrottle(tube))

    def drain(self, tube: str) -> dict[str, Any]:
        return self.call(ops.drain(tube))

    def undrain(self, tube: str) -> dict[str, Any]:
        return self.call(ops.undrain(tube))

    def clear(self, tube: str) -> int:
        return self.call(ops.clear(tube))

    def tube_stats(self, tube: str) -> dict[str, Any]:
        return self.call(ops.tube_stats(tube))

    def tubes(self) -> list[dict[str, Any]]:
        return self.call(ops.tubes())

    # -- cluster ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.call(ops.stats())

    def servers(self) -> list[dict[str, Any]]:
        return self.call(ops.servers())

    def health(self) -> dict[str, Any]:
        return self.call(ops.health())
