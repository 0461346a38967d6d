"""Helpers for REST v1 tests: build the app over a core, and a terse JSON test client."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from quart.testing.utils import sentinel
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from allq.gateway.app import create_app
from allq.gateway.core import GatewayCore

TOKEN = "s3cret-token"
DEFAULTS: dict[str, Any] = {
    "api_token": None,
    "max_body_bytes": 64 * 1024,
    "max_inflight": 64,
    "max_waiting": 64,
    "long_poll_cap_s": 300.0,
}


def make_app(core: GatewayCore, **overrides: Any) -> QuartTrio:
    return create_app(core, **{**DEFAULTS, **overrides})


@dataclass
class Answer:
    status: int
    json: Any
    headers: Headers

    @property
    def code(self) -> str | None:
        """The v1 error code, when the answer is a v1 error."""
        error = self.json.get("error") if isinstance(self.json, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    @property
    def field(self) -> str | None:
        error = self.json.get("error") if isinstance(self.json, dict) else None
        return error.get("field") if isinstance(error, dict) else None


class Rest:
    """`await rest.post("/v1/...", {...})` -> Answer; raw bytes via `data=`."""

    def __init__(self, app: QuartTrio, token: str | None = None) -> None:
        self.app = app
        self.client = app.test_client()
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        response = await self.client.open(
            path, method=method, data=data, headers=sent, query_string=query, json=sentinel
        )
        raw = await response.get_data(as_text=False)
        assert isinstance(raw, bytes)
        if response.status_code != 204:
            assert response.headers["Content-Type"] == "application/json; charset=utf-8", raw
        parsed = json.loads(raw) if raw else None
        return Answer(response.status_code, parsed, response.headers)

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Answer:
        return await self.request("DELETE", path, **kw)
