"""The legacy AllQ REST API (api.md §3) at the root path, over the gateway core."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from allq.gateway.app import GatewayApp


def register_legacy_routes(app: QuartTrio, state: GatewayApp) -> None:
    """Add the original AllQ client's routes to `app` (not implemented yet: none)."""
