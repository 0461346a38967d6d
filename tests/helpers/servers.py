"""An in-memory queue server for shell tests: MemoryListener + plain framing + the real shell."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from allq.server import ServerLimits, ServerStats, Transport, serve
from allq.session import SessionLimits, ShutdownState
from allq.tubes.runner import EngineShell, UnixClock
from allq.wire.plain import PlainMessageStream
from allq.wire.transport import MessageStream
from tests.helpers.engines import make_engine
from tests.helpers.fake_net import MemoryListener
from tests.helpers.wire_client import TestClient

WALL_START = 1_700_000_000.0


async def plain_transport(stream: trio.abc.Stream) -> MessageStream:
    return PlainMessageStream(stream)


@dataclass
class Harness:
    listener: MemoryListener
    shell: EngineShell
    shutdown: ShutdownState
    stats: ServerStats
    done: trio.Event

    async def client(self) -> TestClient:
        return TestClient(PlainMessageStream(await self.listener.connect()))


@asynccontextmanager
async def memory_server(
    *,
    transport: Transport = plain_transport,
    grace_s: float = 10.0,
    session: SessionLimits | None = None,
    max_connections: int = 1024,
    **settings: Any,
) -> AsyncIterator[Harness]:
    clock = UnixClock.start(WALL_START)
    engine = make_engine(now=clock.now(), **settings)
    shell = EngineShell(engine, clock)
    listener = MemoryListener()
    shutdown = ShutdownState(grace_s=grace_s)
    stats = ServerStats()
    limits = ServerLimits(max_connections=max_connections, session=session or SessionLimits())
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:  # noqa: ASYNC128 (serve starts it)
        try:
            await serve(
                shell,
                [listener],
                transport,
                shutdown=shutdown,
                limits=limits,
                stats=stats,
                task_status=task_status,
            )
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        yield Harness(listener, shell, shutdown, stats, done)
        nursery.cancel_scope.cancel()
