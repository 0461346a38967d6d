"""Job records (semantics.md §5) and their states (§6.1).

Charter: a `Job` is a plain mutable record owned by exactly one engine; only the engine
and its tubes change it. `ParentInfo` carries the workflow fields of a parent (§11).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


@dataclass(slots=True, eq=False)
class Job:
    """One live job. Identity is the object; `id` is unique among live jobs."""

    id: str
    tube: str
    body: bytes
    priority: int
    ttr: float
    expired_limit: int
    max_releases: int
    created_at: float
    put_seq: int
    state: JobState
    parent_id: str | None = None
    shard_key: str | None = None
    idempotency_key: str | None = None
    parent: ParentInfo | None = None
    # ready
    ready_seq: int = 0
    ready_since: float = 0.0
    # delayed
    due_at: float | None = None
    # reserved
    reserved_at: float | None = None
    ttr_deadline: float | None = None
    lease: str | None = None
    owner: str | None = None
    reserve_seq: int = 0
    prev_ready_seq: int = 0
    prev_ready_since: float = 0.0
    # buried
    buried_at: float | None = None
    buried_seq: int = 0
    # counters (§5.3)
    reserves: int = 0
    timeouts: int = 0
    releases: int = 0
    buries: int = 0
    kicks: int = 0
    timeouts_since_kick: int = 0
    releases_since_kick: int = 0

    def view(self) -> dict[str, object]:
        """The job view of semantics.md §14 (no lease: reserve adds it)."""
        return {
            "id": self.id,
            "tube": self.tube,
            "state": self.state.value,
            "body": self.body,
            "priority": self.priority,
            "ttr": self.ttr,
            "created_at": self.created_at,
            "shard_key": self.shard_key,
            "parent_id": self.parent_id,
            "reserves": self.reserves,
            "timeouts": self.timeouts,
            "releases": self.releases,
            "buries": self.buries,
            "kicks": self.kicks,
            "due_at": self.due_at if self.state is JobState.DELAYED else None,
        }

    def reserved_view(self) -> dict[str, object]:
        view = self.view()
        view["lease"] = self.lease
        view["ttr_deadline"] = self.ttr_deadline
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
