"""Real queue servers on loopback TCP, in this process, with fresh keys; and a gateway core.

Each server is the real `serve()` with the real Gatekeeper on a 127.0.0.1:0 listener,
so gateway tests exercise real sockets, the real handshake and real sessions. `kill()`
cancels a server abruptly (connections drop without goodbye), `start()` brings a server
back on the same port.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from allq.gatekeeper import Gatekeeper
from allq.gateway.cluster import Gateway, GatewayConfig, ServerSpec, open_gateway, wait_until_ready
from allq.gateway.health import HealthPolicy
from allq.gateway.links import LinkSettings, ServerAddress
from allq.server import serve
from allq.session import ShutdownState
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.runner import EngineShell, UnixClock
from allq.wire.keyfiles import keygen, load_allowlist, load_public_key, load_secret_key

FAST_LINKS = LinkSettings(
    probe_interval_s=0.1, probe_timeout_s=1.0, backoff_min_s=0.05, backoff_max_s=0.2
)
FAST_HEALTH = HealthPolicy(fail_after=2, recover_after=1, stale_after_s=5.0)


@dataclass
class LocalServer:
    name: str
    keys: Path
    nursery: trio.Nursery
    port: int = 0
    engine: Engine | None = None
    shell: EngineShell | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def start(self) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        clock = UnixClock.start(time.time())
        self.engine = Engine(
            EngineConfig(server_id=self.name), random_bytes=os.urandom, now=clock.now()
        )
        shell = self.shell = EngineShell(self.engine, clock)
        gate = Gatekeeper(
            load_secret_key(self.keys / "server.key"), load_allowlist(self.keys / "clients.allow")
        )
        self.scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:  # noqa: ASYNC128
            with self.scope:
                await serve(
                    shell,
                    listeners,
                    gate,
                    shutdown=ShutdownState(grace_s=1),
                    task_status=task_status,
                )

        await self.nursery.start(run)

    def put(self, tube: str, body: bytes = b"") -> str:
        """A put straight into this server (not through the gateway)."""
        assert self.shell is not None
        result = self.shell.call("put", {"tube": tube, "body": body})
        assert isinstance(result, dict)
        return str(result["id"])

    def waiters(self) -> int:
        assert self.engine is not None
        return len(self.engine.waiters)

    def kill(self) -> None:
        self.scope.cancel()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    servers: list[LocalServer]
    gateway: Gateway
    keys: Path


async def eventually(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait until `condition()` holds, checking every 10 ms, failing after `limit_s`.

    For effects that cross real sockets (a cancel reaching another server), where there
    is no event to wait on in this process.
    """
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110 (no event crosses the socket)
            await trio.sleep(0.01)


def make_keys(directory: Path) -> Path:
    keygen(directory, clients=2, force=False)
    return directory


@asynccontextmanager
async def local_cluster(directory: Path, n: int = 3) -> AsyncIterator[Cluster]:
    keys = make_keys(directory / "keys")
    async with trio.open_nursery() as nursery:
        servers = [LocalServer(f"s{i + 1}", keys, nursery) for i in range(n)]
        for server in servers:
            await server.start()
        config = GatewayConfig(
            servers=[ServerSpec(ServerAddress.parse(s.address)) for s in servers],
            client_keys=load_secret_key(keys / "client-1.key"),
            server_public=load_public_key(keys / "server.pub"),
            health=FAST_HEALTH,
            links=FAST_LINKS,
        )
        async with open_gateway(config) as gateway:
            await wait_until_ready(gateway, servers=n, limit_s=20)
            yield Cluster(servers, gateway, keys)
        nursery.cancel_scope.cancel()
