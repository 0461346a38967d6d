"""Engine workflows (§11): P3, W1, W2, W3, B2 and the counting rules of §11.3.

Rules: every call passes an explicit `now` through `Driver` (invariants checked after
each call); parent timeouts are asserted at their exact instant and shown absent just
before; every test reads the parent's counters through `stats_job`, the public view.
"""

from __future__ import annotations

from typing import Any

from tests.helpers.engines import START, Driver, make_engine


def counters(d: Driver, parent: str) -> tuple[Any, ...]:
    job = d.job(parent)
    return (
        job["state"],
        job["limit"],
        job["children_started"],
        job["children_completed"],
        job["children_failed"],
    )


def finish(d: Driver, job_id: str, op: str = "done", **args: object) -> None:
    """Reserve `job_id` (it must be the head of its tube) and apply `op` to it."""
    job = d.reserve_one(d.engine.jobs[job_id].tube)
    assert job["id"] == job_id
    d(op, job_id=job_id, lease=job["lease"], **args)


def test_w1_parent_starts_when_limit_children_complete() -> None:
    d = Driver()
    parent = d.parent("p", limit=2, priority=42)
    kids = [d.put(f"c{i}", parent_id=parent) for i in range(3)]
    assert counters(d, parent) == ("waiting", 2, 3, 0, 0)
    finish(d, kids[0])
    assert counters(d, parent) == ("waiting", 2, 3, 1, 0)
    d.at(START + 1)
    finish(d, kids[1])
    assert counters(d, parent) == ("ready", 2, 3, 2, 0)
    job = d.job(parent)
    assert (job["priority"], job["ready_since"]) == (42, START + 1)
    finish(d, kids[2])
    assert counters(d, parent) == ("ready", 2, 3, 2, 0), "counters freeze once started"
    d.fails("NOT_FOUND", "put", field="parent_id", tube="c", parent_id=parent)
    assert d.reserve_one("p")["id"] == parent


def test_delete_of_a_reserved_child_is_a_completion() -> None:
    d = Driver()
    parent = d.parent("p", limit=1)
    child = d.put("c", parent_id=parent)
    lease = d.reserve_one("c")["lease"]
    d("delete", job_id=child, lease=lease)
    assert counters(d, parent)[0] == "ready"


def test_set_children_started_with_zero_children_starts_at_once() -> None:
    d = Driver()
    parent = d.parent("p")
    assert d("set_children_started", job_id=parent) == {
        "limit": 0,
        "children_started": 0,
        "children_completed": 0,
        "state": "ready",
    }
    d.fails("NOT_FOUND", "set_children_started", field="job_id", job_id=parent)


def test_set_children_started_sets_limit_to_started() -> None:
    d = Driver()
    parent = d.parent("p", limit=10)
    a = d.put("c", parent_id=parent)
    b = d.put("c", parent_id=parent)
    finish(d, a)
    assert d("set_children_started", job_id=parent) == {
        "limit": 2,
        "children_started": 2,
        "children_completed": 1,
        "state": "waiting",
    }
    finish(d, b)
    assert counters(d, parent) == ("ready", 2, 2, 2, 0)


def test_set_children_started_when_all_already_completed() -> None:
    d = Driver()
    parent = d.parent("p")
    finish(d, d.put("c", parent_id=parent))
    assert d("set_children_started", job_id=parent)["state"] == "ready"


def test_set_children_started_on_noop_parent_reports_gone() -> None:
    d = Driver()
    parent = d.parent("p", noop=True)
    assert d("set_children_started", job_id=parent)["state"] == "gone"
    assert d.state(parent) == "gone"
    assert d.tube("p")["total_completed"] == 1
    assert d.tube("p")["avg_work_s"] is None, "a noop start has no reservation"


def test_set_children_started_rejects_non_parents() -> None:
    d = Driver()
    d.fails("NOT_FOUND", "set_children_started", field="job_id", job_id=d.put())
    d.fails("NOT_FOUND", "set_children_started", field="job_id", job_id="A" * 22)


def test_timeout_with_run_on_timeout_starts_at_the_exact_instant() -> None:
    d = Driver()
    parent = d.parent("p", timeout=30, run_on_timeout=True, limit=5)
    d.put("c", parent_id=parent)
    assert d.engine.next_deadline() == START + 30
    d.at(START + 29.999)
    assert counters(d, parent)[0] == "waiting"
    d.at(START + 30)
    assert counters(d, parent) == ("ready", 5, 1, 0, 0)
    assert d.job(parent)["buries"] == 0


def test_timeout_without_run_on_timeout_buries() -> None:
    d = Driver()
    grand = d.parent("g", timeout=100)
    parent = d.parent("p", timeout=30, parent_id=grand)
    d.at(START + 30)
    job = d.job(parent)
    assert (job["state"], job["buries"], job["buried_at"]) == ("buried", 1, START + 30)
    assert counters(d, grand) == ("waiting", None, 1, 0, 1), "W3 is a failure upward"
    assert d.tube("p")["total_buried"] == 1


def test_parent_timeout_uses_the_configured_default() -> None:
    d = Driver(make_engine(default_parent_timeout=7))
    parent = d.parent("p")
    assert d.job(parent)["timeout_at"] == START + 7
    d.at(START + 7)
    assert d.state(parent) == "buried"


def test_noop_joins_chain_upward() -> None:
    d = Driver()
    top = d.parent("top", limit=1)
    mid = d.parent("mid", limit=1, noop=True, parent_id=top)
    low = d.parent("low", limit=2, noop=True, parent_id=mid)
    a = d.put("work", parent_id=low)
    b = d.put("work", parent_id=low)
    finish(d, a)
    assert counters(d, low)[3] == 1
    finish(d, b)  # low starts (W2) -> mid completes (W2) -> top starts (W1)
    assert d.state(low) == "gone"
    assert d.state(mid) == "gone"
    assert counters(d, top) == ("ready", 1, 1, 1, 0)
    assert d.tube("low")["total_completed"] == 1
    assert d.tube("mid")["total_completed"] == 1
    assert d.tube("top")["total_completed"] == 0


def test_noop_parent_timeout_with_run_on_timeout_completes_upward() -> None:
    d = Driver()
    top = d.parent("top", limit=1, timeout=100)
    d.parent("mid", noop=True, run_on_timeout=True, timeout=10, parent_id=top)
    d.at(START + 10)
    assert counters(d, top)[0] == "ready"


def test_on_child_failure_bury_buries_at_the_first_failure_and_chains() -> None:
    d = Driver()
    grand = d.parent("g", on_child_failure="bury")
    parent = d.parent("p", on_child_failure="bury", parent_id=grand)
    child = d.put("c", parent_id=parent)
    d.put("c", parent_id=parent)
    finish(d, child, "bury")
    assert counters(d, parent) == ("buried", None, 2, 0, 1)
    assert counters(d, grand) == ("buried", None, 1, 0, 1)


def test_on_child_failure_wait_counts_and_keeps_waiting() -> None:
    d = Driver()
    parent = d.parent("p", limit=1)
    child = d.put("c", parent_id=parent, max_releases=0)
    finish(d, child, "release")  # R6: a failure
    assert counters(d, parent) == ("waiting", 1, 1, 0, 1)
    d("kick_job", job_id=child)
    finish(d, child)  # a failed child that is kicked and completes counts
    assert counters(d, parent) == ("ready", 1, 1, 1, 1)


def test_ttr_expiry_and_autobury_of_a_child() -> None:
    d = Driver()
    parent = d.parent("p", limit=1, timeout=1000)
    child = d.put("c", parent_id=parent, ttr=1, expired_limit=2)
    d.reserve_one("c")
    d.advance(1)  # R8: nothing
    assert counters(d, parent) == ("waiting", 1, 1, 0, 0)
    d.reserve_one("c")
    d.advance(1)  # R9: a failure, never a completion
    assert counters(d, parent) == ("waiting", 1, 1, 0, 1)
    assert d.state(child) == "buried"


def test_events_that_are_neither_completion_nor_failure() -> None:
    d = Driver()
    parent = d.parent("p", limit=1, timeout=1000)
    released = d.put("c", parent_id=parent)
    finish(d, released, "release")
    unreserved = d.put("u", parent_id=parent)
    job = d.reserve_one("u")
    d("unreserve", job_id=unreserved, lease=job["lease"])
    deleted_ready = d.put("d", parent_id=parent)
    d("delete", job_id=deleted_ready)
    d.put("x", parent_id=parent)
    d.put("x", parent_id=parent, delay=5)
    d.parent("x", parent_id=parent)
    d("clear", tube="x")
    touched = d.put("t", parent_id=parent)
    lease = d.reserve_one("t")["lease"]
    d("touch", job_id=touched, lease=lease)
    buried = d.put("k", parent_id=parent, delay=10)
    d("kick_job", job_id=buried)
    assert counters(d, parent) == ("waiting", 1, 8, 0, 0)


def test_b1_kicked_buried_parent_runs_without_waiting_again() -> None:
    d = Driver()
    parent = d.parent("p", timeout=5, limit=3)
    d.advance(5)
    assert d.state(parent) == "buried"
    assert d("kick_job", job_id=parent) == {"state": "ready"}
    assert d.reserve_one("p")["id"] == parent


def test_b2_kick_of_a_buried_noop_parent_is_a_completion() -> None:
    d = Driver()
    top = d.parent("top", limit=2, timeout=1000)
    first = d.parent("p", noop=True, timeout=5, parent_id=top)
    second = d.parent("p", noop=True, timeout=6, parent_id=top)
    d.advance(6)
    assert d.counts("p")["buried"] == 2
    assert d("kick_job", job_id=first) == {"state": "gone"}
    assert counters(d, top) == ("waiting", 2, 2, 1, 2)
    assert d("kick", tube="p", bound=10) == {"kicked": 1, "from": "buried"}
    assert d.state(second) == "gone"
    assert counters(d, top) == ("ready", 2, 2, 2, 2)
    stats = d.tube("p")
    assert stats["total_completed"] == 2
    assert stats["avg_work_s"] is None


def test_deleting_or_clearing_a_waiting_parent_orphans_its_children() -> None:
    d = Driver()
    parent = d.parent("p", limit=1)
    child = d.put("c", parent_id=parent)
    d("delete", job_id=parent)
    finish(d, child)
    assert d.state(parent) == "gone"
    d.fails("NOT_FOUND", "put", field="parent_id", tube="c", parent_id=parent)
    parent = d.parent("p", limit=1)
    child = d.put("c", parent_id=parent)
    assert d("clear", tube="p")["waiting"] == 1
    finish(d, child)
    assert d.tube("p")["total_completed"] == 0


def test_children_counted_only_while_parent_waits() -> None:
    d = Driver()
    parent = d.parent("p", limit=1, on_child_failure="bury")
    a = d.put("c", parent_id=parent)
    b = d.put("c", parent_id=parent)
    finish(d, a)
    assert counters(d, parent)[0] == "ready"
    finish(d, b, "bury")
    assert counters(d, parent) == ("ready", 1, 2, 1, 0), "a failure after the start is ignored"


def test_parent_in_a_fair_tube_and_children_anywhere() -> None:
    d = Driver()
    parent = d.parent("fq-p", shard_key="A", limit=1)
    child = d.put("fq-c", shard_key="B", parent_id=parent, delay=1)
    d.advance(1)
    finish(d, child)
    assert d.reserve_one("fq-p")["id"] == parent
    assert d.tube("fq-p")["shards"] == {"A": {"ready": 0, "reserved": 1}}


def test_parent_fields_in_stats_job() -> None:
    d = Driver()
    parent = d.parent(
        "p", timeout=12.5, run_on_timeout=True, limit=3, noop=False, on_child_failure="bury"
    )
    d.advance(2)
    job = d.job(parent)
    assert {k: job[k] for k in ("limit", "timeout", "timeout_at", "run_on_timeout", "noop")} == {
        "limit": 3,
        "timeout": 12.5,
        "timeout_at": START + 12.5,
        "run_on_timeout": True,
        "noop": False,
    }
    assert job["on_child_failure"] == "bury"
    assert job["time_left_s"] == 10.5
    assert job["age_s"] == 2
