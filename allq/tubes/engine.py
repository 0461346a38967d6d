"""Engine: the sans-IO core of one queue server (semantics.md §2, §6-§15).

Charter:
* It holds every tube and job of a server and executes the operations of §14. Every
  public method takes `now`; nothing here reads a clock, performs I/O, awaits, logs or
  draws randomness except through the injected `random_bytes`.
* Every operation first advances time (§8.3): timers due at or before `now` fire in the
  order of §8.4, as if the engine had been ticked at each deadline.
* Waiters are served oldest first after every state change (§9.4). Answers to waiters are
  *effects*, collected with `take_effects()` after every call.
* A rejected request changes nothing but the ops and error counters (§13.1): handlers
  validate and check all state before the first mutation.
* Timers are two-level: each tube computes its own `next_deadline` (delays, TTRs, pause
  end, parent timeouts, throttle refill, GC) and the engine keeps a heap of tubes by that
  deadline, beside its own timers (waiter timeouts, deadline-soon, idempotency keys). The
  shell may therefore run one timer task per tube (`tube_next_deadline`) plus one for the
  engine's own timers (`own_next_deadline`), or a single task on `next_deadline()`.

Workflows (parents and children, §11) live in `workflow.py`; the transitions that both
use are methods here.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from allq import __version__
from allq.errors import (
    AllQError,
    BadFormat,
    NotFound,
    TooManyTubes,
)
from allq.tubes import validate as v
from allq.tubes.changes import ChangeLog
from allq.tubes.config import EngineConfig
from allq.tubes.events import DeadlineSoon as DeadlineSoonEffect
from allq.tubes.events import Delivered, Effect, Waiting, WaitTimedOut
from allq.tubes.heap import IndexedHeap
from allq.tubes.job import Job, JobState
from allq.tubes.operations import DEADLINE_SOON_MARGIN, HANDLERS
from allq.tubes.puts import put_batch
from allq.tubes.tube import Tube

RandomBytes = Callable[[int], bytes]
#: Operations whose effect on a tube's settings is logged as a `tube` change.
_TUBE_SETTING_OPS = frozenset(
    {"pause", "unpause", "throttle", "drain", "undrain", "set_shard_limit"}
)
Result = dict[str, object] | list[dict[str, object]] | Waiting

#: Kinds of tube timers, in the order §8.4 runs them at one instant.
_PAUSE, _DELAY, _TTR, _PARENT = range(4)


@dataclass(slots=True)
class Waiter:
    """A blocked reserve (§9.4)."""

    id: int
    tubes: list[str]
    count: int
    deadline: float
    owner: str | None


@dataclass(slots=True)
class KeyRecord:
    """An idempotency record (§12)."""

    job_id: str
    first_seen: float


def encode_token(raw: bytes) -> str:
    """16 random bytes as 22 URL-safe base64 characters (ids and leases, §5.1, §7.1)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Engine:
    """All tubes and jobs of one server. See the module charter."""

    def __init__(self, config: EngineConfig, *, random_bytes: RandomBytes, now: float) -> None:
        self.config = config
        self._random_bytes = random_bytes
        self.started_at = now
        self.now = now
        self.tubes: dict[str, Tube] = {}
        self.jobs: dict[str, Job] = {}
        self.draining = False
        # sequences
        self._ready_seq = 0
        self._put_seq = 0
        self._reserve_seq = 0
        self._waiter_seq = 0
        self._bury_seq = 0
        #: Changes to log (persistence.md §4); collected only when persistence is on.
        self.changelog = ChangeLog()
        # waiters (§9.4)
        self.waiters: dict[int, Waiter] = {}
        self._waiters_by_tube: dict[str, dict[int, Waiter]] = {}
        self._waiter_timeouts: IndexedHeap[int] = IndexedHeap()
        self._deadline_soon: IndexedHeap[int] = IndexedHeap()
        self._owner_jobs: dict[str, dict[Job, None]] = {}
        self._owner_waiters: dict[str, dict[int, None]] = {}
        # idempotency (§12)
        self._keys: dict[str, KeyRecord] = {}
        self._key_expiry: IndexedHeap[str] = IndexedHeap()
        self._key_job_ids: dict[str, int] = {}
        # timers
        self._tube_timers: IndexedHeap[str] = IndexedHeap()
        self._touched: set[str] = set()
        self._dirty: set[str] = set()
        self._timer_changes: set[str | None] = set()
        self._own_deadline = math.inf
        # effects and counters
        self._effects: list[Effect] = []
        self.ops: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        #: Set by the shell to refuse new jobs with SERVER_FULL and this reason (a capacity
        #: check after every other check of §13.3), e.g. while disk space is low.
        self.refuse_new_jobs: str | None = None
        #: Figures only the shell knows (connections, persistence), merged into `stats`.
        self.extra_stats: Callable[[], dict[str, object]] | None = None
        from allq.tubes.workflow import Workflows  # cycle: workflow uses Engine's types

        self.workflows = Workflows(self)

    # ================================================================== public entry points

    def handle(self, op: str, args: Mapping[str, object], now: float) -> Result:
        """Validate and execute one operation of §14. Raises AllQError on rejection.

        Returns the result record (or list), or `Waiting` for a reserve that blocks.
        Effects produced by the call are collected with `take_effects()`.
        """
        counted = op if op in v.OPERATIONS else "unknown"  # bounded: never a client's string
        self.ops[counted] = self.ops.get(counted, 0) + 1
        try:
            now = self._advance(now)
            if op == "put_batch":
                return put_batch(self, args, now)
            handler = HANDLERS.get(op)
            if handler is None:
                raise BadFormat(f"unknown operation {op!r}", field="op")
            clean = v.validate(op, args, v.Context(self.config, now))
            result = handler(self, clean, now)
            if op in _TUBE_SETTING_OPS and "tube" in clean:
                self.changelog.note_tube(str(clean["tube"]))
            return result
        except AllQError as error:
            self.errors[error.code] = self.errors.get(error.code, 0) + 1
            raise
        finally:
            self._settle(self.now)

    def tick(self, now: float) -> list[Effect]:
        """Run every timer due at or before `now` (§8.2); return all pending effects."""
        self._settle(self._advance(now))
        return self.take_effects()

    def take_changes(self) -> list[dict[str, object]]:
        """The log changes of the calls since the last take (persistence.md §4).

        Empty unless `changelog.enabled` (persistence on). One take per request or tick
        is one log record.
        """
        return self.changelog.take(self)

    def take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def cancel_wait(self, waiter: int, now: float) -> None:
        """Forget a waiter (idempotent); the shell calls it when the requester went away."""
        self._advance(now)
        self._remove_waiter(waiter)
        self._settle(self.now)

    def next_deadline(self) -> float:
        """The earliest pending timer of the whole engine, or +inf (§8.2)."""
        top = self._tube_timers.peek_key()
        return min(self._own_deadline, top[0] if top is not None else math.inf)

    def own_next_deadline(self) -> float:
        """The earliest engine-level timer: waiter timeouts, deadline-soon, idempotency keys."""
        return self._own_deadline

    def tube_next_deadline(self, name: str) -> float:
        """The earliest timer of tube `name`; +inf when it has none or does not exist."""
        if name in self._tube_timers:
            deadline: float = self._tube_timers.key_of(name)[0]
            return deadline
        return math.inf

    def take_timer_changes(self) -> set[str | None]:
        """Tubes (and None for the engine's own timers) whose next deadline changed."""
        changes, self._timer_changes = self._timer_changes, set()
        return changes

    def has_tube(self, name: str) -> bool:
        return name in self.tubes

    # ================================================================== time

    def _advance(self, now: float) -> float:
        """Fire every timer due at or before `now`, instant by instant (§8.4)."""
        if now < self.now:
            now = self.now  # §8.1: time never goes back
        self.now = now  # timestamps written during the catch-up use the real now (§8.4)
        while True:
            instant = self.next_deadline()
            if instant > now:
                break
            self._fire(instant, now)
        return now

    def _fire(self, t: float, now: float) -> None:
        due: list[Tube] = []
        while (top := self._tube_timers.peek()) is not None and top[0][0] <= t:
            self._tube_timers.pop()
            due.append(self.tubes[top[1]])
            self._touched.add(top[1])
        # 1. tube timers, by kind, each kind in (deadline, creation order)
        for kind in (_PAUSE, _DELAY, _TTR, _PARENT):
            entries: list[tuple[float, int, Job | Tube]] = []
            for tube in due:
                entries.extend(self._due_entries(tube, kind, t))
            entries.sort(key=lambda entry: (entry[0], entry[1]))
            for _, _, item in entries:
                self._fire_entry(kind, item, t, now)
        for tube in due:
            if tube.throttle_tps is not None:
                tube.refill(t)  # throttle refill: the bucket is brought to this instant
                self._dirty.add(tube.name)
        # 2. dispatch to waiters
        self._dispatch(t, now)
        # 3. deadline-soon
        while (ds := self._deadline_soon.peek()) is not None and ds[0][0] <= t:
            waiter = self.waiters[ds[1]]
            self._remove_waiter(waiter.id)
            self._effects.append(DeadlineSoonEffect(waiter.id))
        # 4. waiter timeouts
        while (wt := self._waiter_timeouts.peek()) is not None and wt[0][0] <= t:
            self._remove_waiter(wt[1])
            self._effects.append(WaitTimedOut(wt[1]))
        # 5. idempotency keys and tube GC
        while (ke := self._key_expiry.peek()) is not None and ke[0][0] <= t:
            self._forget_key(ke[1])
        for tube in due:
            if (
                tube.idle_since is not None
                and tube.idle_since + self.config.tube_gc_idle <= t
                and self._collectable(tube)
            ):
                self._drop_tube(tube)
        self._settle(t)

    def _due_entries(self, tube: Tube, kind: int, t: float) -> list[tuple[float, int, Job | Tube]]:
        entries: list[tuple[float, int, Job | Tube]] = []
        if kind == _PAUSE:
            if tube.paused and tube.pause_until is not None and tube.pause_until <= t:
                entries.append((tube.pause_until, 0, tube))
            return entries
        heap = {_DELAY: tube.delayed, _TTR: tube.reserved, _PARENT: tube.waiting}[kind]
        entries.extend((key[0], key[1], job) for key, job in heap.due(t))
        return entries

    def _fire_entry(self, kind: int, item: Job | Tube, t: float, now: float) -> None:
        if isinstance(item, Tube):
            self._unpause(item)
            return
        job = item
        if kind == _DELAY and job.state is JobState.DELAYED:
            self._tube_of(job).delayed.remove(job)
            self._enter_ready(job, now)
        elif kind == _TTR and job.state is JobState.RESERVED:
            self._expire(job, now)
        elif kind == _PARENT and job.state is JobState.WAITING:
            self.workflows.parent_timed_out(job, now)

    def _settle(self, t: float) -> None:
        """After any change: serve waiters, refresh timers of touched tubes (GC status too)."""
        self._dispatch(t, self.now)
        for name in self._touched:
            tube = self.tubes.get(name)
            old = self.tube_next_deadline(name)
            if tube is None:
                self._tube_timers.discard(name)
                new = math.inf
            else:
                if self._collectable(tube):
                    if tube.idle_since is None:
                        tube.idle_since = t
                else:
                    tube.idle_since = None
                new = tube.next_deadline(
                    has_waiters=name in self._waiters_by_tube, gc_idle=self.config.tube_gc_idle
                )
                if new == math.inf:
                    self._tube_timers.discard(name)
                else:
                    self._tube_timers.update(name, (new,))
            if new != old:
                self._timer_changes.add(name)
        self._touched.clear()
        own = math.inf
        for heap in (self._waiter_timeouts, self._deadline_soon, self._key_expiry):
            top = heap.peek_key()
            if top is not None:
                own = min(own, top[0])
        if own != self._own_deadline:
            self._own_deadline = own
            self._timer_changes.add(None)

    # ================================================================== tubes

    def _collectable(self, tube: Tube) -> bool:
        return (
            tube.job_count() == 0
            and not tube.has_settings()
            and tube.name not in self._waiters_by_tube
        )

    def _drop_tube(self, tube: Tube) -> None:
        del self.tubes[tube.name]
        self._tube_timers.discard(tube.name)
        self._touched.add(tube.name)

    def _tube_for_create(self, name: str, now: float) -> Tube:
        """The tube `name`, created if absent; TOO_MANY_TUBES before any change."""
        tube = self.tubes.get(name)
        if tube is None:
            self._check_tube_capacity(name)
            tube = Tube(name, fair=self._is_fair(name), now=now)
            self.tubes[name] = tube
            self._dirty.add(name)  # a waiter may have been waiting for this name
        self._touched.add(name)
        return tube

    def _check_tube_capacity(self, name: str) -> None:
        if name not in self.tubes and len(self.tubes) >= self.config.max_tubes:
            raise TooManyTubes(
                f"creating tube {name!r} would exceed max_tubes = {self.config.max_tubes}",
                field="tube",
            )

    def _is_fair(self, name: str) -> bool:
        return name.startswith(self.config.fair_prefix)

    def _tube_of(self, job: Job) -> Tube:
        return self.tubes[job.tube]

    def _existing_tube(self, name: str) -> Tube:
        tube = self.tubes.get(name)
        if tube is None:
            raise NotFound(f"no tube {name!r}", field="tube")
        return tube

    # ================================================================== state primitives

    def _enter_ready(self, job: Job, now: float) -> None:
        """Any transition into ready: a new ready_seq and ready_since (§5.4, §6.2)."""
        self._ready_seq += 1
        job.ready_seq = self._ready_seq
        job.ready_since = now
        job.state = JobState.READY
        job.due_at = None
        self._add_ready(job)
        self.changelog.note_moved(job)

    def _add_ready(self, job: Job) -> None:
        tube = self._tube_of(job)
        tube.add_ready(job)
        self._dirty.add(tube.name)
        self._touched.add(tube.name)

    def _enter_delayed(self, job: Job, due_at: float) -> None:
        job.state = JobState.DELAYED
        job.due_at = due_at
        self._tube_of(job).delayed.push(job)
        self._touched.add(job.tube)
        self.changelog.note_moved(job)

    def _enter_buried(self, job: Job, now: float) -> None:
        """Entering buried for any cause: a failure (§6.4)."""
        job.state = JobState.BURIED
        job.buried_at = now
        self._bury_seq += 1
        job.buried_seq = self._bury_seq
        job.due_at = None
        job.buries += 1
        tube = self._tube_of(job)
        tube.buried[job] = None
        self.changelog.note_moved(job)
        tube.total_buried += 1
        self._touched.add(tube.name)
        self.workflows.child_failed(job, now)

    def _leave_reserved(self, job: Job) -> None:
        """Drop the reservation: lease, owner, TTR timer (§6.2)."""
        tube = self._tube_of(job)
        tube.remove_reserved(job)
        if tube.fair:
            self._dirty.add(tube.name)  # a shard may drop below its limit (§10.3)
        self._touched.add(tube.name)
        owner = job.owner
        if owner is not None:
            jobs = self._owner_jobs[owner]
            del jobs[job]
            if not jobs:
                del self._owner_jobs[owner]
            self._refresh_owner(owner)
        job.lease = None
        job.owner = None
        job.ttr_deadline = None

    def _unplace(self, job: Job) -> Tube:
        """Take a job out of the structure of its state; returns its tube."""
        tube = self._tube_of(job)
        state = job.state
        if state is JobState.READY:
            tube.remove_ready(job)
        elif state is JobState.DELAYED:
            tube.delayed.remove(job)
        elif state is JobState.RESERVED:
            self._leave_reserved(job)
        elif state is JobState.BURIED:
            del tube.buried[job]
        else:
            tube.waiting.remove(job)
        return tube

    def _detach(self, job: Job) -> None:
        """Remove a live job from its structure and the id map (it becomes gone)."""
        tube = self._unplace(job)
        tube.shard_leave(job)
        del self.jobs[job.id]
        self._touched.add(tube.name)
        self.changelog.note_gone(job)

    def _complete(self, job: Job, now: float) -> None:
        """A reserved job finished with done/delete (R3, X1): gone and a completion."""
        reserved_at = job.reserved_at
        self._detach(job)
        self._tube_of_name(job.tube).record_completion(now, reserved_at)
        self.workflows.child_completed(job, now)

    def _tube_of_name(self, name: str) -> Tube:
        return self.tubes[name]

    def _reserve(self, job: Job, tube: Tube, now: float, owner: str | None) -> None:
        """R1: hand `job` out under a new lease."""
        tube.remove_ready(job, rotate=True)
        tube.take_token()
        job.state = JobState.RESERVED
        x = job.extra()  # the reservation's fields, written in one go
        x.prev_ready_seq = job.ready_seq
        x.prev_ready_since = job.ready_since
        x.reserves += 1
        x.lease = self._new_token()
        x.reserved_at = now
        x.ttr_deadline = now + job.ttr
        x.owner = owner
        self._reserve_seq += 1
        x.reserve_seq = self._reserve_seq
        tube.add_reserved(job)
        self._touched.add(tube.name)
        if owner is not None:
            self._owner_jobs.setdefault(owner, {})[job] = None
            self._refresh_owner(owner)

    def _expire(self, job: Job, now: float) -> None:
        """TTR timer (R8/R9)."""
        self._leave_reserved(job)
        job.timeouts += 1
        job.timeouts_since_kick += 1
        self._tube_of(job).total_timeouts += 1
        if job.timeouts_since_kick >= job.expired_limit:
            self._enter_buried(job, now)
        else:
            self._enter_ready(job, now)

    def _kick(self, job: Job, now: float) -> str:
        """B1, B2 or D2 for one buried or delayed job; returns the new state name."""
        tube = self._tube_of(job)
        job.kicks += 1
        job.timeouts_since_kick = 0
        job.releases_since_kick = 0
        if job.state is JobState.BURIED:
            del tube.buried[job]
            job.buried_at = None
            if job.parent is not None and job.parent.noop:
                tube.shard_leave(job)
                del self.jobs[job.id]
                self.changelog.note_gone(job)
                self._touched.add(tube.name)
                tube.record_completion(now, None)
                self.workflows.child_completed(job, now)
                return "gone"
        else:
            tube.delayed.remove(job)
        self._enter_ready(job, now)
        return "ready"

    def _unpause(self, tube: Tube) -> None:
        tube.paused = False
        tube.pause_until = None
        self._dirty.add(tube.name)
        self._touched.add(tube.name)

    def _new_token(self) -> str:
        return encode_token(self._random_bytes(16))

    def _new_job_id(self) -> str:
        while True:
            job_id = self._new_token()
            if job_id not in self.jobs and job_id not in self._key_job_ids:
                return job_id

    # ================================================================== waiters

    def _dispatch(self, t: float, now: float) -> None:
        """Serve waiters oldest first while a changed tube can hand out a job (§9.4).

        Any waiter naming a tube that can hand out a job gets at least one, so the next
        waiter to serve is the oldest head among the waiter queues of such tubes.
        """
        while self._dirty:
            dirty = [name for name in self._dirty if name in self._waiters_by_tube]
            self._dirty.clear()
            while dirty:
                oldest: Waiter | None = None
                for name in list(dirty):
                    queue = self._waiters_by_tube.get(name)
                    if not queue or not self._can_hand_out(name, t):
                        dirty.remove(name)
                        continue
                    head = next(iter(queue.values()))
                    if oldest is None or head.id < oldest.id:
                        oldest = head
                if oldest is None:
                    break
                jobs = self._select(oldest.tubes, oldest.count, t, now, oldest.owner)
                assert jobs, "a waiter on a tube that can hand out a job gets one"
                self._remove_waiter(oldest.id)
                self._effects.append(Delivered(oldest.id, jobs))

    def _can_hand_out(self, name: str, t: float) -> bool:
        tube = self.tubes.get(name)
        return tube is not None and tube.can_hand_out(
            t, self.config.default_shard_reservation_limit
        )

    def _select(
        self, names: list[str], count: int, t: float, now: float, owner: str | None
    ) -> list[dict[str, object]]:
        """§9.2, repeated up to `count` times; returns reserved job views."""
        default_limit = self.config.default_shard_reservation_limit
        taken: list[dict[str, object]] = []
        for _ in range(count):
            best: Job | None = None
            best_tube: Tube | None = None
            for name in names:
                tube = self.tubes.get(name)
                if tube is None or not tube.can_hand_out(t, default_limit):
                    continue
                job = tube.head(default_limit)
                if job is not None and (
                    best is None or (job.priority, job.ready_seq) < (best.priority, best.ready_seq)
                ):
                    best, best_tube = job, tube
            if best is None or best_tube is None:
                break
            self._reserve(best, best_tube, now, owner)
            taken.append(best.reserved_view())
        return taken

    def _add_waiter(self, tubes: list[str], count: int, deadline: float, owner: str | None) -> int:
        self._waiter_seq += 1
        waiter = Waiter(self._waiter_seq, tubes, count, deadline, owner)
        self.waiters[waiter.id] = waiter
        for name in tubes:
            self._waiters_by_tube.setdefault(name, {})[waiter.id] = waiter
            self._touched.add(name)
        self._waiter_timeouts.push(waiter.id, (deadline, waiter.id))
        if owner is not None:
            self._owner_waiters.setdefault(owner, {})[waiter.id] = None
            self._refresh_owner(owner)
        return waiter.id

    def _remove_waiter(self, waiter_id: int) -> None:
        waiter = self.waiters.pop(waiter_id, None)
        if waiter is None:
            return
        for name in waiter.tubes:
            by_tube = self._waiters_by_tube[name]
            del by_tube[waiter_id]
            if not by_tube:
                del self._waiters_by_tube[name]
            self._touched.add(name)
        self._waiter_timeouts.discard(waiter_id)
        self._deadline_soon.discard(waiter_id)
        if waiter.owner is not None:
            owned = self._owner_waiters[waiter.owner]
            del owned[waiter_id]
            if not owned:
                del self._owner_waiters[waiter.owner]

    def _owner_soonest(self, owner: str) -> float:
        jobs = self._owner_jobs.get(owner)
        if not jobs:
            return math.inf
        return min(job.ttr_deadline for job in jobs if job.ttr_deadline is not None)

    def _refresh_owner(self, owner: str) -> None:
        """Re-arm the deadline-soon timers of `owner`'s waiters (§7.3)."""
        waiters = self._owner_waiters.get(owner)
        if not waiters:
            return
        at = self._owner_soonest(owner) - DEADLINE_SOON_MARGIN
        for waiter_id in waiters:
            if at == math.inf:
                self._deadline_soon.discard(waiter_id)
            else:
                self._deadline_soon.update(waiter_id, (at, waiter_id))

    # ================================================================== idempotency

    def _duplicate(self, key: str | None, now: float) -> dict[str, object] | None:
        if key is None:
            return None
        record = self._keys.get(key)
        if record is None or now >= record.first_seen + self.config.dedup_window:
            return None
        job = self.jobs.get(record.job_id)
        state = job.state.value if job is not None else "gone"
        return {"id": record.job_id, "state": state, "duplicate": True}

    def _remember_key(self, key: str, job_id: str, now: float) -> None:
        self._forget_key(key)
        self._keys[key] = KeyRecord(job_id, now)
        self._key_job_ids[job_id] = self._key_job_ids.get(job_id, 0) + 1
        self._put_seq += 1
        self._key_expiry.push(key, (now + self.config.dedup_window, self._put_seq))

    def _forget_key(self, key: str) -> None:
        record = self._keys.pop(key, None)
        if record is None:
            return
        self._key_expiry.discard(key)
        left = self._key_job_ids[record.job_id] - 1
        if left:
            self._key_job_ids[record.job_id] = left
        else:
            del self._key_job_ids[record.job_id]

    def live_keys(self, now: float) -> int:
        window = self.config.dedup_window
        return sum(1 for record in self._keys.values() if now < record.first_seen + window)

    def tube_stats(self, tube: Tube, now: float) -> dict[str, object]:
        return tube.stats(
            now,
            waiters=len(self._waiters_by_tube.get(tube.name, ())),
            default_shard_limit=self.config.default_shard_reservation_limit,
        )

    def server_stats(self, now: float) -> dict[str, object]:
        counts = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0, "waiting": 0}
        for tube in self.tubes.values():
            counts["ready"] += len(tube.by_age)
            counts["delayed"] += len(tube.delayed)
            counts["reserved"] += len(tube.reserved)
            counts["buried"] += len(tube.buried)
            counts["waiting"] += len(tube.waiting)
        return {
            "server_id": self.config.server_id,
            "version": __version__,
            "uptime_s": now - self.started_at,
            "now": now,
            "connections": 0,
            "tubes": len(self.tubes),
            "jobs": {**counts, "total": len(self.jobs)},
            "waiting_reservers": len(self.waiters),
            "ops": dict(self.ops),
            "errors": dict(self.errors),
            "draining": self.draining,
            "idempotency_keys": self.live_keys(now),
            "limits": {
                "max_tubes": self.config.max_tubes,
                "max_jobs": self.config.max_jobs,
                "max_job_bytes": self.config.max_job_bytes,
            },
            "persistence": {"mode": "memory", "sync": None, "log_bytes": 0},
            **(self.extra_stats() if self.extra_stats is not None else {}),
        }

    # ================================================================== restore (recovery)

    def restore_key(self, key: str, job_id: str, first_seen: float) -> None:
        if first_seen + self.config.dedup_window > self.now:
            self._remember_key(key, job_id, first_seen)

    def restore_sequences(self, seqs: dict[str, int]) -> None:
        self._ready_seq = max(self._ready_seq, int(seqs.get("ready", 0)))
        self._put_seq = max(self._put_seq, int(seqs.get("put", 0)))
        self._bury_seq = max(self._bury_seq, int(seqs.get("bury", 0)))

    def sequences(self) -> dict[str, int]:
        """High-water marks of the ordering counters (`meta.seqs`)."""
        return {"ready": self._ready_seq, "put": self._put_seq, "bury": self._bury_seq}

    def key_records(self) -> list[tuple[str, KeyRecord]]:
        return list(self._keys.items())

    # ================================================================== invariants (§20)

    def check_invariants(self) -> None:
        now = self.now
        seen: set[str] = set()
        for name, tube in self.tubes.items():
            assert tube.name == name
            tube.check_invariants(now)
            members = [*tube.by_age, *tube.delayed, *tube.reserved, *tube.buried, *tube.waiting]
            for job in members:
                assert job.id not in seen, "a job is held in two structures"
                seen.add(job.id)
                assert self.jobs[job.id] is job
                assert job.tube == name
            if self._collectable(tube):
                assert tube.idle_since is not None
            else:
                assert tube.idle_since is None
            expected = tube.next_deadline(
                has_waiters=name in self._waiters_by_tube, gc_idle=self.config.tube_gc_idle
            )
            assert self.tube_next_deadline(name) <= expected
        assert seen == set(self.jobs), "every live job is in exactly one structure"
        for name in self._tube_timers:
            assert name in self.tubes
        # waiters (§20.6): no waiter could be served now
        for waiter in self.waiters.values():
            for name in waiter.tubes:
                assert waiter.id in self._waiters_by_tube[name]
                assert not self._can_hand_out(name, now), f"waiter {waiter.id} could be served"
            assert waiter.deadline > now
        assert sum(len(ws) for ws in self._waiters_by_tube.values()) == sum(
            len(w.tubes) for w in self.waiters.values()
        )
        # owners
        for owner, jobs in self._owner_jobs.items():
            for job in jobs:
                assert job.state is JobState.RESERVED
                assert job.owner == owner
        self.workflows.check_invariants()
        assert self.next_deadline() >= 0
