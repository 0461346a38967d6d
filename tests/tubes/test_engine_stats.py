"""Engine statistics and listing: stats_job (§14.4), stats_tube (§15.2), stats (§15.3),
list_tubes and ping.

Rules: explicit `now` everywhere; each field of §15 is asserted with a value computed by
hand from the scenario, and windows (`completions_per_s`, last 100 samples) are checked on
both sides of their edge.
"""

from __future__ import annotations

import pytest

from allq.errors import AllQError
from tests.helpers.engines import START, Driver, make_engine


def test_stats_job_fields() -> None:
    d = Driver()
    parent = d.parent("p")
    job_id = d.put(
        "t",
        body=b"abc",
        priority=2,
        ttr=60,
        expired_limit=4,
        max_releases=1,
        parent_id=parent,
        shard_key="sk",
        idempotency_key="key",
    )
    d.at(START + 2)
    d.reserve_one(owner="me")
    d.at(START + 5)
    job = d.job(job_id)
    assert job == {
        "id": job_id,
        "tube": "t",
        "state": "reserved",
        "priority": 2,
        "ttr": 60,
        "expired_limit": 4,
        "max_releases": 1,
        "parent_id": parent,
        "shard_key": "sk",
        "idempotency_key": "key",
        "created_at": START,
        "due_at": None,
        "ready_since": None,
        "reserved_at": START + 2,
        "ttr_deadline": START + 62,
        "owner": "me",
        "buried_at": None,
        "reserves": 1,
        "timeouts": 0,
        "releases": 0,
        "buries": 0,
        "kicks": 0,
        "timeouts_since_kick": 0,
        "releases_since_kick": 0,
        "body_bytes": 3,
        "age_s": 5,
        "time_left_s": 57,
    }


def test_stats_job_time_left_per_state() -> None:
    d = Driver()
    delayed = d.put(delay=10)
    buried = d.put("b")
    lease = d.reserve_one("b")["lease"]
    d("bury", job_id=buried, lease=lease)
    ready = d.put("r")
    d.at(START + 4)
    assert d.job(delayed)["time_left_s"] == 6
    assert d.job(buried)["time_left_s"] == 0
    assert d.job(ready)["time_left_s"] == 0
    assert d.job(buried)["buried_at"] == START


def test_stats_tube_fields() -> None:
    d = Driver()
    d.put(priority=1023)
    d.put(priority=1024)
    d.at(START + 1)
    d.put(delay=5)  # falls due at START + 6, urgent (5 < 1024)
    d.parent()
    d("pause", tube="t", duration=30)
    d("throttle", tube="t", tps=2.5)
    d.wait("t", "u", timeout=100)
    d.wait("u", timeout=100)
    d.at(START + 10)
    assert d.tube() == {
        "name": "t",
        "fair": False,
        "ready": 3,
        "delayed": 0,
        "reserved": 0,
        "buried": 0,
        "waiting": 1,
        "urgent": 2,
        "total_puts": 4,
        "total_completed": 0,
        "total_timeouts": 0,
        "total_buried": 0,
        "oldest_ready_age_s": 10,
        "avg_work_s": None,
        "completions_per_s": 0,
        "paused": True,
        "pause_remaining_s": 21,
        "draining": False,
        "throttle_tps": 2.5,
        "waiting_reservers": 1,
    }


def test_avg_work_over_the_last_100_completions_and_rate_window() -> None:
    d = Driver()
    d("put_batch", jobs=[{"tube": "t"}] * 101)
    # first completion takes 1000 s of work, the next 100 take 1 s each
    job = d.reserve_one()
    d.advance(1000)
    d("done", job_id=job["id"], lease=job["lease"])
    completed_at = d.now
    for _ in range(100):
        job = d.reserve_one()
        d.advance(1)
        d("done", job_id=job["id"], lease=job["lease"])
    stats = d.tube()
    assert stats["total_completed"] == 101
    assert stats["avg_work_s"] == 1, "only the last 100 samples count"
    assert stats["completions_per_s"] == 60 / 60
    d.at(completed_at + 100 + 59.999)
    assert d.tube()["completions_per_s"] == 1 / 60
    d.at(completed_at + 100 + 60)
    assert d.tube()["completions_per_s"] == 0


def test_completion_counters_ignore_expiry_bury_release_clear() -> None:
    d = Driver()
    a = d.put(ttr=1, expired_limit=1)
    d.reserve_one()
    d.advance(1)
    b = d.put()
    d("delete", job_id=b)
    assert d.state(a) == "buried"
    d("kick", tube="t")
    lease = d.reserve_one()["lease"]
    d("release", job_id=a, lease=lease)
    d("clear", tube="t")
    stats = d.tube()
    assert (stats["total_completed"], stats["avg_work_s"], stats["completions_per_s"]) == (
        0,
        None,
        0,
    )
    assert (stats["total_timeouts"], stats["total_buried"], stats["total_puts"]) == (1, 1, 2)


def test_fair_tube_stats() -> None:
    d = Driver(make_engine(default_shard_reservation_limit=3))
    d.put("fq-t", shard_key="A")
    d.put("fq-t", shard_key="A")
    d.put("fq-t", shard_key="B", delay=5)
    d.reserve_one("fq-t")
    stats = d.tube("fq-t")
    assert stats["fair"] is True
    assert stats["shard_reservation_limit"] == 3
    assert stats["shard_count"] == 2
    assert stats["shards"] == {"A": {"ready": 1, "reserved": 1}, "B": {"ready": 0, "reserved": 0}}
    assert stats["shards_truncated"] is False


def test_server_stats() -> None:
    d = Driver(make_engine(max_tubes=50, max_jobs=60, max_job_bytes=70))
    d.put()
    d.put("u", delay=3)
    d.parent("p")
    d.put(idempotency_key="k")
    d.reserve_one()
    d.wait("x")
    d.fails("BAD_TUBE", "put", tube="-")
    d.fails("TIMED_OUT", "reserve", tubes=["x"])
    d.at(START + 7)
    stats = d("stats")
    assert stats["server_id"] == "s1"
    assert isinstance(stats["version"], str)
    assert stats["uptime_s"] == 7
    assert stats["now"] == START + 7
    assert stats["tubes"] == 3
    assert stats["jobs"] == {
        "ready": 2,
        "delayed": 0,
        "reserved": 1,
        "buried": 0,
        "waiting": 1,
        "total": 4,
    }
    assert stats["waiting_reservers"] == 1
    assert stats["ops"] == {"put": 4, "put_parent": 1, "reserve": 3, "stats": 1}
    assert stats["errors"] == {"BAD_TUBE": 1, "TIMED_OUT": 1}
    assert stats["draining"] is False
    assert stats["idempotency_keys"] == 1
    assert stats["limits"] == {"max_tubes": 50, "max_jobs": 60, "max_job_bytes": 70}
    assert stats["persistence"]["mode"] == "memory"
    assert stats["persistence"]["log_bytes"] == 0


def test_list_tubes_pages_bytewise() -> None:
    d = Driver()
    for name in ("b", "a", "B", "fq-x", "_", "a.b"):
        d.put(name, **({"shard_key": "k"} if name.startswith("fq-") else {}))
    d.put("fq-x", shard_key="other")
    assert d("list_tubes") == {"tubes": ["B", "_", "a", "a.b", "b", "fq-x"], "next_after": None}
    page = d("list_tubes", limit=2)
    assert page == {"tubes": ["B", "_"], "next_after": "_"}
    page = d("list_tubes", after="_", limit=4)
    assert page == {"tubes": ["a", "a.b", "b", "fq-x"], "next_after": None}
    assert d("list_tubes", after="fq-x") == {"tubes": [], "next_after": None}
    d.fails("BAD_TUBE", "list_tubes", field="after", after="-x")
    d.fails("BAD_FORMAT", "list_tubes", field="limit", limit=0)
    d.fails("BAD_FORMAT", "list_tubes", field="limit", limit=10_001)


def test_ping() -> None:
    d = Driver()
    d.at(START + 1.5)
    reply = d("ping")
    assert reply["pong"] is True
    assert reply["server_id"] == "s1"
    assert reply["now"] == START + 1.5


def test_unknown_operation_names_share_one_ops_counter() -> None:
    """A client cannot grow the ops table with made-up operation names."""
    engine = make_engine()
    for name in ("nope", "also-nope", "x" * 1000):
        with pytest.raises(AllQError):
            engine.handle(name, {}, engine.now)
    stats = engine.server_stats(engine.now)
    assert stats["ops"] == {"unknown": 3}
    assert stats["errors"] == {"BAD_FORMAT": 3}
