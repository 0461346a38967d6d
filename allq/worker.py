"""`Worker`: run a handler over reserved jobs (operations.md §4), and `allq work`'s loop.

`Worker(client, tubes, handler, concurrency=N, ...)` runs N Trio tasks ("slots"). Each
slot reserves one job at a time (a long poll) and runs the handler on it:

- the handler is async (awaited) or sync (run in a worker thread, `trio.to_thread`);
- while it runs, the job is touched every `touch_every` s (default: half its TTR);
- success: the job is done, folded into the slot's next reserve (one request per job) or
  sent on its own when the worker stops;
- exception: attempt = releases + timeouts + 1 (the job's own counters, so attempts count
  across workers and restarts); below `max_attempts` the job is released with
  delay = `backoff.delay(attempt)`, at `max_attempts` it is buried;
- reserve errors: NO_SERVER / OVERLOADED / INTERNAL / transport errors are retried after
  `Retry-After` or the backoff; BAD_TUBE, BAD_FORMAT and UNAUTHORIZED stop the worker.

Graceful stop (`stop()`, or SIGTERM/SIGINT under `run_until_signalled`): slots stop
reserving at once (a waiting long poll is cancelled: the gateway loses no job), current
jobs get `grace_s` to finish, then their handlers are cancelled (a sync handler's thread is
abandoned) and the jobs released for another worker. A second signal stops at once.

Cancellation: cancelling `run()` from outside cancels everything; finished jobs whose done
was still pending are sent under a short shielded deadline.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import trio

from allq.client import AsyncAllQ, Job
from allq.client.errors import (
    ApiError,
    BadFormat,
    BadTube,
    LeaseExpired,
    NotFound,
    NotReserved,
    TransportError,
    Unauthorized,
)
from allq.client.model import ItemResult

log = logging.getLogger(__name__)

Handler = Callable[[Job], object]
#: Reserve errors that no retry can fix.
FATAL = (BadFormat, BadTube, Unauthorized)
#: Touch/done answers meaning the reservation is gone (expired, or already finished).
GONE = (LeaseExpired, NotReserved, NotFound)
#: Seconds allowed for a done/release/bury after the grace period or on cancellation.
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `base_s * 2**(attempt-1)`, at most `cap_s`.

    `jitter` (0 … 1) removes up to that fraction at random, so failing jobs spread out.
    """

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and self.cap_s >= self.base_s and 0 <= self.jitter <= 1):
            raise ValueError("backoff needs 0 <= base_s <= cap_s and 0 <= jitter <= 1")

    def delay(self, attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), 64)
        seconds = min(self.cap_s, self.base_s * 2.0**exponent)
        if self.jitter:
            seconds *= 1 - self.jitter * random.random()
        return round(seconds, 3)


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker (`Worker.statistics()` returns a copy)."""

    reserved: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    buried: int = 0
    touched: int = 0
    running: int = 0
    abandoned: int = 0


class Worker:
    """Run `handler(job)` over jobs reserved from `tubes` (see the module docstring).

    Args:
        client: the Trio client (the worker does not close it).
        tubes: tubes to reserve from.
        handler: ``def f(job)`` (run in a thread) or ``async def f(job)``; returning
            means success, raising means failure.
        concurrency: jobs handled at once (slots).
        max_attempts: the attempt that fails at this number buries the job.
        backoff: release delay per failed attempt.
        touch_every: seconds between touches while a handler runs (None: TTR / 2).
        reserve_timeout: long-poll wait of each reserve.
        grace_s: how long current jobs may still run after `stop()`.
    """

    def __init__(
        self,
        client: AsyncAllQ,
        tubes: Sequence[str],
        handler: Handler,
        *,
        concurrency: int = 1,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        touch_every: float | None = None,
        reserve_timeout: float = 20.0,
        grace_s: float = 30.0,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        if not tubes:
            raise ValueError("a worker needs at least one tube")
        if touch_every is not None and not touch_every > 0:
            raise ValueError("touch_every must be > 0")
        self.client = client
        self.tubes = list(tubes)
        self.handler = handler
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.touch_every = touch_every
        self.reserve_timeout = reserve_timeout
        self.grace_s = grace_s
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 (an async callable object)
        )
        self._stats = WorkerStats()
        self._threads = trio.CapacityLimiter(concurrency)
        self._stopping = False
        self._grace_deadline = math.inf
        self._reserve_scopes: set[trio.CancelScope] = set()
        self._job_scopes: set[trio.CancelScope] = set()

    # -- control ----------------------------------------------------------------------------

    def statistics(self) -> WorkerStats:
        return replace(self._stats)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Reserve no more; current jobs get `grace_s` to finish. Call from Trio code
        (from a thread: `trio.from_thread.run_sync(worker.stop)`)."""
        if self._stopping:
            return
        self._stopping = True
        self._grace_deadline = trio.current_time() + self.grace_s
        for scope in self._reserve_scopes:
            scope.cancel()
        for scope in self._job_scopes:
            scope.deadline = min(scope.deadline, self._grace_deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the slots until `stop()` and their current jobs are over."""
        log.info(
            "worker: %d slot(s) on %s, max %d attempts",
            self.concurrency,
            ", ".join(self.tubes),
            self.max_attempts,
        )
        async with trio.open_nursery() as nursery:
            for slot in range(self.concurrency):
                nursery.start_soon(self._slot, slot)
            task_status.started()
        log.info("worker stopped: %s", self._stats)

    # -- one slot ---------------------------------------------------------------------------

    async def _slot(self, slot: int) -> None:
        pending: list[Job] = []  # handled successfully, done not yet sent
        try:
            while not self._stopping:
                jobs = await self._reserve(pending)
                for job in jobs:
                    if await self._handle(job):
                        pending.append(job)  # noqa: PERF401 (one job at a time)
        finally:
            if pending:
                with trio.move_on_after(SETTLE_S, shield=True):
                    await self._flush(pending)

    async def _reserve(self, pending: list[Job]) -> list[Job]:
        """One job (or none when stopping), sending the pending dones with the request."""
        failures = 0
        while not self._stopping:
            with trio.CancelScope() as scope:
                self._reserve_scopes.add(scope)
                try:
                    jobs = await self.client.reserve(
                        self.tubes, count=1, timeout=self.reserve_timeout, done=pending
                    )
                    self._check_done(jobs.done)
                    pending.clear()
                    self._stats.reserved += len(jobs)
                    return list(jobs)
                except ApiError as exc:
                    if exc.done is not None:  # the done part happened
                        self._check_done(exc.done)
                        pending.clear()
                    if isinstance(exc, FATAL):
                        raise
                    failures += 1
                    wait = exc.retry_after or self.backoff.delay(failures)
                    log.warning("reserve failed (%s); retrying in %g s", exc, wait)
                    await trio.sleep(wait)
                except TransportError as exc:
                    failures += 1
                    wait = min(self.backoff.delay(failures), 30.0)
                    log.warning("reserve failed (%s); retrying in %g s", exc, wait)
                    await trio.sleep(wait)
                finally:
                    self._reserve_scopes.discard(scope)
        return []

    def _check_done(self, results: list[ItemResult]) -> None:
        for result in results:
            if result.error is not None and not isinstance(result.error, NotFound):
                log.warning("done of job %s failed: %s", result.id, result.error)

    async def _flush(self, pending: list[Job]) -> None:
        try:
            self._check_done(await self.client.done_many(pending))
        except (ApiError, TransportError) as exc:
            log.warning("done of %d job(s) failed: %s", len(pending), exc)
        pending.clear()

    # -- one job ----------------------------------------------------------------------------

    async def _handle(self, job: Job) -> bool:
        """Run the handler on `job`; True on success (done still to send)."""
        error: Exception | None = None
        self._stats.running += 1
        with trio.CancelScope(deadline=self._grace_deadline) as scope:
            self._job_scopes.add(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_touching, job)
                    try:
                        await self._call(job)
                    except Exception as exc:
                        error = exc
                    nursery.cancel_scope.cancel()
            finally:
                self._job_scopes.discard(scope)
                self._stats.running -= 1
        if scope.cancelled_caught:
            self._stats.abandoned += 1
            log.warning(
                "job %s: still running after the %g s grace period; released", job.id, self.grace_s
            )
            await self._settle("release", self.client.release(job, delay=0))
            return False
        if error is None:
            self._stats.succeeded += 1
            return True
        self._stats.failed += 1
        attempt = job.attempt
        if attempt >= self.max_attempts:
            log.warning(
                "job %s failed (attempt %d of %d); burying it",
                job.id,
                attempt,
                self.max_attempts,
                exc_info=error,
            )
            if await self._settle("bury", self.client.bury(job)):
                self._stats.buried += 1
        else:
            delay = self.backoff.delay(attempt)
            log.warning(
                "job %s failed (attempt %d of %d); released with a %g s delay",
                job.id,
                attempt,
                self.max_attempts,
                delay,
                exc_info=error,
            )
            if await self._settle("release", self.client.release(job, delay=delay)):
                self._stats.released += 1
        return False

    async def _call(self, job: Job) -> None:
        if self.is_async:
            result = self.handler(job)
            if inspect.isawaitable(result):
                await result
            return
        await trio.to_thread.run_sync(
            self.handler, job, abandon_on_cancel=True, limiter=self._threads
        )

    async def _settle(self, what: str, request: Awaitable[object]) -> bool:
        try:
            await request
        except GONE as exc:
            log.warning("%s: the reservation is gone (%s)", what, exc)
        except (ApiError, TransportError) as exc:
            log.warning("%s failed: %s", what, exc)
        else:
            return True
        return False

    async def _keep_touching(self, job: Job) -> None:
        interval = self.touch_every or max(job.ttr / 2, 0.1)
        while True:
            await trio.sleep(interval)
            try:
                await self.client.touch(job)
            except GONE as exc:
                log.warning("job %s: the reservation is gone (%s); no more touches", job.id, exc)
                return
            except (ApiError, TransportError) as exc:
                log.warning("job %s: touch failed (%s); trying again", job.id, exc)
            else:
                self._stats.touched += 1


async def run_until_signalled(  # noqa: ASYNC128 (worker.run calls started())
    worker: Worker,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> bool:
    """Run `worker`; the first signal stops it gracefully, a second one at once.

    Returns True when it stopped gracefully, False when a second signal cut it short.
    """
    forced = False
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal forced
                async for signum in received:
                    name = signal.Signals(signum).name
                    if not worker.stopping:
                        log.info(
                            "%s: stopping; finishing %d running job(s), reserving no more",
                            name,
                            worker.statistics().running,
                        )
                        worker.stop()
                    else:
                        log.warning("%s again: stopping now", name)
                        forced = True
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await worker.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the worker is over: stop watching
    return not forced
