"""Deterministic engines for tests: counter-based randomness, a call helper, snapshots.

* `make_engine` builds an engine whose "random" bytes come from a counter that also counts
  its draws, so a snapshot can tell whether an id or a lease was drawn.
* `Driver` calls operations with an explicit clock (`now`), checks the engine invariants
  after every call and collects effects.
* `snapshot(engine)` captures the whole observable and internal state of an engine (every
  job field, tube settings, counters and structures, keys, waiters, sequences, pending
  effects), except the ops and errors counters, which a rejected request may move (§13.1).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from allq.errors import AllQError
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.events import Delivered, Effect, Waiting
from allq.tubes.heap import IndexedHeap
from allq.tubes.job import FIELDS, Job, ParentInfo
from allq.tubes.jobheap import JobHeap
from allq.tubes.tube import Tube

START = 1000.0
#: A syntactically valid lease (or job id) that no counter-generated token equals.
OTHER_LEASE = "Z" * 22


class CounterBytes:
    """Distinct, reproducible "random" bytes: a big-endian counter that counts its draws."""

    def __init__(self) -> None:
        self.drawn = 0

    def __call__(self, size: int) -> bytes:
        self.drawn += 1
        return self.drawn.to_bytes(size, "big")


def counter_bytes() -> Callable[[int], bytes]:
    return CounterBytes()


def make_engine(now: float = START, **settings: Any) -> Engine:
    settings.setdefault("server_id", "s1")
    return Engine(EngineConfig(**settings), random_bytes=CounterBytes(), now=now)


# -- snapshots ----------------------------------------------------------------------------

_ENGINE_TRANSIENT = {
    "config",
    "_random_bytes",
    "ops",
    "errors",
    "workflows",
    "_touched",
    "_dirty",
    "_timer_changes",
}


def _freeze(value: object) -> object:
    """A comparable, structure-preserving copy; jobs and tubes are referred to by name."""
    if isinstance(value, Job):
        return ("job", value.id)
    if isinstance(value, Tube):
        return ("tube", value.name)
    if isinstance(value, IndexedHeap | JobHeap):
        return [(key, _freeze(item)) for key, item in value.sorted_items()]
    if isinstance(value, dict):
        return [(_freeze(k), _freeze(v)) for k, v in value.items()]  # order matters
    if isinstance(value, list | tuple | deque):
        return [_freeze(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(repr(_freeze(item)) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _freeze(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def job_record(job: Job) -> dict[str, object]:
    record: dict[str, object] = {name: getattr(job, name) for name in FIELDS}
    record["state"] = job.state.value
    parent = job.parent
    record["parent"] = dataclasses.asdict(parent) if isinstance(parent, ParentInfo) else None
    return record


def tube_record(tube: Tube, now: float) -> dict[str, object]:
    record = {name: _freeze(value) for name, value in vars(tube).items()}
    # The bucket is compared at `now` (refill is continuous): raw fields move when read.
    del record["tokens"], record["tokens_at"]
    if tube.throttle_tps is not None:
        tokens = min(tube.capacity(), tube.tokens + tube.throttle_tps * (now - tube.tokens_at))
        record["tokens_now"] = round(tokens, 9)
    return record


def snapshot(engine: Engine) -> dict[str, object]:
    now = engine.now
    state: dict[str, object] = {
        name: _freeze(value)
        for name, value in vars(engine).items()
        if name not in _ENGINE_TRANSIENT and name not in {"tubes", "jobs"}
    }
    state["jobs"] = {job_id: job_record(job) for job_id, job in engine.jobs.items()}
    state["tubes"] = {name: tube_record(tube, now) for name, tube in engine.tubes.items()}
    draw = engine._random_bytes
    state["random_draws"] = draw.drawn if isinstance(draw, CounterBytes) else None
    return state


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Top-level keys (and job/tube names) whose value differs, for readable failures."""
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(
                f"{key}[{sub!r}]: {old.get(sub)!r} -> {new.get(sub)!r}"
                for sub in sorted(set(old) | set(new))
                if old.get(sub) != new.get(sub)
            )
        else:
            changed.append(f"{key}: {old!r} -> {new!r}")
    return changed


# -- driver -------------------------------------------------------------------------------


class Driver:
    """Calls engine operations with an explicit clock and checks invariants after each."""

    def __init__(self, engine: Engine | None = None, now: float = START) -> None:
        self.engine = engine if engine is not None else make_engine(now)
        self.now = now
        self.effects: list[Effect] = []

    def __call__(self, op: str, **args: object) -> Any:
        try:
            return self.engine.handle(op, args, self.now)
        finally:
            self.effects.extend(self.engine.take_effects())
            self.engine.check_invariants()

    # -- time --

    def advance(self, seconds: float) -> list[Effect]:
        return self.at(self.now + seconds)

    def at(self, instant: float) -> list[Effect]:
        """Move the clock to the absolute `instant` and tick; returns the new effects."""
        self.now = instant
        effects = self.engine.tick(self.now)
        self.engine.check_invariants()
        self.effects.extend(effects)
        return effects

    def take(self) -> list[Effect]:
        """Every effect collected since the last `take`."""
        effects, self.effects = self.effects, []
        return effects

    # -- shortcuts --

    def put(self, tube: str = "t", **args: object) -> str:
        result = self("put", tube=tube, **args)
        job_id: str = result["id"]
        return job_id

    def parent(self, tube: str = "t", **args: object) -> str:
        result = self("put_parent", tube=tube, **args)
        assert result["state"] == "waiting"
        job_id: str = result["id"]
        return job_id

    def reserve(self, *tubes: str, **args: object) -> Any:
        return self("reserve", tubes=list(tubes or ["t"]), **args)

    def reserve_one(self, *tubes: str, **args: object) -> dict[str, Any]:
        result = self.reserve(*tubes, **args)
        assert not isinstance(result, Waiting), "expected a job, the reserve is waiting"
        assert len(result) == 1
        job: dict[str, Any] = result[0]
        return job

    def reserve_ids(self, *tubes: str, **args: object) -> list[str]:
        return [job["id"] for job in self.reserve(*tubes, **args)]

    def wait(self, *tubes: str, timeout: float = 10, **args: object) -> int:
        """A reserve that must block; returns the waiter id."""
        result = self.reserve(*tubes, timeout=timeout, **args)
        assert isinstance(result, Waiting), f"expected to wait, got {result!r}"
        return result.waiter

    def job(self, job_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self("stats_job", job_id=job_id)
        return stats

    def state(self, job_id: str) -> str:
        """The job's state, or "gone" when the engine no longer knows it."""
        job = self.engine.jobs.get(job_id)
        if job is None:
            with pytest.raises(AllQError, match="no job"):
                self.job(job_id)
            return "gone"
        state: str = self.job(job_id)["state"]
        return state

    def tube(self, name: str = "t") -> dict[str, Any]:
        stats: dict[str, Any] = self("stats_tube", tube=name)
        return stats

    def counts(self, name: str = "t") -> dict[str, int]:
        stats = self.tube(name)
        return {k: stats[k] for k in ("ready", "delayed", "reserved", "buried", "waiting")}

    def fails(self, code: str, op: str, /, field: object = ..., **args: object) -> AllQError:
        """`op` must fail with `code` (and `field`, when given) and change nothing (§13.1)."""
        self.engine.tick(self.now)
        self.effects.extend(self.engine.take_effects())
        before = snapshot(self.engine)
        with pytest.raises(AllQError) as caught:
            self.engine.handle(op, args, self.now)
        error = caught.value
        assert error.code == code, f"{op} failed with {error!r}, expected {code}"
        if field is not ...:
            assert error.field == field, f"{op} blamed {error.field!r}, expected {field!r}"
        after = snapshot(self.engine)
        assert after == before, "a rejected request changed: " + "; ".join(diff(before, after))
        self.engine.check_invariants()
        return error

    def delivered(self) -> dict[int, list[str]]:
        """Deliveries among the collected effects: waiter -> job ids (consumes them)."""
        out: dict[int, list[str]] = {}
        rest: list[Effect] = []
        for effect in self.take():
            if isinstance(effect, Delivered):
                out[effect.waiter] = [str(job["id"]) for job in effect.jobs]
            else:
                rest.append(effect)
        self.effects = rest
        return out
