"""`GET /metrics` over real queue servers and a real gateway core, parsed by
`prometheus_client`'s parser and checked against a known sequence of operations."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from allq.gateway.front import GatewayApp
from allq.gateway.metrics import ResetAbsorber, pick_tubes
from tests.gateway.rest import TOKEN, Rest, make_app
from tests.helpers.cluster import local_cluster
from tests.observability.support import parse, scrape, value, values


async def test_metrics_after_a_known_sequence_of_operations(tmp_path: Path) -> None:
    async with local_cluster(tmp_path, 2) as cluster:
        app = make_app(cluster.gateway, max_waiting=0)
        rest = Rest(app)
        for i in range(5):
            assert (await rest.post("/v1/tubes/alpha/jobs", {"body": f"a{i}"})).status == 201
        assert (await rest.post("/v1/tubes/beta/jobs", {"body": "b", "delay": 100})).status == 201
        assert (await rest.post("/v1/tubes/gamma/jobs", {"body": "g", "ttr": 1})).status == 201
        got = await rest.post("/v1/reserve", {"tubes": ["alpha"], "count": 3})
        jobs = got.json["jobs"]
        assert len(jobs) == 3
        for job in jobs[:2]:
            done = await rest.post(f"/v1/jobs/{job['id']}/done", {"lease": job["lease"]})
            assert done.status == 200
        buried = await rest.post(f"/v1/jobs/{jobs[2]['id']}/bury", {"lease": jobs[2]["lease"]})
        assert buried.status == 200
        (_gamma,) = (await rest.post("/v1/reserve", {"tubes": ["gamma"]})).json["jobs"]
        assert (await rest.post("/v1/tubes/beta/pause", {})).status == 200
        assert (await rest.put("/v1/tubes/alpha/throttle", {"tps": 10})).status == 200
        # Errors: NOT_FOUND, BAD_FORMAT, and a long poll past max_waiting=0 (OVERLOADED).
        assert (await rest.get("/v1/tubes/nosuch")).code == "NOT_FOUND"
        assert (await rest.post("/v1/tubes/alpha/jobs", {"priority": -1})).code == "BAD_FORMAT"
        overloaded = await rest.post("/v1/reserve", {"tubes": ["alpha"], "timeout": 1})
        assert overloaded.code == "OVERLOADED"

        async def timeouts() -> int:
            return int((await cluster.gateway.tube_stats("gamma"))["total_timeouts"])

        with trio.fail_after(10):  # gamma's TTR of 1 s runs out on its server
            while await timeouts() < 1:  # noqa: ASYNC110 (no event crosses the socket)
                await trio.sleep(0.05)

        status, content_type, text = await scrape(app)
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        s = parse(text)

    # Tube gauges
    assert value(s, "allq_tube_jobs", tube="alpha", state="ready") == 2
    assert value(s, "allq_tube_jobs", tube="alpha", state="reserved") == 0
    assert value(s, "allq_tube_jobs", tube="alpha", state="buried") == 1
    assert value(s, "allq_tube_jobs", tube="beta", state="delayed") == 1
    assert value(s, "allq_tube_jobs", tube="gamma", state="ready") == 1  # back after the TTR
    assert value(s, "allq_tube_paused", tube="beta") == 1
    assert value(s, "allq_tube_paused", tube="alpha") == 0
    assert value(s, "allq_tube_throttle_tps", tube="alpha") == pytest.approx(10)
    assert value(s, "allq_tube_throttle_tps", tube="beta") == 0
    assert value(s, "allq_tube_oldest_ready_age_seconds", tube="alpha") > 0
    assert value(s, "allq_tubes") == 3
    # Tube counters (from the servers, summed; reserves counted by the gateway)
    assert value(s, "allq_tube_puts_total", tube="alpha") == 5
    assert value(s, "allq_tube_reserves_total", tube="alpha") == 3
    assert value(s, "allq_tube_reserves_total", tube="gamma") == 1
    assert value(s, "allq_tube_completions_total", tube="alpha") == 2
    assert value(s, "allq_tube_buries_total", tube="alpha") == 1
    assert value(s, "allq_tube_timeouts_total", tube="gamma") == 1
    assert value(s, "allq_tube_timeouts_total", tube="alpha") == 0
    # Servers: health, RTT, their own counters
    for sid in ("s1", "s2"):
        assert value(s, "allq_server_state", server=sid, state="up") == 1
        assert value(s, "allq_server_state", server=sid, state="down") == 0
        assert value(s, "allq_server_rtt_seconds", server=sid) > 0
        assert value(s, "allq_server_stats_ok", server=sid) == 1
    puts = sum(value(s, "allq_server_ops_total", server=sid, op="put") for sid in ("s1", "s2"))
    assert puts == 7
    jobs_held = sum(value(s, "allq_server_jobs", server=sid, state="ready") for sid in ("s1", "s2"))
    assert jobs_held == 3
    assert {"server": "s1", "code": "NOT_FOUND"} in values(s, "allq_server_errors_total")
    # Gateway: errors by code, overload rejections, latency per route, waiters
    assert value(s, "allq_gateway_errors_total", code="NOT_FOUND") == 1
    assert value(s, "allq_gateway_errors_total", code="BAD_FORMAT") == 1
    assert value(s, "allq_gateway_errors_total", code="OVERLOADED") == 1
    assert value(s, "allq_gateway_overload_rejections_total", kind="waiting") == 1
    assert value(s, "allq_gateway_overload_rejections_total", kind="inflight") == 0
    route = "allq_gateway_request_duration_seconds"
    assert value(s, f"{route}_count", route="put_jobs") == 8  # 7 puts and the bad one
    assert value(s, f"{route}_bucket", route="put_jobs", le="+Inf") == 8
    assert value(s, f"{route}_count", route="done") == 2
    assert value(s, f"{route}_sum", route="put_jobs") > 0
    assert value(s, "allq_gateway_long_poll_waiters") == 0
    assert value(s, "allq_gateway_requests_in_flight") == 0
    assert value(s, "allq_gateway_ready") == 1
    assert value(s, "allq_metrics_tubes_dropped_total") == 0


async def test_exported_names_are_documented_and_conventional(tmp_path: Path) -> None:
    async with local_cluster(tmp_path, 1) as cluster:
        app = make_app(cluster.gateway)
        await Rest(app).post("/v1/tubes/t/jobs", {"body": "x"})
        _, _, text = await scrape(app)
    docs = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("allq_"), family.name
        if family.name.endswith("_created"):  # prometheus-client's own companion series
            continue
        if family.type == "counter":
            assert f"`{family.name}_total`" in docs, family.name
        elif family.type == "histogram":
            assert family.name.endswith("_seconds")
            assert f"`{family.name}`" in docs, family.name
        else:
            assert f"`{family.name}`" in docs, family.name


async def test_metrics_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    async with local_cluster(tmp_path, 1) as cluster:
        app = make_app(cluster.gateway, api_token=TOKEN)
        assert (await scrape(app))[0] == 401
        assert (await scrape(app, "wrong"))[0] == 401
        status, _, text = await scrape(app, TOKEN)
    assert status == 200
    s = parse(text)
    assert value(s, "allq_gateway_errors_total", code="UNAUTHORIZED") == 2


async def test_the_tube_cap_keeps_the_fullest_tubes_and_counts_the_rest(tmp_path: Path) -> None:
    async with local_cluster(tmp_path, 2) as cluster:
        app = make_app(cluster.gateway)
        state = app.extensions["allq"]
        assert isinstance(state, GatewayApp)
        state.metrics.max_tubes = 2
        rest = Rest(app)
        for tube, depth in (("t1", 1), ("t2", 3), ("t3", 2), ("t4", 1)):
            for _ in range(depth):
                await rest.post(f"/v1/tubes/{tube}/jobs", {"body": "x"})
        _, _, text = await scrape(app)
    s = parse(text)
    assert {labels["tube"] for labels in values(s, "allq_tube_jobs")} == {"t2", "t3"}
    assert {labels["tube"] for labels in values(s, "allq_tube_puts_total")} == {"t2", "t3"}
    assert value(s, "allq_tubes") == 4
    assert value(s, "allq_metrics_max_tubes") == 2
    assert value(s, "allq_metrics_tubes_dropped_total") == 2


def test_pick_tubes_prefers_the_fullest_then_names() -> None:
    tubes = [{"name": n, "ready": r} for n, r in (("b", 1), ("a", 1), ("c", 5), ("d", 0))]
    assert pick_tubes(tubes, 2) == ["a", "c"]
    assert pick_tubes(tubes, 10) == ["a", "b", "c", "d"]


def test_tube_counters_stay_monotonic_across_a_server_restart() -> None:
    absorber = ResetAbsorber()
    key1, key2 = ("allq_tube_puts", "t", "s1"), ("allq_tube_puts", "t", "s2")

    def step(values: dict[tuple[str, str, str], float], uptimes: dict[str, float]) -> float:
        absorber.update(values, uptimes, tubes=["t"], servers=["s1", "s2"])
        return absorber.total("allq_tube_puts", "t")

    assert step({key1: 10, key2: 5}, {"s1": 100, "s2": 100}) == 15
    assert step({key1: 12, key2: 5}, {"s1": 101, "s2": 101}) == 17
    # s1 restarted (uptime went down) and already counts 20 again: nothing is lost.
    assert step({key1: 20, key2: 6}, {"s1": 1, "s2": 102}) == 12 + 20 + 6
    # s2 does not answer: its last value stays in the sum.
    assert step({key1: 21}, {"s1": 2}) == 12 + 21 + 6
    # s2 restarted without us seeing its uptime fall: the counter went down.
    assert step({key1: 21, key2: 1}, {"s1": 3}) == 12 + 21 + 6 + 1
    # A tube no longer exported, a server removed: forgotten.
    absorber.update({}, {}, tubes=[], servers=["s1"])
    assert absorber.total("allq_tube_puts", "t") == 0
