"""A minimal pipelining test client over any MessageStream: send now, collect answers later."""

from __future__ import annotations

from typing import Any

import trio

from allq.wire.transport import MessageStream


class TestClient:
    """Sends requests with increasing ids; `answer(id)` waits for that id's answer."""

    __test__ = False  # not a pytest class

    def __init__(self, stream: MessageStream) -> None:
        self.stream = stream
        self._next_id = 0
        self.answers: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.order: list[int] = []

    async def send(self, op: str, **fields: Any) -> int:
        self._next_id += 1
        await self.stream.send({"id": self._next_id, "op": op, **fields})
        return self._next_id

    async def answer(self, request_id: int) -> dict[str, Any]:
        while request_id not in self.answers:
            message = await self.stream.receive()
            ident = message["id"]
            if ident == 0:
                self.events.append(message)
                continue
            assert isinstance(ident, int)
            self.order.append(ident)
            self.answers[ident] = message
        return self.answers.pop(request_id)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return await self.answer(await self.send(op, **fields))

    async def result(self, op: str, **fields: Any) -> Any:
        answer = await self.call(op, **fields)
        assert "result" in answer, f"{op} failed: {answer}"
        return answer["result"]

    async def next_event(self) -> dict[str, Any]:
        while not self.events:
            message = await self.stream.receive()
            ident = message["id"]
            if ident == 0:
                self.events.append(message)
            else:
                assert isinstance(ident, int)
                self.answers[ident] = message
        return self.events.pop(0)

    async def aclose(self) -> None:
        with trio.move_on_after(1, shield=True):
            await self.stream.aclose()
