"""A naive reference model of the tube engine, for the stateful property test.

Charter: plain lists and dicts and linear scans, written straight from semantics.md so that
each rule is obviously right, with no heaps, indexes or incremental bookkeeping. It covers
puts with priorities and delays, reserve with timeout 0 (one or several tubes, count ≥ 1),
the job operations with the lease table of §7.2, TTR expiry with auto-bury, the release
budget, kick/kick_job, unreserve, pause and fair rotation with a shard limit. It does not
cover waiters, throttle, workflows or idempotency (the scenario tests do).

Every method takes the time already advanced with `advance(now)`. Operations return the
result the engine must return, or raise `ModelError(code)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class MJob:
    id: str
    tube: str
    priority: int
    shard: str | None
    ttr: float
    expired_limit: int
    max_releases: int
    put_order: int
    state: str = "ready"
    seq: int = 0
    prev_seq: int = 0
    due_at: float | None = None
    ttr_deadline: float | None = None
    lease: str | None = None
    reserve_order: int = 0
    buried_order: int = 0
    reserves: int = 0
    timeouts: int = 0
    releases: int = 0
    buries: int = 0
    kicks: int = 0
    timeouts_since_kick: int = 0
    releases_since_kick: int = 0


@dataclass
class MTube:
    fair: bool
    shard_limit: int = 0
    paused: bool = False
    pause_until: float | None = None
    rotation: list[str] = field(default_factory=list)
    total_puts: int = 0
    total_completed: int = 0
    total_timeouts: int = 0
    total_buried: int = 0


class Model:
    def __init__(self, now: float, tubes: dict[str, MTube]) -> None:
        self.now = now
        self.tubes = tubes
        self.jobs: dict[str, MJob] = {}
        self._counter = 0  # one counter for every "order" field: only comparisons matter

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    # -- queries -----------------------------------------------------------------------------

    def in_tube(self, tube: str, state: str) -> list[MJob]:
        return [job for job in self.jobs.values() if job.tube == tube and job.state == state]

    def counts(self, tube: str) -> dict[str, int]:
        return {
            state: len(self.in_tube(tube, state))
            for state in ("ready", "delayed", "reserved", "buried", "waiting")
        }

    def next_deadline(self) -> float | None:
        instants = [job.due_at for job in self.jobs.values() if job.due_at is not None]
        instants += [j.ttr_deadline for j in self.jobs.values() if j.ttr_deadline is not None]
        instants += [t.pause_until for t in self.tubes.values() if t.pause_until is not None]
        return min(instants, default=None)

    def head(self, tube_name: str) -> MJob | None:
        """The job the next reserve on this tube alone would take, ignoring pause."""
        tube = self.tubes[tube_name]
        ready = self.in_tube(tube_name, "ready")
        if not tube.fair:
            return min(ready, key=lambda job: (job.priority, job.seq), default=None)
        for shard in tube.rotation:
            reserved = [j for j in self.in_tube(tube_name, "reserved") if j.shard == shard]
            if tube.shard_limit and len(reserved) >= tube.shard_limit:
                continue
            in_shard = [job for job in ready if job.shard == shard]
            return min(in_shard, key=lambda job: (job.priority, job.seq))
        return None

    # -- state changes ---------------------------------------------------------------------

    def _enter_ready(self, job: MJob, seq: int | None = None) -> None:
        job.state = "ready"
        job.seq = self._next() if seq is None else seq
        job.due_at = None
        tube = self.tubes[job.tube]
        if tube.fair and job.shard not in tube.rotation:
            assert job.shard is not None
            tube.rotation.append(job.shard)

    def _leave_ready(self, job: MJob, *, taken: bool) -> None:
        job.state = "gone"
        tube = self.tubes[job.tube]
        if not tube.fair:
            return
        assert job.shard is not None
        still = any(
            other.shard == job.shard
            for other in self.in_tube(job.tube, "ready")
            if other is not job
        )
        if not still:
            tube.rotation.remove(job.shard)
        elif taken:
            tube.rotation.remove(job.shard)
            tube.rotation.append(job.shard)

    def _leave_reserved(self, job: MJob) -> None:
        job.lease = None
        job.ttr_deadline = None

    def _bury(self, job: MJob) -> None:
        job.state = "buried"
        job.buried_order = self._next()
        job.buries += 1
        self.tubes[job.tube].total_buried += 1

    def advance(self, now: float) -> None:
        """Run every timer due at or before `now`, instant by instant (§8.4)."""
        while True:
            instant = self.next_deadline()
            if instant is None or instant > now:
                break
            for tube in self.tubes.values():
                if tube.pause_until is not None and tube.pause_until <= instant:
                    tube.paused = False
                    tube.pause_until = None
            due = [j for j in self.jobs.values() if j.due_at is not None and j.due_at <= instant]
            for job in sorted(due, key=lambda j: (j.due_at, j.put_order)):
                self._enter_ready(job)
            expired = [
                j
                for j in self.jobs.values()
                if j.ttr_deadline is not None and j.ttr_deadline <= instant
            ]
            for job in sorted(expired, key=lambda j: (j.ttr_deadline, j.reserve_order)):
                self._leave_reserved(job)
                job.timeouts += 1
                job.timeouts_since_kick += 1
                self.tubes[job.tube].total_timeouts += 1
                if job.timeouts_since_kick >= job.expired_limit:
                    self._bury(job)
                else:
                    self._enter_ready(job)
        self.now = max(self.now, now)

    # -- operations ------------------------------------------------------------------------

    def put(
        self,
        job_id: str,
        tube: str,
        *,
        priority: int,
        delay: float,
        shard: str | None,
        ttr: float,
        expired_limit: int,
        max_releases: int,
    ) -> str:
        job = MJob(job_id, tube, priority, shard, ttr, expired_limit, max_releases, self._next())
        self.jobs[job_id] = job
        self.tubes[tube].total_puts += 1
        if delay > 0:
            job.state = "delayed"
            job.due_at = self.now + delay
        else:
            self._enter_ready(job)
        return job.state

    def reserve(self, tubes: list[str], count: int) -> list[MJob]:
        names = list(dict.fromkeys(tubes))
        taken: list[MJob] = []
        for _ in range(count):
            candidates = [
                job
                for name in names
                if not self.tubes[name].paused and (job := self.head(name)) is not None
            ]
            if not candidates:
                break
            job = min(candidates, key=lambda j: (j.priority, j.seq))
            self._leave_ready(job, taken=True)
            job.state = "reserved"
            job.prev_seq = job.seq
            job.reserves += 1
            job.ttr_deadline = self.now + job.ttr
            job.reserve_order = self._next()
            taken.append(job)
        if not taken:
            raise ModelError("TIMED_OUT")
        return taken

    def _checked(self, job_id: str, lease: str | None, *, any_state: bool = False) -> MJob:
        """The lease table of §7.2."""
        job = self.jobs.get(job_id)
        if job is None:
            raise ModelError("NOT_FOUND")
        if lease is not None and lease != job.lease:
            raise ModelError("LEASE_EXPIRED")
        if job.state != "reserved" and not any_state:
            raise ModelError("NOT_RESERVED")
        return job

    def _gone(self, job: MJob) -> None:
        del self.jobs[job.id]

    def done(self, job_id: str, lease: str | None) -> dict[str, object]:
        job = self._checked(job_id, lease)
        self._gone(job)
        self.tubes[job.tube].total_completed += 1
        return {}

    def delete(self, job_id: str, lease: str | None) -> dict[str, object]:
        job = self._checked(job_id, lease, any_state=True)
        previous = job.state
        if previous == "reserved":
            self.tubes[job.tube].total_completed += 1
        elif previous == "ready":
            self._leave_ready(job, taken=False)
        self._gone(job)
        return {"previous_state": previous}

    def touch(self, job_id: str, lease: str | None) -> dict[str, object]:
        job = self._checked(job_id, lease)
        job.ttr_deadline = self.now + job.ttr
        return {"ttr_deadline": job.ttr_deadline}

    def release(
        self, job_id: str, lease: str | None, priority: int | None, delay: float
    ) -> dict[str, object]:
        job = self._checked(job_id, lease)
        self._leave_reserved(job)
        job.releases += 1
        job.releases_since_kick += 1
        if priority is not None:
            job.priority = priority
        if job.releases_since_kick > job.max_releases:
            self._bury(job)
        elif delay > 0:
            job.state = "delayed"
            job.due_at = self.now + delay
        else:
            self._enter_ready(job)
        return {"state": job.state}

    def bury(self, job_id: str, lease: str | None, priority: int | None) -> dict[str, object]:
        job = self._checked(job_id, lease)
        self._leave_reserved(job)
        if priority is not None:
            job.priority = priority
        self._bury(job)
        return {"state": "buried"}

    def unreserve(self, job_id: str, lease: str) -> dict[str, object]:
        job = self._checked(job_id, lease)
        self._leave_reserved(job)
        job.reserves -= 1
        self._enter_ready(job, seq=job.prev_seq)
        return {}

    def _kick(self, job: MJob) -> None:
        job.kicks += 1
        job.timeouts_since_kick = 0
        job.releases_since_kick = 0
        self._enter_ready(job)

    def kick(self, tube: str, bound: int) -> dict[str, object]:
        buried = sorted(self.in_tube(tube, "buried"), key=lambda j: j.buried_order)
        if buried:
            for job in buried[:bound]:
                self._kick(job)
            return {"kicked": min(bound, len(buried)), "from": "buried"}
        delayed = sorted(self.in_tube(tube, "delayed"), key=lambda j: (j.due_at, j.put_order))
        if delayed:
            for job in delayed[:bound]:
                self._kick(job)
            return {"kicked": min(bound, len(delayed)), "from": "delayed"}
        return {"kicked": 0, "from": None}

    def kick_job(self, job_id: str) -> dict[str, object]:
        job = self.jobs.get(job_id)
        if job is None or job.state not in ("buried", "delayed"):
            raise ModelError("NOT_FOUND")
        self._kick(job)
        return {"state": "ready"}

    def pause(self, tube: str, duration: float | None) -> None:
        t = self.tubes[tube]
        if duration == 0:
            t.paused, t.pause_until = False, None
        else:
            t.paused = True
            t.pause_until = None if duration is None else self.now + duration

    def unpause(self, tube: str) -> None:
        t = self.tubes[tube]
        t.paused, t.pause_until = False, None
