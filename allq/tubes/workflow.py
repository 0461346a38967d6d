"""Workflows: parents waiting for their children (semantics.md §11).

Charter: a parent is a job in state `waiting` with `ParentInfo`. Children are ordinary
jobs with `parent_id`. Only direct children count, and only while the parent waits
(§11.3); completion and failure events of a child reach its parent through
`child_completed` / `child_failed`, which the engine calls on every completion (§6.4) and
every entry into buried. Starting a noop parent is itself a completion (W2), so events
chain upward. Part of the sans-IO engine: no clock, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allq.tubes.job import Job, JobState, ParentInfo

if TYPE_CHECKING:
    from allq.tubes.engine import Engine


class Workflows:
    """Parent/child bookkeeping of one engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_parent(self, job: Job, clean: dict[str, object], now: float) -> None:
        """P3: the new job waits for its children."""
        config = self._engine.config
        timeout = clean.get("timeout", float(config.default_parent_timeout))
        limit = clean.get("limit")
        on_failure = clean.get("on_child_failure", "wait")
        assert isinstance(timeout, float | int) and (limit is None or isinstance(limit, int))
        assert isinstance(on_failure, str)
        job.parent = ParentInfo(
            limit=limit,
            timeout=float(timeout),
            timeout_at=now + timeout,
            run_on_timeout=bool(clean.get("run_on_timeout", False)),
            noop=bool(clean.get("noop", False)),
            on_child_failure=on_failure,
        )
        job.state = JobState.WAITING
        self._engine.tubes[job.tube].waiting.push(job)

    def child_started(self, parent: Job) -> None:
        assert parent.parent is not None
        parent.parent.children_started += 1
        self._engine.changelog.note_counted(parent)

    def _waiting_parent(self, child: Job) -> Job | None:
        if child.parent_id is None:
            return None
        parent = self._engine.jobs.get(child.parent_id)
        if parent is None or parent.state is not JobState.WAITING:
            return None  # started, buried, deleted or cleared: counters are frozen
        return parent

    def child_completed(self, child: Job, now: float) -> None:
        parent = self._waiting_parent(child)
        if parent is None:
            return
        assert parent.parent is not None
        parent.parent.children_completed += 1
        self._engine.changelog.note_counted(parent)
        self._apply_start_rule(parent, now)

    def child_failed(self, child: Job, now: float) -> None:
        parent = self._waiting_parent(child)
        if parent is None:
            return
        info = parent.parent
        assert info is not None
        info.children_failed += 1
        self._engine.changelog.note_counted(parent)
        if info.on_child_failure == "bury":
            self._leave_waiting(parent)
            self._engine._enter_buried(parent, now)  # W3, itself a failure upward

    def parent_timed_out(self, parent: Job, now: float) -> None:
        """The parent timeout timer (§11.4): start with run_on_timeout, else bury."""
        info = parent.parent
        assert info is not None
        if info.run_on_timeout:
            self._start(parent, now)
        else:
            self._leave_waiting(parent)
            self._engine._enter_buried(parent, now)

    def set_children_started(self, parent: Job, now: float) -> dict[str, object]:
        info = parent.parent
        assert info is not None
        info.limit = info.children_started
        self._engine.changelog.note_counted(parent)
        record: dict[str, object] = {
            "limit": info.limit,
            "children_started": info.children_started,
            "children_completed": info.children_completed,
        }
        self._apply_start_rule(parent, now)
        record["state"] = parent.state.value if parent.id in self._engine.jobs else "gone"
        return record

    def _apply_start_rule(self, parent: Job, now: float) -> None:
        info = parent.parent
        assert info is not None
        if info.limit is not None and info.children_completed >= info.limit:
            self._start(parent, now)

    def _leave_waiting(self, parent: Job) -> None:
        self._engine.tubes[parent.tube].waiting.remove(parent)
        self._engine._touched.add(parent.tube)

    def _start(self, parent: Job, now: float) -> None:
        """W1 (to ready, priority kept) or W2 (noop: gone, and a completion upward)."""
        info = parent.parent
        assert info is not None
        engine = self._engine
        self._leave_waiting(parent)
        if info.noop:
            tube = engine.tubes[parent.tube]
            tube.shard_leave(parent)
            del engine.jobs[parent.id]
            engine.changelog.note_gone(parent)
            tube.record_completion(now, None)
            self.child_completed(parent, now)
        else:
            engine._enter_ready(parent, now)

    def check_invariants(self) -> None:
        """Parents hold their workflow record; a child completes at most once (§20.10)."""
        for job in self._engine.jobs.values():
            if job.state is JobState.WAITING:
                info = job.parent
                assert info is not None
                assert 0 <= info.children_completed <= info.children_started
                assert info.children_failed >= 0
