"""Stateful property test: the engine against the naive model of tests/helpers/models.py.

Rules: one Hypothesis `RuleBasedStateMachine` drives the engine and the model with the same
operations at the same explicit `now` (which only moves through the `advance` rules, by a
step or exactly to the next deadline). After every rule, the outcome must match: results
and error codes, which jobs a reserve returns and in which order, every live job's state,
priority, counters and deadlines (via `stats_job`), the counts and totals of `stats_tube`,
and `peek_ready`. `engine.check_invariants()` runs after every step. The run is sized for
thousands of steps in well under a minute.
"""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from allq.errors import AllQError
from allq.tubes.engine import Engine
from tests.helpers.engines import OTHER_LEASE, START, make_engine
from tests.helpers.models import Model, ModelError, MTube

TUBES = ["a", "b", "fq-c"]
SHARDS = ["x", "y", "z"]
SHARD_LIMIT = 2
MAX_LIVE = 30

job_index = st.integers(0, 10_000)
#: Which job a job operation addresses: mostly a reserved one, sometimes any live or
#: already gone job (NOT_FOUND, NOT_RESERVED paths).
targets = st.sampled_from(["reserved", "reserved", "reserved", "live", "any"])
lease_mode = st.sampled_from(["right", "right", "right", "omitted", "wrong", "stale"])
priorities = st.sampled_from([0, 1, 5, 5, 5, 1023, 1024, 4_294_967_295])
maybe_priority = st.none() | priorities


class EngineVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.engine: Engine = make_engine(START, tube_gc_idle=31_536_000)
        self.model = Model(START, {name: MTube(fair=name.startswith("fq-")) for name in TUBES})
        self.handle("set_shard_limit", tube="fq-c", limit=SHARD_LIMIT)
        self.model.tubes["fq-c"].shard_limit = SHARD_LIMIT
        self.ids: list[str] = []  # every id ever put, gone ones included
        self.stale: dict[str, str] = {}  # job id -> an earlier lease of it

    # -- plumbing --------------------------------------------------------------------------

    def handle(self, op: str, **args: object) -> Any:
        return self.engine.handle(op, args, self.now)

    def both(self, op: str, model_call: Any, **args: Any) -> Any:
        """Run `op` on the engine and `model_call()` on the model; results or codes agree.

        With `values=False` only success versus the error code is compared here.
        """
        values = args.pop("values", True)
        try:
            expected = ("ok", model_call())
        except ModelError as error:
            expected = ("error", error.code)
        try:
            actual = ("ok", self.handle(op, **args))
        except AllQError as error:
            actual = ("error", error.code)
        if not values and actual[0] == expected[0] == "ok":
            return actual[1]
        assert actual == expected, f"{op}({args}) at {self.now}"
        return actual[1]

    def pick(self, index: int, whom: str = "any") -> str:
        pool = self.ids
        if whom != "any":
            live = [job_id for job_id in self.ids if job_id in self.model.jobs]
            reserved = [j for j in live if self.model.jobs[j].state == "reserved"]
            pool = reserved if whom == "reserved" and reserved else live or self.ids
        return pool[index % len(pool)]

    def lease_for(self, job_id: str, mode: str) -> str | None:
        job = self.model.jobs.get(job_id)
        if mode == "omitted":
            return None
        if mode == "right" and job is not None and job.lease is not None:
            return job.lease
        if mode == "stale" and job_id in self.stale:
            return self.stale[job_id]
        return OTHER_LEASE

    def lease_args(self, lease: str | None) -> dict[str, object]:
        return {} if lease is None else {"lease": lease}

    # -- rules: puts and time ------------------------------------------------------------------

    @precondition(lambda self: len(self.model.jobs) < MAX_LIVE)
    @rule(
        tube=st.sampled_from(TUBES),
        priority=priorities,
        delay=st.sampled_from([0, 0, 0.5, 1, 2.5]),
        shard=st.sampled_from(SHARDS),
        ttr=st.sampled_from([1, 2, 3, 10]),
        expired_limit=st.integers(1, 3),
        max_releases=st.integers(0, 3),
    )
    def put(
        self,
        tube: str,
        priority: int,
        delay: float,
        shard: str,
        ttr: int,
        expired_limit: int,
        max_releases: int,
    ) -> None:
        args = self.put_args(tube, priority, delay, shard, ttr, expired_limit, max_releases)
        self.model_put(args, self.handle("put", **args))

    @initialize(
        items=st.lists(
            st.tuples(
                st.sampled_from(TUBES),
                priorities,
                st.sampled_from([0, 0, 1]),
                st.sampled_from(SHARDS),
            ),
            min_size=3,
            max_size=12,
        )
    )
    def preload(self, items: list[tuple[str, int, float, str]]) -> None:
        self.put_batch(items)

    @precondition(lambda self: len(self.model.jobs) < MAX_LIVE)
    @rule(
        items=st.lists(
            st.tuples(
                st.sampled_from(TUBES),
                priorities,
                st.sampled_from([0, 0, 1]),
                st.sampled_from(SHARDS),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def put_batch(self, items: list[tuple[str, int, float, str]]) -> None:
        jobs = [
            self.put_args(tube, pri, delay, shard, 2, 2, 2) for tube, pri, delay, shard in items
        ]
        results = self.handle("put_batch", jobs=jobs)
        assert len(results) == len(jobs)
        for args, result in zip(jobs, results, strict=True):
            self.model_put(args, result)

    @staticmethod
    def put_args(
        tube: str,
        priority: int,
        delay: float,
        shard: str,
        ttr: int,
        expired_limit: int,
        max_releases: int,
    ) -> dict[str, object]:
        args: dict[str, object] = {
            "tube": tube,
            "priority": priority,
            "delay": delay,
            "ttr": ttr,
            "expired_limit": expired_limit,
            "max_releases": max_releases,
        }
        if tube.startswith("fq-"):
            args["shard_key"] = shard
        return args

    def model_put(self, args: dict[str, Any], result: dict[str, Any]) -> None:
        job_id = str(result["id"])
        assert job_id not in self.model.jobs
        state = self.model.put(
            job_id,
            args["tube"],
            priority=args["priority"],
            delay=args["delay"],
            shard=args.get("shard_key"),
            ttr=args["ttr"],
            expired_limit=args["expired_limit"],
            max_releases=args["max_releases"],
        )
        assert result == {"id": job_id, "state": state, "duplicate": False}
        self.ids.append(job_id)

    @rule(step=st.sampled_from([0.001, 0.25, 0.5, 1, 2, 3]))
    def advance(self, step: float) -> None:
        self.now += step
        self.engine.tick(self.now)
        self.model.advance(self.now)

    @rule(before=st.booleans())
    def advance_to_next_deadline(self, before: bool) -> None:
        instant = self.model.next_deadline()
        if instant is None:
            return
        assert self.engine.next_deadline() <= instant
        target = instant - 0.001 if before else instant
        if target > self.now:
            self.now = target
        self.engine.tick(self.now)
        self.model.advance(self.now)

    # -- rules: reserve and job operations ------------------------------------------------------

    @rule(tubes=st.lists(st.sampled_from(TUBES), min_size=1, max_size=4), count=st.integers(1, 3))
    def reserve(self, tubes: list[str], count: int) -> None:
        result = self.both(
            "reserve",
            lambda: self.model.reserve(tubes, count),
            values=False,
            tubes=tubes,
            count=count,
        )
        if isinstance(result, str):
            return  # an error code, already compared
        expected = self.model.jobs  # model jobs were reserved in the model call
        got = [str(job["id"]) for job in result]
        model_reserved = [
            job for job in expected.values() if job.state == "reserved" and job.lease is None
        ]
        assert sorted(got) == sorted(job.id for job in model_reserved)
        order = sorted(model_reserved, key=lambda job: job.reserve_order)
        assert got == [job.id for job in order], "jobs come in selection order"
        for view in result:
            job = expected[str(view["id"])]
            job.lease = str(view["lease"])
            assert view["ttr_deadline"] == job.ttr_deadline
            assert view["priority"] == job.priority

    @rule(
        tubes=st.lists(st.sampled_from(TUBES), min_size=1, max_size=3),
        count=st.integers(1, 3),
        actions=st.lists(
            st.sampled_from(["done", "release", "bury", "touch", "delete", "unreserve", "keep"]),
            min_size=3,
            max_size=3,
        ),
        priority=maybe_priority,
    )
    def work(self, tubes: list[str], count: int, actions: list[str], priority: int | None) -> None:
        """Reserve, then act on each job with its lease: the common worker loop."""
        before = {job.id for job in self.model.jobs.values() if job.state == "reserved"}
        self.reserve(tubes, count)
        taken = [
            job.id
            for job in sorted(self.model.jobs.values(), key=lambda job: job.reserve_order)
            if job.state == "reserved" and job.id not in before
        ]
        model = self.model
        calls: dict[str, Any] = {
            "done": model.done,
            "delete": model.delete,
            "touch": model.touch,
            "unreserve": model.unreserve,
            "bury": lambda job_id, lease: model.bury(job_id, lease, priority),
            "release": lambda job_id, lease: model.release(job_id, lease, priority, 0),
        }
        for job_id, action in zip(taken, actions, strict=False):
            if action == "keep":
                continue
            lease = model.jobs[job_id].lease
            extra: dict[str, object] = {}
            if action in ("bury", "release") and priority is not None:
                extra["priority"] = priority
            self.both(
                action,
                functools.partial(calls[action], job_id, lease),
                job_id=job_id,
                lease=lease,
                **extra,
            )
            job = model.jobs.get(job_id)
            if (job is None or job.lease is None) and lease is not None:
                self.stale[job_id] = lease

    def _after_leave(self, job_id: str, lease_before: str | None) -> None:
        if lease_before is not None:
            self.stale[job_id] = lease_before

    def _job_op(
        self, op: str, index: int, whom: str, mode: str, model_op: Any, **extra: object
    ) -> None:
        job_id = self.pick(index, whom)
        lease = self.lease_for(job_id, mode)
        job = self.model.jobs.get(job_id)
        before = job.lease if job is not None else None
        self.both(
            op, lambda: model_op(job_id, lease), job_id=job_id, **self.lease_args(lease), **extra
        )
        after = self.model.jobs.get(job_id)
        if after is None or after.lease is None:
            self._after_leave(job_id, before)

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=targets, mode=lease_mode)
    def done(self, index: int, whom: str, mode: str) -> None:
        self._job_op("done", index, whom, mode, self.model.done)

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=targets, mode=lease_mode)
    def delete(self, index: int, whom: str, mode: str) -> None:
        self._job_op("delete", index, whom, mode, self.model.delete)

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=targets, mode=lease_mode)
    def touch(self, index: int, whom: str, mode: str) -> None:
        self._job_op("touch", index, whom, mode, self.model.touch)

    @precondition(lambda self: self.ids)
    @rule(
        index=job_index,
        whom=targets,
        mode=lease_mode,
        priority=maybe_priority,
        delay=st.sampled_from([None, 0, 0.5, 2]),
    )
    def release(
        self, index: int, whom: str, mode: str, priority: int | None, delay: float | None
    ) -> None:
        extra: dict[str, object] = {}
        if priority is not None:
            extra["priority"] = priority
        if delay is not None:
            extra["delay"] = delay
        self._job_op(
            "release",
            index,
            whom,
            mode,
            lambda job_id, lease: self.model.release(job_id, lease, priority, delay or 0),
            **extra,
        )

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=targets, mode=lease_mode, priority=maybe_priority)
    def bury(self, index: int, whom: str, mode: str, priority: int | None) -> None:
        extra: dict[str, object] = {} if priority is None else {"priority": priority}
        self._job_op(
            "bury",
            index,
            whom,
            mode,
            lambda job_id, lease: self.model.bury(job_id, lease, priority),
            **extra,
        )

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=targets, mode=st.sampled_from(["right", "wrong", "stale"]))
    def unreserve(self, index: int, whom: str, mode: str) -> None:
        job_id = self.pick(index, whom)
        lease = self.lease_for(job_id, mode)
        assert lease is not None
        job = self.model.jobs.get(job_id)
        before = job.lease if job is not None else None
        self.both(
            "unreserve", lambda: self.model.unreserve(job_id, lease), job_id=job_id, lease=lease
        )
        after = self.model.jobs.get(job_id)
        if after is None or after.lease is None:
            self._after_leave(job_id, before)

    @rule(tube=st.sampled_from(TUBES), bound=st.integers(1, 4))
    def kick(self, tube: str, bound: int) -> None:
        self.both("kick", lambda: self.model.kick(tube, bound), tube=tube, bound=bound)

    @precondition(lambda self: self.ids)
    @rule(index=job_index, whom=st.sampled_from(["live", "any"]))
    def kick_job(self, index: int, whom: str) -> None:
        job_id = self.pick(index, whom)
        self.both("kick_job", lambda: self.model.kick_job(job_id), job_id=job_id)

    @rule(tube=st.sampled_from(TUBES), duration=st.sampled_from([None, 0, 0.5, 1, 2.5]))
    def pause(self, tube: str, duration: float | None) -> None:
        args: dict[str, object] = {"tube": tube}
        if duration is not None:
            args["duration"] = duration
        self.handle("pause", **args)
        self.model.pause(tube, duration)

    @rule(tube=st.sampled_from(TUBES))
    def unpause(self, tube: str) -> None:
        self.handle("unpause", tube=tube)
        self.model.unpause(tube)

    # -- comparison after every step ------------------------------------------------------------

    @invariant()
    def engine_invariants_hold(self) -> None:
        self.engine.check_invariants()
        assert not self.engine.take_effects(), "no waiters: no effects"

    @invariant()
    def jobs_match(self) -> None:
        assert set(self.engine.jobs) == set(self.model.jobs)
        for job_id, job in self.model.jobs.items():
            stats = self.handle("stats_job", job_id=job_id)
            assert stats["state"] == job.state, job_id
            assert stats["priority"] == job.priority, job_id
            for counter in (
                "reserves",
                "timeouts",
                "releases",
                "buries",
                "kicks",
                "timeouts_since_kick",
                "releases_since_kick",
            ):
                assert stats[counter] == getattr(job, counter), (job_id, counter)
            assert stats["due_at"] == (job.due_at if job.state == "delayed" else None)
            assert stats["ttr_deadline"] == (job.ttr_deadline if job.state == "reserved" else None)

    @invariant()
    def tubes_match(self) -> None:
        for name in TUBES:
            tube = self.model.tubes[name]
            stats = self.handle("stats_tube", tube=name) if self.engine.has_tube(name) else None
            if stats is None:
                assert self.model.counts(name) == dict.fromkeys(self.model.counts(name), 0)
                continue
            assert {k: stats[k] for k in self.model.counts(name)} == self.model.counts(name)
            assert stats["urgent"] == sum(
                1 for j in self.model.in_tube(name, "ready") if j.priority < 1024
            )
            assert stats["total_puts"] == tube.total_puts
            assert stats["total_completed"] == tube.total_completed
            assert stats["total_timeouts"] == tube.total_timeouts
            assert stats["total_buried"] == tube.total_buried
            assert stats["paused"] == tube.paused
            head = self.model.head(name)
            try:
                peeked: str | None = str(self.handle("peek_ready", tube=name)["id"])
            except AllQError as error:
                assert error.code == "NOT_FOUND"  # noqa: PT017
                peeked = None
            assert peeked == (head.id if head is not None else None), name


TestEngineVersusModel = EngineVersusModel.TestCase
TestEngineVersusModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
