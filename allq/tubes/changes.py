"""Change maps: what the engine's state changes look like in the log (persistence.md §4).

Charter: pure functions between the engine's records and the change maps of the log.
`ChangeLog` collects, during one engine call, which jobs were created, moved, counted or
gone and which tubes changed settings; `take()` turns that into the ordered change maps of
one log record (one request or one tick is one record). `dump()` writes the live state as
change maps (a snapshot's content). `fold_puts` writes runs of plain ready puts as one
columnar `puts` change (format 2). Applying change maps to an engine is
`allq.tubes.replay`. No clock, no I/O.

Not logged, per semantics.md §17: reserve (R1), touch (R2), unreserve (R10), pause ends,
idempotency expiry, tube GC and the server-wide drain. A reserved job is written as the
ready job it was before its reservation, so a restart puts it back in its place (R11).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from allq.tubes.job import COUNTERS, Job, JobState
from allq.tubes.tube import Tube

if TYPE_CHECKING:
    from allq.tubes.engine import Engine

Change = dict[str, Any]
_PARENT_FIELDS = ("timeout", "timeout_at", "run_on_timeout", "limit", "noop", "on_child_failure")
#: The child counters of a parent, as `count` and parent `put` changes carry them.
CHILD_COUNTS = ("children_started", "children_completed", "children_failed")


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
            {name: getattr(job.parent, name) for name in (*_PARENT_FIELDS, *CHILD_COUNTS)}
        )
    return change


def count_change(parent: Job) -> Change:
    info = parent.parent
    assert info is not None
    return {
        "t": "count",
        "id": parent.id,
        "limit": info.limit,
        **{name: getattr(info, name) for name in CHILD_COUNTS},
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


# -- snapshots and the columnar form of format 2 -------------------------------------------


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


def jobs_put(change: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The (id, tube) of each job a `put` or `puts` change puts, in order; [] for others."""
    kind = change["t"]
    if kind == "put":
        return [(change["id"], change["tube"])]
    if kind == "puts":
        return list(zip(change["id"], change["tube"], strict=True))
    return []


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
