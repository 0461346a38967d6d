"""Wire protocol throughput, sans-IO (no sockets, no trio): handshakes/s and frames/s.

Run: `.venv/bin/python benchmarks/bench_wire.py [--seconds S] [--max-count N]`.

* handshakes: HELLO built, checked by the server (allow-list, replay cache), WELCOME built
  and checked, session keys derived on both sides, stream headers exchanged.
* frames: a `put`-like message with a body of the given size, encoded (CBOR) and sealed by
  the client engine, then opened and decoded by the server engine (one direction).

Each measurement stops after `--seconds` or `--max-count` iterations, whichever is first.
Keys are generated per run (nothing secret is stored).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from allq.wire.connection import (
    NEED_DATA,
    Connection,
    HandshakeComplete,
    MessageReceived,
    Role,
)
from allq.wire.handshake import ReplayCache
from allq.wire.keyfiles import AllowList, KeyPair


def measure(name: str, step: Callable[[], int], seconds: float, max_count: int) -> None:
    count = 0
    nbytes = 0
    start = time.perf_counter()
    deadline = start + seconds
    while count < max_count and time.perf_counter() < deadline:
        nbytes += step()
        count += 1
    elapsed = time.perf_counter() - start
    rate = count / elapsed if elapsed else float("inf")
    mib = nbytes / elapsed / 2**20 if elapsed else float("inf")
    print(f"{name:<28} {count:>8} in {elapsed:6.2f} s  {rate:>10.0f}/s  {mib:8.1f} MiB/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--max-count", type=int, default=100_000)
    args = parser.parse_args()

    server_keys = KeyPair.generate("server", "server")
    client_keys = KeyPair.generate("client", "client-1")
    allow = AllowList.of({client_keys.public: "client-1"})
    replay = ReplayCache(max_entries=10**7)
    now = time.time()

    def pair() -> tuple[Connection, Connection]:
        client = Connection(Role.CLIENT, client_keys, server_public=server_keys.public)
        server = Connection(Role.SERVER, server_keys, allowlist=allow, replay_cache=replay)
        server.receive_data(client.start(int(now)))
        welcome = server.next_event(now)
        assert isinstance(welcome, HandshakeComplete)
        client.receive_data(welcome.data)
        done = client.next_event()
        assert isinstance(done, HandshakeComplete)
        server.receive_data(done.data)
        assert server.next_event() is NEED_DATA
        return client, server

    measure("handshake", lambda: (pair(), 0)[1], args.seconds, min(args.max_count, 20_000))

    for size in (0, 100, 4_096, 65_536, 1_048_576):
        client, server = pair()

        def step(
            client: Connection = client,
            server: Connection = server,
            body: bytes = bytes(size),
            ident: list[int] = [0],  # noqa: B006 - a per-size counter, on purpose
        ) -> int:
            ident[0] = ident[0] % 1_000_000 + 1
            frame = client.send({"id": ident[0], "op": "put", "tube": "bench", "body": body})
            server.receive_data(frame)
            event = server.next_event()
            assert isinstance(event, MessageReceived)
            server.send({"id": ident[0], "result": {}})  # keep the in-flight set empty
            return len(frame)

        measure(f"frame, body {size} B", step, args.seconds, args.max_count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
