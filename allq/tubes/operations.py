"""The operations of semantics.md §9.3 and §14.2-14.5 over an `Engine`.

Charter: one function per operation, `op_x(engine, clean, now)`, called by
`Engine.handle` after validation and after time has advanced. Each checks every state
condition before its first change (a rejected request changes nothing) and then uses the
engine's transition primitives. Part of the sans-IO engine: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from allq import __version__
from allq.errors import BadFormat, DeadlineSoon, LeaseExpired, NotFound, NotReserved, TimedOut
from allq.tubes.events import Waiting
from allq.tubes.job import Job, JobState
from allq.tubes.puts import op_put, op_put_parent
from allq.tubes.tube import Tube

if TYPE_CHECKING:
    from allq.tubes.engine import Engine, Result

#: A reservation this close to its TTR deadline is "near" it (semantics.md §7.3).
DEADLINE_SOON_MARGIN = 1.0

# ================================================================== reserve (§9.3)


def op_reserve(engine: Engine, clean: dict[str, object], now: float) -> Result:
    tubes = clean["tubes"]
    count = clean.get("count", 1)
    timeout = clean.get("timeout", 0.0)
    owner = clean.get("owner")
    assert isinstance(tubes, list) and isinstance(count, int)
    assert isinstance(timeout, float | int) and (owner is None or isinstance(owner, str))
    jobs = engine._select(tubes, count, now, now, owner)
    if jobs:
        return jobs
    if owner is not None and engine._owner_soonest(owner) - now <= DEADLINE_SOON_MARGIN:
        raise DeadlineSoon(f"owner {owner!r} holds a reservation within 1 s of its TTR")
    if timeout <= 0:
        raise TimedOut("no job is ready in the tubes named")
    return Waiting(engine._add_waiter(tubes, count, now + timeout, owner))


# ================================================================== job operations (§14.2)


def _job(engine: Engine, clean: dict[str, object]) -> Job:
    job_id = clean["job_id"]
    assert isinstance(job_id, str)
    job = engine.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def _leased_job(engine: Engine, clean: dict[str, object], *, lease_optional_state: bool) -> Job:
    """The lease check of §7.2. `lease_optional_state`: delete works on any state."""
    job = _job(engine, clean)
    lease = clean.get("lease")
    if lease is not None and lease != job.lease:
        raise LeaseExpired(
            f"lease {str(lease)[:6]}… is not the current lease of job {job.id}", field="lease"
        )
    if job.state is not JobState.RESERVED and not lease_optional_state:
        raise NotReserved(f"job {job.id} is {job.state.value}, not reserved", field="job_id")
    return job


def op_done(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _leased_job(engine, clean, lease_optional_state=False)
    engine._complete(job, now)
    return {}


def op_delete(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _leased_job(engine, clean, lease_optional_state=True)
    previous = job.state.value
    if job.state is JobState.RESERVED:
        engine._complete(job, now)
    else:
        engine._detach(job)
    return {"previous_state": previous}


def op_touch(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _leased_job(engine, clean, lease_optional_state=False)
    tube = engine._tube_of(job)
    job.ttr_deadline = now + job.ttr
    tube.reserved.update(job)
    engine._touched.add(tube.name)
    if job.owner is not None:
        engine._refresh_owner(job.owner)
    return {"ttr_deadline": job.ttr_deadline}


def op_release(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _leased_job(engine, clean, lease_optional_state=False)
    engine._leave_reserved(job)
    job.releases += 1
    job.releases_since_kick += 1
    priority = clean.get("priority")
    if isinstance(priority, int):
        job.priority = priority
    delay = clean.get("delay")
    if job.releases_since_kick > job.max_releases:
        engine._enter_buried(job, now)
    elif isinstance(delay, float | int) and delay > 0:
        engine._enter_delayed(job, now + delay)
    else:
        engine._enter_ready(job, now)
    return {"state": job.state.value}


def op_bury(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _leased_job(engine, clean, lease_optional_state=False)
    engine._leave_reserved(job)
    priority = clean.get("priority")
    if isinstance(priority, int):
        job.priority = priority
    engine._enter_buried(job, now)
    return {"state": job.state.value}


def op_unreserve(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    """R10: give back a delivered job as if never reserved (§9.4)."""
    job = _leased_job(engine, clean, lease_optional_state=False)
    tube = engine._tube_of(job)
    engine._leave_reserved(job)
    job.reserves -= 1
    job.state = JobState.READY
    job.ready_seq = job.prev_ready_seq
    job.ready_since = job.prev_ready_since
    tube.refund_token()
    engine._add_ready(job)
    return {}


def op_kick(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    name = clean["tube"]
    bound = clean.get("bound", 1)
    assert isinstance(name, str) and isinstance(bound, int)
    tube = engine.tubes.get(name)
    if tube is None or (not tube.buried and not tube.delayed):
        return {"kicked": 0, "from": None}
    if tube.buried:
        source = "buried"
        victims = list(tube.buried)[:bound]
    else:
        source = "delayed"
        victims = [job for _, job in tube.delayed.sorted_items()[:bound]]
    kicked = 0
    for job in victims:
        if engine.jobs.get(job.id) is job and job.state.value == source:
            engine._kick(job, now)
            kicked += 1
    return {"kicked": kicked, "from": source}


def op_kick_job(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    job = _job(engine, clean)
    if job.state not in (JobState.BURIED, JobState.DELAYED):
        raise NotFound(f"job {job.id} is {job.state.value} and cannot be kicked", field="job_id")
    return {"state": engine._kick(job, now)}


def op_set_children_started(
    engine: Engine, clean: dict[str, object], now: float
) -> dict[str, object]:
    job = _job(engine, clean)
    if job.state is not JobState.WAITING or job.parent is None:
        raise NotFound(f"job {job.id} is not a waiting parent", field="job_id")
    return engine.workflows.set_children_started(job, now)


# ================================================================== peeks (§14.3)


def op_peek(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return _job(engine, clean).view()


def _peek_tube(engine: Engine, clean: dict[str, object]) -> Tube:
    name = clean["tube"]
    assert isinstance(name, str)
    tube = engine.tubes.get(name)
    if tube is None:
        raise NotFound(f"no tube {name!r}", field="tube")
    return tube


def op_peek_ready(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    tube = _peek_tube(engine, clean)
    job = tube.head(engine.config.default_shard_reservation_limit)
    if job is None:
        raise NotFound(f"tube {tube.name!r} has no ready job to peek")
    return job.view()


def op_peek_delayed(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    tube = _peek_tube(engine, clean)
    job = tube.delayed.peek_item()
    if job is None:
        raise NotFound(f"tube {tube.name!r} has no delayed job")
    return job.view()


def op_peek_buried(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    tube = _peek_tube(engine, clean)
    job = next(iter(tube.buried), None)
    if job is None:
        raise NotFound(f"tube {tube.name!r} has no buried job")
    return job.view()


# ================================================================== stats (§14.4, §15)


def op_stats_job(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return _job(engine, clean).stats(now)


def op_stats_tube(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return engine.tube_stats(_peek_tube(engine, clean), now)


def op_stats(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return engine.server_stats(now)


def op_list_tubes(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    after = clean.get("after")
    limit = clean.get("limit", 1000)
    assert isinstance(limit, int)
    names = sorted(
        (name for name in engine.tubes if after is None or name > str(after)),
        key=lambda name: name.encode(),
    )
    page = names[:limit]
    more = len(names) > limit
    return {"tubes": page, "next_after": page[-1] if more and page else None}


def op_ping(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    return {
        "pong": True,
        "server_id": engine.config.server_id,
        "version": __version__,
        "now": now,
    }


# ================================================================== tube control (§14.5)


def _name(clean: dict[str, object]) -> str:
    name = clean["tube"]
    assert isinstance(name, str)
    return name


def op_pause(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    name = _name(clean)
    duration = clean.get("duration")
    assert duration is None or isinstance(duration, float | int)
    if duration == 0:  # same as unpause, but answered in pause's shape (§14.5)
        op_unpause(engine, clean, now)
        return {"paused": False, "pause_until": None}
    tube = engine._tube_for_create(name, now)
    tube.paused = True
    tube.pause_until = None if duration is None else now + duration
    return {"paused": True, "pause_until": tube.pause_until}


def op_unpause(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    tube = engine.tubes.get(_name(clean))
    if tube is not None and tube.paused:
        engine._unpause(tube)
    return {"paused": False}


def op_throttle(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    name = _name(clean)
    tps = clean["tps"]
    assert isinstance(tps, float)
    if tps <= 0:
        tube = engine.tubes.get(name)
        if tube is not None and tube.throttle_tps is not None:
            tube.set_throttle(None, now)
            engine._dirty.add(name)
            engine._touched.add(name)
        return {"throttle_tps": None}
    tube = engine._tube_for_create(name, now)
    tube.set_throttle(tps, now)
    engine._dirty.add(name)
    return {"throttle_tps": tps}


def op_drain(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    if "tube" not in clean:
        engine.draining = True
        return {"draining": True}
    tube = engine._tube_for_create(_name(clean), now)
    tube.draining = True
    return {"draining": True}


def op_undrain(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    if "tube" not in clean:
        engine.draining = False
        return {"draining": False}
    tube = engine.tubes.get(_name(clean))
    if tube is not None:
        tube.draining = False
        engine._touched.add(tube.name)
    return {"draining": False}


def op_set_shard_limit(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    name = _name(clean)
    limit = clean["limit"]
    assert isinstance(limit, int)
    if not engine._is_fair(name):
        raise BadFormat(
            f"tube {name!r} is not fair (fair tubes start with "
            f"{engine.config.fair_prefix!r}); set_shard_limit needs a fair tube",
            field="tube",
        )
    # A per-tube value equal to "off" while the server default is off is no setting.
    value: int | None = limit
    if limit == 0 and engine.config.default_shard_reservation_limit == 0:
        value = None
        tube = engine.tubes.get(name)
    else:
        tube = engine._tube_for_create(name, now)
    if tube is not None:
        tube.shard_limit = value
        engine._dirty.add(name)
        engine._touched.add(name)
    return {"shard_reservation_limit": limit}


def op_clear(engine: Engine, clean: dict[str, object], now: float) -> dict[str, object]:
    tube = engine.tubes.get(_name(clean))
    removed = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0, "waiting": 0}
    if tube is None:
        return dict(removed)
    jobs: Iterable[Job] = [
        *tube.by_age,
        *tube.delayed,
        *tube.reserved,
        *tube.buried,
        *tube.waiting,
    ]
    ids = []
    for job in jobs:
        removed[job.state.value] += 1
        engine._detach(job)
        ids.append(job.id)
    tube.rotation.clear()
    engine.changelog.note_cleared(tube.name, ids)
    return dict(removed)


HANDLERS: dict[str, Callable[[Engine, dict[str, object], float], Result]] = {
    "put": op_put,
    "put_parent": op_put_parent,
    "reserve": op_reserve,
    "done": op_done,
    "delete": op_delete,
    "touch": op_touch,
    "release": op_release,
    "bury": op_bury,
    "unreserve": op_unreserve,
    "kick": op_kick,
    "kick_job": op_kick_job,
    "set_children_started": op_set_children_started,
    "peek": op_peek,
    "peek_ready": op_peek_ready,
    "peek_delayed": op_peek_delayed,
    "peek_buried": op_peek_buried,
    "stats_job": op_stats_job,
    "stats_tube": op_stats_tube,
    "stats": op_stats,
    "list_tubes": op_list_tubes,
    "ping": op_ping,
    "pause": op_pause,
    "unpause": op_unpause,
    "throttle": op_throttle,
    "drain": op_drain,
    "undrain": op_undrain,
    "set_shard_limit": op_set_shard_limit,
    "clear": op_clear,
}
