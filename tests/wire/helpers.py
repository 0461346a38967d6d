"""Shared test keys and helpers for the wire tests (keys derived from labels, wire.md §10)."""

from __future__ import annotations

from allq.wire.connection import NEED_DATA, Connection, HandshakeComplete, Role
from allq.wire.handshake import H, ReplayCache
from allq.wire.keyfiles import AllowList, KeyPair

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
