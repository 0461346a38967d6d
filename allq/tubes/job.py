"""Job records (semantics.md §5) and their states (§6.1).

Charter: a `Job` is a plain mutable record owned by exactly one engine; only the engine
and its tubes change it. `ParentInfo` carries the workflow fields of a parent (§11).

Memory (performance.md B7): a queued ready job is the common case, so `Job` keeps in its
own slots only what every job uses (`CORE_FIELDS`). The fields a ready job never set
(`EXTRA_FIELDS`: workflow links, idempotency key, delay, reservation, burial, counters)
live in a `JobExtra` record that the first non-default write allocates; until then they
read as their defaults. Both look like plain attributes (`job.reserves += 1`). `ttr`,
`expired_limit` and `max_releases` are one `_terms` tuple, shared by the jobs with the same
three values (`share_terms`). `_pos` and `_age_pos` are the job's places in its tube's heaps
(`jobheap.py`), -1 when in none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, overload

T = TypeVar("T")

#: The job counters of semantics.md §5.3, in the order the log and the views use.
COUNTERS = (
    "reserves",
    "timeouts",
    "releases",
    "buries",
    "kicks",
    "timeouts_since_kick",
    "releases_since_kick",
)


class JobState(enum.Enum):
    READY = "ready"
    DELAYED = "delayed"
    RESERVED = "reserved"
    BURIED = "buried"
    WAITING = "waiting"


@dataclass(slots=True)
class ParentInfo:
    """Workflow fields of a job created by put_parent (§11.1)."""

    limit: int | None
    timeout: float
    timeout_at: float
    run_on_timeout: bool
    noop: bool
    on_child_failure: str
    children_started: int = 0
    children_completed: int = 0
    children_failed: int = 0


#: Fields every job holds in its own slots, in constructor order.
CORE_FIELDS: Final = (
    "id",
    "tube",
    "body",
    "priority",
    "ttr",
    "expired_limit",
    "max_releases",
    "created_at",
    "put_seq",
    "state",
)
#: Fields held in `JobExtra`, with the value they read as while the job has none.
EXTRA_FIELDS: Final[dict[str, Any]] = {
    "parent_id": None,
    "idempotency_key": None,
    "parent": None,
    # delayed
    "due_at": None,
    # reserved
    "reserved_at": None,
    "ttr_deadline": None,
    "lease": None,
    "owner": None,
    "reserve_seq": 0,
    "prev_ready_seq": 0,
    "prev_ready_since": 0.0,
    # buried
    "buried_at": None,
    "buried_seq": 0,
    # counters (§5.3)
    **dict.fromkeys(COUNTERS, 0),
}
#: Every field of a job, in the order of the constructor's keywords.
FIELDS: Final = (
    *CORE_FIELDS,
    "parent_id",
    "shard_key",
    "idempotency_key",
    "parent",
    "ready_seq",
    "ready_since",
    *(name for name in EXTRA_FIELDS if name not in ("parent_id", "idempotency_key", "parent")),
)


#: At most this many distinct `_terms` tuples are shared (the rest are per job).
SHARED_TERMS_MAX: Final = 4096
_shared_terms: dict[tuple[float, int, int], tuple[float, int, int]] = {}


def share_terms(ttr: float, expired_limit: int, max_releases: int) -> tuple[float, int, int]:
    """The `_terms` tuple of a job: one object for equal values (only exact float and int
    values are shared, so a job reads back the very types it was given)."""
    terms = (ttr, expired_limit, max_releases)
    if type(ttr) is not float or type(expired_limit) is not int or type(max_releases) is not int:
        return terms
    shared = _shared_terms.get(terms)
    if shared is None:
        if len(_shared_terms) >= SHARED_TERMS_MAX:
            return terms
        shared = _shared_terms[terms] = terms
    return shared


class JobExtra:
    """The rarely set fields of one job (see `EXTRA_FIELDS`); made on the first write."""

    __slots__ = tuple(EXTRA_FIELDS)

    def __init__(self) -> None:  # the values of EXTRA_FIELDS, written out (hot path)
        self.parent_id: str | None = None
        self.idempotency_key: str | None = None
        self.parent: ParentInfo | None = None
        self.due_at: float | None = None
        self.reserved_at: float | None = None
        self.ttr_deadline: float | None = None
        self.lease: str | None = None
        self.owner: str | None = None
        self.reserve_seq = 0
        self.prev_ready_seq = 0
        self.prev_ready_since = 0.0
        self.buried_at: float | None = None
        self.buried_seq = 0
        self.reserves = 0
        self.timeouts = 0
        self.releases = 0
        self.buries = 0
        self.kicks = 0
        self.timeouts_since_kick = 0
        self.releases_since_kick = 0


#: The rare fields of a job that has no `JobExtra`: all defaults. Read only.
NO_EXTRA: Final = JobExtra()


class _ExtraField(Generic[T]):
    """A `Job` attribute stored in its `JobExtra` (the default while there is none)."""

    __slots__ = ("default", "slot")

    def __init__(self, name: str) -> None:
        self.slot: Any = JobExtra.__dict__[name]  # the member descriptor of the slot
        self.default: T = EXTRA_FIELDS[name]

    @overload
    def __get__(self, job: None, owner: type | None = None) -> _ExtraField[T]: ...
    @overload
    def __get__(self, job: Job, owner: type | None = None) -> T: ...
    def __get__(self, job: Job | None, owner: type | None = None) -> T | _ExtraField[T]:
        if job is None:
            return self
        result: T = self.slot.__get__(job._x or NO_EXTRA)
        return result

    def __set__(self, job: Job, value: T) -> None:
        extra = job._x
        if extra is None:
            if value == self.default and type(value) is type(self.default):
                return
            extra = job._x = JobExtra()
        self.slot.__set__(extra, value)


class Job:
    """One live job. Identity is the object; `id` is unique among live jobs."""

    __slots__ = (
        "_age_pos",
        "_pos",
        "_terms",
        "_x",
        "body",
        "created_at",
        "id",
        "priority",
        "put_seq",
        "ready_seq",
        "ready_since",
        "shard_key",
        "state",
        "tube",
    )

    id: str
    tube: str
    body: bytes
    priority: int
    _terms: tuple[float, int, int]
    created_at: float
    put_seq: int
    state: JobState
    shard_key: str | None
    # ready
    ready_seq: int
    ready_since: float
    _x: JobExtra | None
    _pos: int
    _age_pos: int
    # stored in `JobExtra`
    parent_id = _ExtraField[str | None]("parent_id")
    idempotency_key = _ExtraField[str | None]("idempotency_key")
    parent = _ExtraField[ParentInfo | None]("parent")
    due_at = _ExtraField[float | None]("due_at")
    reserved_at = _ExtraField[float | None]("reserved_at")
    ttr_deadline = _ExtraField[float | None]("ttr_deadline")
    lease = _ExtraField[str | None]("lease")
    owner = _ExtraField[str | None]("owner")
    reserve_seq = _ExtraField[int]("reserve_seq")
    prev_ready_seq = _ExtraField[int]("prev_ready_seq")
    prev_ready_since = _ExtraField[float]("prev_ready_since")
    buried_at = _ExtraField[float | None]("buried_at")
    buried_seq = _ExtraField[int]("buried_seq")
    reserves = _ExtraField[int]("reserves")
    timeouts = _ExtraField[int]("timeouts")
    releases = _ExtraField[int]("releases")
    buries = _ExtraField[int]("buries")
    kicks = _ExtraField[int]("kicks")
    timeouts_since_kick = _ExtraField[int]("timeouts_since_kick")
    releases_since_kick = _ExtraField[int]("releases_since_kick")

    def __init__(
        self,
        id: str,  # noqa: A002 (the field's name)
        tube: str,
        body: bytes,
        priority: int,
        ttr: float,
        expired_limit: int,
        max_releases: int,
        created_at: float,
        put_seq: int,
        state: JobState,
        parent_id: str | None = None,
        shard_key: str | None = None,
        idempotency_key: str | None = None,
        parent: ParentInfo | None = None,
        ready_seq: int = 0,
        ready_since: float = 0.0,
        **extra: Any,
    ) -> None:
        self.id = id
        self.tube = tube
        self.body = body
        self.priority = priority
        self._terms = share_terms(ttr, expired_limit, max_releases)
        self.created_at = created_at
        self.put_seq = put_seq
        self.state = state
        self.shard_key = shard_key
        self.ready_seq = ready_seq
        self.ready_since = ready_since
        self._x = None
        self._pos = -1
        self._age_pos = -1
        if parent_id is not None:
            self.parent_id = parent_id
        if idempotency_key is not None:
            self.idempotency_key = idempotency_key
        if parent is not None:
            self.parent = parent
        for name, value in extra.items():
            if name not in EXTRA_FIELDS:
                raise TypeError(f"Job() got an unexpected keyword argument {name!r}")
            setattr(self, name, value)

    def extra(self) -> JobExtra:
        """The job's `JobExtra`, made now if it has none: for code that writes several rare
        fields at once (a reservation)."""
        extra = self._x
        if extra is None:
            extra = self._x = JobExtra()
        return extra

    @property
    def ttr(self) -> float:
        return self._terms[0]

    @ttr.setter
    def ttr(self, value: float) -> None:
        self._terms = share_terms(value, self._terms[1], self._terms[2])

    @property
    def expired_limit(self) -> int:
        return self._terms[1]

    @expired_limit.setter
    def expired_limit(self, value: int) -> None:
        self._terms = share_terms(self._terms[0], value, self._terms[2])

    @property
    def max_releases(self) -> int:
        return self._terms[2]

    @max_releases.setter
    def max_releases(self, value: int) -> None:
        self._terms = share_terms(self._terms[0], self._terms[1], value)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Job({fields})"

    def view(self) -> dict[str, object]:
        """The job view of semantics.md §14 (no lease: reserve adds it)."""
        x = self._x or NO_EXTRA
        return {
            "id": self.id,
            "tube": self.tube,
            "state": self.state.value,
            "body": self.body,
            "priority": self.priority,
            "ttr": self.ttr,
            "created_at": self.created_at,
            "shard_key": self.shard_key,
            "parent_id": x.parent_id,
            "reserves": x.reserves,
            "timeouts": x.timeouts,
            "releases": x.releases,
            "buries": x.buries,
            "kicks": x.kicks,
            "due_at": x.due_at if self.state is JobState.DELAYED else None,
        }

    def reserved_view(self) -> dict[str, object]:
        view = self.view()
        x = self._x or NO_EXTRA
        view["lease"] = x.lease
        view["ttr_deadline"] = x.ttr_deadline
        return view

    def stats(self, now: float) -> dict[str, object]:
        """`stats_job` (§14.4): every field but body and lease, counters, derived times."""
        state = self.state
        if state is JobState.RESERVED:
            assert self.ttr_deadline is not None
            time_left = self.ttr_deadline - now
        elif state is JobState.DELAYED:
            assert self.due_at is not None
            time_left = self.due_at - now
        elif state is JobState.WAITING:
            assert self.parent is not None
            time_left = self.parent.timeout_at - now
        else:
            time_left = 0.0
        record: dict[str, object] = {
            "id": self.id,
            "tube": self.tube,
            "state": state.value,
            "priority": self.priority,
            "ttr": self.ttr,
            "expired_limit": self.expired_limit,
            "max_releases": self.max_releases,
            "parent_id": self.parent_id,
            "shard_key": self.shard_key,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
            "due_at": self.due_at if state is JobState.DELAYED else None,
            "ready_since": self.ready_since if state is JobState.READY else None,
            "reserved_at": self.reserved_at if state is JobState.RESERVED else None,
            "ttr_deadline": self.ttr_deadline if state is JobState.RESERVED else None,
            "owner": self.owner if state is JobState.RESERVED else None,
            "buried_at": self.buried_at if state is JobState.BURIED else None,
            "reserves": self.reserves,
            "timeouts": self.timeouts,
            "releases": self.releases,
            "buries": self.buries,
            "kicks": self.kicks,
            "timeouts_since_kick": self.timeouts_since_kick,
            "releases_since_kick": self.releases_since_kick,
            "body_bytes": len(self.body),
            "age_s": now - self.created_at,
            "time_left_s": time_left,
        }
        if self.parent is not None:
            p = self.parent
            record.update(
                limit=p.limit,
                timeout=p.timeout,
                timeout_at=p.timeout_at,
                run_on_timeout=p.run_on_timeout,
                noop=p.noop,
                on_child_failure=p.on_child_failure,
                children_started=p.children_started,
                children_completed=p.children_completed,
                children_failed=p.children_failed,
            )
        return record


assert all(isinstance(Job.__dict__.get(name), _ExtraField) for name in EXTRA_FIELDS)
