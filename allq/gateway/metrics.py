"""Prometheus metrics of one gateway app (docs/observability.md has the list).

Two kinds of numbers:

* **events the gateway sees** (request latency per route, error answers by code, overload
  rejections): `prometheus_client` `Histogram`/`Counter` objects in the app's own
  `CollectorRegistry` (never the global one: a process may hold many apps), updated as
  they happen by `allq.gateway.app`;
* **the cluster's state** (servers, tubes, the servers' own counters): read at scrape time
  by `take_snapshot` from the core and turned into metric families by `ClusterCollector`.
  A snapshot is shared for `SNAPSHOT_MAX_AGE_S` by `/metrics` and the dashboard, so many
  scrapers and browser tabs cost one round over the servers.

Cardinality is bounded: at most `max_tubes` tubes get per-tube series (the fullest ones,
then by name); `allq_metrics_tubes_dropped_total` counts the tube series left out, and
`allq_tubes` says how many tubes there are. Route, code, state and server labels come from
fixed sets or from the configured servers.

Server restarts: a queue server's counters start again at 0 when it restarts. Per-server
series (`allq_server_ops_total`, ...) are plain per-process counters, which Prometheus'
`rate()` handles as counter resets. The per-tube counters are sums over servers, where
one server's reset would look like a reset of the sum; `ResetAbsorber` keeps them
monotonic for the life of the gateway process (a restart is seen as the server's
uptime or a counter going down; the last value seen is carried as an offset), and a
server that does not answer keeps its last values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from allq import __version__
from allq.errors import AllQError, NotFound
from allq.gateway.errors import Overloaded
from allq.gateway.route import Limiter

if TYPE_CHECKING:
    from allq.gateway.core import GatewayCore

#: Tubes that get per-tube series at most (the rest are counted as dropped).
DEFAULT_MAX_TUBES = 200
#: A snapshot younger than this is reused by the next scrape or dashboard poll.
SNAPSHOT_MAX_AGE_S = 1.0
#: tube_stats requests in flight at once while taking a snapshot.
SNAPSHOT_CONCURRENCY = 16
#: Request latency buckets: short requests, and long polls up to the 300 s cap.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
JOB_STATES = ("ready", "reserved", "delayed", "buried", "waiting")
SERVER_STATES = ("up", "suspect", "down", "draining")
#: Per-tube counters from the servers' stats_tube: (metric name, stats field).
TUBE_COUNTERS = (
    ("allq_tube_puts", "total_puts", "Jobs put"),
    ("allq_tube_completions", "total_completed", "Jobs completed (done)"),
    ("allq_tube_timeouts", "total_timeouts", "Reservations that ran past their TTR"),
    ("allq_tube_buries", "total_buried", "Jobs buried"),
)


class CountingLimiter(Limiter):
    """The gateway's `Limiter`, counting its OVERLOADED rejections by kind."""

    def __init__(self, *, max_inflight: int, max_waiting: int, retry_after_s: float = 1.0):
        super().__init__(
            max_inflight=max_inflight, max_waiting=max_waiting, retry_after_s=retry_after_s
        )
        self.rejected: dict[str, int] = {"inflight": 0, "waiting": 0}

    @contextmanager
    def request(self) -> Iterator[None]:
        with ExitStack() as stack:
            try:
                stack.enter_context(super().request())
            except Overloaded:
                self.rejected["inflight"] += 1
                raise
            yield

    @contextmanager
    def waiting_slot(self) -> Iterator[None]:
        with ExitStack() as stack:
            try:
                stack.enter_context(super().waiting_slot())
            except Overloaded:
                self.rejected["waiting"] += 1
                raise
            yield


# -- snapshots -------------------------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    """The cluster at one moment, as `/metrics` and the dashboard show it."""

    taken_at: float  # unix time
    servers: list[dict[str, Any]]  # core.servers()
    server_stats: dict[str, dict[str, Any]]  # server id -> the server's stats answer
    unavailable: list[str]
    tubes: list[dict[str, Any]]  # core.tube_stats() of the exported tubes, by name
    tube_count: int
    dropped: int
    ready: bool
    error: str | None = None
    duration_s: float = 0.0


def _depth(tube: Mapping[str, Any]) -> int:
    return sum(int(tube.get(state) or 0) for state in JOB_STATES)


def pick_tubes(tubes: list[dict[str, Any]], limit: int) -> list[str]:
    """The `limit` tubes to export: the fullest first, then by name (stable for ties)."""
    ordered = sorted(tubes, key=lambda t: (-_depth(t), str(t.get("name"))))
    return sorted(str(t["name"]) for t in ordered[:limit])


async def take_snapshot(core: GatewayCore, max_tubes: int) -> Snapshot:
    started = time.perf_counter()
    servers = core.servers()
    ready, _ = core.ready()
    try:
        stats = await core.stats()
    except AllQError as exc:  # no routable server: the server states still tell the story
        return Snapshot(time.time(), servers, {}, [], [], 0, 0, ready, f"{exc.code}: {exc.message}")
    listed: list[dict[str, Any]] = list(stats.get("tubes") or [])
    names = pick_tubes(listed, max_tubes)
    full: dict[str, dict[str, Any]] = {}
    limiter = trio.CapacityLimiter(SNAPSHOT_CONCURRENCY)

    async def one(name: str) -> None:
        async with limiter:
            try:
                full[name] = await core.tube_stats(name)
            except (NotFound, AllQError):  # gone meanwhile, or no server answered
                pass

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return Snapshot(
        taken_at=time.time(),
        servers=servers,
        server_stats=dict(stats.get("servers") or {}),
        unavailable=list(stats.get("unavailable") or []),
        tubes=[full[name] for name in names if name in full],
        tube_count=len(listed),
        dropped=max(0, len(listed) - len(names)),
        ready=ready,
        duration_s=time.perf_counter() - started,
    )


class ResetAbsorber:
    """Per-tube sums of per-server counters, monotonic across server restarts.

    `update` takes one snapshot's values; `total(metric, tube)` is the sum over servers of
    (last value + offset), the offset growing by the last value each time the server
    restarted. Entries of tubes no longer exported and of servers no longer configured are
    forgotten.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[float, float]] = {}  # -> (last, offset)
        self._uptime: dict[str, float] = {}

    def update(
        self,
        values: Mapping[tuple[str, str, str], float],
        uptimes: Mapping[str, float],
        *,
        tubes: Iterable[str],
        servers: Iterable[str],
    ) -> None:
        restarted = {s for s, up in uptimes.items() if up < self._uptime.get(s, -math.inf)}
        self._uptime.update(uptimes)
        for key, value in values.items():
            last, offset = self._seen.get(key, (0.0, 0.0))
            if key[2] in restarted or value < last:
                offset += last
            self._seen[key] = (value, offset)
        keep_tubes, keep_servers = set(tubes), set(servers)
        for key in [k for k in self._seen if k[1] not in keep_tubes or k[2] not in keep_servers]:
            del self._seen[key]
        for server in [s for s in self._uptime if s not in keep_servers]:
            del self._uptime[server]

    def total(self, metric: str, tube: str) -> float:
        return sum(
            last + offset
            for (m, t, _), (last, offset) in self._seen.items()
            if m == metric and t == tube
        )


# -- the metrics of one app ------------------------------------------------------------------


def server_label(server: Mapping[str, Any]) -> str:
    return str(server.get("id") or server.get("address") or "?")


@dataclass
class GatewayMetrics:
    """Everything `/metrics` exports for one app; `registry` is what it renders."""

    limiter: CountingLimiter
    max_tubes: int = DEFAULT_MAX_TUBES
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    absorber: ResetAbsorber = field(default_factory=ResetAbsorber)
    snapshot: Snapshot | None = None
    #: Jobs handed out by reserves, by tube (the core's `reserved_by_tube`, when it has one).
    reserved_counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latency = Histogram(
            "allq_gateway_request_duration_seconds",
            "Time to answer a REST request, by route (long polls included)",
            ["route"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.errors = Counter(
            "allq_gateway_errors",
            "Error answers of the gateway, by error code",
            ["code"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "allq_metrics_tubes_dropped",
            "Tubes left out of the per-tube series because of the tube cap, summed over scrapes",
            registry=self.registry,
        )
        self.registry.register(ClusterCollector(self))
        self._snapshot_lock = trio.Lock()
        self._snapshot_at = -math.inf

    def request_done(self, route: str, seconds: float) -> None:
        self.latency.labels(route).observe(seconds)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    async def fresh_snapshot(self, core: GatewayCore) -> Snapshot:
        """The current snapshot, taken anew when older than `SNAPSHOT_MAX_AGE_S`."""
        async with self._snapshot_lock:
            if self.snapshot is not None and (
                trio.current_time() - self._snapshot_at < SNAPSHOT_MAX_AGE_S
            ):
                return self.snapshot
            snapshot = await take_snapshot(core, self.max_tubes)
            self._snapshot_at = trio.current_time()
            self.dropped.inc(snapshot.dropped)
            self._absorb(snapshot)
            self.snapshot = snapshot
            return snapshot

    def _absorb(self, snapshot: Snapshot) -> None:
        values: dict[tuple[str, str, str], float] = {}
        for tube in snapshot.tubes:
            for sid, per_server in (tube.get("servers") or {}).items():
                for metric, key, _ in TUBE_COUNTERS:
                    values[metric, str(tube["name"]), str(sid)] = float(per_server.get(key) or 0)
        uptimes = {
            sid: float(stats["uptime_s"])
            for sid, stats in snapshot.server_stats.items()
            if isinstance(stats.get("uptime_s"), int | float)
        }
        self.absorber.update(
            values,
            uptimes,
            tubes=[str(t["name"]) for t in snapshot.tubes],
            servers=[server_label(s) for s in snapshot.servers],
        )


class ClusterCollector:
    """Metric families computed from the latest snapshot, the limiter and the core."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        limiter = m.limiter
        yield _gauge("allq_gateway_info", "The gateway's version", 1, {"version": __version__})
        yield _gauge("allq_gateway_requests_in_flight", "Requests in flight", limiter.inflight)
        yield _gauge(
            "allq_gateway_long_poll_waiters", "Reserves waiting (long polls)", limiter.waiting
        )
        rejected = CounterMetricFamily(
            "allq_gateway_overload_rejections",
            "Requests answered OVERLOADED (429): kind=inflight or waiting",
            labels=["kind"],
        )
        for kind, count in sorted(limiter.rejected.items()):
            rejected.add_metric([kind], count)
        yield rejected
        snapshot = m.snapshot
        if snapshot is None:
            return
        yield _gauge("allq_gateway_ready", "1 when a queue server is routable", int(snapshot.ready))
        yield _gauge(
            "allq_metrics_snapshot_duration_seconds",
            "Time the last cluster snapshot took",
            snapshot.duration_s,
        )
        yield from _server_families(snapshot)
        yield from self._tube_families(snapshot)

    def _tube_families(self, snapshot: Snapshot) -> Iterator[Metric]:
        m = self.metrics
        yield _gauge("allq_tubes", "Tubes in the cluster", snapshot.tube_count)
        yield _gauge("allq_metrics_max_tubes", "The cap on tubes with per-tube series", m.max_tubes)
        jobs = GaugeMetricFamily(
            "allq_tube_jobs", "Jobs of a tube by state", labels=["tube", "state"]
        )
        age = _family("allq_tube_oldest_ready_age_seconds", "Age of the oldest ready job")
        paused = _family("allq_tube_paused", "1 when the tube is paused")
        draining = _family("allq_tube_draining", "1 when the tube refuses new jobs")
        throttle = _family("allq_tube_throttle_tps", "Cluster-wide reserve rate limit (0: none)")
        waiters = _family("allq_tube_waiting_reservers", "Reserves waiting on the tube (servers)")
        counters = {
            name: CounterMetricFamily(name, f"{text} (summed over servers)", labels=["tube"])
            for name, _, text in TUBE_COUNTERS
        }
        reserves = CounterMetricFamily(
            "allq_tube_reserves", "Jobs handed out by this gateway's reserves", labels=["tube"]
        )
        reserved = m.reserved_counts
        for tube in snapshot.tubes:
            name = str(tube["name"])
            for state in JOB_STATES:
                jobs.add_metric([name, state], int(tube.get(state) or 0))
            age.add_metric([name], float(tube.get("oldest_ready_age_s") or 0.0))
            paused.add_metric([name], int(bool(tube.get("paused"))))
            draining.add_metric([name], int(bool(tube.get("draining"))))
            throttle.add_metric([name], tube_throttle(tube))
            waiters.add_metric([name], int(tube.get("waiting_reservers") or 0))
            for metric, family in counters.items():
                family.add_metric([name], m.absorber.total(metric, name))
            reserves.add_metric([name], reserved.get(name, 0))
        yield from (jobs, age, paused, draining, throttle, waiters, *counters.values(), reserves)


def tube_throttle(tube: Mapping[str, Any]) -> float:
    """The cluster-wide rate: the sum of the servers' shares (0 when none is set)."""
    shares = [
        float(s["throttle_tps"])
        for s in (tube.get("servers") or {}).values()
        if isinstance(s, Mapping) and isinstance(s.get("throttle_tps"), int | float)
    ]
    return sum(shares)


def _gauge(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _family(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["tube"])


def _server_families(snapshot: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "allq_server_info", "A configured server", labels=["server", "address"]
    )
    state = GaugeMetricFamily(
        "allq_server_state", "1 for the server's health state", labels=["server", "state"]
    )
    rtt = GaugeMetricFamily(
        "allq_server_rtt_seconds", "Round trip of the last probe", labels=["server"]
    )
    inflight = GaugeMetricFamily(
        "allq_server_requests_in_flight",
        "Gateway requests in flight to the server",
        labels=["server"],
    )
    for server in snapshot.servers:
        sid = server_label(server)
        info.add_metric([sid, str(server.get("address", ""))], 1)
        for name in SERVER_STATES:
            state.add_metric([sid, name], int(server.get("state") == name))
        if isinstance(server.get("rtt_ms"), int | float):
            rtt.add_metric([sid], float(server["rtt_ms"]) / 1000)
        inflight.add_metric([sid], int(server.get("in_flight") or 0))
    yield from (info, state, rtt, inflight)
    jobs = GaugeMetricFamily(
        "allq_server_jobs", "Jobs held by a server, by state", labels=["server", "state"]
    )
    waiters = GaugeMetricFamily(
        "allq_server_waiting_reservers", "Reserves waiting on the server", labels=["server"]
    )
    uptime = GaugeMetricFamily("allq_server_uptime_seconds", "Server uptime", labels=["server"])
    tubes = GaugeMetricFamily("allq_server_tubes", "Tubes on the server", labels=["server"])
    ops = CounterMetricFamily(
        "allq_server_ops", "Operations handled by the server process", labels=["server", "op"]
    )
    errors = CounterMetricFamily(
        "allq_server_errors",
        "Error answers of the server process, by code",
        labels=["server", "code"],
    )
    answered = GaugeMetricFamily(
        "allq_server_stats_ok",
        "1 when the server answered the last stats request",
        labels=["server"],
    )
    for server in snapshot.servers:
        sid = server_label(server)
        stats = snapshot.server_stats.get(sid)
        answered.add_metric([sid], int(stats is not None))
        if stats is None:
            continue
        for name in JOB_STATES:
            jobs.add_metric([sid, name], int(stats.get("jobs", {}).get(name) or 0))
        waiters.add_metric([sid], int(stats.get("waiting_reservers") or 0))
        uptime.add_metric([sid], float(stats.get("uptime_s") or 0.0))
        tubes.add_metric([sid], int(stats.get("tubes") or 0))
        for op, count in sorted((stats.get("ops") or {}).items()):
            ops.add_metric([sid, str(op)], int(count))
        for code, count in sorted((stats.get("errors") or {}).items()):
            errors.add_metric([sid, str(code)], int(count))
    yield from (answered, jobs, waiters, uptime, tubes, ops, errors)
