"""`JsonHttp`: one keep-alive HTTP/1.1 connection speaking JSON, on Trio, with h11.

For tools that need raw status codes and bodies (benchmarks, tests, scripts); workers use
`AsyncAllQ`. Answers are read by Content-Length, never until EOF (design.md pitfall 14).
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio


class JsonHttp:
    """`await http.request(method, path, body) -> (status, parsed JSON or None)`.

    Resource handling: it owns its stream; `aclose()` closes it.
    """

    def __init__(
        self, stream: trio.SocketStream | None, host: str, address: tuple[str, int] | None = None
    ) -> None:
        self.stream = stream
        self.host = host
        self.address = address
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> JsonHttp:
        """Connected now; when the server closes the connection (Hypercorn does after
        1,000 requests), the next request opens a new one, as HTTP clients do."""
        stream = await trio.open_tcp_stream(*address)
        return cls(stream, f"{address[0]}:{address[1]}", address)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.stream is None:
            if self.address is None:
                raise trio.ClosedResourceError("the connection was closed")
            self.stream = await trio.open_tcp_stream(*self.address)
            self.conn = h11.Connection(h11.CLIENT)
        data = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", self.host), ("Content-Length", str(len(data)))]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        out = self.conn.send(h11.Request(method=method, target=path, headers=headers))
        out += self.conn.send(h11.Data(data=data)) if data else b""
        out += self.conn.send(h11.EndOfMessage())
        stream = self.stream
        await stream.send_all(out)
        status, chunks = 0, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the server closed the connection")
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            await self.aclose()  # the server said Connection: close
        else:
            self.conn.start_next_cycle()
        raw = b"".join(chunks)
        return status, json.loads(raw) if raw else None

    async def __aenter__(self) -> JsonHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()
