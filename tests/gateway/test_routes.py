"""REST v1 contract (api.md §1-2) through `app.test_client()`, using only HTTP.

These tests touch the core only through the REST API, so they can run against any
`GatewayCore`: the `core` fixture yields the in-memory `FakeCore`; to run them against the
real `Gateway`, parametrize that fixture with one that opens real servers and yields it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from allq.gateway.core import GatewayCore
from tests.gateway.fakes import FakeCore
from tests.gateway.rest import Rest, make_app
from tests.helpers.cluster import local_cluster

LEASE0 = "A" * 22


@pytest.fixture(params=["fake", "real"])
async def core(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GatewayCore]:
    """The in-memory FakeCore, and the real Gateway over 2 real loopback servers."""
    if request.param == "fake":
        fake = FakeCore()
        yield fake
        assert fake.jobs is not None
        return
    with trio.fail_after(60):
        async with local_cluster(tmp_path, n=2) as cluster:
            yield cluster.gateway


@pytest.fixture
def rest(core: GatewayCore) -> Rest:
    return Rest(make_app(core))


async def put(rest: Rest, tube: str = "t", **fields: Any) -> str:
    fields.setdefault("body", "hello")
    fields.setdefault("ttr", 60)
    answer = await rest.post(f"/v1/tubes/{tube}/jobs", fields)
    assert answer.status == 201, answer.json
    job_id = answer.json["id"]
    assert isinstance(job_id, str)
    return job_id


async def reserve_one(rest: Rest, tube: str = "t") -> dict[str, Any]:
    answer = await rest.post("/v1/reserve", {"tubes": [tube]})
    assert answer.status == 200, answer.json
    (job,) = answer.json["jobs"]
    assert isinstance(job, dict)
    return job


# -- puts and the job object -------------------------------------------------------------------


async def test_put_answers_201_and_the_job_object_has_the_documented_shape(rest: Rest) -> None:
    answer = await rest.post("/v1/tubes/t/jobs", {"body": "héllo", "priority": 7, "ttr": 30})
    assert answer.status == 201
    assert answer.json == {
        "id": answer.json["id"],
        "tube": "t",
        "state": "ready",
        "duplicate": False,
    }
    job = (await rest.get(f"/v1/jobs/{answer.json['id']}")).json
    assert job["body"] == "héllo"
    assert "body_b64" not in job
    assert (job["state"], job["priority"], job["ttr"]) == ("ready", 7, 30)
    assert job["age_s"] >= 0
    for counter in ("reserves", "timeouts", "releases", "buries", "kicks"):
        assert job[counter] == 0
    for absent in ("lease", "deadline_in_s", "delay_left_s", "parent_id", "shard_key"):
        assert absent not in job


async def test_binary_bodies_come_back_as_body_b64_and_encoding_base64_forces_it(
    rest: Rest,
) -> None:
    raw = b"\xff\x00\xfe"
    binary_id = (
        await rest.post("/v1/tubes/t/jobs", {"body_b64": base64.b64encode(raw).decode()})
    ).json["id"]
    got = (await rest.get(f"/v1/jobs/{binary_id}")).json
    assert base64.b64decode(got["body_b64"]) == raw
    assert "body" not in got
    text_id = await put(rest, body="plain")
    forced = (await rest.get(f"/v1/jobs/{text_id}", query={"encoding": "base64"})).json
    assert base64.b64decode(forced["body_b64"]) == b"plain"


async def test_a_put_without_body_stores_the_empty_body(rest: Rest) -> None:
    answer = await rest.post("/v1/tubes/t/jobs", {})
    assert answer.status == 201
    assert (await rest.get(f"/v1/jobs/{answer.json['id']}")).json["body"] == ""


async def test_duplicate_put_answers_200_with_the_original_id(rest: Rest) -> None:
    first = await rest.post("/v1/tubes/t/jobs", {"body": "x", "idempotency_key": "k-1"})
    again = await rest.post("/v1/tubes/t/jobs", {"body": "x", "idempotency_key": "k-1"})
    assert (first.status, first.json["duplicate"]) == (201, False)
    assert (again.status, again.json["duplicate"]) == (200, True)
    assert again.json["id"] == first.json["id"]


async def test_a_delayed_job_shows_delay_left_s(rest: Rest) -> None:
    job_id = await put(rest, delay=30)
    job = (await rest.get(f"/v1/jobs/{job_id}")).json
    assert job["state"] == "delayed"
    assert 29 <= job["delay_left_s"] <= 30


async def test_batch_put_answers_in_request_order_and_one_bad_job_fails_alone(
    rest: Rest,
) -> None:
    answer = await rest.post(
        "/v1/tubes/t/jobs",
        {"jobs": [{"body": "a"}, {"body": "b", "nope": 1}, {"body_b64": "Yw=="}, {"ttr": 0}]},
    )
    assert answer.status == 201
    results = answer.json["jobs"]
    assert len(results) == 4
    assert results[0]["state"] == "ready"
    assert results[1]["error"]["code"] == "BAD_FORMAT"
    assert results[1]["error"]["field"] == "jobs[1].nope"
    assert results[2]["state"] == "ready"
    assert results[3]["error"]["field"] == "jobs[3].ttr"
    got = (await rest.get(f"/v1/jobs/{results[2]['id']}")).json
    assert got["body"] == "c"


async def test_parents_answer_201_waiting_and_children_started(rest: Rest) -> None:
    answer = await rest.post(
        "/v1/tubes/t/parents", {"body": "p", "timeout": 60, "limit": 2, "noop": True}
    )
    assert answer.status == 201
    assert answer.json["state"] == "waiting"
    started = await rest.post(f"/v1/jobs/{answer.json['id']}/children-started")
    assert started.status == 200
    assert started.json["id"] == answer.json["id"]
    assert "limit" in started.json


# -- reserve and the job operations ---------------------------------------------------------


async def test_reserve_gives_lease_and_deadline_then_done_removes_the_job(rest: Rest) -> None:
    job_id = await put(rest)
    job = await reserve_one(rest)
    assert job["id"] == job_id
    assert job["state"] == "reserved"
    assert len(job["lease"]) == 22
    assert 0 < job["deadline_in_s"] <= 60
    assert job["reserves"] == 1
    done = await rest.post(f"/v1/jobs/{job_id}/done", {"lease": job["lease"]})
    assert (done.status, done.json) == (200, {"id": job_id, "state": "gone"})
    assert (await rest.get(f"/v1/jobs/{job_id}")).status == 404


async def test_reserve_with_nothing_ready_and_no_timeout_answers_empty(rest: Rest) -> None:
    answer = await rest.post("/v1/reserve", {"tubes": ["empty"], "timeout": 0})
    assert (answer.status, answer.json) == (200, {"jobs": []})
    answer = await rest.post("/v1/reserve", {"tubes": ["empty"], "timeout": 0.05})
    assert (answer.status, answer.json) == (200, {"jobs": []})


async def test_reserve_long_polls_until_a_put_arrives(rest: Rest) -> None:
    answers: list[Any] = []

    async def wait() -> None:
        answers.append(await rest.post("/v1/reserve", {"tubes": ["a", "lp"], "timeout": 10}))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(0.1)
            job_id = await put(rest, tube="lp")
    (answer,) = answers
    assert [job["id"] for job in answer.json["jobs"]] == [job_id]


async def test_reserve_folds_done_in_first(rest: Rest) -> None:
    ids = {await put(rest), await put(rest)}
    job = await reserve_one(rest)
    first = job["id"]
    answer = await rest.post(
        "/v1/reserve",
        {"tubes": ["t"], "done": [{"id": first, "lease": job["lease"]}], "count": 5},
    )
    assert answer.status == 200
    assert answer.json["done"] == [{"id": first, "state": "gone"}]
    assert [job["id"] for job in answer.json["jobs"]] == list(ids - {first})


async def test_done_errors_are_reported_per_item_and_the_reserve_still_runs(rest: Rest) -> None:
    job_id = await put(rest)
    answer = await rest.post(
        "/v1/reserve", {"tubes": ["t"], "done": [{"id": "s1," + "9" * 22, "lease": LEASE0}]}
    )
    assert answer.status == 200
    assert answer.json["done"][0]["error"]["code"] == "NOT_FOUND"
    assert [job["id"] for job in answer.json["jobs"]] == [job_id]


async def test_tube_reserve_takes_count_and_timeout_in_the_query(rest: Rest) -> None:
    ids = [await put(rest, tube="q") for _ in range(3)]
    answer = await rest.post("/v1/tubes/q/reserve", query={"count": "2", "timeout": "0"})
    assert answer.status == 200
    # Order is FIFO per server only (semantics.md §18): compare as sets.
    got = [job["id"] for job in answer.json["jobs"]]
    assert 1 <= len(got) <= 2
    assert set(got) <= set(ids)
    empty = await rest.post("/v1/tubes/other/reserve", query={"timeout": "0.05"})
    assert empty.json == {"jobs": []}


async def test_batch_done(rest: Rest) -> None:
    await put(rest)
    await put(rest)
    jobs: list[dict[str, Any]] = []
    while len(jobs) < 2:  # count is not filled across servers in one call
        jobs += (await rest.post("/v1/reserve", {"tubes": ["t"], "count": 2})).json["jobs"]
    items = [{"id": job["id"], "lease": job["lease"]} for job in jobs]
    items.append({"id": jobs[0]["id"], "lease": jobs[0]["lease"]})
    answer = await rest.post("/v1/jobs/done", {"jobs": items})
    assert answer.status == 200
    results = answer.json["jobs"]
    assert [r.get("state") for r in results[:2]] == ["gone", "gone"]
    assert results[2]["error"]["code"] == "NOT_FOUND"


async def test_touch_release_bury_kick_and_delete(rest: Rest) -> None:
    job_id = await put(rest)
    lease = (await reserve_one(rest))["lease"]
    touched = await rest.post(f"/v1/jobs/{job_id}/touch", {"lease": lease})
    assert touched.status == 200
    assert touched.json["id"] == job_id
    assert 0 < touched.json["deadline_in_s"] <= 60
    released = await rest.post(f"/v1/jobs/{job_id}/release", {"lease": lease, "delay": 5})
    assert released.json == {"id": job_id, "state": "delayed"}
    kicked = await rest.post(f"/v1/jobs/{job_id}/kick")
    assert kicked.json == {"id": job_id, "state": "ready"}
    lease = (await reserve_one(rest))["lease"]
    stale = await rest.post(f"/v1/jobs/{job_id}/bury", {"lease": LEASE0})
    assert (stale.status, stale.code) == (409, "LEASE_EXPIRED")
    buried = await rest.post(f"/v1/jobs/{job_id}/bury", {"lease": lease, "priority": 1})
    assert buried.json == {"id": job_id, "state": "buried"}
    not_reserved = await rest.post(f"/v1/jobs/{job_id}/touch", {"lease": lease})
    assert not_reserved.status == 409
    deleted = await rest.delete(f"/v1/jobs/{job_id}")
    assert deleted.json == {"id": job_id, "state": "gone", "previous_state": "buried"}
    assert (await rest.delete(f"/v1/jobs/{job_id}")).code == "NOT_FOUND"


async def test_delete_checks_the_lease_when_given(rest: Rest) -> None:
    job_id = await put(rest)
    lease = (await reserve_one(rest))["lease"]
    wrong = await rest.delete(f"/v1/jobs/{job_id}", query={"lease": LEASE0})
    assert (wrong.status, wrong.code) == (409, "LEASE_EXPIRED")
    right = await rest.delete(f"/v1/jobs/{job_id}", query={"lease": lease})
    assert right.json["previous_state"] == "reserved"


async def test_get_of_a_reserved_job_shows_its_deadline(rest: Rest) -> None:
    job_id = await put(rest, ttr=40)
    await reserve_one(rest)
    job = (await rest.get(f"/v1/jobs/{job_id}")).json
    assert job["state"] == "reserved"
    assert 0 < job["deadline_in_s"] <= 40
    assert "lease" not in job


# -- tubes, cluster, operations ---------------------------------------------------------------


async def test_tube_listing_stats_and_peek(rest: Rest) -> None:
    job_id = await put(rest, tube="stats")
    tubes = (await rest.get("/v1/tubes")).json["tubes"]
    assert {"name": "stats", "ready": 1}.items() <= next(
        t for t in tubes if t["name"] == "stats"
    ).items()
    stats = await rest.get("/v1/tubes/stats")
    assert (stats.status, stats.json["ready"]) == (200, 1)
    assert "servers" in stats.json
    peek = await rest.get("/v1/tubes/stats/peek")
    assert peek.json["id"] == job_id
    assert (await rest.get("/v1/tubes/stats/peek", query={"state": "buried"})).status == 404
    assert (await rest.get("/v1/tubes/nothing-here")).code == "NOT_FOUND"


async def test_tube_controls(rest: Rest) -> None:
    job_id = await put(rest, tube="c")
    lease = (await reserve_one(rest, "c"))["lease"]
    await rest.post(f"/v1/jobs/{job_id}/bury", {"lease": lease})
    kicked = await rest.post("/v1/tubes/c/kick", {"bound": 5})
    assert kicked.json == {"kicked": 1}
    not_fair = await rest.put("/v1/tubes/c/shard-limit", {"limit": 3})
    assert (not_fair.status, not_fair.code, not_fair.field) == (400, "BAD_FORMAT", "tube")
    fair = await rest.put("/v1/tubes/fq-c/shard-limit", {"limit": 3})
    assert fair.json["limit"] == 3
    paused = await rest.post("/v1/tubes/c/pause", {"seconds": 10})
    assert paused.status == 200
    assert paused.json["paused"] is True
    assert paused.json["servers"] >= 1
    assert (await rest.post("/v1/tubes/c/unpause")).status == 200
    throttled = await rest.put("/v1/tubes/c/throttle", {"tps": 2.5})
    assert throttled.json["tps"] == 2.5
    assert sum(throttled.json["per_server"].values()) == pytest.approx(2.5)
    assert (await rest.delete("/v1/tubes/c/throttle")).status == 200
    assert (await rest.post("/v1/tubes/c/drain")).status == 200
    assert (await rest.post("/v1/tubes/c/undrain")).status == 200
    cleared = await rest.delete("/v1/tubes/c")
    assert cleared.json["deleted"] == 1


async def test_servers_stats_health_and_readiness(rest: Rest) -> None:
    servers = (await rest.get("/v1/servers")).json["servers"]
    assert {"id", "address", "state"} <= set(servers[0])
    assert (await rest.get("/v1/stats")).status == 200
    health = await rest.get("/healthz")
    assert (health.status, health.json["status"]) == (200, "ok")
    ready = await rest.get("/readyz")
    assert (ready.status, ready.json) == (200, {"ready": True})
    document = await rest.get("/openapi.json")
    assert document.json["openapi"].startswith("3.1")
