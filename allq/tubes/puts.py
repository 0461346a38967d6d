"""Puts (semantics.md §14.1, §12, §13.3): `put`, `put_batch`, `put_parent` over an `Engine`.

Charter: the checks of §13.3 run in order and all of them before the first change; only
then is the job created (P1, P2 or P3). Part of the sans-IO engine: no clock, no I/O.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from allq.errors import AllQError, BadFormat, Draining, NotFound, ServerFull
from allq.tubes import validate as v
from allq.tubes.job import Job, JobState

if TYPE_CHECKING:
    from allq.tubes.engine import Engine

# ================================================================== puts (§14.1)


def put_batch(engine: Engine, args: Mapping[str, object], now: float) -> list[dict[str, object]]:
    items = v.batch_items(args)
    ctx = v.Context(engine.config, now)
    results: list[dict[str, object]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise BadFormat(f"jobs[{index}] must be a map", field=f"jobs[{index}]")
            clean = v.validate("put", item, ctx, prefix=f"jobs[{index}].")
            results.append(_put(engine, clean, now, prefix=f"jobs[{index}]."))
        except AllQError as error:
            engine.errors[error.code] = engine.errors.get(error.code, 0) + 1
            results.append({"error": error.to_record()})
    return results


def op_put(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return _put(engine, clean, now)


def op_put_parent(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return _put(engine, clean, now, parent=True)


def _put(
    engine: Engine, clean: dict[str, object], now: float, *, prefix: str = "", parent: bool = False
) -> dict[str, object]:
    """P1/P2/P3 with the checks of §13.3 in order; nothing changes before the last one."""
    name = clean["tube"]
    assert isinstance(name, str)
    shard = clean.get("shard_key")
    if engine._is_fair(name) and shard is None:
        raise BadFormat(
            f"tube {name!r} is fair: every job needs a shard_key", field=f"{prefix}shard_key"
        )
    key = clean.get("idempotency_key")
    assert key is None or isinstance(key, str)
    duplicate = engine._duplicate(key, now)
    if duplicate is not None:
        return duplicate
    tube = engine.tubes.get(name)
    if engine.draining or (tube is not None and tube.draining):
        where = "the server" if engine.draining else f"tube {name!r}"
        raise Draining(f"{where} is draining and takes no new jobs")
    parent_job: Job | None = None
    parent_id = clean.get("parent_id")
    if parent_id is not None:
        assert isinstance(parent_id, str)
        parent_job = engine.jobs.get(parent_id)
        if parent_job is None or parent_job.state is not JobState.WAITING:
            raise NotFound(
                f"no waiting parent {parent_id!r} on this server", field=f"{prefix}parent_id"
            )
    engine._check_tube_capacity(name)
    if 0 < engine.config.max_jobs <= len(engine.jobs):
        raise ServerFull(f"the server holds max_jobs = {engine.config.max_jobs} live jobs")
    if engine.refuse_new_jobs is not None:  # e.g. "disk space low" (persistence.md §9)
        raise ServerFull(engine.refuse_new_jobs)
    # -- no rejection past this line --
    tube = engine._tube_for_create(name, now)
    expired_limit = clean.get("expired_limit", engine.config.default_expired_limit)
    assert isinstance(expired_limit, int)
    max_releases = clean.get("max_releases", 2 * expired_limit)
    priority = clean.get("priority", 5)
    ttr = clean.get("ttr", float(engine.config.default_ttr))
    body = clean.get("body", b"")
    assert isinstance(max_releases, int) and isinstance(priority, int)
    assert isinstance(ttr, float | int) and isinstance(body, bytes)
    assert shard is None or isinstance(shard, str)
    if shard is not None:
        shard = sys.intern(shard)  # one object per shard key, not one per job (B7)
    engine._put_seq += 1
    job = Job(
        id=engine._new_job_id(),
        tube=tube.name,  # the tube's own name object, not the request's copy (B7)
        body=body,
        priority=priority,
        ttr=float(ttr),
        expired_limit=expired_limit,
        max_releases=max_releases,
        created_at=now,
        put_seq=engine._put_seq,
        state=JobState.READY,
        parent_id=parent_job.id if parent_job is not None else None,
        shard_key=shard,
        idempotency_key=key,
    )
    engine.jobs[job.id] = job
    tube.shard_enter(job)
    tube.total_puts += 1
    if parent:
        engine.workflows.create_parent(job, clean, now)
    else:
        due_at = _due_at(clean, now)
        if due_at is None:
            engine._enter_ready(job, now)
        else:
            engine._enter_delayed(job, due_at)
    if parent_job is not None:
        engine.workflows.child_started(parent_job)
    if key is not None:
        engine._remember_key(key, job.id, now)
    engine.changelog.note_created(job)
    return {"id": job.id, "state": job.state.value, "duplicate": False}


def _due_at(clean: dict[str, object], now: float) -> float | None:
    delay = clean.get("delay")
    if isinstance(delay, float | int) and delay > 0:
        return now + delay
    run_at = clean.get("run_at")
    if isinstance(run_at, float | int) and run_at > now:
        return float(run_at)
    return None
