"""`allq.worker` against a real embedded cluster, and `allq work` as a real process.

Rules: real sockets and real time under generous `trio.fail_after`; progress is observed
through the queue (job states and counters) or through files the handler writes, never
through sleeps. The only sleep in a handler is the work itself (a job outliving its TTR).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from allq.client import AsyncAllQ, Job, NotFound
from allq.worker import Backoff, Worker
from tests.client_support import serving_gateway
from tests.helpers.processes import AllqProcess

ROOT = Path(__file__).resolve().parent.parent


async def until(condition: Callable[[], object], limit_s: float = 20.0) -> None:
    """Wait for a condition observable only by polling (a file, a counter)."""
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110 (no event crosses the process boundary)
            await trio.sleep(0.02)


async def state_of(q: AsyncAllQ, job_id: str) -> str:
    try:
        return (await q.get(job_id)).state
    except NotFound:
        return "gone"


async def wait_state(q: AsyncAllQ, job_id: str, wanted: str, limit_s: float = 20.0) -> None:
    with trio.fail_after(limit_s):
        while await state_of(q, job_id) != wanted:  # noqa: ASYNC110 (polling the API)
            await trio.sleep(0.02)


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=3.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = Backoff(base_s=10, cap_s=10, jitter=0.5)
    assert all(5.0 <= jittered.delay(1) <= 10.0 for _ in range(50))
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_s=2, cap_s=1)


async def test_a_failing_job_is_released_with_backoff_then_buried(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            attempts: list[tuple[int, float]] = []

            async def handler(job: Job) -> None:
                attempts.append((job.attempt, trio.current_time()))
                raise RuntimeError("boom")

            worker = Worker(
                q,
                ["fail"],
                handler,
                max_attempts=3,
                backoff=Backoff(base_s=0.4, cap_s=10),
                reserve_timeout=1,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                put = await q.put("fail", b"x")
                await wait_state(q, put.id, "buried")
                worker.stop()
            assert [n for n, _ in attempts] == [1, 2, 3]
            (_, t1), (_, t2), (_, t3) = attempts
            assert t2 - t1 >= 0.4  # released with backoff(1)
            assert t3 - t2 >= 0.8  # released with backoff(2)
            job = await q.get(put.id)
            assert (job.releases, job.buries, job.timeouts) == (2, 1, 0)
            stats = worker.statistics()
            assert (stats.failed, stats.released, stats.buried, stats.succeeded) == (3, 2, 1, 0)


async def test_sync_handlers_run_concurrently_and_finish_jobs(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            seen: list[bytes] = []

            def handler(job: Job) -> None:  # runs in a worker thread
                seen.append(job.body)

            worker = Worker(q, ["ok"], handler, concurrency=3, reserve_timeout=1)
            results = await q.put_many("ok", [f"{i}".encode() for i in range(10)])
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await until(lambda: len(seen) == 10)
                worker.stop()
            # every done was sent (folded into a reserve, or flushed on stop)
            assert [await state_of(q, r.id or "") for r in results] == ["gone"] * 10
            assert sorted(seen) == sorted(f"{i}".encode() for i in range(10))
            assert worker.statistics().succeeded == 10


async def test_a_job_longer_than_its_ttr_is_touched(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            finished = trio.Event()

            async def handler(job: Job) -> None:
                await trio.sleep(2.5)  # the work: 2.5 TTRs
                finished.set()

            worker = Worker(q, ["slow"], handler, reserve_timeout=1)
            put = await q.put("slow", b"x", ttr=1)
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await finished.wait()
                await wait_state(q, put.id, "gone")
                worker.stop()
            stats = worker.statistics()
            assert stats.touched >= 3
            assert (stats.reserved, stats.succeeded) == (1, 1)


async def test_stop_finishes_the_current_job_and_reserves_no_more(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            started, proceed = trio.Event(), trio.Event()

            async def handler(job: Job) -> None:
                started.set()
                await proceed.wait()

            worker = Worker(q, ["g"], handler, concurrency=2, reserve_timeout=10)
            first = await q.put("g", b"1")
            stopped = trio.Event()
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    await worker.run()
                    stopped.set()

                nursery.start_soon(run)
                await started.wait()
                worker.stop()  # the idle slot's long poll ends; the busy one finishes
                second = await q.put("g", b"2")
                assert not stopped.is_set()
                proceed.set()
            assert await state_of(q, first.id) == "gone"
            assert await state_of(q, second.id) == "ready"


async def test_a_job_still_running_after_the_grace_period_is_released(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            started = trio.Event()

            async def handler(job: Job) -> None:
                started.set()
                await trio.sleep_forever()

            worker = Worker(q, ["stuck"], handler, grace_s=0.3, reserve_timeout=10)
            put = await q.put("stuck", b"x")
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await started.wait()
                worker.stop()
            job = await q.get(put.id)
            assert (job.state, job.releases) == ("ready", 1)
            assert worker.statistics().abandoned == 1


async def test_allq_work_finishes_the_current_job_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # `--handler tests.client_support:gated` imports from here
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    started = tmp_path / "started"
    body = json.dumps({"started": str(started), "gate": str(gate)})
    with trio.fail_after(90):
        async with serving_gateway(tmp_path) as served, AsyncAllQ(served.url) as q:
            puts = {(await q.put("jobs", body)).id for _ in range(2)}
            worker = AllqProcess(
                tmp_path / "work.log",
                "work", "jobs", "--url", served.url, "--handler", "tests.client_support:gated",
                "--reserve-timeout", "2",
            )  # fmt: skip
            try:
                await until(started.exists, 30)
                first = started.read_text()
                (second,) = puts - {first}
                worker.process.send_signal(signal.SIGTERM)
                await until(lambda: "SIGTERM: stopping" in worker.log(), 30)
                assert worker.process.poll() is None  # still finishing the job
                await trio.to_thread.run_sync(gate.write_text, "go\n")
                code = await trio.to_thread.run_sync(worker.process.wait, 30)
            finally:
                worker.kill()
            assert code == 0, worker.log()
            assert await state_of(q, first) == "gone"
            job = await q.get(second)  # never reserved: the worker took no more
            assert (job.state, job.reserves) == ("ready", 0)
