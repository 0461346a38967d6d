"""Handlers of the v1 tube routes: list, stats and peek, and the tube-wide controls.

The controls (kick, pause, throttle, drain, shard limit, clear) go to every server through
`GatewayCore` (`kick`, `tube_control`); the answers are api.md §2's.
"""

from __future__ import annotations

from typing import Any, Final

from allq.errors import AllQError
from allq.gateway import bodies as b
from allq.gateway.bodies import Reply
from allq.gateway.route import Call


async def list_tubes(call: Call) -> Reply:
    return Reply({"tubes": await call.core.list_tubes()})


async def tube_stats(call: Call) -> Reply:
    return Reply(await call.core.tube_stats(call.tube))


async def peek_tube(call: Call) -> Reply:
    state = str(call.query.get("state", "ready"))
    return Reply(call.job(await call.core.peek_tube(call.tube, state)))


async def kick_tube(call: Call) -> Reply:
    kicked = await call.core.kick(call.tube, int(call.body.get("bound", 1)))
    return Reply({"kicked": kicked})


async def _control(call: Call, op: str, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        return await call.core.tube_control(op, call.tube, fields)
    except AllQError as exc:
        raise b.rename_field(exc, {"duration": "seconds"}) from None


async def pause(call: Call) -> Reply:
    return Reply({"paused": True, **await _control(call, "pause", call.body)})


async def unpause(call: Call) -> Reply:
    return Reply({"paused": False, **await _control(call, "unpause", {})})


async def throttle(call: Call) -> Reply:
    result = await _control(call, "throttle", call.body)
    return Reply({"tps": call.body["tps"], **result})


async def unthrottle(call: Call) -> Reply:
    result = await _control(call, "throttle", {"tps": 0.0})
    return Reply({"tps": None, **{k: v for k, v in result.items() if k != "tps"}})


async def drain(call: Call) -> Reply:
    return Reply({"draining": True, **await _control(call, "drain", {})})


async def undrain(call: Call) -> Reply:
    return Reply({"draining": False, **await _control(call, "undrain", {})})


async def shard_limit(call: Call) -> Reply:
    result = await _control(call, "set_shard_limit", call.body)
    return Reply({"limit": call.body["limit"], **result})


_CLEARED: Final = ("ready", "delayed", "reserved", "buried", "waiting")


async def clear_tube(call: Call) -> Reply:
    result = await _control(call, "clear", {})
    deleted = sum(int(result.get(key, 0)) for key in _CLEARED)
    return Reply({"deleted": deleted, **result})
