"""Queue server over in-memory streams under the autojump clock.

Rules: every test runs the real server (serve + sessions + EngineShell timer tasks) over
MemoryListener with the plain framing, so virtual time is exact: each timer-driven answer
is asserted at exactly its deadline (trio.current_time() deltas). No real sockets here.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from allq.session import SessionLimits
from tests.helpers.servers import memory_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_put_reserve_done_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        client = await server.client()
        put = await client.result("put", tube="t", body=b"hello", priority=7)
        assert put["state"] == "ready"
        assert put["duplicate"] is False
        jobs = await client.result("reserve", tubes=["t"])
        assert [job["body"] for job in jobs] == [b"hello"]
        assert jobs[0]["priority"] == 7
        assert await client.result("done", job_id=jobs[0]["id"], lease=jobs[0]["lease"]) == {}
        stats = await client.result("stats_tube", tube="t")
        assert stats["total_completed"] == 1
        assert stats["ready"] == 0
        await client.aclose()


async def test_error_answer_keeps_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        client = await server.client()
        answer = await client.call("put", tube="bad/name")
        assert answer["error"] == "BAD_TUBE"
        assert answer["field"] == "tube"
        answer = await client.call("frobnicate")
        assert answer["error"] == "BAD_FORMAT"
        assert answer["field"] == "op"
        assert (await client.result("ping"))["pong"] is True
        await client.aclose()


@pytest.mark.parametrize(
    ("setup", "expected_delay"),
    [
        ({"op": "put", "tube": "t", "delay": 5}, 5.0),
        ({"op": "put", "tube": "t", "delay": 0.25}, 0.25),
    ],
)
async def test_delayed_job_reaches_waiter_exactly_at_due_time(
    autojump_clock: trio.testing.MockClock, setup: dict[str, object], expected_delay: float
) -> None:
    async with memory_server() as server:
        client = await server.client()
        start = trio.current_time()
        op = str(setup.pop("op"))
        await client.result(op, **setup)
        jobs = await client.result("reserve", tubes=["t"], timeout=60)
        assert trio.current_time() - start == pytest.approx(expected_delay, abs=1e-9)
        assert len(jobs) == 1
        await client.aclose()


async def test_ttr_expiry_redelivers_exactly_at_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        client = await server.client()
        await client.result("put", tube="t", ttr=3)
        start = trio.current_time()
        first = await client.result("reserve", tubes=["t"])
        again = await client.result("reserve", tubes=["t"], timeout=60)
        assert trio.current_time() - start == pytest.approx(3.0)
        assert again[0]["id"] == first[0]["id"]
        assert again[0]["timeouts"] == 1
        answer = await client.call("done", job_id=first[0]["id"], lease=first[0]["lease"])
        assert answer["error"] == "LEASE_EXPIRED"
        await client.aclose()


async def test_pause_end_serves_waiter_exactly(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        client = await server.client()
        await client.result("put", tube="t")
        start = trio.current_time()
        assert (await client.result("pause", tube="t", duration=4))["paused"] is True
        jobs = await client.result("reserve", tubes=["t"], timeout=60)
        assert trio.current_time() - start == pytest.approx(4.0)
        assert len(jobs) == 1
        await client.aclose()


async def test_parent_timeout_starts_parent_exactly(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        client = await server.client()
        start = trio.current_time()
        parent = await client.result("put_parent", tube="p", timeout=6, run_on_timeout=True)
        assert parent["state"] == "waiting"
        jobs = await client.result("reserve", tubes=["p"], timeout=60)
        assert trio.current_time() - start == pytest.approx(6.0)
        assert jobs[0]["id"] == parent["id"]
        await client.aclose()


async def test_reserve_times_out_exactly(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server() as server:
        client = await server.client()
        start = trio.current_time()
        answer = await client.call("reserve", tubes=["empty"], timeout=7.5)
        assert answer["error"] == "TIMED_OUT"
        assert trio.current_time() - start == pytest.approx(7.5)
        await client.aclose()


async def test_waiting_reserve_does_not_stall_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        client = await server.client()
        reserve_id = await client.send("reserve", tubes=["t"], timeout=100)
        ping_id = await client.send("ping")
        put_id = await client.send("put", tube="t", body=b"x")
        start = trio.current_time()
        assert (await client.answer(ping_id))["result"]["pong"] is True
        assert (await client.answer(put_id))["result"]["state"] == "ready"
        reserved = await client.answer(reserve_id)
        assert trio.current_time() == start  # no timer involved: delivered at once
        assert reserved["result"][0]["body"] == b"x"
        # The reserve was sent first but answered last: answers leave out of order.
        assert client.order.index(reserve_id) > client.order.index(ping_id)
        await client.aclose()


async def test_cancel_answers_target_first_and_loses_no_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        client = await server.client()
        reserve_id = await client.send("reserve", tubes=["t"], timeout=100)
        await trio.testing.wait_all_tasks_blocked()
        cancel_id = await client.send("cancel", target=reserve_id)
        target = await client.answer(reserve_id)
        assert target["error"] == "CANCELLED"
        assert client.order == [reserve_id]  # the target's answer came before the cancel's
        assert (await client.answer(cancel_id))["result"] == {"outcome": "cancelled"}
        unknown = await client.result("cancel", target=reserve_id)
        assert unknown == {"outcome": "unknown"}
        await client.result("put", tube="t")
        stats = await client.result("stats_tube", tube="t")
        assert stats["ready"] == 1
        assert stats["waiting_reservers"] == 0
        await client.aclose()


async def test_requester_disconnect_mid_reserve_loses_no_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server() as server:
        leaver = await server.client()
        await leaver.send("reserve", tubes=["t"], timeout=100)
        await trio.testing.wait_all_tasks_blocked()
        await leaver.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.shell.engine.waiters == {}
        worker = await server.client()
        await worker.result("put", tube="t")
        jobs = await worker.result("reserve", tubes=["t"])
        assert jobs[0]["reserves"] == 1
        await worker.aclose()


async def test_delivery_racing_cancellation_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """design.md §2.3: the waiter is cancelled, then a job lands in its channel before it runs."""
    async with memory_server() as server:
        shell = server.shell
        scope = trio.CancelScope()
        got: list[object] = []

        async def reserver() -> None:
            with scope:
                got.append(await shell.reserve({"tubes": ["t"], "timeout": 50}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reserver)
            await trio.testing.wait_all_tasks_blocked()
            assert len(shell.engine.waiters) == 1
            scope.cancel()  # the reserver is rescheduled with Cancelled …
            shell.call("put", {"tube": "t", "body": b"raced"})  # … and the job is delivered to it
        assert got == []
        assert shell.unreserved_on_gone == 1
        job = next(iter(shell.engine.jobs.values()))
        assert job.state.value == "ready"
        assert job.reserves == 0  # unreserve leaves every counter as it was
        shell.engine.check_invariants()


async def test_graceful_shutdown_lets_workers_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server(grace_s=10) as server:
        worker = await server.client()
        waiter = await server.client()
        await worker.result("put", tube="t")
        jobs = await worker.result("reserve", tubes=["t"])
        wait_id = await waiter.send("reserve", tubes=["t"], timeout=100)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        server.shutdown.begin()
        assert (await waiter.answer(wait_id))["error"] == "SHUTTING_DOWN"
        assert (await worker.next_event())["event"] == "shutting_down"
        assert (await worker.call("put", tube="t"))["error"] == "DRAINING"
        assert (await worker.call("reserve", tubes=["t"]))["error"] == "SHUTTING_DOWN"
        assert (await worker.call("pause", tube="t"))["error"] == "SHUTTING_DOWN"
        assert await worker.result("done", job_id=jobs[0]["id"], lease=jobs[0]["lease"]) == {}
        final = await worker.next_event()
        assert final["closing"] == "shutdown"
        await server.done.wait()
        assert trio.current_time() - start < 10  # finished before the grace period ended
        await worker.aclose()
        await waiter.aclose()


async def test_graceful_shutdown_deadline_closes_holders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server(grace_s=10) as server:
        worker = await server.client()
        await worker.result("put", tube="t")
        await worker.result("reserve", tubes=["t"])
        start = trio.current_time()
        server.shutdown.begin()
        assert (await worker.next_event())["event"] == "shutting_down"
        assert (await worker.next_event())["closing"] == "shutdown"
        assert trio.current_time() - start == pytest.approx(10.0)
        await server.done.wait()
        await worker.aclose()


async def test_new_connection_refused_when_full(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server(max_connections=1) as server:
        first = await server.client()
        assert (await first.result("ping"))["pong"] is True
        second = await server.client()
        assert (await second.next_event())["closing"] == "full"
        assert (await first.result("ping"))["pong"] is True
        await first.aclose()
        await second.aclose()


async def test_idle_connection_closed_exactly_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server(session=SessionLimits(idle_timeout_s=10)) as server:
        client = await server.client()
        start = trio.current_time()
        # A waiting reserve is in flight: the connection is not idle while it waits.
        answer = await client.call("reserve", tubes=["t"], timeout=25)
        assert answer["error"] == "TIMED_OUT"
        assert trio.current_time() - start == pytest.approx(25)
        closing = await client.next_event()
        assert closing["closing"] == "idle"
        # No frame since the reserve (t=0) and nothing in flight: closed at the next idle
        # check, 3 x 10 s after the last frame.
        assert trio.current_time() - start == pytest.approx(30)
        await client.aclose()


async def test_in_flight_limit_stops_reading_until_answers_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server(session=SessionLimits(max_inflight=2)) as server:
        client = await server.client()
        first = await client.send("reserve", tubes=["a"], timeout=10)
        await client.send("reserve", tubes=["b"], timeout=20)
        ping = await client.send("ping")  # read only once a reserve has been answered
        start = trio.current_time()
        assert (await client.answer(ping))["result"]["pong"] is True
        assert trio.current_time() - start == pytest.approx(10)
        assert client.order[0] == first  # the reserve's TIMED_OUT went out before the ping
        await client.aclose()


async def test_low_disk_space_refuses_new_jobs_only(autojump_clock: trio.testing.MockClock) -> None:
    """persistence.md §9: below the floor, puts get SERVER_FULL "disk space low" after every
    other check; done, delete and duplicates keep working; checked at most once a second."""
    async with memory_server() as server:
        free = [10**9]
        server.shell.free_space = lambda: free[0]
        server.shell.min_free_bytes = 1000
        client = await server.client()
        first = await client.result("put", tube="t", idempotency_key="k1")
        job = (await client.result("reserve", tubes=["t"]))[0]
        free[0] = 10
        await trio.sleep(1.0)  # the next check is due
        refused = await client.call("put", tube="t", body=b"x")
        assert (refused["error"], refused["message"]) == ("SERVER_FULL", "disk space low")
        bad = await client.call("put", tube="-bad")
        assert bad["error"] == "BAD_TUBE"  # validation still comes first
        duplicate = await client.result("put", tube="t", idempotency_key="k1")
        assert (duplicate["id"], duplicate["duplicate"]) == (first["id"], True)
        assert await client.result("done", job_id=job["id"], lease=job["lease"]) == {}
        free[0] = 10**9
        assert (await client.call("put", tube="t"))["error"] == "SERVER_FULL"  # not re-read yet
        await trio.sleep(1.0)
        assert (await client.result("put", tube="t"))["state"] == "ready"
        await client.aclose()
