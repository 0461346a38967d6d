"""ASGI entry for an external Hypercorn: `hypercorn --worker-class trio 'allq.gateway.asgi:app'`.

`app` is built on first access (not at import) from the environment: `ALLQ_API_TOKEN`,
`ALLQ_MAX_BODY_BYTES`, `ALLQ_MAX_INFLIGHT`, `ALLQ_MAX_WAITING`, `ALLQ_LONG_POLL_CAP_S`.
It needs a gateway core started inside the app's lifespan, which this version does not
provide: accessing `app` raises `RuntimeError` saying so. Use `allq gateway` (which runs the
core beside Hypercorn, with `--workers N` for several processes) instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from quart_trio import QuartTrio

from allq.gateway.app import create_app
from allq.gateway.core import GatewayCore

UNAVAILABLE = (
    "allq.gateway.asgi:app is not available in this version: the gateway core must run "
    "beside Hypercorn. Run `allq gateway --workers N` instead."
)


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """`create_app` keyword arguments from `ALLQ_*` variables (errors name the variable)."""

    def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
        text = environ.get(name)
        if text is None:
            return default
        try:
            return kind(text)
        except ValueError:
            raise RuntimeError(f"{name}={text!r} is not a number") from None

    return {
        "api_token": environ.get("ALLQ_API_TOKEN") or None,
        "max_body_bytes": number("ALLQ_MAX_BODY_BYTES", 2 * 1_048_576, int),
        "max_inflight": number("ALLQ_MAX_INFLIGHT", 10_000, int),
        "max_waiting": number("ALLQ_MAX_WAITING", 10_000, int),
        "long_poll_cap_s": number("ALLQ_LONG_POLL_CAP_S", 300.0, float),
    }


def core_from_env(environ: Mapping[str, str]) -> GatewayCore:
    raise RuntimeError(UNAVAILABLE)


def build_app(environ: Mapping[str, str]) -> QuartTrio:
    settings = settings_from_env(environ)
    return create_app(core_from_env(environ), **settings)


def __getattr__(name: str) -> Any:
    if name == "app":
        return build_app(os.environ)
    raise AttributeError(name)
