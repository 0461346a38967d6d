"""P9 of persistence.md §12: a Hypothesis state machine over the engine, the log writer and
the storage double, with clean restarts, power losses, torn tails and compaction.

Rules: the real `Engine` (explicit `now`, change log on) runs puts (delays, priorities,
idempotency keys, batches, parents and children), reserves, done/release/bury/touch/
delete/unreserve, kicks, clears and tube settings; each accepted request's changes go to the
real `LogWriter` as one record and are committed (acknowledged) as `EngineShell.call` does,
each tick's changes as one record never waited on. The writer runs in a Trio loop with a
`MockClock` in a thread of its own, its storage calls inline, over `MemoryStorage`. Engine
time moves only in `advance`; the writer's clock only in `sync` (one sync interval: the
`interval` mode's fdatasync). `restart` is a clean shutdown (optionally leaving a torn
record at the tail, as a process killed inside `os.write` does) followed by recovery and
`restore` into a fresh engine; `power_loss` keeps what `MemoryStorage.survivor()` keeps
(synced bytes plus a random prefix of the rest, optionally zero-filled); `compact` closes
the active segment and writes a snapshot.

Invariants: after a restart the recovered engine's persistent state (`dump`: every job field
incl. body, priority, counters, absolute times, state and ordering numbers, parents and
child counts; tube settings; idempotency records) equals the state before it with reserved
jobs back in ready, `reserves` at most the live count, and the torn bytes dropped exactly;
after a power loss it equals the state after some record at or after the last sync point
the writer reported (under `always`: at or after the last acknowledged request). Recovery
never fails, finds no orphans, leaves every file synced; `check_invariants()` holds and the
sequence counters stay above every ordering number after every step.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio.lowlevel
import trio.testing
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from allq.errors import AllQError
from allq.store.compaction import compact
from allq.store.format import (
    encode_record,
    log_name,
    parse_name,
)
from allq.store.log import LogWriter, SyncMode, open_log_writer
from allq.store.recovery import Recovered, recover
from allq.store.storage import MemoryStorage, write_all
from allq.tubes.changes import (
    Change,
    dump,
)
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.job import JobState
from allq.tubes.replay import restore
from tests.helpers.engines import START, CounterBytes
from tests.store.builders import put as put_change

T = TypeVar("T")

SERVER = "s1"
VERSION = "test"
WINDOW = 30  # dedup_window: keys expire within a run
CONFIG = EngineConfig(server_id=SERVER, dedup_window=WINDOW)
INTERVAL_MS = 50
TUBES = ["a", "b", "fq-c"]
KEYS = ["k0", "k1", "k2"]
MAX_LIVE = 25

priorities = st.sampled_from([0, 5, 5, 1023, 4_294_967_295])
bodies = st.binary(max_size=40) | st.just(b"B" * 700)  # large ones make segments rotate
delays = st.sampled_from([0, 0, 0, 1, 3.5])
keys = st.none() | st.sampled_from(KEYS)
actions = st.sampled_from(
    ["done", "done", "release", "release_later", "bury", "touch", "delete", "unreserve"]
)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Storage calls on the Trio thread, so the mock clock never moves while one runs."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


class TrioLoop:
    """A Trio run under a `MockClock` in its own thread; the (synchronous) machine calls in."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="persistence-machine")
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve, clock=self.clock)
        except Exception as exc:  # re-raised by close()
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._thread.is_alive() and self._error is None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
        if self._error is not None:
            raise self._error


# -- the persistent state -------------------------------------------------------------------


def persistent(changes: list[Change], now: float) -> tuple[dict[str, object], dict[str, int]]:
    """What §6.3 promises to bring back from `dump()` output, as seen at `now`, and each
    job's `reserves` apart (a restart may under-count reservations no transition followed).

    Pause ends and idempotency expiry are decided by the absolute times (§4): a pause that
    ended by `now` is no pause, a key whose window passed is no record.
    """
    tubes: dict[str, dict[str, object]] = {}
    jobs: dict[str, dict[str, object]] = {}
    reserves: dict[str, int] = {}
    records: dict[str, tuple[object, object]] = {}
    for change in changes:
        kind = change["t"]
        if kind == "tube":
            tube = {k: v for k, v in change.items() if k not in ("t", "tube")}
            until = tube["pause_until"]
            if tube["paused"] and until is not None and until <= now:
                tube.update(paused=False, pause_until=None)
            if (
                tube["paused"]
                or tube["throttle_tps"] is not None
                or tube["draining"]
                or tube["shard_reservation_limit"] is not None
            ):
                tubes[change["tube"]] = tube
        elif kind == "put":
            job = {k: v for k, v in change.items() if k not in ("t", "reserves")}
            jobs[change["id"]] = job
            reserves[change["id"]] = change["reserves"]
        elif kind == "idem":
            if change["first_seen"] + WINDOW > now:
                records[change["key"]] = (change["id"], change["first_seen"])
        else:
            raise AssertionError(f"dump() wrote a {kind} change")
    return {"tubes": tubes, "jobs": jobs, "keys": records}, reserves


def differences(expected: dict[str, object], got: dict[str, object]) -> list[str]:
    out: list[str] = []
    for part in ("tubes", "jobs", "keys"):
        old, new = expected[part], got[part]
        assert isinstance(old, dict)
        assert isinstance(new, dict)
        out.extend(
            f"{part}[{name!r}]: {old.get(name)!r} -> {new.get(name)!r}"
            for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name)
        )
    return out


def check_sequences(engine: Engine) -> None:
    """Every ordering number is at or below its counter, so new ones sort after it."""
    seqs = engine.sequences()
    for job in engine.jobs.values():
        if job.state is JobState.READY:
            assert job.ready_seq <= seqs["ready"], job.id
        elif job.state is JobState.RESERVED:
            assert job.prev_ready_seq <= seqs["ready"], job.id
        elif job.state is JobState.BURIED:
            assert job.buried_seq <= seqs["bury"], job.id
        else:
            assert job.put_seq <= seqs["put"], job.id


# -- the machine ------------------------------------------------------------------------------


class PersistenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = TrioLoop()
        self.random = CounterBytes()  # shared by every engine: ids are never reused
        self.now = START
        self.mode: SyncMode = "interval"
        self.segment_bytes = 4096
        self.storage = MemoryStorage()
        self.engine = Engine(CONFIG, random_bytes=self.random, now=START)
        self.writer: LogWriter | None = None
        self._writer_scope: trio.CancelScope | None = None
        self._writer_closed: trio.Event | None = None
        # per writer: the dump after each record (0: as recovered) and the record's end
        self.history: list[list[Change]] = []
        self.ends: list[int] = []
        self.acked = 0  # index of the last acknowledged record
        self.held: dict[str, str] = {}  # job id -> lease
        self.parents: list[str] = []
        self.ids: set[str] = set()

    def teardown(self) -> None:
        try:
            if self.writer is not None:
                self.loop.run(self._close_writer)
        finally:
            self.loop.close()

    # -- plumbing (runs in the Trio thread) ------------------------------------------------

    async def _open_writer(self, recovered: Recovered) -> None:
        closed = trio.Event()

        async def run(
            task_status: trio.TaskStatus[tuple[LogWriter, trio.CancelScope]],
        ) -> None:
            try:
                with trio.CancelScope() as scope:
                    async with open_log_writer(
                        self.storage,
                        server_id=recovered.server_id or SERVER,
                        version=VERSION,
                        seqs=lambda: self.engine.sequences(),
                        first_seq=recovered.next_seq,
                        prev=recovered.prev,
                        sync=self.mode,
                        sync_interval_ms=INTERVAL_MS,
                        segment_bytes=self.segment_bytes,
                        base_bytes=recovered.log_bytes,
                        base_segments=recovered.segments,
                        wall_ms=lambda: 1_700_000_000_000,
                        to_thread=inline,
                    ) as writer:
                        task_status.started((writer, scope))
                        await trio.sleep_forever()
            finally:
                closed.set()

        self.writer, self._writer_scope = await self.loop.nursery.start(run)
        self._writer_closed = closed
        await trio.testing.wait_all_tasks_blocked()

    async def _close_writer(self) -> None:
        """A clean shutdown: the writer finishes a switch, fdatasyncs and closes."""
        assert self._writer_scope is not None
        assert self._writer_closed is not None
        self._writer_scope.cancel()
        await self._writer_closed.wait()
        self.writer = None

    async def _boot(self) -> Recovered:
        """Recover the storage into a fresh engine at `now` and open a new writer."""
        storage = self.storage
        storage.unlock()  # the previous process is gone
        recovered = recover(storage, server_id=SERVER)
        assert recovered.orphan_changes == 0, recovered.warnings
        for name in storage.list():
            if parse_name(name) is not None:
                assert storage.unsynced_bytes(name) == 0, f"{name} not durable after recovery"
        engine = Engine(CONFIG, random_bytes=self.random, now=self.now)
        assert restore(engine, recovered.changes) == 0
        engine.restore_sequences(recovered.seqs)
        engine.changelog.enabled = True
        self.engine = engine
        self.held.clear()
        await self._open_writer(recovered)
        self.history = [dump(engine)]
        self.ends = [0]
        self.acked = 0
        return recovered

    async def _first_tick(self) -> None:
        """What the shell's timer tasks do at once after a start: timers that came due
        during the outage fire (delays, parent timeouts, pause ends), logged as one record."""
        await self._tick()
        self.engine.check_invariants()

    async def _append(self, changes: list[Change], *, acknowledge: bool) -> None:
        writer = self.writer
        assert writer is not None
        if changes:
            position = writer.append(changes)
            self.history.append(dump(self.engine))
            self.ends.append(position)
            if acknowledge:
                await writer.commit(position)
                self.acked = len(self.history) - 1
        await trio.testing.wait_all_tasks_blocked()  # the syncer and a rotation catch up

    async def _request(self, op: str, args: dict[str, object]) -> Any:
        engine = self.engine
        try:
            result = engine.handle(op, args, self.now)
        except AllQError as error:
            engine.take_effects()
            assert engine.take_changes() == [], f"rejected {op} wrote changes"
            return error
        assert engine.take_effects() == []  # no waiters in this machine
        await self._append(engine.take_changes(), acknowledge=True)
        return result

    def request(self, op: str, **args: object) -> Any:
        return self.loop.run(self._request, op, args)

    def synced_index(self) -> int:
        """The last record the writer reports covered by an fdatasync."""
        writer = self.writer
        assert writer is not None
        synced = self.ends[-1] - self.loop.run_sync(writer.statistics).unsynced_bytes
        return max(i for i, end in enumerate(self.ends) if end <= synced)

    def live(self, index: int) -> str | None:
        ids = sorted(self.engine.jobs)
        return ids[index % len(ids)] if ids else None

    def note_put(self, result: Any) -> None:
        if isinstance(result, dict) and "id" in result and not result.get("duplicate"):
            job_id = str(result["id"])
            assert job_id not in self.ids, f"job id {job_id} reused"
            self.ids.add(job_id)

    # -- setup -------------------------------------------------------------------------------

    @initialize(
        mode=st.sampled_from(["interval", "interval", "always", "never"]),
        segment_bytes=st.sampled_from([1200, 4096, 1 << 20]),
        seed=st.integers(0, 2**32 - 1),
    )
    def start(self, mode: SyncMode, segment_bytes: int, seed: int) -> None:
        self.mode = mode
        self.segment_bytes = segment_bytes
        self.storage = MemoryStorage(seed)
        self.loop.run(self._boot)
        self.loop.run(self._first_tick)

    # -- rules: puts -------------------------------------------------------------------------

    @precondition(lambda self: len(self.engine.jobs) < MAX_LIVE)
    @rule(
        tube=st.sampled_from(TUBES),
        body=bodies,
        priority=priorities,
        delay=delays,
        key=keys,
        ttr=st.sampled_from([1, 5, 60]),
        child=st.none() | st.integers(0, 100),
    )
    def put(
        self,
        tube: str,
        body: bytes,
        priority: int,
        delay: float,
        key: str | None,
        ttr: int,
        child: int | None,
    ) -> None:
        args: dict[str, object] = {
            "tube": tube,
            "body": body,
            "priority": priority,
            "delay": delay,
            "ttr": ttr,
            "expired_limit": 2,
            "max_releases": 2,
        }
        if key is not None:
            args["idempotency_key"] = key
        if tube.startswith("fq-"):
            args["shard_key"] = f"s{priority % 3}"
        if child is not None and self.parents:
            args["parent_id"] = self.parents[child % len(self.parents)]
        self.note_put(self.request("put", **args))

    @precondition(lambda self: len(self.engine.jobs) < MAX_LIVE)
    @rule(
        items=st.lists(
            st.tuples(st.sampled_from(TUBES), bodies, priorities, delays, keys),
            min_size=1,
            max_size=4,
        )
    )
    def put_batch(self, items: list[tuple[str, bytes, int, float, str | None]]) -> None:
        jobs: list[dict[str, object]] = []
        for tube, body, priority, delay, key in items:
            job: dict[str, object] = {"tube": tube, "body": body, "priority": priority}
            job.update(delay=delay, ttr=2)
            if key is not None:
                job["idempotency_key"] = key
            if tube.startswith("fq-"):
                job["shard_key"] = "s0"
            jobs.append(job)
        results = self.request("put_batch", jobs=jobs)
        if isinstance(results, list):
            for result in results:
                self.note_put(result)

    @precondition(lambda self: len(self.engine.jobs) < MAX_LIVE)
    @rule(
        tube=st.sampled_from(TUBES),
        timeout=st.sampled_from([2, 10, 60]),
        noop=st.booleans(),
        limit=st.none() | st.integers(1, 2),
        run_on_timeout=st.booleans(),
        on_child_failure=st.sampled_from(["wait", "bury"]),
        key=keys,
    )
    def put_parent(
        self,
        tube: str,
        timeout: int,
        noop: bool,
        limit: int | None,
        run_on_timeout: bool,
        on_child_failure: str,
        key: str | None,
    ) -> None:
        args: dict[str, object] = {
            "tube": tube,
            "body": b"parent",
            "timeout": timeout,
            "noop": noop,
            "run_on_timeout": run_on_timeout,
            "on_child_failure": on_child_failure,
        }
        if limit is not None:
            args["limit"] = limit
        if key is not None:
            args["idempotency_key"] = key
        if tube.startswith("fq-"):
            args["shard_key"] = "s1"
        result = self.request("put_parent", **args)
        self.note_put(result)
        if isinstance(result, dict) and "id" in result:
            self.parents.append(str(result["id"]))

    @precondition(lambda self: self.parents)
    @rule(index=st.integers(0, 100))
    def set_children_started(self, index: int) -> None:
        self.request("set_children_started", job_id=self.parents[index % len(self.parents)])

    # -- rules: workers ----------------------------------------------------------------------

    @rule(tubes=st.lists(st.sampled_from(TUBES), min_size=1, max_size=3), count=st.integers(1, 3))
    def reserve(self, tubes: list[str], count: int) -> None:
        result = self.request("reserve", tubes=tubes, count=count)
        if isinstance(result, list):
            for view in result:
                self.held[str(view["id"])] = str(view["lease"])

    def finish(self, job_id: str, action: str, priority: int | None) -> None:
        """One worker action on a held job, with its lease."""
        lease = self.held[job_id]
        args: dict[str, object] = {"job_id": job_id, "lease": lease}
        if action in ("release", "release_later", "bury") and priority is not None:
            args["priority"] = priority
        if action == "release_later":
            args["delay"] = 2
        result = self.request("release" if action == "release_later" else action, **args)
        job = self.engine.jobs.get(job_id)
        if job is None or job.lease != lease or isinstance(result, AllQError):
            del self.held[job_id]

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 100), action=actions, priority=st.none() | priorities)
    def act(self, index: int, action: str, priority: int | None) -> None:
        """Act on a job reserved in an earlier step (its lease may have expired since)."""
        self.finish(sorted(self.held)[index % len(self.held)], action, priority)

    @rule(
        tubes=st.lists(st.sampled_from(TUBES), min_size=1, max_size=3),
        count=st.integers(1, 3),
        plan=st.lists(st.tuples(actions | st.just("keep"), priorities), min_size=3, max_size=3),
    )
    def work(self, tubes: list[str], count: int, plan: list[tuple[str, int]]) -> None:
        """The worker loop: reserve, then act on each job taken (or keep it)."""
        before = set(self.held)
        self.reserve(tubes, count)
        taken = [job_id for job_id in self.held if job_id not in before]
        for job_id, (action, priority) in zip(taken, plan, strict=False):
            if action != "keep":
                self.finish(job_id, action, priority)

    @precondition(lambda self: self.engine.jobs)
    @rule(index=st.integers(0, 100))
    def delete_any(self, index: int) -> None:
        self.request("delete", job_id=self.live(index))

    @rule(tube=st.sampled_from(TUBES), bound=st.integers(1, 3))
    def kick(self, tube: str, bound: int) -> None:
        self.request("kick", tube=tube, bound=bound)

    @precondition(lambda self: self.engine.jobs)
    @rule(index=st.integers(0, 100))
    def kick_job(self, index: int) -> None:
        self.request("kick_job", job_id=self.live(index))

    @rule(tube=st.sampled_from(TUBES))
    def clear(self, tube: str) -> None:
        self.request("clear", tube=tube)

    @rule(
        tube=st.sampled_from(TUBES),
        setting=st.sampled_from(
            [
                ("pause", {}),
                ("pause", {"duration": 2}),
                ("pause", {"duration": 40}),
                ("unpause", {}),
                ("throttle", {"tps": 0.5}),
                ("throttle", {"tps": 0}),
                ("drain", {}),
                ("undrain", {}),
                ("set_shard_limit", {"limit": 1}),
                ("set_shard_limit", {"limit": 0}),
            ]
        ),
    )
    def tube_setting(self, tube: str, setting: tuple[str, dict[str, object]]) -> None:
        op, extra = setting
        self.request(op, tube=tube, **extra)

    # -- rules: time, sync, restarts ---------------------------------------------------------

    async def _tick(self) -> None:
        assert self.engine.tick(self.now) == []
        await self._append(self.engine.take_changes(), acknowledge=False)

    @rule(step=st.sampled_from([0.5, 1, 2, 5, 31]))
    def advance(self, step: float) -> None:
        """Engine time: delays, TTRs, parent timeouts, pause ends, key expiry fire."""
        self.now += step
        self.loop.run(self._tick)

    async def _sync(self) -> None:
        self.loop.clock.jump(INTERVAL_MS / 1000 * 1.5)
        await trio.testing.wait_all_tasks_blocked()
        if self.mode == "interval":  # under `always` only a waiting request brings a sync
            assert self.writer is not None
            assert self.writer.statistics().unsynced_bytes == 0

    @rule()
    def sync(self) -> None:
        """One sync interval of the writer's clock: the `interval` mode's fdatasync."""
        self.loop.run(self._sync)

    async def _shutdown(self, torn: int | None) -> int:
        """Clean stop; with `torn`, a record cut short at the tail (never acknowledged)."""
        assert self.writer is not None
        active = log_name(self.writer.statistics().active_segment)
        await self._close_writer()
        if torn is None:
            return 0
        record = encode_record([put_change(999_999, body=b"torn" * 50)])
        cut = 1 + torn % (len(record) - 1)
        handle = self.storage.open_append(active)
        try:
            write_all(self.storage, handle, record[:cut])
        finally:
            self.storage.close(handle)
        return cut

    @rule(torn=st.none() | st.integers(0, 10_000))
    def restart(self, torn: int | None) -> None:
        """Clean restart (or `kill -9` inside a write): every change comes back."""
        expected, live_reserves = persistent(dump(self.engine), self.now)
        dropped = self.loop.run(self._shutdown, torn)
        recovered = self.loop.run(self._boot)
        assert recovered.torn_bytes_dropped == dropped
        got, reserves = persistent(dump(self.engine), self.now)
        jobs = got["jobs"]
        assert isinstance(jobs, dict)
        event(f"restart: states {sorted({job['state'] for job in jobs.values()})}")
        assert got == expected, "; ".join(differences(expected, got))
        for job_id, count in reserves.items():
            assert count <= live_reserves[job_id], job_id
        self.loop.run(self._first_tick)

    @rule(zero_fill=st.booleans(), seed=st.integers(0, 2**16))
    def power_loss(self, zero_fill: bool, seed: int) -> None:
        """Power loss: every record up to the last sync point comes back, and nothing else
        than a prefix of the records written after it."""
        floor = self.synced_index()
        if self.mode == "always":
            assert floor >= self.acked
        history = [persistent(changes, self.now) for changes in self.history]
        survivor = self.storage.survivor(zero_fill=zero_fill, seed=seed)
        self.loop.run(self._close_writer)  # its last fdatasync reaches the old storage only
        self.storage = survivor
        recovered = self.loop.run(self._boot)
        got, reserves = persistent(dump(self.engine), self.now)
        matches = [
            index
            for index, (state, counts) in enumerate(history)
            if state == got and all(reserves[j] <= counts[j] for j in reserves)
        ]
        assert matches, "recovered a state no record prefix had: " + "; ".join(
            differences(history[-1][0], got)
        )
        last = len(history) - 1
        event(f"power loss: unsynced records {floor < last}, records lost {max(matches) < last}")
        event(f"power loss: torn {recovered.torn_bytes_dropped > 0}")
        assert max(matches) >= floor, (
            f"lost synced records: recovered the state after record {max(matches)}, "
            f"record {floor} was synced: " + "; ".join(differences(history[floor][0], got))
        )
        self.loop.run(self._first_tick)

    async def _compact(self) -> bool:
        writer = self.writer
        assert writer is not None
        upto = await writer.close_segment()
        result = compact(
            self.storage,
            upto=upto,
            config=CONFIG,
            server_id=SERVER,
            version=VERSION,
            now=self.now,
            wall_ms=lambda: 1_700_000_000_000,
        )
        if result is not None:
            writer.account_compaction(
                removed_bytes=result.removed_bytes,
                removed_segments=result.removed_logs,
                added_bytes=result.snapshot_bytes,
            )
        await trio.testing.wait_all_tasks_blocked()
        return result is not None

    @rule()
    def compaction(self) -> None:
        """A snapshot of everything closed; later restarts read it instead of the logs."""
        event(f"compaction: snapshot written {self.loop.run(self._compact)}")

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.engine.check_invariants()
        check_sequences(self.engine)
        assert self.writer is not None
        assert not self.writer.write_failed
        if self.mode == "always":
            assert self.synced_index() >= self.acked, "an acknowledged record is not synced"


TestPersistenceMachine = PersistenceMachine.TestCase
TestPersistenceMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
