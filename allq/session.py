"""Session: one client connection of the queue server (wire.md §5, §7).

One task per connection reads requests in arrival order and applies each to the engine
before examining the next, so a connection's requests are applied in order. It works in
batches: one `receive_batch` returns every request one read brought (at most as many as
the in-flight limit leaves room for), each is applied synchronously and its answer
queued, and one `flush` writes all the batch's answers with one write (natural
backpressure: the next read waits for that write). No task is started for a request
that cannot block. A reserve that has to wait gets its own task in the session's
nursery, so it never stalls the other requests of its connection; `cancel` ends such a
reserve, and the reserve's answer is always sent before the cancel's own answer. Under
a sync mode, the answers of one batch's changes wait for durability in one task.

Failures are isolated per connection: a protocol error closes this connection only (with
a final `protocol` frame where the framing still allows one, after the answers already
queued); `AllQError` becomes an error answer; any other exception is logged and closes
the connection. `Cancelled` propagates.

Jobs whose answer cannot be written are returned with `unreserve` at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from allq.errors import AllQError, BadFormat, ShuttingDown
from allq.tubes.runner import EngineShell, JobViews
from allq.tubes.validate import OPERATIONS
from allq.wire.codec import request_envelope_problem
from allq.wire.transport import Message, MessageStream, ProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

#: Ops refused with SHUTTING_DOWN once a graceful shutdown has begun (wire.md §7).
REFUSED_WHEN_STOPPING = frozenset(
    {"reserve", "pause", "unpause", "throttle", "drain", "undrain", "set_shard_limit", "clear"}
)
#: Every op a request may name: the engine's and the session's own `cancel`.
_SESSION_OPS = frozenset(OPERATIONS | {"cancel"})
#: Ops after which this connection no longer holds the reservation named by the lease.
_ENDS_RESERVATION = frozenset({"done", "delete", "release", "bury", "unreserve"})


@dataclass(slots=True, kw_only=True)
class SessionLimits:
    """Per-connection limits (wire.md §8)."""

    max_inflight: int = 1024
    idle_timeout_s: float = 300.0
    write_stall_s: float = 30.0
    max_bad_requests: int = 64


@dataclass(slots=True)
class ShutdownState:
    """Shared by the server and its sessions: `started` is set when graceful shutdown begins."""

    grace_s: float = 10.0
    started: trio.Event = field(default_factory=trio.Event)
    deadline: float = float("inf")  # Trio time at which the grace period ends

    def begin(self) -> None:
        if not self.started.is_set():
            self.deadline = trio.current_time() + self.grace_s
            self.started.set()


class _ConnectionDone(Exception):
    """This connection ends normally (idle, client close, shutdown)."""


@dataclass(slots=True)
class _PendingReserve:
    waiter: int | None = None
    delivered: bool = False
    answered: trio.Event = field(default_factory=trio.Event)


class Session:
    """Serve one connection until the peer leaves, a limit ends it, or shutdown.

    Resource handling: the session owns `stream` and closes it when `run()` returns.
    """

    def __init__(
        self,
        shell: EngineShell,
        stream: MessageStream,
        *,
        limits: SessionLimits,
        shutdown: ShutdownState,
        peer: str = "?",
    ) -> None:
        self.shell = shell
        self.stream = stream
        self.limits = limits
        self.shutdown = shutdown
        self.peer = peer
        #: Requests answered by a task (waiting reserves, durable waits, cancels).
        self._in_flight_ids: set[int] = set()
        #: Jobs reserved in the current batch: held once its answers are written.
        self._unflushed_jobs: list[JobViews] = []
        self._pending: dict[int, _PendingReserve] = {}
        self._bad_requests = 0
        self._held: dict[str, str] = {}  # lease -> job id handed out on this connection
        self._changed = trio.Event()
        self._final_sent = False
        self._scope: trio.CancelScope | None = None
        # The configured write-stall bound also bounds the stream's shielded writes.
        stream.write_timeout = limits.write_stall_s
        #: The authenticated client key (encrypted transport), for allow-list revocation.
        self.peer_key: bytes | None = getattr(stream, "peer_public", None)

    # -- main loop -----------------------------------------------------------------------

    async def refuse(self, reason: str) -> None:
        """Complete the connection only to close it at once (connection limit, shutdown)."""
        await self._send_final(reason)
        with trio.move_on_after(1, shield=True):
            await self.stream.aclose()

    async def revoke(self) -> None:
        """The client's key left the allow-list: final frame `revoked`, then close."""
        await self._send_final("revoked", error="UNAUTHORIZED", message="client key revoked")
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._watch_shutdown, nursery.cancel_scope)
                await self._read_loop(nursery)
                nursery.cancel_scope.cancel()
        except* _ConnectionDone:
            pass
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            log.info("connection %s lost: %s", self.peer, group.exceptions[0])
        except* ProtocolError as group:
            log.info("connection %s: protocol error: %s", self.peer, group.exceptions[0])
            await self._send_final("protocol", error="BAD_FORMAT", message=str(group.exceptions[0]))
        except* Exception:
            log.exception("connection %s failed", self.peer)
        finally:
            statistics = getattr(self.stream, "statistics", None)
            if statistics is not None:
                log.info("connection %s: %s", self.peer, statistics())
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            room = self.limits.max_inflight - len(self._in_flight_ids)
            if room <= 0:  # backpressure: stop reading until answers drain
                await self._changed.wait()
                continue
            messages = await self._receive(room)
            if messages is None:
                return
            durable: list[tuple[int, dict[str, object], int]] = []
            goodbye = False
            for message in messages:
                if self._dispatch(message, nursery, durable):
                    goodbye = True  # the answers before it are still written
                    break
            if durable:
                # Answered once the changes are as durable as the sync mode promises; the
                # wait (group commit under --sync always) must not hold up this
                # connection's next requests, so it runs in its own task, one per batch.
                nursery.start_soon(self._answer_when_durable, durable)
            await self._flush_batch()
            if goodbye:
                raise _ConnectionDone

    async def _receive(self, limit: int) -> list[Message] | None:
        """The next requests (1 … `limit`, all that one read brought); None when the peer
        closed; ends the session when idle."""
        while True:
            with trio.move_on_after(self.limits.idle_timeout_s) as idle:
                try:
                    return await self.stream.receive_batch(limit)
                except trio.EndOfChannel:
                    return None
            if idle.cancelled_caught and not self._in_flight_ids:
                log.info(
                    "connection %s idle for %ss: closing", self.peer, self.limits.idle_timeout_s
                )
                await self._send_final("idle")
                raise _ConnectionDone

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(
        self,
        message: Message,
        nursery: trio.Nursery,
        durable: list[tuple[int, dict[str, object], int]],
    ) -> bool:
        """Apply one request now; queue its answer, or hand it to a task if it waits.

        Returns True for the client's goodbye (`{id: 0, closing: "client"}`).
        """
        problem = request_envelope_problem(message)
        request_id = message.get("id")
        if request_id == 0 and problem is None:
            return True  # {id: 0, closing: "client"}
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 1:
            raise RemoteProtocolError(problem or "request id missing or invalid")
        if request_id in self._in_flight_ids:
            raise RemoteProtocolError(f"request id {request_id} is already in flight")
        op = message.get("op")
        if problem is not None or not isinstance(op, str) or op not in _SESSION_OPS:
            self._bad_requests += 1
            if self._bad_requests > self.limits.max_bad_requests:
                raise RemoteProtocolError("too many bad requests")
            error = BadFormat(problem or f"unknown operation {op!r}", field="op")
            self.stream.send_nowait({"id": request_id, **_error_body(error)})
            return False
        args = dict(message)
        del args["id"], args["op"]
        if op == "reserve":
            self._reserve(nursery, request_id, args)
        elif op == "cancel":
            self._cancel(nursery, request_id, args)
        else:
            body = self._apply(op, args)
            position = self.shell.written_position
            if position is not None and "result" in body:
                self._in_flight_ids.add(request_id)
                durable.append((request_id, body, position))
            else:
                self.stream.send_nowait({"id": request_id, **body})
        return False

    async def _answer_when_durable(self, items: list[tuple[int, dict[str, object], int]]) -> None:
        error: dict[str, object] | None = None
        try:
            try:
                await self.shell.durable(max(position for _, _, position in items))
            except AllQError as failure:
                error = _error_body(failure)
            for request_id, body, _ in items:
                self.stream.send_nowait({"id": request_id, **(error or body)})
                self._finish(request_id)  # answered: the client may reuse the id from now on
        finally:
            for request_id, _, _ in items:  # cancelled or failed: these get no answer
                self._finish(request_id)
        await self._flush()

    def _apply(self, op: str, args: Mapping[str, object]) -> dict[str, object]:
        """Apply one immediate op synchronously; return the answer body."""
        try:
            if self.shell.shutting_down and op in REFUSED_WHEN_STOPPING:
                raise ShuttingDown("the server is shutting down")
            result = self.shell.call(op, args)
        except AllQError as error:
            if error.code == "BAD_FORMAT":
                self._bad_requests += 1
            return _error_body(error)
        if op in _ENDS_RESERVATION and isinstance(args.get("lease"), str):
            self._held.pop(str(args["lease"]), None)
            self._signal()
        return {"result": result}

    def _reserve(self, nursery: trio.Nursery, request_id: int, args: dict[str, object]) -> None:
        """A reserve answered at once is queued with the batch; one that waits gets a task."""
        try:
            started = self.shell.begin_reserve(args)
        except AllQError as error:
            self.stream.send_nowait({"id": request_id, **_error_body(error)})
            return
        if isinstance(started, list):
            try:
                self.stream.send_nowait({"id": request_id, "result": started})
            except BaseException:
                self.shell.unreserve(started)  # the answer cannot be written: give back
                raise
            self._unflushed_jobs.append(started)
            return
        pending = self._pending[request_id] = _PendingReserve(waiter=started)
        self._in_flight_ids.add(request_id)
        nursery.start_soon(self._serve_reserve, request_id, pending)

    async def _serve_reserve(self, request_id: int, pending: _PendingReserve) -> None:
        assert pending.waiter is not None
        try:
            try:
                jobs = await self.shell.wait_reserve(pending.waiter)
            except AllQError as error:
                pending.waiter = None
                self.stream.send_nowait({"id": request_id, **_error_body(error)})
                self._answered(request_id, pending)
                await self._flush()
                return
            pending.waiter = None
            pending.delivered = True
            await self._send_jobs(request_id, jobs, pending)
        finally:
            self._answered(request_id, pending)

    def _answered(self, request_id: int, pending: _PendingReserve) -> None:
        """The reserve's answer is queued (or cannot be): its id is free for the client to
        reuse, and a `cancel` waiting for it may answer now (its answer goes out after)."""
        pending.answered.set()
        if self._pending.get(request_id) is pending:
            del self._pending[request_id]
            self._finish(request_id)

    async def _send_jobs(self, request_id: int, jobs: JobViews, pending: _PendingReserve) -> None:
        """Send reserved jobs; if they cannot be written, give them back at once."""
        sent = False
        try:
            self.stream.send_nowait({"id": request_id, "result": jobs})
            self._answered(request_id, pending)
            # Queued means written unless the link breaks, so the wait is not cancellable:
            # the outcome has to be known to hold the jobs or give them back.
            with trio.CancelScope(shield=True):
                await self._flush()
            sent = True
        finally:
            if sent:
                self._held.update((str(job["lease"]), str(job["id"])) for job in jobs)
            else:
                self.shell.unreserve(jobs)  # synchronous, so safe even while cancelled

    def _cancel(self, nursery: trio.Nursery, request_id: int, args: dict[str, object]) -> None:
        error = _cancel_problem(args)
        if error is not None:
            self.stream.send_nowait({"id": request_id, **_error_body(error)})
            return
        target = args["target"]
        assert isinstance(target, int)
        pending = self._pending.get(target)
        if pending is None:
            self.stream.send_nowait({"id": request_id, "result": {"outcome": "unknown"}})
            return
        cancelled = pending.waiter is not None and self.shell.cancel_reserve(pending.waiter)
        # The target's answer goes out first; its task tells whether it carried jobs.
        self._in_flight_ids.add(request_id)
        nursery.start_soon(self._answer_cancel, request_id, pending, cancelled)

    async def _answer_cancel(
        self, request_id: int, pending: _PendingReserve, cancelled: bool
    ) -> None:
        try:
            await pending.answered.wait()
            outcome = "delivered" if pending.delivered else "unknown"
            if cancelled:
                outcome = "cancelled"
            self.stream.send_nowait({"id": request_id, "result": {"outcome": outcome}})
        finally:
            self._finish(request_id)  # answered (or never will be): the id is free
        await self._flush()

    def _finish(self, request_id: int) -> None:
        """A task-held request is answered (queued): free its id and its in-flight slot.

        Done when the answer is queued, not once written: the client may get the answer
        and reuse the id while the write is still finishing."""
        if request_id in self._in_flight_ids:
            self._in_flight_ids.discard(request_id)
            self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- writing -------------------------------------------------------------------------

    async def _flush_batch(self) -> None:
        """Write the answers of one batch (one write); jobs reserved in it are held once
        written and given back if the write failed."""
        jobs, self._unflushed_jobs = self._unflushed_jobs, []
        written = False
        try:
            with trio.CancelScope(shield=True):  # the outcome decides about the jobs
                await self._flush()
            written = True
        finally:
            for views in jobs:
                if written:
                    self._held.update((str(job["lease"]), str(job["id"])) for job in views)
                else:
                    self.shell.unreserve(views)

    async def _send(self, message: Mapping[str, object]) -> None:
        self.stream.send_nowait(message)
        await self._flush()

    async def _flush(self) -> None:
        with trio.move_on_after(self.limits.write_stall_s) as stall:
            await self.stream.flush()
        if stall.cancelled_caught:
            log.warning(
                "connection %s: write blocked for %ss: closing",
                self.peer,
                self.limits.write_stall_s,
            )
            raise trio.BrokenResourceError("write stalled")

    async def _send_final(self, reason: str, **extra: object) -> None:
        if self._final_sent:
            return
        self._final_sent = True
        with trio.move_on_after(self.limits.write_stall_s, shield=True):
            try:
                await self.stream.send({"id": 0, "closing": reason, **extra}, final=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                pass

    # -- graceful shutdown ---------------------------------------------------------------

    async def _watch_shutdown(self, scope: trio.CancelScope) -> None:
        """Announce shutdown; close once nothing is in flight and no job handed out here
        is still reserved under its lease, so workers can finish (wire.md §7). The
        server's grace deadline bounds the wait."""
        await self.shutdown.started.wait()
        with trio.move_on_at(self.shutdown.deadline):
            await self._send({"id": 0, "event": "shutting_down", "grace": self.shutdown.grace_s})
            while self._in_flight_ids or self._holds_reservations():
                await self._changed.wait()
        await self._send_final("shutdown")
        scope.cancel()

    def _holds_reservations(self) -> bool:
        jobs = self.shell.engine.jobs
        for lease, job_id in list(self._held.items()):
            job = jobs.get(job_id)
            if job is None or job.lease != lease:
                del self._held[lease]
        return bool(self._held)


def _cancel_problem(args: Mapping[str, object]) -> BadFormat | None:
    """`cancel` takes exactly `target`, a u32 request id (wire.md §5.3)."""
    for name in args:
        if name != "target":
            return BadFormat(f"cancel takes no field {name!r}", field=name)
    target = args.get("target")
    if target is None:
        return BadFormat("cancel needs the field 'target'", field="target")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 2**32 - 1:
        return BadFormat("target must be a request id, an integer 0 … 4294967295", field="target")
    return None


def _error_body(error: AllQError) -> dict[str, object]:
    body: dict[str, object] = {"error": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    return body
