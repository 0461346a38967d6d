"""Handlers of the v1 job routes: put (one, a batch, a parent), reserve, done, and the rest.

Each takes a checked `Call`, calls `GatewayCore` and returns a `Reply` (api.md §2); the
route table (`allq.gateway.routes.ROUTES`) names them. Besides the single-job operations
(touch, release, bury, kick, get, delete, children-started), two carry some logic: a batch
put answers per item in request order, and a reserve finishes its `done` jobs first and
holds a waiting slot of the `Limiter` while it long-polls.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from allq.errors import AllQError, NotFound, TimedOut, renumber_item_error
from allq.gateway import bodies as b
from allq.gateway.bodies import Reply
from allq.gateway.request_schemas import Batch
from allq.gateway.route import Call


def _remap_item_error(result: dict[str, Any], position: int, index: int) -> dict[str, Any]:
    """The core numbered batch items among those it got; give the request's index back."""
    error = result.get("error")
    if not isinstance(error, dict):
        return result
    return {**result, "error": renumber_item_error(error, position, index)}


async def put_jobs(call: Call) -> Reply:
    parsed = call.body
    if isinstance(parsed, Batch):
        valid = [(i, item) for i, item in enumerate(parsed.items) if isinstance(item, dict)]
        results = await call.core.put_batch(call.tube, [item for _, item in valid]) if valid else []
        if len(results) != len(valid):
            raise AllQError(f"the core answered {len(results)} results for {len(valid)} jobs")
        out: list[dict[str, Any]] = [
            b.item_error(item) if isinstance(item, AllQError) else {} for item in parsed.items
        ]
        for position, ((index, _), result) in enumerate(zip(valid, results, strict=True)):
            out[index] = _remap_item_error(result, position, index)
        return Reply({"jobs": out}, 201)
    return _put_reply(call, await call.core.put(call.tube, parsed))


async def put_parent(call: Call) -> Reply:
    return _put_reply(call, await call.core.put_parent(call.tube, call.body))


def _put_reply(call: Call, result: dict[str, Any]) -> Reply:
    """201 with the new job, or 200 for an idempotent repeat (`duplicate`)."""
    duplicate = bool(result.get("duplicate", False))
    payload = {
        "id": result["id"],
        "tube": call.tube,
        "state": result["state"],
        "duplicate": duplicate,
    }
    return Reply(payload, 200 if duplicate else 201)


async def _reserve(
    call: Call,
    tubes: list[str],
    count: int,
    timeout_s: float,
    done: list[tuple[str, str | None]] | None,
) -> Reply:
    wait_s = min(timeout_s, call.long_poll_cap_s)
    slot = call.limiter.waiting_slot() if wait_s > 0 else nullcontext()
    with slot:
        done_results: list[dict[str, Any]] | None = None
        if done is not None:
            done_results = await call.core.done_many(done) if done else []
        try:
            views = await call.core.reserve(tubes, count=count, wait_s=wait_s)
        except TimedOut:
            views = []
        except AllQError as exc:
            if done_results is None:
                raise
            # The done part happened: the error answer still reports it.
            return b.error_reply(exc, {"done": done_results})
    payload: dict[str, object] = {"jobs": [call.job(view, with_lease=True) for view in views]}
    if done_results is not None:
        payload["done"] = done_results
    return Reply(payload)


async def reserve(call: Call) -> Reply:
    body = call.body
    return await _reserve(
        call,
        body["tubes"],
        body.get("count", 1),
        body.get("timeout", 0.0),
        body.get("done"),
    )


async def reserve_tube(call: Call) -> Reply:
    return await _reserve(
        call,
        [call.tube],
        int(call.query.get("count", 1)),  # type: ignore[call-overload]
        float(call.query.get("timeout", 0.0)),  # type: ignore[arg-type]
        call.body.get("done"),
    )


async def done_one(call: Call) -> Reply:
    await call.core.job_op("done", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": "gone"})


async def done_batch(call: Call) -> Reply:
    return Reply({"jobs": await call.core.done_many(call.body["jobs"])})


async def touch(call: Call) -> Reply:
    result = await call.core.job_op("touch", call.job_id, call.body)
    payload: dict[str, object] = {"id": call.job_id}
    if result.get("ttr_deadline") is not None:
        payload["deadline_in_s"] = round(max(0.0, result["ttr_deadline"] - call.core.now()), 3)
    return Reply(payload)


async def release(call: Call) -> Reply:
    result = await call.core.job_op("release", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": result.get("state", "ready")})


async def bury(call: Call) -> Reply:
    result = await call.core.job_op("bury", call.job_id, call.body)
    return Reply({"id": call.job_id, "state": result.get("state", "buried")})


async def kick_job(call: Call) -> Reply:
    result = await call.core.job_op("kick_job", call.job_id, {})
    return Reply({"id": call.job_id, "state": result.get("state", "ready")})


async def get_job(call: Call) -> Reply:
    view = await call.core.job_op("peek", call.job_id, {})
    if view.get("state") == "reserved" and view.get("ttr_deadline") is None:
        # A peek carries no TTR deadline; stats_job has the time left.
        try:
            stats = await call.core.job_op("stats_job", call.job_id, {})
        except NotFound:
            stats = {}
        if isinstance(stats.get("time_left_s"), int | float):
            view = {**view, "ttr_deadline": call.core.now() + stats["time_left_s"]}
    return Reply(call.job(view))


async def delete_job(call: Call) -> Reply:
    fields = {"lease": call.query["lease"]} if "lease" in call.query else {}
    result = await call.core.job_op("delete", call.job_id, fields)
    return Reply(
        {"id": call.job_id, "state": "gone", "previous_state": result.get("previous_state")}
    )


async def children_started(call: Call) -> Reply:
    result = await call.core.job_op("set_children_started", call.job_id, {})
    return Reply({"id": call.job_id, **result})
