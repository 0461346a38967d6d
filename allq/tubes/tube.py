"""Tube: the per-tube part of the sans-IO engine (semantics.md §4, §9, §10, §15.2).

Charter: a `Tube` holds the jobs of one tube in exactly one structure per state, its
settings (pause, throttle bucket, drain, shard limit) and its counters. It offers small,
state-preserving primitives (add/remove per state, selection head, token bucket) and
never decides a transition on its own: the engine (`engine.py`) does that, so that
workflows, waiters and idempotency keys, which span tubes, live in one place.

Structures (keys are tuples, so payloads are never compared; every heap is a `JobHeap`
of `jobheap.py`, which keeps a job's place in the job and reads its key from it):
  ready     (priority, ready_seq)          one heap, or one heap per shard on fair tubes
  by_age    (ready_seq,)                   every ready job, for oldest_ready_age_s
  delayed   (due_at, put_seq)
  reserved  (ttr_deadline, reserve_seq)
  buried    insertion-ordered dict         oldest buried_at first
  waiting   (timeout_at, put_seq)          parents
No clock, no I/O: every time comes in as an argument.
"""

from __future__ import annotations

import math
from collections import deque
from operator import attrgetter

from allq.tubes.job import Job, JobState
from allq.tubes.jobheap import DELAY_KEY, PARENT_KEY, TTR_KEY, AgeHeap, JobHeap, ReadyHeap

URGENT_BELOW = 1024
_PRIORITY = attrgetter("priority")
AVG_SAMPLES = 100
RATE_WINDOW_S = 60.0
TOKEN_EPSILON = 1e-9


class Tube:
    """The jobs, settings and counters of one tube."""

    def __init__(self, name: str, *, fair: bool, now: float) -> None:
        self.name = name
        self.fair = fair
        self.created_at = now
        # ready jobs
        self.ready = ReadyHeap()  # non-fair tubes
        self.shards: dict[str, ReadyHeap] = {}  # fair tubes: shard -> ready heap
        self.rotation: dict[str, None] = {}  # fair tubes: shards with a ready job, FIFO
        self.shard_reserved: dict[str, int] = {}
        self.shard_jobs: dict[str, int] = {}  # jobs in any state per shard
        self.by_age = AgeHeap()
        self.urgent = 0
        # other states
        self.delayed = JobHeap(DELAY_KEY)
        self.reserved = JobHeap(TTR_KEY)
        self.buried: dict[Job, None] = {}
        self.waiting = JobHeap(PARENT_KEY)
        # settings (§4.3)
        self.paused = False
        self.pause_until: float | None = None
        self.throttle_tps: float | None = None
        self.tokens = 0.0
        self.tokens_at = now
        self.draining = False
        self.shard_limit: int | None = None
        # counters (§15.2)
        self.total_puts = 0
        self.total_completed = 0
        self.total_timeouts = 0
        self.total_buried = 0
        self.work_samples: deque[float] = deque(maxlen=AVG_SAMPLES)
        self.completion_times: deque[float] = deque()
        # GC (§4.4)
        self.idle_since: float | None = None

    # -- counts ------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return len(self.by_age)

    def job_count(self) -> int:
        return (
            len(self.by_age)
            + len(self.delayed)
            + len(self.reserved)
            + len(self.buried)
            + len(self.waiting)
        )

    def has_settings(self) -> bool:
        return (
            self.paused
            or self.throttle_tps is not None
            or self.draining
            or self.shard_limit is not None
        )

    # -- ready -------------------------------------------------------------------------

    def add_ready(self, job: Job) -> None:
        if self.fair:
            shard = job.shard_key
            assert shard is not None
            heap = self.shards.get(shard)
            if heap is None:
                heap = self.shards[shard] = ReadyHeap()
            heap.push(job)
            if shard not in self.rotation:
                self.rotation[shard] = None
        else:
            self.ready.push(job)
        self.by_age.push(job)
        if job.priority < URGENT_BELOW:
            self.urgent += 1

    def add_ready_many(self, jobs: list[Job]) -> None:
        """`add_ready` for many jobs at once (recovery): one sort per heap instead of a push
        per job. On a fair tube, shards new to the rotation join it in the `ready_seq` order
        of their heads (persistence.md §6.3)."""
        if self.fair:
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                shard = job.shard_key
                assert shard is not None
                group = groups.get(shard)
                if group is None:
                    groups[shard] = [job]
                else:
                    group.append(job)
            for shard, group in groups.items():
                heap = self.shards.get(shard)
                if heap is None:
                    heap = self.shards[shard] = ReadyHeap()
                heap.extend(group)
            joining = [shard for shard in groups if shard not in self.rotation]
            heads = self.shards
            joining.sort(key=lambda shard: heads[shard].peek_key()[1])  # type: ignore[index]
            self.rotation.update(dict.fromkeys(joining))
        else:
            self.ready.extend(jobs)
        self.by_age.extend(jobs)
        self.urgent += sum(map(URGENT_BELOW.__gt__, map(_PRIORITY, jobs)))

    def remove_ready(self, job: Job, *, rotate: bool = False) -> None:
        """Take `job` out of ready; on a fair tube, `rotate` moves its shard to the tail."""
        if self.fair:
            shard = job.shard_key
            assert shard is not None
            heap = self.shards[shard]
            heap.remove(job)
            if not heap:
                del self.shards[shard]
                self.rotation.pop(shard, None)
            elif rotate:
                del self.rotation[shard]
                self.rotation[shard] = None
        else:
            self.ready.remove(job)
        self.by_age.remove(job)
        if job.priority < URGENT_BELOW:
            self.urgent -= 1

    def head(self, default_shard_limit: int) -> Job | None:
        """The job the next reserve on this tube would take, ignoring pause and throttle."""
        if not self.fair:
            return self.ready.peek_item()
        limit = self.effective_shard_limit(default_shard_limit)
        for shard in self.rotation:
            if limit and self.shard_reserved.get(shard, 0) >= limit:
                continue
            return self.shards[shard].peek_item()
        return None

    def effective_shard_limit(self, default: int) -> int:
        return default if self.shard_limit is None else self.shard_limit

    # -- shards (fair tubes) -------------------------------------------------------------

    def shard_enter(self, job: Job) -> None:
        if self.fair and job.shard_key is not None:
            self.shard_jobs[job.shard_key] = self.shard_jobs.get(job.shard_key, 0) + 1

    def shard_leave(self, job: Job) -> None:
        if self.fair and job.shard_key is not None:
            left = self.shard_jobs[job.shard_key] - 1
            if left:
                self.shard_jobs[job.shard_key] = left
            else:
                del self.shard_jobs[job.shard_key]

    # -- reserved ----------------------------------------------------------------------

    def add_reserved(self, job: Job) -> None:
        assert job.ttr_deadline is not None
        self.reserved.push(job)
        if self.fair and job.shard_key is not None:
            self.shard_reserved[job.shard_key] = self.shard_reserved.get(job.shard_key, 0) + 1

    def remove_reserved(self, job: Job) -> None:
        self.reserved.remove(job)
        if self.fair and job.shard_key is not None:
            left = self.shard_reserved[job.shard_key] - 1
            if left:
                self.shard_reserved[job.shard_key] = left
            else:
                del self.shard_reserved[job.shard_key]

    # -- throttle (§9.6) ------------------------------------------------------------------

    def capacity(self) -> float:
        assert self.throttle_tps is not None
        return max(1.0, self.throttle_tps)

    def refill(self, t: float) -> None:
        if self.throttle_tps is None:
            return
        if t > self.tokens_at:
            self.tokens = min(
                self.capacity(), self.tokens + self.throttle_tps * (t - self.tokens_at)
            )
            self.tokens_at = t

    def has_token(self, t: float) -> bool:
        if self.throttle_tps is None:
            return True
        self.refill(t)
        return self.tokens + TOKEN_EPSILON >= 1.0

    def take_token(self) -> None:
        if self.throttle_tps is not None:
            self.tokens = max(0.0, self.tokens - 1.0)

    def refund_token(self) -> None:
        if self.throttle_tps is not None:
            self.tokens = min(self.capacity(), self.tokens + 1.0)

    def set_throttle(self, tps: float | None, now: float) -> None:
        self.throttle_tps = tps
        if tps is not None:
            self.tokens = self.capacity()
            self.tokens_at = now

    def refill_at(self) -> float:
        """When the bucket reaches one token (only meaningful below one token)."""
        assert self.throttle_tps is not None
        return self.tokens_at + (1.0 - self.tokens) / self.throttle_tps

    # -- eligibility and timers --------------------------------------------------------------

    def can_hand_out(self, t: float, default_shard_limit: int) -> bool:
        """§9.1: not paused, a token if throttled, and a selectable ready job."""
        if self.paused or not self.by_age:
            return False
        if self.head(default_shard_limit) is None:
            return False
        return self.has_token(t)

    def next_deadline(self, *, has_waiters: bool, gc_idle: float) -> float:
        """The earliest timer of this tube (§8.5), or +inf."""
        deadline = math.inf
        top = self.delayed.peek_key()
        if top is not None:
            deadline = min(deadline, top[0])
        top = self.reserved.peek_key()
        if top is not None:
            deadline = min(deadline, top[0])
        top = self.waiting.peek_key()
        if top is not None:
            deadline = min(deadline, top[0])
        if self.paused and self.pause_until is not None:
            deadline = min(deadline, self.pause_until)
        if (
            self.throttle_tps is not None
            and self.throttle_tps > 0
            and has_waiters
            and self.by_age
            and not self.paused
            and self.tokens + TOKEN_EPSILON < 1.0
        ):
            deadline = min(deadline, self.refill_at())
        if self.idle_since is not None:
            deadline = min(deadline, self.idle_since + gc_idle)
        return deadline

    # -- statistics -------------------------------------------------------------------------

    def record_completion(self, now: float, reserved_at: float | None) -> None:
        self.total_completed += 1
        if reserved_at is not None:
            self.work_samples.append(now - reserved_at)
        times = self.completion_times
        times.append(now)
        while times and times[0] <= now - RATE_WINDOW_S:
            times.popleft()

    def stats(self, now: float, *, waiters: int, default_shard_limit: int) -> dict[str, object]:
        times = self.completion_times
        while times and times[0] <= now - RATE_WINDOW_S:
            times.popleft()
        oldest = self.by_age.peek_item()
        record: dict[str, object] = {
            "name": self.name,
            "fair": self.fair,
            "ready": len(self.by_age),
            "delayed": len(self.delayed),
            "reserved": len(self.reserved),
            "buried": len(self.buried),
            "waiting": len(self.waiting),
            "urgent": self.urgent,
            "total_puts": self.total_puts,
            "total_completed": self.total_completed,
            "total_timeouts": self.total_timeouts,
            "total_buried": self.total_buried,
            "oldest_ready_age_s": now - oldest.ready_since if oldest is not None else 0.0,
            "avg_work_s": (
                sum(self.work_samples) / len(self.work_samples) if self.work_samples else None
            ),
            "completions_per_s": len(times) / RATE_WINDOW_S,
            "paused": self.paused,
            "pause_remaining_s": (
                self.pause_until - now if self.paused and self.pause_until is not None else None
            ),
            "draining": self.draining,
            "throttle_tps": self.throttle_tps,
            "waiting_reservers": waiters,
        }
        if self.fair:
            shards = {
                key: {
                    "ready": len(self.shards[key]) if key in self.shards else 0,
                    "reserved": self.shard_reserved.get(key, 0),
                }
                for key in self.shard_jobs
            }
            truncated = len(shards) > 1000
            if truncated:
                busiest = sorted(
                    shards, key=lambda k: -(shards[k]["ready"] + shards[k]["reserved"])
                )
                shards = {key: shards[key] for key in busiest[:1000]}
            record.update(
                shard_reservation_limit=self.effective_shard_limit(default_shard_limit),
                shard_count=len(self.shard_jobs),
                shards=shards,
                shards_truncated=truncated,
            )
        return record

    # -- invariants ---------------------------------------------------------------------------

    def check_invariants(self, now: float) -> None:
        ready_jobs = list(self.by_age)
        if self.fair:
            in_shards = [job for heap in self.shards.values() for job in heap]
            assert sorted(map(id, in_shards)) == sorted(map(id, ready_jobs))
            assert set(self.rotation) == set(self.shards), "rotation holds exactly the ready shards"
            for shard, heap in self.shards.items():
                heap.check_invariants()
                assert heap, f"empty shard heap {shard}"
                assert all(job.shard_key == shard for job in heap)
        else:
            assert len(self.ready) == len(self.by_age)
            assert all(job in self.ready for job in ready_jobs)
            self.ready.check_invariants()
        for job in ready_jobs:
            assert job.state is JobState.READY
            assert job.tube == self.name
        assert self.urgent == sum(1 for job in ready_jobs if job.priority < URGENT_BELOW)
        for job in self.delayed:
            assert job.state is JobState.DELAYED
            assert job.due_at is not None
            assert job.due_at > now
        for job in self.reserved:
            assert job.state is JobState.RESERVED
            assert job.lease is not None
            assert job.ttr_deadline is not None
            assert job.ttr_deadline > now
        for job in self.buried:
            assert job.state is JobState.BURIED
        for job in self.waiting:
            assert job.state is JobState.WAITING
            assert job.parent is not None
            assert job.parent.timeout_at > now
            if job.parent.limit is not None:
                assert job.parent.children_completed < job.parent.limit
        if self.fair:
            counts: dict[str, int] = {}
            reserved: dict[str, int] = {}
            for job in [*ready_jobs, *self.delayed, *self.reserved, *self.buried, *self.waiting]:
                assert job.shard_key is not None
                counts[job.shard_key] = counts.get(job.shard_key, 0) + 1
            for job in self.reserved:
                assert job.shard_key is not None
                reserved[job.shard_key] = reserved.get(job.shard_key, 0) + 1
            assert counts == self.shard_jobs
            assert reserved == self.shard_reserved
        for any_heap in (self.by_age, self.delayed, self.reserved, self.waiting):
            any_heap.check_invariants()
