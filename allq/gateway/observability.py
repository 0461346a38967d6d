"""Operations endpoints beyond health: `/metrics` and the dashboard at `/`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from allq.gateway.app import GatewayApp


def register_observability(app: QuartTrio, state: GatewayApp) -> None:
    """Add `/metrics` and the dashboard to `app` (not implemented yet: none)."""
