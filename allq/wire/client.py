"""A pipelining client over any `MessageStream` (encrypted wire or plain dev framing).

`open_client(host, port, client_keys, server_public)` connects over TCP, runs the
handshake and yields a `Client`; `connect_stream(message_stream)` does the same over an
already-open `MessageStream` (memory streams in tests, `PlainMessageStream` in dev).
`open_pool(..., size=N)` holds N connections and spreads requests over them.

Many requests share one connection: each gets a fresh id and a `PendingRequest` in
`Client._slots`, and the reader task (owned by the context manager's nursery) routes each
answer to it (an event is made only if a caller waits before the answer is in). Answers
may come in any order (wire.md §5.1). Requests started by concurrent callers in the same
scheduler tick share one write (the stream's `FrameWriter`); `start_batch` sends a list of
requests with one write, and the reader routes every answer one read brought.

Resource handling: the context managers own the connection, the stream and the reader
task. On exit the client sends `{id: 0, closing: "client"}` as the final frame (shielded,
1 s at most), stops the reader and closes the stream.

Cancellation: a cancelled `request()` leaves its id registered until the answer arrives,
so ids are never reused early. If the abandoned request was a `reserve`, the client sends
`cancel` for it and returns any jobs it still receives with `unreserve`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import trio

from allq.errors import AllQError, error_from_code
from allq.wire.connection import MAX_FRAME_CEILING
from allq.wire.keyfiles import KeyPair, PublicKey
from allq.wire.stream import client_handshake
from allq.wire.transport import Message, MessageStream, ProtocolError, RemoteProtocolError

U32_MAX: Final = 0xFFFF_FFFF
DEFAULT_MAX_INFLIGHT: Final = 1_024
CLOSE_GRACE: Final = 1.0
READ_BATCH: Final = 4_096  # answers routed per receive_batch (all one read brought)


class ConnectionLost(trio.BrokenResourceError):
    """The connection ended before the answer came; the request's effect is unknown.

    `closing` holds the server's closing frame when there was one (reason `shutdown`,
    `idle`, `revoked`, `full`, `protocol`).
    """

    def __init__(self, message: str, closing: Message | None = None) -> None:
        super().__init__(message)
        self.closing = closing


def _raise_for(answer: Message) -> Any:
    if "error" in answer:
        code, text = answer["error"], answer.get("message", "")
        field = answer.get("field")
        error = error_from_code(str(code), str(text), field if isinstance(field, str) else None)
        retry = answer.get("retry_after")
        if isinstance(retry, (int, float)) and not isinstance(retry, bool):
            error.retry_after = float(retry)  # type: ignore[attr-defined]
        raise error
    return answer["result"]


class PendingRequest:
    """A request that has been sent; `await wait()` for its result."""

    __slots__ = ("_answer", "_consumed", "_ended", "_event", "client", "id", "op")

    def __init__(self, client: Client, ident: int, op: str) -> None:
        self.client = client
        self.id = ident
        self.op = op
        self._answer: Message | None = None
        self._ended = False  # answered, or the connection ended first
        self._consumed = False  # the answer went to a caller (or its jobs were given back)
        self._event: trio.Event | None = None  # made only if a caller waits before the end

    def _resolve(self, answer: Message | None) -> None:
        """(reader) The answer, or None when the connection ended before it."""
        self._answer = answer
        self._ended = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> Any:
        """The result, or the typed `AllQError` of the answer.

        Raises:
            AllQError: the server answered with an error code.
            ConnectionLost: the connection ended first.
        """
        if not self._consumed:
            try:
                if self._ended:
                    await trio.lowlevel.checkpoint_if_cancelled()
                else:
                    if self._event is None:
                        self._event = trio.Event()
                    await self._event.wait()
            except trio.Cancelled:
                self.client._abandon(self)
                raise
            if self._answer is None:
                raise self.client._lost_error()
            self._consumed = True
        assert self._answer is not None
        return _raise_for(self._answer)

    async def cancel(self) -> str:
        """Send `cancel` for this (reserve) request: `cancelled`, `delivered` or `unknown`.

        The target's own answer arrives before the cancel answer (wire.md §5.3).
        """
        result = await self.client.request("cancel", target=self.id)
        return str(result["outcome"])


class Client:
    """Requests over one connection; create it with `open_client` or `connect_stream`."""

    def __init__(
        self,
        stream: MessageStream,
        nursery: trio.Nursery,
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
    ) -> None:
        self.stream = stream
        self._nursery = nursery
        self._slots: dict[int, PendingRequest] = {}
        self._ops: dict[int, str] = {}
        self._abandoned: set[int] = set()
        self._ids = itertools.cycle(range(1, U32_MAX + 1))
        self._inflight = trio.Semaphore(max_inflight)
        self._lost: str | None = None
        self.closing: Message | None = None
        #: `grace` from a `shutting_down` event, once the server announced it.
        self.shutting_down: float | None = None
        self.closed = trio.Event()

    # --- public API -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._lost is None

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    async def start(self, op: str, /, **fields: object) -> PendingRequest:
        """Send one request; returns at once with a handle to `wait()` on.

        Raises:
            ConnectionLost: the connection is already gone or fails while sending.
            LocalProtocolError: the request cannot be encoded (nothing was sent).
        """
        await self._inflight.acquire()
        if self._lost is not None:
            self._inflight.release()
            raise self._lost_error()
        ident = self._next_id()
        pending = PendingRequest(self, ident, op)
        self._slots[ident] = pending  # the slot now holds the semaphore unit
        self._ops[ident] = op
        try:
            await self.stream.send({**fields, "id": ident, "op": op})
        except ProtocolError:
            self._release(ident)  # refused locally: nothing was written
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._release(ident)
            if isinstance(exc, ConnectionLost):
                raise
            raise self._lost_error(f"send failed: {exc!r}") from exc
        except BaseException:
            # Cancelled mid-send: the request may have gone out, and its answer may even
            # have arrived while the write was finishing: abandon it like a cancelled
            # waiter (jobs already answered go back, a waiting reserve gets `cancel`).
            self._abandon(pending)
            raise
        return pending

    async def start_batch(
        self, requests: Sequence[tuple[str, Mapping[str, object]]]
    ) -> list[PendingRequest]:
        """Send several requests with one write; returns their handles in order.

        Each takes an in-flight slot like `start` (waiting for slots as needed). If one
        cannot be encoded, the requests queued before it still go out (their answers
        are dropped, jobs given back) and `LocalProtocolError` is raised.

        Raises:
            ConnectionLost: the connection is already gone or fails while sending.
            LocalProtocolError: a request cannot be encoded.
        """
        pending: list[PendingRequest] = []
        try:
            for op, fields in requests:
                if not self._inflight.value:
                    await self._flush(pending)  # let answers free slots
                await self._inflight.acquire()
                if self._lost is not None:
                    self._inflight.release()
                    raise self._lost_error()
                ident = self._next_id()
                request = PendingRequest(self, ident, op)
                self._slots[ident] = request
                self._ops[ident] = op
                try:
                    self.stream.send_nowait({**fields, "id": ident, "op": op})
                except BaseException:
                    self._release(ident)
                    raise
                pending.append(request)
            await self._flush(pending)
        except ProtocolError:
            for request in pending:
                self._abandon(request)
            with trio.CancelScope(shield=True):
                await self._flush(pending)  # those already queued go out regardless
            raise
        except BaseException:
            for request in pending:  # cancelled or failed mid-way: drop their answers
                self._abandon(request)
            raise
        return pending

    async def _flush(self, pending: Sequence[PendingRequest]) -> None:
        try:
            await self.stream.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            for request in pending:
                self._release(request.id)
            if isinstance(exc, ConnectionLost):
                raise
            raise self._lost_error(f"send failed: {exc!r}") from exc

    async def request(self, op: str, /, **fields: object) -> Any:
        """Send a request and wait for its result (a map or a list).

        Raises:
            AllQError: typed by the answer's code (`allq.errors.error_from_code`).
            ConnectionLost: the connection ended before the answer.
        """
        pending = await self.start(op, **fields)
        return await pending.wait()

    async def start_reserve(
        self,
        tubes: Sequence[str],
        *,
        count: int = 1,
        timeout: float = 0,  # noqa: ASYNC109 - the wire field of reserve, not a deadline
        owner: str | None = None,
    ) -> PendingRequest:
        """Send a `reserve`; `wait()` gives the job views, `cancel()` ends the wait."""
        fields: dict[str, object] = {"tubes": list(tubes), "count": count, "timeout": timeout}
        if owner is not None:
            fields["owner"] = owner
        return await self.start("reserve", **fields)

    async def cancel(self, target: PendingRequest | int) -> str:
        ident = target.id if isinstance(target, PendingRequest) else target
        result = await self.request("cancel", target=ident)
        return str(result["outcome"])

    # --- internals ------------------------------------------------------------------

    def _next_id(self) -> int:
        ident = next(self._ids)
        while ident in self._slots:
            ident = next(self._ids)
        return ident

    def _release(self, ident: int) -> PendingRequest | None:
        slot = self._slots.pop(ident, None)
        self._ops.pop(ident, None)
        self._abandoned.discard(ident)
        if slot is not None:
            self._inflight.release()
        return slot

    def _lost_error(self, reason: str | None = None) -> ConnectionLost:
        text = reason or self._lost or "connection closed"
        return ConnectionLost(f"connection lost: {text}", self.closing)

    def _abandon(self, pending: PendingRequest) -> None:
        """The waiter was cancelled: drop its answer later; end an abandoned reserve."""
        if pending._ended:
            if pending._answer is not None and not pending._consumed:
                pending._consumed = True  # answered already: hand back any jobs
                self._return_jobs(pending.op, pending._answer)
            return
        if pending.id not in self._slots or self._lost is not None:
            return
        self._abandoned.add(pending.id)
        if pending.op == "reserve":
            target: dict[str, object] = {"target": pending.id}
            self._nursery.start_soon(self._background, "cancel", target)

    def _return_jobs(self, op: str, answer: Message) -> None:
        result = answer.get("result")
        if op != "reserve" or not isinstance(result, list):
            return
        for job in result:
            if isinstance(job, Mapping) and "id" in job and "lease" in job:
                fields: dict[str, object] = {"job_id": job["id"], "lease": job["lease"]}
                self._nursery.start_soon(self._background, "unreserve", fields)

    async def _background(self, op: str, fields: dict[str, object]) -> None:
        try:
            await self.request(op, **fields)
        except (AllQError, ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # best effort: the lease's TTR returns the job anyway

    def _route(self, message: Message) -> None:
        ident = message.get("id")
        if ident == 0:
            if "closing" in message:
                self.closing = message
            elif message.get("event") == "shutting_down":
                grace = message.get("grace")
                ok = isinstance(grace, (int, float)) and not isinstance(grace, bool)
                self.shutting_down = float(grace) if ok else math.nan  # type: ignore[arg-type]
            return
        if not isinstance(ident, int) or ident not in self._slots:
            raise RemoteProtocolError(f"answer for unknown request id {ident!r}")
        abandoned = ident in self._abandoned
        op = self._ops.get(ident, "")
        slot = self._release(ident)
        assert slot is not None
        if abandoned:
            self._return_jobs(op, message)
            slot._consumed = True
        slot._resolve(message)

    async def _reader(self) -> None:
        reason = "connection closed"
        cancelled = False
        try:
            while True:
                for message in await self.stream.receive_batch(READ_BATCH):
                    self._route(message)
        except trio.Cancelled:
            # The owner is closing the client: its goodbye still has to go out, and
            # `_goodbye` fails what is left in flight afterwards.
            cancelled = True
            raise
        except trio.EndOfChannel:
            reason = "closed by the server"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"transport failed: {exc!r}"
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
        finally:
            if not cancelled:
                if self.closing is not None:
                    reason += f" ({self.closing.get('closing')}"
                    if self.closing.get("error"):
                        reason += f", {self.closing.get('error')}: {self.closing.get('message')}"
                    reason += ")"
                self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        for ident in list(self._slots):
            slot = self._release(ident)
            if slot is not None:
                slot._resolve(None)  # the waiter gets ConnectionLost
        self.closed.set()

    async def _goodbye(self) -> None:
        if self._lost is None:
            # No new request from here on: one started while the goodbye is being written
            # (a background `unreserve`/`cancel`) would follow the final frame.
            self._lost = "closed by the client"
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                try:
                    await self.stream.send({"id": 0, "closing": "client"}, final=True)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                    pass  # best effort: the connection already failed (e.g. the server died)
        self._fail_all("closed by the client")


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Public context managers do not leak ExceptionGroups (design.md §4.1)."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


@asynccontextmanager
async def connect_stream(
    stream: MessageStream, *, max_inflight: int = DEFAULT_MAX_INFLIGHT
) -> AsyncIterator[Client]:
    """A `Client` over an open `MessageStream`, which it then owns and closes."""
    try:
        async with trio.open_nursery() as nursery:
            client = Client(stream, nursery, max_inflight=max_inflight)
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                with trio.move_on_after(2 * CLOSE_GRACE, shield=True):
                    await client._goodbye()
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    client_keys: KeyPair,
    server_public: PublicKey | bytes,
    *,
    now_fn: Callable[[], float] | None = None,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    receive_cap: int = MAX_FRAME_CEILING,
) -> AsyncIterator[Client]:
    """Connect over TCP (TCP_NODELAY is trio's default), handshake, yield a `Client`.

    Raises:
        OSError: the TCP connection failed.
        HandshakeFailed: `refused`, `server key mismatch`, `timeout`, `broken`.
    """
    if now_fn is None:
        import time  # only the production caller reads the wall clock

        now_fn = time.time
    tcp = await trio.open_tcp_stream(host, port)
    stream = await client_handshake(
        tcp, client_keys, server_public, now_fn, receive_cap=receive_cap
    )
    async with connect_stream(stream, max_inflight=max_inflight) as client:
        yield client


class Pool:
    """Several connections to one server; each request goes to the least busy live one."""

    def __init__(self, clients: Sequence[Client]) -> None:
        self.clients = list(clients)

    def pick(self) -> Client:
        live = [c for c in self.clients if c.alive]
        if not live:
            raise ConnectionLost("connection lost: no live connection in the pool")
        return min(live, key=lambda c: c.in_flight)

    async def request(self, op: str, /, **fields: object) -> Any:
        return await self.pick().request(op, **fields)

    async def start(self, op: str, /, **fields: object) -> PendingRequest:
        return await self.pick().start(op, **fields)


@asynccontextmanager
async def open_pool(
    host: str,
    port: int,
    client_keys: KeyPair,
    server_public: PublicKey | bytes,
    *,
    size: int = 4,
    **kwargs: Any,
) -> AsyncIterator[Pool]:
    """Open `size` connections (no reconnection: callers own that policy)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                open_client(host, port, client_keys, server_public, **kwargs)
            )
            for _ in range(size)
        ]
        yield Pool(clients)


@asynccontextmanager
async def pool_over(clients: Sequence[Client]) -> AsyncIterator[Pool]:
    """A `Pool` over clients the caller already holds (tests, plain streams)."""
    yield Pool(clients)
