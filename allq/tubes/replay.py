"""Literal replay of change maps into an engine (persistence.md §6.1: recovery applies
each record's changes as they are: no timers, no parent rules, no waiters).

Charter: pure functions and the `Replayer`, no clock, no I/O. Recovery streams each checked
record into a `Replayer` (its `ChangeSink`); `restore()` replays a whole list at once
(compaction, tests). Jobs put by the replay enter their tube's structures in bulk at the
end (one sort per heap), and the cyclic garbage collector is paused meanwhile
(`allq.gcpause`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from allq.gcpause import paused_gc
from allq.tubes.job import COUNTERS, Job, JobState, ParentInfo, share_terms
from allq.tubes.tube import Tube

if TYPE_CHECKING:
    from allq.tubes.engine import Engine

from allq.tubes.changes import (
    CHILD_COUNTS,
    Change,
    PlainReadyRow,
    is_plain_ready,
    jobs_put,
    plain_ready_row,
    puts_rows,
)

_STATES = {state.value: state for state in JobState if state is not JobState.RESERVED}


class RestoreError(ValueError):
    """A change map that cannot be applied (a duplicate put, a malformed map)."""


class DuplicatePut(RestoreError):
    """A `put` for a job that exists or that its record puts twice; nothing of that record
    was applied (`Replayer.feed` checks or undoes), so recovery may drop it whole."""


def restore(engine: Engine, changes: Iterable[Change]) -> int:
    """Apply change maps literally (recovery); returns how many named an unknown job.

    One `Replayer` fed all of `changes` as one group (see `Replayer` for the costs).
    """
    with paused_gc():
        replayer = Replayer(engine)
        replayer.feed(changes)
        return replayer.finish()


_new_job = Job.__new__


class Replayer:
    """Literal replay of change maps into an engine, one log record at a time (recovery
    streams each record here as soon as it is read and checked, so no list of every change
    is ever held).

    `feed(changes)` applies one record's changes; `finish()` places the jobs and settles
    the engine. Jobs put by the replay enter their tube's structures only in `finish`, in
    bulk (one sort per heap: `Tube.add_ready_many`, `JobHeap.extend`): replay is literal, so
    a job's place depends only on its final state, and one heap push per job cost more than
    the rest of the replay. Jobs the engine held before keep the one-change-at-a-time path.

    Recovery speed (performance.md B8): a plain ready `put` (the change of nearly every
    job in a log) is built by `add_plain_ready`, its fields set straight into the slots.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending: dict[str, dict[str, Job]] = {}  # tube -> job id -> job
        self.orphans = 0
        self._names: dict[str, str] = {}  # a tube's name as read -> its Tube's name
        self._terms: tuple[tuple[Any, ...], tuple[float, int, int]] = ((), (0.0, 0, 0))

    def duplicate_put(self, changes: Iterable[Change]) -> str | None:
        """The id of a `put` in `changes` for a job that exists or is put twice by them."""
        jobs = self.engine.jobs
        ids = [job_id for change in changes for job_id, _ in jobs_put(change)]
        if jobs.keys().isdisjoint(ids) and len(set(ids)) == len(ids):
            return None
        seen: set[str] = set()
        for job_id in ids:
            if job_id in jobs or job_id in seen:
                return str(job_id)
            seen.add(job_id)
        return None  # pragma: no cover (the first test found one)

    def feed(self, changes: Iterable[Change], rows: list[PlainReadyRow] | None = None) -> None:
        """Apply `changes` in order; `rows`, when given, are their `plain_ready_row`s (every
        change is a plain ready put, as recovery's column checks found) and are applied
        instead.

        Raises:
            DuplicatePut: a put for a live job or put twice by `changes`, if `changes` is a
                list or `rows` are given: then nothing of them was applied.
            RestoreError: a change that cannot be applied (a state the job cannot be
                restored in, a count for a job that is not a parent).
        """
        if rows is not None:
            self.add_plain_ready(rows)
            return
        if isinstance(changes, list) and len(changes) > 1:
            duplicate = self.duplicate_put(changes)
            if duplicate is not None:
                raise DuplicatePut(f"duplicate put of job {duplicate}")
        engine = self.engine
        jobs = engine.jobs
        pending = self.pending
        run: list[PlainReadyRow] = []  # consecutive plain ready puts
        for change in changes:
            kind = change["t"]
            if kind == "put" and is_plain_ready(change):
                run.append(plain_ready_row(change))
                continue
            if run:
                self.add_plain_ready(run)
                run = []
            if kind == "puts":
                self.add_plain_ready(puts_rows(change))
            elif kind == "put":
                self.put(change)
            elif kind in ("state", "count", "delete"):
                job = jobs.get(change["id"])
                if job is None:
                    self.orphans += 1
                    continue
                group = pending.get(job.tube)
                waits = group is not None and job.id in group
                if kind == "state":
                    if waits:
                        _set_state(engine, job, change)
                    else:
                        _restore_state(engine, job, change)
                elif kind == "count":
                    _restore_count(job, change)
                elif group is not None and waits:
                    del group[job.id]
                    del jobs[job.id]
                    engine._touched.add(job.tube)
                    engine.changelog.note_gone(job)
                else:
                    engine._detach(job)
            elif kind == "clear":
                self.clear(change["tube"])
            elif kind == "tube":
                _restore_tube(engine, change)
            elif kind == "idem":
                engine.restore_key(change["key"], change["id"], change["first_seen"])
            elif kind == "meta":
                engine.restore_sequences(change.get("seqs", {}))
            elif kind != "end":
                raise RestoreError(f"unknown change type {kind!r}")
        if run:
            self.add_plain_ready(run)

    def add_plain_ready(self, rows: Sequence[PlainReadyRow]) -> None:
        """Plain ready puts given as `plain_ready_row` tuples (recovery's common case: each
        job built here, its fields set straight into its slots).

        Raises:
            DuplicatePut: a job that exists already or comes twice; the jobs of `rows` put
                before it are taken out again, so nothing of `rows` is applied.
        """
        engine = self.engine
        jobs = engine.jobs
        names = self._names
        ready = JobState.READY
        put_seq, ready_seq = before = engine._put_seq, engine._ready_seq
        name = ""  # the tube of the job before (no tube has an empty name) ...
        group: dict[str, Job] = {}  # ... and its pending jobs
        last_terms, terms = self._terms  # the values of the job before and their `_terms`
        try:
            for index, row in enumerate(rows):
                (job_id, tube, body, priority, ttr, expired, releases, created, seq, since,
                 c0, c1, c2, c3, c4, c5, c6) = row  # fmt: skip
                if job_id in jobs:
                    self._undo_plain(rows[:index])
                    put_seq, ready_seq = before
                    raise DuplicatePut(f"duplicate put of job {job_id}")
                if tube != name:
                    known = names.get(tube)
                    if known is None:  # one name string for all the tube's jobs
                        known = names[tube] = _tube(engine, tube).name
                    name = known
                    group = self.pending.setdefault(name, {})
                if (ttr, expired, releases) != last_terms:
                    last_terms = (ttr, expired, releases)
                    terms = share_terms(float(ttr), expired, releases)
                new = _new_job(Job)
                new.id = job_id
                new.tube = name
                new.body = body
                new.priority = priority
                new._terms = terms
                new.created_at = created
                put_seq += 1
                new.put_seq = put_seq
                new.state = ready
                new.shard_key = None
                new.ready_seq = seq
                new.ready_since = since
                new._x = None
                new._pos = -1
                new._age_pos = -1
                if c0 or c1 or c2 or c3 or c4 or c5 or c6:
                    for counter, value in zip(COUNTERS, row[10:], strict=True):
                        if value:
                            setattr(new, counter, value)
                if seq > ready_seq:
                    ready_seq = seq
                jobs[job_id] = new
                group[job_id] = new
        finally:
            engine._put_seq, engine._ready_seq = put_seq, ready_seq
            self._terms = last_terms, terms

    def _undo_plain(self, rows: Sequence[PlainReadyRow]) -> None:
        """Take out the jobs `add_plain_ready` put from `rows`."""
        jobs = self.engine.jobs
        for row in rows:
            job = jobs.pop(row[0])
            del self.pending[job.tube][job.id]

    def finish(self) -> int:
        """Place the pending jobs and settle the engine; returns the orphan changes."""
        self.place()
        _finish_restore(self.engine)
        return self.orphans

    def put(self, change: Change) -> None:
        """A job from a `put` change, in its logged state, without any queue logic."""
        engine = self.engine
        job_id = change["id"]
        if job_id in engine.jobs:
            raise DuplicatePut(f"duplicate put of job {job_id}")
        job = _job_from(change)
        group = self.pending.get(job.tube)
        if group is None:
            _tube(engine, job.tube)
            group = self.pending[job.tube] = {}
        if job.state is not JobState.DELAYED and job.state is not JobState.WAITING:
            engine._put_seq += 1
            job.put_seq = engine._put_seq
        engine.jobs[job_id] = job
        group[job_id] = job
        _set_place(engine, job, change)
        if job.idempotency_key is not None:
            engine.restore_key(job.idempotency_key, job_id, job.created_at)

    def clear(self, name: str) -> None:
        engine = self.engine
        for job_id in self.pending.pop(name, {}):
            del engine.jobs[job_id]
        tube = engine.tubes.get(name)
        if tube is not None:
            for job in [*tube.by_age, *tube.delayed, *tube.reserved, *tube.buried, *tube.waiting]:
                engine._detach(job)
            engine._touched.add(name)

    def place(self) -> None:
        """Enter every pending job into its tube's structures, one sort per heap."""
        engine = self.engine
        for name, group in self.pending.items():
            tube = engine.tubes[name]
            ready: list[Job] = []
            delayed: list[Job] = []
            waiting: list[Job] = []
            buried = tube.buried
            fair = tube.fair
            for job in group.values():
                if fair:
                    tube.shard_enter(job)
                state = job.state
                if state is JobState.READY:
                    ready.append(job)
                elif state is JobState.DELAYED:
                    delayed.append(job)
                elif state is JobState.BURIED:
                    buried[job] = None
                else:
                    waiting.append(job)
            if ready:
                tube.add_ready_many(ready)
            if delayed:
                tube.delayed.extend(delayed)
            if waiting:
                tube.waiting.extend(waiting)
            engine._touched.add(name)
        self.pending.clear()


def _tube(engine: Engine, name: str) -> Tube:
    """The tube `name`, made if absent (recovery is not bound by max_tubes)."""
    tube = engine.tubes.get(name)
    if tube is None:
        tube = engine.tubes[name] = Tube(name, fair=engine._is_fair(name), now=engine.now)
    return tube


def _restore_state(engine: Engine, job: Job, change: dict[str, Any]) -> None:
    """Move a placed job to the state of a `state` change (and its counters, priority)."""
    engine._unplace(job)
    _set_state(engine, job, change)
    _place(engine, job)


def _set_state(engine: Engine, job: Job, change: dict[str, Any]) -> None:
    """The fields of a `state` change, without touching any structure."""
    job.priority = change["priority"]
    job.state = _state_of(change)
    for name in COUNTERS:
        setattr(job, name, change[name])
    _set_place(engine, job, change)


def _set_place(engine: Engine, job: Job, change: dict[str, Any]) -> None:
    """The ordering number and time of the job's state, and the engine's high-water marks."""
    seq = int(change["seq"])
    state = job.state
    if state is JobState.READY:
        job.ready_seq = seq
        job.ready_since = change["ready_since"]
        if seq > engine._ready_seq:
            engine._ready_seq = seq
    elif state is JobState.DELAYED:
        job.due_at = change["due_at"]
        job.put_seq = seq
        if seq > engine._put_seq:
            engine._put_seq = seq
    elif state is JobState.BURIED:
        job.buried_at = change["buried_at"]
        job.buried_seq = seq
        if seq > engine._bury_seq:
            engine._bury_seq = seq
    elif state is JobState.WAITING:
        if job.parent is None:
            raise RestoreError(f"job {job.id} is waiting but is not a parent")
        job.put_seq = seq
        if seq > engine._put_seq:
            engine._put_seq = seq
    else:
        raise RestoreError(f"a job cannot be restored as {state.value}")


def _place(engine: Engine, job: Job) -> None:
    """Enter a job into the structure of its state (fields set by `_set_place`)."""
    tube = engine._tube_of(job)
    state = job.state
    if state is JobState.READY:
        tube.add_ready(job)
    elif state is JobState.DELAYED:
        assert job.due_at is not None
        tube.delayed.push(job, (job.due_at, job.put_seq))
    elif state is JobState.BURIED:
        tube.buried[job] = None
    else:
        assert job.parent is not None
        tube.waiting.push(job, (job.parent.timeout_at, job.put_seq))
    engine._touched.add(tube.name)


def _restore_tube(engine: Engine, change: dict[str, Any]) -> None:
    name = change["tube"]
    tube = _tube(engine, name)
    tube.paused = bool(change["paused"])
    tube.pause_until = change["pause_until"]
    tps = change["throttle_tps"]
    tube.set_throttle(None if tps is None else float(tps), engine.now)  # bucket full
    tube.draining = bool(change["draining"])
    tube.shard_limit = change["shard_reservation_limit"]
    engine._touched.add(name)


def _finish_restore(engine: Engine) -> None:
    """After replay: buried jobs in `buried_at` order, timers and GC state recomputed."""
    for tube in engine.tubes.values():
        if len(tube.buried) > 1:
            ordered = sorted(tube.buried, key=lambda job: job.buried_seq)
            tube.buried = dict.fromkeys(ordered)
        engine._touched.add(tube.name)
    engine._settle(engine.now)
    engine.take_effects()


def _state_of(change: Change) -> JobState:
    state = _STATES.get(change["state"])
    if state is None:
        raise RestoreError(f"unknown job state {change['state']!r}")
    return state


def _job_from(change: Change) -> Job:
    state = _state_of(change)
    job = Job(
        id=change["id"],
        tube=change["tube"],
        body=change["body"],
        priority=change["priority"],
        ttr=float(change["ttr"]),
        expired_limit=change["expired_limit"],
        max_releases=change["max_releases"],
        created_at=change["created_at"],
        put_seq=change["seq"] if state is JobState.DELAYED or state is JobState.WAITING else 0,
        state=state,
        parent_id=change.get("parent_id"),
        shard_key=change.get("shard_key"),
        idempotency_key=change.get("idempotency_key"),
    )
    for name in COUNTERS:  # 0 is every counter's default: set only the others
        value = change[name]
        if value:
            setattr(job, name, value)
    if "timeout_at" in change:
        job.parent = ParentInfo(
            limit=change["limit"],
            timeout=change["timeout"],
            timeout_at=change["timeout_at"],
            run_on_timeout=change["run_on_timeout"],
            noop=change["noop"],
            on_child_failure=change["on_child_failure"],
        )
        _restore_count(job, change)
    return job


def _restore_count(parent: Job, change: Change) -> None:
    info = parent.parent
    if info is None:
        raise RestoreError(f"count change for {parent.id}, which is not a parent")
    info.limit = change["limit"]
    for name in CHILD_COUNTS:
        setattr(info, name, change[name])
