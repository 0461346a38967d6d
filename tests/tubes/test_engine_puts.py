"""Engine puts: P1, P2, P3, defaults, delays and run_at, idempotency, drain and limits.

Rules: every call passes an explicit `now` through `Driver` (which checks the engine
invariants after each call); times are exact binary fractions so equalities are exact;
every rejection goes through `Driver.fails`, which also asserts that nothing changed
(§13.1). Spec references are to /work/shared/spec/semantics.md.
"""

from __future__ import annotations

import pytest

from allq.errors import AllQError
from tests.helpers.engines import START, Driver, make_engine, snapshot


def test_p1_put_without_delay_is_ready_with_defaults() -> None:
    d = Driver()
    result = d("put", tube="t")
    assert result == {"id": result["id"], "state": "ready", "duplicate": False}
    job = d.job(result["id"])
    assert job["state"] == "ready"
    assert job["created_at"] == START
    assert job["ready_since"] == START
    assert job["priority"] == 5
    assert job["ttr"] == 3600
    assert job["expired_limit"] == 3
    assert job["max_releases"] == 6
    assert job["body_bytes"] == 0
    assert job["due_at"] is None
    for counter in ("reserves", "timeouts", "releases", "buries", "kicks"):
        assert job[counter] == 0
    assert d.tube()["total_puts"] == 1


def test_put_uses_configured_defaults() -> None:
    d = Driver(make_engine(default_ttr=7, default_expired_limit=4))
    job = d.job(d.put())
    assert (job["ttr"], job["expired_limit"], job["max_releases"]) == (7, 4, 8)
    job = d.job(d.put(expired_limit=2))
    assert job["max_releases"] == 4, "max_releases defaults to 2 x the job's expired_limit"


def test_body_is_returned_byte_for_byte() -> None:
    d = Driver()
    body = bytes(range(256)) * 3
    job_id = d.put(body=body)
    assert d("peek", job_id=job_id)["body"] == body
    assert d.reserve_one()["body"] == body
    assert d.job(job_id)["body_bytes"] == 768


@pytest.mark.parametrize(
    "timing",
    [{}, {"delay": 0}, {"delay": 0.0}, {"delay": 0.0004}, {"run_at": START}, {"run_at": 5.0}],
)
def test_p1_no_effective_delay_means_ready(timing: dict[str, float]) -> None:
    d = Driver()
    assert d("put", tube="t", **timing)["state"] == "ready"
    assert d.counts() == {"ready": 1, "delayed": 0, "reserved": 0, "buried": 0, "waiting": 0}


def test_p2_delay_then_d1_at_the_exact_instant() -> None:
    d = Driver()
    job_id = d.put(delay=2.5)
    job = d.job(job_id)
    assert job["state"] == "delayed"
    assert job["due_at"] == START + 2.5
    assert job["time_left_s"] == 2.5
    assert d.engine.next_deadline() == START + 2.5
    d.at(START + 2.499)
    assert d.state(job_id) == "delayed"
    d.fails("TIMED_OUT", "reserve", tubes=["t"])
    d.at(START + 2.5)
    job = d.job(job_id)
    assert job["state"] == "ready"
    assert job["due_at"] is None
    assert job["ready_since"] == START + 2.5
    assert job["kicks"] == 0, "D1 is not a kick"


def test_p2_run_at_in_the_future() -> None:
    d = Driver()
    job_id = d.put(run_at=START + 3.25)
    assert d.job(job_id)["due_at"] == START + 3.25
    d.at(START + 3.25)
    assert d.reserve_one()["id"] == job_id


def test_delay_is_rounded_to_the_millisecond_halves_away_from_zero() -> None:
    d = Driver()
    assert d.job(d.put(delay=0.0005))["due_at"] == START + 0.001
    assert d.job(d.put(delay=1.2344))["due_at"] == START + 1.234


def test_operation_sees_due_delayed_job_without_a_tick() -> None:
    """§8.3: every operation first advances time: a peek at due_at sees the job ready."""
    d = Driver()
    job_id = d.put(delay=1)
    d.now = START + 1  # no tick
    assert d("peek_ready", tube="t")["id"] == job_id


def test_delayed_jobs_due_together_go_in_due_then_put_order() -> None:
    d = Driver()
    late = d.put(delay=2)
    first = d.put(delay=1)
    second = d.put(delay=1)
    d.at(START + 5)
    assert d.reserve_ids(count=3) == [first, second, late]


def test_priority_full_uint32_range_and_fifo_within_equal() -> None:
    d = Driver()
    low = d.put(priority=4_294_967_295)
    a = d.put(priority=7)
    b = d.put(priority=7)
    top = d.put(priority=0)
    c = d.put(priority=7)
    assert d.reserve_ids(count=5) == [top, a, b, c, low]


def test_priority_as_integral_float_is_accepted() -> None:
    d = Driver()
    assert d.job(d.put(priority=9.0))["priority"] == 9


def test_full_id_form_is_accepted_and_foreign_server_is_not_found() -> None:
    d = Driver()
    job_id = d.put()
    assert d("peek", job_id=f"s1,{job_id}")["id"] == job_id
    d.fails("NOT_FOUND", "peek", job_id=f"s2,{job_id}")
    d.fails("BAD_FORMAT", "peek", field="job_id", job_id=f"s1;{job_id}")


# -- put_parent (P3) and children ----------------------------------------------------------


def test_p3_put_parent_waits_with_timeout_at() -> None:
    d = Driver(make_engine(default_parent_timeout=60))
    result = d("put_parent", tube="t", priority=3)
    assert result == {"id": result["id"], "state": "waiting", "duplicate": False}
    job = d.job(result["id"])
    assert job["timeout_at"] == START + 60
    assert job["time_left_s"] == 60
    assert job["limit"] is None
    assert (job["children_started"], job["children_completed"], job["children_failed"]) == (
        0,
        0,
        0,
    )
    assert (job["noop"], job["run_on_timeout"], job["on_child_failure"]) == (False, False, "wait")
    assert d.counts()["waiting"] == 1
    assert d.tube()["total_puts"] == 1
    d.fails("TIMED_OUT", "reserve", tubes=["t"])


def test_children_of_every_kind_count_as_started() -> None:
    d = Driver()
    parent = d.parent("p", timeout=100)
    d.put("c", parent_id=parent)  # P1
    d.put("c", parent_id=parent, delay=5)  # P2
    d("put_batch", jobs=[{"tube": "c", "parent_id": f"s1,{parent}"}])
    child_parent = d.parent("c", parent_id=parent)  # P3 counts for the grandparent (§11.2)
    assert d.job(parent)["children_started"] == 4
    assert d.job(child_parent)["children_started"] == 0
    assert d.job(child_parent)["parent_id"] == parent


def test_put_with_unknown_or_non_waiting_parent_is_not_found_and_queues_nothing() -> None:
    d = Driver()
    d.fails("NOT_FOUND", "put", field="parent_id", tube="t", parent_id="A" * 22)
    ordinary = d.put()
    d.fails("NOT_FOUND", "put", field="parent_id", tube="t", parent_id=ordinary)
    d.fails("NOT_FOUND", "put_parent", field="parent_id", tube="x", parent_id=ordinary)


# -- put_batch -----------------------------------------------------------------------------


def test_put_batch_applies_items_in_order_with_per_item_errors() -> None:
    d = Driver(make_engine(max_job_bytes=4))
    results = d(
        "put_batch",
        jobs=[
            {"tube": "t", "priority": 2},
            {"tube": "-bad"},
            {"tube": "t", "body": b"12345"},
            {"tube": "t", "priority": -1},
            "not a map",
            {"tube": "t", "delay": 1},
            {"tube": "t", "nope": 1},
        ],
    )
    assert len(results) == 7
    assert results[0]["state"] == "ready"
    assert results[1]["error"]["code"] == "BAD_TUBE"
    assert results[1]["error"]["field"] == "jobs[1].tube"
    assert results[2]["error"]["code"] == "JOB_TOO_BIG"
    assert results[2]["error"]["field"] == "jobs[2].body"
    assert results[3]["error"] == {
        "code": "BAD_FORMAT",
        "field": "jobs[3].priority",
        "message": results[3]["error"]["message"],
    }
    assert results[4]["error"]["field"] == "jobs[4]"
    assert results[5]["state"] == "delayed"
    assert results[6]["error"]["field"] == "jobs[6].nope"
    assert d.counts() == {"ready": 1, "delayed": 1, "reserved": 0, "buried": 0, "waiting": 0}
    assert d.tube()["total_puts"] == 2


def test_put_batch_failed_items_change_nothing() -> None:
    """A batch with bad items leaves exactly the state of its good items alone (§13.1)."""
    a = Driver()
    a(
        "put_batch",
        jobs=[
            {"tube": "new1"},
            {"tube": "t", "body": b"x"},
            {"tube": "new2", "ttr": 0},
            {"tube": "new3", "parent_id": "A" * 22},
            {"tube": "t", "run_at": 1.0, "delay": 1},
        ],
    )
    b = Driver()
    b("put", tube="new1")
    b("put", tube="t", body=b"x")
    assert snapshot(a.engine) == snapshot(b.engine)


@pytest.mark.parametrize(
    ("jobs", "why"),
    [(None, "missing"), ("x", "not a list"), ([], "empty"), ([{"tube": "t"}] * 1001, "too many")],
)
def test_put_batch_envelope_errors_reject_the_whole_request(jobs: object, why: str) -> None:
    d = Driver()
    args = {} if jobs is None else {"jobs": jobs}
    d.fails("BAD_FORMAT", "put_batch", field="jobs", **args)


def test_put_batch_unknown_envelope_field() -> None:
    d = Driver()
    d.fails("BAD_FORMAT", "put_batch", field="tube", jobs=[{"tube": "t"}], tube="t")


def test_put_batch_of_1000_is_accepted() -> None:
    d = Driver()
    results = d("put_batch", jobs=[{"tube": "t"}] * 1000)
    assert len(results) == 1000
    assert d.counts()["ready"] == 1000


# -- idempotency (§12) ---------------------------------------------------------------------


def test_duplicate_returns_original_id_and_current_state() -> None:
    d = Driver()
    first = d("put", tube="t", idempotency_key="k1")
    assert first["duplicate"] is False
    again = d("put", tube="other", priority=1, body=b"different", idempotency_key="k1")
    assert again == {"id": first["id"], "state": "ready", "duplicate": True}
    assert d.counts()["ready"] == 1
    assert d.tube()["total_puts"] == 1
    assert not d.engine.has_tube("other"), "a duplicate creates nothing"
    job = d.reserve_one()
    assert d("put", tube="t", idempotency_key="k1")["state"] == "reserved"
    d("done", job_id=job["id"], lease=job["lease"])
    assert d("put", tube="t", idempotency_key="k1") == {
        "id": first["id"],
        "state": "gone",
        "duplicate": True,
    }
    assert d("stats")["idempotency_keys"] == 1


def test_duplicate_of_a_parent_reports_waiting() -> None:
    d = Driver()
    first = d("put_parent", tube="t", idempotency_key="p")
    assert d("put", tube="t", idempotency_key="p") == {
        "id": first["id"],
        "state": "waiting",
        "duplicate": True,
    }


def test_key_window_ends_exactly_at_first_seen_plus_window() -> None:
    d = Driver(make_engine(dedup_window=10))
    first = d.put(idempotency_key="k")
    d.at(START + 5)
    assert d("put", tube="t", idempotency_key="k")["duplicate"] is True  # no extension
    d.at(START + 9.999)
    assert d("put", tube="t", idempotency_key="k")["id"] == first
    d.at(START + 10)
    fresh = d("put", tube="t", idempotency_key="k")
    assert fresh["duplicate"] is False
    assert fresh["id"] != first
    assert d("stats")["idempotency_keys"] == 1
    d.at(START + 19.999)
    assert d("put", tube="t", idempotency_key="k")["id"] == fresh["id"]


def test_key_lookup_checks_the_window_without_a_tick() -> None:
    d = Driver(make_engine(dedup_window=10))
    first = d.put(idempotency_key="k")
    d.now = START + 10
    assert d("put", tube="t", idempotency_key="k")["id"] != first


def test_key_outlives_clear_and_delete() -> None:
    d = Driver()
    job_id = d.put(idempotency_key="k")
    d("clear", tube="t")
    assert d("put", tube="t", idempotency_key="k")["state"] == "gone"
    other = d.put(idempotency_key="k2")
    d("delete", job_id=other)
    assert d("put", tube="t", idempotency_key="k2") == {
        "id": other,
        "state": "gone",
        "duplicate": True,
    }
    assert job_id != other


def test_batch_internal_duplicates() -> None:
    d = Driver()
    results = d(
        "put_batch",
        jobs=[{"tube": "t", "idempotency_key": "k"}, {"tube": "u", "idempotency_key": "k"}],
    )
    assert results[1] == {"id": results[0]["id"], "state": "ready", "duplicate": True}
    assert d.counts()["ready"] == 1
    assert not d.engine.has_tube("u")


def test_rejected_put_records_no_key() -> None:
    d = Driver()
    d("drain", tube="t")
    d.fails("DRAINING", "put", tube="t", idempotency_key="k")
    d("undrain", tube="t")
    assert d("put", tube="t", idempotency_key="k")["duplicate"] is False
    results = d(
        "put_batch",
        jobs=[
            {"tube": "t", "idempotency_key": "b", "ttr": 0},
            {"tube": "t", "idempotency_key": "b"},
        ],
    )
    assert results[0]["error"]["code"] == "BAD_FORMAT"
    assert results[1]["duplicate"] is False


def test_duplicate_wins_over_drain_and_server_full() -> None:
    """§12/§13.3: the lookup runs before every state check."""
    d = Driver(make_engine(max_jobs=1))
    first = d.put(idempotency_key="k")
    d.fails("SERVER_FULL", "put", tube="t")
    assert d("put", tube="t", idempotency_key="k")["id"] == first
    d("drain", tube="t")
    d("drain")
    assert d("put", tube="t", idempotency_key="k")["id"] == first


def test_duplicate_comes_after_format_validation() -> None:
    d = Driver()
    d.put(idempotency_key="k")
    d.fails("BAD_FORMAT", "put", field="priority", tube="t", priority=-1, idempotency_key="k")
    d.fails("BAD_FORMAT", "put", field="shard_key", tube="fq-x", idempotency_key="k")


def test_new_ids_never_equal_an_unexpired_key_record() -> None:
    d = Driver(make_engine(dedup_window=100))
    first = d.put(idempotency_key="k")
    d("delete", job_id=first)
    draw = d.engine._random_bytes
    # Rewind the generator: the next draw would reproduce the id held by the key record.
    assert hasattr(draw, "drawn")
    draw.drawn = 0
    second = d.put()
    assert second != first
    assert d("put", tube="t", idempotency_key="k")["id"] == first


# -- drain (§9.7) --------------------------------------------------------------------------


def test_tube_drain_refuses_new_jobs_and_lets_everything_else_go_on() -> None:
    d = Driver()
    ready = d.put()
    buried = d.put()
    assert d("drain", tube="t") == {"draining": True}
    d.fails("DRAINING", "put", tube="t")
    d.fails("DRAINING", "put_parent", tube="t")
    assert d("put_batch", jobs=[{"tube": "t"}])[0]["error"]["code"] == "DRAINING"
    assert d.put("other")
    job = d.reserve_one()
    assert job["id"] == ready
    assert d("release", job_id=ready, lease=job["lease"])["state"] == "ready"
    job = d.reserve_one()
    assert job["id"] == buried
    d("bury", job_id=buried, lease=job["lease"])
    assert d("kick", tube="t") == {"kicked": 1, "from": "buried"}
    assert d.tube()["draining"] is True
    assert d("undrain", tube="t") == {"draining": False}
    assert d.put()


def test_drain_creates_the_tube_and_undrain_of_absent_tube_succeeds() -> None:
    d = Driver()
    assert d("undrain", tube="nope") == {"draining": False}
    assert not d.engine.has_tube("nope")
    d("drain", tube="d")
    assert d("list_tubes")["tubes"] == ["d"]


def test_drain_blocks_children_too() -> None:
    d = Driver()
    parent = d.parent("p")
    d("drain", tube="c")
    d.fails("DRAINING", "put", tube="c", parent_id=parent)
    assert d.job(parent)["children_started"] == 0


def test_server_wide_drain() -> None:
    d = Driver()
    d.put()
    assert d("drain") == {"draining": True}
    assert d("stats")["draining"] is True
    d.fails("DRAINING", "put", tube="t")
    d.fails("DRAINING", "put", tube="fresh")
    d.fails("DRAINING", "put_parent", tube="t")
    assert d.reserve_one()
    assert d("undrain") == {"draining": False}
    assert d("stats")["draining"] is False
    d.put()


# -- limits (§3, §13.3) --------------------------------------------------------------------


def test_job_too_big() -> None:
    d = Driver(make_engine(max_job_bytes=10))
    d.put(body=b"x" * 10)
    d.fails("JOB_TOO_BIG", "put", field="body", tube="t", body=b"x" * 11)
    d.fails("JOB_TOO_BIG", "put_parent", field="body", tube="t", body=b"x" * 11)
    d.fails("BAD_FORMAT", "put", field="body", tube="t", body="text")


def test_too_many_tubes() -> None:
    d = Driver(make_engine(max_tubes=2))
    d.put("a")
    d("pause", tube="b")
    d.fails("TOO_MANY_TUBES", "put", field="tube", tube="c")
    d.fails("TOO_MANY_TUBES", "put_parent", tube="c")
    d.fails("TOO_MANY_TUBES", "pause", tube="c")
    d.fails("TOO_MANY_TUBES", "throttle", tube="c", tps=1)
    d.fails("TOO_MANY_TUBES", "drain", tube="c")
    d.fails("TOO_MANY_TUBES", "set_shard_limit", tube="fq-c", limit=1)
    batch = d("put_batch", jobs=[{"tube": "a"}, {"tube": "c"}])
    assert batch[1]["error"]["code"] == "TOO_MANY_TUBES"
    # Operations that do not create a tube never fail with TOO_MANY_TUBES.
    d("pause", tube="c", duration=0)
    d("throttle", tube="c", tps=0)
    d("unpause", tube="c")
    d("undrain", tube="c")
    assert d("kick", tube="c") == {"kicked": 0, "from": None}
    waiter = d.wait("c")
    d.fails("TIMED_OUT", "reserve", tubes=["c"])
    d.engine.cancel_wait(waiter, d.now)
    d.put("a")  # existing tubes still take jobs


def test_server_full_counts_every_live_job_including_waiting_parents() -> None:
    d = Driver(make_engine(max_jobs=3))
    d.parent("p")
    delayed = d.put(delay=5)
    d.put()
    d.fails("SERVER_FULL", "put", tube="t")
    d.fails("SERVER_FULL", "put_parent", tube="t")
    d("delete", job_id=delayed)
    d.put()


def test_capacity_precedence_too_many_tubes_before_server_full() -> None:
    d = Driver(make_engine(max_jobs=1, max_tubes=1))
    d.put("a")
    d.fails("TOO_MANY_TUBES", "put", tube="b")
    d.fails("SERVER_FULL", "put", tube="a")


def test_state_precedence_draining_before_parent_before_capacity() -> None:
    d = Driver(make_engine(max_jobs=1, max_tubes=1))
    d.put("a")
    d("drain", tube="a")
    d.fails("DRAINING", "put", tube="a", parent_id="A" * 22)
    d("undrain", tube="a")
    d.fails("NOT_FOUND", "put", field="parent_id", tube="a", parent_id="A" * 22)
    d.fails("NOT_FOUND", "put", field="parent_id", tube="b", parent_id="A" * 22)


def test_field_precedence_of_put() -> None:
    """§13.3: tube (BAD_TUBE), then body (JOB_TOO_BIG), then the rest (BAD_FORMAT)."""
    d = Driver(make_engine(max_job_bytes=1))
    d.fails("BAD_TUBE", "put", field="tube", tube="/", body=b"xx", priority=-1)
    d.fails("JOB_TOO_BIG", "put", field="body", tube="t", body=b"xx", priority=-1)
    d.fails("BAD_FORMAT", "put", field="priority", tube="t", body=b"x", priority=-1, ttr=0)
    d.fails("BAD_FORMAT", "put", field="nope", tube="/", nope=1)


def test_rejected_put_draws_no_id() -> None:
    d = Driver(make_engine(max_jobs=1))
    d.put()
    with pytest.raises(AllQError):
        d.put()
    draw = d.engine._random_bytes
    assert getattr(draw, "drawn", None) == 1
