"""The queue server: accept connections, run sessions, drain gracefully (design.md §2.5).

Task tree (see docs/architecture.md):

    serve()
    ├─ EngineShell.run           timer tasks: one per tube + one for the engine's own
    ├─ conn_nursery              one Session per connection
    └─ accept_nursery            trio.serve_listeners(..., handler_nursery=conn_nursery)

Graceful shutdown (wire.md §7), started by `ShutdownState.begin()`:
1. cancel accept_nursery and close the listeners: no new connection;
2. the shell refuses new jobs (DRAINING) and answers waiting reserves SHUTTING_DOWN;
3. every session announces `shutting_down`, serves what workers need to finish and
   closes once idle, or at the grace deadline;
4. conn_nursery gets a hard deadline shortly after the grace period; then the timer tasks
   are cancelled and `serve()` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from allq.session import Session, SessionLimits, ShutdownState
from allq.tubes.runner import EngineShell
from allq.wire.transport import MessageStream

log = logging.getLogger(__name__)

#: Turns an accepted byte stream into a message stream (the handshake, for the encrypted
#: protocol); returns None to refuse the connection (it has then been closed silently).
Transport = Callable[[trio.abc.Stream], Awaitable[MessageStream | None]]

#: Extra time after the grace period before connections are cut.
HARD_STOP_MARGIN_S = 1.0


@dataclass(slots=True, kw_only=True)
class ServerLimits:
    max_connections: int = 1024
    session: SessionLimits = field(default_factory=SessionLimits)


@dataclass(slots=True)
class ServerStats:
    """Live counters of `serve()`; `sessions` are the authenticated connections."""

    connections: int = 0
    accepted: int = 0
    refused_full: int = 0
    sessions: set[Session] = field(default_factory=set)
    drained: trio.Event = field(default_factory=trio.Event)


async def serve(  # noqa: ASYNC128 (delegated to _serve)
    shell: EngineShell,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    transport: Transport,
    *,
    shutdown: ShutdownState,
    limits: ServerLimits | None = None,
    stats: ServerStats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `listeners` until `shutdown` begins and every connection has drained.

    Resource handling: the listeners are closed when accepting stops.
    """
    limits = limits or ServerLimits()
    stats = stats or ServerStats()

    async def handle(stream: trio.abc.Stream) -> None:
        stats.accepted += 1
        try:
            messages = await transport(stream)
        except Exception:
            log.exception("transport setup failed")
            messages = None
        if messages is None:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()
            return
        session = Session(
            shell, messages, limits=limits.session, shutdown=shutdown, peer=_peer(stream)
        )
        if stats.connections >= limits.max_connections or shutdown.started.is_set():
            stats.refused_full += 1
            reason = "shutdown" if shutdown.started.is_set() else "full"
            await session.refuse(reason)
            return
        stats.connections += 1
        stats.sessions.add(session)
        log.info("connection %s open (%d open)", session.peer, stats.connections)
        try:
            await session.run()
        finally:
            stats.connections -= 1
            stats.sessions.discard(session)
            log.info("connection %s closed (%d open)", session.peer, stats.connections)

    try:
        await _serve(shell, listeners, handle, shutdown, stats, task_status)
    finally:
        stats.drained.set()


async def _serve(
    shell: EngineShell,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    shutdown: ShutdownState,
    stats: ServerStats,
    task_status: trio.TaskStatus[None],
) -> None:
    async with trio.open_nursery() as root:
        await root.start(shell.run)
        async with trio.open_nursery() as conn_nursery:
            async with trio.open_nursery() as accept_nursery:
                accept_nursery.start_soon(_serve_listeners, handle, listeners, conn_nursery)
                task_status.started()
                await shutdown.started.wait()
                accept_nursery.cancel_scope.cancel()
            for listener in listeners:
                with trio.move_on_after(1, shield=True):
                    await listener.aclose()
            shell.begin_shutdown()
            log.info(
                "shutting down: %d connection(s) to drain, grace %ss",
                stats.connections,
                shutdown.grace_s,
            )
            conn_nursery.cancel_scope.deadline = shutdown.deadline + HARD_STOP_MARGIN_S
        root.cancel_scope.cancel()


async def _serve_listeners(
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    conn_nursery: trio.Nursery,
) -> None:
    await trio.serve_listeners(handle, list(listeners), handler_nursery=conn_nursery)


def _peer(stream: trio.abc.Stream) -> str:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return "memory"
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
