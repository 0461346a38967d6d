"""A real gateway for the compatibility tests: 2 real queue servers, the real gateway core,
the real REST app (legacy routes included) under Hypercorn on 127.0.0.1:0, and the line
protocol on 127.0.0.1:0 and a unix socket in the test's directory.

`LineClient` is a raw line-protocol client: it writes request lines and reads reply
lines, with every read under the caller's deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from allq.gateway.line import LineConfig, serve_line
from tests.client_support import Served, serving_gateway


@dataclass
class Compat:
    served: Served
    line_tcp: tuple[str, int]
    line_socket: Path

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.served.url.removeprefix("http://").rpartition(":")
        return host, int(port)


@asynccontextmanager
async def compat_gateway(
    tmp_path: Path, *, max_connections: int = 1024, max_line_bytes: int = 64 * 1024
) -> AsyncIterator[Compat]:
    async with serving_gateway(tmp_path, 2) as served:
        stop = trio.Event()
        config = LineConfig(
            tcp_port=0,
            socket_path=tmp_path / "allq.sock",
            max_connections=max_connections,
            max_line_bytes=max_line_bytes,
        )
        async with trio.open_nursery() as nursery:
            tcp, sock = await nursery.start(
                lambda task_status: serve_line(
                    served.cluster.gateway,
                    config,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            host, _, port = tcp.rpartition(":")
            try:
                yield Compat(served, (host, int(port)), Path(sock))
            finally:
                stop.set()


class LineClient:
    """One line-protocol connection (TCP or unix socket)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def tcp(cls, address: tuple[str, int]) -> LineClient:
        return cls(await trio.open_tcp_stream(*address))

    @classmethod
    async def unix(cls, path: Path) -> LineClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, action: str, params: dict[str, Any] | None = None) -> None:
        request: dict[str, Any] = {"action": action}
        if params is not None:
            request["params"] = params
        await self.send_raw(json.dumps(request).encode() + b"\n")

    async def line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the gateway closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    async def reply(self) -> Any:
        return json.loads(await self.line())

    async def call(self, action: str, params: dict[str, Any] | None = None) -> Any:
        await self.send(action, params)
        return await self.reply()

    async def aclose(self) -> None:
        await self.stream.aclose()
