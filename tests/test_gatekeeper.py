"""The server's encrypted transport: handshake limits, silent refusals, revocation.

Rules: the real server (serve + sessions) over memory streams with the Gatekeeper and
the autojump clock; a refused peer must read zero bytes and see the stream closed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from allq.config import ServerConfig
from allq.gatekeeper import Gatekeeper, GateLimits
from allq.server_process import _reload_allowlist
from allq.tubes.config import EngineConfig
from allq.wire.connection import Connection, Role
from allq.wire.keyfiles import PublicKey, format_allow_line
from allq.wire.stream import client_handshake
from tests.helpers.servers import memory_server
from tests.helpers.wire_client import TestClient
from tests.wire.helpers import ALLOW, CLIENT, NOW, SERVER, STRANGER


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def gate(**limits: float) -> Gatekeeper:
    return Gatekeeper(SERVER, ALLOW, limits=GateLimits(**limits), wall_clock=lambda: NOW)  # type: ignore[arg-type]


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    return data


async def test_encrypted_session_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    keeper = gate()
    async with memory_server(transport=keeper) as server:
        stream = await client_handshake(
            await server.listener.connect(), CLIENT, SERVER.public, lambda: NOW
        )
        client = TestClient(stream)
        put = await client.result("put", tube="t", body=b"secret")
        jobs = await client.result("reserve", tubes=["t"])
        assert jobs[0]["id"] == put["id"]
        assert keeper.stats.handshakes_ok == 1
        await client.aclose()


async def test_unlisted_key_gets_zero_bytes(autojump_clock: trio.testing.MockClock) -> None:
    keeper = gate()
    async with memory_server(transport=keeper) as server:
        raw = await server.listener.connect()
        hello = Connection(Role.CLIENT, STRANGER, server_public=SERVER.public).start(int(NOW))
        await raw.send_all(hello)
        assert await read_all(raw) == b""
        await trio.testing.wait_all_tasks_blocked()
        assert keeper.stats.handshakes_failed == 1
        assert len(keeper.replay_cache) == 0  # no state kept for the refused peer
        await raw.aclose()


async def test_slow_loris_closed_silently_at_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keeper = gate()
    async with memory_server(transport=keeper) as server:
        raw = await server.listener.connect()
        start = trio.current_time()
        await raw.send_all(b"ALQ\x01" + b"\x00" * 100)  # part of a HELLO, then nothing
        assert await read_all(raw) == b""
        assert trio.current_time() - start == pytest.approx(5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert keeper.stats.failures_by_reason == {"timeout": 1}
        await raw.aclose()


async def test_unauthenticated_connections_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keeper = gate(max_unauthenticated_per_source=3)
    async with memory_server(transport=keeper) as server:
        silent = [await server.listener.connect() for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        over = await server.listener.connect()
        assert await read_all(over) == b""  # refused at once, zero bytes
        assert trio.current_time() == start
        assert keeper.stats.refused_limits == 1
        for raw in silent:  # the silent ones are dropped at their handshake deadline
            assert await read_all(raw) == b""
        encrypted = await client_handshake(
            await server.listener.connect(), CLIENT, SERVER.public, lambda: NOW
        )
        client = TestClient(encrypted)
        assert (await client.result("ping"))["pong"] is True
        await client.aclose()
        for raw in [*silent, over]:
            await raw.aclose()


async def test_handshake_rate_limit(autojump_clock: trio.testing.MockClock) -> None:
    keeper = gate(handshake_rate_per_source=1, handshake_burst_per_source=2)
    async with memory_server(transport=keeper) as server:
        clients = []
        for _ in range(2):
            stream = await client_handshake(
                await server.listener.connect(), CLIENT, SERVER.public, lambda: NOW
            )
            clients.append(TestClient(stream))
        third = await server.listener.connect()
        assert await read_all(third) == b""
        assert keeper.stats.refused_limits == 1
        await trio.sleep(1.0)  # one token back
        stream = await client_handshake(
            await server.listener.connect(), CLIENT, SERVER.public, lambda: NOW
        )
        clients.append(TestClient(stream))
        for client in clients:
            assert (await client.result("ping"))["pong"] is True
            await client.aclose()
        await third.aclose()


async def test_sighup_reload_revokes_removed_keys(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    keeper = gate()
    allow_file = tmp_path / "clients.allow"
    config = ServerConfig(engine=EngineConfig(server_id="s1"), allow_file=allow_file)
    async with memory_server(transport=keeper) as server:
        stream = await client_handshake(
            await server.listener.connect(), CLIENT, SERVER.public, lambda: NOW
        )
        client = TestClient(stream)
        assert (await client.result("ping"))["pong"] is True
        allow_file.write_text("not a key\n")
        await _reload_allowlist(keeper, config, server.stats)  # invalid: old list stays
        assert keeper.allowlist is ALLOW
        assert (await client.result("ping"))["pong"] is True
        allow_file.write_text(
            format_allow_line(PublicKey(STRANGER.public, "client", "stranger")) + "\n"
        )
        await _reload_allowlist(keeper, config, server.stats)
        closing = await client.next_event()
        assert closing["closing"] == "revoked"
        assert closing["error"] == "UNAUTHORIZED"
        await client.aclose()
