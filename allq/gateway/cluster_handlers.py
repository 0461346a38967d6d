"""Handlers of the v1 cluster and operations routes: membership, stats, health, the document.

Servers are listed, added, drained and removed through `GatewayCore`; `/v1/stats` sums the
cluster; `/healthz` and `/readyz` answer without a token; `/openapi.json` returns the
document the app built from the route table (`Call.document`).
"""

from __future__ import annotations

import os

from allq.gateway.bodies import Reply
from allq.gateway.route import Call


async def list_servers(call: Call) -> Reply:
    return Reply({"servers": call.core.servers()})


async def add_server(call: Call) -> Reply:
    body = call.body
    return Reply(await call.core.add_server(body["address"], body.get("name")), 201)


async def drain_server(call: Call) -> Reply:
    return Reply(await call.core.drain_server(call.params["sid"]))


async def remove_server(call: Call) -> Reply:
    force = bool(call.query.get("force", False))
    return Reply(await call.core.remove_server(call.params["sid"], force=force))


async def cluster_stats(call: Call) -> Reply:
    return Reply(await call.core.stats())


async def healthz(call: Call) -> Reply:
    # The pid tells which worker answered when several share the port.
    return Reply({"status": "ok", "pid": os.getpid()})


async def readyz(call: Call) -> Reply:
    ok, reason = call.core.ready()
    if ok:
        return Reply({"ready": True})
    return Reply({"ready": False, "reason": reason}, 503, {"Retry-After": "1"})


async def openapi(call: Call) -> Reply:
    return Reply(call.document)
