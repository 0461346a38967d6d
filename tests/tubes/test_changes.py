"""Change maps: replaying what an engine logged rebuilds its state (persistence.md §4, §6.3).

Rules: an engine with its change log on runs a random sequence of operations and ticks
(explicit `now`, Hypothesis-chosen), each call's changes taken as one record; a fresh
engine restored from all records — and one restored from a dump of the live state — must
hold every live job with the same fields, reserved jobs back in ready at their place, the
same orders, parents, tube settings and idempotency records.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allq.errors import AllQError
from allq.tubes.changes import dump
from allq.tubes.engine import Engine
from allq.tubes.job import JobState
from allq.tubes.replay import (
    RestoreError,
    restore,
)
from allq.tubes.tube import Tube
from tests.helpers.engines import START, make_engine

TUBES = ["a", "b", "fq-c"]

step = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(TUBES),
        st.integers(0, 3),
        st.sampled_from([0, 0, 2.5]),
        st.booleans(),
    ),
    st.tuples(
        st.just("parent"), st.sampled_from(TUBES), st.integers(0, 2), st.booleans(), st.booleans()
    ),
    st.tuples(st.just("child"), st.sampled_from(TUBES), st.integers(0, 5)),
    st.tuples(st.just("reserve"), st.sampled_from(TUBES), st.integers(1, 2)),
    st.tuples(
        st.just("act"),
        st.sampled_from(["done", "release", "release_later", "bury", "touch", "delete"]),
        st.integers(0, 9),
    ),
    st.tuples(st.just("kick"), st.sampled_from(TUBES), st.integers(1, 3)),
    st.tuples(st.just("delete_any"), st.integers(0, 20)),
    st.tuples(
        st.just("setting"),
        st.sampled_from(TUBES),
        st.sampled_from(
            ["pause", "pause_for", "unpause", "throttle", "unthrottle", "drain", "undrain", "shard"]
        ),
    ),
    st.tuples(st.just("children_started"), st.integers(0, 5)),
    st.tuples(st.just("clear"), st.sampled_from(TUBES)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0, 30.0])),
)


class Recorder:
    """Runs operations on an engine with logging on; keeps every record."""

    def __init__(self) -> None:
        self.engine = make_engine(dedup_window=60)
        self.engine.changelog.enabled = True
        self.now = START
        self.records: list[list[dict[str, Any]]] = [
            [{"t": "meta", "seqs": self.engine.sequences()}]
        ]
        self.held: list[dict[str, Any]] = []
        self.parents: list[str] = []
        self.keys = 0

    def call(self, op: str, **args: Any) -> Any:
        try:
            return self.engine.handle(op, args, self.now)
        except AllQError:
            return None
        finally:
            self.engine.take_effects()
            self.records.append(self.engine.take_changes())

    def run(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        shard = {"shard_key": "s1"}
        if kind == "put":
            _, tube, priority, delay, keyed = action
            args: dict[str, Any] = {
                "tube": tube,
                "body": b"x" * priority,
                "priority": priority,
                "ttr": 5,
            }
            if delay:
                args["delay"] = delay
            if keyed:
                self.keys += 1
                args["idempotency_key"] = f"k{self.keys % 4}"
            if tube.startswith("fq-"):
                args.update(shard)
            self.call("put", **args)
        elif kind == "parent":
            _, tube, limit, run_on_timeout, noop = action
            args = {"tube": tube, "timeout": 10, "run_on_timeout": run_on_timeout, "noop": noop}
            if limit:
                args["limit"] = limit
            if tube.startswith("fq-"):
                args.update(shard)
            result = self.call("put_parent", **args)
            if result is not None:
                self.parents.append(result["id"])
        elif kind == "child" and self.parents:
            _, tube, index = action
            args = {"tube": tube, "parent_id": self.parents[index % len(self.parents)], "ttr": 5}
            if tube.startswith("fq-"):
                args.update(shard)
            self.call("put", **args)
        elif kind == "reserve":
            result = self.call("reserve", tubes=[action[1]], count=action[2])
            if isinstance(result, list):
                self.held.extend(result)
        elif kind == "act" and self.held:
            _, what, index = action
            job = self.held.pop(index % len(self.held))
            if what == "release_later":
                self.call("release", job_id=job["id"], lease=job["lease"], delay=2, priority=1)
            elif what == "touch":
                self.call("touch", job_id=job["id"], lease=job["lease"])
                self.held.append(job)
            else:
                self.call(what, job_id=job["id"], lease=job["lease"])
        elif kind == "kick":
            self.call("kick", tube=action[1], bound=action[2])
        elif kind == "delete_any" and self.engine.jobs:
            ids = sorted(self.engine.jobs)
            self.call("delete", job_id=ids[action[1] % len(ids)])
        elif kind == "setting":
            _, tube, what = action
            ops: dict[str, tuple[str, dict[str, Any]]] = {
                "pause": ("pause", {}),
                "pause_for": ("pause", {"duration": 4}),
                "unpause": ("unpause", {}),
                "throttle": ("throttle", {"tps": 0.5}),
                "unthrottle": ("throttle", {"tps": 0}),
                "drain": ("drain", {}),
                "undrain": ("undrain", {}),
                "shard": ("set_shard_limit", {"limit": 1}),
            }
            op, extra = ops[what]
            self.call(op, tube=tube, **extra)
        elif kind == "children_started" and self.parents:
            self.call("set_children_started", job_id=self.parents[action[1] % len(self.parents)])
        elif kind == "clear":
            self.call("clear", tube=action[1])
        elif kind == "advance":
            self.now += action[1]
            self.engine.tick(self.now)
            self.records.append(self.engine.take_changes())


def restored(changes: list[dict[str, Any]], now: float) -> Engine:
    engine = make_engine(now=now, dedup_window=60)
    restore(engine, changes)
    engine.check_invariants()
    return engine


def ready_order(engine: Engine, tube: str) -> list[str]:
    jobs = [j for j in engine.jobs.values() if j.tube == tube and j.state is JobState.READY]
    reserved = [j for j in engine.jobs.values() if j.tube == tube and j.state is JobState.RESERVED]
    keyed = [(j.priority, j.ready_seq, j.id) for j in jobs] + [
        (j.priority, j.prev_ready_seq, j.id) for j in reserved
    ]
    return [job_id for _, _, job_id in sorted(keyed)]


def buried_order(engine: Engine, tube: str) -> list[str]:
    return [job.id for job in engine.tubes[tube].buried] if tube in engine.tubes else []


JOB_FIELDS = (
    "tube", "body", "priority", "ttr", "expired_limit", "max_releases", "parent_id", "shard_key",
    "idempotency_key", "created_at", "timeouts", "releases", "buries", "kicks",
    "timeouts_since_kick", "releases_since_kick",
)  # fmt: skip
SETTINGS = ("paused", "pause_until", "throttle_tps", "draining", "shard_limit")


def settled(tube: Tube, setting: str, now: float) -> object:
    """A tube setting as the first tick at `now` leaves it: pause ends are not logged
    (semantics.md §17), so a restored pause whose end has passed ends at that tick."""
    ended = tube.pause_until is not None and tube.pause_until <= now
    if setting == "paused":
        return tube.paused and not ended
    if setting == "pause_until":
        return None if ended or not tube.paused else tube.pause_until
    return getattr(tube, setting)


def assert_same(live: Engine, back: Engine) -> None:
    assert set(back.jobs) == set(live.jobs)
    for job_id, job in live.jobs.items():
        other = back.jobs[job_id]
        for name in JOB_FIELDS:
            assert getattr(other, name) == getattr(job, name), (job_id, name)
        assert other.reserves <= job.reserves  # reserve itself is not logged
        expected = JobState.READY if job.state is JobState.RESERVED else job.state
        assert other.state is expected
        if job.state is JobState.DELAYED:
            assert other.due_at == job.due_at
        if job.parent is not None:
            assert other.parent == job.parent
    for name in TUBES:
        assert ready_order(back, name) == ready_order(live, name)
        assert buried_order(back, name) == buried_order(live, name)
    for tube_name, tube in live.tubes.items():
        if tube.has_settings():
            restored_tube = back.tubes[tube_name]
            for setting in SETTINGS:
                assert settled(restored_tube, setting, live.now) == settled(
                    tube, setting, live.now
                ), (tube_name, setting)
    live_keys = {
        k: (r.job_id, r.first_seen) for k, r in live.key_records() if r.first_seen + 60 > live.now
    }
    back_keys = {k: (r.job_id, r.first_seen) for k, r in back.key_records()}
    assert back_keys == live_keys


@given(st.lists(step, max_size=80))
@settings(max_examples=150, deadline=None)
def test_replaying_the_log_and_the_dump_rebuild_the_state(actions: list[tuple[Any, ...]]) -> None:
    recorder = Recorder()
    for action in actions:
        recorder.run(action)
    live = recorder.engine
    log = [change for record in recorder.records for change in record]
    assert_same(live, restored(log, live.now))
    assert_same(live, restored([{"t": "meta", "seqs": live.sequences()}, *dump(live)], live.now))


def test_reserve_touch_and_unreserve_are_not_logged() -> None:
    recorder = Recorder()
    recorder.call("put", tube="a", body=b"x")
    assert [c["t"] for c in recorder.records[-1]] == ["put"]
    job = recorder.call("reserve", tubes=["a"])[0]
    assert recorder.records[-1] == []
    recorder.call("touch", job_id=job["id"], lease=job["lease"])
    assert recorder.records[-1] == []
    recorder.call("unreserve", job_id=job["id"], lease=job["lease"])
    assert recorder.records[-1] == []
    recorder.call("done", job_id=job["id"], lease="A" * 22)  # rejected: nothing logged
    assert recorder.records[-1] == []


def test_one_request_is_one_record_and_clear_is_one_change() -> None:
    recorder = Recorder()
    recorder.call("put_batch", jobs=[{"tube": "a"}, {"tube": "a", "delay": 5}, {"tube": "-bad"}])
    assert [c["t"] for c in recorder.records[-1]] == ["put", "put"]
    recorder.call("clear", tube="a")
    assert recorder.records[-1] == [{"t": "clear", "tube": "a"}]


def test_a_duplicate_put_in_the_log_is_refused() -> None:
    recorder = Recorder()
    recorder.call("put", tube="a")
    put = recorder.records[-1][0]
    with pytest.raises(RestoreError, match="duplicate put"):
        restored([put, put], recorder.now)


def test_orphan_changes_are_counted_not_applied() -> None:
    engine = make_engine()
    count = {"t": "count", "id": "B" * 22, "limit": 1, "children_started": 1}
    count.update(children_completed=0, children_failed=0)
    orphans = restore(engine, [{"t": "delete", "id": "A" * 22}, count])
    assert orphans == 2
    assert engine.jobs == {}


def test_a_pause_that_ended_while_down_ends_at_the_first_tick() -> None:
    # Found by the property above: pause ends are not logged, so the replayed tube is
    # still paused, with its end in the past, until the restored engine's first tick.
    recorder = Recorder()
    for action in [
        ("setting", "b", "pause_for"),
        ("setting", "b", "throttle"),
        ("put", "b", 0, 0, False),
        ("advance", 30.0),
    ]:
        recorder.run(action)
    live = recorder.engine
    assert not live.tubes["b"].paused
    back = restored([change for record in recorder.records for change in record], live.now)
    assert pause_state(back) == (True, True)  # paused, and its end has passed
    back.handle("stats_tube", {"tube": "b"}, live.now)  # any call ticks first
    assert pause_state(back) == (False, False)
    assert_same(live, back)


def pause_state(engine: Engine) -> tuple[bool, bool]:
    tube = engine.tubes["b"]
    return tube.paused, tube.pause_until is not None and tube.pause_until <= engine.now
