"""The benchmark suite of performance.md: B1-B10 from one entry point (also `allq bench`).

    .venv/bin/python -m benchmarks.suite --only B1,B4 --runs 3 --seconds 5 --json out.json

Every benchmark starts its own processes on loopback (allq servers, gateways, and for B4/B7
the reference beanstalkd on a free port), runs its variants A B A B … `--runs` times, each
bounded by `--seconds` and a job count, and stops every process it started. While it runs a
progress bar shows the current measurement; at the end it prints a summary table (median of
the runs, min-max, latency percentiles, CPU-seconds per 1,000 jobs for each process, peak
RSS from VmHWM, the load generator's CPU share and each target met or not) and writes the
JSON file; `--markdown` and `--chart` (needs matplotlib, the `bench` extra) are optional.

Load generators run in this process on Trio: raw h11 keep-alive clients (JsonHttp), the
pipelining encrypted wire client, a raw line-protocol client and a pipelined raw-socket
beanstalkd client. Reused pieces: benchmarks.procs (start, /proc CPU), bench_server
(pipelined wire requests), bench_gateway (gateway start, pickup latency), bench_compat
(line protocol driver).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from allq.client.raw import JsonHttp
from allq.wire.client import open_client
from allq.wire.keyfiles import keygen, load_public_key, load_secret_key
from benchmarks import bench_compat, bench_gateway, bench_server
from benchmarks.procs import children, cpu_seconds, own_cpu, start

BODY = "x" * 100
BODY_BYTES = BODY.encode()
ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10")

Measure = Callable[[], dict[str, Any]]


# -- processes --------------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing measured in each run: `measure()` returns at least {"jobs": n}."""

    name: str
    measure: Measure
    roles: dict[str, list[int]] = field(default_factory=dict)  # role -> pids (CPU, RSS)


class Procs:
    """Every process a benchmark starts; `stop_all()` stops each of them, newest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []
        keygen(root / "keys", clients=1, force=False)
        self.keys = root / "keys"

    def server(self, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
        process, (host, port) = start(
            ["server", "--port", "0", "--name", name, "--key", str(self.keys / "server.key"),
             "--allow", str(self.keys / "clients.allow"), "--handshake-rate", "100000",
             "--handshake-rate-per-source", "100000", *extra],
            self.root / f"{name}.log",
        )  # fmt: skip
        self.started.append(process)
        return process, f"{host}:{port}"

    def gateway(
        self, workers: int, servers: list[tuple[subprocess.Popen[bytes], str]]
    ) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
        process, address = bench_gateway.start_gateway(workers, servers, self.keys, self.root)
        self.started.append(process)
        trio.run(bench_compat.wait_ready, address, len(servers))
        return process, address

    def line_gateway(
        self, servers: list[tuple[subprocess.Popen[bytes], str]]
    ) -> tuple[subprocess.Popen[bytes], tuple[str, int], tuple[str, int]]:
        line_port = bench_compat.free_port()
        process, rest = start(
            ["gateway", "--port", "0", "--line-port", str(line_port), "--socket", "off",
             "--log-level", "INFO", "--servers", ",".join(a for _, a in servers),
             "--key", str(self.keys / "client-1.key"),
             "--server-key", str(self.keys / "server.pub")],
            self.root / "line-gateway.log",
        )  # fmt: skip
        self.started.append(process)
        trio.run(bench_compat.wait_ready, rest, len(servers))
        return process, rest, ("127.0.0.1", line_port)

    def beanstalkd(self) -> tuple[subprocess.Popen[bytes], tuple[str, int]] | None:
        binary = beanstalkd_binary()
        if binary is None:
            return None
        port = bench_compat.free_port()
        process = subprocess.Popen(
            [binary, "-l", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL
        )
        self.started.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process, ("127.0.0.1", port)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(0.05)

    def stop(self, process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
        if process.poll() is None:
            (process.kill if kill else process.terminate)()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        self.started.clear()


_BEANSTALKD: dict[str, str | None] = {}


def beanstalkd_binary() -> str | None:
    """beanstalkd's path, installing the Debian package once when missing (None: unavailable)."""
    if "path" not in _BEANSTALKD:
        path = shutil.which("beanstalkd")
        if path is None and shutil.which("apt-get") is not None:
            print("beanstalkd missing: apt-get install -y beanstalkd", file=sys.stderr)
            done = subprocess.run(
                ["apt-get", "install", "-y", "beanstalkd"], capture_output=True, check=False
            )
            path = shutil.which("beanstalkd")
            if path is None:
                print(
                    "beanstalkd install failed; reference rows unavailable:\n"
                    + done.stderr.decode(errors="replace")[-500:],
                    file=sys.stderr,
                )
        _BEANSTALKD["path"] = path
    return _BEANSTALKD["path"]


def peak_rss_mib(pids: list[int]) -> float:
    """Sum of VmHWM of the processes and their direct children."""
    total = 0
    for pid in pids:
        for member in [pid, *children(pid)]:
            total += _status_kib(member, "VmHWM")
    return round(total / 1024, 1)


def rss_mib(pid: int) -> float:
    return round(_status_kib(pid, "VmRSS") / 1024, 1)


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def percentile(values: list[float], q: float) -> float:
    return bench_gateway.percentile(values, q) if values else float("nan")


# -- load generators --------------------------------------------------------------------------


async def rest_cycles(
    address: tuple[str, int], concurrency: int, seconds: float, tube: str
) -> dict[str, Any]:
    """B1 shape with false empties counted (a reserve answering no job after our own put)."""
    n = {"jobs": 0, "errors": 0, "empties": 0}

    async def client() -> None:
        async with await JsonHttp.connect(address) as http:
            ack: list[dict[str, str]] = []
            with trio.move_on_after(seconds):
                while True:
                    status, _ = await http.request("POST", f"/v1/tubes/{tube}/jobs", {"body": BODY})
                    n["errors"] += status != 201
                    status, body = await http.request(
                        "POST", "/v1/reserve", {"tubes": [tube], "timeout": 1, "done": ack}
                    )
                    if status != 200:
                        n["errors"] += 1
                        ack = []
                        continue
                    n["jobs"] += len(ack)
                    ack = [{"id": j["id"], "lease": j["lease"]} for j in body["jobs"]]
                    n["empties"] += not ack

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return n


async def rest_batches(
    address: tuple[str, int], concurrency: int, seconds: float, tube: str, size: int
) -> dict[str, Any]:
    """B2: put a batch of `size`, reserve count=`size`, done the batch."""
    n = {"jobs": 0, "errors": 0}
    batch = {"jobs": [{"body": BODY} for _ in range(size)]}

    async def client() -> None:
        async with await JsonHttp.connect(address) as http:
            with trio.move_on_after(seconds):
                while True:
                    status, _ = await http.request("POST", f"/v1/tubes/{tube}/jobs", batch)
                    n["errors"] += status != 201
                    status, body = await http.request(
                        "POST", "/v1/reserve", {"tubes": [tube], "timeout": 1, "count": size}
                    )
                    if status != 200 or not body["jobs"]:
                        n["errors"] += status != 200
                        continue
                    items = [{"id": j["id"], "lease": j["lease"]} for j in body["jobs"]]
                    status, _ = await http.request("POST", "/v1/jobs/done", {"jobs": items})
                    if status == 200:
                        n["jobs"] += len(items)
                    else:
                        n["errors"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return n


async def spike(
    address: tuple[str, int], workers: int, burst: int, tube: str, limit: float
) -> dict[str, Any]:
    """B5: `workers` long-polling keep-alive connections, then a burst of `burst` jobs put in
    batches of 1,000; pickup latency = job received - its batch's put sent."""
    seen: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    connected = 0
    all_connected, drained = trio.Event(), trio.Event()
    sent_at: list[float] = []
    last_at = 0.0

    async def worker() -> None:
        nonlocal connected, last_at
        try:
            http = await JsonHttp.connect(address)
        except OSError as exc:
            errors.append(repr(exc))
            return
        async with http:
            connected += 1
            if connected == workers:
                all_connected.set()
            ack: list[dict[str, str]] = []
            while not drained.is_set():
                try:
                    status, body = await http.request(
                        "POST", "/v1/reserve", {"tubes": [tube], "timeout": 5, "done": ack}
                    )
                except (OSError, trio.BrokenResourceError) as exc:
                    errors.append(repr(exc))
                    return
                now = time.perf_counter()
                if status != 200:
                    errors.append(f"{status} {body}")
                    ack = []
                    continue
                ack = [{"id": j["id"], "lease": j["lease"]} for j in body["jobs"]]
                for job in body["jobs"]:
                    seen[job["id"]] = seen.get(job["id"], 0) + 1
                    latencies.append(now - sent_at[int(job["body"])])
                    last_at = now
                if len(seen) >= burst:
                    drained.set()

    with trio.move_on_after(limit) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
            with trio.fail_after(60):
                await all_connected.wait()
            await trio.sleep(1.0)  # every long poll reaches the server
            async with await JsonHttp.connect(address) as putter:
                first = time.perf_counter()
                for start_at in range(0, burst, 1000):
                    size = min(1000, burst - start_at)
                    sent_at.extend([time.perf_counter()] * size)
                    jobs = [{"body": str(start_at + i)} for i in range(size)]
                    status, body = await putter.request(
                        "POST", f"/v1/tubes/{tube}/jobs", {"jobs": jobs}
                    )
                    if status != 201:
                        errors.append(f"put {status} {body}")
            await drained.wait()
            nursery.cancel_scope.cancel()
    drain = (last_at - first) if seen else float("nan")
    return {
        "jobs": len(seen),
        "errors": len(errors),
        "lost": burst - len(seen),
        "duplicated": sum(c - 1 for c in seen.values()),
        "timed_out": scope.cancelled_caught,
        "drain_s": round(drain, 2),
        "seconds": drain,
        "pickup_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "pickup_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "first_error": errors[0] if errors else None,
    }


async def wire_put(
    host: str, port: int, keys: Path, seconds: float, count: int, depth: int, tube: str
) -> int:
    async with _wire(host, port, keys) as client:
        done = 0
        with trio.move_on_after(seconds):
            while done < count:
                await bench_server.pipelined(
                    client, "put", lambda i: {"tube": tube, "body": BODY_BYTES}, depth
                )
                done += depth
        return done


async def wire_reserve_done(
    host: str, port: int, keys: Path, seconds: float, count: int, depth: int, tube: str
) -> int:
    async with _wire(host, port, keys) as client:
        done = 0
        with trio.move_on_after(seconds):
            while done + depth <= count:
                batches = await bench_server.pipelined(
                    client, "reserve", lambda i: {"tubes": [tube]}, depth
                )
                jobs: list[Any] = [b[0] for b in batches if b]  # type: ignore[index]
                await bench_server.pipelined(client, "done", _lease_of(jobs), len(jobs))
                done += len(jobs)
                if len(jobs) < depth:
                    break
        return done


def _lease_of(jobs: list[Any]) -> Callable[[int], dict[str, Any]]:
    return lambda i: {"job_id": jobs[i]["id"], "lease": jobs[i]["lease"]}


async def wire_fill(host: str, port: int, keys: Path, jobs: int, tube: str) -> None:
    async with _wire(host, port, keys) as client:
        for first in range(0, jobs, 1000):
            size = min(1000, jobs - first)
            batch = [{"tube": tube, "body": BODY_BYTES} for _ in range(size)]
            await client.request("put_batch", jobs=batch)


def _wire(host: str, port: int, keys: Path) -> Any:
    return open_client(
        host, port, load_secret_key(keys / "client-1.key"), load_public_key(keys / "server.pub")
    )


class Beanstalk:
    """A pipelined raw-socket beanstalkd client: `depth` commands sent, then `depth` replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, address: tuple[str, int], tube: str) -> Beanstalk:
        self = cls(await trio.open_tcp_stream(*address))
        await self.stream.send_all(f"use {tube}\r\nwatch {tube}\r\nignore default\r\n".encode())
        for _ in range(3):
            await self.line()
        return self

    async def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("beanstalkd closed the connection")
            self.buffer += chunk
        out = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return out

    async def exact(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("beanstalkd closed the connection")
            self.buffer += chunk
        out = bytes(self.buffer[:size])
        del self.buffer[: size + 2]
        return out

    async def put(self, depth: int) -> int:
        command = b"put 0 0 60 %d\r\n%s\r\n" % (len(BODY_BYTES), BODY_BYTES)
        await self.stream.send_all(command * depth)
        return sum([(await self.line()).startswith(b"INSERTED") for _ in range(depth)])

    async def reserve_delete(self, depth: int) -> int:
        await self.stream.send_all(b"reserve-with-timeout 0\r\n" * depth)
        ids = []
        for _ in range(depth):
            reply = (await self.line()).split()
            if reply[0] == b"RESERVED":
                ids.append(reply[1])
                await self.exact(int(reply[2]))
        await self.stream.send_all(b"".join(b"delete %s\r\n" % i for i in ids))
        return sum([(await self.line()) == b"DELETED" for _ in ids])


async def beanstalk_run(
    address: tuple[str, int], op: str, seconds: float, count: int, depth: int, tube: str
) -> int:
    client = await Beanstalk.connect(address, tube)
    async with client.stream:
        done = 0
        with trio.move_on_after(seconds):
            while done < count:
                got = await (client.put(depth) if op == "put" else client.reserve_delete(depth))
                done += got
                if got < depth:
                    break
        return done


# -- the benchmarks ---------------------------------------------------------------------------


@dataclass
class Options:
    runs: int
    seconds: float
    concurrency: int
    depth: int
    spike_workers: int
    burst: int
    memory_jobs: int
    recovery_jobs: int


@dataclass
class Bench:
    id: str
    name: str
    target: str
    setup: Callable[[Procs, Options], list[Variant]]
    verdict: Callable[[dict[str, dict[str, Any]]], list[tuple[str, bool | None]]]
    runs: Callable[[Options], int] = lambda o: o.runs


def _b1(procs: Procs, o: Options) -> list[Variant]:
    server = procs.server("s1")
    out = []
    for workers in (1, 2):
        gateway, address = procs.gateway(workers, [server])

        def go(address: tuple[str, int] = address, w: int = workers) -> dict[str, Any]:
            return trio.run(rest_cycles, address, o.concurrency, o.seconds, f"b1w{w}")

        out.append(
            Variant(f"{workers} gateway worker(s)", go, {"gateway": [gateway.pid],
                                                          "server": [server[0].pid]})
        )  # fmt: skip
    return out


def _b1_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    two = v["2 gateway worker(s)"]
    rate, cpu = two["jobs_per_s"]["median"], two["cpu_s_per_1000"].get("gateway", 0)
    return [
        (f"≥ 1,000 jobs/s with 2 gateway workers: {rate:,.0f}", rate >= 1000),
        (f"gateway ≤ 1 CPU-s per 1,000 jobs: {cpu:.2f}", cpu <= 1),
    ]


def _b2(procs: Procs, o: Options) -> list[Variant]:
    server = procs.server("s1")
    gateway, address = procs.gateway(2, [server])

    def go() -> dict[str, Any]:
        return trio.run(rest_batches, address, 4, o.seconds, "b2", 100)

    return [Variant("batches of 100, 4 clients, 2 gateway workers", go,
                    {"gateway": [gateway.pid], "server": [server[0].pid]})]  # fmt: skip


def _rate_verdict(target: float) -> Callable[[dict[str, dict[str, Any]]], list[Any]]:
    def verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
        rate = next(iter(v.values()))["jobs_per_s"]["median"]
        return [(f"≥ {target:,.0f} jobs/s: {rate:,.0f}", rate >= target)]

    return verdict


def _b3(procs: Procs, o: Options) -> list[Variant]:
    server = procs.server("s1")
    gateway, _rest, line = procs.line_gateway([server])

    def go() -> dict[str, Any]:
        counts = trio.run(bench_compat.drive, bench_compat.line_v1, line, o.concurrency, o.seconds)
        return {"jobs": counts["jobs"], "errors": counts["errors"], "empties": counts["empty"]}

    return [Variant("line v1: put_jobs -> reserve with done", go,
                    {"gateway": [gateway.pid], "server": [server[0].pid]})]  # fmt: skip


def _b4(procs: Procs, o: Options) -> list[Variant]:
    server, address = procs.server("s1")
    host, port = address.rsplit(":", 1)
    count = int(o.seconds * 20_000)
    queued = {"allq": 0, "beanstalkd": 0}
    reference = procs.beanstalkd()
    roles = {"server": [server.pid]}

    def allq_put() -> dict[str, Any]:
        n = trio.run(wire_put, host, int(port), procs.keys, o.seconds, count, o.depth, "b4")
        queued["allq"] += n
        return {"jobs": n}

    def allq_rd() -> dict[str, Any]:
        n = trio.run(wire_reserve_done, host, int(port), procs.keys, o.seconds,
                     queued["allq"], o.depth, "b4")  # fmt: skip
        queued["allq"] -= n
        return {"jobs": n}

    out = [Variant("allq put", allq_put, roles)]
    if reference is None:
        out.append(Variant("beanstalkd put", _unavailable))
    else:
        ref_roles = {"reference": [reference[0].pid]}

        def ref_put() -> dict[str, Any]:
            n = trio.run(beanstalk_run, reference[1], "put", o.seconds, count, o.depth, "b4")
            queued["beanstalkd"] += n
            return {"jobs": n}

        def ref_rd() -> dict[str, Any]:
            n = trio.run(beanstalk_run, reference[1], "reserve", o.seconds,
                         queued["beanstalkd"], o.depth, "b4")  # fmt: skip
            queued["beanstalkd"] -= n
            return {"jobs": n}

        out.append(Variant("beanstalkd put", ref_put, ref_roles))
    out.append(Variant("allq reserve+done", allq_rd, roles))
    if reference is None:
        out.append(Variant("beanstalkd reserve+delete", _unavailable))
    else:
        out.append(Variant("beanstalkd reserve+delete", ref_rd, ref_roles))
    return out


def _unavailable() -> dict[str, Any]:
    return {"jobs": 0, "unavailable": True}


def _ratio(v: dict[str, dict[str, Any]], ours: str, theirs: str) -> float | None:
    a, b = v[ours]["jobs_per_s"]["median"], v[theirs]["jobs_per_s"]["median"]
    return None if v[theirs].get("unavailable") or not b else a / b


def _b4_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    out: list[tuple[str, bool | None]] = []
    for ours, theirs in (("allq put", "beanstalkd put"),
                         ("allq reserve+done", "beanstalkd reserve+delete")):  # fmt: skip
        ratio = _ratio(v, ours, theirs)
        if ratio is None:
            out.append((f"{ours} ≥ 40% of beanstalkd: reference unavailable", None))
        else:
            out.append((f"{ours} ≥ 40% of beanstalkd: {ratio:.1%}", ratio >= 0.4))
    return out


def _b5(procs: Procs, o: Options) -> list[Variant]:
    server = procs.server("s1")
    gateway, address = procs.gateway(1, [server])
    runs = iter(range(1_000_000))

    def go() -> dict[str, Any]:
        tube = f"spike{next(runs)}"
        return trio.run(spike, address, o.spike_workers, o.burst, tube, max(60.0, o.seconds))

    name = f"{o.spike_workers} long-poll workers, burst {o.burst:,}"
    return [Variant(name, go, {"gateway": [gateway.pid], "server": [server[0].pid]})]


def _b5_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    r = next(iter(v.values()))
    m = r["max"]
    rss = r["peak_rss_mib"].get("gateway", 0.0)
    bad = m["errors"] + m["lost"] + m["duplicated"]
    # the drain target is for 20,000 jobs: scale the measured rate
    drain20k = 20_000 / r["jobs_per_s"]["median"] if r["jobs_per_s"]["median"] else float("inf")
    return [
        (f"0 errors / lost / duplicated: {m['errors']} / {m['lost']} / {m['duplicated']}",
         bad == 0),
        (f"burst of 20,000 drained ≤ 20 s: {drain20k:.1f} s at the measured rate",
         drain20k <= 20),
        (f"pickup p99 ≤ 1 s: {r['median']['pickup_p99_ms']:.0f} ms",
         r["median"]["pickup_p99_ms"] <= 1000),
        (f"gateway RSS ≤ 300 MiB: {rss:.0f}", rss <= 300),
    ]  # fmt: skip


def _b6(procs: Procs, o: Options) -> list[Variant]:
    server = procs.server("s1")
    gateway, address = procs.gateway(1, [server])
    samples = max(20, min(200, int(o.seconds * 15)))

    def go() -> dict[str, Any]:
        lat = trio.run(bench_gateway.pickup, address, samples)
        return {
            "jobs": len(lat),
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "max_ms": round(max(lat) * 1000, 2),
        }

    return [Variant(f"idle pickup, {samples} samples", go,
                    {"gateway": [gateway.pid], "server": [server[0].pid]})]  # fmt: skip


def _b6_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    m = next(iter(v.values()))["median"]
    return [(f"p50 ≤ 2 ms: {m['p50_ms']:.1f}", m["p50_ms"] <= 2),
            (f"p99 ≤ 10 ms: {m['p99_ms']:.1f}", m["p99_ms"] <= 10)]  # fmt: skip


def _b7(procs: Procs, o: Options) -> list[Variant]:
    jobs = o.memory_jobs

    def ours() -> dict[str, Any]:
        process, address = procs.server("m1")
        host, port = address.rsplit(":", 1)
        try:
            base = rss_mib(process.pid)
            trio.run(wire_fill, host, int(port), procs.keys, jobs, "b7")
            return _memory(process.pid, base, jobs)
        finally:
            procs.stop(process)

    def reference() -> dict[str, Any]:
        started = procs.beanstalkd()
        if started is None:
            return _unavailable()
        process, address = started
        try:
            base = rss_mib(process.pid)
            trio.run(beanstalk_run, address, "put", 600.0, jobs, 1000, "b7")
            return _memory(process.pid, base, jobs)
        finally:
            procs.stop(process)

    return [Variant(f"allq server, {jobs:,} jobs", ours),
            Variant(f"beanstalkd, {jobs:,} jobs", reference)]  # fmt: skip


def _memory(pid: int, base: float, jobs: int) -> dict[str, Any]:
    rss = rss_mib(pid)
    return {"jobs": jobs, "rss_mib": rss, "rss_growth_mib": round(rss - base, 1),
            "bytes_per_job": round((rss - base) * 1048576 / jobs)}  # fmt: skip


def _b7_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    ours, ref = v.values()
    if ref.get("unavailable"):
        return [("≤ 2x beanstalkd's RSS: reference unavailable", None)]
    ratio = ours["median"]["rss_mib"] / ref["median"]["rss_mib"]
    growth = ours["median"]["bytes_per_job"] / max(ref["median"]["bytes_per_job"], 1)
    return [(f"per-job growth {growth:.1f}x beanstalkd's; server RSS ≤ 2x beanstalkd's "
             f"({ours['median']['rss_mib']:.0f} vs "
             f"{ref['median']['rss_mib']:.0f} MiB): {ratio:.1f}x", ratio <= 2)]  # fmt: skip


def _b8(procs: Procs, o: Options) -> list[Variant]:
    jobs = o.recovery_jobs

    def go() -> dict[str, Any]:
        data = Path(tempfile.mkdtemp(dir=procs.root))
        extra = ("--data-dir", str(data), "--sync", "interval")
        process, address = procs.server("r1", *extra)
        host, port = address.rsplit(":", 1)
        trio.run(wire_fill, host, int(port), procs.keys, jobs, "b8")
        time.sleep(0.5)  # past the sync interval
        process.send_signal(signal.SIGKILL)
        procs.stop(process)
        t0 = time.perf_counter()
        again, _ = procs.server("r1", *extra)
        ready = time.perf_counter() - t0
        rss = rss_mib(again.pid)
        procs.stop(again)
        shutil.rmtree(data, ignore_errors=True)
        return {"jobs": jobs, "seconds": ready, "ready_s": round(ready, 2), "rss_mib": rss,
                "ready_s_per_1m_jobs": round(ready * 1_000_000 / jobs, 1)}  # fmt: skip

    return [Variant(f"restart after kill -9, {jobs:,} jobs in the log", go)]


def _b8_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    m = next(iter(v.values()))["median"]
    return [(f"ready ≤ 10 s with 1,000,000 jobs: {m['ready_s']:.1f} s measured, "
             f"{m['ready_s_per_1m_jobs']:.0f} s scaled to 1M",
             m["ready_s_per_1m_jobs"] <= 10)]  # fmt: skip


def _b9(procs: Procs, o: Options) -> list[Variant]:
    """B1 (2 gateway workers) and B5 (1 gateway worker, as in B5) with 1, 2 and 4 servers."""
    servers = [procs.server(f"s{i + 1}") for i in range(4)]
    out = []
    for n in (1, 2, 4):
        gateway, address = procs.gateway(2, servers[:n])

        def go(address: tuple[str, int] = address, n: int = n) -> dict[str, Any]:
            return trio.run(rest_cycles, address, o.concurrency, o.seconds, f"b9s{n}")

        roles = {"gateway": [gateway.pid], "server": [p.pid for p, _ in servers[:n]]}
        out.append(Variant(f"{n} server(s), 2 gateway workers", go, roles))
    runs = iter(range(1_000_000))
    for n in (1, 2, 4):
        gateway, address = procs.gateway(1, servers[:n])

        def spike_go(address: tuple[str, int] = address, n: int = n) -> dict[str, Any]:
            tube = f"b9spike{n}x{next(runs)}"
            return trio.run(spike, address, o.spike_workers, o.burst, tube, max(60.0, o.seconds))

        roles = {"gateway": [gateway.pid], "server": [p.pid for p, _ in servers[:n]]}
        name = f"spike, {n} server(s), {o.spike_workers} workers, burst {o.burst:,}"
        out.append(Variant(name, spike_go, roles))
    return out


def _b9_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    def rate(name: str) -> float:
        return float(next(r for k, r in v.items() if k.startswith(name))["jobs_per_s"]["median"])

    one, four = rate("1 server(s)"), rate("4 server(s)")
    spike_one, spike_four = rate("spike, 1 server(s)"), rate("spike, 4 server(s)")
    empties = sum(r["max"].get("empties", 0) for r in v.values())
    bad = sum(r["max"].get(k, 0) for r in v.values() for k in ("errors", "lost", "duplicated"))
    return [(f"B1: 4 servers ≥ 90% of 1: {four / one:.0%}" if one else "B1: no jobs",
             bool(one) and four >= 0.9 * one),
            (f"B5: 4 servers ≥ 90% of 1 (drain rate): {spike_four / spike_one:.0%}"
             if spike_one else "B5: no jobs", bool(spike_one) and spike_four >= 0.9 * spike_one),
            (f"no false empties: {empties}", empties == 0),
            (f"spikes: 0 errors / lost / duplicated: {bad}", bad == 0)]  # fmt: skip


def _b10(procs: Procs, o: Options) -> list[Variant]:
    count = int(o.seconds * 20_000)
    out = []
    for mode in ("memory", "interval", "always"):
        extra = () if mode == "memory" else ("--data-dir", str(procs.root / mode), "--sync", mode)
        server, address = procs.server(f"p-{mode}", *extra)
        host, port = address.rsplit(":", 1)

        def go(host: str = host, port: int = int(port)) -> dict[str, Any]:
            return {"jobs": trio.run(wire_put, host, port, procs.keys, o.seconds, count, 100, "p")}

        out.append(Variant(f"put, 100 in flight, {mode}", go, {"server": [server.pid]}))
    return out


def _b10_verdict(v: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    mem, interval, always = (r["jobs_per_s"]["median"] for r in v.values())
    if not mem:
        return [("no puts measured", False)]
    return [(f"interval ≥ 70% of memory-only: {interval / mem:.0%}", interval >= 0.7 * mem),
            (f"always ≥ 20% of memory-only: {always / mem:.0%}", always >= 0.2 * mem)]  # fmt: skip


BENCHES: dict[str, Bench] = {
    b.id: b
    for b in [
        Bench("B1", "rest_cycle", "≥ 1,000 jobs/s with 2 gateway workers; gateway ≤ 1 CPU-s/1k",
              _b1, _b1_verdict),
        Bench("B2", "rest_batch", "≥ 20,000 jobs/s", _b2, _rate_verdict(20_000)),
        Bench("B3", "line_cycle", "≥ 3,000 jobs/s", _b3, _rate_verdict(3_000)),
        Bench("B4", "wire", "≥ 40% of beanstalkd's rate in the same run", _b4, _b4_verdict),
        Bench("B5", "spike", "0 errors/lost/dup; 20k drained ≤ 20 s; p99 ≤ 1 s; RSS ≤ 300 MiB",
              _b5, _b5_verdict),
        Bench("B6", "latency", "p50 ≤ 2 ms, p99 ≤ 10 ms", _b6, _b6_verdict),
        Bench("B7", "memory", "server RSS ≤ 2x beanstalkd's", _b7, _b7_verdict,
              lambda o: 1),
        Bench("B8", "recovery", "ready ≤ 10 s with 1,000,000 jobs", _b8, _b8_verdict,
              lambda o: 1),
        Bench("B9", "federation", "B1 and B5: 4 servers within 10% of 1; no false empties", _b9,
              _b9_verdict),
        Bench("B10", "persistence", "interval ≥ 70%, always ≥ 20% of memory-only", _b10,
              _b10_verdict),
    ]
}  # fmt: skip


# -- running, aggregating, reporting ----------------------------------------------------------


def measure(variant: Variant) -> dict[str, Any]:
    before = {role: sum(cpu_seconds(p, with_children=True) for p in pids)
              for role, pids in variant.roles.items()}  # fmt: skip
    loadgen, t0 = own_cpu(), time.perf_counter()
    result = variant.measure()
    elapsed = time.perf_counter() - t0
    loadgen = own_cpu() - loadgen
    jobs = result["jobs"]
    seconds = result.pop("seconds", elapsed)
    result["jobs_per_s"] = round(jobs / seconds, 1) if seconds and seconds > 0 else 0.0
    per = 1000 / jobs if jobs else float("nan")
    cpu = {role: sum(cpu_seconds(p, with_children=True) for p in pids) - before[role]
           for role, pids in variant.roles.items()}  # fmt: skip
    result["cpu_s_per_1000"] = {role: round(c * per, 3) for role, c in cpu.items()}
    result["cpu_s_per_1000"]["loadgen"] = round(loadgen * per, 3)
    total = sum(cpu.values()) + loadgen
    result["loadgen_cpu_share"] = round(loadgen / total, 3) if total else 0.0
    result["loadgen_cores"] = round(loadgen / elapsed, 2)
    result["peak_rss_mib"] = {role: peak_rss_mib(pids) for role, pids in variant.roles.items()}
    return result


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["jobs_per_s"] for r in runs]
    numeric = {k for r in runs for k, v in r.items() if isinstance(v, int | float)}
    out: dict[str, Any] = {
        "runs": runs,
        "jobs_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "median": {k: statistics.median(r.get(k, 0) for r in runs) for k in numeric},
        "max": {k: max(r.get(k, 0) for r in runs) for k in numeric},
        "cpu_s_per_1000": {
            role: statistics.median(r["cpu_s_per_1000"][role] for r in runs)
            for role in runs[0]["cpu_s_per_1000"]
        },
        "peak_rss_mib": {
            role: max(r["peak_rss_mib"][role] for r in runs) for role in runs[0]["peak_rss_mib"]
        },
        "unavailable": any(r.get("unavailable") for r in runs),
    }
    return out


def machine() -> dict[str, Any]:
    mem = _status_kib_meminfo()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1048576, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def _status_kib_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_suite(ids: list[str], options: Options, *, quiet: bool = False) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=quiet)
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": options.__dict__,
        "benchmarks": {},
    }
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as progress:  # fmt: skip
        overall = progress.add_task("suite", total=len(ids))
        for bench_id in ids:
            bench = BENCHES[bench_id]
            runs = bench.runs(options)
            task = progress.add_task(f"{bench_id} {bench.name}: starting", total=None)
            with tempfile.TemporaryDirectory(prefix=f"allq-{bench_id}-") as tmp:
                procs = Procs(Path(tmp))
                entry: dict[str, Any] = {"name": bench.name, "target": bench.target}
                try:
                    variants = bench.setup(procs, options)
                    progress.update(task, total=runs * len(variants), completed=0)
                    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
                    for run in range(runs):
                        for variant in variants:  # A B A B
                            progress.update(
                                task, description=f"{bench_id} {variant.name} run {run + 1}"
                            )
                            results[variant.name].append(measure(variant))
                            progress.advance(task)
                    entry["variants"] = {n: aggregate(r) for n, r in results.items()}
                    entry["verdict"] = [
                        {"check": text, "met": met}
                        for text, met in bench.verdict(entry["variants"])
                    ]
                    entry["status"] = "ok"
                except (
                    Exception,
                    SystemExit,
                ) as exc:  # one failed benchmark must not lose the others
                    entry["status"] = "failed"
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]{bench_id} failed: {entry['error']}")
                finally:
                    procs.stop_all()
                report["benchmarks"][bench_id] = entry
            progress.update(task, description=f"{bench_id} {bench.name}: done")
            progress.advance(overall)
    for bench_id in ALL:
        if bench_id not in ids:
            report["benchmarks"].setdefault(bench_id, {"status": "not run"})
    return report


def rows(report: dict[str, Any]) -> list[list[str]]:
    """The summary table: one row per variant."""
    out = []
    for bench_id, entry in report["benchmarks"].items():
        if entry.get("status") == "not run":
            continue
        if entry.get("status") != "ok":
            out.append([bench_id, entry.get("status", ""), entry.get("error", ""), *[""] * 5])
            continue
        verdict = "; ".join(
            f"{'met' if v['met'] else 'n/a' if v['met'] is None else 'NOT met'}: {v['check']}"
            for v in entry["verdict"]
        )
        for i, (name, v) in enumerate(entry["variants"].items()):
            if v["unavailable"]:
                out.append([bench_id, name, "unavailable", "", "", "", "", ""])
                continue
            r = v["jobs_per_s"]
            med = v["median"]
            lat = ", ".join(
                f"{k.removesuffix('_ms')} {med[k]:.1f} ms"
                for k in ("p50_ms", "p99_ms", "pickup_p50_ms", "pickup_p99_ms")
                if k in med
            )
            extra = ", ".join(
                f"{k} {med[k]:g}"
                for k in ("errors", "lost", "duplicated", "empties", "drain_s", "rss_mib",
                          "bytes_per_job", "ready_s")
                if k in med and (med[k] or k in {"errors", "rss_mib", "ready_s"})
            )  # fmt: skip
            cpu = ", ".join(f"{k} {c:.2f}" for k, c in v["cpu_s_per_1000"].items())
            rss = ", ".join(f"{k} {m:.0f}" for k, m in v["peak_rss_mib"].items())
            out.append([
                bench_id, name, f"{r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f})",
                "; ".join(x for x in (lat, extra) if x), cpu, rss,
                f"{med.get('loadgen_cpu_share', 0):.0%}", verdict if i == 0 else "",
            ])  # fmt: skip
    return out


HEADERS = ["id", "variant", "jobs/s median (min-max)", "latency, counts",
           "CPU-s/1000 jobs", "peak RSS MiB", "loadgen CPU share", "targets"]  # fmt: skip


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="allq benchmark suite", show_lines=True)
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in rows(report):
        table.add_row(*row)
    Console().print(table)


def markdown(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(report)]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> str | None:
    """B1/B5/B9 bars (median with min-max); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: pip install -e '.[bench]' for the chart"
    shown = [b for b in ("B1", "B5", "B9") if report["benchmarks"].get(b, {}).get("status") == "ok"]
    if not shown:
        return "no B1/B5/B9 results to chart"
    # Each panel as wide as its variants need, labels wrapped to their bar's width.
    widths = [max(4.0, 1.7 * len(report["benchmarks"][b]["variants"])) for b in shown]
    fig, axes = plt.subplots(
        1, len(shown), figsize=(sum(widths), 4.8), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )  # fmt: skip
    for ax, bench_id in zip(axes[0], shown, strict=True):
        variants = report["benchmarks"][bench_id]["variants"]
        names = list(variants)
        med = [variants[n]["jobs_per_s"]["median"] for n in names]
        low = [m - variants[n]["jobs_per_s"]["min"] for m, n in zip(med, names, strict=True)]
        high = [variants[n]["jobs_per_s"]["max"] - m for m, n in zip(med, names, strict=True)]
        ax.bar(range(len(names)), med, yerr=[low, high], capsize=4, color="tab:blue")
        labels = [textwrap.fill(n.replace(", ", "; "), 16) for n in names]
        ax.set_xticks(range(len(names)), labels, fontsize=8)
        ax.set_title(f"{bench_id} {report['benchmarks'][bench_id]['name']}")
        ax.set_ylabel("jobs/s (median, min-max)")
    fig.suptitle(f"allq benchmarks, {report['date'][:10]}, {report['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="allq bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated ids (B1,B4)")
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (median of)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement (max)")
    parser.add_argument("--concurrency", type=int, default=50, help="B1/B3/B9 clients")
    parser.add_argument("--depth", type=int, default=100, help="B4 requests in flight")
    parser.add_argument("--spike-workers", type=int, default=1000, help="B5 long-poll workers")
    parser.add_argument("--burst", type=int, default=2000, help="B5 burst (spec: 20000)")
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="B7 (spec: 1000000)")
    parser.add_argument("--recovery-jobs", type=int, default=50_000, help="B8 (spec: 1000000)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown")
    parser.add_argument("--chart", type=Path, help="PNG of B1/B5/B9 (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ids = [i.strip().upper() for i in args.only.split(",") if i.strip()]
    unknown = [i for i in ids if i not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(ALL)}", file=sys.stderr)
        return 2
    options = Options(
        args.runs, args.seconds, args.concurrency, args.depth,
        args.spike_workers, args.burst, args.memory_jobs, args.recovery_jobs,
    )  # fmt: skip
    try:
        report = run_suite(ids, options, quiet=args.quiet)
    except KeyboardInterrupt:
        return 130
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    if args.markdown:
        args.markdown.write_text(markdown(report))
    if args.chart:
        problem = chart(report, args.chart)
        print(problem or f"chart: {args.chart}", file=sys.stderr)
    print(f"results: {args.json}", file=sys.stderr)
    return (
        0 if all(b.get("status") in {"ok", "not run"} for b in report["benchmarks"].values()) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
