"""Shared test keys and helpers for the wire tests (keys derived from labels, wire.md §10)."""

from __future__ import annotations

import trio
import trio.testing

from allq.wire.connection import NEED_DATA, Connection, HandshakeComplete, Role
from allq.wire.handshake import H, ReplayCache
from allq.wire.keyfiles import AllowList, KeyPair
from allq.wire.stream import EncryptedMessageStream, client_handshake, server_handshake

TEST_PERSON = b"allq1-testvector"


def label_bytes(label: str, size: int = 32) -> bytes:
    """Fixed test input: `H(label, "allq1-testvector")`, truncated to `size`."""
    return H(label.encode(), TEST_PERSON)[:size]


SERVER = KeyPair.from_secret(label_bytes("server-static"), "server", "server")
CLIENT = KeyPair.from_secret(label_bytes("client-static"), "client", "client-1")
STRANGER = KeyPair.from_secret(label_bytes("stranger-static"), "client", "stranger")
ALLOW = AllowList.of({CLIENT.public: "client-1"})
NOW = 1_700_000_000.0


def server_conn(replay: ReplayCache | None = None, **kwargs: object) -> Connection:
    return Connection(
        Role.SERVER,
        SERVER,
        allowlist=ALLOW,
        replay_cache=replay if replay is not None else ReplayCache(),
        **kwargs,  # type: ignore[arg-type]
    )


def client_conn(keys: KeyPair = CLIENT, **kwargs: object) -> Connection:
    return Connection(Role.CLIENT, keys, server_public=SERVER.public, **kwargs)  # type: ignore[arg-type]


def open_pair(
    now: float = NOW, client: Connection | None = None, server: Connection | None = None
) -> tuple[Connection, Connection]:
    """Run the handshake between two sans-IO engines; both end OPEN."""
    client = client or client_conn()
    server = server or server_conn()
    server.receive_data(client.start(int(now)))
    welcome = server.next_event(now)
    assert isinstance(welcome, HandshakeComplete)
    client.receive_data(welcome.data)
    done = client.next_event()
    assert isinstance(done, HandshakeComplete)
    server.receive_data(done.data)
    assert server.next_event() is NEED_DATA
    assert client.next_event() is NEED_DATA
    return client, server


async def encrypted_pair(
    client_stream: trio.abc.Stream | None = None,
    server_stream: trio.abc.Stream | None = None,
    replay: ReplayCache | None = None,
    now: float = NOW,
) -> tuple[EncryptedMessageStream, EncryptedMessageStream]:
    """Handshake over a stream pair (memory streams by default): (client, server)."""
    if client_stream is None or server_stream is None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
    results: dict[str, EncryptedMessageStream] = {}
    cache = replay if replay is not None else ReplayCache()

    async def serve() -> None:
        assert server_stream is not None
        results["server"] = await server_handshake(server_stream, SERVER, ALLOW, cache, lambda: now)

    async def connect() -> None:
        assert client_stream is not None
        results["client"] = await client_handshake(
            client_stream, CLIENT, SERVER.public, lambda: now
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(connect)
    return results["client"], results["server"]


class ForwardingStream(trio.abc.Stream):
    """Wraps a stream and forwards everything to it; tests override `send_all`."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
