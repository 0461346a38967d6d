"""Change maps: what the engine's state changes look like in the log (persistence.md §4).

Charter: pure functions between the engine's records and the change maps of the log.
`ChangeLog` collects, during one engine call, which jobs were created, moved, counted or
gone and which tubes changed settings; `take()` turns that into the ordered change maps of
one log record (one request or one tick is one record). `restore()` applies change maps
literally to an engine, as recovery does: no timers, no parent rules, no waiters.
`dump()` writes the live state as change maps (a snapshot's content). No clock, no I/O.
`restore()` enters the jobs it puts into the tube structures in bulk at the end (one sort
per heap) and pauses the cyclic garbage collector meanwhile (`allq.gcpause`).

Not logged, per semantics.md §17: reserve (R1), touch (R2), unreserve (R10), pause ends,
idempotency expiry, tube GC and the server-wide drain. A reserved job is written as the
ready job it was before its reservation, so a restart puts it back in its place (R11).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from allq.gcpause import paused_gc
from allq.tubes.job import COUNTERS, Job, JobState, ParentInfo, share_terms
from allq.tubes.tube import Tube

if TYPE_CHECKING:
    from allq.tubes.engine import Engine

Change = dict[str, Any]
_PARENT_FIELDS = ("timeout", "timeout_at", "run_on_timeout", "limit", "noop", "on_child_failure")
_CHILD_COUNTS = ("children_started", "children_completed", "children_failed")
_STATES = {state.value: state for state in JobState if state is not JobState.RESERVED}


class RestoreError(ValueError):
    """A change map that cannot be applied (a duplicate put, a malformed map)."""


class DuplicatePut(RestoreError):
    """A `put` for a job that exists or that its record puts twice; nothing of that record
    was applied (`Replayer.feed` checks or undoes), so recovery may drop it whole."""


def _logged_state(job: Job) -> tuple[JobState, dict[str, Any]]:
    """The state a job is logged in, with its ordering number and time field."""
    state = job.state
    if state is JobState.RESERVED:  # logged as the ready job it was (R11 on restart)
        return JobState.READY, {"seq": job.prev_ready_seq, "ready_since": job.prev_ready_since}
    if state is JobState.READY:
        return state, {"seq": job.ready_seq, "ready_since": job.ready_since}
    if state is JobState.DELAYED:
        return state, {"seq": job.put_seq, "due_at": job.due_at}
    if state is JobState.BURIED:
        return state, {"seq": job.buried_seq, "buried_at": job.buried_at}
    return state, {"seq": job.put_seq}


def state_change(job: Job) -> Change:
    state, extra = _logged_state(job)
    change: Change = {"t": "state", "id": job.id, "state": state.value, "priority": job.priority}
    change.update(extra)
    change.update({name: getattr(job, name) for name in COUNTERS})
    return change


def put_change(job: Job) -> Change:
    """`put` with the job fields J of persistence.md §4."""
    state, extra = _logged_state(job)
    change: Change = {
        "t": "put",
        "id": job.id,
        "tube": job.tube,
        "body": job.body,
        "priority": job.priority,
        "ttr": job.ttr,
        "expired_limit": job.expired_limit,
        "max_releases": job.max_releases,
        "created_at": job.created_at,
        "state": state.value,
        **extra,
        **{name: getattr(job, name) for name in COUNTERS},
    }
    for name in ("parent_id", "shard_key", "idempotency_key"):
        value = getattr(job, name)
        if value is not None:
            change[name] = value
    if job.parent is not None:
        change.update(
            {name: getattr(job.parent, name) for name in (*_PARENT_FIELDS, *_CHILD_COUNTS)}
        )
    return change


def count_change(parent: Job) -> Change:
    info = parent.parent
    assert info is not None
    return {
        "t": "count",
        "id": parent.id,
        "limit": info.limit,
        **{name: getattr(info, name) for name in _CHILD_COUNTS},
    }


def tube_change(tube: Tube) -> Change:
    return {
        "t": "tube",
        "tube": tube.name,
        "paused": tube.paused,
        "pause_until": tube.pause_until,
        "throttle_tps": tube.throttle_tps,
        "draining": tube.draining,
        "shard_reservation_limit": tube.shard_limit,
    }


@dataclass(slots=True)
class ChangeLog:
    """What one engine call changed, in the terms of the log (see the module charter)."""

    enabled: bool = False
    created: dict[str, Job] = field(default_factory=dict)
    moved: dict[str, Job] = field(default_factory=dict)
    counted: dict[str, Job] = field(default_factory=dict)
    gone: dict[str, None] = field(default_factory=dict)
    tubes: dict[str, None] = field(default_factory=dict)
    cleared: list[str] = field(default_factory=list)

    def note_created(self, job: Job) -> None:
        if self.enabled:
            self.created[job.id] = job

    def note_moved(self, job: Job) -> None:
        if self.enabled:
            self.moved[job.id] = job

    def note_counted(self, parent: Job) -> None:
        if self.enabled:
            self.counted[parent.id] = parent

    def note_gone(self, job: Job) -> None:
        if self.enabled:
            self.gone[job.id] = None

    def note_tube(self, name: str) -> None:
        if self.enabled:
            self.tubes[name] = None

    def note_cleared(self, name: str, ids: Iterable[str]) -> None:
        """`clear` is one change, not one delete per job."""
        if self.enabled:
            for job_id in ids:
                self.gone.pop(job_id, None)
                self.created.pop(job_id, None)
            self.cleared.append(name)

    def take(self, engine: Engine) -> list[Change]:
        """The ordered change maps of this call; resets the collection."""
        if not self.enabled:
            return []
        changes: list[Change] = [
            tube_change(engine.tubes[name]) for name in self.tubes if name in engine.tubes
        ]
        changes.extend({"t": "clear", "tube": name} for name in self.cleared)
        live = engine.jobs
        created = sorted(
            (job for job in self.created.values() if live.get(job.id) is job),
            key=lambda job: job.put_seq,
        )
        changes.extend(put_change(job) for job in created)
        changes.extend(
            state_change(job)
            for job_id, job in self.moved.items()
            if job_id not in self.created and live.get(job_id) is job
        )
        changes.extend(
            count_change(job)
            for job_id, job in self.counted.items()
            if job_id not in self.created and live.get(job_id) is job
        )
        changes.extend(
            {"t": "delete", "id": job_id}
            for job_id in self.gone
            if job_id not in live and job_id not in self.created
        )
        self.created.clear()
        self.moved.clear()
        self.counted.clear()
        self.gone.clear()
        self.tubes.clear()
        self.cleared.clear()
        return changes


# -- restore and dump ---------------------------------------------------------------------------


def dump(engine: Engine) -> list[Change]:
    """The live state as change maps: tube settings, every live job, live key records."""
    changes: list[Change] = [
        tube_change(tube) for tube in engine.tubes.values() if tube.has_settings()
    ]
    changes.extend(put_change(job) for job in sorted(engine.jobs.values(), key=lambda j: j.put_seq))
    changes.extend(
        {"t": "idem", "key": key, "id": record.job_id, "first_seen": record.first_seen}
        for key, record in engine.key_records()
    )
    return changes


def restore(engine: Engine, changes: Iterable[Change]) -> int:
    """Apply change maps literally (recovery); returns how many named an unknown job.

    One `Replayer` fed all of `changes` as one group (see `Replayer` for the costs).
    """
    with paused_gc():
        replayer = Replayer(engine)
        replayer.feed(changes)
        return replayer.finish()


#: A plain ready `put` (no parent, no optional field: nearly every job of a log) has
#: exactly these keys besides `t` and `state`; `plain_ready_row` reads them in this order.
PLAIN_READY_FIELDS = (
    "id", "tube", "body", "priority", "ttr", "expired_limit", "max_releases", "created_at",
    "seq", "ready_since", *COUNTERS,
)  # fmt: skip
#: How many keys a plain ready `put` map has: `PLAIN_READY_FIELDS`, `t` and `state`.
PLAIN_READY_SIZE = len(PLAIN_READY_FIELDS) + 2
plain_ready_row = itemgetter(*PLAIN_READY_FIELDS)
PlainReadyRow = tuple[Any, ...]
_PLAIN_READY_KEYS = frozenset({"t", "state", *PLAIN_READY_FIELDS})
#: Runs of at least this many plain ready puts are written as one `puts` change.
PUTS_MIN = 2


def is_plain_ready(change: Mapping[str, Any]) -> bool:
    """Whether `change` is a plain ready `put`: no parent, no optional field."""
    return (
        change.get("t") == "put"
        and len(change) == PLAIN_READY_SIZE
        and change.get("state") == "ready"
        and change.keys() == _PLAIN_READY_KEYS
    )


def fold_puts(changes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """`changes` with each run of at least `PUTS_MIN` plain ready puts folded into one
    `puts` change (format 2): `{"t": "puts", field: [value of each put, ...], ...}` for
    every field of `PLAIN_READY_FIELDS`, the puts in their order.

    Recovery speed (performance.md B8): a `put_batch` or snapshot record of such columns
    decodes about five times faster than the same puts as maps (no 19 key strings per job)
    and is half the size.
    """
    out: list[Mapping[str, Any]] = []
    run: list[Mapping[str, Any]] = []
    for change in changes:
        if is_plain_ready(change):
            run.append(change)
            continue
        _flush_run(run, out)
        out.append(change)
    _flush_run(run, out)
    return out


def _flush_run(run: list[Mapping[str, Any]], out: list[Mapping[str, Any]]) -> None:
    if len(run) >= PUTS_MIN:
        columns = zip(*map(plain_ready_row, run), strict=True)
        out.append({"t": "puts", **dict(zip(PLAIN_READY_FIELDS, map(list, columns), strict=True))})
    else:
        out.extend(run)
    run.clear()


def puts_rows(change: Change) -> list[PlainReadyRow]:
    """The `plain_ready_row`s of a `puts` change (its columns must be of equal length)."""
    return list(zip(*(change[name] for name in PLAIN_READY_FIELDS), strict=True))


def unfold_puts(changes: Iterable[Change]) -> list[Change]:
    """`changes` with every `puts` change expanded into its `put` maps (`fold_puts` undone)."""
    out: list[Change] = []
    for change in changes:
        if change["t"] != "puts":
            out.append(change)
            continue
        for row in puts_rows(change):
            put: Change = {"t": "put", **dict(zip(PLAIN_READY_FIELDS, row, strict=True))}
            put["state"] = "ready"
            out.append(put)
    return out


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
        ids: list[str] = []
        for change in changes:
            kind = change["t"]
            if kind == "put":
                ids.append(change["id"])
            elif kind == "puts":
                ids.extend(change["id"])
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
            if kind == "put" and len(change) == PLAIN_READY_SIZE and change["state"] == "ready":
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
    tube = engine._tube_of(job)
    state = job.state
    if state is JobState.READY:
        tube.remove_ready(job)
    elif state is JobState.DELAYED:
        tube.delayed.remove(job)
    elif state is JobState.BURIED:
        del tube.buried[job]
    elif state is JobState.WAITING:
        tube.waiting.remove(job)
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
    for name in _CHILD_COUNTS:
        setattr(info, name, change[name])
