"""EngineShell: the Trio shell around the sans-IO engine (design.md §2.3).

It is the only code that reads the clock for the engine and the only owner of its
timers. Tasks, all in the nursery of `run()`:

* one timer task per tube, sleeping until `engine.tube_next_deadline(name)` or a poke,
  started when the engine reports a new tube and ending when the tube is collected;
* one timer task for the engine's own timers (waiter timeouts, deadline-soon, keys).

Sessions call `call()` synchronously (no await between read and write, so each engine
call is atomic under Trio's cooperative scheduling), then the shell delivers the effects
and pokes the timer tasks whose deadline changed. Never polls on a fixed period.

Waiting reserves get a one-slot memory channel. Delivery is `send_nowait`; a waiter
that went away (its channel closed or unregistered) has its jobs put back with
`unreserve` at once, which leaves every counter as it was.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from allq.errors import AllQError, Cancelled, DeadlineSoon, Internal, ShuttingDown, TimedOut
from allq.gcpause import GrowthFreezer
from allq.store.log import WriteFailed
from allq.tubes.engine import Engine, Result
from allq.tubes.events import Delivered, Effect, Waiting, WaitTimedOut

log = logging.getLogger(__name__)

_PUT_OPS = frozenset({"put", "put_batch", "put_parent"})
#: Operations that change nothing: still served after a log write failed (persistence.md §9).
READ_ONLY_OPS = frozenset(
    {"ping", "peek", "peek_ready", "peek_delayed", "peek_buried", "stats", "stats_job",
     "stats_tube", "list_tubes"}
)  # fmt: skip


class Journal(Protocol):
    """Where the engine's changes go before requests are answered (allq.store.LogWriter)."""

    @property
    def write_failed(self) -> bool: ...

    def append(self, changes: Sequence[Mapping[str, object]]) -> int: ...

    async def commit(self, position: int) -> None: ...


JobViews = list[dict[str, object]]
#: What a waiting reserve ends with: the jobs, or the error that ended it.
Outcome = JobViews | AllQError


@dataclass(frozen=True, slots=True)
class UnixClock:
    """`now` in unix seconds from Trio's clock (semantics.md §8.1).

    `now = wall_at_start + (trio.current_time() - trio_at_start)`: monotonic, anchored to
    wall time once. Under `MockClock` it is virtual.
    """

    wall_at_start: float
    trio_at_start: float

    @classmethod
    def start(cls, wall_now: float) -> UnixClock:
        return cls(wall_now, trio.current_time())

    def now(self) -> float:
        return self.wall_at_start + (trio.current_time() - self.trio_at_start)

    def to_trio(self, unix_time: float) -> float:
        if unix_time == math.inf:
            return math.inf
        return unix_time - self.wall_at_start + self.trio_at_start


class EngineShell:
    """Runs an `Engine` inside Trio. See the module docstring."""

    def __init__(self, engine: Engine, clock: UnixClock) -> None:
        self.engine = engine
        self.clock = clock
        self._nursery: trio.Nursery | None = None
        self._pokes: dict[str | None, trio.Event] = {}
        self._waiters: dict[int, trio.MemorySendChannel[Outcome]] = {}
        self._receivers: dict[int, trio.MemoryReceiveChannel[Outcome]] = {}
        self._shutting_down = False
        self.unreserved_on_gone = 0  # jobs given back because their waiter went away
        #: The persistence log (None: memory only). Changes are appended before answers.
        self.journal: Journal | None = None
        #: Free bytes of the log's file system, and the floor below which new jobs are
        #: refused with SERVER_FULL "disk space low" (checked at most once a second).
        self.free_space: Callable[[], int] | None = None
        self.min_free_bytes = 0
        self._space_checked_at = -math.inf
        self.written_position: int | None = None  # end of the last call's record, if any
        #: Keeps full collections off the jobs as the queue grows (allq.gcpause).
        self.freezer = GrowthFreezer()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the timer tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._pokes[None] = trio.Event()
            nursery.start_soon(self._timer_task, None)
            for name in list(self.engine.tubes):
                self._start_tube_timer(name)
            task_status.started()
            await trio.sleep_forever()

    def begin_shutdown(self) -> None:
        """Graceful shutdown: refuse new jobs, answer every waiter with SHUTTING_DOWN."""
        self._shutting_down = True
        self.engine.draining = True
        for waiter in list(self._waiters):
            self.engine.cancel_wait(waiter, self.clock.now())
            self._answer(waiter, ShuttingDown("the server is shutting down"))
        self._after_call()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    # -- engine calls --------------------------------------------------------------------

    def call(self, op: str, args: Mapping[str, object]) -> Result:
        """One engine operation at the current time; effects are delivered before return.

        With a journal, the call's changes are appended as one record before this returns
        (`written_position` is its end, for `durable()`); a failed append answers INTERNAL
        and every later mutation too (persistence.md §9).
        """
        journal = self.journal
        if journal is not None and journal.write_failed and op not in READ_ONLY_OPS:
            raise Internal("persistence failed; restart required")
        self.written_position = None
        if op in _PUT_OPS:
            self._check_space()
        try:
            result = self.engine.handle(op, args, self.clock.now())
        finally:
            failed = not self._write_changes()
            self._after_call()
            self.freezer.note(len(self.engine.jobs))
        if failed:
            raise Internal("persistence failed: the change could not be written; restart required")
        return result

    def _check_space(self) -> None:
        if self.free_space is None or trio.current_time() - self._space_checked_at < 1.0:
            return
        self._space_checked_at = trio.current_time()
        try:
            free = self.free_space()
        except OSError as error:
            log.warning("cannot read free disk space: %s", error)
            return
        low = free < self.min_free_bytes
        if low and self.engine.refuse_new_jobs is None:
            log.warning(
                "disk space low (%d bytes free, floor %d): new jobs are refused with SERVER_FULL",
                free,
                self.min_free_bytes,
            )
            self.engine.refuse_new_jobs = "disk space low"
        elif not low and self.engine.refuse_new_jobs is not None:
            log.info("disk space back above the floor: new jobs are accepted again")
            self.engine.refuse_new_jobs = None

    async def durable(self, position: int) -> None:
        """Wait until the record ending at `position` is as safe as the sync mode promises."""
        assert self.journal is not None
        try:
            await self.journal.commit(position)
        except WriteFailed as failure:
            raise Internal(f"persistence failed: {failure}; restart required") from None

    def _write_changes(self) -> bool:
        """Append what the engine changed since the last append; False if that failed."""
        journal = self.journal
        if journal is None:
            return True
        changes = self.engine.take_changes()
        if not changes:
            return True
        try:
            self.written_position = journal.append(changes)
        except WriteFailed as failure:
            log.error("persistence failed, every change is refused until restart: %s", failure)
            return False
        return True

    def unreserve(self, jobs: JobViews) -> None:
        """Give delivered jobs back (R10); a job that moved on meanwhile is left alone."""
        for job in jobs:
            try:
                self.call("unreserve", {"job_id": job["id"], "lease": job["lease"]})
            except AllQError as error:  # expired or finished meanwhile: nothing to return
                log.debug("unreserve of %s skipped: %s", job["id"], error.code)
            else:
                self.unreserved_on_gone += 1

    async def reserve(
        self, args: Mapping[str, object], *, on_wait: Callable[[int], None] | None = None
    ) -> JobViews:
        """A reserve that may block until jobs, TIMED_OUT, DEADLINE_SOON or cancellation.

        Cancellation: if the caller is cancelled while waiting, the waiter is withdrawn and
        any jobs already put in its channel are given back with `unreserve`, so no job is
        lost or left reserved (the timeout-versus-delivery race of design.md §2.3).
        """
        started = self.begin_reserve(args)
        if isinstance(started, list):
            return started
        if on_wait is not None:
            on_wait(started)
        return await self.wait_reserve(started)

    def begin_reserve(self, args: Mapping[str, object]) -> JobViews | int:
        """The synchronous half of `reserve`: the jobs at once, or a waiter id.

        A waiter id must be passed to `wait_reserve` right away (by a task started for
        it); that call owns the waiter from then on and withdraws it when it ends.
        """
        if self._shutting_down:
            raise ShuttingDown("the server is shutting down")
        result = self.call("reserve", args)
        if not isinstance(result, Waiting):
            assert isinstance(result, list)
            return result
        send, receive = trio.open_memory_channel[Outcome](1)
        self._waiters[result.waiter] = send
        self._receivers[result.waiter] = receive
        return result.waiter

    async def wait_reserve(self, waiter: int) -> JobViews:
        """Wait for the outcome of a waiter from `begin_reserve` (see `reserve`)."""
        receive = self._receivers.pop(waiter)
        with receive:
            try:
                outcome = await receive.receive()
            finally:
                self._withdraw(waiter, receive)
        if isinstance(outcome, AllQError):
            raise outcome
        return outcome

    def cancel_reserve(self, waiter: int) -> bool:
        """End a waiting reserve with CANCELLED; False if it was already answered."""
        if waiter not in self._waiters:
            return False
        self.engine.cancel_wait(waiter, self.clock.now())
        self._answer(waiter, Cancelled("the reserve was cancelled"))
        self._after_call()
        return True

    def _withdraw(self, waiter: int, receive: trio.MemoryReceiveChannel[Outcome]) -> None:
        """Withdraw a waiter whose requester is done or gone; give back undelivered jobs."""
        if self._waiters.pop(waiter, None) is not None:
            self.engine.cancel_wait(waiter, self.clock.now())
            self._after_call()
        try:
            leftover = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        if isinstance(leftover, list):
            self.unreserve(leftover)

    # -- effects and timers ------------------------------------------------------------------

    def _after_call(self) -> None:
        self._write_changes()  # whatever changed (a tick, a withdrawn waiter) is logged first
        engine = self.engine
        while True:
            effects = engine.take_effects()
            if not effects:
                break
            for effect in effects:
                self._deliver(effect)
        for name in engine.take_timer_changes():
            event = self._pokes.get(name)
            if event is not None:
                event.set()
            elif name is not None and engine.has_tube(name):
                self._start_tube_timer(name)

    def _deliver(self, effect: Effect) -> None:
        if isinstance(effect, Delivered):
            if not self._answer(effect.waiter, effect.jobs):
                self.unreserve(effect.jobs)
        elif isinstance(effect, WaitTimedOut):
            self._answer(effect.waiter, TimedOut("no job arrived before the timeout"))
        else:
            self._answer(
                effect.waiter, DeadlineSoon("a reservation of this owner is due within 1 s")
            )

    def _answer(self, waiter: int, outcome: Outcome) -> bool:
        send = self._waiters.pop(waiter, None)
        if send is None:
            return False
        try:
            send.send_nowait(outcome)
        except (trio.BrokenResourceError, trio.WouldBlock):
            return False
        return True

    def _start_tube_timer(self, name: str) -> None:
        if self._nursery is None or name in self._pokes:
            return
        self._pokes[name] = trio.Event()
        self._nursery.start_soon(self._timer_task, name)

    def _deadline(self, name: str | None) -> float:
        if name is None:
            return self.engine.own_next_deadline()
        return self.engine.tube_next_deadline(name)

    async def _timer_task(self, name: str | None) -> None:
        """Sleep until this tube's (or the engine's own) next deadline or a poke; tick."""
        engine = self.engine
        try:
            while name is None or engine.has_tube(name):
                poke = self._pokes[name]
                if poke.is_set():
                    poke = self._pokes[name] = trio.Event()
                with trio.move_on_at(self.clock.to_trio(self._deadline(name))):
                    await poke.wait()
                now = self.clock.now()
                if self._deadline(name) <= now:
                    for effect in engine.tick(now):
                        self._deliver(effect)
                self._after_call()  # a tick's transitions: one record, never waited on
        finally:
            self._pokes.pop(name, None)

    def statistics(self) -> dict[str, int]:
        return {
            "timer_tasks": len(self._pokes),
            "waiting_reserves": len(self._waiters),
            "unreserved_on_gone": self.unreserved_on_gone,
        }
