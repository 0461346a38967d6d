"""Engine job transitions R1-R10, B1, D2, X1, X2, the lease table (§7.2), kicks and peeks.

Rules: every call passes an explicit `now` through `Driver` (invariants checked after
each call); times are exact binary fractions; a rejection goes through `Driver.fails`,
which asserts the code, the field and that nothing changed. Each transition test checks
the state, the job counters and fields the transition table (§6.2) names, and the
workflow event where there is one.
"""

from __future__ import annotations

import pytest

from tests.helpers.engines import OTHER_LEASE, START, Driver, snapshot

# -- R1 reserve --------------------------------------------------------------------------------


def test_r1_reserve_sets_lease_deadline_and_counters() -> None:
    d = Driver()
    job_id = d.put(ttr=30, body=b"b", priority=9)
    d.at(START + 2)
    job = d.reserve_one(owner="conn-1")
    assert job["id"] == job_id
    assert job["state"] == "reserved"
    assert job["ttr_deadline"] == START + 32
    assert len(job["lease"]) == 22
    assert job["reserves"] == 1
    assert (job["body"], job["priority"], job["tube"]) == (b"b", 9, "t")
    stats = d.job(job_id)
    assert stats["reserved_at"] == START + 2
    assert stats["ttr_deadline"] == START + 32
    assert stats["owner"] == "conn-1"
    assert stats["time_left_s"] == 30
    assert "lease" not in stats
    assert "lease" not in d("peek", job_id=job_id)
    assert d.engine.next_deadline() == START + 32


def test_each_reservation_gets_a_new_lease() -> None:
    d = Driver()
    job_id = d.put(ttr=1)
    first = d.reserve_one()["lease"]
    d.advance(1)
    second = d.reserve_one()
    assert second["id"] == job_id
    assert second["lease"] != first
    assert second["reserves"] == 2


# -- R2 touch ----------------------------------------------------------------------------------


def test_r2_touch_moves_the_deadline_and_keeps_the_lease() -> None:
    d = Driver()
    job_id = d.put(ttr=10)
    lease = d.reserve_one()["lease"]
    d.at(START + 9.5)
    assert d("touch", job_id=job_id, lease=lease) == {"ttr_deadline": START + 19.5}
    d.at(START + 19.499)
    assert d.state(job_id) == "reserved"
    assert d.job(job_id)["reserved_at"] == START, "touch does not move reserved_at"
    assert d("touch", job_id=job_id) == {"ttr_deadline": START + 29.499}, "lease omitted"
    d.at(START + 29.499)
    assert d.state(job_id) == "ready"
    d.fails("LEASE_EXPIRED", "touch", field="lease", job_id=job_id, lease=lease)


# -- R3 done -----------------------------------------------------------------------------------


def test_r3_done_completes() -> None:
    d = Driver()
    job_id = d.put()
    lease = d.reserve_one()["lease"]
    d.at(START + 4)
    assert d("done", job_id=job_id, lease=lease) == {}
    assert d.state(job_id) == "gone"
    stats = d.tube()
    assert stats["total_completed"] == 1
    assert stats["avg_work_s"] == 4
    assert stats["completions_per_s"] == 1 / 60
    d.fails("NOT_FOUND", "done", field="job_id", job_id=job_id, lease=lease)
    d.fails("NOT_FOUND", "delete", job_id=job_id)


def test_done_at_the_ttr_deadline_finds_the_job_expired() -> None:
    """§7.2/§8.3: the lease check runs after advancing to now; ttr_deadline <= now expired."""
    d = Driver()
    job_id = d.put(ttr=5)
    lease = d.reserve_one()["lease"]
    d.now = START + 5  # no tick: the operation itself advances time
    d.fails("LEASE_EXPIRED", "done", field="lease", job_id=job_id, lease=lease)
    assert d.state(job_id) == "ready"
    assert d.tube()["total_completed"] == 0


# -- R4 / R5 / R6 release ----------------------------------------------------------------------


def test_r4_release_goes_to_the_tail_of_its_priority() -> None:
    d = Driver()
    a = d.put()
    b = d.put()
    job = d.reserve_one()
    assert job["id"] == a
    d.at(START + 1)
    assert d("release", job_id=a, lease=job["lease"]) == {"state": "ready"}
    stats = d.job(a)
    assert (stats["releases"], stats["releases_since_kick"], stats["priority"]) == (1, 1, 5)
    assert stats["ready_since"] == START + 1
    assert d.reserve_ids(count=2) == [b, a]


def test_r4_release_with_priority_and_with_zero_delay() -> None:
    d = Driver()
    a = d.put(priority=10)
    b = d.put(priority=10)
    job = d.reserve_one()
    assert d("release", job_id=a, lease=job["lease"], priority=3, delay=0) == {"state": "ready"}
    assert d.job(a)["priority"] == 3
    assert d.reserve_ids(count=2) == [a, b]


def test_r5_release_with_delay() -> None:
    d = Driver()
    a = d.put(priority=8)
    lease = d.reserve_one()["lease"]
    assert d("release", job_id=a, lease=lease, delay=2.5) == {"state": "delayed"}
    stats = d.job(a)
    assert stats["due_at"] == START + 2.5
    assert stats["releases"] == 1
    d.at(START + 2.5)
    assert d.state(a) == "ready"
    assert d.job(a)["priority"] == 8


def test_r6_release_over_budget_buries_with_given_priority() -> None:
    d = Driver()
    job_id = d.put(max_releases=1)
    lease = d.reserve_one()["lease"]
    assert d("release", job_id=job_id, lease=lease)["state"] == "ready"
    lease = d.reserve_one()["lease"]
    d.at(START + 3)
    assert d("release", job_id=job_id, lease=lease, priority=2, delay=5) == {"state": "buried"}
    stats = d.job(job_id)
    assert (stats["releases"], stats["releases_since_kick"], stats["buries"]) == (2, 2, 1)
    assert stats["priority"] == 2
    assert stats["buried_at"] == START + 3
    assert d.tube()["total_buried"] == 1


def test_default_budget_seventh_release_buries() -> None:
    d = Driver()
    job_id = d.put()
    states = []
    for _ in range(7):
        lease = d.reserve_one()["lease"]
        states.append(d("release", job_id=job_id, lease=lease)["state"])
    assert states == ["ready"] * 6 + ["buried"]


def test_max_releases_zero_buries_every_release() -> None:
    d = Driver()
    job_id = d.put(max_releases=0)
    lease = d.reserve_one()["lease"]
    assert d("release", job_id=job_id, lease=lease)["state"] == "buried"


# -- R7 bury -----------------------------------------------------------------------------------


def test_r7_bury_with_and_without_priority() -> None:
    d = Driver()
    a = d.put(priority=6)
    b = d.put(priority=6)
    lease = d.reserve_one()["lease"]
    d.at(START + 1)
    assert d("bury", job_id=a, lease=lease) == {"state": "buried"}
    lease = d.reserve_one()["lease"]
    d.at(START + 2)
    assert d("bury", job_id=b, lease=lease, priority=1) == {"state": "buried"}
    assert d.job(a)["priority"] == 6
    assert d.job(b)["priority"] == 1
    assert d.job(a)["buried_at"] == START + 1
    assert d.job(a)["buries"] == 1
    assert d.tube()["total_buried"] == 2
    assert d("peek_buried", tube="t")["id"] == a


# -- R8 / R9 TTR expiry ------------------------------------------------------------------------


def test_r8_r9_ttr_expiry_then_autobury_at_expired_limit() -> None:
    d = Driver()
    job_id = d.put(ttr=2, priority=77)
    d.put(priority=77)
    d.reserve_one()
    assert d.engine.next_deadline() == START + 2
    d.at(START + 1.999)
    assert d.state(job_id) == "reserved"
    d.at(START + 2)
    stats = d.job(job_id)
    assert stats["state"] == "ready"
    assert (stats["timeouts"], stats["timeouts_since_kick"], stats["priority"]) == (1, 1, 77)
    assert stats["ready_since"] == START + 2
    assert d("peek_ready", tube="t")["id"] != job_id, "an expired job queues at the tail"
    d("reserve", tubes=["t"], count=2)
    d.at(START + 4)
    assert d.job(job_id)["timeouts"] == 2
    d.reserve_one()  # the other job is still reserved: this is ours
    d.at(START + 6)
    stats = d.job(job_id)
    assert stats["state"] == "buried"
    assert (stats["timeouts"], stats["buries"], stats["buried_at"]) == (3, 1, START + 6)
    assert stats["priority"] == 77
    tube = d.tube()
    assert tube["total_timeouts"] == 3
    assert tube["total_buried"] == 1
    assert tube["total_completed"] == 0


def test_expired_limit_one_buries_at_first_expiry() -> None:
    d = Driver()
    job_id = d.put(ttr=1, expired_limit=1)
    d.reserve_one()
    d.advance(1)
    assert d.state(job_id) == "buried"


def test_unreserved_expiry_counts_kick_resets_budget() -> None:
    d = Driver()
    job_id = d.put(ttr=1, expired_limit=2, max_releases=1)
    d.reserve_one()
    d.advance(1)
    lease = d.reserve_one()["lease"]
    d("release", job_id=job_id, lease=lease)
    d.reserve_one()
    d.advance(1)
    assert d.state(job_id) == "buried"
    assert d("kick_job", job_id=job_id) == {"state": "ready"}
    stats = d.job(job_id)
    assert (stats["timeouts_since_kick"], stats["releases_since_kick"], stats["kicks"]) == (0, 0, 1)
    assert (stats["timeouts"], stats["releases"]) == (2, 1)
    # a fresh budget: one expiry and one release are allowed again
    d.reserve_one()
    d.advance(1)
    assert d.state(job_id) == "ready"
    lease = d.reserve_one()["lease"]
    assert d("release", job_id=job_id, lease=lease)["state"] == "ready"


# -- R10 unreserve -----------------------------------------------------------------------------


def test_r10_unreserve_restores_place_and_counters() -> None:
    d = Driver()
    a = d.put()
    b = d.put()
    job = d.reserve_one()
    d.at(START + 5)
    assert d("unreserve", job_id=a, lease=job["lease"]) == {}
    stats = d.job(a)
    assert stats["reserves"] == 0
    assert stats["ready_since"] == START
    assert d.tube()["oldest_ready_age_s"] == 5
    assert d.reserve_ids(count=2) == [a, b], "it keeps its previous ready_seq"
    d.fails("LEASE_EXPIRED", "unreserve", job_id=a, lease=job["lease"])
    d.fails("BAD_FORMAT", "unreserve", field="lease", job_id=a)


# -- X1 delete ---------------------------------------------------------------------------------


def test_x1_delete_in_every_state() -> None:
    d = Driver()
    ready = d.put()
    delayed = d.put(delay=10)
    reserved = d.put("r")
    buried = d.put("b")
    parent = d.parent()
    d.reserve_one("r")
    lease = d.reserve_one("b")["lease"]
    d("bury", job_id=buried, lease=lease)
    assert d("delete", job_id=ready) == {"previous_state": "ready"}
    assert d("delete", job_id=delayed) == {"previous_state": "delayed"}
    assert d("delete", job_id=reserved) == {"previous_state": "reserved"}
    assert d("delete", job_id=buried) == {"previous_state": "buried"}
    assert d("delete", job_id=parent) == {"previous_state": "waiting"}
    assert d.counts() == {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0, "waiting": 0}
    assert d.tube("r")["total_completed"] == 1, "delete of a reserved job completes"
    assert d.tube("b")["total_completed"] == 0
    assert d.tube()["total_completed"] == 0
    assert d.engine.next_deadline() > START + 3000


def test_delete_with_the_current_lease_completes() -> None:
    d = Driver()
    job_id = d.put()
    lease = d.reserve_one()["lease"]
    d.advance(2)
    assert d("delete", job_id=job_id, lease=lease) == {"previous_state": "reserved"}
    assert d.tube()["avg_work_s"] == 2


# -- X2 clear ----------------------------------------------------------------------------------


def test_x2_clear_removes_every_state_and_keeps_settings_and_waiters() -> None:
    d = Driver()
    d.put()
    d.put(delay=5)
    d.put()
    d.put()
    d.parent()
    reserved = d.reserve_one()
    buried = d.reserve_one()
    d("bury", job_id=buried["id"], lease=buried["lease"])
    d("pause", tube="t", duration=100)
    d("throttle", tube="t", tps=2)
    d.put("u")
    waiter = d.wait("t", "v")
    assert d("clear", tube="t") == {
        "ready": 1,
        "delayed": 1,
        "reserved": 1,
        "buried": 1,
        "waiting": 1,
    }
    assert d.counts() == {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0, "waiting": 0}
    stats = d.tube()
    assert stats["paused"] is True
    assert stats["throttle_tps"] == 2
    assert stats["waiting_reservers"] == 1
    assert stats["total_completed"] == 0
    assert stats["total_puts"] == 5, "cumulative counters survive clear"
    d.fails("NOT_FOUND", "done", job_id=reserved["id"], lease=reserved["lease"])
    assert d("clear", tube="t") == {
        "ready": 0,
        "delayed": 0,
        "reserved": 0,
        "buried": 0,
        "waiting": 0,
    }
    assert d("clear", tube="absent") == {
        "ready": 0,
        "delayed": 0,
        "reserved": 0,
        "buried": 0,
        "waiting": 0,
    }
    assert not d.engine.has_tube("absent")
    d.put("v")
    assert list(d.delivered()) == [waiter]


def test_clear_leaves_other_tubes_alone() -> None:
    d = Driver()
    keep = d.put("keep", delay=1)
    d.put("t")
    d("clear", tube="t")
    assert d.state(keep) == "delayed"


# -- lease table (§7.2) ------------------------------------------------------------------------

OPS = ["done", "touch", "release", "bury", "delete"]


def _job_in(d: Driver, state: str) -> str:
    """A job in `state` on tube "t"; for "reserved" the lease is OTHER_LEASE-free."""
    if state == "waiting":
        return d.parent()
    if state == "delayed":
        return d.put(delay=50)
    job_id = d.put()
    if state == "ready":
        return job_id
    lease = d.reserve_one()["lease"]
    if state == "buried":
        d("bury", job_id=job_id, lease=lease)
    return job_id


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("state", ["ready", "delayed", "buried", "waiting"])
def test_lease_table_unreserved_job(op: str, state: str) -> None:
    d = Driver()
    job_id = _job_in(d, state)
    d.fails("LEASE_EXPIRED", op, field="lease", job_id=job_id, lease=OTHER_LEASE)
    if op == "delete":
        assert d(op, job_id=job_id) == {"previous_state": state}
    else:
        d.fails("NOT_RESERVED", op, job_id=job_id)


@pytest.mark.parametrize("op", OPS)
def test_lease_table_reserved_job(op: str) -> None:
    d = Driver()
    job_id = _job_in(d, "reserved")
    d.fails("LEASE_EXPIRED", op, field="lease", job_id=job_id, lease=OTHER_LEASE)
    d(op, job_id=job_id)  # lease omitted proceeds
    job_id = d.put("u")
    lease = d.reserve_one("u")["lease"]
    d(op, job_id=job_id, lease=lease)


@pytest.mark.parametrize("op", OPS)
def test_lease_table_unknown_job(op: str) -> None:
    d = Driver()
    d.fails("NOT_FOUND", op, field="job_id", job_id="A" * 22)
    d.fails("NOT_FOUND", op, field="job_id", job_id="A" * 22, lease=OTHER_LEASE)


@pytest.mark.parametrize("op", OPS)
def test_a_stale_lease_never_acts_on_a_later_reservation(op: str) -> None:
    d = Driver()
    job_id = d.put(ttr=1)
    stale = d.reserve_one()["lease"]
    d.advance(1)
    current = d.reserve_one()["lease"]
    d.fails("LEASE_EXPIRED", op, field="lease", job_id=job_id, lease=stale)
    d("touch", job_id=job_id, lease=current)


# -- kick and kick_job (B1, B2, D2) ------------------------------------------------------------


def _bury(d: Driver, job_id: str) -> None:
    job = d.reserve_one()
    assert job["id"] == job_id
    d("bury", job_id=job_id, lease=job["lease"])


def test_kick_prefers_buried_oldest_first_and_respects_the_bound() -> None:
    d = Driver()
    b, a, c = d.put(priority=1), d.put(priority=2), d.put(priority=3)
    delayed = d.put(delay=9)
    for job_id in (b, a, c):  # buried_at order: b, a, c
        _bury(d, job_id)
        d.advance(1)
    assert d("peek_buried", tube="t")["id"] == b
    assert d("kick", tube="t", bound=2) == {"kicked": 2, "from": "buried"}
    assert (d.state(b), d.state(a), d.state(c)) == ("ready", "ready", "buried")
    assert d.job(b)["kicks"] == 1
    assert d("kick", tube="t", bound=5) == {"kicked": 1, "from": "buried"}, "never both kinds"
    assert d.state(delayed) == "delayed"
    assert d("kick", tube="t") == {"kicked": 1, "from": "delayed"}
    assert d.state(delayed) == "ready"
    assert d("kick", tube="t") == {"kicked": 0, "from": None}


def test_kick_order_of_buried_is_buried_at_not_priority() -> None:
    d = Driver()
    high = d.put(priority=1)
    low = d.put(priority=9)
    _bury(d, high)
    lease = d.reserve_one()["lease"]
    d("bury", job_id=low, lease=lease, priority=0)
    assert d("peek_buried", tube="t")["id"] == high
    d("kick", tube="t")
    assert d.state(high) == "ready"
    assert d.state(low) == "buried"


def test_kicked_jobs_enter_ready_in_kick_order_behind_equal_priorities() -> None:
    d = Driver()
    a = d.put()
    b = d.put()
    _bury(d, a)
    _bury(d, b)
    c = d.put()
    d("kick", tube="t", bound=2)
    assert d.reserve_ids(count=3) == [c, a, b]


def test_d2_kick_delayed_soonest_due_first() -> None:
    d = Driver()
    late = d.put(delay=9, priority=4)
    soon = d.put(delay=3, priority=4)
    mid = d.put(delay=5, priority=4)
    assert d("kick", tube="t", bound=2) == {"kicked": 2, "from": "delayed"}
    assert d.state(late) == "delayed"
    stats = d.job(soon)
    assert (stats["state"], stats["kicks"], stats["due_at"], stats["priority"]) == (
        "ready",
        1,
        None,
        4,
    )
    assert d.reserve_ids(count=2) == [soon, mid]
    assert d.engine.next_deadline() == START + 9


def test_kick_job_buried_and_delayed_and_not_other_states() -> None:
    d = Driver()
    delayed = d.put(delay=5)
    buried = d.put()
    _bury(d, buried)
    assert d("kick_job", job_id=delayed) == {"state": "ready"}
    assert d("kick_job", job_id=f"s1,{buried}") == {"state": "ready"}
    assert d.job(buried)["kicks"] == 1
    assert d.job(delayed)["kicks"] == 1
    d.fails("NOT_FOUND", "kick_job", field="job_id", job_id=buried)  # ready now
    reserved = d.reserve_one()["id"]
    d.fails("NOT_FOUND", "kick_job", field="job_id", job_id=reserved)
    d.fails("NOT_FOUND", "kick_job", field="job_id", job_id=d.parent())
    d.fails("NOT_FOUND", "kick_job", field="job_id", job_id="A" * 22)


def test_kick_works_on_a_paused_tube_and_kicked_jobs_wait() -> None:
    d = Driver()
    job_id = d.put(delay=5)
    d("pause", tube="t")
    assert d("kick", tube="t")["kicked"] == 1
    assert d.state(job_id) == "ready"
    d.fails("TIMED_OUT", "reserve", tubes=["t"])


def test_kick_absent_tube() -> None:
    d = Driver()
    assert d("kick", tube="nope", bound=3) == {"kicked": 0, "from": None}
    assert not d.engine.has_tube("nope")


# -- priority is preserved through every transition (§5.4) -------------------------------------


def test_priority_survives_expiry_release_kick_delay_and_parent_start() -> None:
    d = Driver()
    job_id = d.put(priority=123_456, delay=1, ttr=1)
    d.advance(1)  # delay end
    d.reserve_one()
    d.advance(1)  # TTR expiry
    lease = d.reserve_one()["lease"]
    d("release", job_id=job_id, lease=lease, delay=1)  # release without priority
    d("kick_job", job_id=job_id)  # kick from delayed
    _bury(d, job_id)
    d("kick", tube="t")  # kick from buried
    lease = d.reserve_one()["lease"]
    d("release", job_id=job_id, lease=lease)
    assert d.job(job_id)["priority"] == 123_456
    parent = d.parent("p", priority=4_000_000_000)
    d("set_children_started", job_id=parent)
    assert d.job(parent)["priority"] == 4_000_000_000
    assert d.job(parent)["state"] == "ready"


# -- peeks (§14.3) -----------------------------------------------------------------------------


def test_peeks_return_views_and_change_nothing() -> None:
    d = Driver()
    d("throttle", tube="t", tps=1)
    ready = d.put(priority=3)
    d.put(priority=4)
    delayed = d.put(delay=7)
    d.put(delay=8)
    buried = d.put("b")
    job = d.reserve_one("b")
    d("bury", job_id=buried, lease=job["lease"])
    parent = d.parent()
    d.advance(1)
    before = snapshot(d.engine)
    view = d("peek_ready", tube="t")
    assert view["id"] == ready
    assert set(view) == {
        "id",
        "tube",
        "state",
        "body",
        "priority",
        "ttr",
        "created_at",
        "shard_key",
        "parent_id",
        "reserves",
        "timeouts",
        "releases",
        "buries",
        "kicks",
        "due_at",
    }
    assert d("peek_delayed", tube="t")["id"] == delayed
    assert d("peek_delayed", tube="t")["due_at"] == START + 7
    assert d("peek_buried", tube="b")["id"] == buried
    assert d("peek", job_id=parent)["state"] == "waiting"
    d("stats_tube", tube="t")
    d("stats_job", job_id=ready)
    d("stats")
    d("list_tubes")
    d("ping")
    assert snapshot(d.engine) == before


def test_peek_not_found_cases() -> None:
    d = Driver()
    for op in ("peek_ready", "peek_delayed", "peek_buried"):
        d.fails("NOT_FOUND", op, tube="absent")
    d.put(delay=5)
    d.fails("NOT_FOUND", "peek_ready", tube="t")
    d.fails("NOT_FOUND", "peek_buried", tube="t")
    d.fails("NOT_FOUND", "peek", field="job_id", job_id="A" * 22)
    assert not d.engine.has_tube("absent")


def test_peek_ready_ignores_pause_and_throttle() -> None:
    d = Driver()
    job_id = d.put()
    d("pause", tube="t")
    assert d("peek_ready", tube="t")["id"] == job_id
    d("unpause", tube="t")
    d("throttle", tube="t", tps=1)
    d.put()
    d.reserve_one()
    assert d("peek_ready", tube="t")["state"] == "ready"


def test_peek_by_id_in_every_state() -> None:
    d = Driver()
    for state in ("ready", "delayed", "buried", "waiting", "reserved"):
        d("clear", tube="t")
        job_id = _job_in(d, state)
        assert d("peek", job_id=job_id)["state"] == state
