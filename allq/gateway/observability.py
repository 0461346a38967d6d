"""Operations endpoints beyond health: `/metrics` and the dashboard at `/`.

* `GET /metrics`: Prometheus text format, rendered by `prometheus_client` from the app's
  own registry (`allq.gateway.metrics`). It needs the API token when one is set (scrape
  with `authorization: {credentials: ...}`), like every route but /healthz and /readyz.
* `GET /`: the dashboard page; `GET /dashboard/app.js` and `/dashboard/app.css` its files
  (shipped in `allq/gateway/static/`, read once here; no CDN, no library). These three
  are public: they hold no data. The page polls `GET /dashboard/state` (token needed when
  set: the page asks for it and keeps it in sessionStorage) and uses the v1 routes for
  peek, kick, pause and unpause.
* `GET /dashboard/state`: the snapshot `/metrics` is computed from, as JSON, plus per-tube
  totals, so one request per refresh draws everything.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response

from allq import __version__
from allq.gateway.bodies import json_response
from allq.gateway.metrics import JOB_STATES, Snapshot, tube_throttle

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from allq.gateway.front import GatewayApp

#: name -> (file in allq/gateway/static, content type)
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: Every path this module serves (none is a v1 route, none is in the OpenAPI document).
PATHS = frozenset({"/metrics", "/dashboard/state", *STATIC_FILES})
_TUBE_FIELDS = (
    *JOB_STATES,
    "total_puts",
    "total_completed",
    "total_timeouts",
    "total_buried",
    "completions_per_s",
    "oldest_ready_age_s",
    "paused",
    "draining",
    "waiting_reservers",
)


def _static(name: str) -> bytes:
    return (resources.files("allq.gateway") / "static" / name).read_bytes()


def dashboard_state(state: GatewayApp, snapshot: Snapshot) -> dict[str, Any]:
    """What the dashboard draws: servers, tubes (with totals), gateway load."""
    return {
        "time": snapshot.taken_at,
        "version": __version__,
        "ready": snapshot.ready,
        "error": snapshot.error,
        "gateway": {
            "in_flight": state.limiter.inflight,
            "long_poll_waiters": state.limiter.waiting,
        },
        "servers": snapshot.servers,
        "unavailable": snapshot.unavailable,
        "tubes": [
            {
                "name": tube["name"],
                **{key: tube.get(key) for key in _TUBE_FIELDS},
                "throttle_tps": tube_throttle(tube) or None,
            }
            for tube in snapshot.tubes
        ],
        "tube_count": snapshot.tube_count,
        "dropped": snapshot.dropped,
    }


def register_observability(app: QuartTrio, state: GatewayApp) -> frozenset[str]:
    """Add `/metrics`, the dashboard and its state to `app`; return the public paths."""
    metrics = state.metrics
    metrics.reserved_counts = getattr(state.core, "reserved_by_tube", {})
    files = {path: (_static(name), kind) for path, (name, kind) in STATIC_FILES.items()}

    async def metrics_view() -> Response:
        await metrics.fresh_snapshot(state.core)
        return Response(
            generate_latest(metrics.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def state_view() -> Response:
        snapshot = await metrics.fresh_snapshot(state.core)
        return json_response(dashboard_state(state, snapshot), 200, {"Cache-Control": "no-store"})

    def file_view(path: str) -> Any:
        body, kind = files[path]

        async def view() -> Response:
            return Response(body, 200, {"Content-Type": kind, "Cache-Control": "no-cache"})

        return view

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    app.add_url_rule("/dashboard/state", "dashboard_state", state_view, methods=["GET"])
    for index, path in enumerate(files):
        app.add_url_rule(path, f"dashboard_file_{index}", file_view(path), methods=["GET"])
    return frozenset(files)
