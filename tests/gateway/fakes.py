"""An in-memory `GatewayCore` for front tests: one pretend server `s1`, no network.

It keeps just enough job state for the REST tests (put, reserve with long poll, done,
touch, release, bury, kick, peek, delete, parents, tube controls) and records every call
in `calls`. `fail_with(exc)` makes the next core call raise `exc` (an AllQError, an
ExceptionGroup, anything), to test the error mapping.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

from allq.errors import AllQError, BadFormat, LeaseExpired, NotFound, NotReserved

START = 1_700_000_000.0


@dataclass
class FakeJob:
    id: str
    tube: str
    body: bytes
    priority: int = 5
    ttr: float = 60.0
    state: str = "ready"
    created_at: float = START
    due_at: float | None = None
    lease: str | None = None
    ttr_deadline: float | None = None
    parent_id: str | None = None
    shard_key: str | None = None
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("reserves", "timeouts", "releases", "buries", "kicks"), 0
        )
    )

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tube": self.tube,
            "state": self.state,
            "body": self.body,
            "priority": self.priority,
            "ttr": self.ttr,
            "created_at": self.created_at,
            "shard_key": self.shard_key,
            "parent_id": self.parent_id,
            **self.counters,
            "due_at": self.due_at if self.state == "delayed" else None,
        }


class FakeCore:
    """Implements `allq.gateway.core.GatewayCore` in memory."""

    def __init__(self) -> None:
        self.clock = START
        self.jobs: dict[str, FakeJob] = {}
        self.keys: dict[str, str] = {}
        self.calls: list[tuple[str, Any]] = []
        self.settings: dict[str, dict[str, Any]] = {}
        self.server_list: list[dict[str, Any]] = [
            {
                "id": "s1",
                "address": "127.0.0.1:7700",
                "state": "up",
                "rtt_ms": 0.1,
                "last_ok_at": START,
                "last_error": None,
                "jobs": 0,
            }
        ]
        self.is_ready: tuple[bool, str] = (True, "")
        self._failure: BaseException | None = None
        self._changed = trio.Event()
        self._seq = 0

    # -- helpers ---------------------------------------------------------------------------
    def fail_with(self, exc: BaseException) -> None:
        self._failure = exc

    def _enter(self, name: str, args: Any) -> None:
        self.calls.append((name, args))
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise exc

    def _new_id(self) -> str:
        self._seq += 1
        return f"s1,{self._seq:022d}"

    def _job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", field="job_id")
        return job

    def _check_lease(self, job: FakeJob, lease: str | None) -> None:
        if lease is not None and job.lease != lease:
            raise LeaseExpired(f"lease {lease} is not the current lease", field="lease")
        if job.state != "reserved":
            raise NotReserved(f"job {job.id} is not reserved")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def now(self) -> float:
        return self.clock

    # -- jobs ------------------------------------------------------------------------------
    def _put(self, tube: str, fields: dict[str, Any], state: str = "ready") -> dict[str, Any]:
        key = fields.get("idempotency_key")
        if key is not None and key in self.keys:
            old = self.keys[key]
            return {"id": old, "state": self.jobs[old].state, "duplicate": True}
        if fields.get("priority") == 666:  # a server-side rejection the REST layer can't see
            raise BadFormat("priority 666 is refused by the fake", field="priority")
        job = FakeJob(
            self._new_id(),
            tube,
            fields.get("body", b""),
            priority=fields.get("priority", 5),
            ttr=fields.get("ttr", 60.0),
            state=state,
            created_at=self.clock,
            parent_id=fields.get("parent_id"),
            shard_key=fields.get("shard_key"),
        )
        delay = fields.get("delay")
        if state == "ready" and delay:
            job.state, job.due_at = "delayed", self.clock + delay
        self.jobs[job.id] = job
        if key is not None:
            self.keys[key] = job.id
        self._wake()
        return {"id": job.id, "state": job.state, "duplicate": False}

    async def put(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._enter("put", (tube, fields))
        return self._put(tube, fields)

    async def put_batch(self, tube: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._enter("put_batch", (tube, items))
        results: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            try:
                results.append(self._put(tube, item))
            except AllQError as exc:
                if exc.field is not None:
                    exc.field = f"jobs[{i}].{exc.field}"
                results.append({"error": exc.to_record()})
        return results

    async def put_parent(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._enter("put_parent", (tube, fields))
        return self._put(tube, fields, state="waiting")

    def _take(self, tubes: list[str], count: int) -> list[dict[str, Any]]:
        ready = sorted(
            (job for job in self.jobs.values() if job.state == "ready" and job.tube in tubes),
            key=lambda job: (job.priority, job.id),
        )
        views = []
        for job in ready[:count]:
            job.state = "reserved"
            job.lease = secrets.token_urlsafe(16)
            job.ttr_deadline = self.clock + job.ttr
            job.counters["reserves"] += 1
            views.append({**job.view(), "lease": job.lease, "ttr_deadline": job.ttr_deadline})
        return views

    async def reserve(
        self, tubes: list[str], *, count: int = 1, wait_s: float = 0.0
    ) -> list[dict[str, Any]]:
        self._enter("reserve", (tubes, count, wait_s))
        with trio.move_on_after(wait_s):
            while True:
                views = self._take(tubes, count)
                if views or wait_s <= 0:
                    return views
                await self._changed.wait()
        return []

    async def done_many(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        self._enter("done_many", items)
        results: list[dict[str, Any]] = []
        for job_id, lease in items:
            try:
                self._done(job_id, lease)
                results.append({"id": job_id, "state": "gone"})
            except AllQError as exc:
                results.append({"id": job_id, "error": exc.to_record()})
        return results

    def _done(self, job_id: str, lease: str | None) -> None:
        job = self._job(job_id)
        self._check_lease(job, lease)
        del self.jobs[job_id]

    async def job_op(self, op: str, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._enter("job_op", (op, job_id, fields))
        job = self._job(job_id)
        lease = fields.get("lease")
        if op == "done":
            self._done(job_id, lease)
            return {}
        if op == "touch":
            self._check_lease(job, lease)
            job.ttr_deadline = self.clock + job.ttr
            return {"ttr_deadline": job.ttr_deadline}
        if op == "release":
            self._check_lease(job, lease)
            job.priority = fields.get("priority", job.priority)
            job.lease = job.ttr_deadline = None
            job.counters["releases"] += 1
            if fields.get("delay"):
                job.state, job.due_at = "delayed", self.clock + fields["delay"]
            else:
                job.state = "ready"
            self._wake()
            return {"state": job.state}
        if op == "bury":
            self._check_lease(job, lease)
            job.priority = fields.get("priority", job.priority)
            job.state, job.lease, job.ttr_deadline = "buried", None, None
            job.counters["buries"] += 1
            return {"state": "buried"}
        if op == "kick_job":
            if job.state not in ("buried", "delayed"):
                raise NotFound(f"job {job_id} cannot be kicked", field="job_id")
            job.state, job.due_at = "ready", None
            job.counters["kicks"] += 1
            self._wake()
            return {"state": "ready"}
        if op == "delete":
            if lease is not None and job.lease != lease:
                raise LeaseExpired("lease mismatch", field="lease")
            del self.jobs[job_id]
            return {"previous_state": job.state}
        if op == "peek":
            return job.view()
        if op == "stats_job":
            left = (job.ttr_deadline or self.clock) - self.clock
            return {"id": job.id, "time_left_s": left}
        if op == "set_children_started":
            if job.state != "waiting":
                raise NotFound(f"job {job_id} is not a waiting parent", field="job_id")
            return {"limit": 0, "children_started": 0, "children_completed": 0, "state": "ready"}
        raise AssertionError(op)

    # -- tubes -----------------------------------------------------------------------------
    async def peek_tube(self, tube: str, state: str) -> dict[str, Any]:
        self._enter("peek_tube", (tube, state))
        for job in sorted(self.jobs.values(), key=lambda job: (job.priority, job.id)):
            if job.tube == tube and job.state == state:
                return job.view()
        raise NotFound(f"no {state} job in {tube}")

    async def kick(self, tube: str, bound: int) -> int:
        self._enter("kick", (tube, bound))
        kicked = 0
        for job in self.jobs.values():
            if kicked < bound and job.tube == tube and job.state == "buried":
                job.state = "ready"
                kicked += 1
        return kicked

    async def tube_control(self, op: str, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._enter("tube_control", (op, tube, fields))
        if op == "set_shard_limit" and not tube.startswith("fq-"):
            raise BadFormat(f"tube {tube!r} is not fair", field="tube")
        self.settings.setdefault(tube, {})[op] = fields
        if op == "clear":
            counts = dict.fromkeys(("ready", "delayed", "reserved", "buried", "waiting"), 0)
            for job_id, job in list(self.jobs.items()):
                if job.tube == tube:
                    counts[job.state] += 1
                    del self.jobs[job_id]
            return {"servers": 1, **counts}
        if op == "throttle":
            return {"servers": 1, "per_server": {"s1": fields["tps"]}}
        return {"servers": 1}

    def _counts(self, tube: str) -> dict[str, int]:
        counts = dict.fromkeys(("ready", "reserved", "delayed", "buried", "waiting"), 0)
        for job in self.jobs.values():
            if job.tube == tube:
                counts[job.state] += 1
        return counts

    async def tube_stats(self, tube: str) -> dict[str, Any]:
        self._enter("tube_stats", tube)
        if not any(job.tube == tube for job in self.jobs.values()):
            raise NotFound(f"no tube {tube}", field="tube")
        counts = self._counts(tube)
        return {"name": tube, **counts, "servers": {"s1": {"name": tube, **counts}}}

    async def list_tubes(self) -> list[dict[str, Any]]:
        self._enter("list_tubes", None)
        names = sorted({job.tube for job in self.jobs.values()})
        return [{"name": name, **self._counts(name)} for name in names]

    async def stats(self) -> dict[str, Any]:
        self._enter("stats", None)
        return {"jobs": {"total": len(self.jobs)}, "tubes": {}, "servers": {}}

    # -- cluster ---------------------------------------------------------------------------
    def servers(self) -> list[dict[str, Any]]:
        self._enter("servers", None)
        return self.server_list

    async def add_server(self, address: str, name: str | None = None) -> dict[str, Any]:
        self._enter("add_server", (address, name))
        sid = name or address.replace(":", "-").replace(".", "-")
        return {"id": sid, "address": address, "state": "up"}

    async def drain_server(self, server_id: str) -> dict[str, Any]:
        self._enter("drain_server", server_id)
        if server_id != "s1":
            raise NotFound(f"no server {server_id}")
        return {"id": server_id, "state": "draining"}

    async def remove_server(self, server_id: str, *, force: bool = False) -> dict[str, Any]:
        self._enter("remove_server", (server_id, force))
        if server_id != "s1":
            raise NotFound(f"no server {server_id}")
        return {"id": server_id, "removed": True}

    def ready(self) -> tuple[bool, str]:
        return self.is_ready
