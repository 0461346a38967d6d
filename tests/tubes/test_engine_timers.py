"""Engine time: tube GC (§4.4), next_deadline (§8.2) and determinism of tick (§8.4).

Rules: explicit `now` everywhere. GC is checked on both sides of its instant: never
before `idle_since + tube_gc_idle`, and gone by that instant plus the 1 s the spec allows.
The determinism property runs the same scenario on two engines, one ticked at every
pending deadline and one ticked once, late, and compares every outcome that §8.4 names
(deliveries, waiter timeouts, states, counters), not timestamps.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from allq.errors import AllQError
from allq.tubes.engine import Engine
from allq.tubes.events import DeadlineSoon, Delivered, Effect, WaitTimedOut
from tests.helpers.engines import START, Driver, make_engine

GC = 10.0


def gc_driver() -> Driver:
    return Driver(make_engine(tube_gc_idle=int(GC)))


def exists(d: Driver, name: str) -> bool:
    listed = name in d("list_tubes")["tubes"]
    assert listed == d.engine.has_tube(name)
    return listed


def assert_collected_at(d: Driver, name: str, idle_since: float) -> None:
    """Not collected before idle_since + GC; collected by then (+1 s allowed, §8.5)."""
    d.at(idle_since + GC - 0.001)
    assert exists(d, name), "collected too early"
    d.at(idle_since + GC + 1)
    assert not exists(d, name), "not collected"


# -- tube GC (§4.4) ---------------------------------------------------------------------------


def test_gc_after_the_last_job_leaves() -> None:
    d = gc_driver()
    job_id = d.put()
    lease = d.reserve_one()["lease"]
    d.at(START + 3)
    d("done", job_id=job_id, lease=lease)
    assert_collected_at(d, "t", START + 3)
    d.fails("NOT_FOUND", "stats_tube", field="tube", tube="t")


def test_gc_exact_instant() -> None:
    d = gc_driver()
    d("delete", job_id=d.put())
    assert d.engine.tube_next_deadline("t") == START + GC
    d.at(START + GC)
    assert not exists(d, "t")


def test_gc_forgets_counters() -> None:
    d = gc_driver()
    d("delete", job_id=d.put())
    d.at(START + GC + 1)
    d.put()
    assert d.tube()["total_puts"] == 1


def test_read_only_operations_do_not_reset_idle_since() -> None:
    d = gc_driver()
    d("delete", job_id=d.put())
    d.at(START + 5)
    d("stats_tube", tube="t")
    d("list_tubes")
    d.fails("NOT_FOUND", "peek_ready", tube="t")
    d.fails("NOT_FOUND", "peek_delayed", tube="t")
    d.fails("NOT_FOUND", "peek_buried", tube="t")
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d("kick", tube="t")
    d("unpause", tube="t")
    d("throttle", tube="t", tps=0)
    assert_collected_at(d, "t", START)


@given(state=st.sampled_from(["ready", "delayed", "reserved", "buried", "waiting"]))
@settings(max_examples=10, deadline=None)
def test_gc_never_takes_a_tube_with_a_job(state: str) -> None:
    d = gc_driver()
    if state == "waiting":
        d.parent(timeout=1000)
    elif state == "delayed":
        d.put(delay=1000)
    else:
        job_id = d.put(ttr=1000)
        if state != "ready":
            lease = d.reserve_one()["lease"]
            if state == "buried":
                d("bury", job_id=job_id, lease=lease)
    d.at(START + 10 * GC)
    assert exists(d, "t")
    assert d.counts()[state] == 1


def test_gc_never_takes_a_tube_with_settings() -> None:
    d = gc_driver()
    d("pause", tube="paused")
    d("throttle", tube="throttled", tps=3)
    d("drain", tube="drained")
    d("set_shard_limit", tube="fq-limited", limit=2)
    d.at(START + 10 * GC)
    for name in ("paused", "throttled", "drained", "fq-limited"):
        assert exists(d, name)
    d("unpause", tube="paused")
    d("throttle", tube="throttled", tps=0)
    d("undrain", tube="drained")
    d("set_shard_limit", tube="fq-limited", limit=0)
    names = ("paused", "throttled", "drained", "fq-limited")
    d.at(START + 11 * GC - 0.001)
    assert all(exists(d, name) for name in names)
    d.at(START + 11 * GC + 1)
    assert not any(exists(d, name) for name in names)


def test_gc_never_takes_a_tube_named_by_a_waiter() -> None:
    d = gc_driver()
    d("delete", job_id=d.put())
    d.at(START + 5)
    d.wait(timeout=100)
    d.at(START + 50)
    assert exists(d, "t")
    d.at(START + 105)
    assert_collected_at(d, "t", START + 105)


def test_pause_with_duration_ends_then_gc_counts_from_the_end() -> None:
    d = gc_driver()
    d("pause", tube="t", duration=4)
    assert_collected_at(d, "t", START + 4)


def test_next_deadline_is_exact_and_inf_when_idle() -> None:
    d = Driver()
    assert d.engine.next_deadline() == math.inf
    d.put(delay=7)
    d.put("u", ttr=5)
    d.reserve_one("u")
    assert d.engine.next_deadline() == START + 5
    assert d.engine.tube_next_deadline("u") == START + 5
    assert d.engine.tube_next_deadline("t") == START + 7
    assert d.engine.tube_next_deadline("absent") == math.inf
    d.wait("x", timeout=3)
    assert d.engine.own_next_deadline() == START + 3
    assert d.engine.next_deadline() == START + 3


def test_idempotency_key_expiry_is_an_engine_timer() -> None:
    d = Driver(make_engine(dedup_window=20))
    d("delete", job_id=d.put("t", idempotency_key="k"))
    assert d.engine.own_next_deadline() == START + 20
    d.at(START + 20)
    assert d("stats")["idempotency_keys"] == 0
    assert d.engine.own_next_deadline() == math.inf


def test_time_never_goes_back() -> None:
    d = Driver()
    d.at(START + 10)
    job_id = d.put()
    d.engine.tick(START)
    result = d.engine.handle("put", {"tube": "t", "delay": 1}, START)
    assert isinstance(result, dict)
    assert d.job(str(result["id"]))["due_at"] == START + 11
    assert d.job(job_id)["created_at"] == START + 10


# -- determinism (§8.4) ------------------------------------------------------------------------

WINDOW = 12.0

scenario_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(["a", "b"]),
            st.sampled_from([1, 5, 9]),
            st.sampled_from([0, 0.5, 1, 2.5, 4, 6]),
        ),
        st.tuples(
            st.just("wait"),
            st.sampled_from([("a",), ("b",), ("a", "b")]),
            st.integers(1, 2),
            st.sampled_from([0.5, 1, 2.5, 4, 8]),
            st.booleans(),
        ),
        st.tuples(st.just("short"), st.sampled_from([1, 2, 3.5]), st.integers(1, 2), st.booleans()),
        st.tuples(st.just("pause"), st.sampled_from([1, 2.5, 4])),
        st.tuples(st.just("throttle"), st.sampled_from([0.5, 1, 2])),
        st.tuples(
            st.just("parent"),
            st.sampled_from([1, 2.5, 4, 30]),
            st.booleans(),
            st.booleans(),
            st.sampled_from([None, 1, 2]),
            st.sampled_from(["wait", "bury"]),
        ),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1])),
    ),
    max_size=30,
)


def _run_setup(engine: Engine, ops: list[tuple[Any, ...]]) -> None:
    """Apply `ops`; waiters only name tubes a and b, whose jobs have a long TTR."""
    now = START
    parents: list[str] = []

    def call(op: str, **args: object) -> Any:
        try:
            return engine.handle(op, args, now)
        except AllQError:
            return None

    for op in ops:
        kind = op[0]
        if kind == "put":
            _, tube, priority, delay = op
            parent_id = parents[-1] if parents and tube == "b" else None
            args: dict[str, object] = {
                "tube": tube,
                "priority": priority,
                "delay": delay,
                "ttr": 1000,
            }
            if parent_id is not None:
                args["parent_id"] = parent_id
            call("put", **args)
        elif kind == "wait":
            _, tubes, count, timeout, owned = op
            call(
                "reserve",
                tubes=list(tubes),
                count=count,
                timeout=timeout,
                **({"owner": "o"} if owned else {}),
            )
        elif kind == "short":
            _, ttr, limit, owned = op
            args = {"tube": "s", "ttr": ttr, "expired_limit": limit}
            if parents:
                args["parent_id"] = parents[-1]
            call("put", **args)
            call("reserve", tubes=["s"], **({"owner": "o"} if owned else {}))
        elif kind == "pause":
            call("pause", tube="a", duration=op[1])
        elif kind == "throttle":
            call("throttle", tube="b", tps=op[1])
        elif kind == "parent":
            _, timeout, run, noop, limit, failure = op
            args = {"tube": "a", "timeout": timeout, "run_on_timeout": run, "noop": noop}
            args["on_child_failure"] = failure
            args["ttr"] = 1000
            if limit is not None:
                args["limit"] = limit
            result = call("put_parent", **args)
            if result is not None:
                parents.append(str(result["id"]))
        else:
            now += op[1]
            engine.tick(now)


def _outcome(engine: Engine, effects: list[Effect]) -> dict[str, object]:
    def effect_key(effect: Effect) -> tuple[object, ...]:
        if isinstance(effect, Delivered):
            return ("delivered", effect.waiter, tuple(job["id"] for job in effect.jobs))
        if isinstance(effect, WaitTimedOut):
            return ("timed_out", effect.waiter)
        assert isinstance(effect, DeadlineSoon)
        return ("deadline_soon", effect.waiter)

    jobs = {
        job.id: (
            job.state.value,
            job.priority,
            job.reserves,
            job.timeouts,
            job.releases,
            job.buries,
            job.kicks,
            None
            if job.parent is None
            else (job.parent.children_completed, job.parent.children_failed),
        )
        for job in engine.jobs.values()
    }
    tubes = {
        name: (tube.total_completed, tube.total_buried, tube.total_timeouts, tube.paused)
        for name, tube in engine.tubes.items()
    }
    return {
        "effects": sorted(map(effect_key, effects), key=repr),
        "jobs": jobs,
        "tubes": tubes,
        "waiters": sorted(engine.waiters),
    }


@given(scenario_ops)
@settings(max_examples=300, deadline=None)
def test_ticking_late_equals_ticking_at_each_deadline(ops: list[tuple[Any, ...]]) -> None:
    step = make_engine()
    late = make_engine()
    _run_setup(step, ops)
    _run_setup(late, ops)
    start = step.now
    assert late.now == start
    step_effects = step.take_effects()
    late_effects = late.take_effects()
    end = start + WINDOW
    while (instant := step.next_deadline()) <= end:
        step_effects.extend(step.tick(max(instant, step.now)))
        step.check_invariants()
    step_effects.extend(step.tick(end))
    late_effects.extend(late.tick(end))
    step.check_invariants()
    late.check_invariants()
    assert _outcome(late, late_effects) == _outcome(step, step_effects)
