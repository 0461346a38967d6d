"""Engine scheduling: selection (§9.2), reserve outcomes (§9.3), waiters (§9.4), pause,
throttle, DEADLINE_SOON (§7.3) and fair queuing (§10).

Rules: every call passes an explicit `now` through `Driver` (invariants checked after
each call); timer effects are asserted at the exact instant they are due and shown absent
just before it; a rejection goes through `Driver.fails` (code, field, nothing changed).
"""

from __future__ import annotations

import math

from allq.errors import AllQError
from allq.tubes.events import DeadlineSoon, Delivered, WaitTimedOut
from tests.helpers.engines import START, Driver, make_engine

# -- selection across tubes (§9.2) ---------------------------------------------------------------


def test_multi_tube_order_is_priority_then_ready_seq_across_tubes() -> None:
    d = Driver()
    b1 = d.put("b")
    a1 = d.put("a")
    b2 = d.put("b")
    a0 = d.put("a", priority=4)
    assert d.reserve_ids("a", "b", "a", count=10) == [a0, b1, a1, b2]


def test_reserve_count_returns_what_there_is_without_waiting() -> None:
    d = Driver()
    a = d.put()
    b = d.put()
    assert d.reserve_ids(count=3, timeout=10) == [a, b]
    assert not d.engine.waiters


def test_reserve_on_absent_tube_times_out_and_creates_nothing() -> None:
    d = Driver()
    d.fails("TIMED_OUT", "reserve", tubes=["ghost"])
    assert not d.engine.has_tube("ghost")


def test_reserve_skips_tubes_that_cannot_hand_out() -> None:
    d = Driver()
    d.put("paused", priority=0)
    d("pause", tube="paused")
    other = d.put("open", priority=9)
    assert d.reserve_ids("paused", "open") == [other]


# -- blocking reserve and waiters (§9.3, §9.4) -----------------------------------------------------


def test_waiter_is_served_by_a_put_and_times_out_exactly() -> None:
    d = Driver()
    w1 = d.wait(timeout=10)
    w2 = d.wait(timeout=10)
    w3 = d.wait(timeout=7.5)
    assert d("stats")["waiting_reservers"] == 3
    job_id = d.put()
    effects = d.take()
    assert len(effects) == 1
    delivered = effects[0]
    assert isinstance(delivered, Delivered)
    assert delivered.waiter == w1
    assert [job["id"] for job in delivered.jobs] == [job_id]
    assert delivered.jobs[0]["state"] == "reserved"
    assert delivered.jobs[0]["ttr_deadline"] == START + 3600
    assert len(str(delivered.jobs[0]["lease"])) == 22
    assert d.engine.next_deadline() == START + 7.5
    assert d.advance(7.499) == []
    assert d.at(START + 7.5) == [WaitTimedOut(w3)]
    assert d.at(START + 9.999) == []
    assert d.at(START + 10) == [WaitTimedOut(w2)]
    assert not d.engine.waiters
    assert d.engine.next_deadline() == START + 3600


def test_waiters_are_fifo_and_a_new_reserve_cannot_overtake() -> None:
    d = Driver()
    w1 = d.wait()
    w2 = d.wait()
    a = d.put()
    assert d.delivered() == {w1: [a]}
    b = d.put()
    assert d.delivered() == {w2: [b]}
    w3 = d.wait()
    c = d("put_batch", jobs=[{"tube": "t"}, {"tube": "t"}])
    assert d.delivered() == {w3: [c[0]["id"]]}
    assert d.reserve_ids() == [c[1]["id"]]


def test_older_waiter_on_several_tubes_is_served_first() -> None:
    d = Driver()
    w_ab = d.wait("a", "b")
    w_a = d.wait("a")
    results = d("put_batch", jobs=[{"tube": "a", "priority": 1}, {"tube": "b", "priority": 2}])
    delivered = d.delivered()
    assert delivered[w_ab] == [results[0]["id"]], "the older waiter takes the better job"
    assert w_a not in delivered
    assert w_a in d.engine.waiters
    # The younger waiter on "a" never gets a job the older one could have taken:
    later = d.put("a")
    assert d.delivered() == {w_a: [later]}


def test_waiter_with_count_gets_up_to_count() -> None:
    d = Driver()
    waiter = d.wait(count=3)
    results = d("put_batch", jobs=[{"tube": "t"}] * 2)
    assert d.delivered() == {waiter: [r["id"] for r in results]}
    waiter = d.wait(count=2)
    results = d("put_batch", jobs=[{"tube": "t"}] * 3)
    assert d.delivered() == {waiter: [results[0]["id"], results[1]["id"]]}


def test_waiter_on_absent_tube_is_served_when_the_tube_appears() -> None:
    d = Driver()
    waiter = d.wait("later")
    assert not d.engine.has_tube("later")
    job_id = d.put("later")
    assert d.delivered() == {waiter: [job_id]}


def test_cancel_wait_is_idempotent_and_leaves_jobs_alone() -> None:
    d = Driver()
    waiter = d.wait()
    d.engine.cancel_wait(waiter, d.now)
    d.engine.cancel_wait(waiter, d.now)
    d.engine.cancel_wait(12345, d.now)
    job_id = d.put()
    assert d.take() == []
    assert d.state(job_id) == "ready"
    assert d.engine.next_deadline() == math.inf


def test_waiter_served_by_release_done_kick_and_delay_end() -> None:
    d = Driver()
    job_id = d.put(ttr=5)
    lease = d.reserve_one()["lease"]
    waiter = d.wait(timeout=100)
    d("release", job_id=job_id, lease=lease)
    assert d.delivered() == {waiter: [job_id]}
    lease = d.engine.jobs[job_id].lease
    waiter = d.wait(timeout=100)
    d("bury", job_id=job_id, lease=lease)
    d("kick", tube="t")
    assert d.delivered() == {waiter: [job_id]}
    waiter = d.wait(timeout=100)
    delayed = d.put(delay=2)
    d.advance(2)
    assert d.delivered() == {waiter: [delayed]}


def test_reserve_timeout_is_rounded_and_zero_never_waits() -> None:
    d = Driver()
    d.fails("TIMED_OUT", "reserve", tubes=["t"], timeout=0.0004)
    waiter = d.wait(timeout=0.0005)
    assert d.engine.next_deadline() == START + 0.001
    assert d.at(START + 0.001) == [WaitTimedOut(waiter)]


# -- equal instants (§8.4) ---------------------------------------------------------------------


def test_waiter_timeout_equal_to_due_instant_gets_the_job() -> None:
    d = Driver()
    job_id = d.put(delay=5)
    waiter = d.wait(timeout=5)
    assert d.at(START + 4.999) == []
    d.at(START + 5)
    assert d.delivered() == {waiter: [job_id]}
    assert d.take() == [], "no WaitTimedOut for the served waiter"


def test_waiter_timeout_equal_to_due_instant_even_when_ticked_late() -> None:
    d = Driver()
    job_id = d.put(delay=5)
    waiter = d.wait(timeout=5)
    effects = d.at(START + 50)
    assert [type(e) for e in effects] == [Delivered]
    assert effects[0].waiter == waiter
    assert d.state(job_id) == "reserved"
    assert d.job(job_id)["reserved_at"] == START + 50, "catch-up timestamps use the real now"


def test_waiter_timeout_equal_to_ttr_expiry_and_pause_end_gets_the_job() -> None:
    d = Driver()
    job_id = d.put(ttr=3)
    d.reserve_one()
    w1 = d.wait(timeout=3)
    d.put("p")
    d("pause", tube="p", duration=3)
    w2 = d.wait("p", timeout=3)
    effects = d.at(START + 3)
    assert {e.waiter for e in effects if isinstance(e, Delivered)} == {w1, w2}
    assert not any(isinstance(e, WaitTimedOut) for e in effects)
    assert d.state(job_id) == "reserved"


# -- DEADLINE_SOON (§7.3) ------------------------------------------------------------------------


def test_deadline_soon_answers_a_reserve_that_finds_nothing() -> None:
    d = Driver()
    job_id = d.put(ttr=5)
    d.reserve_one(owner="w")
    d.at(START + 3.999)
    d.fails("TIMED_OUT", "reserve", tubes=["t"], owner="w")
    d.at(START + 4)
    d.fails("DEADLINE_SOON", "reserve", tubes=["t"], owner="w")
    d.fails("DEADLINE_SOON", "reserve", tubes=["t"], owner="w", timeout=10)
    d.fails("TIMED_OUT", "reserve", tubes=["t"], owner="other")
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    other = d.put()
    assert d.reserve_ids(owner="w") == [other], "a job available wins over DEADLINE_SOON"
    d("touch", job_id=job_id)
    d("touch", job_id=other)
    d.fails("TIMED_OUT", "reserve", tubes=["t"], owner="w")


def test_deadline_soon_effect_for_a_waiter_at_the_exact_instant() -> None:
    d = Driver()
    job_id = d.put(ttr=10)
    d.reserve_one(owner="w")
    waiter = d.wait("x", timeout=30, owner="w")
    assert d.engine.next_deadline() == START + 9
    assert d.at(START + 8.999) == []
    assert d.at(START + 9) == [DeadlineSoon(waiter)]
    assert not d.engine.waiters
    assert d.state(job_id) == "reserved"


def test_deadline_soon_timer_follows_touch_and_ends_with_the_reservation() -> None:
    d = Driver()
    job_id = d.put(ttr=10)
    lease = d.reserve_one(owner="w")["lease"]
    waiter = d.wait("x", timeout=30, owner="w")
    d.at(START + 5)
    d("touch", job_id=job_id, lease=lease)
    assert d.at(START + 14) == [DeadlineSoon(waiter)]
    # ttr_deadline is START + 15, exactly 1 s away: near, so the reserve must not wait.
    d.fails("DEADLINE_SOON", "reserve", tubes=["x"], timeout=20, owner="w")


def test_deadline_soon_cancelled_by_done() -> None:
    d = Driver()
    job_id = d.put(ttr=10)
    lease = d.reserve_one(owner="w")["lease"]
    waiter = d.wait("x", timeout=20, owner="w")
    d("done", job_id=job_id, lease=lease)
    assert d.at(START + 9) == []
    assert d.at(START + 20) == [WaitTimedOut(waiter)]


# -- pause (§9.5) -------------------------------------------------------------------------------


def test_pause_without_duration_until_unpause() -> None:
    d = Driver()
    job_id = d.put()
    assert d("pause", tube="t") == {"paused": True, "pause_until": None}
    stats = d.tube()
    assert (stats["paused"], stats["pause_remaining_s"]) == (True, None)
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    waiter = d.wait(timeout=100)
    d.advance(50)
    assert d.take() == []
    assert d("unpause", tube="t") == {"paused": False}
    assert d.delivered() == {waiter: [job_id]}


def test_pause_with_duration_ends_at_the_exact_instant() -> None:
    d = Driver()
    d("pause", tube="t", duration=5)
    assert d("pause", tube="t", duration=2.5) == {"paused": True, "pause_until": START + 2.5}
    job_id = d.put()
    waiter = d.wait(timeout=100)
    d.at(START + 1)
    assert d.tube()["pause_remaining_s"] == 1.5
    assert d.engine.next_deadline() == START + 2.5
    assert d.at(START + 2.499) == []
    effects = d.at(START + 2.5)
    assert [e.waiter for e in effects if isinstance(e, Delivered)] == [waiter]
    assert d.tube()["paused"] is False
    assert d.state(job_id) == "reserved"


def test_pause_zero_is_unpause_and_pause_replaces_the_end() -> None:
    d = Driver()
    assert d("pause", tube="absent", duration=0) == {"paused": False, "pause_until": None}
    assert not d.engine.has_tube("absent")
    d("pause", tube="t", duration=5)
    d("pause", tube="t")
    d.at(START + 10)
    assert d.tube()["paused"] is True, "a pause without duration replaced the end time"
    assert d("pause", tube="t", duration=0) == {"paused": False, "pause_until": None}
    assert d.tube()["paused"] is False


def test_paused_tube_keeps_timers_and_job_operations_going() -> None:
    d = Driver()
    reserved = d.put(ttr=2)
    lease = d.reserve_one()["lease"]
    delayed = d.put(delay=1)
    d("pause", tube="t")
    d.put()
    d.at(START + 1)
    assert d.state(delayed) == "ready"
    d("touch", job_id=reserved, lease=lease)
    d.at(START + 3)
    assert d.state(reserved) == "ready", "TTR expiry runs on a paused tube"
    assert d.counts()["ready"] == 3


# -- throttle (§9.6) ------------------------------------------------------------------------------


def test_throttle_token_bucket_capacity_and_rate() -> None:
    d = Driver()
    for _ in range(10):
        d.put()
    assert d("throttle", tube="t", tps=2) == {"throttle_tps": 2.0}
    assert len(d.reserve(count=5)) == 2, "capacity max(1, tps) = 2, starts full"
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d.at(START + 0.25)
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d.at(START + 0.5)
    assert len(d.reserve(count=5)) == 1
    d.at(START + 10)
    assert len(d.reserve(count=5)) == 2, "refill is capped at the capacity"


def test_fractional_tps() -> None:
    d = Driver()
    for _ in range(3):
        d.put()
    d("throttle", tube="t", tps=0.2)
    assert len(d.reserve(count=3)) == 1, "capacity is max(1, 0.2) = 1"
    d.at(START + 4.999)
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d.at(START + 5)
    assert len(d.reserve(count=3)) == 1


def test_empty_and_paused_polls_take_no_token() -> None:
    d = Driver()
    d("throttle", tube="t", tps=0.5)
    for _ in range(5):
        d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d.put()
    d("pause", tube="t")
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d("unpause", tube="t")
    d("peek_ready", tube="t")
    assert len(d.reserve()) == 1
    d.put()
    d.fails("TIMED_OUT", "reserve", tubes=["t"])


def test_unreserve_refunds_a_token() -> None:
    d = Driver()
    d.put()
    d.put()
    d("throttle", tube="t", tps=0.5)
    job = d.reserve_one()
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d("unreserve", job_id=job["id"], lease=job["lease"])
    assert d.reserve_one()["id"] == job["id"]
    d.fails("TIMED_OUT", "reserve", tubes=["t"])


def test_refill_timer_serves_a_waiter_at_the_exact_instant() -> None:
    d = Driver()
    d.put()
    d.put()
    d("throttle", tube="t", tps=0.25)
    d.reserve_one()
    d.at(START + 1)
    waiter = d.wait(timeout=10)
    assert d.engine.next_deadline() == START + 4
    assert d.at(START + 3.999) == []
    effects = d.at(START + 4)
    assert [e.waiter for e in effects if isinstance(e, Delivered)] == [waiter]
    delivered = effects[0]
    assert isinstance(delivered, Delivered)
    assert delivered.jobs[0]["ttr_deadline"] == START + 4 + 3600


def test_refill_timer_when_ticked_late_still_serves_and_bills_the_bucket() -> None:
    d = Driver()
    for _ in range(3):
        d.put()
    d("throttle", tube="t", tps=1)
    d.reserve_one()
    w1 = d.wait(timeout=10)
    w2 = d.wait(timeout=10)
    effects = d.at(START + 2.5)
    assert [e.waiter for e in effects if isinstance(e, Delivered)] == [w1, w2]
    assert d.engine.next_deadline() > START + 2.5
    d.fails("TIMED_OUT", "reserve", tubes=["t"])  # the bucket holds 0.5


def test_throttle_reset_refills_and_removal_serves_waiters() -> None:
    d = Driver()
    for _ in range(4):
        d.put()
    d("throttle", tube="t", tps=1)
    d.reserve_one()
    d("throttle", tube="t", tps=1)
    d.reserve_one()
    waiter = d.wait(timeout=10)
    assert d("throttle", tube="t", tps=0) == {"throttle_tps": None}
    assert list(d.delivered()) == [waiter]
    assert d.tube()["throttle_tps"] is None
    assert d("throttle", tube="absent", tps=-1) == {"throttle_tps": None}
    assert not d.engine.has_tube("absent")


def test_throttle_bounds_handouts_over_an_interval() -> None:
    """Over any interval T at most C + tps * T jobs: poll every 0.125 s for 10 s."""
    d = Driver()
    d("put_batch", jobs=[{"tube": "t"}] * 100)
    d("throttle", tube="t", tps=1.5)
    got = 0
    for step in range(81):
        d.at(START + step * 0.125)
        try:
            got += len(d.reserve(count=10))
        except AllQError as error:
            assert error.code == "TIMED_OUT"  # noqa: PT017
    assert got == math.floor(1.5 + 1.5 * 10)


# -- fair queuing (§10) -------------------------------------------------------------------------


def test_fair_rotation_example_a_b_a() -> None:
    d = Driver()
    a = [d.put("fq-t", shard_key="A") for _ in range(5)]
    b = d.put("fq-t", shard_key="B")
    assert d.reserve_ids("fq-t", count=3) == [a[0], b, a[1]]


def test_fair_priority_orders_only_within_a_shard() -> None:
    d = Driver()
    a = d.put("fq-t", shard_key="A", priority=100)
    b_low = d.put("fq-t", shard_key="B", priority=50)
    b_high = d.put("fq-t", shard_key="B", priority=1)
    assert d("peek_ready", tube="fq-t")["id"] == a
    assert d.reserve_ids("fq-t", count=3) == [a, b_high, b_low]


def test_fair_shard_rejoins_at_the_tail() -> None:
    d = Driver()
    a1 = d.put("fq-t", shard_key="A")
    b1 = d.put("fq-t", shard_key="B")
    c1 = d.put("fq-t", shard_key="C")
    assert d.reserve_ids("fq-t") == [a1]  # A leaves the rotation (no ready job left)
    a2 = d.put("fq-t", shard_key="A")  # A joins at the tail: B, C, A
    assert d.reserve_ids("fq-t", count=3) == [b1, c1, a2]


def test_fair_shard_limit_skips_and_keeps_place() -> None:
    d = Driver()
    assert d("set_shard_limit", tube="fq-t", limit=1) == {"shard_reservation_limit": 1}
    a = [d.put("fq-t", shard_key="A") for _ in range(2)]
    b = [d.put("fq-t", shard_key="B") for _ in range(2)]
    got = d("reserve", tubes=["fq-t"], count=4)
    assert [j["id"] for j in got] == [a[0], b[0]]
    assert d.tube("fq-t")["shards"] == {
        "A": {"ready": 1, "reserved": 1},
        "B": {"ready": 1, "reserved": 1},
    }
    waiter = d.wait("fq-t", timeout=10)
    d("done", job_id=b[0], lease=got[1]["lease"])  # B drops below its limit
    assert d.delivered() == {waiter: [b[1]]}
    d("done", job_id=a[0], lease=got[0]["lease"])
    assert d.reserve_ids("fq-t") == [a[1]]


def test_fair_skipped_shard_keeps_its_place_in_the_rotation() -> None:
    d = Driver()
    d("set_shard_limit", tube="fq-t", limit=1)
    a1 = d.put("fq-t", shard_key="A")
    b1 = d.put("fq-t", shard_key="B")
    a2 = d.put("fq-t", shard_key="A")
    b2 = d.put("fq-t", shard_key="B")
    c1 = d.put("fq-t", shard_key="C")
    first = d.reserve_one("fq-t")  # A; rotation B, C, A
    assert first["id"] == a1
    assert d.reserve_ids("fq-t") == [b1]  # rotation C, A, B
    d("done", job_id=a1, lease=first["lease"])
    assert d.reserve_ids("fq-t", count=3) == [c1, a2]  # B is at its limit
    assert d.state(b2) == "ready"


def test_fair_rotation_is_per_tube() -> None:
    d = Driver()
    x_a = d.put("fq-x", shard_key="A")
    x_b = d.put("fq-x", shard_key="B")
    y_a = d.put("fq-y", shard_key="A")
    y_b = d.put("fq-y", shard_key="B")
    assert d.reserve_ids("fq-x") == [x_a]
    assert d.reserve_ids("fq-y") == [y_a]
    assert d.reserve_ids("fq-x") == [x_b]
    assert d.reserve_ids("fq-y") == [y_b]


def test_default_shard_limit_and_per_tube_override() -> None:
    d = Driver(make_engine(default_shard_reservation_limit=1))
    d.put("fq-t", shard_key="A")
    d.put("fq-t", shard_key="A")
    assert len(d.reserve("fq-t", count=2)) == 1
    assert d.tube("fq-t")["shard_reservation_limit"] == 1
    d("set_shard_limit", tube="fq-t", limit=0)  # off for this tube
    assert len(d.reserve("fq-t", count=2)) == 1
    assert d.tube("fq-t")["shard_reservation_limit"] == 0


def test_fair_tube_rules() -> None:
    d = Driver()
    d.fails("BAD_FORMAT", "put", field="shard_key", tube="fq-t")
    d.fails("BAD_FORMAT", "put_parent", field="shard_key", tube="fq-")
    batch = d("put_batch", jobs=[{"tube": "fq-t"}])
    assert batch[0]["error"]["field"] == "jobs[0].shard_key"
    d.fails("BAD_FORMAT", "put", field="shard_key", tube="t", shard_key="a/b")
    d.fails("BAD_FORMAT", "set_shard_limit", field="tube", tube="plain", limit=1)
    assert d.job(d.put("t", shard_key="s"))["shard_key"] == "s"
    d.put("fq-", shard_key="s")
    assert d.tube("fq-")["fair"] is True
    assert d.tube("t")["fair"] is False
    assert "shards" not in d.tube("t")


def test_fair_tube_pause_throttle_clear_kick_apply_to_the_whole_tube() -> None:
    d = Driver()
    d.put("fq-t", shard_key="A")
    d.put("fq-t", shard_key="B")
    d("throttle", tube="fq-t", tps=1)
    assert len(d.reserve("fq-t", count=2)) == 1
    assert d("clear", tube="fq-t")["ready"] == 1
    stats = d.tube("fq-t")
    assert stats["shard_count"] == 0
    assert stats["shards"] == {}
